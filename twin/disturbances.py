"""Time-dependent disturbances: drift, vibration, gap-dependent source, ring current.

Each disturbance is a deterministic function of the seed and the time (and,
for the source, of the undulator gap and the direction it last moved), so a
whole run can be replayed. Each can be switched off in the preset, and
:class:`DisturbanceModel` can be built with ``enabled=False`` to switch all off.

Units: motor offsets are in each motor's own units, source positions in um,
pointing in urad, times in s and currents in mA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from twin.description import BeamlineDescription, Undulator
from twin.errors import ConfigError

__all__ = ["SourcePerturbation", "DisturbanceState", "DisturbanceModel", "combine_sources",
           "draw_source"]

_DRIFT_STREAM = 0x44524946  # "DRIF"
_VIB_STREAM = 0x56494252  # "VIBR"
_GAP_STREAM = 0x47415053  # "GAPS"
_LOSS_STREAM = 0x4C4F5353  # "LOSS"


@dataclass(frozen=True)
class SourcePerturbation:
    """Change of the photon source relative to its design.

    Attributes
    ----------
    dx_um, dy_um : float
        Source position, um.
    dxp_urad, dyp_urad : float
        Pointing, urad.
    size_x_scale, size_y_scale : float
        Multipliers of the source size (1 = design).
    """

    dx_um: float = 0.0
    dy_um: float = 0.0
    dxp_urad: float = 0.0
    dyp_urad: float = 0.0
    size_x_scale: float = 1.0
    size_y_scale: float = 1.0


def combine_sources(a: SourcePerturbation, b: SourcePerturbation) -> SourcePerturbation:
    """Both perturbations at once: positions and pointing add, size multipliers multiply."""
    return SourcePerturbation(a.dx_um + b.dx_um, a.dy_um + b.dy_um, a.dxp_urad + b.dxp_urad,
                              a.dyp_urad + b.dyp_urad, a.size_x_scale * b.size_x_scale,
                              a.size_y_scale * b.size_y_scale)


def draw_source(desc: BeamlineDescription, rng: np.random.Generator,
                scale: float = 1.0) -> SourcePerturbation:
    """A random source change, Gaussian with the preset's gap-dependence amplitudes as rms.

    For domain randomisation: each of position, pointing and size is drawn with
    the rms that ``[disturbances.source_gap]`` gives its full swing across the gap
    range, times *scale* (sizes stay above 0.5 of the design).
    """
    if not (math.isfinite(scale) and scale >= 0):
        raise ConfigError(f"scale must be a finite number >= 0, got {scale!r}")
    a = desc.disturbances.source_gap
    g = rng.standard_normal(6) * scale
    return SourcePerturbation(
        dx_um=a.position_x_um * g[0], dy_um=a.position_y_um * g[1],
        dxp_urad=a.pointing_x_urad * g[2], dyp_urad=a.pointing_y_urad * g[3],
        size_x_scale=max(0.5, 1.0 + a.size_x_pct / 100.0 * g[4]),
        size_y_scale=max(0.5, 1.0 + a.size_y_pct / 100.0 * g[5]))


@dataclass(frozen=True)
class DisturbanceState:
    """The disturbances at one instant.

    Attributes
    ----------
    time_s : float
    axis_offsets : dict of str to float
        Extra offset per motor (drift + vibration), motor units.
    source : SourcePerturbation
    ring_current_mA : float
    beam_available : bool
    """

    time_s: float = 0.0
    axis_offsets: Mapping[str, float] = field(default_factory=dict)
    source: SourcePerturbation = field(default_factory=SourcePerturbation)
    ring_current_mA: float = 200.0
    beam_available: bool = True

    @classmethod
    def quiet(cls, current_mA: float) -> DisturbanceState:
        """No disturbance, nominal current."""
        return cls(ring_current_mA=current_mA)


def nominal_current_mA(desc: BeamlineDescription) -> float:
    """Nominal ring current of a beamline (its undulator's, else 200 mA)."""
    src = desc.source
    return src.current_mA if isinstance(src, Undulator) else 200.0


class DisturbanceModel:
    """Evaluates every disturbance of a beamline as a function of time.

    Parameters
    ----------
    desc : BeamlineDescription
    seed : int
        Seeds the shapes and phases of every disturbance.
    enabled : bool
        False switches every disturbance off whatever the preset says.
    """

    def __init__(self, desc: BeamlineDescription, seed: int, *, enabled: bool = True) -> None:
        self._desc = desc
        self._seed = int(seed)
        self._cfg = desc.disturbances
        self._enabled = enabled
        self._nominal = nominal_current_mA(desc)
        motors = list(desc.motors)
        self._index = {m: i for i, m in enumerate(motors)}
        rng = np.random.default_rng([_DRIFT_STREAM, self._seed])
        # three incommensurate components per drifting axis; phases from the seed
        self._drift = {
            m: (rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.6, 1.0, 3))
            for m in sorted(self._cfg.thermal_drift.amplitudes)
        }
        grng = np.random.default_rng([_GAP_STREAM, self._seed])
        self._gap_shapes = {k: (grng.normal(0, 1, 3), grng.uniform(0, 2 * np.pi, 3))
                            for k in ("dx", "dy", "dxp", "dyp", "sx", "sy")}
        # the neighbouring insertion device's own shapes, drawn after this one's
        self._gap_shapes.update({"n" + k: (grng.normal(0, 1, 3), grng.uniform(0, 2 * np.pi, 3))
                                 for k in ("dx", "dy", "dxp", "dyp", "sx", "sy")})
        self._gap_norm = {k: self._shape_peak(k) for k in self._gap_shapes}
        self._gap_motor = next((f"{e.name}.gap" for e in desc.elements
                                if isinstance(e, Undulator)), None)
        self._losses = self._loss_times()

    # ---------------------------------------------------------------- pieces
    def drift(self, motor: str, time_s: float) -> float:
        """Thermal drift of *motor* at *time_s* (motor units); 0 at t = 0."""
        cfg = self._cfg.thermal_drift
        if not (self._enabled and cfg.enabled) or motor not in self._drift:
            return 0.0
        phases, weights = self._drift[motor]
        periods = cfg.period_s * np.array([1.0, 0.413, 0.171])
        arg = 2 * np.pi * time_s / periods + phases
        value = float(np.sum(weights * (np.sin(arg) - np.sin(phases))) / np.sum(weights))
        return cfg.amplitudes[motor] * value

    def drift_array(self, motor: str, times_s: np.ndarray) -> np.ndarray:
        """:meth:`drift` at many times at once (motor units)."""
        t = np.asarray(times_s, float)
        cfg = self._cfg.thermal_drift
        if not (self._enabled and cfg.enabled) or motor not in self._drift:
            return np.zeros_like(t)
        phases, weights = self._drift[motor]
        periods = cfg.period_s * np.array([1.0, 0.413, 0.171])
        arg = 2 * np.pi * t[:, None] / periods + phases
        value = np.sum(weights * (np.sin(arg) - np.sin(phases)), axis=1) / np.sum(weights)
        return cfg.amplitudes[motor] * value

    def vibration(self, motor: str, time_s: float) -> float:
        """Vibration jitter of *motor* at *time_s* (motor units), fixed per millisecond."""
        cfg = self._cfg.vibration
        if not (self._enabled and cfg.enabled) or motor not in cfg.rms:
            return 0.0
        rng = np.random.default_rng([_VIB_STREAM, self._seed, self._index[motor],
                                     int(round(time_s * 1e3))])
        return cfg.rms[motor] * float(rng.standard_normal())

    def _shape(self, key: str, u: float) -> float:
        amps, phases = self._gap_shapes[key]
        k = np.arange(1, 4)
        return float(np.sum(amps / k * np.sin(k * np.pi * u + phases)))

    def _shape_peak(self, key: str) -> float:
        grid = np.linspace(0, 1, 201)
        vals = np.array([self._shape(key, u) for u in grid])
        vals -= vals.mean()
        return float(np.max(np.abs(vals))) or 1.0

    def source(self, gap_mm: float | None, gap_direction: int,
               neighbour_gap_mm: float | None = None,
               neighbour_direction: int = 1) -> SourcePerturbation:
        """Source change at undulator gap *gap_mm* (mm) after a move in *gap_direction*.

        Smooth, non-linear in the gap (three harmonics with seeded amplitudes),
        peak-normalised to the configured amplitude, plus a hysteresis term
        ``h * direction * sin(pi u)`` that vanishes at the ends of the range.

        With *neighbour_gap_mm*, the neighbouring insertion device's gap adds its
        own change of the same form (its own shapes, ``neighbour_scale`` times the
        amplitudes), its smooth part zero at its gap at rest.
        """
        cfg = self._cfg.source_gap
        if not (self._enabled and cfg.enabled) or self._gap_motor is None:
            return SourcePerturbation()
        m = self._desc.motor(self._gap_motor)
        own = self._one_source("", gap_mm, gap_direction, m.low, m.high, _design_u(m), 1.0)
        if neighbour_gap_mm is None or cfg.neighbour_scale == 0:
            return own
        lo, hi = cfg.neighbour_gap_low_mm, cfg.neighbour_gap_high_mm
        other = self._one_source("n", neighbour_gap_mm, neighbour_direction, lo, hi,
                                 (cfg.neighbour_gap_mm - lo) / (hi - lo), cfg.neighbour_scale)
        return combine_sources(own, other)

    def _one_source(self, prefix: str, gap_mm: float | None, direction: int, low: float,
                    high: float, u0: float, scale: float) -> SourcePerturbation:
        if gap_mm is None:
            return SourcePerturbation()
        cfg = self._cfg.source_gap
        u = min(1.0, max(0.0, (gap_mm - low) / (high - low)))
        h = cfg.hysteresis
        sign = 1.0 if direction >= 0 else -1.0

        def value(key: str, amplitude: float) -> float:
            k = prefix + key
            base = (self._shape(k, u) - self._shape(k, u0)) / self._gap_norm[k]
            hyst = h * sign * math.sin(math.pi * u)
            return scale * amplitude * ((1.0 - h) * base + hyst)

        return SourcePerturbation(
            dx_um=value("dx", cfg.position_x_um),
            dy_um=value("dy", cfg.position_y_um),
            dxp_urad=value("dxp", cfg.pointing_x_urad),
            dyp_urad=value("dyp", cfg.pointing_y_urad),
            size_x_scale=1.0 + value("sx", cfg.size_x_pct) / 100.0,
            size_y_scale=1.0 + value("sy", cfg.size_y_pct) / 100.0,
        )

    def source_array(self, gap_mm: np.ndarray, gap_direction: np.ndarray,
                     neighbour_gap_mm: np.ndarray | None = None,
                     neighbour_direction: np.ndarray | None = None) -> np.ndarray:
        """:meth:`source` for arrays of states at once, ``(n, 6)``.

        Columns: dx_um, dy_um, dxp_urad, dyp_urad, size_x_scale - 1, size_y_scale - 1.
        Both devices combine as in :meth:`source`: positions and pointing add, size
        multipliers multiply.
        """
        gap = np.asarray(gap_mm, float)
        out = np.zeros((gap.size, 6))
        cfg = self._cfg.source_gap
        if not (self._enabled and cfg.enabled) or self._gap_motor is None:
            return out
        m = self._desc.motor(self._gap_motor)
        out += self._source_block("", gap, np.asarray(gap_direction, float), m.low, m.high,
                                  _design_u(m), 1.0)
        if neighbour_gap_mm is not None and cfg.neighbour_scale != 0:
            lo, hi = cfg.neighbour_gap_low_mm, cfg.neighbour_gap_high_mm
            nd = np.ones(gap.size) if neighbour_direction is None else np.asarray(
                neighbour_direction, float)
            other = self._source_block("n", np.asarray(neighbour_gap_mm, float), nd, lo, hi,
                                       (cfg.neighbour_gap_mm - lo) / (hi - lo),
                                       cfg.neighbour_scale)
            out[:, :4] += other[:, :4]
            out[:, 4:] = (1.0 + out[:, 4:]) * (1.0 + other[:, 4:]) - 1.0
        return out

    def _source_block(self, prefix: str, gap: np.ndarray, direction: np.ndarray, low: float,
                      high: float, u0: float, scale: float) -> np.ndarray:
        cfg = self._cfg.source_gap
        u = np.clip((gap - low) / (high - low), 0.0, 1.0)
        sign = np.where(direction >= 0, 1.0, -1.0)
        h = cfg.hysteresis
        k = np.arange(1, 4)
        cols = []
        for key, amp in (("dx", cfg.position_x_um), ("dy", cfg.position_y_um),
                         ("dxp", cfg.pointing_x_urad), ("dyp", cfg.pointing_y_urad),
                         ("sx", cfg.size_x_pct / 100.0), ("sy", cfg.size_y_pct / 100.0)):
            amps, phases = self._gap_shapes[prefix + key]
            shape = np.sum(amps / k * np.sin(k * np.pi * u[:, None] + phases), axis=1)
            base = (shape - self._shape(prefix + key, u0)) / self._gap_norm[prefix + key]
            cols.append(scale * amp * ((1.0 - h) * base + h * sign * np.sin(np.pi * u)))
        return np.stack(cols, axis=1)

    def _loss_times(self) -> list[float]:
        cfg = self._cfg.ring
        if not (self._enabled and cfg.enabled) or cfg.beam_loss_per_h <= 0:
            return []
        rng = np.random.default_rng([_LOSS_STREAM, self._seed])
        t, out = 0.0, []
        horizon = 30 * 24 * 3600.0  # a month of simulated time
        while t < horizon and len(out) < 10_000:
            t += rng.exponential(3600.0 / cfg.beam_loss_per_h)
            out.append(t)
        return out

    def ring(self, time_s: float) -> tuple[float, bool]:
        """Ring current (mA) and beam availability at *time_s*.

        Exponential decay with the configured lifetime, restored at every
        top-up; after a beam loss the current is 0 for ``refill_s``.
        """
        cfg = self._cfg.ring
        if not (self._enabled and cfg.enabled):
            return self._nominal, True
        for t_loss in self._losses:
            if t_loss > time_s:
                break
            if time_s < t_loss + cfg.refill_s:
                return 0.0, False
        since = time_s % cfg.topup_period_s if cfg.topup_period_s > 0 else time_s
        return self._nominal * math.exp(-since / (cfg.lifetime_h * 3600.0)), True

    # ---------------------------------------------------------------- all at once
    def state(self, time_s: float, gap_mm: float | None = None, gap_direction: int = 1,
              beam_lost: bool = False, neighbour_gap_mm: float | None = None,
              neighbour_direction: int = 1) -> DisturbanceState:
        """Every disturbance at *time_s*.

        Parameters
        ----------
        time_s : float
            Simulated time, s.
        gap_mm : float, optional
            Physical undulator gap, mm (for the source's gap dependence).
        gap_direction : int
            +1 if the gap last moved up (opened), -1 if it last closed.
        beam_lost : bool
            An injected beam loss: current 0, beam not available.
        neighbour_gap_mm : float, optional
            The neighbouring insertion device's gap, mm (None: at rest).
        neighbour_direction : int
            Direction of its last move, as *gap_direction*.
        """
        offsets: dict[str, float] = {}
        for m in set(self._cfg.thermal_drift.amplitudes) | set(self._cfg.vibration.rms):
            v = self.drift(m, time_s) + self.vibration(m, time_s)
            if v:
                offsets[m] = v
        current, available = self.ring(time_s)
        if beam_lost:
            current, available = 0.0, False
        return DisturbanceState(time_s=time_s, axis_offsets=offsets,
                                source=self.source(gap_mm, gap_direction, neighbour_gap_mm,
                                                   neighbour_direction),
                                ring_current_mA=current, beam_available=available)


def _design_u(m: object) -> float:
    """Normalised design gap: the source change is zero at the design gap."""
    return (m.position - m.low) / (m.high - m.low)  # type: ignore[attr-defined]
