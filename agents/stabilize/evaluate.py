"""Playing a corrector on a schedule, and what its beam did.

:func:`play` runs the loop on the linearised twin; :func:`metrics` pools the true
beam at the sample over runs; :func:`tune_feedback` picks feedback gains by the
score ``(centroid rms / tol)**2 + (size rms / tol)**2`` on given schedules.
Units: um and %.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agents.stabilize.correctors import Corrector, FeedbackGains
from agents.stabilize.plant import PlantRun, StabilizeConfig, StabilizePlant
from agents.stabilize.schedules import GapSchedule

__all__ = ["RunResult", "play", "metrics", "score", "tune_feedback", "KI_GRID", "KI_SIZE_GRID"]

#: integral gains tried for the centroid loops, and for the size loop
KI_GRID = (0.03, 0.06, 0.1, 0.15, 0.2, 0.35, 0.5)
KI_SIZE_GRID = (0.01, 0.03, 0.1, 0.3)


@dataclass
class RunResult:
    """One corrector on one schedule: the true beam and the knobs per period."""

    schedule: GapSchedule
    truth: np.ndarray
    knobs: np.ndarray
    act_s: np.ndarray


def play(plant: StabilizePlant, schedule: GapSchedule, corrector: Corrector, *,
         drift: bool = True, noise_seed: int = 0,
         inputs: np.ndarray | None = None) -> RunResult:
    """Play *schedule* with *corrector* in the loop; returns the true beam."""
    corrector.reset()
    run = (PlantRun(plant, schedule, inputs, noise_seed) if inputs is not None
           else plant.run(schedule, noise_seed=noise_seed, drift=drift))
    act = np.zeros(schedule.steps)
    while not run.done:
        r = run.reading()
        t0 = time.perf_counter()
        k = corrector.act(r)
        act[run.step] = time.perf_counter() - t0
        run.apply(k)
        run.advance()
    return RunResult(schedule, run.truth, run.knob_history, act)


def metrics(results: Sequence[RunResult]) -> dict[str, float]:
    """Pooled metrics of *results* (see the module docstring)."""
    t = np.concatenate([r.truth for r in results])
    c2 = t[:, 0] ** 2 + t[:, 1] ** 2
    act = np.concatenate([r.act_s for r in results])
    return {"centroid_rms_um": float(np.sqrt(c2.mean())),
            "size_rms_pct": float(np.sqrt((t[:, 3] ** 2).mean())),
            "max_excursion_um": float(np.sqrt(c2.max())),
            "centroid_x_rms_um": float(np.sqrt((t[:, 0] ** 2).mean())),
            "centroid_y_rms_um": float(np.sqrt((t[:, 1] ** 2).mean())),
            "size_x_rms_pct": float(np.sqrt((t[:, 2] ** 2).mean())),
            "inference_us_median": float(np.median(act) * 1e6),
            "inference_us_p99": float(np.quantile(act, 0.99) * 1e6)}


def score(m: dict[str, float], cfg: StabilizeConfig) -> float:
    """Tuning score of pooled metrics *m*: lower is better."""
    return (m["centroid_rms_um"] / cfg.centroid_tol_um) ** 2 + \
        (m["size_rms_pct"] / cfg.size_tol_pct) ** 2


def tune_feedback(plant: StabilizePlant, schedules: Sequence[GapSchedule],
                  make: Callable[[FeedbackGains], Corrector]) -> tuple[FeedbackGains, float]:
    """Pick the integral gains with the best score on *schedules* (centroid, then size)."""
    inputs = [plant.disturbance_inputs(s) for s in schedules]

    def trial(g: FeedbackGains) -> float:
        res = [play(plant, s, make(g), inputs=x, noise_seed=7) for s, x in
               zip(schedules, inputs, strict=True)]
        return score(metrics(res), plant.config)

    best_ki = min(KI_GRID, key=lambda k: trial(FeedbackGains(ki=k, ki_size=0.03)))
    gains = [FeedbackGains(ki=best_ki, ki_size=k) for k in KI_SIZE_GRID]
    scores = [trial(g) for g in gains]
    i = int(np.argmin(scores))
    return gains[i], float(scores[i])


