"""Scans over EPICS against a real caproto IOC: the same plans, analysis and data as on the
twin, the plans in a user's own bluesky session, and refusals that never reach the IOC."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controllers.ca import PvNotFoundError
from controllers.epics_beamline import EpicsBeamline, EpicsConfig
from controllers.nexus import validate
from controllers.pvnames import PvMap
from controllers.scan_request import ScanRequest, ScanRequestError, parse_args
from controllers.scan_run import movable_motors, run_scan
from ioc_sim.process import IocProcess, random_prefix
from tests.helpers import wait_for
from twin.specimen import Specimen

pytestmark = pytest.mark.ioc

IOC_ARGS = ["--backend", "fast", "--rays", "3000", "--seed", "4", "--misalign", "0.5",
            "--no-disturbances", "--diag-rate", "2", "--specimen", "0"]
FAST = EpicsConfig(connect_timeout_s=3.0, move_margin_s=1.0)


@pytest.fixture(scope="module")
def ioc(ca_ports):
    with IocProcess(random_prefix(), ca_ports[1], IOC_ARGS) as proc:
        yield proc


def refused_at_ioc(epics, ioc) -> int:
    v = epics.caget(f"{ioc.prefix}twin:RefusedPuts_RBV", timeout=5.0, use_monitor=False)
    assert v is not None
    return int(v)


def epics_scan(desc, ioc, tmp_path, plan, *args, **fields):
    """A scan over EPICS; ``detector="xrf"`` reads the IOC's specimen (``--specimen 0``)."""
    d = parse_args(plan, [str(a) for a in args])
    d.update(fields)
    req = ScanRequest.from_dict(d)
    signals = ["xrf"] if req.detector == "xrf" else []
    bl = EpicsBeamline(PvMap(desc, ioc.prefix), movable=movable_motors(req, desc), config=FAST,
                       signals=signals)
    try:
        return run_scan(req, bl, desc, out_dir=tmp_path, progress_bar=False, live_plot=False,
                        signals=signals), bl
    finally:
        bl.close()


def test_step_scan_over_epics_with_analysis_goto_and_nexus(ioc, epics, desc, tmp_path):
    doc, bl = epics_scan(desc, ioc, tmp_path, "dscan", "kb_v.pitch", -20, 20, 8,
                         detector="sample", signal="y_um", fit="gaussian", goto="min")
    assert doc["exit_status"] == "success" and doc["points"] == 9, doc["error"]
    # the focus moves linearly with the KB pitch: the scan sees it, min is an end point
    y = np.array(doc["data"]["sample_y_um"])
    x = np.array(doc["data"]["kb_v_pitch"])
    slope = np.polyfit(x, y, 1)[0]
    assert abs(slope) > 0.01 and np.corrcoef(x, y)[0, 1] ** 2 > 0.95
    target = doc["moved_to"]["kb_v.pitch"]
    assert target == pytest.approx(doc["peak"]["min"][0])
    rbv = epics.caget(f"{ioc.prefix}kb_v:pitch.RBV", timeout=5, use_monitor=False)
    assert rbv == pytest.approx(target, abs=0.05)
    summary = validate(doc["nexus_file"])
    assert summary["points"] == 9 and summary["status"] == "success"
    assert "kb_v.pitch" in summary["motors"]
    assert doc["analysis_latency_ms"] is not None


def test_energy_scan_and_xrf_map_over_epics(ioc, epics, desc, tmp_path):
    """The energy scan, and a map of the specimen mounted on the IOC (its Xrf_RBV PV)."""
    doc, _ = epics_scan(desc, ioc, tmp_path, "escan", 9900, 10100, 2, detector="i0")
    assert doc["exit_status"] == "success" and doc["points"] == 3, doc["error"]
    assert doc["data"]["energy"] == pytest.approx([9900, 10000, 10100], abs=3)
    spec = Specimen.default(0)
    p = next(f for f in spec.features if f.kind == "particle")
    # the hidden errors put the focus off the stage's zero: the particle sits under it at
    # stage = (beam in the lab) - (particle in the sample frame)
    base = PvMap(desc, ioc.prefix).device("sample")
    get = lambda pv: float(epics.caget(pv, timeout=5, use_monitor=False))  # noqa: E731
    lab = [get(f"{base}PosX_RBV") + get(f"{ioc.prefix}sample:x.RBV"),
           get(f"{base}PosY_RBV") + get(f"{ioc.prefix}sample:y.RBV")]
    want = [lab[0] - p.x_um, lab[1] - p.y_um]
    doc, _ = epics_scan(desc, ioc, tmp_path, "amesh", "sample.x", want[0] - 5, want[0] + 5, 4,
                        "sample.y", want[1] - 5, want[1] + 5, 4, detector="xrf")
    assert doc["exit_status"] == "success" and doc["points"] == 25, doc["error"]
    assert doc["peak"]["max"][:2] == pytest.approx(want, abs=3.0)


def test_refused_requests_never_reach_the_ioc(ioc, epics, desc, tmp_path):
    hi = desc.motor("sample.x").high
    before = refused_at_ioc(epics, ioc)
    rbv0 = epics.caget(f"{ioc.prefix}sample:x.RBV", timeout=5, use_monitor=False)
    bad = [("ascan", ("sample.x", 0, hi + 1e-3, 4), "stop[0]"),
           ("ascan", ("sample.x", float("nan"), 1, 4), "start[0]"),
           ("dscan", ("sample.x", -hi * 3, 0, 4), "start[0]"),
           ("a2scan", ("sample.x", 0, 1, "sample.q", 0, 1, 4), "motors[1]")]
    for plan, args, field in bad:
        with pytest.raises(ScanRequestError) as err:
            epics_scan(desc, ioc, tmp_path, plan, *args)
        assert err.value.field == field, str(err.value)
    assert refused_at_ioc(epics, ioc) == before
    assert epics.caget(f"{ioc.prefix}sample:x.RBV", timeout=5, use_monitor=False) == rbv0
    assert not list(tmp_path.glob("*.h5"))
    # R4: a fluorescence PV that does not exist is named before anything moves
    pvmap = PvMap(desc, ioc.prefix, signals={"xrf": f"{ioc.prefix}nope:Xrf_RBV"})
    with pytest.raises(PvNotFoundError, match="nope:Xrf_RBV"):
        EpicsBeamline(pvmap, movable=["sample.x"], config=FAST, signals=["xrf"])


def test_plans_in_a_users_own_session_with_ophyd_devices(ioc, desc):
    from bluesky import RunEngine

    from controllers import scan_plans as sp
    from controllers.devices import make_devices

    devs = make_devices(PvMap(desc, ioc.prefix))
    devs.wait_for_connection(timeout=5)
    m = devs.motors["sample.y"]
    p0 = m.position
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, d)))
    RE(sp.dscan([devs.diagnostics["sample"]], m, -3, 3, 3))
    events = [d for n, d in docs if n == "event"]
    assert len(events) == 4
    assert [e["data"]["sample_y"] for e in events] == pytest.approx(
        [p0 - 3, p0 - 1, p0 + 1, p0 + 3], abs=0.05)
    assert m.position == pytest.approx(p0, abs=0.05)  # dscan went back
    start = next(d for n, d in docs if n == "start")
    assert start["plan_name"] == "dscan" and start["plan_args"]["intervals"] == 3
    docs.clear()
    RE(sp.amesh([devs.diagnostics["sample"]], devs.motors["sample.x"], -1, 1, 1, m, -1, 1, 1))
    assert len([1 for n, _ in docs if n == "event"]) == 4


def test_scan_command_over_epics(ioc, tmp_path):
    from click.testing import CliRunner

    from controllers.cli import cli

    r = CliRunner().invoke(cli, ["scan", "count", "2", "--epics", "--prefix", ioc.prefix,
                                 "--detector", "i0", "--out", str(tmp_path), "--no-progress",
                                 "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["plan"] == "count" and doc["points"] == 2 and doc["prefix"] == ioc.prefix
    assert validate(doc["nexus_file"])["points"] == 2


def test_autonomous_maps_over_epics(ioc, desc, tmp_path):
    doc, _ = epics_scan(desc, ioc, tmp_path, "gpscan", "sample.x", -10, 10, "sample.y", -10, 10,
                        12, detector="xrf")
    assert doc["exit_status"] == "success" and doc["points"] == 12, doc["error"]
    assert doc["adaptive"]["kind"] == "gp" and validate(doc["nexus_file"])["points"] == 12
    doc, _ = epics_scan(desc, ioc, tmp_path, "c2fmap", "sample.x", -10, 10, "sample.y", -10, 10,
                        10, 5, detector="xrf")
    assert doc["exit_status"] == "success", doc["error"]
    assert doc["adaptive"]["coarse_points"] == 9
    assert doc["points"] == 9 + doc["adaptive"]["fine_points"]


# the IOC dies on purpose: a get in flight inside pyepics times out, and pyepics says so
@pytest.mark.filterwarnings(r"ignore:ca.get\(.*\) timed out:UserWarning")
def test_ioc_killed_mid_scan_aborts_with_a_reason_and_valid_data(ca_ports, epics, desc,
                                                                 tmp_path):
    """R3: the IOC is killed (SIGKILL) during a scan. The scan ends as failed within a bounded
    time and names the cause, its NeXus file is at its final name and valid with the points
    taken before; an IOC restarted under the same prefix received no put from the dead run."""
    import threading
    import time

    prefix = random_prefix()
    ioc = IocProcess(prefix, ca_ports[2], IOC_ARGS).start()
    try:
        d = parse_args("ascan", ["sample.x", "0", "30", "300"])
        d["detector"] = "sample"
        req = ScanRequest.from_dict(d)
        bl = EpicsBeamline(PvMap(desc, prefix), movable=movable_motors(req, desc), config=FAST)
        out: dict = {}

        def work() -> None:
            try:
                out["doc"] = run_scan(req, bl, desc, out_dir=tmp_path, progress_bar=False,
                                      live_plot=False)
            except BaseException as exc:  # noqa: BLE001 - inspected below
                out["error"] = exc

        t = threading.Thread(target=work, daemon=True)
        t.start()
        time.sleep(5.0)  # a few points in
        ioc.kill()
        killed = time.monotonic()
        t.join(timeout=90)
        assert not t.is_alive(), "the scan hung after the IOC died"
        took = time.monotonic() - killed
        bl.close()
    finally:
        ioc.kill()
    assert "error" not in out, repr(out.get("error"))
    doc = out["doc"]
    assert doc["exit_status"] == "fail" and doc["error"], doc
    assert took < 60
    summary = validate(doc["nexus_file"])
    assert summary["status"] == "fail" and 1 <= summary["points"] < 301, (summary, doc["error"],
                                                                           doc["wall_s"])
    assert not list(tmp_path.glob("*.partial"))
    # the same prefix again: nothing from the dead run arrives (no queued put)
    again = IocProcess(prefix, ca_ports[2], IOC_ARGS).start()
    try:
        time.sleep(1.0)
        x0 = desc.motor("sample.x").position
        # the client's channels from the dead IOC reconnect to the new one: give them time
        got: list = []
        assert wait_for(lambda: got.append(epics.caget(f"{prefix}sample:x.VAL", timeout=2,
                                                       use_monitor=False))
                        or got[-1] is not None, timeout=20, period=0.2)
        assert got[-1] == pytest.approx(x0, abs=1e-6)
        assert refused_at_ioc(epics, again) == 0
    finally:
        again.kill()
