"""One-click alignment over EPICS as a bluesky run, against a real IOC (and RELIABILITY.md R7)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from agents.registry import DEFAULT_AGENT
from controllers.epics_beamline import EpicsBeamline, EpicsConfig
from controllers.nexus import validate
from controllers.pvnames import PvMap
from ioc_sim.process import IocProcess, random_prefix

pytestmark = pytest.mark.ioc

IOC_ARGS = ["--backend", "fast", "--rays", "5000", "--seed", "1", "--misalign", "1",
            "--no-disturbances", "--diag-rate", "1"]
#: keys of ``beamtwin align --json`` on the twin, which the EPICS document keeps
TWIN_KEYS = {"success", "agent", "seed", "misalign", "evaluations", "moves", "beamline_time_s",
             "stages", "observed_at", "before", "final", "ideal", "final_flux_ratio",
             "stages_aligned"}


@pytest.fixture(scope="module")
def ioc(ca_ports):
    with IocProcess(random_prefix(), ca_ports[0], IOC_ARGS) as proc:
        yield proc


def all_still(epics, prefix, desc) -> bool:
    return all(epics.caget(f"{prefix}{m.replace('.', ':')}.DMOV", use_monitor=False,
                           timeout=5) == 1 for m in desc.motors)


def test_one_click_alignment_over_epics(ioc, epics, desc, tmp_path):
    from controllers.oneclick import align_over_epics

    said: list[str] = []
    doc = align_over_epics(desc, ioc.prefix, stage_names=["m1", "mono", "slits"], budget=30,
                           out_dir=tmp_path, progress=said.append, progress_bar=False)
    assert TWIN_KEYS <= set(doc)
    assert doc["exit_status"] == "success" and doc["error"] is None
    assert [s["stage"] for s in doc["stages"]] == ["m1", "mono", "slits"]
    assert all(s["success"] for s in doc["stages"]), [s["final"] for s in doc["stages"]]
    assert doc["dry_run"]["ok"] and len(doc["dry_run"]["checks"]) == 7
    assert doc["safety"]["refusals"] == [] and doc["safety"]["beam_losses"] == 0
    assert set(doc["safety"]["moved_axes"]) <= {"m1.pitch", "m1.height", "m1.bend",
                                                "dcm.pitch2", "dcm.roll2", "ss.hcen", "ss.vcen"}
    # every evaluation is one event and one point of the NeXus file, numbered without gaps
    assert doc["events"] == doc["evaluations"]
    summary = validate(doc["nexus_file"])
    assert summary["points"] == doc["evaluations"] and summary["status"] == "success"
    with h5py.File(doc["nexus_file"]) as f:
        pts = f["entry/data/point"][()]
        np.testing.assert_array_equal(pts, np.arange(1, len(pts) + 1))
        fom = f["entry/data/fom"][()]
        assert fom[-1] > 0.5 and np.all(np.isfinite(fom))
        assert f["entry/program/agent"][()] == DEFAULT_AGENT.encode()
        assert "before_sample" in f["entry"] and "after_sample" in f["entry"]
        assert f["entry/instrument/m1.pitch/value"].shape == (len(pts),)
    import nexusformat.nexus as nx

    assert nx.nxload(doc["nexus_file"]).entry.data.nxsignal.nxname == "fom"
    report = tmp_path / "report.md"
    assert str(report.resolve()) == doc["report"]
    text = report.read_text()
    assert "## Every move" in text and "beam.png" in text
    assert (tmp_path / "beam.png").stat().st_size > 10_000
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "report.json").read_text())["moves"]
    assert any("dry run" in m for m in said)
    assert all_still(epics, ioc.prefix, desc)


def _plan_parts(ioc, desc):
    from controllers.plans import BeamlineMover, BeamlineReader, BridgedBeamline, PlanBridge

    bl = EpicsBeamline(PvMap(desc, ioc.prefix), movable=["sample.x", "sample.y"],
                       config=EpicsConfig(connect_timeout_s=3.0))
    bridge = PlanBridge()
    return bl, bridge, BeamlineMover(bl), BeamlineReader(bl), BridgedBeamline(bl, bridge)


def test_an_exception_inside_the_plan_stops_every_moved_axis(ioc, epics, desc):
    from bluesky import RunEngine

    from controllers.plans import agent_plan

    bl, bridge, mover, reader, bb = _plan_parts(ioc, desc)
    x0 = bl.positions()["sample.x"]

    def work():
        bb.acquire()
        bb.move({"sample.x": x0 + 5.0})
        bb.acquire()
        raise RuntimeError("the agent broke")

    docs: list = []
    RE = RunEngine({})
    try:
        with pytest.raises(RuntimeError, match="the agent broke"):
            RE(agent_plan(bridge, mover, reader, work), lambda n, d: docs.append((n, d)))
        assert RE.state == "idle"
        stop = [d for n, d in docs if n == "stop"]
        assert len(stop) == 1 and stop[0]["exit_status"] == "fail"
        assert [d["seq_num"] for n, d in docs if n == "event"] == [1, 2]
        assert all_still(epics, ioc.prefix, desc)
        bl.move({"sample.x": x0})
    finally:
        bl.close()


def test_pause_resume_and_abort(ioc, epics, desc):
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    from controllers.plans import RunAborted, agent_plan

    bl, bridge, mover, reader, bb = _plan_parts(ioc, desc)
    y0 = bl.positions()["sample.y"]
    moves = [y0 + 0.5 * k for k in (1, 2, 3, 4, 5, 6)]
    ended: dict = {}

    def work():
        try:
            for y in moves:
                bb.move({"sample.y": y})
                bb.acquire()
        except RunAborted as exc:
            ended["aborted"] = str(exc)
            raise
        return "done"

    docs: list = []
    RE = RunEngine({})
    threading.Timer(0.4, RE.request_pause).start()
    try:
        with pytest.raises(RunEngineInterrupted):
            RE(agent_plan(bridge, mover, reader, work), lambda n, d: docs.append((n, d)))
        assert RE.state == "paused"
        RE.resume()  # back to the last checkpoint (before a move), then on to the end
        assert RE.state == "idle"
        events = [d for n, d in docs if n == "event"]
        assert [e["seq_num"] for e in events] == list(range(1, len(events) + 1))
        assert len(events) >= len(moves)
        assert [d["exit_status"] for n, d in docs if n == "stop"] == ["success"]
        assert bl.positions()["sample.y"] == pytest.approx(moves[-1])

        # abort: the run ends, the agent's next request fails, every moved axis stops
        bridge2 = type(bridge)()
        from controllers.plans import BridgedBeamline

        bb2 = BridgedBeamline(bl, bridge2)

        def work2():
            try:
                for y in reversed(moves):
                    bb2.move({"sample.y": y - 0.5})
                    bb2.acquire()
            except RunAborted as exc:
                ended["aborted"] = str(exc)
                raise

        docs.clear()
        threading.Timer(0.4, RE.request_pause).start()
        with pytest.raises(RunEngineInterrupted):
            RE(agent_plan(bridge2, mover, reader, work2), lambda n, d: docs.append((n, d)))
        RE.abort(reason="operator")
        assert RE.state == "idle"
        assert [d["exit_status"] for n, d in docs if n == "stop"] == ["abort"]
        time.sleep(0.2)
        assert "aborted" in ended
        assert all_still(epics, ioc.prefix, desc)
    finally:
        bl.move({"sample.y": y0})
        bl.close()


def test_ctrl_c_on_the_command_line_aborts_cleanly(ioc, epics, desc, tmp_path):
    # steer: it measures from the first second (the default's model agent first spends
    # seconds measuring its levers in the twin), so Ctrl-C lands a few evaluations in
    cmd = [sys.executable, "-m", "controllers.cli", "align", "--epics", "--prefix", ioc.prefix,
           "--stages", "kb", "--agent", "steer", "--budget", "60", "--out", str(tmp_path),
           "--no-progress", "--json"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read_err():
        for line in p.stderr:
            lines.append(line)

    t = threading.Thread(target=read_err, daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("stage kb" in x for x in lines):
        time.sleep(0.1)
    assert any("stage kb" in x for x in lines), "".join(lines)[-3000:]
    time.sleep(3.0)  # a few evaluations in
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    t.join(timeout=5)
    assert p.returncode == 130, (out, "".join(lines)[-3000:])
    assert out.strip(), "".join(lines)[-3000:]
    doc = json.loads(out)
    assert doc["exit_status"] == "abort" and "Ctrl-C" in doc["error"]
    assert doc["success"] is False
    summary = validate(doc["nexus_file"])
    assert summary["status"] == "abort" and summary["points"] >= 2
    with h5py.File(doc["nexus_file"]) as f:
        pts = f["entry/data/point"][()]
        np.testing.assert_array_equal(pts, np.arange(1, len(pts) + 1))
    assert all_still(epics, ioc.prefix, desc)
    assert not list(tmp_path.glob("*.partial"))


def test_command_line_dry_run_and_errors(ioc, desc):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "controllers.cli", "align", "--epics",
                               *args, "--json"], capture_output=True, text=True, timeout=120)

    r = run("--prefix", ioc.prefix, "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["dry_run"]["ok"] and "stages" not in doc
    motors = {c["motor"] for c in doc["dry_run"]["checks"]}
    assert {"kb_v.bend", "m1.pitch", "sample.z"} <= motors
    t0 = time.monotonic()
    r = run("--prefix", "BTNOSUCH:", "--stages", "m1")
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    err = json.loads(r.stdout)
    assert err["type"] == "PvNotFoundError" and "BTNOSUCH:m1:pitch" in err["error"]
    r = run("--prefix", ioc.prefix, "--stages", "m1,kbb")
    assert r.returncode == 2 and "kbb" in json.loads(r.stdout)["error"]
    r = run("--prefix", ioc.prefix, "--agent", "nope")
    assert r.returncode == 2 and "nope" in json.loads(r.stdout)["error"]


@pytest.mark.parametrize("agent_name", ["scan", "nm", "random", "bo", "model", "rl", "hybrid",
                                        "separable", "steer"])
def test_every_agent_runs_over_epics_unchanged(agent_name, ioc, epics, desc):
    """The agents of issue 4 drive the EPICS beamline through the same protocol (a short
    budget on the mono stage: this is about running unchanged, not about converging)."""
    from agents.harness import BenchSettings, References, run_trial
    from agents.objective import Objective
    from agents.problem import AlignmentProblem, default_span
    from agents.registry import make_agent
    from agents.stages import stage

    bl = EpicsBeamline(PvMap(desc, ioc.prefix), movable=["dcm.pitch2", "dcm.roll2"],
                       config=EpicsConfig(connect_timeout_s=3.0))
    try:
        st = stage(desc, "mono")
        refs = References.of(desc, BenchSettings(backend="fast", rays=5000), seed=0)
        start = bl.positions()
        prob = AlignmentProblem(bl, st, Objective.at(st, refs.measured),
                                span=default_span(desc, st), budget=6, trial=f"epics-{agent_name}")
        res = run_trial(make_agent(agent_name), prob, seed=0)
        assert 1 <= res.evaluations <= 6 and res.error is None
        assert [e.trial_id for e in prob.history] == [f"epics-{agent_name}/{k}"
                                                      for k in range(1, res.evaluations + 1)]
        end = bl.positions()
        for i, m in enumerate(st.motors):
            assert prob.lo[i] - 1e-9 <= end[m] <= prob.hi[i] + 1e-9
        assert bl.moved <= {"dcm.pitch2", "dcm.roll2"}
        bl.move({m: start[m] for m in st.motors})
    finally:
        bl.close()
    assert all_still(epics, ioc.prefix, desc)


class _DivergesOnMono:
    """The separable agent, except on the mono stage: there it drives the crystal into a
    corner of the search box and stays there."""

    name = "diverges-on-mono"

    def run(self, problem, rng):
        from agents.registry import make_agent

        if problem.stage.name != "mono":
            return make_agent("separable").run(problem, rng)
        problem.observe_start()
        while problem.remaining > 1:
            problem.evaluate(np.ones(problem.dim))
        return np.ones(problem.dim)


def test_divergence_stops_the_run_and_returns_every_axis_to_its_start(ioc, epics, desc,
                                                                       tmp_path, monkeypatch):
    """RELIABILITY.md: divergence stops the run, and every moved axis goes back to where the
    *run* started (the aligned m1 stage included), through the safety layer and the plan."""
    import controllers.oneclick as oneclick
    from agents.safety import SafetyConfig

    monkeypatch.setattr(oneclick, "agent_for_stage", lambda name, desc, st: _DivergesOnMono())
    bl = EpicsBeamline(PvMap(desc, ioc.prefix), config=EpicsConfig(connect_timeout_s=3.0))
    start = bl.positions()
    bl.close()
    doc = oneclick.align_over_epics(
        desc, ioc.prefix, stage_names=["m1", "mono", "slits"], budget=30, out_dir=tmp_path,
        progress_bar=False, safety=SafetyConfig(divergence_ratio=0.9, divergence_count=2))
    assert doc["stopped"] and "diverged" in doc["stopped"] and doc["success"] is False
    assert [s["stage"] for s in doc["stages"] if s["reason"] != "not_run"] == ["m1", "mono"]
    assert doc["stages"][2]["stage"] == "slits" and doc["stages"][2]["evaluations"] == 0
    assert doc["exit_status"] == "fail" and doc["reason"] == "diverged"
    assert doc["stages"][1]["error"].startswith("DivergenceError")
    assert set(doc["returned_to_start"]) >= {"m1.pitch", "dcm.pitch2"}
    bl = EpicsBeamline(PvMap(desc, ioc.prefix), config=EpicsConfig(connect_timeout_s=3.0))
    try:
        end = bl.positions()
        for m in doc["returned_to_start"]:
            assert end[m] == pytest.approx(start[m], abs=2 * desc.motor(m).resolution + 1e-9), m
    finally:
        bl.close()
    # every acquisition is a point, the one judging the diverged stage included
    assert validate(doc["nexus_file"])["points"] == doc["events"] == doc["evaluations"] + 1
    assert all_still(epics, ioc.prefix, desc)
