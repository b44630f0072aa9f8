"""ophyd Devices of the whole beamline, generated from its description and PV names.

:func:`make_devices` gives, for a :class:`~controllers.pvnames.PvMap`:

* a :class:`SafeEpicsMotor` for every axis (ophyd's ``EpicsMotor`` with the
  safety layer's checks: finite values, refusal of an axis without limits, an
  optional envelope, a timeout on every move and STOP when it runs out);
* the undulator (energy readback, harmonic), the machine status (ring current,
  shutter, beam available);
* every diagnostic (intensity, and position and size where it measures them);
* the area detector: ``trigger()`` takes one frame, ``read()`` gives its
  statistics.

They work in a user's own bluesky session, e.g.
``RE(scan([devs.detector], devs.motors["kb_v.pitch"], -5, 5, 11))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd.status import Status

from agents.safety import EnvelopeError
from controllers.pvnames import INTENSITY_KINDS, PvMap
from twin.errors import NonFiniteError

__all__ = ["SafeEpicsMotor", "MachineStatus", "Undulator", "IntensityMonitor",
           "PositionMonitor", "AreaDetector", "BeamlineDevices", "make_devices"]


class SafeEpicsMotor(EpicsMotor):
    """``EpicsMotor`` that refuses what the motor record lets through.

    ophyd compares a target with the limits using ``<``/``>`` (NaN passes), treats
    limits ``(0, 0)`` as none, and waits for a move forever. This motor refuses
    non-finite targets and axes without limits, keeps to an optional
    :attr:`envelope`, and gives every move a timeout (distance over speed, times
    :attr:`timeout_factor`, plus :attr:`timeout_margin_s`); on timeout it stops.
    """

    envelope: tuple[float, float] | None = None
    timeout_factor: float = 2.0
    timeout_margin_s: float = 2.0

    def check_value(self, pos: Any) -> None:  # noqa: D102
        if isinstance(pos, bool) or not isinstance(pos, (int, float)) or not math.isfinite(pos):
            raise NonFiniteError(f"{self.name}: target {pos!r} is not a finite number")
        lo, hi = self.limits
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise EnvelopeError(f"{self.name}: the motor has no usable soft limits ({lo}, {hi}); "
                                f"it cannot be moved")
        if self.envelope is not None:
            elo, ehi = max(lo, self.envelope[0]), min(hi, self.envelope[1])
            if not elo <= pos <= ehi:
                raise EnvelopeError(f"{self.name}: target {pos!r} is outside the envelope "
                                    f"[{elo}, {ehi}]")
        if not lo <= pos <= hi:
            raise EnvelopeError(f"{self.name}: target {pos!r} is outside the soft limits "
                                f"[{lo}, {hi}]")
        super().check_value(pos)

    def move(self, position: float, wait: bool = True, **kwargs: Any) -> Any:  # noqa: D102
        self.check_value(position)
        if kwargs.get("timeout") is None:
            velo = float(self.velocity.get())
            here = float(self.user_readback.get())
            dist = abs(float(position) - here) if math.isfinite(float(position)) else 0.0
            accel = float(self.acceleration.get())
            t = dist / velo + 2 * accel if velo > 0 else 60.0
            kwargs["timeout"] = self.timeout_factor * t + self.timeout_margin_s
        status = super().move(position, wait=False, **kwargs)

        def stop_unless_done(st: Any) -> None:
            if not st.success:
                self.stop()

        status.add_callback(stop_unless_done)
        if wait:
            status.wait()
        return status


class MachineStatus(Device):
    """Ring current, front-end shutter and beam-available flag."""

    current = Cpt(EpicsSignalRO, "RingCurrent_RBV", kind="hinted")
    shutter = Cpt(EpicsSignal, "Shutter_RBV", write_pv="Shutter", string=True, kind="config")
    available = Cpt(EpicsSignalRO, "BeamAvailable_RBV", string=True, kind="normal")


class Undulator(Device):
    """Undulator energy readback and harmonic (the gap is a motor)."""

    energy = Cpt(EpicsSignalRO, "Energy_RBV", kind="hinted")
    harmonic = Cpt(EpicsSignal, "Harmonic_RBV", write_pv="Harmonic", kind="config")


class IntensityMonitor(Device):
    """A diagnostic that measures intensity (an ion chamber)."""

    intensity = Cpt(EpicsSignalRO, "Intensity_RBV", kind="hinted")
    unique_id = Cpt(EpicsSignalRO, "UniqueId_RBV", kind="omitted")


class PositionMonitor(IntensityMonitor):
    """A BPM, screen or camera: intensity, centroid and FWHM (um)."""

    pos_x = Cpt(EpicsSignalRO, "PosX_RBV", kind="hinted")
    pos_y = Cpt(EpicsSignalRO, "PosY_RBV", kind="hinted")
    fwhm_x = Cpt(EpicsSignalRO, "FWHMX_RBV", kind="normal")
    fwhm_y = Cpt(EpicsSignalRO, "FWHMY_RBV", kind="normal")


class AreaDetector(Device):
    """The area detector: cam1 controls and Stats1 statistics (pixels).

    ``trigger()`` takes one frame in Single mode; the Status completes when the
    IOC's put-completion on ``cam1:Acquire`` comes back (frame analysed).
    """

    acquire = Cpt(EpicsSignal, "cam1:Acquire", put_complete=True, kind="omitted")
    acquire_time = Cpt(EpicsSignal, "cam1:AcquireTime_RBV", write_pv="cam1:AcquireTime",
                       kind="config")
    image_mode = Cpt(EpicsSignal, "cam1:ImageMode_RBV", write_pv="cam1:ImageMode", string=True,
                     kind="config")
    total = Cpt(EpicsSignalRO, "Stats1:Total_RBV", kind="hinted")
    max_value = Cpt(EpicsSignalRO, "Stats1:MaxValue_RBV", kind="normal")
    centroid_x = Cpt(EpicsSignalRO, "Stats1:CentroidX_RBV", kind="normal")
    centroid_y = Cpt(EpicsSignalRO, "Stats1:CentroidY_RBV", kind="normal")
    fwhm_x = Cpt(EpicsSignalRO, "Stats1:FWHMX_RBV", kind="normal")
    fwhm_y = Cpt(EpicsSignalRO, "Stats1:FWHMY_RBV", kind="normal")
    unique_id = Cpt(EpicsSignalRO, "Stats1:UniqueId_RBV", kind="normal")

    def stage(self) -> list[Any]:  # noqa: D102
        self.image_mode.set("Single").wait(10)
        return super().stage()

    def trigger(self) -> Status:  # noqa: D102
        return self.acquire.set(1, timeout=float(self.acquire_time.get()) + 60.0)


@dataclass
class BeamlineDevices:
    """Every ophyd device of a beamline, by role."""

    motors: dict[str, SafeEpicsMotor]
    machine: MachineStatus
    undulator: Undulator | None
    diagnostics: dict[str, IntensityMonitor]
    detector: AreaDetector

    def all(self) -> list[Device]:
        """Every device (for ``wait_for_connection`` or a baseline)."""
        out: list[Device] = [*self.motors.values(), self.machine, *self.diagnostics.values(),
                             self.detector]
        if self.undulator is not None:
            out.append(self.undulator)
        return out

    def wait_for_connection(self, timeout: float = 5.0) -> None:
        """Connect everything, or raise naming what did not connect."""
        from controllers.ca import PvNotFoundError

        missing = []
        for d in self.all():
            try:
                d.wait_for_connection(timeout=timeout)
            except TimeoutError as exc:
                missing.append(f"{d.name}: {exc}")
        if missing:
            raise PvNotFoundError("devices did not connect: " + "; ".join(missing))


def make_devices(pvmap: PvMap) -> BeamlineDevices:
    """The ophyd devices of *pvmap*'s beamline (not yet connected)."""
    motors = {m: SafeEpicsMotor(pvmap.motor(m), name=m.replace(".", "_"))
              for m in pvmap.desc.motors}
    machine = MachineStatus(pvmap.device("machine") or "", name="machine")
    und_base = pvmap.device("undulator")
    undulator = Undulator(und_base, name="undulator") if und_base else None
    diags: dict[str, IntensityMonitor] = {}
    for d in pvmap.diagnostic_names:
        base = pvmap.device(d)
        if base is None:
            continue
        cls = IntensityMonitor if pvmap.diagnostic_kind(d) in INTENSITY_KINDS else PositionMonitor
        diags[d] = cls(base, name=d)
    detector = AreaDetector(pvmap.device("detector") or "", name="detector")
    return BeamlineDevices(motors, machine, undulator, diags, detector)
