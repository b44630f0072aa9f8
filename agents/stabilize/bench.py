"""Every corrector on the same held-out gap schedules and the same hidden disturbance.

:func:`bench_stabilize` does on the twin what a facility would do on its machine:

1. runs the calibration scans (:func:`~agents.stabilize.calibration.calibrate`)
   and fits the lookup table, the MLP and the Gaussian process to them;
2. tunes the feedback gains, and picks the feed-forward model to pair with slow
   feedback, on *training* schedules;
3. trains the RL policy on other beamlines (a new hidden gap dependence every
   episode) and other schedules, unless a policy is given;
4. plays every corrector on the same *held-out* schedules, with the thermal
   drift (``full``) and without it (``gap_only``: the gap-induced motion alone),
   and measures the true beam at the sample.

Metrics, pooled over the schedules' periods: ``centroid_rms_um`` (rms of the
two-dimensional centroid change at the sample), ``size_rms_pct`` (rms change of
the vertical spot size, the plane of the 30 nm focus and of the ALS figure),
``max_excursion_um`` and, beside them, the horizontal size, each plane's
centroid and the corrector's own time per period.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agents.stabilize.calibration import calibrate
from agents.stabilize.correctors import CORRECTORS, Corrector
from agents.stabilize.evaluate import RunResult, metrics, play
from agents.stabilize.plant import StabilizeConfig, StabilizePlant
from agents.stabilize.schedules import KINDS, GapSchedule, make_schedule
from agents.stabilize.stabilizer import MODEL_CORRECTORS, fit_stabilizer
from twin.description import BeamlineDescription
from twin.errors import ConfigError
from twin.presets import default_preset

__all__ = ["BenchSettings", "bench_stabilize", "training_schedules"]

_TRAIN_SEED = 500_000


@dataclass(frozen=True)
class BenchSettings:
    """Size of the benchmark.

    Parameters
    ----------
    duration_s : float
        Length of each held-out schedule, s.
    per_kind : int
        Held-out schedules of each kind.
    train_duration_s : float
        Length of each training schedule (gain tuning, model choice), s.
    rl_steps : int
        Train the ``rl`` corrector for this many SAC steps now (0: use *rl_policy*).
    rl_policy : str, optional
        A policy zip (``beamtwin stabilize calibrate --rl-steps``); default: the one
        shipped for the built-in beamline, if any (else no ``rl``).
    calibration_points : int
        Points per leg of the gap scans.
    """

    duration_s: float = 60.0
    per_kind: int = 1
    train_duration_s: float = 30.0
    rl_steps: int = 0
    rl_policy: str | None = None
    calibration_points: int = 25

    def __post_init__(self) -> None:
        if not (np.isfinite(self.duration_s) and self.duration_s > 0):
            raise ConfigError(f"duration_s must be > 0, got {self.duration_s!r}")
        if not isinstance(self.per_kind, int) or self.per_kind < 1:
            raise ConfigError(f"per_kind must be an integer >= 1, got {self.per_kind!r}")
        if not isinstance(self.rl_steps, int) or self.rl_steps < 0:
            raise ConfigError(f"rl_steps must be an integer >= 0, got {self.rl_steps!r}")


def training_schedules(desc: BeamlineDescription, seed: int, duration_s: float,
                       dt_s: float) -> list[GapSchedule]:
    """One schedule of each kind for tuning, seeded apart from the held-out ones."""
    return [make_schedule(desc, k, _TRAIN_SEED + 10 * seed, duration_s=duration_s, dt_s=dt_s)
            for k in KINDS]


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def bench_stabilize(desc: BeamlineDescription | None = None, *, seed: int = 0,
                    settings: BenchSettings | None = None,
                    config: StabilizeConfig | None = None,
                    progress: Callable[[str], None] | None = None,
                    keep_runs: bool = False) -> dict[str, Any]:
    """Run the stabilisation benchmark (see the module docstring).

    Parameters
    ----------
    desc : BeamlineDescription, optional
        Default: the built-in preset.
    seed : int
        Seeds the hidden gap dependence, the held-out schedules and the noise.
    settings : BenchSettings, optional
    config : StabilizeConfig, optional
    progress : callable, optional
        Receives one line per phase.
    keep_runs : bool
        Also return the per-period runs under ``"_runs"`` (for plots; not JSON).
    """
    desc = desc if desc is not None else default_preset()
    st = settings if settings is not None else BenchSettings()
    cfg = config if config is not None else StabilizeConfig()
    say = progress or (lambda _m: None)
    t_start = time.perf_counter()
    say("measuring the beam's response on the fast twin")
    plant = StabilizePlant(desc, seed, cfg)
    cal = calibrate(plant, points=st.calibration_points, noise_seed=seed, progress=say)
    stab = fit_stabilizer(plant, cal, training_schedules(desc, seed, st.train_duration_s,
                                                         cfg.dt_s), seed=seed, progress=say)
    correctors: dict[str, Corrector] = {n: stab.corrector(n, cfg.knob_limits)
                                        for n in MODEL_CORRECTORS}
    from agents.stabilize.rl import RLCorrector, shipped_policy, train_stabilizer

    policy = st.rl_policy if st.rl_policy is not None else shipped_policy(desc)
    rl_info: dict[str, Any] = {"timesteps": 0, "train_s": None, "policy": None}
    if st.rl_steps > 0:
        rl, wall = train_stabilizer(desc, config=cfg, response=plant.response,
                                    timesteps=st.rl_steps, seed=seed, progress=say)
        correctors["rl"] = rl
        rl_info.update(timesteps=st.rl_steps, train_s=wall)
    elif policy is not None:
        correctors["rl"] = RLCorrector.load(policy, desc, cfg)
        rl_info["policy"] = str(policy)
    held_out = [make_schedule(desc, k, 1000 * seed + i, duration_s=st.duration_s, dt_s=cfg.dt_s)
                for i in range(st.per_kind) for k in KINDS]
    inputs = {drift: [plant.disturbance_inputs(s, drift=drift) for s in held_out]
              for drift in (True, False)}
    doc_c: dict[str, Any] = {}
    runs: dict[str, list[RunResult]] = {}
    for name in CORRECTORS:
        if name not in correctors:
            continue
        say(f"playing {name} on {len(held_out)} held-out schedules")
        full = [play(plant, s, correctors[name], inputs=x, noise_seed=seed + i)
                for i, (s, x) in enumerate(zip(held_out, inputs[True], strict=True))]
        gap = [play(plant, s, correctors[name], inputs=x, noise_seed=seed + i)
               for i, (s, x) in enumerate(zip(held_out, inputs[False], strict=True))]
        runs[name] = full
        m = metrics(full)
        m["gap_only"] = {k: v for k, v in metrics(gap).items() if not k.startswith("inference")}
        m["per_schedule"] = {r.schedule.name: {k: v for k, v in metrics([r]).items()
                                               if not k.startswith("inference")} for r in full}
        doc_c[name] = m
    none_c, none_g = doc_c["none"], doc_c["none"]["gap_only"]
    ff_fb = doc_c["ff_fb"]
    ratios: dict[str, Any] = {
        "centroid_none_over_ff_fb": _ratio(none_c["centroid_rms_um"], ff_fb["centroid_rms_um"]),
        "gap_centroid_none_over_ff_fb": _ratio(none_g["centroid_rms_um"],
                                               ff_fb["gap_only"]["centroid_rms_um"]),
        "centroid_table_over_ff_fb": _ratio(doc_c["table"]["centroid_rms_um"],
                                            ff_fb["centroid_rms_um"]),
        "centroid_fb_over_ff_fb": _ratio(doc_c["fb"]["centroid_rms_um"],
                                         ff_fb["centroid_rms_um"]),
        "size_table_over_ff_fb": _ratio(doc_c["table"]["size_rms_pct"], ff_fb["size_rms_pct"]),
        "size_fb_over_ff_fb": _ratio(doc_c["fb"]["size_rms_pct"], ff_fb["size_rms_pct"]),
    }
    # the gap-induced motion is the feed-forward's to cancel; feedback adds its noise
    # there, so the best corrector on the gap-only runs is reported beside ff_fb
    best_gap = min(doc_c, key=lambda n: doc_c[n]["gap_only"]["centroid_rms_um"])
    ratios["gap_centroid_none_over_best"] = _ratio(
        none_g["centroid_rms_um"], doc_c[best_gap]["gap_only"]["centroid_rms_um"])
    ratios["gap_best"] = best_gap
    slowest = max(v["inference_us_p99"] for v in doc_c.values())
    goals = {
        "gap_centroid_reduced_10x": (ratios["gap_centroid_none_over_best"] or 0) >= 10,
        "size_rms_le_0p4_pct": ff_fb["size_rms_pct"] <= 0.4,
        "ff_fb_beats_table_and_fb": all((ratios[k] or 0) > 1 for k in (
            "centroid_table_over_ff_fb", "centroid_fb_over_ff_fb", "size_table_over_ff_fb",
            "size_fb_over_ff_fb")),
        "inference_under_1ms": slowest < 1000.0,
    }
    doc: dict[str, Any] = {
        "seed": seed, "correctors": doc_c, "schedules": [s.to_dict() for s in held_out],
        "ratios": ratios, "goals": goals, "loop_hz": 1.0 / cfg.dt_s,
        "calibration": {"beamline_time_s": cal.duration_s, "points": len(cal.x)},
        "tuning": {"fb_gains": asdict(stab.fb_gains), "ff_fb_model": stab.ff_fb_model,
                   "ff_fb_gains": asdict(stab.ff_fb_gains), **stab.tuning}, "rl": rl_info,
        "config": {k: v for k, v in asdict(cfg).items() if k != "knob_limits"},
        "knob_limits": dict(cfg.knob_limits), "wall_s": time.perf_counter() - t_start}
    if keep_runs:
        doc["_runs"] = runs
    return doc
