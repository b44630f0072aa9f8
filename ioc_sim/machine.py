"""The simulated machine behind the IOCs: motors in motion, the ring, the shutter, the twin.

:class:`SimulatedMachine` holds everything the PV groups share and nothing
about Channel Access: one :class:`~ioc_sim.motion.AxisMotion` per twin motor
(in the motor's dial units, which are the twin's motor units), the hidden
errors, the disturbance model and the tracing twin. Time is the wall clock
since the machine started, so motors move at their real speeds and the ring
current decays as the preset says.

The twin sees each motor where its *load* really is at the instant of the
trace (mid-move included, lost motion included), never where it was asked to go.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ioc_sim.motion import AxisMotion
from twin.description import BeamlineDescription, CrystalMonochromator, Undulator
from twin.disturbances import DisturbanceModel, DisturbanceState, nominal_current_mA
from twin.errors import ConfigError
from twin.hidden import HiddenErrors
from twin.observation import Observation
from twin.physics import harmonic_energy_eV, undulator_K
from twin.tracer import Twin

__all__ = ["MachineConfig", "SimulatedMachine", "DEFAULT_ACCEL_S"]

#: time to reach slew speed given to every simulated motor (motor record ACCL), s
DEFAULT_ACCEL_S = 0.1
#: hardware travel beyond the soft limits, as a fraction of the soft range per side
TRAVEL_MARGIN = 0.02


@dataclass(frozen=True, kw_only=True)
class MachineConfig:
    """How the simulated machine is built (the ``beamtwin ioc`` options).

    Parameters
    ----------
    backend : str
        Tracing fidelity, ``"fast"`` (default: validated against xrt, see
        docs/fast_twin.md) or ``"xrt"`` (the reference).
    rays : int
        Rays per trace.
    misalign : float
        Scale of the random hidden errors (0: ideal, 1: day one), as ``twin trace``.
    seed : int
        Seeds the rays, the hidden errors, the disturbances and the noise.
    disturbances : bool
        Drift, vibration, gap-dependent source, ring decay and top-up.
    noise : bool
        Photon and readout noise on frames and diagnostics.
    """

    backend: str = "fast"
    rays: int = 20_000
    misalign: float = 0.0
    seed: int = 0
    disturbances: bool = True
    noise: bool = True


class SimulatedMachine:
    """Motors, ring and twin of one simulated beamline.

    Parameters
    ----------
    desc : BeamlineDescription
    config : MachineConfig
    clock : callable
        Monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, desc: BeamlineDescription, config: MachineConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc = desc
        self.config = config or MachineConfig()
        cfg = self.config
        if not (isinstance(cfg.misalign, (int, float)) and cfg.misalign >= 0):
            raise ConfigError(f"misalign must be a number >= 0, got {cfg.misalign!r}")
        self.hidden = HiddenErrors.draw(desc, float(cfg.misalign), cfg.seed)
        self.twin = Twin(desc, backend=cfg.backend, rays=cfg.rays)
        self.model = DisturbanceModel(desc, cfg.seed, enabled=cfg.disturbances)
        self._clock = clock
        self._t0 = clock()
        self.axes: dict[str, AxisMotion] = {}
        for name, m in desc.motors.items():
            margin = TRAVEL_MARGIN * (m.high - m.low)
            self.axes[name] = AxisMotion(
                position=m.position, velocity=m.speed, accel_s=DEFAULT_ACCEL_S,
                bdst=m.backlash, bvel=m.speed, mechanical_backlash=m.backlash,
                travel_low=m.low - margin, travel_high=m.high + margin,
                resolution=m.resolution)
        self.shutter_open = True
        self.beam_lost = False
        #: motor setpoints refused at the IOC (outside the soft limits, or not finite)
        self.refused_setpoints = 0
        #: motion commands received by the motor records (VAL, DVAL, RLV, tweaks,
        #: homing, STOP, SPMG), accepted or refused
        self.motion_puts = 0
        #: moves that took a motor beyond the soft limits in force when they started
        #: (the reliability campaign's count at the IOC; 0 is the promise)
        self.limit_excursions = 0
        #: the neighbouring insertion device's gap (mm) and the direction it last moved
        self.neighbour_gap_mm = desc.disturbances.source_gap.neighbour_gap_mm
        self.neighbour_direction = 1
        self._frames = 0
        self._trace_lock = threading.Lock()
        self._nominal_mA = nominal_current_mA(desc)
        und = next((e for e in desc.elements if isinstance(e, Undulator)), None)
        self.undulator: Undulator | None = und
        self.gap_motor = f"{und.name}.gap" if und is not None else None
        self.mono = next((e for e in desc.elements if isinstance(e, CrystalMonochromator)), None)

    # ------------------------------------------------------------------ time and ring
    def now(self) -> float:
        """Machine time, s since start."""
        return self._clock() - self._t0

    def disturbance(self, t: float | None = None) -> DisturbanceState:
        """Disturbances at machine time *t* (default: now), with the injected beam loss."""
        t = self.now() if t is None else t
        gap = direction = None
        if self.gap_motor is not None:
            axis = self.axes[self.gap_motor]
            gap = axis.load_position(t) + self.hidden.offset(self.gap_motor)
            direction = axis.last_direction
        return self.model.state(t, gap, direction or 1, self.beam_lost,
                                self.neighbour_gap_mm, self.neighbour_direction)

    def set_neighbour_gap(self, gap_mm: float) -> None:
        """Set the neighbouring insertion device's gap, mm (its direction follows).

        Raises
        ------
        ConfigError
            If *gap_mm* is not finite or lies outside the neighbour's gap range.
        """
        sg = self.desc.disturbances.source_gap
        if not (isinstance(gap_mm, (int, float)) and math.isfinite(gap_mm)
                and sg.neighbour_gap_low_mm <= gap_mm <= sg.neighbour_gap_high_mm):
            raise ConfigError(f"neighbour gap must be a finite number within "
                              f"[{sg.neighbour_gap_low_mm}, {sg.neighbour_gap_high_mm}] mm, got "
                              f"{gap_mm!r}")
        if gap_mm != self.neighbour_gap_mm:
            self.neighbour_direction = 1 if gap_mm > self.neighbour_gap_mm else -1
        self.neighbour_gap_mm = float(gap_mm)

    def ring(self, t: float | None = None) -> tuple[float, bool]:
        """(ring current in mA, beam available) at machine time *t*."""
        s = self.disturbance(t)
        return s.ring_current_mA, s.beam_available

    # ------------------------------------------------------------------ undulator
    def undulator_energy_eV(self, harmonic: int | None = None, t: float | None = None) -> float:
        """On-axis energy of *harmonic* at the gap's readback, eV (NaN without undulator)."""
        und = self.undulator
        if und is None or self.gap_motor is None:
            return float("nan")
        t = self.now() if t is None else t
        gap, _ = self.axes[self.gap_motor].state(t)
        k = undulator_K(gap, und.period_mm, und.field_coeffs)
        return harmonic_energy_eV(k, und.period_mm, und.electron_energy_GeV,
                                  harmonic or und.harmonic)

    # ------------------------------------------------------------------ observing
    def load_positions(self, t: float | None = None) -> dict[str, float]:
        """Where every motor's mechanics are at machine time *t*, motor units."""
        t = self.now() if t is None else t
        return {n: a.load_position(t) for n, a in self.axes.items()}

    def snapshot(self) -> tuple[dict[str, float], DisturbanceState, int]:
        """What a trace needs, taken at one instant: positions, disturbances, frame number.

        Call it from the thread that moves the motors; pass the result to
        :meth:`observe`, which may run in a worker thread.
        """
        t = self.now()
        state = self.disturbance(t)
        if not self.shutter_open:
            state = replace(state, ring_current_mA=0.0)  # shutter closed: no photons
        self._frames += 1
        return self.load_positions(t), state, self._frames

    def observe(self, snapshot: tuple[dict[str, float], DisturbanceState, int],
                exposure_s: float, *, noise: bool | None = None) -> Observation:
        """Trace the beamline at *snapshot* (thread-safe; one trace at a time).

        Parameters
        ----------
        snapshot : tuple
            From :meth:`snapshot`.
        exposure_s : float
            Exposure, s: photon noise scales with it.
        noise : bool, optional
            Default: the machine's configuration.
        """
        positions, state, frame = snapshot
        noisy = self.config.noise if noise is None else noise
        with self._trace_lock:
            return self.twin.trace(positions, hidden=self.hidden, seed=self.config.seed,
                                   disturbance=state, noise=noisy, exposure_s=exposure_s,
                                   check_limits=False, noise_seed=self.config.seed + frame)
