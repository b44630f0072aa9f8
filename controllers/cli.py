"""The ``beamtwin`` command line.

Every command takes ``--json`` and then prints exactly one JSON document on
stdout (progress and logs go to stderr). Command names, options and JSON keys
are a contract with users' scripts: later versions add to them, never rename.

On bad input a command prints ``error: ...`` (or, with ``--json``, a JSON
object ``{"error": ..., "type": ...}``) and exits with status 2; nothing moves.

Commands
--------
``beamtwin demo``           the main job on the built-in default beamline
``beamtwin twin info``      elements, motors and diagnostics of a beamline
``beamtwin twin trace``     trace a beamline state and report the beam
``beamtwin bench twin``     tracing speed
``beamtwin bench ioc``      IOC analysis time, CA round trips, monitor rates
``beamtwin ioc``            serve the beamline as simulated EPICS IOCs
``beamtwin align``          one-click progressive alignment of a simulated beamline
``beamtwin bench align``    alignment agents on equal terms
``beamtwin train``          train an RL alignment policy on the fast twin
``beamtwin scan``           scans (BLISS names) with online analysis and NeXus data
``beamtwin bench scan``     adaptive and coarse-to-fine maps against uniform grids
``beamtwin stabilize``      feed-forward beam stabilisation: calibrate, bench, run
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from controllers.stabilize_cli import stabilize
from ioc_sim.cli import ioc_command
from twin import __version__
from twin.cliutil import (
    SEED,
    check_device,
    check_writable,
    emit,
    json_option,
    jsonable,
    preset_option,
    run_command,
)
from twin.description import BeamlineDescription, Element, MotorSpec
from twin.errors import ConfigError
from twin.hidden import HiddenErrors
from twin.limits import MAX_RAYS, MIN_RAYS
from twin.presets import load_preset

__all__ = ["main", "cli"]


# --------------------------------------------------------------------------- helpers
_emit = emit
_run = run_command


def _parse_sets(items: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected MOTOR=VALUE, e.g. --set kb_v.pitch=5")
        name, _, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"--set {item!r}: value {raw!r} is not a number") from None
        if name in out:
            raise ConfigError(f"--set {item!r}: motor {name!r} is set twice")
        out[name] = value
    return out


def _element_doc(e: Element) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": e.name, "type": e.kind}
    for f in dataclasses.fields(e):
        if f.name in ("name", "motors"):
            continue
        doc[f.name] = jsonable(getattr(e, f.name))
    doc["motors"] = [f"{e.name}.{m.axis}" for m in e.motors]
    return doc


def _motor_doc(e: Element, m: MotorSpec) -> dict[str, Any]:
    return {"name": f"{e.name}.{m.axis}", "element": e.name, "axis": m.axis, "units": m.units,
            "low": m.low, "high": m.high, "position": m.position,
            "resolution": m.resolution, "speed": m.speed, "backlash": m.backlash,
            "encoder_error": m.encoder_error, "misalign_sigma": m.misalign_sigma,
            "description": m.description}


def info_doc(desc: BeamlineDescription) -> dict[str, Any]:
    """The ``twin info --json`` document."""
    return {
        "name": desc.name,
        "description": desc.description,
        "energy_eV": desc.energy_eV,
        "elements": [_element_doc(e) for e in desc.elements],
        "motors": [_motor_doc(e, m) for e in desc.elements for m in e.motors],
        "diagnostics": [_element_doc(e) for e in (*desc.diagnostics, desc.detector)],
        "detector": desc.detector.name,
    }


def _stats_line(name: str, s: dict[str, Any]) -> str:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    return (f"  {name:<12} flux {f(s['flux'], '10.3e')} ph/s  "
            f"centroid ({f(s['centroid_x_um'], '9.3f')}, {f(s['centroid_y_um'], '9.3f')}) um  "
            f"FWHM {f(s['fwhm_x_um'], '9.3f')} x {f(s['fwhm_y_um'], '9.3f')} um")


def _trace_text(doc: dict[str, Any], detector: str) -> str:
    lines = [f"beam at {doc['energy_eV']:.2f} eV, ring current {doc['ring_current_mA']:.1f} mA, "
             f"{doc['rays']} rays, backend {doc['backend']}"]
    for n, s in doc["diagnostics"].items():
        lines.append(_stats_line(n, s))
    lines.append(_stats_line(detector, doc))
    if doc.get("png"):
        lines.append(f"picture: {doc['png']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="beamtwin")
def cli() -> None:
    """beamtwin: a digital twin of a synchrotron beamline, and the tools to align it."""




@cli.group()
def twin() -> None:
    """Inspect and trace the digital twin."""


@twin.command("info")
@preset_option
@json_option
def twin_info(preset: str | None, as_json: bool) -> None:
    """List the elements, motors and diagnostics of a beamline."""

    def body() -> None:
        desc = load_preset(preset)
        doc = info_doc(desc)

        def text() -> str:
            lines = [f"{desc.name}: {desc.description}", f"design energy {desc.energy_eV} eV",
                     f"{len(desc.elements)} elements, {len(doc['motors'])} motors", ""]
            for e in desc.elements:
                lines.append(f"{e.y_m:8.3f} m  {e.name:<12} {e.kind}")
                for m in e.motors:
                    lines.append(f"{'':14}{e.name}.{m.axis:<8} {m.position:>12.6g} {m.units:<5}"
                                 f" [{m.low:g}, {m.high:g}]  {m.description}")
            return "\n".join(lines)

        _emit(as_json, doc, text)

    _run(as_json, body)


def trace_doc(desc: BeamlineDescription, *, backend: str, rays: int, seed: int, misalign: float,
              sets: dict[str, float], noise: bool = False) -> tuple[dict[str, Any], Any]:
    """Trace one state as ``twin trace`` does; returns (JSON doc, Observation)."""
    from twin.tracer import Twin

    hidden = HiddenErrors.draw(desc, misalign, seed)
    tw = Twin(desc, backend=backend, rays=rays)
    obs = tw.trace(sets, hidden=hidden, seed=seed, noise=noise)
    doc = obs.to_dict()
    doc["misalign"] = misalign
    doc["set"] = sets
    return doc, obs


@twin.command("trace")
@preset_option
@click.option("--backend", default="xrt", show_default=True, help="Tracing fidelity.")
@click.option("--rays", type=int, default=10_000, show_default=True, help="Rays per trace.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the rays and the hidden errors.")
@click.option("--misalign", type=float, default=0.0, show_default=True,
              help="Scale of the random hidden errors (0: ideal beamline, 1: day one).")
@click.option("--set", "sets", multiple=True, metavar="MOTOR=VALUE",
              help="Motor position in its units; repeatable.")
@click.option("--noise", is_flag=True, help="Add detector noise (Poisson, readout).")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Also write a picture of the beam.")
@json_option
def twin_trace(preset: str | None, backend: str, rays: int, seed: int, misalign: float,
               sets: tuple[str, ...], noise: bool, png: str | None, as_json: bool) -> None:
    """Trace the beamline and report flux, centroid and size at every diagnostic."""

    def body() -> None:
        if png:  # an output that cannot be written fails before the trace
            check_writable(png, "--png", picture=True)
        desc = load_preset(preset)
        doc, obs = trace_doc(desc, backend=backend, rays=rays, seed=seed, misalign=misalign,
                             sets=_parse_sets(sets), noise=noise)
        if png:
            from twin.plotting import plot_observations

            label = "ideal" if misalign == 0 else f"misaligned x{misalign:g}"
            doc["png"] = str(plot_observations([obs], [label], png,
                                               title=f"{desc.name} ({backend})").resolve())
        _emit(as_json, doc, lambda: _trace_text(doc, desc.detector.name))

    _run(as_json, body)


@cli.group()
def bench() -> None:
    """Benchmarks that print JSON."""


@bench.command("twin")
@preset_option
@click.option("--backend", default="xrt", show_default=True,
              help="xrt: full and cached re-traces per second; fast: batched states per second "
                   "against xrt in the same run.")
@click.option("--rays", type=int, default=None,
              help="Rays per state [default: 10000 for xrt, 1000 for fast].")
@click.option("--batch", type=int, default=1024, show_default=True,
              help="States per batch (fast backend).")
@click.option("--repeats", type=int, default=None, help="Repetitions [default: 5 xrt, 3 fast].")
@click.option("--motor", default=None, help="Motor moved for the cached re-trace (xrt).")
@click.option("--device", default=None, help="cpu or cuda (fast backend; default: cuda if "
              "available).")
@click.option("--vary", default=None, metavar="ELEMENTS",
              help="Comma-separated elements whose motors vary (fast backend): one alignment "
                   "stage of one beamline, e.g. kb_h,kb_v. Default: every motor, random "
                   "beamlines.")
@click.option("--compile/--eager", "compile_", default=False, show_default=True,
              help="Fast backend: compile its kernels with torch.compile (a one-off "
                   "compilation, reported as first_call_s, then 4-7x faster at batch "
                   "1024).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64",
              show_default=True,
              help="Fast backend: floating-point precision of the rays (float32: about 3x "
                   "faster compiled, as accurate against xrt; motor positions stay "
                   "float64).")
@json_option
def bench_twin_cmd(preset: str | None, backend: str, rays: int | None, batch: int,
                   repeats: int | None, motor: str | None, device: str | None,
                   vary: str | None, compile_: bool, dtype: str, as_json: bool) -> None:
    """Tracing speed of the twin."""

    def body() -> None:
        from twin.bench import bench_fast, bench_twin
        from twin.tracer import BACKENDS

        if backend not in BACKENDS:
            from twin.errors import UnknownNameError

            raise UnknownNameError(f"unknown backend {backend!r}; available backends: "
                                   f"{', '.join(BACKENDS)}")
        if repeats is not None and repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {repeats}")
        if batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {batch}")
        if rays is not None and not MIN_RAYS <= rays <= MAX_RAYS:
            raise ConfigError(f"--rays must be within [{MIN_RAYS}, {MAX_RAYS}], got {rays}")
        check_device(device)
        desc = load_preset(preset)
        if motor is not None:
            desc.motor(motor)
        if backend == "fast":
            doc = bench_fast(desc, rays=rays or 1000, batch=batch, repeats=repeats or 3,
                             device=device,
                             vary=[v.strip() for v in vary.split(",")] if vary else None,
                             compile=compile_, dtype=dtype)
        else:
            doc = bench_twin(desc, rays=rays or 10_000, backend=backend, repeats=repeats or 5,
                             motor=motor)
        _emit(as_json, doc, lambda: "\n".join(f"{k}: {v}" for k, v in doc.items()))

    _run(as_json, body)


@bench.command("ioc")
@click.option("--round-trips", type=int, default=300, show_default=True,
              help="put(wait)+get round trips per measurement.")
@click.option("--monitor-s", type=float, default=3.0, show_default=True,
              help="Seconds of monitor counting per server.")
@json_option
def bench_ioc_cmd(round_trips: int, monitor_s: float, as_json: bool) -> None:
    """Frame-analysis time, CA round trips and monitor rates of the simulated IOCs
    (beamtwin's CA server against caproto's stock one, in the same run)."""

    def body() -> None:
        from controllers.bench_ioc import bench_ioc

        if round_trips < 10:
            raise ConfigError(f"--round-trips must be >= 10, got {round_trips}")
        if not (monitor_s > 0 and math.isfinite(monitor_s)):
            raise ConfigError(f"--monitor-s must be a finite number > 0, got {monitor_s}")
        doc = bench_ioc(round_trips=round_trips, monitor_s=monitor_s,
                        progress=lambda msg: click.echo(f"bench ioc: {msg}", err=True))

        def text() -> str:
            rt, mon = doc["round_trip"], doc["monitor"]
            lines = [f"frame statistics 1024x1024 float32: {doc['frame_stats_1024_ms']:.2f} ms "
                     f"(goal {doc['goal_frame_stats_ms']} ms)"]
            for s in ("stock", "nodelay", "beamtwin"):
                lines.append(
                    f"{s:>8}: put(wait)+get {rt[s]['put_wait_get_field']['median_ms']:.2f} ms, "
                    f"null move {rt[s]['put_wait_get_null_move']['median_ms']:.2f} ms, "
                    f"put->monitor {rt[s]['put_to_monitor']['median_ms']:.2f} ms, "
                    f"1 kHz scalar received {mon[s]['scalar_received_hz']:.0f} Hz, 512x512 "
                    f"image {mon[s]['image_received_hz']:.0f} Hz")
            return "\n".join(lines)

        _emit(as_json, doc, text)

    _run(as_json, body)


def _bench_settings(rays: int, budget: int, misalign: float, backend: str,
                    noise: bool) -> Any:
    from agents.harness import BenchSettings

    if isinstance(budget, bool) or budget < 2:
        raise ConfigError(f"--budget must be an integer >= 2, got {budget}")
    if not (math.isfinite(misalign) and misalign >= 0):
        raise ConfigError(f"--misalign must be a finite number >= 0, got {misalign}")
    if not MIN_RAYS <= rays <= MAX_RAYS:
        raise ConfigError(f"--rays must be within [{MIN_RAYS}, {MAX_RAYS}], got {rays}")
    return BenchSettings(rays=rays, budget=budget, misalign=misalign, backend=backend,
                         noise=noise)


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"expected a comma-separated list, got {value!r}")
    return items


align_options = [
    click.option("--seed", type=SEED, default=0, show_default=True,
                 help="Seeds the hidden errors, rays and noise (trial k uses seed + k; "
                      "bench align draws one afresh when it is not given)."),
    click.option("--misalign", type=float, default=1.0, show_default=True,
                 help="Scale of the hidden errors (1: day one)."),
    click.option("--budget", type=int, default=100, show_default=True,
                 help="Evaluations per stage and trial, the final measurement included."),
    click.option("--rays", type=int, default=5000, show_default=True, help="Rays per trace."),
    click.option("--backend", type=click.Choice(["xrt", "fast"]), default="xrt",
                 show_default=True, help="Twin that simulates the beamline."),
    click.option("--noise/--no-noise", default=True, show_default=True,
                 help="Detector and diagnostic noise."),
]


#: where a beamline served over EPICS is found (align --epics, scan --epics)
epics_name_options = [
    click.option("--prefix", default="BT:", show_default=True, help="PV prefix (with --epics)."),
    click.option("--mapping", type=click.Path(dir_okay=False), default=None,
                 help="PV mapping file for other PV names (TOML; with --epics)."),
]


def _with(options):
    def deco(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return deco


@cli.command("align")
@preset_option
@click.option("--agent", default=None, help="Agent for every stage [default: auto, the "
              "benchmark's best for each stage: model on the KB, steer elsewhere].")
@click.option("--stages", default=None, metavar="S1,S2",
              help="Stages in order [default: m1,mono,slits,kb,sample].")
@_with(align_options)
@click.option("--epics", is_flag=True, help="Align the beamline served over EPICS under "
              "--prefix (a live or simulated IOC) instead of a simulated one; --misalign, "
              "--rays, --backend and --noise then do not apply.")
@_with(epics_name_options)
@click.option("--out", type=click.Path(file_okay=False), default="beamtwin-align",
              show_default=True, help="Folder for the NeXus file and the report (with --epics).")
@click.option("--dry-run", is_flag=True, help="Only connect and check limits, search boxes "
              "and agents; move nothing (with --epics).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr (with --epics).")
@click.option("--on-fail", "on_fail", type=click.Choice(["best", "start", "stay"]),
              default="best", show_default=True,
              help="A stage that fails: best = move to the best point it measured and go "
                   "on; start = end the run and return every moved axis to where the run "
                   "started; stay = leave it where the agent stopped and go on.")
@json_option
def align_cmd(preset: str | None, agent: str | None, stages: str | None, seed: int,
              misalign: float, budget: int, rays: int, backend: str, noise: bool, epics: bool,
              prefix: str, mapping: str | None, out: str, dry_run: bool, progress: bool,
              on_fail: str, as_json: bool) -> None:
    """One-click progressive alignment: of a misaligned simulated beamline, or over EPICS.

    Exit status: 0 aligned, 1 not aligned (the JSON's ``reason`` and ``verdict`` say
    why), 130 aborted, 2 bad input (nothing moved).
    """

    def body() -> None:
        desc = load_preset(preset)
        say = (lambda m: click.echo(f"align: {m}", err=True))  # noqa: E731
        if epics:
            from controllers.oneclick import align_over_epics

            if isinstance(budget, bool) or budget < 2:
                raise ConfigError(f"--budget must be an integer >= 2, got {budget}")
            if not dry_run:  # the NeXus file and report: writable before anything connects
                check_writable(out, "--out", folder=True)
            doc = align_over_epics(desc, prefix, mapping=mapping, agent_name=agent,
                                   stage_names=_split(stages), budget=budget, seed=seed,
                                   out_dir=out, progress=say, progress_bar=progress,
                                   dry_run_only=dry_run, on_fail=on_fail)
            if dry_run:
                _emit(as_json, doc, lambda: f"dry run passed: {len(doc['dry_run']['checks'])} "
                                            f"motor checks, nothing moved")
                return
        else:
            from agents.bench import one_click_align

            settings = _bench_settings(rays, budget, misalign, backend, noise)
            doc = one_click_align(desc, agent_name=agent, stage_names=_split(stages),
                                  seed=seed, settings=settings, progress=say, on_fail=on_fail)
        _emit(as_json, doc, lambda: _align_text(doc))
        from agents.verdict import EXIT_CODES

        sys.exit(EXIT_CODES[doc["exit_status"]])

    _run(as_json, body)


def _align_text(doc: dict[str, Any]) -> str:
    from agents.verdict import fmt3

    lines = []
    for s in doc["stages"]:
        v = s.get("verdict") or {"aligned": s["success"], "reason": None, "detail": ""}
        mark = "ok " if v["aligned"] else "NOT"
        line = (f"{s['stage']:>7}: {mark} {s['evaluations']:>4} evaluations, "
                f"fom {fmt3(s['final'].get('fom'))}")
        if not v["aligned"]:
            line += f"  [{v['reason']}: {v['detail']}]"
        lines.append(line)
    f, i = doc["final"], doc["ideal"]
    if doc.get("error"):
        lines.append(f"run ended: {doc.get('run_exit_status', doc.get('exit_status'))}: "
                     f"{doc['error']}")
    verdict = doc.get("verdict") or {}
    head = "ALIGNED" if doc["success"] else f"NOT aligned ({verdict.get('reason')})"
    lines.append(f"{head}: {doc['evaluations']} evaluations, {doc['moves']} moves, "
                 f"{fmt3(doc['beamline_time_s'])} s of beamline time")
    if f is not None:
        lines.append(f"  at {doc.get('observed_at', 'the sample')}: flux {fmt3(f['flux'])} ph/s "
                     f"({fmt3(doc.get('final_flux_ratio'))} x the reference), FWHM "
                     f"{fmt3(f['fwhm_x_um'])} x {fmt3(f['fwhm_y_um'])} um (reference "
                     f"{fmt3(i['fwhm_x_um'])} x {fmt3(i['fwhm_y_um'])})")
    if not doc["success"] and verdict.get("detail"):
        lines.append(f"  why: {verdict['detail']}")
    if doc.get("returned_to_start"):
        lines.append(f"  returned to start: {', '.join(doc['returned_to_start'])}")
    for key in ("nexus_file", "report"):
        if doc.get(key):
            lines.append(f"{key.replace('_', ' ')}: {doc[key]}")
    return "\n".join(lines)


@bench.command("align")
@preset_option
@click.option("--agents", "agent_list", default="scan,nm,random,bo,model", show_default=True,
              help="Comma-separated agents: scan, nm, random, bo, model, rl, hybrid, "
                   "separable, steer, auto.")
@click.option("--stage", "stage_name", default="kb", show_default=True, help="Stage.")
@click.option("--trials", type=int, default=10, show_default=True)
@_with(align_options)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the convergence plot (PNG).")
@json_option
def bench_align_cmd(preset: str | None, agent_list: str, stage_name: str, trials: int,
                    seed: int, misalign: float, budget: int, rays: int, backend: str,
                    noise: bool, plot_path: str | None, as_json: bool) -> None:
    """Every agent on the same seeded misaligned beamlines, judged where it stops."""

    drawn = click.get_current_context().get_parameter_source("seed") == \
        click.core.ParameterSource.DEFAULT

    def body() -> None:
        from tqdm import tqdm

        from agents.bench import bench_align, plot_convergence
        from agents.oneclick_bench import fresh_seed

        nonlocal seed
        if drawn:  # no --seed: trials on beamlines drawn afresh, never a fixed list
            seed = fresh_seed()
        if plot_path:
            check_writable(plot_path, "--plot", picture=True)
        desc = load_preset(preset)
        settings = _bench_settings(rays, budget, misalign, backend, noise)
        names = _split(agent_list) or []
        bars: dict[str, Any] = {}

        def progress(name: str, k: int, n: int) -> None:
            if name not in bars:
                bars[name] = tqdm(total=n, desc=f"{name:>8}", file=sys.stderr, leave=True)
            bars[name].update(1)
            if k == n:
                bars[name].close()

        doc, raw = bench_align(desc, names, stage_name, trials=trials, seed=seed,
                               settings=settings, progress=progress)
        doc["seed_drawn"] = drawn
        if plot_path:
            doc["plot"] = plot_convergence(raw, plot_path, title=f"stage {stage_name}, "
                                           f"{trials} trials, misalign {misalign:g}")

        def text() -> str:
            lines = [f"{'agent':>8} success  median  p90  flux  fwhm  s/eval"]
            for n, a in doc["agents"].items():
                lines.append(f"{n:>8} {a['success_rate']:>6.0%} {a['median_evaluations']:>7.0f}"
                             f" {a['p90_evaluations']:>4.0f} {a['final_flux_ratio'] or 0:>5.2f}"
                             f" {a['final_fwhm_ratio'] or 0:>5.2f} "
                             f"{a['optimizer_s_per_eval']:.4f}")
            return "\n".join(lines)

        _emit(as_json, doc, text)

    _run(as_json, body)


@bench.command("oneclick")
@preset_option
@click.option("--trials", type=int, default=50, show_default=True,
              help="One-click runs, each on its own freshly seeded beamline.")
@click.option("--seed", type=SEED, default=None,
              help="Base seed (trial k uses seed + k) [default: drawn afresh and reported].")
@click.option("--misalign", type=float, default=1.0, show_default=True,
              help="Scale of the hidden errors (1: day one).")
@click.option("--budget", type=int, default=100, show_default=True,
              help="Evaluations per stage.")
@click.option("--rays", type=int, default=5000, show_default=True, help="Rays per trace.")
@click.option("--backend", type=click.Choice(["xrt", "fast"]), default="xrt",
              show_default=True, help="Twin that simulates the beamline (behind the IOC "
              "with --epics).")
@click.option("--noise/--no-noise", default=True, show_default=True,
              help="Detector and diagnostic noise (twin trials).")
@click.option("--agent", default=None, help="Agent for every stage [default: auto].")
@click.option("--on-fail", "on_fail", type=click.Choice(["best", "start", "stay"]),
              default="best", show_default=True, help="As for beamtwin align.")
@click.option("--epics", is_flag=True, help="Each trial starts an IOC (the twin behind it, "
              "disturbances on) and aligns it over Channel Access.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Local worker processes for twin trials.")
@click.option("--out", type=click.Path(file_okay=False), default="beamtwin-bench-oneclick",
              show_default=True, help="Folder for the EPICS runs' NeXus files and reports.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the plot of per-stage evaluations and failures (PNG).")
@click.option("--runs", "runs_path", type=click.Path(dir_okay=False), default=None,
              help="Also write every run's document (JSON).")
@json_option
def bench_oneclick_cmd(preset: str | None, trials: int, seed: int | None, misalign: float,
                       budget: int, rays: int, backend: str, noise: bool, agent: str | None,
                       on_fail: str, epics: bool, workers: int, out: str,
                       plot_path: str | None, runs_path: str | None, as_json: bool) -> None:
    """One-click alignment on many freshly seeded beamlines: success rate with its 95 %
    interval, evaluations, beamline time, and every failure with its stage and reason."""

    def body() -> None:
        from tqdm import tqdm

        from agents.oneclick_bench import bench_oneclick, plot_oneclick

        desc = load_preset(preset)
        settings = _bench_settings(rays, budget, misalign, backend, noise)
        for option, path in (("--plot", plot_path), ("--runs", runs_path)):
            if path:  # an output that cannot be written fails first
                check_writable(path, option, picture=option == "--plot")
        if epics:
            check_writable(out, "--out", folder=True)
        trial_fn = None
        if epics:
            from controllers.oneclick import epics_trial

            trial_fn = epics_trial(preset, backend=backend, rays=rays, misalign=misalign,
                                   budget=budget, agent_name=agent, on_fail=on_fail,
                                   out_dir=out)
        bar = tqdm(total=trials, desc="oneclick", unit="run", file=sys.stderr, leave=False)
        aligned = [0]

        def progress(run: dict[str, Any]) -> None:
            if "seed_drawn" in run:  # reproducible even if the run is cut short
                click.echo(f"bench oneclick: base seed {run['seed_drawn']} (drawn afresh)",
                           err=True)
                return
            aligned[0] += bool(run["success"])
            bar.update(1)
            bar.set_postfix(aligned=f"{aligned[0]}/{bar.n}")

        try:
            doc, runs = bench_oneclick(desc, trials=trials, seed=seed, settings=settings,
                                       agent_name=agent, on_fail=on_fail, workers=workers,
                                       trial_fn=trial_fn, progress=progress)
        finally:
            bar.close()
        doc["epics"] = epics
        if plot_path:
            doc["plot"] = plot_oneclick(doc, runs, plot_path)
        if runs_path:
            with open(runs_path, "w") as fh:
                json.dump(jsonable({"summary": doc, "runs": runs}), fh, indent=1)
            doc["runs_file"] = runs_path

        def text() -> str:
            from agents.verdict import fmt3

            lo, hi = doc["success_ci95"]
            lines = [f"{doc['aligned']} of {doc['trials']} aligned ({doc['success_rate']:.0%}, "
                     f"95 % CI {lo:.0%}-{hi:.0%}); evaluations median "
                     f"{fmt3(doc['median_evaluations'])}, p90 {fmt3(doc['p90_evaluations'])}; "
                     f"beamline time median {fmt3(doc['median_beamline_time_s'])} s "
                     f"(seeds {doc['seed']}..{doc['seed'] + trials - 1})",
                     f"{'stage':>8} aligned  median  p90  failures"]
            for n, st in doc["stages"].items():
                fails = ", ".join(f"{k} {v}" for k, v in st["failures"].items()) or "-"
                lines.append(f"{n:>8} {st['aligned']:>3}/{st['runs']:<3} "
                             f"{fmt3(st['median_evaluations']):>6} "
                             f"{fmt3(st['p90_evaluations']):>4}  {fails}")
            return "\n".join(lines)

        _emit(as_json, doc, text)

    _run(as_json, body)


def _energies(value: str | None) -> tuple[float, ...]:
    items = _split(value) or []
    out = []
    for v in items:
        try:
            out.append(float(v))
        except ValueError:
            raise ConfigError(f"--energies takes energies in eV, comma-separated; got "
                              f"{v!r}") from None
    return tuple(out)


def _widths(v: str) -> tuple[int, ...]:
    """``--net-arch`` as layer widths."""
    try:
        return tuple(int(w) for w in v.split(","))
    except ValueError:
        raise ConfigError(f"--net-arch takes layer widths, comma-separated integers; got "
                          f"{v!r}") from None


@cli.command("train")
@preset_option
@click.option("--stage", "stage_name", default="kb", show_default=True, help="Stage to learn.")
@click.option("--algo", type=click.Choice(["ppo", "sac", "td3"]), default="ppo",
              show_default=True, help="stable-baselines3 algorithm.")
@click.option("--timesteps", type=int, default=200_000, show_default=True,
              help="Environment steps, summed over the parallel beamlines.")
@click.option("--envs", "num_envs", type=int, default=16, show_default=True,
              help="Beamlines traced in one batch.")
@click.option("--rays", type=int, default=300, show_default=True,
              help="Rays per beamline state (fast twin).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--max-steps", type=int, default=25, show_default=True, help="Steps per episode.")
@click.option("--max-step", type=float, default=0.2, show_default=True,
              help="Largest move per step, fraction of each motor's search half-width.")
@click.option("--p-source", type=float, default=0.5, show_default=True,
              help="Probability of a source that is not the design's (domain randomisation).")
@click.option("--image-pixels", type=int, default=0, show_default=True,
              help="Side of a downsampled detector image in the observation (0: none).")
@click.option("--energies", default=None, metavar="E1,E2",
              help="Photon energies drawn per episode, eV [default: the design energy].")
@click.option("--imager/--no-imager", default=False, show_default=True,
              help="The policy also sees the beam's centroid at the detector behind the "
                   "stage's diagnostic (for the KB: pitch and height in one reading).")
@click.option("--p-imager-error", type=float, default=0.0, show_default=True,
              help="Probability that an episode's imager carries its own day-one offset "
                   "(with --imager; as in a one-click run).")
@click.option("--net-arch", default="64,64", show_default=True, metavar="W1,W2",
              help="Hidden layer widths of the policy and value networks.")
@click.option("--imitate", "imitation_steps", type=int, default=0, show_default=True,
              help="Environment steps of imitation (DAgger from a teacher that knows the "
                   "hidden errors) before the RL algorithm; with it, --timesteps may be 0.")
@click.option("--eval-every", type=int, default=50_000, show_default=True,
              help="Timesteps between evaluations (0: none).")
@click.option("--checkpoint-every", type=int, default=100_000, show_default=True,
              help="Timesteps between checkpoints (0: none).")
@click.option("--out", type=click.Path(file_okay=False), default="beamtwin-policies",
              show_default=True, help="Folder for the policy, its metadata and checkpoints.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr.")
@json_option
def train_cmd(preset: str | None, stage_name: str, algo: str, timesteps: int, num_envs: int,
              rays: int, seed: int, max_steps: int, max_step: float, p_source: float,
              image_pixels: int, energies: str | None, imager: bool, p_imager_error: float,
              net_arch: str, imitation_steps: int, eval_every: int, checkpoint_every: int,
              out: str, progress: bool, as_json: bool) -> None:
    """Train an RL alignment policy for one stage on the fast twin (stable-baselines3)."""

    def body() -> None:
        from agents.rl import TrainConfig, train
        from agents.stages import stage

        stage(load_preset(preset), stage_name)  # an unknown stage fails before training
        cfg = TrainConfig(stage=stage_name, algo=algo, timesteps=timesteps, num_envs=num_envs,
                          rays=rays, seed=seed, preset=preset, max_steps=max_steps,
                          max_step=max_step, p_source=p_source, image_pixels=image_pixels,
                          imager=imager, imitation_steps=imitation_steps,
                          net_arch=_widths(net_arch), p_imager_error=p_imager_error,
                          energies_eV=_energies(energies),
                          eval_every=eval_every, checkpoint_every=checkpoint_every)
        check_writable(out, "--out", folder=True)  # the checked config first, then the disk
        doc = train(cfg, out, progress=progress).to_dict()

        def text() -> str:
            e = doc["eval"]
            taught = f"{doc['imitation']['samples']} imitated and " if doc["imitation"] else ""
            return (f"{doc['algo']} policy for stage {doc['stage']}: {doc['policy']} "
                    f"({taught}{doc['timesteps']} RL steps in {doc['wall_s']:.0f} s); on "
                    f"{e['episodes']} fresh beamlines: {e['success_rate']:.0%} aligned, "
                    f"median {e['median_steps']:.0f} steps")

        _emit(as_json, doc, text)

    _run(as_json, body)


@cli.command("demo")
@preset_option
@click.option("--seed", type=SEED, default=1, show_default=True,
              help="Seeds the IOC's hidden errors, rays and noise, and the agents.")
@click.option("--misalign", type=float, default=1.0, show_default=True,
              help="Scale of the hidden errors (1: day one).")
@click.option("--backend", type=click.Choice(["fast", "xrt"]), default="fast",
              show_default=True, help="Twin behind the IOC.")
@click.option("--rays", type=int, default=20_000, show_default=True, help="Rays per trace.")
@click.option("--disturbances/--no-disturbances", default=True, show_default=True,
              help="Drift, vibration, gap-dependent source, ring decay and top-up.")
@click.option("--agent", default=None,
              help="Agent for every stage [default: auto, the benchmark's best for each "
                   "stage: model on the KB, steer elsewhere].")
@click.option("--stages", default=None, metavar="S1,S2",
              help="Stages in order [default: m1,mono,slits,kb,sample].")
@click.option("--budget", type=int, default=100, show_default=True,
              help="Evaluations per stage.")
@click.option("--out", type=click.Path(file_okay=False), default="beamtwin-demo",
              show_default=True, help="Folder for the NeXus file, the report and demo.json.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr.")
@json_option
def demo(preset: str | None, seed: int, misalign: float, backend: str, rays: int,
         disturbances: bool, agent: str | None, stages: str | None, budget: int, out: str,
         progress: bool, as_json: bool) -> None:
    """The main job: start the simulated IOCs, misalign, align over EPICS, write the NeXus
    file and the report, stop the IOCs."""

    def body() -> None:
        from controllers.demo import run_demo

        desc = load_preset(preset)
        if not (math.isfinite(misalign) and misalign >= 0):
            raise ConfigError(f"--misalign must be a finite number >= 0, got {misalign}")
        if not MIN_RAYS <= rays <= MAX_RAYS:
            raise ConfigError(f"--rays must be within [{MIN_RAYS}, {MAX_RAYS}], got {rays}")
        if isinstance(budget, bool) or budget < 2:
            raise ConfigError(f"--budget must be an integer >= 2, got {budget}")
        check_writable(out, "--out", folder=True)
        doc = run_demo(desc, preset=preset, seed=seed, misalign=misalign, backend=backend,
                       rays=rays, disturbances=disturbances, agent_name=agent,
                       stage_names=_split(stages), budget=budget, out=out,
                       progress=lambda m: click.echo(f"demo: {m}", err=True),
                       progress_bar=progress)

        def text() -> str:
            return (_align_text(doc["alignment"]) + "\n\n" + doc["summary"])

        _emit(as_json, doc, text)
        from agents.verdict import EXIT_CODES

        sys.exit(EXIT_CODES[doc["alignment"]["exit_status"]])

    _run(as_json, body)


# --------------------------------------------------------------------------- scans
@cli.command("scan", context_settings={"ignore_unknown_options": True})
@click.argument("plan")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@preset_option
@click.option("--detector", default="detector", show_default=True,
              help="Diagnostic whose signal the scan analyses (m1_screen, dcm_bpm, i0, kb_bpm, "
                   "sample, detector, ...), or xrf: the mounted specimen's fluorescence.")
@click.option("--signal", default="flux", show_default=True,
              help="Field of the detector: flux, x_um, y_um, fwhm_x_um or fwhm_y_um.")
@click.option("--goto", type=click.Choice(["cen", "com", "max", "min"]), default=None,
              help="After the scan, move to this result (through the safety layer).")
@click.option("--fit", type=click.Choice(["none", "gaussian", "lorentzian", "erf"]),
              default="none", show_default=True, help="Fit the scan (erf: a knife edge).")
@click.option("--exposure", type=float, default=None, help="Exposure per point, s.")
@click.option("--snake", is_flag=True, help="Meshes: reverse the inner axis every other row.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the simulated beamline, the specimen and the adaptive routines.")
@click.option("--specimen", type=int, default=None, metavar="SEED",
              help="Mount the test specimen SEED at the simulated sample (the xrf detector) "
                   "[default with --detector xrf: --seed]; over EPICS the IOC's specimen "
                   "(beamtwin ioc --specimen) is read from its PV.")
@click.option("--misalign", type=float, default=0.0, show_default=True,
              help="Scale of the simulated beamline's hidden errors (not with --epics).")
@click.option("--backend", type=click.Choice(["fast", "xrt"]), default="fast",
              show_default=True, help="Twin that simulates the beamline (not with --epics).")
@click.option("--rays", type=int, default=5000, show_default=True,
              help="Rays per trace (not with --epics).")
@click.option("--epics", is_flag=True, help="Scan the beamline served over EPICS under "
              "--prefix instead of a simulated one.")
@_with(epics_name_options)
@click.option("--out", type=click.Path(file_okay=False), default="beamtwin-scans",
              show_default=True, help="Folder for the NeXus file and the plot.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr.")
@json_option
def scan_cmd(plan: str, args: tuple[str, ...], preset: str | None, detector: str, signal: str,
             goto: str | None, fit: str, exposure: float | None, snake: bool, seed: int,
             specimen: int | None, misalign: float, backend: str, rays: int, epics: bool,
             prefix: str, mapping: str | None, out: str, progress: bool,
             as_json: bool) -> None:
    """Run a scan: PLAN ARGS... (BLISS names and argument order; INTERVALS gives INTERVALS + 1
    points). Plans: count [N]; timescan N [INTERVAL_S]; ascan|dscan M S E INTERVALS;
    a2scan|d2scan M1 S1 E1 M2 S2 E2 INTERVALS; anscan|dnscan M1 S1 E1 ... INTERVALS;
    amesh|dmesh M1 S1 E1 I1 M2 S2 E2 I2 (M1 outer); escan START_EV STOP_EV INTERVALS;
    gpscan M1 S1 E1 M2 S2 E2 NPOINTS (adaptive GP); c2fmap M1 S1 E1 M2 S2 E2 COARSE FINE."""

    def body() -> None:
        from controllers.scan_request import ScanRequest, parse_args
        from controllers.scan_run import movable_motors, run_scan
        from twin.specimen import Specimen

        check_writable(out, "--out", folder=True)
        d = parse_args(plan, args)
        d.update({"detector": detector, "signal": "xrf" if detector == "xrf" else signal,
                  "fit": fit, "snake": snake, "seed": seed})
        if goto is not None:
            d["goto"] = goto
        if exposure is not None:
            d["exposure_s"] = exposure
        request = ScanRequest.from_dict(d)
        desc = load_preset(preset)
        say = (lambda m: click.echo(f"scan: {m}", err=True))  # noqa: E731
        if epics:
            from controllers.epics_beamline import EpicsBeamline
            from controllers.pvnames import PvMap

            if specimen is not None:
                raise ConfigError("--specimen mounts a specimen on the simulated beamline; "
                                  "over EPICS the specimen is the IOC's (beamtwin ioc "
                                  "--specimen SEED) and xrf is read from its PV (or the "
                                  "mapping file's [signals] xrf)")
            signals = ["xrf"] if detector == "xrf" else []
            bl = EpicsBeamline(PvMap.load(desc, prefix, mapping),
                               movable=movable_motors(request, desc), signals=signals)
            try:
                doc = run_scan(request, bl, desc, out_dir=out, progress=say,
                               progress_bar=progress, md={"prefix": prefix}, signals=signals)
            finally:
                bl.close()
            doc["prefix"] = prefix
            sample = None
        else:
            from twin.simulator import TwinBeamline

            sample = specimen if specimen is not None else (seed if detector == "xrf" else None)
            mounted = Specimen.default(sample) if sample is not None else None

            if not (math.isfinite(misalign) and misalign >= 0):
                raise ConfigError(f"--misalign must be a finite number >= 0, got {misalign}")
            if not MIN_RAYS <= rays <= MAX_RAYS:
                raise ConfigError(f"--rays must be within [{MIN_RAYS}, {MAX_RAYS}], got {rays}")
            movable_motors(request, desc)  # unknown motors are refused before the twin loads
            bl = TwinBeamline(desc, hidden=HiddenErrors.draw(desc, misalign, seed), seed=seed,
                              backend=backend, rays=rays)
            doc = run_scan(request, bl, desc, out_dir=out, specimen=mounted, progress=say,
                           progress_bar=progress, wait=bl.wait,
                           md={"backend": backend, "rays": rays, "misalign": misalign})
        doc["specimen"] = sample
        _emit(as_json, doc, lambda: _scan_text(doc))
        if doc["exit_status"] == "abort":
            sys.exit(130)
        if doc["exit_status"] != "success":
            sys.exit(1)

    _run(as_json, body)


def _scan_text(doc: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        if isinstance(v, list):
            return "(" + ", ".join(f(x) for x in v) + ")"
        return "-" if v is None else f"{v:.6g}"

    p = doc["peak"]
    lines = [f"{doc['plan']} of {', '.join(doc['motors']) or 'time'}: {doc['points']} points, "
             f"signal {doc['signal']}, {doc['exit_status']}"]
    lines.append("  " + "  ".join(f"{k} {f(p.get(k))}" for k in ("com", "cen", "max", "min",
                                                                   "fwhm")))
    fit = doc.get("fit") or {}
    if fit.get("ok"):
        q = fit["params"]
        lines.append(f"  {fit['model']} fit: centre {q['center']:.6g}, FWHM {q['fwhm']:.6g}, "
                     f"R^2 {fit['r2']:.4f}")
    if doc.get("moved_to"):
        lines.append("  moved to " + ", ".join(f"{m} = {v:.6g}"
                                               for m, v in doc["moved_to"].items()))
    lines.append(f"  data: {doc['nexus_file']}")
    if doc.get("plot"):
        lines.append(f"  plot: {doc['plot']}")
    if doc.get("error"):
        lines.append(f"  error: {doc['error']}")
    return "\n".join(lines)


@bench.command("scan")
@click.option("--seed", type=SEED, default=0, show_default=True, help="First specimen.")
@click.option("--trials", type=int, default=3, show_default=True, help="Specimens.")
@click.option("--grid", type=int, default=61, show_default=True,
              help="Points per side of the reference grid.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the benchmark's figure (PNG).")
@json_option
def bench_scan_cmd(seed: int, trials: int, grid: int, plot_path: str | None,
                   as_json: bool) -> None:
    """Adaptive GP scan and coarse-to-fine map against uniform grids (same specimen, noise)."""

    def body() -> None:
        from controllers.scan_bench import MapSettings, bench_scan

        if plot_path:
            check_writable(plot_path, "--plot", picture=True)
        doc = bench_scan(seed=seed, trials=trials, settings=MapSettings(grid=grid),
                         plot=plot_path, progress=lambda m: click.echo(f"bench: {m}", err=True))
        c = doc["coarse_to_fine"]
        _emit(as_json, doc, lambda: (
            f"adaptive GP: the error of a {doc['grid_points']}-point grid "
            f"({doc['error_target']:.4f}) with {doc['adaptive_points']} points: "
            f"{doc['ratio'] or 0:.2f}x fewer (min over {trials} specimens "
            f"{doc['ratio_min']:.2f}x)\n"
            f"coarse-to-fine: {c['points_saved_pct_median']:.0f} % fewer points, "
            f"{c['time_saved_pct_median']:.0f} % less beamline time, feature coverage >= "
            f"{100 * c['feature_coverage_min']:.1f} %"))

    _run(as_json, body)


@bench.command("reliability")
@click.option("--quick", is_flag=True,
              help="The test suite's counts (about two minutes) instead of the full ones "
                   "(about three hours).")
@click.option("--seed", type=SEED, default=None,
              help="Seeds every random choice [default: drawn afresh and reported].")
@click.option("--fuzz-puts", type=click.IntRange(0), default=None,
              help="Hostile puts to every motor, detector and status field [full: 100000].")
@click.option("--align-kills", type=click.IntRange(0), default=None,
              help="IOC kills during alignments over EPICS [full: 50].")
@click.option("--scan-kills", type=click.IntRange(0), default=None,
              help="IOC kills during scans over EPICS [full: 50].")
@click.option("--writer-kills", type=click.IntRange(0), default=None,
              help="NeXus writers killed mid-file [full: 1000].")
@click.option("--disk-faults", type=click.IntRange(0), default=None,
              help="Scans whose data folder fills up or cannot exist [full: 50].")
@click.option("--scan-requests", type=click.IntRange(0), default=None,
              help="Fuzzed scan requests [full: 100000].")
@click.option("--cli", "cli_runs", type=click.IntRange(0), default=None,
              help="Fuzzed command lines, each in its own process with a time bound "
                   "[full: 1000].")
@click.option("--soak", "soak_s", type=click.FloatRange(0), default=None,
              help="Soak duration, s [full: 3600].")
@click.option("--clients", type=click.IntRange(1, 10), default=None,
              help="Soak clients [full: 8].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON document to this file.")
@json_option
def bench_reliability_cmd(quick: bool, seed: int | None, fuzz_puts: int | None,
                          align_kills: int | None, scan_kills: int | None,
                          writer_kills: int | None, disk_faults: int | None,
                          scan_requests: int | None, cli_runs: int | None,
                          soak_s: float | None, clients: int | None, out_path: str | None,
                          as_json: bool) -> None:
    """The reliability campaign (shared/RELIABILITY.md R1-R12) at full counts: faults
    injected for real (IOC kills, writer kills, a full disk, fuzzed puts, requests and
    command lines, a soak). Exit 0 when every goal holds (0 out-of-limit positions,
    0 hung runs, 0 corrupt files, 0 tracebacks, 0 untyped errors), else 1."""

    def body() -> None:
        from controllers.reliability import FULL, QUICK, run_campaign
        from ioc_sim.process import client_env, free_port

        if out_path:
            check_writable(out_path, "--out")
        counts = QUICK if quick else FULL
        given = {"fuzz_puts": fuzz_puts, "align_kills": align_kills, "scan_kills": scan_kills,
                 "writer_kills": writer_kills, "disk_faults": disk_faults,
                 "scan_requests": scan_requests, "cli": cli_runs, "soak_s": soak_s,
                 "soak_clients": clients}
        counts = dataclasses.replace(counts, **{k: v for k, v in given.items()
                                                if v is not None})
        drawn = seed is None
        use_seed = int.from_bytes(os.urandom(4), "little") if drawn else seed
        if drawn:
            click.echo(f"bench reliability: seed {use_seed} (drawn afresh)", err=True)
        ports: list[int] = []
        while len(ports) < 3:
            p = free_port()
            if p not in ports:
                ports.append(p)
        os.environ.update(client_env(ports))  # before pyepics' first use in this process
        def keep(part: dict) -> None:  # a long campaign's finished parts survive a stop
            if out_path:
                Path(out_path).write_text(json.dumps(jsonable({**part, "partial": True}),
                                                     indent=1))

        doc = run_campaign(load_preset(None), counts, seed=use_seed, ports=ports,
                           progress=lambda m: click.echo(f"reliability: {m}", err=True),
                           on_part=keep)
        doc["seed_drawn"] = drawn
        if out_path:
            Path(out_path).write_text(json.dumps(jsonable(doc), indent=1))
        _emit(as_json, doc, lambda: "\n".join(
            [f"reliability campaign, seed {use_seed}: "
             f"{'every goal held' if doc['passed'] else 'GOALS MISSED'} "
             f"({doc['wall_s']:.0f} s)"]
            + [f"  {k}: {v}" for k, v in doc["goals"].items()]))
        sys.exit(0 if doc["passed"] else 1)

    _run(as_json, body)


cli.add_command(ioc_command)
cli.add_command(stabilize)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="beamtwin")


if __name__ == "__main__":  # pragma: no cover
    main()
