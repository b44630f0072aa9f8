"""bluesky devices over any movable, observable beamline, for scans.

A scan moves motors and reads detectors through these devices, whether the
beamline is the twin in-process (:class:`twin.simulator.TwinBeamline`) or a
machine over EPICS (:class:`controllers.epics_beamline.EpicsBeamline`): both
implement :class:`twin.protocol.MovableBeamline`, and :class:`ScanBeamline`
puts the safety layer (:class:`agents.safety.SafeBeamline`) in front of either.

* :class:`Axis`: one motor, a bluesky ``Movable`` and ``Readable`` (its readback);
* :class:`EnergyAxis`: the photon energy, a pseudo-axis that moves the
  monochromator and makes the undulator gap follow it;
* :class:`BeamDetector`: one acquisition of every diagnostic per ``trigger()``,
  and, with a :class:`~twin.specimen.Specimen`, the signal of the specimen
  under the focus (``xrf``);
* :func:`grouped_step`: a ``per_step`` that moves every axis of a scan point
  in one move of the beamline (they travel together, as a multi-axis move does).

Each ``set()`` runs in a worker thread and returns an ophyd ``Status``, so the
RunEngine stays responsive (pause, Ctrl-C) during a move; a lock serialises
access to the beamline.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from bluesky import plan_stubs as bps
from bluesky.utils import Msg
from ophyd.status import Status

from agents.safety import EnvelopeError, SafeBeamline, SafetyConfig
from controllers.plans import in_thread
from twin.description import BeamlineDescription, CrystalMonochromator, Undulator
from twin.errors import ConfigError, NonFiniteError, UnknownNameError
from twin.observation import Observation
from twin.protocol import MovableBeamline
from twin.specimen import Specimen

__all__ = ["ScanBeamline", "Axis", "EnergyAxis", "BeamDetector", "GroupMover", "grouped_step",
           "move_together",
           "STAT_FIELDS", "field_name"]

#: per diagnostic, the fields a BeamDetector reads: (suffix, BeamStats attribute, units)
STAT_FIELDS = (("flux", "flux", "ph/s"), ("x_um", "centroid_x_um", "um"),
               ("y_um", "centroid_y_um", "um"), ("fwhm_x_um", "fwhm_x_um", "um"),
               ("fwhm_y_um", "fwhm_y_um", "um"))


def field_name(motor: str) -> str:
    """The event key of motor *motor* (``kb_v.pitch`` -> ``kb_v_pitch``)."""
    return motor.replace(".", "_")


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and \
        math.isfinite(value)


class ScanBeamline:
    """A beamline for scans: the safety layer over it, and one lock.

    Parameters
    ----------
    beamline : MovableBeamline
        The twin in-process, or EPICS.
    desc : BeamlineDescription
    movable : sequence of str
        Motors scans may move (the allowlist); the others are read only.
    safety : SafetyConfig, optional
        Default: a planned scan's whole trajectory is checked before the first
        move, so one move may cross the whole envelope (``step_cap=1``); the move
        budget and time limit apply.
    envelope : mapping of str to (float, float), optional
        Range each movable motor may visit, motor units (intersected with its
        soft limits; default: the soft limits).
    exposure_s : float, optional
        Exposure per acquisition (default: the beamline's).
    """

    def __init__(self, beamline: MovableBeamline, desc: BeamlineDescription, *,
                 movable: Sequence[str], safety: SafetyConfig | None = None,
                 envelope: Mapping[str, tuple[float, float]] | None = None,
                 exposure_s: float | None = None) -> None:
        infos = beamline.motors()
        env: dict[str, tuple[float, float]] = {}
        for m in movable:
            if m not in infos:
                raise UnknownNameError(f"unknown motor {m!r}; known: {', '.join(infos)}")
            lo, hi = (envelope or {}).get(m, (infos[m].low, infos[m].high))
            env[m] = (lo, hi)
        self.inner, self.desc = beamline, desc
        self.safe = SafeBeamline(beamline, env, safety or SafetyConfig(step_cap=1.0,
                                                                       max_moves=100_000))
        self.exposure_s = exposure_s
        self.lock = threading.RLock()

    def envelope(self, motor: str) -> tuple[float, float]:
        """The range *motor* may visit, or raise naming the allowed motors."""
        try:
            return self.safe.envelope(motor)
        except KeyError:
            raise UnknownNameError(f"motor {motor!r} may not be moved by this scan; movable: "
                                   f"{', '.join(self.safe.motors())}") from None

    def check(self, targets: Mapping[str, Any]) -> None:
        """Refuse what :meth:`move` would refuse (allowlist, finite, envelope); move nothing."""
        for m, v in targets.items():
            lo, hi = self.envelope(m)
            if not _finite(v):
                raise NonFiniteError(f"{m}: target {v!r} is not a finite number")
            if not lo <= v <= hi:
                raise EnvelopeError(f"{m}: target {v!r} is outside the envelope [{lo}, {hi}]")

    def move(self, targets: Mapping[str, float]) -> None:
        """Move through the safety layer (and wait)."""
        with self.lock:
            self.safe.move(dict(targets))

    def acquire(self) -> Observation:
        """One acquisition of every diagnostic."""
        with self.lock:
            return self.safe.acquire(self.exposure_s)

    def positions(self) -> dict[str, float]:
        """Readbacks of every motor, motor units."""
        with self.lock:
            return self.inner.positions()

    def position(self, motor: str) -> float:
        """Readback of one motor, motor units (over EPICS one CA get, not one per motor)."""
        one = getattr(self.inner, "readbacks", None)
        with self.lock:
            return float(one([motor])[motor]) if callable(one) else \
                self.inner.positions()[motor]

    def stop(self) -> None:
        """Stop every axis moved (over EPICS: STOP to each; the twin has nothing in flight)."""
        stop = getattr(self.inner, "stop", None)
        if callable(stop):
            stop()

    @property
    def refusals(self) -> list[dict[str, object]]:
        """Every move the safety layer refused in this scan."""
        return self.safe.refusals

    @property
    def time_s(self) -> float:
        """Beamline time so far, s."""
        return self.inner.time_s


def _threaded(obj: Any, fn: Callable[[], None]) -> Status:
    return in_thread(obj, fn, obj.errors, obj.name)


class Axis:
    """One motor as a bluesky ``Movable``/``Readable`` (through the safety layer).

    Parameters
    ----------
    beamline : ScanBeamline
    motor : str
        ``element.axis``.
    """

    def __init__(self, beamline: ScanBeamline, motor: str) -> None:
        if motor not in beamline.desc.motors:
            raise UnknownNameError(f"unknown motor {motor!r}; known: "
                                   f"{', '.join(beamline.desc.motors)}")
        self.beamline, self.motor = beamline, motor
        self.name, self.parent = field_name(motor), None
        self.units = beamline.desc.motor(motor).units
        self.errors: list[BaseException] = []

    @property
    def hints(self) -> dict[str, list[str]]:  # noqa: D102
        return {"fields": [self.name]}

    @property
    def position(self) -> float:
        """Readback, motor units."""
        return self.beamline.position(self.motor)

    @property
    def limits(self) -> tuple[float, float]:
        """The envelope (soft limits intersected with the configured one)."""
        return self.beamline.envelope(self.motor)

    def check_value(self, value: Any) -> None:
        """Raise as a move to *value* would (bluesky's ``check_limits`` calls this)."""
        self.beamline.check({self.motor: value})

    def set(self, value: float) -> Status:  # noqa: D102
        self.check_value(value)  # refused here, before any thread or move
        return _threaded(self, lambda: self.beamline.move({self.motor: value}))

    def stop(self, *, success: bool = False) -> None:  # noqa: D102
        self.beamline.stop()

    def read(self) -> dict[str, dict[str, Any]]:  # noqa: D102
        return {self.name: {"value": self.position, "timestamp": time.time()}}

    def describe(self) -> dict[str, dict[str, Any]]:  # noqa: D102
        lo, hi = self.limits
        return {self.name: {"source": f"beamtwin:{self.motor}", "dtype": "number", "shape": [],
                            "units": self.units, "lower_ctrl_limit": lo,
                            "upper_ctrl_limit": hi}}

    def read_configuration(self) -> dict[str, Any]:  # noqa: D102
        return {}

    def describe_configuration(self) -> dict[str, Any]:  # noqa: D102
        return {}


class EnergyAxis(Axis):
    """The photon energy (eV): the monochromator's Bragg angle and crystal gap, with the
    undulator gap following, moved together.

    Targets come from :func:`twin.presets.at_energy` (the design relations, with
    the preset's own gap correction carried over).
    """

    def __init__(self, beamline: ScanBeamline) -> None:
        desc = beamline.desc
        mono = next((e for e in desc.elements if isinstance(e, CrystalMonochromator)), None)
        if mono is None:
            raise ConfigError("an energy scan needs a crystal monochromator; this beamline "
                              "has none")
        und = next((e for e in desc.elements if isinstance(e, Undulator)), None)
        self.mono, self.undulator = mono, und
        self.motors = [f"{mono.name}.{a}" for a in ("bragg", "perp")
                       if mono.motor(a) is not None]
        if und is not None and und.motor("gap") is not None:
            self.motors.append(f"{und.name}.gap")
        self.beamline, self.motor = beamline, "energy"
        self.name, self.parent, self.units = "energy", None, "eV"
        self.errors = []

    def targets(self, energy_eV: Any) -> dict[str, float]:
        """Motor targets (motor units) for *energy_eV*; raise naming the energy if unreachable."""
        from twin.presets import at_energy

        if not _finite(energy_eV) or energy_eV <= 0:
            raise NonFiniteError(f"energy: {energy_eV!r} is not a finite energy > 0 eV")
        try:
            d = at_energy(self.beamline.desc, float(energy_eV))
        except ConfigError as exc:
            raise EnvelopeError(f"energy: {energy_eV!r} eV is not reachable: {exc}") from None
        return {m: d.motor(m).position for m in self.motors}

    @property
    def position(self) -> float:
        """The energy the monochromator selects now, eV."""
        from twin.physics import crystal_d_spacing_A, energy_from_bragg_eV
        from twin.units import to_internal

        spec = self.mono.motor("bragg")
        theta = to_internal(self.beamline.position(f"{self.mono.name}.bragg"), spec.units)
        d = crystal_d_spacing_A(self.mono.crystal, self.mono.temperature_K)
        return energy_from_bragg_eV(theta, d)

    @property
    def limits(self) -> tuple[float, float]:
        """Energies the Bragg axis' envelope allows, eV (the gap may narrow them)."""
        from twin.physics import crystal_d_spacing_A, energy_from_bragg_eV
        from twin.units import to_internal

        spec = self.mono.motor("bragg")
        lo, hi = self.beamline.envelope(f"{self.mono.name}.bragg")
        d = crystal_d_spacing_A(self.mono.crystal, self.mono.temperature_K)
        e = sorted(energy_from_bragg_eV(to_internal(v, spec.units), d) for v in (lo, hi))
        return e[0], e[1]

    def check_value(self, value: Any) -> None:  # noqa: D102
        self.beamline.check(self.targets(value))

    def set(self, value: float) -> Status:  # noqa: D102
        targets = self.targets(value)
        self.beamline.check(targets)
        return _threaded(self, lambda: self.beamline.move(targets))

    def describe(self) -> dict[str, dict[str, Any]]:  # noqa: D102
        lo, hi = self.limits
        return {"energy": {"source": "beamtwin:energy (" + ", ".join(self.motors) + ")",
                           "dtype": "number", "shape": [], "units": "eV",
                           "lower_ctrl_limit": lo, "upper_ctrl_limit": hi}}


class GroupMover:
    """Every axis of a scan point in one move (a ``Movable`` taking ``{motor: target}``)."""

    def __init__(self, beamline: ScanBeamline) -> None:
        self.beamline, self.name, self.parent = beamline, "scan_axes", None
        self.errors: list[BaseException] = []

    def set(self, targets: Mapping[str, float]) -> Status:  # noqa: D102
        self.beamline.check(targets)
        return _threaded(self, lambda: self.beamline.move(targets))

    def stop(self, *, success: bool = False) -> None:  # noqa: D102
        self.beamline.stop()


class BeamDetector:
    """Every diagnostic of the beamline, read from one acquisition per ``trigger()``.

    Fields are ``{diagnostic}_{flux|x_um|y_um|fwhm_x_um|fwhm_y_um}`` for every
    diagnostic and the detector, every scalar signal the beamline measures
    (*signals*, e.g. ``xrf`` from a fluorescence detector's PV over EPICS), and
    ``xrf`` (photons per exposure) when a simulated specimen is mounted in-process:
    the specimen under the focus the ``sample`` diagnostic sees.

    Parameters
    ----------
    beamline : ScanBeamline
    signal : str
        The hinted field (what a scan plots and analyses).
    specimen : Specimen, optional
    signals : sequence of str
        Scalar signals the beamline reports in ``observation.meta["signals"]``.
    name : str
    """

    def __init__(self, beamline: ScanBeamline, signal: str, *,
                 specimen: Specimen | None = None, signals: Sequence[str] = (),
                 name: str = "beam") -> None:
        self.beamline, self.specimen = beamline, specimen
        #: scalar signals the beamline itself measures (``meta["signals"]``, over EPICS)
        self.signals = list(signals)
        self.name, self.parent = name, None
        self.errors: list[BaseException] = []
        self.last: Observation | None = None
        desc = beamline.desc
        self.diagnostics = [d.name for d in desc.diagnostics] + [desc.detector.name]
        self._sample = next((d.name for d in desc.diagnostics if d.kind == "sample"), None)
        fields = self.fields()
        if signal not in fields:
            raise UnknownNameError(f"signal {signal!r} is not a field of the beamline's "
                                   f"detectors; choose one of: {', '.join(fields)}")
        self.signal = signal

    def fields(self) -> list[str]:
        """Every field :meth:`read` gives."""
        out = [f"{d}_{k}" for d in self.diagnostics for k, _, _ in STAT_FIELDS]
        out += self.signals
        if "xrf" not in out and self.specimen is not None and self._sample is not None:
            out.append("xrf")
        return out

    @property
    def hints(self) -> dict[str, list[str]]:  # noqa: D102
        return {"fields": [self.signal]}

    def trigger(self) -> Status:  # noqa: D102
        def acquire() -> None:
            self.last = self.beamline.acquire()

        return _threaded(self, acquire)

    def values(self, obs: Observation) -> dict[str, float]:
        """The fields of one observation."""
        out: dict[str, float] = {}
        for d in self.diagnostics:
            s = obs.detector.stats if d == obs.detector.name else (
                obs.diagnostics[d].stats if d in obs.diagnostics else None)
            for key, attr, _ in STAT_FIELDS:
                out[f"{d}_{key}"] = float(getattr(s, attr)) if s is not None else math.nan
        measured = obs.meta.get("signals", {})
        for n in self.signals:
            out[n] = float(measured.get(n, math.nan))
        if "xrf" in self.fields() and "xrf" not in self.signals:
            s = obs.diagnostics[self._sample].stats if self._sample in obs.diagnostics else None
            exposure = float(obs.meta.get("exposure_s", self.beamline.exposure_s or 1.0))
            out["xrf"] = 0.0 if s is None else self.specimen.counts(  # type: ignore[union-attr]
                s.flux, s.centroid_x_um, s.centroid_y_um, s.fwhm_x_um, s.fwhm_y_um, exposure)
        return out

    def read(self) -> dict[str, dict[str, Any]]:  # noqa: D102
        if self.last is None:
            return {}
        now = time.time()
        return {k: {"value": v, "timestamp": now} for k, v in self.values(self.last).items()}

    def describe(self) -> dict[str, dict[str, Any]]:  # noqa: D102
        units = {f"{d}_{k}": u for d in self.diagnostics for k, _, u in STAT_FIELDS}
        units["xrf"] = "photons"
        return {k: {"source": f"beamtwin:{k}", "dtype": "number", "shape": [],
                    "units": units[k]} for k in self.fields()}

    def read_configuration(self) -> dict[str, Any]:  # noqa: D102
        return {}

    def describe_configuration(self) -> dict[str, Any]:  # noqa: D102
        return {}


def move_together(targets: Mapping[Any, float]) -> Generator[Msg, Any, None]:
    """A plan stub: move *targets* (``{device: position}``) and wait. Axes of one
    :class:`ScanBeamline` travel in one move of the beamline; other devices (ophyd motors)
    are set together as ``bps.mv`` does."""
    motors = list(targets)
    beamlines = {id(m.beamline) for m in motors if type(m) is Axis}
    if len(beamlines) != 1 or any(type(m) is not Axis for m in motors):
        args: list[Any] = []
        for m, v in targets.items():
            args += [m, v]
        yield from bps.mv(*args)
        return
    bl = motors[0].beamline
    mover = getattr(bl, "_group_mover", None)
    if mover is None:
        mover = bl._group_mover = GroupMover(bl)
    yield Msg("set", mover, {m.motor: float(v) for m, v in targets.items()},
              group="beamtwin-step")
    yield Msg("wait", None, group="beamtwin-step")


def grouped_step(detectors: Sequence[Any], step: Mapping[Any, float],
                 pos_cache: dict[Any, float], take_reading: Any = None
                 ) -> Generator[Msg, Any, None]:
    """A bluesky ``per_step``: the point's axes move together in one move of the beamline.

    Falls back to bluesky's ``one_nd_step`` when the motors are not all
    :class:`Axis` devices of one :class:`ScanBeamline` (e.g. ophyd motors in a
    user's own session).
    """
    motors = list(step)
    beamlines = {id(m.beamline) for m in motors if type(m) is Axis}
    if len(beamlines) != 1 or any(type(m) is not Axis for m in motors):
        return (yield from bps.one_nd_step(detectors, step, pos_cache,
                                           take_reading=take_reading))
    yield Msg("checkpoint")
    changed = {m: v for m, v in step.items() if pos_cache.get(m) != v}
    if changed:
        yield from move_together(changed)
    for m, v in step.items():
        pos_cache[m] = v
    reading = take_reading or bps.trigger_and_read
    yield from reading(list(detectors) + motors)
