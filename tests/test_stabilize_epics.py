"""The beam stabiliser over EPICS, against the simulated IOC (a real caproto server)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from agents.stabilize.calibration import calibrate, features
from agents.stabilize.plant import KNOB_LIMITS, KNOBS, StabilizeConfig, StabilizePlant
from agents.stabilize.schedules import make_schedule, working_range
from agents.stabilize.stabilizer import fit_stabilizer
from controllers.pvnames import PvMap
from controllers.stabilize_loop import EpicsStabilizer, LoopSettings
from ioc_sim.process import IocProcess, random_prefix

pytestmark = pytest.mark.ioc

IOC_ARGS = ["--backend", "fast", "--rays", "3000", "--seed", "0", "--misalign", "0",
            "--no-disturbances", "--diag-rate", "20"]
QUIET = StabilizeConfig(drift=False, centroid_noise_um=0.0, size_noise_pct=0.0,
                        bpm_noise_um=0.0, rays=20_000)


@pytest.fixture(scope="module")
def ioc(ca_ports):
    with IocProcess(random_prefix(), ca_ports[0], IOC_ARGS) as proc:
        yield proc


@pytest.fixture(scope="module")
def stabilizer(desc, tmp_path_factory):
    plant = StabilizePlant(desc, 0, QUIET)
    cal = calibrate(plant, points=8, ref_every=8, iterations=1)
    stab = fit_stabilizer(plant, cal, [make_schedule(desc, "steps", 1, duration_s=5.0)])
    path = tmp_path_factory.mktemp("stab") / "stabilizer.json"
    stab.save(path)
    return stab, path


def _setpoints(epics, prefix):
    return {k: epics.caget(f"{prefix}{k.replace('.', ':')}.VAL", use_monitor=False, timeout=5)
            for k in KNOBS}


class _Fixed:
    """A corrector that always asks for the same knob changes."""

    name = "fixed"

    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)

    def reset(self):
        pass

    def act(self, reading):
        return self.values


def test_feed_forward_follows_the_gaps_over_epics(ioc, epics, desc, stabilizer):
    stab, _ = stabilizer
    p = ioc.prefix
    gap0 = working_range(desc)[2]
    assert epics.caput(f"{p}machine:NeighbourGap", 20.0, wait=True, timeout=5) == 1
    epics.caput(f"{p}undulator:gap", gap0 + 0.4, wait=True, timeout=10)
    cfg = StabilizeConfig()
    cor = stab.corrector("ff_gp", cfg.knob_limits)
    loop = EpicsStabilizer(PvMap(desc, p), cor, cfg, LoopSettings(rate_hz=100.0))
    try:
        summary = loop.run(2.0)
    finally:
        loop.close()
    # the loop kept (most of) its rate on a 2-core machine that also runs the IOC
    assert summary["periods"] > 100 and summary["rate_hz"] > 50, summary
    assert summary["refused"] == 0 and summary["writes"] > 0
    assert summary["compute_us"]["median"] < 1000
    # the knobs sit where the model puts them for this gap and the neighbour's
    cal = stab.calibration
    x = features(gap0 + 0.4, 1, 20.0, 1, cal.gap_range, cal.neighbour_range)
    want = stab.models["gp"].predict(x)
    got = _setpoints(epics, p)
    for j, k in enumerate(KNOBS[:5]):
        assert got[k] == pytest.approx(want[j], abs=max(2e-3, 0.02 * abs(want[j]))), k
    # and the status PVs tell the operator what it did
    assert epics.caget(f"{p}stab:Running_RBV", use_monitor=False) == 0
    assert epics.caget(f"{p}stab:Periods_RBV", use_monitor=False) >= 100
    assert epics.caget(f"{p}stab:LoopRate_RBV", use_monitor=False) > 50
    assert epics.caget(f"{p}stab:Corrector_RBV", as_string=True, use_monitor=False) == "ff_gp"


def test_the_operator_switch_holds_every_knob(ioc, epics, desc):
    p = ioc.prefix
    before = _setpoints(epics, p)
    epics.caput(f"{p}stab:Enable", "Off", wait=True, timeout=5)
    try:
        loop = EpicsStabilizer(PvMap(desc, p), _Fixed([1.0] + [0.0] * 7), StabilizeConfig())
        summary = loop.run(0.5)
        loop.close()
    finally:
        epics.caput(f"{p}stab:Enable", "On", wait=True, timeout=5)
    assert summary["writes"] == 0 and summary["periods"] > 10
    assert _setpoints(epics, p) == before


@pytest.mark.parametrize("bad, why", [([math.nan] + [0.0] * 7, "not a finite number"),
                                       ([0.0] * 4 + [99.0] + [0.0] * 3, "outside the envelope")])
def test_the_safety_layer_refuses_bad_corrections_and_nothing_moves(ioc, epics, desc, bad,
                                                                   why):
    p = ioc.prefix
    before = _setpoints(epics, p)
    # the knob's envelope is its aligned position plus or minus its limit
    loop = EpicsStabilizer(PvMap(desc, p), _Fixed(bad), StabilizeConfig(), LoopSettings(
        step_cap=1.0))
    try:
        summary = loop.run(0.5)
    finally:
        loop.close()
    assert summary["periods"] > 10 and summary["refused"] == summary["periods"]
    assert summary["writes"] == 0 and why in summary["refusals"][-1]["message"]
    assert _setpoints(epics, p) == before
    msg = epics.caget(f"{p}stab:Message_RBV", as_string=True, use_monitor=False)
    assert msg and KNOBS[0 if math.isnan(bad[0]) else 4].split(".")[0] in msg
    assert KNOB_LIMITS["undulator.coupling"] < 99.0


def test_stabilize_run_over_epics_on_the_command_line(ioc, desc, stabilizer):
    _, path = stabilizer
    r = subprocess.run([sys.executable, "-m", "controllers.cli", "stabilize", "run", "--epics",
                        "--prefix", ioc.prefix, "--model", str(path), "--duration", "1",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "epics" and doc["corrector"] == "ff_fb" and doc["periods"] > 50
    assert set(doc["knob_changes"]) == set(KNOBS)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "controllers.cli", "stabilize", "run", "--epics",
                        "--prefix", ioc.prefix, "--model", str(path), "--rate", "0",
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--rate" in json.loads(r.stdout)["error"]
    assert time.monotonic() - t0 < 60
