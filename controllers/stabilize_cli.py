"""``beamtwin stabilize``: calibrate, benchmark and run the feed-forward beam stabiliser.

``beamtwin stabilize calibrate``
    runs the knob-response and gap scans on a beamline, fits the lookup table,
    the MLP and the Gaussian process, tunes the feedback, and writes one file;
``beamtwin stabilize bench``
    every corrector (none, fb, table, ff_nn, ff_gp, ff_fb, rl) on the same
    held-out gap schedules and hidden disturbance;
``beamtwin stabilize run``
    a corrector in closed loop: over EPICS (``--epics``) against the beamline
    under ``--prefix``, or on the twin for a gap schedule.

Every command takes ``--json`` and then prints one JSON document on stdout.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Any

import click

from twin.cliutil import SEED, check_writable, emit, json_option, preset_option, run_command
from twin.errors import ConfigError
from twin.presets import load_preset

__all__ = ["stabilize"]

_CORRECTORS = ("none", "fb", "table", "ff_nn", "ff_gp", "ff_fb", "rl")


@click.group()
def stabilize() -> None:
    """Feed-forward beam stabilisation against the undulator gaps."""


@stabilize.command("calibrate")
@preset_option
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the simulated beamline's hidden gap dependence and noise.")
@click.option("--points", type=int, default=25, show_default=True,
              help="Scan points per leg (4 legs: gap up, down, neighbour up, down).")
@click.option("--out", type=click.Path(dir_okay=False), default="stabilizer.json",
              show_default=True, help="Stabiliser file to write.")
@click.option("--train-duration", type=float, default=30.0, show_default=True,
              help="Length of each of the four schedules the feedback is tuned on, s.")
@click.option("--rl-steps", type=int, default=0, show_default=True,
              help="Also train the RL corrector for this many loop periods (0: no).")
@json_option
def calibrate_cmd(preset: str | None, seed: int, points: int, out: str, train_duration: float,
                  rl_steps: int, as_json: bool) -> None:
    """Run the calibration scans on the simulated beamline and fit every model."""

    def body() -> None:
        check_writable(out, "--out")
        from agents.stabilize.bench import training_schedules
        from agents.stabilize.calibration import calibrate
        from agents.stabilize.plant import StabilizeConfig, StabilizePlant
        from agents.stabilize.stabilizer import fit_stabilizer

        if rl_steps < 0:
            raise ConfigError(f"--rl-steps must be >= 0, got {rl_steps}")
        if not (math.isfinite(train_duration) and train_duration > 0):
            raise ConfigError(f"--train-duration must be a finite number > 0 s, got "
                              f"{train_duration}")
        desc = load_preset(preset)
        cfg = StabilizeConfig()
        say = lambda m: click.echo(f"calibrate: {m}", err=True)  # noqa: E731
        say("measuring the beam's response on the fast twin")
        plant = StabilizePlant(desc, seed, cfg)
        cal = calibrate(plant, points=points, noise_seed=seed, progress=say)
        stab = fit_stabilizer(plant, cal, training_schedules(desc, seed, train_duration,
                                                             cfg.dt_s),
                              seed=seed, progress=say)
        path = stab.save(out)
        doc: dict[str, Any] = {
            "stabilizer": str(path), "beamline": desc.name, "seed": seed,
            "calibration": {"beamline_time_s": cal.duration_s, "points": len(cal.x)},
            "models": sorted(stab.models), "fit_s": stab.tuning["fit_s"],
            "fb_gains": {"kp": stab.fb_gains.kp, "ki": stab.fb_gains.ki,
                         "ki_size": stab.fb_gains.ki_size},
            "ff_fb_model": stab.ff_fb_model, "rl_policy": None}
        if rl_steps:
            from pathlib import Path

            from agents.stabilize.rl import train_stabilizer

            policy = Path(out).with_suffix(".rl.zip")
            _, wall = train_stabilizer(desc, config=cfg, response=plant.response,
                                       timesteps=rl_steps, seed=seed, save=policy, progress=say)
            doc.update(rl_policy=str(policy), rl_train_s=wall)
        emit(as_json, doc, lambda: (
            f"calibrated {desc.name} in {cal.duration_s:.0f} s of beamline time "
            f"({len(cal.x)} scan points); models table, nn, gp; ff_fb uses "
            f"{stab.ff_fb_model}\nwrote {path}"))

    run_command(as_json, body)


@stabilize.command("bench")
@preset_option
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Hidden gap dependence, held-out schedules and noise.")
@click.option("--duration", type=float, default=60.0, show_default=True,
              help="Length of each held-out schedule, s.")
@click.option("--per-kind", type=int, default=1, show_default=True,
              help="Held-out schedules of each kind (energy_scan, steps, neighbour, mixed).")
@click.option("--rl-steps", type=int, default=0, show_default=True,
              help="Train the rl corrector now for this many SAC steps (0: use --rl-policy).")
@click.option("--rl-policy", type=click.Path(dir_okay=False), default=None,
              help="A trained policy (from 'stabilize calibrate --rl-steps') [default: the "
                   "one shipped for the built-in beamline].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the beam position against time (PNG).")
@json_option
def bench_cmd(preset: str | None, seed: int, duration: float, per_kind: int, rl_steps: int,
              rl_policy: str | None, plot_path: str | None, as_json: bool) -> None:
    """Every corrector on the same held-out gap schedules (see docs/stabilize.md)."""

    def body() -> None:
        from agents.stabilize.bench import BenchSettings, bench_stabilize

        if plot_path:
            check_writable(plot_path, "--plot", picture=True)
        desc = load_preset(preset)
        st = BenchSettings(duration_s=duration, per_kind=per_kind, rl_steps=rl_steps,
                           rl_policy=rl_policy)
        doc = bench_stabilize(desc, seed=seed, settings=st, keep_runs=plot_path is not None,
                              progress=lambda m: click.echo(f"bench: {m}", err=True))
        runs = doc.pop("_runs", None)
        if plot_path is not None and runs is not None:
            from controllers.stabilize_plot import plot_runs

            doc["plot"] = plot_runs(runs, plot_path)
        emit(as_json, doc, lambda: _bench_text(doc))

    run_command(as_json, body)


def _bench_text(doc: dict[str, Any]) -> str:
    lines = [f"{'corrector':10s} {'centroid rms':>13s} {'gap only':>10s} {'size rms':>9s} "
             f"{'max':>9s} {'per period':>11s}"]
    for name, m in doc["correctors"].items():
        lines.append(f"{name:10s} {m['centroid_rms_um'] * 1e3:10.2f} nm "
                     f"{m['gap_only']['centroid_rms_um'] * 1e3:7.2f} nm "
                     f"{m['size_rms_pct']:8.3f}% {m['max_excursion_um'] * 1e3:6.1f} nm "
                     f"{m['inference_us_median']:8.1f} us")
    lines.append("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}"
                                       for k, v in doc["goals"].items()))
    return "\n".join(lines)


@stabilize.command("run")
@preset_option
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True,
              help="Stabiliser file from 'beamtwin stabilize calibrate'.")
@click.option("--corrector", type=click.Choice(_CORRECTORS), default="ff_fb",
              show_default=True, help="Corrector to run.")
@click.option("--rl-policy", type=click.Path(dir_okay=False), default=None,
              help="Policy for --corrector rl [default: the one shipped for the built-in "
                   "beamline].")
@click.option("--epics", is_flag=True, help="Run against the beamline served over EPICS under "
              "--prefix; else on the twin along --schedule.")
@click.option("--prefix", default="BT:", show_default=True, help="PV prefix (with --epics).")
@click.option("--mapping", type=click.Path(dir_okay=False), default=None,
              help="PV mapping file (TOML; with --epics).")
@click.option("--rate", type=float, default=100.0, show_default=True, help="Loop rate, Hz.")
@click.option("--duration", type=float, default=None,
              help="Run this long, s [default: until Ctrl-C with --epics; 60 on the twin].")
@click.option("--schedule", type=click.Choice(("energy_scan", "steps", "neighbour", "mixed")),
              default="steps", show_default=True, help="Gap schedule (on the twin).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Simulated beamline and schedule (on the twin).")
@json_option
def run_cmd(preset: str | None, model_path: str, corrector: str, rl_policy: str | None,
            epics: bool, prefix: str, mapping: str | None, rate: float, duration: float | None,
            schedule: str, seed: int, as_json: bool) -> None:
    """Run a corrector in closed loop, over EPICS or on the twin."""

    def body() -> None:
        from agents.stabilize.plant import StabilizeConfig
        from agents.stabilize.stabilizer import Stabilizer

        desc = load_preset(preset)
        if not (math.isfinite(rate) and 0 < rate <= 1000):
            raise ConfigError(f"--rate must lie in (0, 1000] Hz, got {rate}")
        stab = Stabilizer.load(model_path)
        if stab.beamline != desc.name:
            raise ConfigError(f"{model_path!r} was calibrated on beamline {stab.beamline!r}, "
                              f"not {desc.name!r}")
        cfg = StabilizeConfig(dt_s=1.0 / rate)
        if corrector == "rl":
            from agents.stabilize.rl import RLCorrector, shipped_policy

            policy = rl_policy or shipped_policy(desc)
            if policy is None:
                raise ConfigError("--corrector rl needs --rl-policy FILE (no policy ships for "
                                  f"beamline {desc.name!r})")

            cor = RLCorrector.load(policy, desc, cfg)
        else:
            cor = stab.corrector(corrector, cfg.knob_limits)
        if epics:
            doc = _run_epics(desc, cor, cfg, prefix, mapping, rate, duration)
        else:
            doc = _run_twin(desc, cor, cfg, schedule, seed, duration or 60.0)
        emit(as_json, doc, lambda: _run_text(doc))

    run_command(as_json, body)


def _run_epics(desc: Any, cor: Any, cfg: Any, prefix: str, mapping: str | None, rate: float,
               duration: float | None) -> dict[str, Any]:
    from controllers.pvnames import PvMap
    from controllers.stabilize_loop import EpicsStabilizer, LoopSettings

    pvmap = PvMap.load(desc, prefix, mapping)
    loop = EpicsStabilizer(pvmap, cor, cfg, LoopSettings(rate_hz=rate))
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_int(*_: Any) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_int)
    try:
        click.echo(f"stabilize: {cor.name} at {rate:g} Hz on {prefix} "
                   f"({'until Ctrl-C' if duration is None else f'{duration:g} s'})", err=True)
        summary = loop.run(duration, stop=stop)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
        loop.close()
    return {"mode": "epics", "prefix": prefix, **summary}


def _run_twin(desc: Any, cor: Any, cfg: Any, kind: str, seed: int,
              duration: float) -> dict[str, Any]:
    from agents.stabilize.evaluate import metrics, play
    from agents.stabilize.plant import StabilizePlant
    from agents.stabilize.schedules import make_schedule

    plant = StabilizePlant(desc, seed, cfg)
    sched = make_schedule(desc, kind, seed, duration_s=duration, dt_s=cfg.dt_s)
    res = play(plant, sched, cor, noise_seed=seed)
    m = metrics([res])
    return {"mode": "twin", "corrector": cor.name, "schedule": sched.to_dict(), **m}


def _run_text(doc: dict[str, Any]) -> str:
    if doc["mode"] == "epics":
        return (f"{doc['corrector']}: {doc['periods']} periods in {doc['duration_s']:.1f} s, "
                f"{doc['rate_hz']:.1f} Hz (asked {doc['target_rate_hz']:g}); "
                f"{doc['writes']} setpoints written, {doc['refused']} refused")
    return (f"{doc['corrector']} on {doc['schedule']['name']}: centroid rms "
            f"{doc['centroid_rms_um'] * 1e3:.2f} nm, size rms {doc['size_rms_pct']:.3f} %, "
            f"max {doc['max_excursion_um'] * 1e3:.1f} nm")
