"""Beam diagnostics, the undulator, the machine and the twin's own status, as PV groups.

Each diagnostic of the beamline description gets ``{P}{name}:``:

every diagnostic (screen, BPM, ion chamber, sample)
    ``Intensity_RBV`` (r, photons/s inside its field of view),
    ``UniqueId_RBV`` (r, number of the trace that produced these values).
BPM, screen and sample
    ``PosX_RBV``, ``PosY_RBV`` (r, beam centroid, um, x to the right looking
    downstream, y up), ``FWHMX_RBV``, ``FWHMY_RBV`` (r, um).
screen and sample (a camera)
    ``image:ArrayData`` (r, float32 counts per diagnostics cycle, row-major,
    row 0 at the top), ``image:ArraySize0_RBV``, ``image:ArraySize1_RBV`` (r),
    ``Stats:Total_RBV``, ``Stats:CentroidX_RBV``, ``Stats:CentroidY_RBV``,
    ``Stats:SigmaX_RBV``, ``Stats:SigmaY_RBV`` (r, counts and pixels).

``{P}undulator:``
    ``Energy_RBV`` (r, eV: on-axis energy of the selected harmonic at the gap
    readback), ``Harmonic`` (rw, odd, >= 1), ``Harmonic_RBV`` (r),
    ``Gap_RBV`` (r, mm, the gap motor's dial readback). The gap itself is the
    motor record ``{P}undulator:gap``.

``{P}machine:``
    ``RingCurrent_RBV`` (r, mA: decay and top-up), ``BeamAvailable_RBV``
    (r, No/Yes), ``Shutter`` (rw, Closed/Open: the front-end shutter),
    ``Shutter_RBV`` (r), ``BeamLoss`` (rw, No/Yes: inject a beam loss),
    ``Time_RBV`` (r, s since the IOC started).

``{P}twin:``
    ``Backend_RBV``, ``Rays_RBV``, ``Seed_RBV`` (r), ``PhotonEnergy_RBV`` (r, eV,
    selected by the monochromator), ``Traces_RBV`` (r), ``TraceTime_RBV`` (r, ms),
    ``DiagRate`` (rw, Hz, 0 to 20: how often the diagnostics are traced when the
    detector is not acquiring; 0 stops it), ``Ready_RBV`` (r).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from ioc_sim.analysis import counts_frame, frame_stats
from ioc_sim.machine import SimulatedMachine
from ioc_sim.pvs import array_pv, enum_pv, float_pv, int_pv, string_pv
from twin.description import BeamPositionMonitor, Element, IonChamber, SampleStage
from twin.errors import ConfigError
from twin.observation import Observation, Reading
from twin.specimen import Specimen

__all__ = ["DiagnosticPVs", "SpecimenPVs", "make_diagnostic", "UndulatorPVs", "MachinePVs",
           "TwinPVs"]


class DiagnosticPVs(PVGroup):
    """Intensity of one diagnostic (subclasses add position and a camera)."""

    intensity = float_pv("Intensity_RBV", "photons inside the field of view", units="ph/s",
                         precision=4)
    uid = int_pv("UniqueId_RBV", "trace number")

    async def initialise(self) -> None:
        """Publish constants; called once before serving."""

    async def publish(self, reading: Reading, uid: int, exposure_s: float) -> None:
        """Post the values of *reading* from trace *uid*."""
        await self.intensity.write(reading.stats.flux, verify_value=False)
        await self.uid.write(uid, verify_value=False)


class PositionPVs(DiagnosticPVs):
    """A diagnostic that also measures the beam position and size (BPM)."""

    pos_x = float_pv("PosX_RBV", "beam centroid x", units="um")
    pos_y = float_pv("PosY_RBV", "beam centroid y", units="um")
    fwhm_x = float_pv("FWHMX_RBV", "beam FWHM x", units="um")
    fwhm_y = float_pv("FWHMY_RBV", "beam FWHM y", units="um")
    rms_x = float_pv("SigmaX_RBV", "beam rms size x", units="um")
    rms_y = float_pv("SigmaY_RBV", "beam rms size y", units="um")

    async def publish(self, reading: Reading, uid: int, exposure_s: float) -> None:  # noqa: D102
        s = reading.stats
        for prop, value in ((self.pos_x, s.centroid_x_um), (self.pos_y, s.centroid_y_um),
                            (self.fwhm_x, s.fwhm_x_um), (self.fwhm_y, s.fwhm_y_um),
                            (self.rms_x, s.rms_x_um), (self.rms_y, s.rms_y_um)):
            await prop.write(value, verify_value=False)
        await super().publish(reading, uid, exposure_s)


class CameraPVs(PositionPVs):
    """A screen or sample camera: position, size and an image with its statistics."""

    size0 = int_pv("image:ArraySize0_RBV", "image width, pixels")
    size1 = int_pv("image:ArraySize1_RBV", "image height, pixels")
    total = float_pv("Stats:Total_RBV", "sum of counts", units="", precision=0)
    centroid_x = float_pv("Stats:CentroidX_RBV", "centroid x", units="px")
    centroid_y = float_pv("Stats:CentroidY_RBV", "centroid y", units="px")
    sigma_x = float_pv("Stats:SigmaX_RBV", "rms width x", units="px")
    sigma_y = float_pv("Stats:SigmaY_RBV", "rms width y", units="px")

    def __init__(self, prefix: str, *, pixels: tuple[int, int]) -> None:
        super().__init__(prefix=prefix)
        self.pixels = pixels

    async def initialise(self) -> None:  # noqa: D102
        await self.size0.write(self.pixels[0], verify_value=False)
        await self.size1.write(self.pixels[1], verify_value=False)

    async def publish(self, reading: Reading, uid: int, exposure_s: float) -> None:  # noqa: D102
        if reading.image is not None:
            frame = counts_frame(reading.image, exposure_s)
            s = frame_stats(frame)
            await self.array_data.write(frame.ravel(), verify_value=False)  # type: ignore[attr-defined]
            for prop, value in ((self.total, s.total), (self.centroid_x, s.centroid_x),
                                (self.centroid_y, s.centroid_y), (self.sigma_x, s.sigma_x),
                                (self.sigma_y, s.sigma_y)):
                await prop.write(value, verify_value=False)
        await super().publish(reading, uid, exposure_s)


class SpecimenPVs(CameraPVs):
    """The sample camera with a specimen mounted: its fluorescence too (``Xrf_RBV``)."""

    xrf = float_pv("Xrf_RBV", "fluorescence of the mounted specimen under the focus, per "
                   "exposure", units="ph", precision=1)

    def __init__(self, prefix: str, *, pixels: tuple[int, int], specimen: Specimen) -> None:
        super().__init__(prefix, pixels=pixels)
        self.specimen = specimen

    async def publish(self, reading: Reading, uid: int, exposure_s: float) -> None:  # noqa: D102
        s = reading.stats
        counts = self.specimen.counts(s.flux, s.centroid_x_um, s.centroid_y_um, s.fwhm_x_um,
                                      s.fwhm_y_um, exposure_s)
        await self.xrf.write(counts, verify_value=False)
        await super().publish(reading, uid, exposure_s)


def make_diagnostic(prefix: str, element: Element,
                    specimen: Specimen | None = None) -> DiagnosticPVs:
    """The PV group of one diagnostic *element*, at ``{prefix}{element.name}:``; the sample
    camera serves *specimen*'s fluorescence when one is mounted."""
    where = f"{prefix}{element.name}:"
    if isinstance(element, IonChamber):
        return DiagnosticPVs(prefix=where)
    if isinstance(element, BeamPositionMonitor):
        return PositionPVs(prefix=where)
    nx, ny = element.pixels  # type: ignore[attr-defined]
    data = array_pv("image:ArrayData", "camera image, counts, row-major", nx * ny)
    if specimen is not None and isinstance(element, SampleStage):
        cls = type(f"SpecimenPVs{nx}x{ny}", (SpecimenPVs,), {"array_data": data})
        return cls(where, pixels=(nx, ny), specimen=specimen)
    cls = type(f"CameraPVs{nx}x{ny}", (CameraPVs,), {"array_data": data})
    return cls(where, pixels=(nx, ny))


class UndulatorPVs(PVGroup):
    """``{P}undulator:``: energy readback and harmonic (the gap is a motor record)."""

    energy = float_pv("Energy_RBV", "on-axis energy of the harmonic at the gap", units="eV",
                      precision=2)
    harmonic = int_pv("Harmonic", "harmonic number (odd)", read_only=False, value=1)
    harmonic_rbv = int_pv("Harmonic_RBV", "harmonic number", value=1)
    gap = float_pv("Gap_RBV", "gap (dial readback)", units="mm", precision=4)

    def __init__(self, prefix: str, *, machine: SimulatedMachine) -> None:
        super().__init__(prefix=prefix)
        self.machine = machine

    async def initialise(self) -> None:
        """Publish the preset's harmonic; called once before serving."""
        und = self.machine.undulator
        h = und.harmonic if und is not None else 1
        await self.harmonic.write(h, verify_value=False)
        await self.harmonic_rbv.write(h, verify_value=False)

    @harmonic.putter
    async def harmonic(self, instance, value):
        if value < 1 or value % 2 == 0:
            raise ValueError(f"undulator harmonic must be odd and >= 1, got {value!r}")
        await self.harmonic_rbv.write(value, verify_value=False)
        return value

    @energy.scan(period=0.2)
    async def energy(self, instance, async_lib):
        m = self.machine
        if m.gap_motor is None:
            return
        await instance.write(m.undulator_energy_eV(self.harmonic.value), verify_value=False)
        gap, _ = m.axes[m.gap_motor].state(m.now())
        await self.gap.write(gap, verify_value=False)


class MachinePVs(PVGroup):
    """``{P}machine:``: ring current, beam availability, shutter and beam-loss injection."""

    current = float_pv("RingCurrent_RBV", "ring current", units="mA", precision=3)
    available = enum_pv("BeamAvailable_RBV", "beam available", ("No", "Yes"), "Yes",
                      read_only=True)
    shutter = enum_pv("Shutter", "front-end shutter", ("Closed", "Open"), "Open")
    shutter_rbv = enum_pv("Shutter_RBV", "front-end shutter", ("Closed", "Open"), "Open",
                        read_only=True)
    beam_loss = enum_pv("BeamLoss", "inject a beam loss", ("No", "Yes"), "No")
    time = float_pv("Time_RBV", "time since the IOC started", units="s", precision=1)
    neighbour = float_pv("NeighbourGap", "gap of the neighbouring insertion device (another "
                         "beamline's; set here to simulate it)", units="mm", precision=4,
                         read_only=False)
    neighbour_rbv = float_pv("NeighbourGap_RBV", "gap of the neighbouring insertion device",
                             units="mm", precision=4)

    def __init__(self, prefix: str, *, machine: SimulatedMachine) -> None:
        super().__init__(prefix=prefix)
        self.machine = machine

    async def initialise(self) -> None:
        """Publish the ring's state; called once before serving."""
        gap = self.machine.neighbour_gap_mm
        await self.neighbour.write(gap, verify_value=False)
        await self.neighbour_rbv.write(gap, verify_value=False)
        await self._update()

    @neighbour.putter
    async def neighbour(self, instance, value):
        try:
            self.machine.set_neighbour_gap(float(value))
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        await self.neighbour_rbv.write(float(value), verify_value=False)
        return value

    @shutter.putter
    async def shutter(self, instance, value):
        self.machine.shutter_open = value == "Open"
        await self.shutter_rbv.write(value, verify_value=False)
        return value

    @beam_loss.putter
    async def beam_loss(self, instance, value):
        self.machine.beam_lost = value == "Yes"
        await self._update()
        return value

    @current.scan(period=0.5)
    async def current(self, instance, async_lib):
        await self._update()

    async def _update(self) -> None:
        t = self.machine.now()
        current, available = self.machine.ring(t)
        await self.current.write(current, verify_value=False)
        await self.available.write("Yes" if available else "No", verify_value=False)
        await self.time.write(t, verify_value=False)


class TwinPVs(PVGroup):
    """``{P}twin:``: what traces the beamline, and how fast."""

    backend = string_pv("Backend_RBV", "tracing backend")
    rays = int_pv("Rays_RBV", "rays per trace")
    seed = int_pv("Seed_RBV", "seed of rays, hidden errors and noise")
    energy = float_pv("PhotonEnergy_RBV", "photon energy selected by the monochromator",
                      units="eV", precision=2)
    traces = int_pv("Traces_RBV", "traces so far")
    trace_time = float_pv("TraceTime_RBV", "duration of the last trace", units="ms",
                          precision=1)
    rate = float_pv("DiagRate", "diagnostics update rate (0: off)", 2.0, units="Hz",
                    precision=2, read_only=False)
    ready = int_pv("Ready_RBV", "1 once the IOC serves")
    refused = int_pv("RefusedPuts_RBV", "motor setpoints the IOC refused (out of limits or "
                     "not finite), counted since it started")

    def __init__(self, prefix: str, *, machine: SimulatedMachine, rate_hz: float) -> None:
        super().__init__(prefix=prefix)
        self.machine = machine
        self._rate_hz = float(rate_hz)

    async def initialise(self) -> None:
        """Publish the configuration; called once before serving."""
        cfg = self.machine.config
        await self.backend.write(cfg.backend, verify_value=False)
        await self.rays.write(cfg.rays, verify_value=False)
        await self.seed.write(cfg.seed, verify_value=False)
        await self.rate.write(self._rate_hz)

    motion_puts = int_pv("MotionPuts_RBV", "motion commands the motor records received (VAL, "
                         "DVAL, RLV, tweaks, homing, STOP, SPMG), accepted or refused")

    excursions = int_pv("LimitExcursions_RBV", "moves that went beyond the soft limits they "
                        "started under (0: the promise held)")

    @refused.scan(period=0.1)
    async def refused(self, instance, async_lib):
        n = self.machine.refused_setpoints
        if instance.value != n:
            await instance.write(n, verify_value=False)
        m = self.machine.motion_puts
        if self.motion_puts.value != m:
            await self.motion_puts.write(m, verify_value=False)
        x = self.machine.limit_excursions
        if self.excursions.value != x:
            await self.excursions.write(x, verify_value=False)

    @rate.putter
    async def rate(self, instance, value):
        if not (math.isfinite(value) and 0 <= value <= 20):
            raise ValueError(f"twin:DiagRate must be within [0, 20] Hz, got {value!r}")
        return value

    async def count(self, obs: Observation) -> None:
        """Record one trace."""
        await self.traces.write(self.traces.value + 1, verify_value=False)
        await self.trace_time.write(obs.meta.get("trace_s", math.nan) * 1e3,
                                    verify_value=False)
        await self.energy.write(obs.energy_eV, verify_value=False)


#: the longest stab:Report, bytes
REPORT_BYTES = 1024
#: a loop silent this long is shown as not running, s
SILENT_S = 10.0
#: the keys of stab:Report: (type, minimum or None)
REPORT_KEYS: dict[str, tuple[type, float | None]] = {
    "running": (int, 0), "corrector": (str, None), "rate": (float, 0.0), "periods": (int, 0),
    "res_x": (float, 0.0), "res_y": (float, 0.0), "res_size": (float, 0.0),
    "refused": (int, 0), "message": (str, None)}


def parse_report(value: object) -> dict[str, Any]:
    """The checked content of a ``stab:Report``; raises ValueError naming what is wrong."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"stab:Report: not JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"stab:Report: a JSON object is expected, got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(REPORT_KEYS))
    if unknown:
        raise ValueError(f"stab:Report: unknown key(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(REPORT_KEYS)}")
    out: dict[str, Any] = {}
    for key, v in doc.items():
        kind, low = REPORT_KEYS[key]
        if kind is str:
            if not isinstance(v, str) or len(v.encode()) > 39:
                raise ValueError(f"stab:Report: {key} must be a string of at most 39 "
                                 f"bytes, got {v!r}")
            out[key] = v
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                (kind is int and not float(v).is_integer()):
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"stab:Report: {key} must be {what}, got {v!r}")
        if not math.isfinite(v) or (low is not None and v < low) or abs(v) > 1e15:
            raise ValueError(f"stab:Report: {key} must be finite and >= {low}, got {v!r}")
        if key == "running" and v not in (0, 1):
            raise ValueError(f"stab:Report: running must be 0 or 1, got {v!r}")
        out[key] = kind(v)
    return out


class StabilizerPVs(PVGroup):
    """``{P}stab:``: the beam stabiliser's switch and what it achieves.

    The operator switches the loop with ``Enable``; the loop
    (``beamtwin stabilize run --epics``) holds every knob where it is while
    ``Enable`` is ``Off``.

    Every ``_RBV`` here is read-only. The loop reports through one input PV,
    ``Report``: a JSON object (at most :data:`REPORT_BYTES` bytes) with the keys
    of :data:`REPORT_KEYS`, which the IOC checks (types, finite, non-negative,
    strings of at most 39 characters) before it publishes them. A report that
    fails the check is refused with a CA error naming the key and changes
    nothing. A loop that falls silent for :data:`SILENT_S` s is shown as not
    running (``Running_RBV`` 0, ``Message_RBV`` "loop silent").
    """

    enable = enum_pv("Enable", "stabiliser on or off (the operator's switch)", ("Off", "On"),
                     "On", read_only=False)
    report = pvproperty(name="Report", value="", dtype=ChannelType.CHAR,
                        max_length=REPORT_BYTES, read_only=False,
                        doc="the loop's status report (JSON), checked and published below")
    running = int_pv("Running_RBV", "1 while a stabiliser loop is connected and running")
    corrector = string_pv("Corrector_RBV", "corrector the loop runs")
    rate = float_pv("LoopRate_RBV", "achieved loop rate", units="Hz", precision=1)
    periods = int_pv("Periods_RBV", "loop periods so far")
    res_x = float_pv("ResidualX_RBV", "rms change of the sample centroid x over the last "
                     "second", units="um", precision=5)
    res_y = float_pv("ResidualY_RBV", "rms change of the sample centroid y over the last "
                     "second", units="um", precision=5)
    res_size = float_pv("SizeResidual_RBV", "rms change of the vertical spot size over the last "
                        "second", units="%", precision=3)
    refused = int_pv("Refused_RBV", "corrections the safety layer refused")
    message = string_pv("Message_RBV", "last refusal or state change")

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self._last_report: float | None = None

    def _targets(self) -> dict[str, Any]:
        return {"running": self.running, "corrector": self.corrector, "rate": self.rate,
                "periods": self.periods, "res_x": self.res_x, "res_y": self.res_y,
                "res_size": self.res_size, "refused": self.refused, "message": self.message}

    @report.putter
    async def report(self, instance, value):
        doc = parse_report(value)
        targets = self._targets()
        for key, v in doc.items():
            await targets[key].write(v, verify_value=False)
        self._last_report = time.monotonic()
        return value

    @running.scan(period=1.0)
    async def running(self, instance, async_lib):
        last = self._last_report
        if instance.value and (last is None or time.monotonic() - last > SILENT_S):
            await instance.write(0, verify_value=False)
            await self.message.write("loop silent", verify_value=False)
