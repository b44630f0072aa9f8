"""The twin as a live beamline: motors that take time, drift, backlash and noise.

:class:`TwinBeamline` implements :class:`~twin.protocol.MovableBeamline`
in-process on top of :class:`~twin.tracer.Twin`. It keeps a simulated clock:
a move costs the slowest motor's travel time (motors move together, at their
configured speeds) and an acquisition costs its exposure. Disturbances are
evaluated at the clock; hidden errors stay inside.

Motor imperfections (switchable in the preset's ``[disturbances.motors]``):

* **backlash**: the mechanics lose ``backlash`` of motion when a move ends in
  the negative direction, so the load sits ``backlash`` below the commanded
  position until the next positive move;
* **encoder error**: the readback differs from the commanded position by a
  seeded random error of rms ``encoder_error``, fixed per move.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from twin.description import BeamlineDescription, Undulator
from twin.disturbances import DisturbanceModel, SourcePerturbation, combine_sources
from twin.errors import ConfigError, LimitError, NonFiniteError
from twin.hidden import HiddenErrors
from twin.observation import Observation
from twin.protocol import MotorInfo
from twin.settings import validate_positions
from twin.tracer import Twin

__all__ = ["TwinBeamline"]

_ENCODER_STREAM = 0x454E434F  # "ENCO"


class TwinBeamline:
    """A simulated beamline behind the :class:`~twin.protocol.MovableBeamline` protocol.

    Parameters
    ----------
    desc : BeamlineDescription
    hidden : HiddenErrors, optional
        This beamline's misalignment (default: none).
    seed : int
        Seeds rays, noise, disturbances and encoder errors.
    backend : str
        Tracing backend (``"xrt"``).
    rays : int
        Rays per acquisition.
    noise : bool
        Photon and readout noise on every acquisition.
    disturbances : bool
        False switches every disturbance off.
    twin : Twin, optional
        An existing twin of *desc* to trace with (its caches are shared; *backend*
        and *rays* are then ignored). Environments reuse one across episodes.
    source : SourcePerturbation, optional
        A fixed change of the source (another orbit, another coupling), added to
        the disturbance model's gap-dependent one: positions and pointing add,
        size multipliers multiply.
    """

    def __init__(self, desc: BeamlineDescription, *, hidden: HiddenErrors | None = None,
                 seed: int = 0, backend: str = "xrt", rays: int = 10_000, noise: bool = True,
                 disturbances: bool = True, twin: Twin | None = None,
                 source: SourcePerturbation | None = None) -> None:
        self.desc = desc
        self._source = source
        if twin is not None and twin.desc is not desc:
            raise ConfigError("the twin passed to TwinBeamline describes another beamline")
        self._twin = twin if twin is not None else Twin(desc, backend=backend, rays=rays)
        self._hidden = hidden if hidden is not None else HiddenErrors.none()
        self._hidden.check(desc)
        self._seed = int(seed)
        self._noise = noise
        self._model = DisturbanceModel(desc, seed, enabled=disturbances)
        cfg = desc.disturbances.motors
        self._backlash_on = disturbances and cfg.backlash
        self._encoder_on = disturbances and cfg.encoder_error
        self._specs = desc.motors
        self._index = {n: i for i, n in enumerate(self._specs)}
        self._commanded = desc.design_positions()
        self._lost = dict.fromkeys(self._specs, 0.0)  # backlash lost motion per motor
        self._encoder = dict.fromkeys(self._specs, 0.0)
        self._clock = 0.0
        self._moves = 0
        self._acquisitions = 0
        self._gap_direction = 1
        self._neighbour_gap: float | None = None
        self._neighbour_direction = 1
        self._beam_lost = False
        self._gap_motor = next((f"{e.name}.gap" for e in desc.elements
                                if isinstance(e, Undulator)), None)

    # ------------------------------------------------------------------ protocol
    def motors(self) -> dict[str, MotorInfo]:
        """Every motor with its limits and units."""
        return {n: MotorInfo(n, m.units, m.low, m.high, m.resolution, m.speed, m.description)
                for n, m in self._specs.items()}

    def positions(self) -> dict[str, float]:
        """Readbacks (commanded position plus encoder error), motor units."""
        return {n: v + self._encoder[n] for n, v in self._commanded.items()}

    def move(self, targets: Mapping[str, float]) -> None:
        """Move to absolute *targets* (motor units); validates everything first.

        Raises
        ------
        UnknownNameError, NonFiniteError, LimitError
            Nothing moves.
        """
        checked = validate_positions(self.desc, targets)
        duration = 0.0
        for name, target in checked.items():
            m = self._specs[name]
            target = round(target / m.resolution) * m.resolution  # whole motor steps
            target = min(max(target, m.low), m.high)
            delta = target - self._commanded[name]
            if delta == 0:
                continue
            duration = max(duration, abs(delta) / m.speed)
            if self._backlash_on and m.backlash > 0:
                self._lost[name] = -m.backlash if delta < 0 else 0.0
            if name == self._gap_motor:
                self._gap_direction = 1 if delta > 0 else -1
            self._commanded[name] = target
            if self._encoder_on and m.encoder_error > 0:
                rng = np.random.default_rng([_ENCODER_STREAM, self._seed, self._moves,
                                             self._index[name]])
                self._encoder[name] = m.encoder_error * float(rng.standard_normal())
        self._moves += 1
        self._clock += duration

    def ground_truth(self) -> Observation:
        """The beam as it really is now: noise-free, at the mechanics' true positions.

        For judging trials in simulation only; no real beamline offers it, so it is
        not part of the :class:`~twin.protocol.MovableBeamline` protocol. It takes
        no beamline time.
        """
        return self._observe(noise=False, exposure=self.desc.detector.exposure_s)

    def acquire(self, exposure_s: float | None = None) -> Observation:
        """Expose every diagnostic and the detector at the current clock."""
        exposure = exposure_s if exposure_s is not None else self.desc.detector.exposure_s
        if isinstance(exposure, bool) or not isinstance(exposure, (int, float)) or \
                not math.isfinite(exposure) or exposure <= 0:
            raise NonFiniteError(f"exposure_s must be a finite number > 0, got {exposure_s!r}")
        self._clock += exposure
        self._acquisitions += 1
        return self._observe(noise=self._noise, exposure=exposure)

    def _observe(self, *, noise: bool, exposure: float) -> Observation:
        physical = {n: v + self._lost[n] for n, v in self._commanded.items()}
        gap = None
        if self._gap_motor is not None:
            gap = physical[self._gap_motor] + self._hidden.offset(self._gap_motor)
        state = self._model.state(self._clock, gap, self._gap_direction, self._beam_lost,
                                  self._neighbour_gap, self._neighbour_direction)
        if self._source is not None:
            state = dataclasses.replace(state, source=combine_sources(state.source,
                                                                      self._source))
        return self._twin.trace(physical, hidden=self._hidden,
                                seed=self._seed, disturbance=state, noise=noise,
                                exposure_s=exposure, check_limits=False,
                                noise_seed=self._seed + self._acquisitions)

    @property
    def time_s(self) -> float:
        """Simulated beamline time so far, s."""
        return self._clock

    # ------------------------------------------------------------------ extras
    @property
    def twin(self) -> Twin:
        """The underlying twin (for the ideal reference)."""
        return self._twin

    @property
    def counts(self) -> dict[str, int]:
        """Moves and acquisitions made so far."""
        return {"moves": self._moves, "acquisitions": self._acquisitions}

    @property
    def neighbour_gap_mm(self) -> float | None:
        """The neighbouring insertion device's gap, mm (None: at rest)."""
        return self._neighbour_gap

    def set_neighbour_gap(self, gap_mm: float | None) -> None:
        """Set the gap of the neighbouring insertion device, mm (None: at rest).

        It is not this beamline's motor: another beamline moves it, and its
        gap-dependent perturbation of the ring reaches this source
        (``[disturbances.source_gap]`` ``neighbour_*``). Takes no beamline time.

        Raises
        ------
        NonFiniteError, LimitError
            If *gap_mm* is not finite or lies outside the neighbour's gap range.
        """
        if gap_mm is None:
            self._neighbour_gap = None
            return
        cfg = self.desc.disturbances.source_gap
        if isinstance(gap_mm, bool) or not isinstance(gap_mm, (int, float)) or \
                not math.isfinite(gap_mm):
            raise NonFiniteError(f"neighbour gap must be a finite number in mm, got {gap_mm!r}")
        if not cfg.neighbour_gap_low_mm <= gap_mm <= cfg.neighbour_gap_high_mm:
            raise LimitError(f"neighbour gap {gap_mm} mm lies outside its range "
                             f"[{cfg.neighbour_gap_low_mm}, {cfg.neighbour_gap_high_mm}] mm")
        previous = self._neighbour_gap if self._neighbour_gap is not None else cfg.neighbour_gap_mm
        if gap_mm != previous:
            self._neighbour_direction = 1 if gap_mm > previous else -1
        self._neighbour_gap = float(gap_mm)

    def inject_beam_loss(self, lost: bool = True) -> None:
        """Lose (or restore) the stored beam: flux drops to zero until restored."""
        self._beam_lost = lost

    def wait(self, seconds: float) -> None:
        """Let simulated time pass (disturbances evolve)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise NonFiniteError(f"seconds must be finite and >= 0, got {seconds!r}")
        self._clock += seconds
