"""The beamline a stabiliser acts on: the twin, linearised about the aligned beam.

:class:`StabilizePlant` couples three parts of the twin:

* the disturbance model (:class:`twin.disturbances.DisturbanceModel`): the
  source's gap-dependent position, pointing and size (this gap and the
  neighbour's, with hysteresis) and the slow thermal drift of the pitches;
* the beam's response at the sample and at the XBPM before the KB,
  :class:`twin.beam_response.BeamResponse`, measured once on the fast twin;
* the corrector knobs (:data:`KNOBS`), each with the envelope a stabiliser may
  use around the aligned position.

Which knob cancels what (the docs have the table):

* the ring's local orbit bump at the source (``bump_x``/``bump_xp``,
  ``bump_y``/``bump_yp``) undoes the source's position and pointing change
  exactly, everywhere downstream;
* the ring's coupling knob sets the vertical source size, the only place the
  vertical spot size at the sample can be held (the KB images the source); it
  takes its emittance from the horizontal plane, whose size no knob here holds;
* M1's fine pitch steers the beam horizontally (it moves the virtual source);
* the KB pitches move the focus on the sample, and cancel any centroid motion
  there, whatever its cause, but leave the beam moving upstream.

A :class:`PlantRun` plays one gap schedule: it gives each loop period's
readings (the gap readbacks, and the sample and XBPM diagnostics with their
noise) and applies the knob settings a corrector returns, one period late (the
loop's latency). Units: um, urad, % (size and coupling), mm for gaps, s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.stabilize.schedules import GapSchedule
from twin.beam_response import BeamResponse, measure_response
from twin.description import BeamlineDescription, BeamPositionMonitor, SampleStage, Undulator
from twin.disturbances import DisturbanceModel
from twin.errors import ConfigError, LimitError, NonFiniteError, UnknownNameError

__all__ = ["KNOBS", "KNOB_LIMITS", "MEASURED", "StabilizeConfig", "StabilizePlant", "PlantRun",
           "Reading", "check_knobs"]

#: corrector knobs, in the order of every knob vector
KNOBS: tuple[str, ...] = ("undulator.bump_x", "undulator.bump_xp", "undulator.bump_y",
                          "undulator.bump_yp", "undulator.coupling", "m1.pitch", "kb_h.pitch",
                          "kb_v.pitch")
#: envelope of each knob about the aligned position, motor units (um, urad, %)
KNOB_LIMITS: dict[str, float] = {
    "undulator.bump_x": 5.0, "undulator.bump_xp": 3.0, "undulator.bump_y": 2.0,
    "undulator.bump_yp": 2.0, "undulator.coupling": 15.0, "m1.pitch": 1.0,
    "kb_h.pitch": 1.0, "kb_v.pitch": 1.0}
#: what a corrector measures each period: changes since the loop started
MEASURED: tuple[str, ...] = ("sample_x_um", "sample_y_um", "size_x_pct", "size_y_pct",
                             "bpm_x_um", "bpm_y_um")
#: motors whose pitch drifts or corrects, inputs of the response after the source
_RESPONSE_MOTORS = ("m1.pitch", "dcm.pitch2", "kb_h.pitch", "kb_v.pitch")
_SOURCE_OF = {"bump_x": 0, "bump_y": 1, "bump_xp": 2, "bump_yp": 3}
_NOISE_STREAM = 0x4E4F4953  # "NOIS"
_PHASE_STREAM = 0x50484153  # "PHAS"


@dataclass(frozen=True)
class StabilizeConfig:
    """How the stabilisation loop and its beamline behave.

    Parameters
    ----------
    dt_s : float
        Loop period, s (100 Hz by default).
    drift : bool
        Slow thermal drift of the pitches (the preset's ``thermal_drift``).
    vibration : bool
        The preset's vibration. Off by default: it is broadband, and no loop at
        the loop rate cancels it; it belongs to the mechanics.
    neighbour : bool
        The neighbouring insertion device's perturbation.
    sample_period_steps : int
        Loop periods per reading of the sample diagnostic (its online analysis
        runs once per detector exposure: 10 periods = 0.1 s); between readings
        the last one holds. The XBPM and the gaps are read every period.
    centroid_noise_um : float
        Noise of one reading of the beam position at the sample, um rms.
    size_noise_pct : float
        Noise of one reading of the spot size, % rms: a 30 nm vertical focus is
        not resolved by a beam camera, so this is what the ring's source-size
        monitor (an X-ray pinhole camera) gives, about 1 %.
    bpm_noise_um : float, optional
        Noise of one XBPM reading, um rms (default: the preset's).
    latency_steps : int
        Periods from a reading to the knob settings it leads to taking effect (>= 1).
    centroid_tol_um, size_tol_pct : float
        Scales of the reward: a deviation of this much costs 1 per period.
    rays : int
        Rays of the response measurement.
    knob_limits : dict of str to float
        Envelope of each knob (default :data:`KNOB_LIMITS`).
    """

    dt_s: float = 0.01
    drift: bool = True
    vibration: bool = False
    neighbour: bool = True
    sample_period_steps: int = 10
    centroid_noise_um: float = 0.002
    size_noise_pct: float = 1.0
    bpm_noise_um: float | None = None
    latency_steps: int = 1
    centroid_tol_um: float = 0.005
    size_tol_pct: float = 0.4
    rays: int = 50_000
    knob_limits: Mapping[str, float] = field(default_factory=lambda: dict(KNOB_LIMITS))

    def __post_init__(self) -> None:
        for k in ("dt_s", "centroid_tol_um", "size_tol_pct"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{k} must be a finite number > 0, got {v!r}")
        for k in ("centroid_noise_um", "size_noise_pct"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{k} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.sample_period_steps, int) or self.sample_period_steps < 1:
            raise ConfigError("sample_period_steps must be an integer >= 1, got "
                              f"{self.sample_period_steps!r}")
        if not isinstance(self.latency_steps, int) or self.latency_steps < 1:
            raise ConfigError(f"latency_steps must be an integer >= 1, got {self.latency_steps!r}")
        unknown = set(self.knob_limits) - set(KNOBS)
        if unknown or set(KNOBS) - set(self.knob_limits):
            raise ConfigError(f"knob_limits must give exactly the knobs {', '.join(KNOBS)}")


def check_knobs(values: Sequence[float] | np.ndarray, limits: Mapping[str, float]) -> np.ndarray:
    """Knob settings (:data:`KNOBS` order) as an array, or an error naming the bad one.

    Raises
    ------
    ConfigError
        If the vector does not have one value per knob.
    NonFiniteError
        For NaN or infinity.
    LimitError
        For a setting outside its envelope ``[-limit, +limit]``.
    """
    v = np.asarray(values, dtype=float)
    if v.shape != (len(KNOBS),):
        raise ConfigError(f"expected {len(KNOBS)} knob settings ({', '.join(KNOBS)}), got "
                          f"shape {v.shape}")
    for name, x in zip(KNOBS, v, strict=True):
        if not math.isfinite(x):
            raise NonFiniteError(f"correction of {name} is {x}; it must be finite")
        lim = limits[name]
        if abs(x) > lim * (1 + 1e-9):
            raise LimitError(f"correction of {name} = {x:.6g} lies outside its envelope "
                             f"[{-lim:g}, {lim:g}]")
    return v


@dataclass(frozen=True)
class Reading:
    """What a corrector sees in one loop period.

    Attributes
    ----------
    time_s : float
    gap_mm, gap_rate_mm_s : float
        This undulator's gap readback and its rate.
    gap_direction : int
        +1 if the gap last opened, -1 if it last closed.
    neighbour_mm, neighbour_rate_mm_s : float
    neighbour_direction : int
    measured : ndarray
        :data:`MEASURED`: changes since the loop started, with noise.
    fresh : bool
        Whether the sample diagnostic read anew this period (else its values
        in *measured* are the last reading's).
    knobs : ndarray
        The knob settings in effect, :data:`KNOBS` order.
    """

    time_s: float
    gap_mm: float
    gap_rate_mm_s: float
    gap_direction: int
    neighbour_mm: float
    neighbour_rate_mm_s: float
    neighbour_direction: int
    measured: np.ndarray
    fresh: bool
    knobs: np.ndarray


class StabilizePlant:
    """The linearised twin of one beamline with its hidden gap dependence.

    Parameters
    ----------
    desc : BeamlineDescription
        Needs an undulator with the ring's knobs, M1, a DCM, the KB pitches, an
        XBPM before the KB and a sample.
    seed : int
        Seeds the hidden disturbance (its shapes, hysteresis, drift phases).
    config : StabilizeConfig, optional
    response : BeamResponse, optional
        A response measured before (default: measured now, a few seconds).
    """

    def __init__(self, desc: BeamlineDescription, seed: int, config: StabilizeConfig | None = None,
                 *, response: BeamResponse | None = None) -> None:
        self.desc = desc
        self.seed = int(seed)
        self.config = config if config is not None else StabilizeConfig()
        for k in KNOBS:
            try:
                desc.motor(k)
            except UnknownNameError as exc:
                raise ConfigError(f"beamline {desc.name!r} lacks the corrector knob {k!r}; "
                                  "stabilisation needs the ring's knobs on the undulator "
                                  "and the M1 and KB pitches") from exc
        for m in _RESPONSE_MOTORS:
            desc.motor(m)
        self.undulator = next(e for e in desc.elements if isinstance(e, Undulator))
        sample = next((e for e in desc.elements if isinstance(e, SampleStage)), None)
        bpm = [e for e in desc.elements if isinstance(e, BeamPositionMonitor)]
        if sample is None or not bpm:
            raise ConfigError(f"beamline {desc.name!r} needs a sample and an XBPM to stabilise")
        self.sample, self.bpm = sample.name, bpm[-1]
        self.bpm_noise_um = (self.config.bpm_noise_um if self.config.bpm_noise_um is not None
                             else self.bpm.position_noise_um)
        self.response = response if response is not None else measure_response(
            desc, motors=_RESPONSE_MOTORS, diagnostics=(self.sample, self.bpm.name),
            rays=self.config.rays)
        self.model = DisturbanceModel(desc, self.seed, enabled=True)
        self._rows = [self.response.index(f"{self.sample}.{k}") for k in
                      ("centroid_x_um", "centroid_y_um", "rms_x_um", "rms_y_um")] + \
            [self.response.index(f"{self.bpm.name}.{k}") for k in ("centroid_x_um",
                                                                   "centroid_y_um")]
        self._motor_cols = {m: self.response.index(m) for m in _RESPONSE_MOTORS}

    # ------------------------------------------------------------------ physics
    def disturbance_inputs(self, schedule: GapSchedule, *, drift: bool | None = None,
                           time_offset_s: float | None = None) -> np.ndarray:
        """Response inputs the disturbance alone makes along *schedule*, ``(T, n_in)``.

        The drift starts at a seeded phase of its cycle (*time_offset_s*) and is
        counted from the schedule's start, when the beamline was aligned.
        """
        cfg = self.config
        drift = cfg.drift if drift is None else drift
        n_in = len(self.response.inputs)
        out = np.zeros((schedule.steps, n_in))
        g_dir = _directions(schedule.gap_mm, 1)
        n_dir = _directions(schedule.neighbour_mm, 1)
        out[:, :6] = self.model.source_array(
            schedule.gap_mm, g_dir, schedule.neighbour_mm if cfg.neighbour else None, n_dir)
        t0 = time_offset_s if time_offset_s is not None else float(
            np.random.default_rng([_PHASE_STREAM, self.seed, schedule.seed]).uniform(0, 3600.0))
        for m, col in self._motor_cols.items():
            if drift:
                out[:, col] += self.model.drift_array(m, t0 + schedule.time_s) - \
                    self.model.drift(m, t0)
            if cfg.vibration:
                out[:, col] += [self.model.vibration(m, t0 + t) for t in schedule.time_s]
        return out

    def knob_inputs(self, knobs: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Response inputs with knob settings *knobs* ``(..., n_knob)`` added to *base*."""
        out = np.array(base, dtype=float, copy=True)
        for j, name in enumerate(KNOBS):
            axis = name.split(".", 1)[1]
            if axis in _SOURCE_OF:
                out[..., _SOURCE_OF[axis]] += knobs[..., j]
            elif axis == "coupling":
                sx, sy = self.undulator.coupling_scales(knobs[..., j] / 100.0)
                out[..., 4] = (1.0 + out[..., 4]) * sx - 1.0
                out[..., 5] = (1.0 + out[..., 5]) * sy - 1.0
            else:
                out[..., self._motor_cols[name]] += knobs[..., j]
        return out

    def beam(self, inputs: np.ndarray) -> np.ndarray:
        """True beam for response inputs ``(..., n_in)``: :data:`MEASURED` quantities
        relative to the aligned beam (um and %), noise-free."""
        y = self.response.predict(inputs)[..., self._rows]
        y0 = self.response.y0[self._rows]
        d = y - y0
        d[..., 2] = 100.0 * d[..., 2] / y0[2]
        d[..., 3] = 100.0 * d[..., 3] / y0[3]
        return d

    def run(self, schedule: GapSchedule, *, noise_seed: int = 0, drift: bool | None = None
            ) -> PlantRun:
        """A fresh run of *schedule* on this plant (knobs at zero)."""
        if abs(schedule.dt_s - self.config.dt_s) > 1e-12:
            raise ConfigError(f"schedule period {schedule.dt_s} s differs from the loop period "
                              f"{self.config.dt_s} s")
        return PlantRun(self, schedule, self.disturbance_inputs(schedule, drift=drift),
                        noise_seed)


def _directions(gaps: np.ndarray, first: int) -> np.ndarray:
    """Direction of the last gap motion at every sample (+1 opening, -1 closing)."""
    d = np.sign(np.diff(gaps, prepend=gaps[0]))
    d[0] = d[0] or first
    idx = np.where(d != 0, np.arange(len(d)), 0)
    return d[np.maximum.accumulate(idx)]


class PlantRun:
    """One schedule played on a plant, one loop period at a time.

    Call :meth:`reading` for the current period's readings, :meth:`apply` with
    the corrector's knob settings, then :meth:`advance`. :attr:`truth` collects
    the true beam (``(T, 6)``, :data:`MEASURED` columns) for the metrics.
    """

    def __init__(self, plant: StabilizePlant, schedule: GapSchedule, inputs: np.ndarray,
                 noise_seed: int) -> None:
        self.plant, self.schedule, self._inputs = plant, schedule, inputs
        cfg = plant.config
        self._rng = np.random.default_rng([_NOISE_STREAM, plant.seed, schedule.seed,
                                           int(noise_seed)])
        self._noise = np.array([cfg.centroid_noise_um, cfg.centroid_noise_um, cfg.size_noise_pct,
                                cfg.size_noise_pct, plant.bpm_noise_um, plant.bpm_noise_um])
        self._reference = plant.beam(inputs[0])
        self.step = 0
        n = len(KNOBS)
        # a setting applied in period i takes effect in period i + latency
        self._pending = [np.zeros(n) for _ in range(cfg.latency_steps - 1)]
        self.knobs = np.zeros(n)
        self.knob_history = np.zeros((schedule.steps, n))
        self.truth = np.zeros((schedule.steps, len(MEASURED)))
        self._g_dir, self._n_dir = 1, 1
        self._sample = np.zeros(4)
        self._evaluate()

    @property
    def done(self) -> bool:
        """True after the schedule's last period."""
        return self.step >= self.schedule.steps

    def _evaluate(self) -> None:
        i = self.step
        x = self.plant.knob_inputs(self.knobs, self._inputs[i])
        self.truth[i] = self.plant.beam(x) - self._reference
        self.knob_history[i] = self.knobs

    def reading(self) -> Reading:
        """The readings of the current period."""
        i, s = self.step, self.schedule
        g, gn = float(s.gap_mm[i]), float(s.neighbour_mm[i])
        j = max(0, i - 1)
        g_rate = (g - float(s.gap_mm[j])) / s.dt_s
        n_rate = (gn - float(s.neighbour_mm[j])) / s.dt_s
        if g_rate:
            self._g_dir = 1 if g_rate > 0 else -1
        if n_rate:
            self._n_dir = 1 if n_rate > 0 else -1
        noisy = self.truth[i] + self._noise * self._rng.standard_normal(len(MEASURED))
        fresh = i % self.plant.config.sample_period_steps == 0
        if fresh:
            self._sample = noisy[:4]
        measured = np.concatenate([self._sample, noisy[4:]])
        return Reading(time_s=i * s.dt_s, gap_mm=g, gap_rate_mm_s=g_rate,
                       gap_direction=self._g_dir, neighbour_mm=gn, neighbour_rate_mm_s=n_rate,
                       neighbour_direction=self._n_dir, measured=measured, fresh=fresh,
                       knobs=self.knobs.copy())

    def apply(self, knobs: Sequence[float] | np.ndarray) -> None:
        """Set the knobs (:data:`KNOBS` order, changes from the aligned positions).

        They take effect after the loop's latency. A non-finite or out-of-envelope
        setting raises (see :func:`check_knobs`) and changes nothing.
        """
        self._pending.append(check_knobs(knobs, self.plant.config.knob_limits))

    def advance(self) -> None:
        """Go to the next period (the knobs applied longest ago take effect)."""
        if self._pending:
            self.knobs = self._pending.pop(0)
        self.step += 1
        if not self.done:
            self._evaluate()
