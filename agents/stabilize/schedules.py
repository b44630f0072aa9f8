"""Gap schedules: how the undulator gaps move while a stabiliser runs.

A schedule is a time series, sampled at the loop period, of this beamline's
undulator gap and of the neighbouring insertion device's gap, both moving at
the undulator's speed. Three kinds follow what a beamline lives through:

``energy_scan``
    A step scan of the gap through an energy range (the DCM follows; its fixed
    exit keeps the beam where it is), then back: the return leg shows the
    hysteresis.
``steps``
    Step changes of the gap: a user changes energy, waits, changes again.
``neighbour``
    This gap rests; the next straight's insertion device moves, and through the
    ring's orbit and coupling perturbs this source too.
``mixed``
    An energy scan while the neighbour moves.

Every schedule is a pure function of its kind and seed. Gaps in mm, times in s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.description import BeamlineDescription, Undulator
from twin.errors import ConfigError

__all__ = ["KINDS", "GapSchedule", "make_schedule", "working_range"]

KINDS: tuple[str, ...] = ("energy_scan", "steps", "neighbour", "mixed")
_STREAM = 0x53434844  # "SCHD"


@dataclass(frozen=True)
class GapSchedule:
    """Gaps against time.

    Attributes
    ----------
    kind : str
    seed : int
    dt_s : float
        Sample period, s.
    gap_mm, neighbour_mm : ndarray
        This undulator's gap and the neighbour's, mm, one per period.
    """

    kind: str
    seed: int
    dt_s: float
    gap_mm: np.ndarray
    neighbour_mm: np.ndarray

    @property
    def steps(self) -> int:
        """Number of loop periods."""
        return len(self.gap_mm)

    @property
    def time_s(self) -> np.ndarray:
        """Time of each period, s."""
        return np.arange(self.steps) * self.dt_s

    @property
    def name(self) -> str:
        """``kind:seed``."""
        return f"{self.kind}:{self.seed}"

    def to_dict(self) -> dict[str, object]:
        """Summary for JSON output."""
        return {"name": self.name, "kind": self.kind, "seed": self.seed,
                "duration_s": round(self.steps * self.dt_s, 3),
                "gap_mm": [round(float(self.gap_mm.min()), 4), round(float(self.gap_mm.max()), 4)],
                "neighbour_mm": [round(float(self.neighbour_mm.min()), 4),
                                 round(float(self.neighbour_mm.max()), 4)]}


def working_range(desc: BeamlineDescription) -> tuple[float, float, float, float]:
    """Gap range a schedule (and the calibration scan) covers: ``(low, high, design,
    speed)`` in mm and mm/s. From the gap's low limit to 10 mm above the design gap,
    the energies a user of one harmonic reaches."""
    und = next((e for e in desc.elements if isinstance(e, Undulator)), None)
    gap = und.motor("gap") if und is not None else None
    if gap is None:
        raise ConfigError(f"beamline {desc.name!r} has no undulator gap to stabilise against")
    return gap.low, min(gap.high, gap.position + 10.0), gap.position, gap.speed


def _ramp(path: list[float], targets: list[tuple[float, float]], speed: float,
          dt: float) -> None:
    """Append to *path*: move to each target at *speed*, then dwell its time."""
    for target, dwell in targets:
        g = path[-1]
        n_move = int(np.ceil(abs(target - g) / (speed * dt)))
        if n_move:
            path.extend(np.linspace(g, target, n_move + 1)[1:].tolist())
        path.extend([target] * max(1, int(round(dwell / dt))))


def make_schedule(desc: BeamlineDescription, kind: str, seed: int, *, duration_s: float = 60.0,
                  dt_s: float = 0.01) -> GapSchedule:
    """A seeded gap schedule of *kind* (:data:`KINDS`) lasting *duration_s*.

    Raises
    ------
    ConfigError
        For an unknown kind or a duration or period that is not > 0.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown gap schedule {kind!r}; kinds: {', '.join(KINDS)}")
    if not (np.isfinite(duration_s) and duration_s > 0 and np.isfinite(dt_s) and 0 < dt_s
            <= duration_s):
        raise ConfigError(f"duration_s and dt_s must be finite with 0 < dt_s <= duration_s, got "
                          f"{duration_s!r} and {dt_s!r}")
    rng = np.random.default_rng([_STREAM, KINDS.index(kind), int(seed)])
    low, high, design, speed = working_range(desc)
    sg = desc.disturbances.source_gap
    n = int(round(duration_s / dt_s))
    own: list[float] = [design]
    nb: list[float] = [sg.neighbour_gap_mm]

    def scan(path: list[float], lo: float, hi: float) -> None:
        start = float(rng.uniform(lo, lo + 0.4 * (hi - lo)))
        span = float(rng.uniform(0.2, 0.4) * (hi - lo))
        points = int(rng.integers(15, 30))
        dwell = duration_s / (2.5 * points)
        up = np.linspace(start, min(hi, start + span), points)
        _ramp(path, [(start, 1.0)] + [(float(g), dwell) for g in up], speed, dt_s)
        _ramp(path, [(float(g), dwell) for g in up[::-1]], speed, dt_s)

    def steps(path: list[float], lo: float, hi: float) -> None:
        while len(path) < n:
            _ramp(path, [(float(rng.uniform(lo, hi)), float(rng.uniform(2.0, 8.0)))], speed,
                  dt_s)

    if kind in ("energy_scan", "mixed"):
        scan(own, low, high)
    elif kind == "steps":
        steps(own, low, high)
    if kind in ("neighbour", "mixed"):
        steps(nb, sg.neighbour_gap_low_mm, sg.neighbour_gap_high_mm)
    own_a = np.asarray((own + [own[-1]] * n)[:n])
    nb_a = np.asarray((nb + [nb[-1]] * n)[:n])
    return GapSchedule(kind=kind, seed=int(seed), dt_s=float(dt_s), gap_mm=own_a,
                       neighbour_mm=nb_a)
