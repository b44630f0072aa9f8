"""Calibration scans a stabiliser runs on its own beamline, and what they give.

As on the machine, in three parts, all in closed loop with the beamline (here the
twin: its noise, its drift and its hidden gap dependence included):

1. **Knob response**: each corrector knob is stepped by ± a probe around the
   aligned position and the diagnostics averaged, which gives the matrix of
   diagnostic changes per knob unit (as an orbit-response measurement does).
2. **Gap scans**: this undulator's gap is stepped up through the working range
   and back down (the two legs differ by the hysteresis; every point is
   approached from its leg's side), then the neighbour's gap likewise, with the
   diagnostics averaged at every point. References at rest every few points
   remove the slow drift (a cubic spline in time through them).
3. **Feed-forward targets**: at every scan point, the setting of the ring's
   source knobs (orbit bump and coupling) that cancels the measured change, by
   weighted least squares through the knob response.

:class:`Calibration` holds the result; :mod:`agents.stabilize.models` fits the
feed-forward models to it. Units: um, urad, %, mm, s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline

from agents.stabilize.plant import KNOBS, MEASURED, StabilizePlant
from agents.stabilize.schedules import GapSchedule, working_range
from twin.errors import ConfigError

__all__ = ["SOURCE_KNOBS", "Calibration", "calibrate", "features"]

#: the knobs feed-forward drives: the ring's, at the source
SOURCE_KNOBS: tuple[str, ...] = KNOBS[:5]
#: scale of each measured quantity in the least-squares fit (um, %, um)
#: (no knob here holds the horizontal size, so it weighs little: it would only pull the others)
_WEIGHT_SCALE = np.array([0.005, 0.005, 4.0, 0.4, 1.0, 1.0])


def features(gap_mm: np.ndarray | float, direction: np.ndarray | float,
             neighbour_mm: np.ndarray | float, neighbour_direction: np.ndarray | float,
             gap_range: tuple[float, float], neighbour_range: tuple[float, float]) -> np.ndarray:
    """Model inputs ``(..., 4)``: both gaps scaled to [0, 1] and their directions (±1)."""
    u = (np.asarray(gap_mm, float) - gap_range[0]) / (gap_range[1] - gap_range[0])
    un = (np.asarray(neighbour_mm, float) - neighbour_range[0]) / (neighbour_range[1]
                                                                   - neighbour_range[0])
    return np.stack(np.broadcast_arrays(u, np.asarray(direction, float), un,
                                        np.asarray(neighbour_direction, float)), axis=-1)


@dataclass(frozen=True)
class Calibration:
    """What the calibration scans measured.

    Attributes
    ----------
    response : ndarray, shape (6, 8)
        Change of each :data:`~agents.stabilize.plant.MEASURED` quantity per unit
        of each knob (:data:`~agents.stabilize.plant.KNOBS`).
    x : ndarray, shape (n, 4)
        Scan points as model inputs (:func:`features`).
    measured : ndarray, shape (n, 6)
        Drift-corrected changes at each scan point.
    targets : ndarray, shape (n, 5)
        Source-knob settings that cancel them (:data:`SOURCE_KNOBS` order).
    leg : ndarray of str, shape (n,)
        ``"gap_up"``, ``"gap_down"``, ``"neighbour_up"`` or ``"neighbour_down"``.
    gap_range, neighbour_range : tuple of float
        Ranges the scans covered, mm.
    design_gap_mm, neighbour_rest_mm : float
    duration_s : float
        Beamline time the scans took, s.
    """

    response: np.ndarray
    x: np.ndarray
    measured: np.ndarray
    targets: np.ndarray
    leg: np.ndarray
    gap_range: tuple[float, float]
    neighbour_range: tuple[float, float]
    design_gap_mm: float
    neighbour_rest_mm: float
    duration_s: float

    def solve(self, measured: np.ndarray) -> np.ndarray:
        """Source-knob settings that cancel *measured* changes ``(..., 6)``."""
        return _solve(self.response[:, :5], measured)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"response": self.response.tolist(), "x": self.x.tolist(),
                "measured": self.measured.tolist(), "targets": self.targets.tolist(),
                "leg": self.leg.tolist(), "gap_range": list(self.gap_range),
                "neighbour_range": list(self.neighbour_range),
                "design_gap_mm": self.design_gap_mm, "neighbour_rest_mm": self.neighbour_rest_mm,
                "duration_s": self.duration_s, "knobs": list(KNOBS), "measured_keys":
                list(MEASURED)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(response=np.asarray(doc["response"], float), x=np.asarray(doc["x"], float),
                       measured=np.asarray(doc["measured"], float),
                       targets=np.asarray(doc["targets"], float),
                       leg=np.asarray(doc["leg"], dtype=str),
                       gap_range=tuple(doc["gap_range"]),  # type: ignore[arg-type]
                       neighbour_range=tuple(doc["neighbour_range"]),  # type: ignore[arg-type]
                       design_gap_mm=float(doc["design_gap_mm"]),
                       neighbour_rest_mm=float(doc["neighbour_rest_mm"]),
                       duration_s=float(doc["duration_s"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a stabiliser calibration: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict()))


def _solve(r_src: np.ndarray, measured: np.ndarray) -> np.ndarray:
    w = 1.0 / _WEIGHT_SCALE
    a = r_src * w[:, None]
    return -(np.asarray(measured) * w) @ np.linalg.pinv(a).T


def _extrapolate(refs: list[tuple[float, np.ndarray]], t: float) -> np.ndarray:
    """Drift at *t* from the references so far (linear through the last two)."""
    if not refs:
        return np.zeros(len(MEASURED))
    if len(refs) == 1:
        return refs[-1][1]
    (t0, v0), (t1, v1) = refs[-2], refs[-1]
    return v1 + (v1 - v0) * (t - t1) / (t1 - t0) if t1 > t0 else v1


def _plan(plant: StabilizePlant, points: int, dwell_s: float, ref_every: int, iterations: int
          ) -> tuple[GapSchedule, list[tuple[int, int, str]]]:
    """The scan as a gap schedule and its averaging windows ``(start, stop, label)``;
    each scan point has *iterations* windows in a row."""
    desc, dt = plant.desc, plant.config.dt_s
    low, high, design, speed = working_range(desc)
    sg = desc.disturbances.source_gap
    rest = sg.neighbour_gap_mm
    gaps: list[float] = []
    nbs: list[float] = []
    windows: list[tuple[int, int, str]] = []
    n_dwell = max(2, int(round(dwell_s / dt)))
    settle = n_dwell // 3
    approach = 0.3  # mm

    def hold(g: float, n: float, label: str, times: int = 1, iterations: int = 1) -> None:
        for _ in range(iterations):
            i = len(gaps)
            gaps.extend([g] * n_dwell * times)
            nbs.extend([n] * n_dwell * times)
            windows.append((i + settle, i + n_dwell * times, label))

    def move(g0: float, g1: float, n0: float, n1: float) -> None:
        k = int(np.ceil(max(abs(g1 - g0), abs(n1 - n0)) / (speed * dt)))
        for t in np.linspace(0, 1, k + 1)[1:]:
            gaps.append(g0 + (g1 - g0) * t)
            nbs.append(n0 + (n1 - n0) * t)

    def reference() -> None:
        # at rest, approached from below as at the start (the hysteresis state of rest)
        move(gaps[-1], max(low, design - approach), nbs[-1],
             max(sg.neighbour_gap_low_mm, rest - approach))
        move(gaps[-1], design, nbs[-1], rest)
        hold(design, rest, "reference", 3)

    def leg(path: np.ndarray, label: str, own: bool, sign: float) -> None:
        lo, hi = (low, high) if own else (sg.neighbour_gap_low_mm, sg.neighbour_gap_high_mm)
        for i, v in enumerate(path):
            if i and i % ref_every == 0:
                reference()
            # approach every point from the leg's side, so its hysteresis state is known
            pre = float(np.clip(v - sign * approach, lo, hi))
            g0, n0 = (pre, rest) if own else (design, pre)
            g, n = (float(v), rest) if own else (design, float(v))
            move(gaps[-1], g0, nbs[-1], n0)
            move(g0, g, n0, n)
            hold(g, n, label, iterations=iterations)

    up = np.linspace(low, high, points)
    nb_up = np.linspace(sg.neighbour_gap_low_mm, sg.neighbour_gap_high_mm, points)
    hold(design, rest, "knob", 3)  # the first reference, at rest
    for label, path, own, sign in (("gap_up", up, True, 1.0), ("gap_down", up[::-1], True, -1.0),
                                   ("neighbour_up", nb_up, False, 1.0),
                                   ("neighbour_down", nb_up[::-1], False, -1.0)):
        leg(path, label, own, sign)
        reference()
    sched = GapSchedule(kind="calibration", seed=0, dt_s=dt, gap_mm=np.asarray(gaps),
                        neighbour_mm=np.asarray(nbs))
    return sched, windows


def calibrate(plant: StabilizePlant, *, points: int = 25, dwell_s: float = 1.0,
              ref_every: int = 5, iterations: int = 3, probe_fraction: float = 0.3,
              noise_seed: int = 0,
              progress: Callable[[str], None] | None = None) -> Calibration:
    """Run the calibration scans on *plant* and return what they measured.

    Parameters
    ----------
    plant : StabilizePlant
    points : int
        Scan points per leg (4 legs).
    dwell_s : float
        Time at each point, s; the last two thirds are averaged.
    ref_every : int
        Points between references at rest (drift references).
    iterations : int
        Nulling steps at each point (each one dwell long).
    probe_fraction : float
        Knob probes as a fraction of each knob's envelope.
    noise_seed : int
        Seeds the diagnostics' noise.
    """
    if not isinstance(points, int) or points < 4:
        raise ConfigError(f"points must be an integer >= 4, got {points!r}")
    if not isinstance(ref_every, int) or ref_every < 1:
        raise ConfigError(f"ref_every must be an integer >= 1, got {ref_every!r}")
    if not (np.isfinite(dwell_s) and dwell_s > 0):
        raise ConfigError(f"dwell_s must be a finite number > 0, got {dwell_s!r}")
    if not (np.isfinite(probe_fraction) and 0 < probe_fraction <= 1):
        raise ConfigError(f"probe_fraction must lie in (0, 1], got {probe_fraction!r}")
    say = progress or (lambda _m: None)
    limits = plant.config.knob_limits
    dt = plant.config.dt_s
    n_dwell = max(2, int(round(dwell_s / dt)))
    # 1. knob response at rest, before the scan: +probe then -probe for each knob
    say("measuring the knob response")
    probe_sched = GapSchedule(kind="probe", seed=0, dt_s=dt,
                              gap_mm=np.full(n_dwell * (2 * len(KNOBS) + 1),
                                             working_range(plant.desc)[2]),
                              neighbour_mm=np.full(n_dwell * (2 * len(KNOBS) + 1),
                                                   plant.desc.disturbances.source_gap
                                                   .neighbour_gap_mm))
    run = plant.run(probe_sched, noise_seed=noise_seed)
    settings = [np.zeros(len(KNOBS))]
    for j, k in enumerate(KNOBS):
        for sign in (1.0, -1.0):
            v = np.zeros(len(KNOBS))
            v[j] = sign * probe_fraction * limits[k]
            settings.append(v)
    means = []
    for v in settings:
        rows = []
        for i in range(n_dwell):
            run.apply(v)
            r = run.reading()
            if i >= n_dwell // 3:
                rows.append(r.measured)
            run.advance()
        means.append(np.mean(rows, axis=0))
    means_a = np.asarray(means)
    steps = np.array([probe_fraction * limits[k] for k in KNOBS])
    response = ((means_a[1::2] - means_a[2::2]) / (2 * steps[:, None])).T
    # 2. gap scans in closed loop: at every point the source knobs null the change
    #    (Gauss-Newton through the knob response, one step per window), as facilities
    #    record their corrector settings with the orbit feedback on; knobs at zero for
    #    the drift references
    say(f"scanning the gaps: 4 legs of {points} points, {iterations} nulling steps each")
    sched, windows = _plan(plant, points, dwell_s, ref_every, iterations)
    run = plant.run(sched, noise_seed=noise_seed + 1)
    values = np.zeros((sched.steps, len(MEASURED)))
    dirs = np.zeros((sched.steps, 2))
    ends = {b - 1: w for w, (_, b, _) in enumerate(windows)}
    t = sched.time_s
    knobs = np.zeros(len(KNOBS))
    applied: list[np.ndarray] = []
    seen: list[tuple[float, np.ndarray]] = []
    lim = np.array([limits[k] for k in KNOBS[:5]])
    while not run.done:
        r = run.reading()
        i = run.step
        values[i] = r.measured
        dirs[i] = (r.gap_direction, r.neighbour_direction)
        w = ends.get(i)
        if w is not None:
            a, b, label = windows[w]
            applied.append(knobs.copy())
            mean = values[a:b].mean(axis=0)
            if label in ("knob", "reference"):
                knobs = np.zeros(len(KNOBS))
                seen.append((float(t[a:b].mean()), mean))
            else:
                # null the gap's part only: the drift so far, extrapolated from the
                # last two references, is taken out (the source knobs cannot follow
                # a pitch's drift, and must not try)
                step = _solve(response[:, :5], mean - _extrapolate(seen, t[i]))
                knobs[:5] = np.clip(knobs[:5] + step, -lim, lim)
            nxt = windows[w + 1][2] if w + 1 < len(windows) else "reference"
            if nxt in ("knob", "reference"):
                knobs = np.zeros(len(KNOBS))
        run.apply(knobs)
        run.advance()
    avg = [(float(t[a:b].mean()), values[a:b].mean(axis=0), label, a, k)
           for (a, b, label), k in zip(windows, applied, strict=True)]
    refs = [(tm, v) for tm, v, label, _, _ in avg if label in ("knob", "reference")]
    ref_t = np.array([tm for tm, _ in refs])
    ref_v = np.array([v for _, v in refs])
    # the drift between references: a cubic spline in time (drift cycles last ten
    # minutes and more, references come every 20-40 s, so the spline follows it)
    drift_at = CubicSpline(ref_t, ref_v, axis=0, bc_type="natural")
    xs, ms, legs, targets = [], [], [], []
    low, high, design, _ = working_range(plant.desc)
    sg = plant.desc.disturbances.source_gap
    estimates: list[np.ndarray] = []
    for j, (tm, v, label, a, k) in enumerate(avg):
        if label in ("knob", "reference"):
            continue
        residual = v - drift_at(tm)
        # the knobs in this window, and one more (small, linear) step that nulls what
        # is left once the drift is taken out; the point's windows are averaged
        estimates.append(k[:5] + _solve(response[:, :5], residual))
        if j + 1 < len(avg) and avg[j + 1][2] == label and \
                sched.gap_mm[avg[j + 1][3]] == sched.gap_mm[a] and \
                sched.neighbour_mm[avg[j + 1][3]] == sched.neighbour_mm[a]:
            continue  # the point has another window
        xs.append(features(sched.gap_mm[a], dirs[a, 0], sched.neighbour_mm[a], dirs[a, 1],
                           (low, high), (sg.neighbour_gap_low_mm, sg.neighbour_gap_high_mm)))
        ms.append(residual)
        targets.append(np.mean(estimates, axis=0))
        estimates = []
        legs.append(label)
    measured = np.asarray(ms)
    cal = Calibration(response=response, x=np.asarray(xs), measured=measured,
                      targets=np.asarray(targets), leg=np.asarray(legs),
                      gap_range=(low, high),
                      neighbour_range=(sg.neighbour_gap_low_mm, sg.neighbour_gap_high_mm),
                      design_gap_mm=design, neighbour_rest_mm=sg.neighbour_gap_mm,
                      duration_s=(probe_sched.steps + sched.steps) * dt)
    say(f"calibration took {cal.duration_s:.0f} s of beamline time")
    return cal
