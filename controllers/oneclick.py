"""One-click alignment over EPICS (``beamtwin align --epics``).

:func:`align_over_epics` runs the progressive alignment of
:func:`agents.harness.align` against a live beamline, as one bluesky run:

1. **connect**: every PV the run uses connects within a bounded time, or the run
   refuses to start and names each PV that did not (nothing moves);
2. **dry run**: every stage's motors have usable soft limits at the IOC, every
   stage's search box lies inside them, and each agent accepts its stage;
3. **before**: one acquisition and the camera images;
4. **run**: the composed plan (:func:`controllers.plans.agent_plan`) under a
   RunEngine, every move through the safety layer (:class:`agents.safety.SafeBeamline`
   over :class:`controllers.epics_beamline.EpicsBeamline`), every evaluation an
   event, every event a point of the NeXus file;
5. **after**: one acquisition and the images, the report and the NeXus file.

Ctrl-C pauses the RunEngine at the next checkpoint; the run is then aborted, and
every axis it moved gets STOP. The document returned has the keys of
``beamtwin align --json`` on the twin, plus the EPICS ones.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agents.harness import BenchSettings, References, align, check_agent
from agents.objective import Objective
from agents.problem import default_span
from agents.registry import DEFAULT_AGENT, agent_for_stage, make_agent
from agents.safety import SafeBeamline, SafetyConfig
from agents.stages import Stage, ordered_stages
from agents.verdict import ON_FAIL, OnFail, run_verdict
from controllers.epics_beamline import EpicsBeamline, EpicsConfig
from controllers.nexus import DataWriteError, NexusWriter
from controllers.plans import (
    BeamlineMover,
    BeamlineReader,
    BridgedBeamline,
    NexusCallback,
    PlanBridge,
    agent_plan,
    run_to_outcome,
)
from controllers.pvnames import PvMap
from controllers.report import write_report
from twin.cliutil import jsonable
from twin.description import BeamlineDescription
from twin.errors import BeamtwinError, ConfigError

__all__ = ["align_over_epics", "dry_run", "PreflightError", "epics_trial"]


class PreflightError(BeamtwinError, RuntimeError):
    """The dry run found a reason not to start; nothing moved."""


def dry_run(bl: EpicsBeamline, st_list: Sequence[Stage], agent_name: str,
            span_sigmas: float | None = None) -> list[dict[str, Any]]:
    """Check the plan before any motor moves; raise :class:`PreflightError` on a failure.

    Every stage motor must have usable soft limits at the IOC (not ``(0, 0)``,
    low < high), its readback must lie inside them, and its search box must
    overlap them; the agent must accept each stage.
    """
    infos = bl.motors()
    here = bl.positions()
    checks: list[dict[str, Any]] = []
    problems: list[str] = []
    for st in st_list:
        span = default_span(bl.desc, st, span_sigmas)
        for m in st.motors:
            lo, hi = infos[m].low, infos[m].high
            problem = bl.limit_problem(m)
            ok = problem is None
            why = problem or ""
            if ok and not lo <= here[m] <= hi:
                ok, why = False, f"readback {here[m]!r} outside the soft limits [{lo}, {hi}]"
            box = (max(here[m] - span[m], lo), min(here[m] + span[m], hi))
            if ok and box[0] >= box[1]:
                ok, why = False, f"search box {box} is empty inside the soft limits"
            checks.append({"stage": st.name, "motor": m, "low": lo, "high": hi,
                           "position": here[m], "box": list(box), "ok": ok, "why": why})
            if not ok:
                problems.append(f"{st.name}/{m}: {why}")
        try:
            check_agent(agent_for_stage(agent_name, bl.desc, st), st)
        except BeamtwinError as exc:
            problems.append(f"{st.name}: agent {agent_name!r} refuses it: {exc}")
    if problems:
        raise PreflightError("dry run failed, nothing moved: " + "; ".join(problems))
    return checks


def align_over_epics(desc: BeamlineDescription, prefix: str, *, mapping: str | None = None,
                     agent_name: str | None = None, stage_names: Sequence[str] | None = None,
                     budget: int = 100, seed: int = 0, out_dir: str | Path = "beamtwin-align",
                     epics_config: EpicsConfig | None = None,
                     safety: SafetyConfig | None = None,
                     progress: Callable[[str], None] | None = None,
                     progress_bar: bool = True,
                     dry_run_only: bool = False, on_fail: OnFail = "best") -> dict[str, Any]:
    """One-click alignment of the beamline served under *prefix*; the run's document.

    Parameters
    ----------
    desc : BeamlineDescription
    prefix : str
        PV prefix.
    mapping : str, optional
        Mapping file for other PV names (:class:`controllers.pvnames.PvMap`).
    agent_name : str, optional
        Agent for every stage (default: :data:`agents.registry.DEFAULT_AGENT`).
    stage_names : sequence of str, optional
        Stages in order (default: every stage of the beamline, m1 to sample).
    budget : int
        Evaluations per stage.
    seed : int
        Seeds the agents.
    out_dir : path
        Where the NeXus file and the report go.
    on_fail : {"best", "start", "stay"}
        What a failed stage does (:func:`agents.harness.align`).

    The document's ``success``, ``exit_status`` and ``verdict`` come from
    :func:`agents.verdict.run_verdict`; ``run_exit_status`` is the RunEngine's own.
    """
    say = progress or (lambda m: None)
    if on_fail not in ON_FAIL:
        raise ConfigError(f"on_fail must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
    name = agent_name or DEFAULT_AGENT
    make_agent(name)  # an unknown agent is refused before anything connects
    st_list = ordered_stages(desc, stage_names)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 2:
        raise ConfigError(f"budget must be an integer >= 2 evaluations, got {budget!r}")
    pvmap = PvMap.load(desc, prefix, mapping)
    movable = sorted({m for st in st_list for m in st.motors})
    say(f"connecting to {prefix!r} ({len(desc.motors)} motors, {len(movable)} movable)")
    bl = EpicsBeamline(pvmap, movable=movable, config=epics_config)
    try:
        say("dry run: limits, search boxes and agents")
        checks = dry_run(bl, st_list, name)
        doc: dict[str, Any] = {"prefix": prefix, "agent": name, "seed": seed,
                               "dry_run": {"ok": True, "checks": checks}}
        if dry_run_only:
            return doc
        return _run(bl, desc, st_list, name, budget, seed, Path(out_dir), safety, say,
                    progress_bar, doc, on_fail)
    finally:
        bl.close()


def _return_to_start(beamline: BridgedBeamline, start: dict[str, float], axes: list[str],
                     safety: SafetyConfig) -> list[str]:
    """Move *axes* back to *start* in capped steps, through the safety layer and the plan;
    returns the axes moved back."""
    infos = beamline.motors()
    envelope = {m: (infos[m].low, infos[m].high) for m in axes}
    if envelope:
        SafeBeamline(beamline, envelope, safety).move_stepwise({m: start[m] for m in axes})
    return axes


def _references(bl: EpicsBeamline, budget: int, safety: SafetyConfig | None
                ) -> tuple[BenchSettings, References]:
    twin = bl.map.device("twin")
    backend, rays = "fast", 20_000
    if twin is not None:
        backend = str(bl.ca.get(f"{twin}Backend_RBV", as_string=True)) or backend
        rays = int(bl.ca.get(f"{twin}Rays_RBV")) or rays
    settings = BenchSettings(rays=rays, budget=budget, noise=True, backend=backend,
                             safety=safety or SafetyConfig())
    # the ideal beamline, measured as the diagnostics measure it (the agents' reference)
    return settings, References.of(bl.desc, settings, seed=0)


def _snapshot(bl: EpicsBeamline, writer: NexusWriter, when: str) -> tuple[Any, dict[str, Any]]:
    """One acquisition and every camera's image, stored as ``/entry/{when}_{camera}``."""
    obs = bl.acquire()
    images = {d: bl.image(d) for d in bl.map.diagnostic_names if bl.map.image(d) is not None}
    for n, img in images.items():
        if img is not None and writer.error is None:
            with contextlib.suppress(DataWriteError):  # kept in writer.error; reported
                writer.add_image(f"{when}_{n}", img, title=f"{n} {when} alignment")
    return obs, images


def _run(bl: EpicsBeamline, desc: BeamlineDescription, st_list: list[Stage], name: str,
         budget: int, seed: int, out: Path, safety: SafetyConfig | None,
         say: Callable[[str], None], progress_bar: bool, doc: dict[str, Any],
         on_fail: OnFail = "best") -> dict[str, Any]:
    from bluesky import RunEngine

    settings, refs = _references(bl, budget, safety)
    observed_at = next((s.diagnostic for s in st_list if s.name == "kb"), st_list[-1].diagnostic)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    out.mkdir(parents=True, exist_ok=True)
    writer = NexusWriter(out / f"align-{stamp}.h5", title=f"one-click alignment of {desc.name}",
                         signal="fom", axis="point",
                         description=jsonable(asdict(desc)), instrument_name=desc.name,
                         metadata={"agent": name, "seed": seed, "prefix": bl.map.prefix,
                                   "stages": [s.name for s in st_list], "budget": budget,
                                   "config": jsonable({"epics": asdict(bl.config),
                                                       "safety": asdict(settings.safety),
                                                       "backend": settings.backend,
                                                       "rays": settings.rays})})
    with writer:  # on an exception the file is closed as "fail" ("abort" for Ctrl-C)
        say("measuring the beam before alignment")
        before_obs, before_images = _snapshot(bl, writer, "before")
        if writer.error is not None:  # no record of the run: it does not start
            raise DataWriteError(f"{writer.error}; the alignment did not start, nothing "
                                 f"moved")
        bridge = PlanBridge()
        mover, reader = BeamlineMover(bl), BeamlineReader(bl)
        events: list[dict[str, float]] = []
        bar = None
        if progress_bar:
            from tqdm import tqdm

            # the run's real budget: every stage's, and one recovery move each (--on-fail best)
            bar = tqdm(total=(budget + (on_fail == "best")) * len(st_list), desc="align",
                       unit="eval", leave=False)

        def on_stage(k: int, st: Stage, objective: Objective) -> None:
            reader.objective, reader.stage_index = objective, k
            if bar is not None:
                bar.set_description(f"align {st.name}")

        def collect(name_: str, d: dict[str, Any]) -> None:
            if name_ == "event":
                ev = {k[len("beam_"):]: v for k, v in d["data"].items() if k.startswith("beam_")}
                events.append(ev)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(fom=f"{ev.get('fom', math.nan):.3f}")

        outcome: dict[str, Any] = {}
        run_start = bl.positions()

        def work() -> dict[str, Any]:
            bridged = BridgedBeamline(bl, bridge)
            outcome["align"] = align(desc, bridged, lambda st: agent_for_stage(name, desc, st),
                                     stage_names=[s.name for s in st_list], settings=settings,
                                     references=refs, seed=seed, progress=say,
                                     on_stage=on_stage, stop_on_divergence=True,
                                     on_fail=on_fail)
            if outcome["align"].get("returned_to_start") is not None:
                outcome["returned"] = outcome["align"]["returned_to_start"]
            elif outcome["align"].get("stopped"):
                say("return to safe: every moved axis goes back to where the run started")
                outcome["returned"] = _return_to_start(bridged, run_start, sorted(bl.moved),
                                                       settings.safety)
            return outcome["align"]

        RE = RunEngine({}, call_returns_result=True)
        nexus_cb = NexusCallback(writer, list(desc.motors))
        RE.subscribe(nexus_cb)
        RE.subscribe(collect)
        md = {"plan_name": "beamtwin_align", "agent": name, "prefix": bl.map.prefix,
              "stages": [s.name for s in st_list], "budget": budget, "seed": seed}
        t0 = time.monotonic()
        try:
            exit_status, error = run_to_outcome(
                RE, agent_plan(bridge, mover, reader, work, md=md), [mover, reader], say)
        finally:
            if bar is not None:
                bar.close()
        result: dict[str, Any] | None = outcome.get("align")
        run_s = time.monotonic() - t0
        st_docs = (result or {}).get("stages", [])
        after_obs = None
        after_images: dict[str, Any] = {}
        if exit_status == "success":
            say("measuring the beam after alignment")
            after_obs, after_images = _snapshot(bl, writer, "after")
        ideal = refs.measured[observed_at]
        final = after_obs.reading(observed_at).stats if after_obs is not None else None
        refusals = [r for s in st_docs for r in s.get("refusals", [])]
        if exit_status == "abort":
            verdict = run_verdict(st_docs, final, ideal, aborted=error or "aborted")
        elif exit_status != "success":  # an exception ended the run
            verdict = run_verdict(st_docs, final, ideal, failed=error or exit_status)
        else:
            verdict = run_verdict(st_docs, final, ideal)
        doc.update({
            "success": verdict.aligned,
            "misalign": None, "evaluations": sum(s["evaluations"] for s in st_docs),
            # move commands sent to the IOC: the stages', recovery and return
            # moves, and those of a run an error ended (which has no stage documents)
            "moves": bl.moves_sent, "beamline_time_s": run_s,
            "stages": st_docs, "observed_at": observed_at,
            "before": before_obs.reading(observed_at).stats.to_dict(),
            "final": final.to_dict() if final is not None else None,
            "ideal": ideal.to_dict(),
            "final_flux_ratio": (final.flux / ideal.flux if final is not None and ideal.flux > 0
                                 else None),
            "stages_aligned": sum(bool(s["success"]) for s in st_docs),
            "stopped": (result or {}).get("stopped"),
            "returned_to_start": outcome.get("returned"),
            "exit_status": verdict.exit_status, "run_exit_status": exit_status,
            "reason": verdict.reason, "verdict": verdict.to_dict(), "on_fail": on_fail,
            "error": error, "beamline": desc.name,
            "run_uid": (nexus_cb.start or {}).get("uid"),
            "events": len(events),
        "timing": {"run_s": run_s,
                   "moving_s": sum(m["duration_s"] for m in bl.move_log),
                   "acquisitions": bl.acquisitions},
            "safety": {"refusals": refusals, "beam_losses": bl.watchdog.losses,
                       "suspended_s": bl.watchdog.suspended_s,
                       "frames_discarded": bl.frames_discarded, "ca_puts": len(bl.ca.puts),
                       "moved_axes": sorted(bl.moved)}})
        nexus: Path | None = None
        try:  # a file that failed during the run raises its error again, untouched
            writer.set_metadata("refusals", refusals)
            writer.set_metadata("error", error or "")
            writer.set_metadata("result", jsonable({k: v for k, v in doc.items()
                                                    if k not in ("dry_run", "stages")}))
            writer.set_metadata("verdict", jsonable(verdict.to_dict()))
            nexus = writer.close(verdict.exit_status)
        except DataWriteError:
            writer.abandon()
    doc["nexus_file"] = str(nexus.resolve()) if nexus is not None else None
    doc["data_error"] = str(writer.error) if writer.error is not None else None
    doc["partial_file"] = (str(writer.partial) if nexus is None and writer.partial.exists()
                           else None)
    if writer.error is not None:
        say(f"the data file could not be written: {writer.error}")
        if doc["exit_status"] == "success":  # aligned, but the run's record is lost
            doc.update(success=False, exit_status="fail", reason="data_not_written")
        doc["error"] = doc["error"] or f"DataWriteError: {writer.error}"
    try:
        report = write_report(out, doc, events=events, before_images=before_images,
                              after_images=after_images, moves=bl.move_log)
        doc["report"] = str(report.resolve())
    except OSError as exc:
        doc["report"] = None
        doc["report_error"] = f"{exc.strerror or exc} ({exc.filename or out})"
        say(f"the report could not be written: {doc['report_error']}")
    return doc



def epics_trial(desc_preset: str | None, *, backend: str, rays: int, misalign: float,
                budget: int, agent_name: str | None, on_fail: OnFail, out_dir: str | Path,
                disturbances: bool = True, timeout_s: float = 3600.0
                ) -> Callable[[int], dict[str, Any]]:
    """A trial function for :func:`agents.oneclick_bench.bench_oneclick` over EPICS.

    Each trial starts ``beamtwin ioc`` with the twin *backend* behind it, hidden errors
    drawn at *misalign* from the trial's seed and (by default) the disturbance model,
    then runs ``beamtwin align --epics --json`` against it in a fresh process (each
    gets a fresh CA client context that finds only that IOC), and stops the IOC.
    Returns the run's document, plus ``returncode`` and ``command_wall_s``.
    """
    import json
    import os
    import subprocess
    import sys

    from ioc_sim.process import IocProcess, client_env, free_port, random_prefix

    def trial(seed: int) -> dict[str, Any]:
        port = free_port()
        env = dict(os.environ, **client_env([port]))
        prefix = random_prefix()
        args = ["--backend", backend, "--rays", str(rays), "--misalign", str(misalign),
                "--seed", str(seed), "--disturbances" if disturbances else "--no-disturbances"]
        cmd = [sys.executable, "-m", "controllers.cli", "align", "--epics", "--prefix", prefix,
               "--budget", str(budget), "--seed", str(seed), "--on-fail", on_fail,
               "--out", str(Path(out_dir) / f"seed{seed}"), "--no-progress", "--json"]
        if desc_preset is not None:
            args += ["--preset", str(desc_preset)]
            cmd += ["--preset", str(desc_preset)]
        if agent_name is not None:
            cmd += ["--agent", agent_name]
        with IocProcess(prefix, port, args):
            t0 = time.monotonic()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
            wall = time.monotonic() - t0
        try:
            doc = json.loads(r.stdout)
        except json.JSONDecodeError as exc:
            raise BeamtwinError(f"seed {seed}: align --epics printed no JSON (exit "
                                f"{r.returncode}): {r.stderr[-500:]}") from exc
        if "error" in doc and "stages" not in doc:
            raise BeamtwinError(f"seed {seed}: align --epics refused: {doc['error']}")
        doc["seed"] = seed
        doc["returncode"] = r.returncode
        doc["command_wall_s"] = wall
        doc.pop("dry_run", None)
        for s in doc.get("stages", []):
            s.pop("refusals", None)
        return doc

    return trial
