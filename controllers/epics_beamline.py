"""The beamline over EPICS, behind the same protocol as the twin.

:class:`EpicsBeamline` implements :class:`~twin.protocol.MovableBeamline` over
Channel Access, so every agent runs over EPICS unchanged. It is the lowest
layer of the safety net (shared/RELIABILITY.md); :class:`agents.safety.SafeBeamline`
adds the per-run envelope, step cap and budget on top. On its own it holds:

* **names checked before the run**: every PV it will use connects within a
  bounded time, or it refuses to start and names the PVs that did not;
* **finite values first**, then the motor's soft limits as the IOC has them *now*:
  an axis without limits (``(0, 0)``, or low >= high) is refused, and limits
  changed since the run started abort the run before the next move;
* **a write allowlist**: the setpoint and STOP of the motors this run may move,
  and the detector's acquisition controls; nothing else leaves the client;
* **a timeout on every move**, from the distance and the motor's configured speed
  (not the IOC's, which may be wrong), after which STOP is written to every motor
  still moving and :class:`MoveTimeoutError` is raised;
* **a beam watchdog** (:mod:`controllers.watchdog`): an acquisition waits for the
  beam, and a frame during which the beam went away is discarded and taken again.

Every move is logged in :attr:`EpicsBeamline.move_log` (for the run's report).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.safety import EnvelopeError, SafetyError
from controllers.ca import Channels, DisconnectedError
from controllers.pvnames import INTENSITY_KINDS, PvMap
from controllers.watchdog import BeamWatchdog
from twin.errors import ConfigError, LimitError, NonFiniteError, UnknownNameError
from twin.observation import BeamStats, Observation, Reading
from twin.protocol import MotorInfo

log = logging.getLogger(__name__)

__all__ = ["EpicsConfig", "CONNECT_TIMEOUT_ENV", "default_connect_timeout", "EpicsBeamline",
           "MoveTimeoutError", "LimitsChangedError", "MOTOR_READ_FIELDS"]

#: motor-record fields read for every motor
MOTOR_READ_FIELDS = ("RBV", "DMOV", "LVIO", "HLM", "LLM", "DHLM", "DLLM", "EGU", "MRES", "VELO",
                     "ACCL")
_NAN = math.nan


class MoveTimeoutError(SafetyError, TimeoutError):
    """A move that did not finish in time; STOP was written to the motors still moving."""


class LimitsChangedError(SafetyError, RuntimeError):
    """A motor's soft limits changed during the run; the run stops before the next move."""


def default_connect_timeout() -> float:
    """The connect bound, s: ``BEAMTWIN_CONNECT_TIMEOUT_S`` if set, else 5."""
    raw = os.environ.get(CONNECT_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return 5.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{CONNECT_TIMEOUT_ENV} must be a finite number of seconds > 0, "
                          f"got {raw!r}")
    return value


#: environment variable that sets the default connect bound, s
CONNECT_TIMEOUT_ENV = "BEAMTWIN_CONNECT_TIMEOUT_S"


@dataclass(frozen=True, kw_only=True)
class EpicsConfig:
    """How the EPICS beamline talks to the machine.

    Parameters
    ----------
    connect_timeout_s : float
        Bounded wait for every PV to connect before the run starts: the longest
        time without a new PV connecting, s (the whole wait is at most 6x; see
        :meth:`controllers.ca.Channels.connect`). Default: the environment
        variable ``BEAMTWIN_CONNECT_TIMEOUT_S``, else 5 s.
    move_margin_s : float
        Slack on each move's timeout beyond its expected duration, s.
    move_factor : float
        The expected duration (distance / configured speed + acceleration) is
        multiplied by this before the margin is added.
    acquire_timeout_s : float
        Slack on an acquisition beyond its exposure, s.
    min_current_mA : float
        Ring current below which there is no beam, mA.
    max_suspend_s : float
        Longest wait for the beam before the run aborts, s.
    frame_retries : int
        Frames discarded for beam loss before the acquisition gives up.
    """

    connect_timeout_s: float = field(default_factory=lambda: default_connect_timeout())
    move_margin_s: float = 2.0
    move_factor: float = 2.0
    acquire_timeout_s: float = 60.0
    min_current_mA: float = 1.0
    max_suspend_s: float = 600.0
    frame_retries: int = 5

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "move_margin_s", "move_factor", "acquire_timeout_s",
                     "max_suspend_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not (math.isfinite(v) and v > 0):
                raise ConfigError(f"EpicsConfig.{name} must be a finite number > 0, got {v!r}")
        if not (math.isfinite(self.min_current_mA) and self.min_current_mA >= 0):
            raise ConfigError(f"EpicsConfig.min_current_mA must be >= 0, "
                              f"got {self.min_current_mA!r}")
        if isinstance(self.frame_retries, bool) or not isinstance(self.frame_retries, int) \
                or self.frame_retries < 0:
            raise ConfigError(f"EpicsConfig.frame_retries must be an integer >= 0, "
                              f"got {self.frame_retries!r}")


class EpicsBeamline:
    """A :class:`~twin.protocol.MovableBeamline` over EPICS Channel Access.

    Parameters
    ----------
    pvmap : PvMap
        The beamline description and its PV names.
    movable : sequence of str, optional
        Motors this client may move (default: every motor of the description);
        the others are read only.
    config : EpicsConfig, optional
    signals : sequence of str
        Scalar signals (:data:`controllers.pvnames.SIGNALS`, e.g. ``xrf``) to read with
        every observation, into ``observation.meta["signals"]``.

    Raises
    ------
    PvNotFoundError
        If any PV it needs does not connect (naming each).
    """

    def __init__(self, pvmap: PvMap, *, movable: Sequence[str] | None = None,
                 config: EpicsConfig | None = None, signals: Sequence[str] = ()) -> None:
        self.map = pvmap
        #: scalar signals read with every observation (``meta["signals"]``), by name -> PV
        self.signals = {n: pvmap.signal(n) for n in signals}
        self.desc = pvmap.desc
        self.config = config or EpicsConfig()
        names = list(self.desc.motors)
        movable = names if movable is None else list(movable)
        for m in movable:
            if m not in self.desc.motors:
                raise UnknownNameError(f"unknown motor {m!r}; known: {', '.join(names)}")
        self.movable = movable
        det = pvmap.device("detector")
        self._det = det
        allow = {pvmap.motor_field(m, f) for m in movable for f in ("VAL", "STOP")}
        allow |= {f"{det}cam1:{f}" for f in ("Acquire", "AcquireTime", "ImageMode",
                                            "TriggerMode")}
        self.ca = Channels(allow, timeout=self.config.connect_timeout_s)
        self.watchdog = BeamWatchdog(self.ca, pvmap.device("machine") or "",
                                     min_current_mA=self.config.min_current_mA)
        self.ca.connect(self.required_pvs(), self.config.connect_timeout_s)
        self.watchdog.start(self.config.connect_timeout_s)
        self._t0 = time.monotonic()
        self._limits0 = {m: self._limits(m) for m in names}
        self.moved: set[str] = set()
        #: move commands sent (a command that sent at least one setpoint)
        self.moves_sent = 0
        #: motors that did not get STOP because their IOC was lost
        self.stop_skipped: list[str] = []
        self.move_log: list[dict[str, Any]] = []
        self.frames_discarded = 0
        self.acquisitions = 0
        self._exposure: float | None = None
        self.ca.put(f"{det}cam1:ImageMode", "Single", wait=True)
        self.ca.put(f"{det}cam1:TriggerMode", "Internal", wait=True)

    # ------------------------------------------------------------------ names
    def required_pvs(self) -> list[str]:
        """Every PV this beamline reads or writes (checked at start)."""
        pvs = [self.map.motor_field(m, f) for m in self.desc.motors
               for f in (*MOTOR_READ_FIELDS, "VAL", "STOP")]
        for d in self.map.diagnostic_names:
            base = self.map.device(d)
            if base is not None:
                pvs += [f"{base}{f}" for f in self.map.diagnostic_fields(d)]
        det = self._det
        pvs += [f"{det}cam1:{f}" for f in ("Acquire", "AcquireTime", "ImageMode", "TriggerMode",
                                           "PixelSizeX_RBV", "ArraySizeX_RBV", "ArraySizeY_RBV")]
        pvs += [f"{det}Stats1:{f}" for f in ("Total_RBV", "CentroidX_RBV", "CentroidY_RBV",
                                             "FWHMX_RBV", "FWHMY_RBV", "SigmaX_RBV",
                                             "SigmaY_RBV", "UniqueId_RBV")]
        twin = self.map.device("twin")
        if twin is not None:
            pvs += [f"{twin}{f}" for f in ("PhotonEnergy_RBV", "Backend_RBV", "Rays_RBV")]
        return pvs + list(self.signals.values())

    # ------------------------------------------------------------------ protocol
    def motors(self) -> dict[str, MotorInfo]:
        """Every motor with the soft limits the IOC has now (user coordinates).

        An axis without usable limits (see :meth:`limit_problem`) reports NaN
        limits, which the safety layer refuses.
        """
        out = {}
        for m in self.desc.motors:
            spec = self.desc.motor(m)
            lo, hi, problem = self._limit_state(m)
            if problem:
                lo, hi = _NAN, _NAN
            out[m] = MotorInfo(m, spec.units, lo, hi,
                               float(self.ca.get(self.map.motor_field(m, "MRES"))),
                               float(self.ca.get(self.map.motor_field(m, "VELO"))),
                               spec.description)
        return out

    def positions(self) -> dict[str, float]:
        """Readback of every motor, motor units (fresh from the IOC)."""
        return self.readbacks(self.desc.motors)

    def readbacks(self, names: Iterable[str]) -> dict[str, float]:
        """Readbacks of *names* only, motor units (one CA get each, fresh from the IOC)."""
        return {m: self.ca.get_float(self.map.motor_field(m, "RBV"), fresh=True) for m in names}

    @property
    def time_s(self) -> float:
        """Beamline time since this client connected (wall clock), s."""
        return time.monotonic() - self._t0

    def move(self, targets: Mapping[str, float]) -> None:
        """Move to absolute *targets* (motor units) and wait; nothing moves on a refusal.

        Raises
        ------
        UnknownNameError, NonFiniteError, EnvelopeError, LimitsChangedError
            Before anything moves.
        MoveTimeoutError
            The move did not finish in time; STOP was written.
        LimitError
            The IOC refused a setpoint (LVIO).
        """
        targets = dict(targets)
        for name, value in targets.items():
            if name not in self.desc.motors:
                raise UnknownNameError(f"unknown motor {name!r}; known: "
                                       f"{', '.join(self.desc.motors)}")
            if name not in self.movable:
                raise EnvelopeError(f"{name}: this client may not move it; movable: "
                                    f"{', '.join(self.movable)}")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or \
                    not math.isfinite(value):
                raise NonFiniteError(f"{name}: target {value!r} is not a finite number")
        for name, value in targets.items():
            lo, hi, problem = self._limit_state(name)
            if (lo, hi) != self._limits0[name]:
                raise LimitsChangedError(
                    f"{name}: soft limits changed during the run from {self._limits0[name]} "
                    f"to {(lo, hi)}; the run stops before the next move")
            if problem:
                raise EnvelopeError(f"{name}: {problem}; the axis cannot be moved by beamtwin")
            if not lo <= float(value) <= hi:
                raise EnvelopeError(f"{name}: target {value!r} is outside the soft limits "
                                    f"[{lo}, {hi}]")
        if not targets:
            return
        here = self.readbacks(targets)
        timeout = max(self._move_time(n, here[n], float(v)) for n, v in targets.items())
        t0 = time.monotonic()
        sent: list[str] = []
        try:
            for name, value in targets.items():
                self.ca.put(self.map.motor_field(name, "VAL"), float(value), use_complete=True)
                if not sent:
                    self.moves_sent += 1
                sent.append(name)
                self.moved.add(name)
            self._wait_done(sent, t0 + timeout, timeout)
        except BaseException:
            self.stop(sent)
            raise
        refused = [n for n in sent if int(self.ca.get(self.map.motor_field(n, "LVIO"),
                                                      fresh=True)) == 1]
        after = self.readbacks(targets)
        self.move_log.append({"t": round(self.time_s, 4), "targets": targets,
                              "readbacks": after,
                              "duration_s": round(time.monotonic() - t0, 4),
                              "refused": refused})
        if refused:
            raise LimitError(f"the IOC refused the setpoint of {', '.join(refused)} (LVIO)")

    def acquire(self, exposure_s: float | None = None) -> Observation:
        """Take one frame (and the diagnostics of the same trace), with beam.

        Waits for the beam (the watchdog); a frame during which the beam went
        away is discarded and taken again.
        """
        det = self._det
        if exposure_s is not None:
            if isinstance(exposure_s, bool) or not isinstance(exposure_s, (int, float)) or \
                    not (math.isfinite(exposure_s) and exposure_s > 0):
                raise ConfigError(f"exposure must be a finite number > 0 s, got {exposure_s!r}")
            if exposure_s != self._exposure:
                self.ca.put(f"{det}cam1:AcquireTime", float(exposure_s), wait=True)
                self._exposure = float(exposure_s)
        for _ in range(self.config.frame_retries + 1):
            self.watchdog.wait_for_beam(self.config.max_suspend_s)
            losses = self.watchdog.losses
            exposure = self.ca.get_float(f"{det}cam1:AcquireTime")
            self.ca.put(f"{det}cam1:Acquire", 1, wait=True,
                        timeout=exposure + self.config.acquire_timeout_s)
            obs = self._read_observation(exposure)
            if self.watchdog.losses == losses and self.watchdog.beam_ok:
                self.acquisitions += 1
                return obs
            self.frames_discarded += 1
        raise DisconnectedError(f"{self.config.frame_retries + 1} frames in a row lost the "
                                f"beam while exposing; the acquisition gives up")

    # ------------------------------------------------------------------ extras
    def stop(self, names: Sequence[str] | None = None) -> list[str]:
        """Write STOP to *names* (default: every motor moved in this run); returns
        those that got it.

        Keeps going past a motor that fails, then raises the first error. A motor
        whose IOC was lost gets no STOP (nothing is written to a lost or restarted
        server; :class:`~controllers.ca.Channels`): it is listed in
        :attr:`stop_skipped`, logged on one line, and is not an error here.
        """
        names = sorted(self.moved) if names is None else list(names)
        first: BaseException | None = None
        stopped, skipped, why = [], [], ""
        for n in names:
            pv = self.map.motor_field(n, "STOP")
            lost = self.ca.lost(pv)
            if lost is not None:
                if n not in self.stop_skipped:
                    self.stop_skipped.append(n)
                    skipped.append(n)
                    why = lost
                continue
            try:
                self.ca.put(pv, 1)
                stopped.append(n)
            except Exception as exc:  # noqa: BLE001 - stop the others first
                first = first or exc
        if skipped:
            log.warning("no STOP written to %s: %s", ", ".join(skipped), why)
        if first is not None:
            raise first
        return stopped

    def image(self, name: str) -> np.ndarray | None:
        """The last image of camera *name* (photon counts, row 0 at the top), or None."""
        pv = self.map.image(name)
        if pv is None:
            return None
        base = self.map.device(name)
        nx = int(self.ca.get(f"{base}image:ArraySize0_RBV"))
        ny = int(self.ca.get(f"{base}image:ArraySize1_RBV"))
        data = np.asarray(self.ca.get(pv, fresh=True, timeout=10.0), dtype=float)
        return data[:nx * ny].reshape(ny, nx)

    def close(self) -> None:
        """Drop the CA monitors."""
        self.ca.close()

    # ------------------------------------------------------------------ internals
    def limit_problem(self, name: str) -> str | None:
        """Why motor *name*'s soft limits are unusable, or None if they are fine.

        ``DLLM == DHLM == 0`` means "no limits" in the motor record; a dial low
        limit at or above the high one leaves no range.
        """
        return self._limit_state(name)[2]

    def _limit_state(self, name: str) -> tuple[float, float, str | None]:
        """User limits (LLM, HLM) and why they are unusable, or None (one read of each)."""
        lo, hi = self._limits(name)
        dlo = self.ca.get_float(self.map.motor_field(name, "DLLM"), fresh=True)
        dhi = self.ca.get_float(self.map.motor_field(name, "DHLM"), fresh=True)
        problem = None
        if not all(math.isfinite(v) for v in (dlo, dhi, lo, hi)):
            problem = f"soft limits are not finite (dial {dlo}, {dhi}; user {lo}, {hi})"
        elif dlo == 0 and dhi == 0:
            problem = "no soft limits (DLLM = DHLM = 0)"
        elif dlo >= dhi or lo >= hi:
            problem = f"low limit {dlo} >= high limit {dhi} (dial), no range"
        return lo, hi, problem

    def _limits(self, name: str) -> tuple[float, float]:
        # fresh from the IOC: a monitor update may still be on its way
        return (self.ca.get_float(self.map.motor_field(name, "LLM"), fresh=True),
                self.ca.get_float(self.map.motor_field(name, "HLM"), fresh=True))

    def _move_time(self, name: str, here: float, target: float) -> float:
        spec = self.desc.motor(name)
        accel = float(self.ca.get(self.map.motor_field(name, "ACCL")))
        accel = min(accel, 5.0) if math.isfinite(accel) and accel > 0 else 0.0
        expected = abs(target - here) / spec.speed + 2 * accel
        backlash = abs(getattr(spec, "backlash", 0.0) or 0.0) / spec.speed
        return self.config.move_factor * (expected + backlash) + self.config.move_margin_s

    def _wait_done(self, names: list[str], deadline: float, timeout: float) -> None:
        dmov = [self.map.motor_field(n, "DMOV") for n in names]
        val = [self.map.motor_field(n, "VAL") for n in names]
        while True:
            lost = [(n, why) for n, v in zip(names, val, strict=True)
                    if (why := self.ca.lost(v)) is not None]
            if lost:
                self.stop(names)  # the motors of servers still there; none to a lost one
                raise DisconnectedError(f"IOC lost during the move of "
                                        f"{', '.join(n for n, _ in lost)}: {lost[0][1]}")
            done = all(self.ca.put_complete(v) for v in val)
            if done and all(int(self.ca.get(d)) == 1 for d in dmov):
                return
            if time.monotonic() > deadline:
                moving = [n for n, d in zip(names, dmov, strict=True)
                          if int(self.ca.get(d)) != 1]
                moving = moving or names
                self.stop(moving)
                raise MoveTimeoutError(f"move of {', '.join(moving)} did not finish within "
                                       f"{timeout:.1f} s; STOP written")
            time.sleep(0.005)

    def _read_observation(self, exposure_s: float) -> Observation:
        ca, det = self.ca, self._det
        readings: dict[str, Reading] = {}
        for d in self.map.diagnostic_names:
            base = self.map.device(d)
            if base is None:
                continue
            flux = ca.get_float(f"{base}Intensity_RBV", fresh=True)
            if self.map.diagnostic_kind(d) in INTENSITY_KINDS:
                stats = BeamStats(flux)
            else:
                v = [ca.get_float(f"{base}{f}", fresh=True)
                     for f in ("PosX_RBV", "PosY_RBV", "FWHMX_RBV", "FWHMY_RBV")]
                stats = BeamStats(flux, v[0], v[1], v[2], v[3])
            readings[d] = Reading(d, self.map.diagnostic_kind(d), stats)
        pix = ca.get_float(f"{det}cam1:PixelSizeX_RBV")
        nx, ny = int(ca.get(f"{det}cam1:ArraySizeX_RBV")), int(ca.get(f"{det}cam1:ArraySizeY_RBV"))
        s = {f: ca.get_float(f"{det}Stats1:{f}_RBV", fresh=True)
             for f in ("Total", "CentroidX", "CentroidY", "FWHMX", "FWHMY", "SigmaX", "SigmaY")}
        det_stats = BeamStats(s["Total"] / exposure_s,
                              (s["CentroidX"] - (nx - 1) / 2) * pix,
                              ((ny - 1) / 2 - s["CentroidY"]) * pix,
                              s["FWHMX"] * pix, s["FWHMY"] * pix,
                              s["SigmaX"] * pix, s["SigmaY"] * pix)
        detector = Reading(self.desc.detector.name, "detector", det_stats)
        twin = self.map.device("twin")
        energy, backend, rays = _NAN, "epics", 0
        if twin is not None:
            energy = ca.get_float(f"{twin}PhotonEnergy_RBV")
            backend = f"epics/{ca.get(f'{twin}Backend_RBV', as_string=True)}"
            rays = int(ca.get(f"{twin}Rays_RBV"))
        current = ca.get_float(self.watchdog.current_pv)
        signals = {n: ca.get_float(pv, fresh=True) for n, pv in self.signals.items()}
        return Observation(detector=detector, diagnostics=readings, positions=self.positions(),
                           energy_eV=energy, ring_current_mA=current, backend=backend,
                           rays=rays, seed=0,
                           meta={"frame": int(ca.get(f"{det}Stats1:UniqueId_RBV", fresh=True)),
                                 "exposure_s": exposure_s, "time_s": self.time_s,
                                 "signals": signals})
