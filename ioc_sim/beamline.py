"""The whole beamline as one IOC: motor records, undulator, machine, diagnostics, detector.

:class:`BeamlineIOC` composes the PV groups of :mod:`ioc_sim.motor_record`,
:mod:`ioc_sim.diagnostics` and :mod:`ioc_sim.detector` around one
:class:`~ioc_sim.machine.SimulatedMachine`. Under a prefix ``P`` it serves:

* ``{P}{element}:{axis}`` -- a motor record for every twin motor (e.g.
  ``BT:kb_v:pitch``), fields as listed in :mod:`ioc_sim.motor_record`;
* ``{P}undulator:``, ``{P}machine:``, ``{P}twin:`` -- see :mod:`ioc_sim.diagnostics`;
* ``{P}{diagnostic}:`` -- every screen, BPM, ion chamber and the sample camera;
* ``{P}det:`` -- the area detector with Stats1, ROI1 and Trig1
  (:mod:`ioc_sim.detector`).

:meth:`BeamlineIOC.pv_table` lists every PV with its access, units and meaning
(``beamtwin ioc --list-pvs``; docs/ioc.md has the table for the default beamline).

While the detector is idle, the diagnostics are traced ``twin:DiagRate`` times
a second (2 Hz by default); every detector frame also updates them, from the
same trace.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from caproto import ChannelType
from caproto.server import PVGroup

from ioc_sim.detector import AreaDetector, make_area_detector
from ioc_sim.diagnostics import (
    DiagnosticPVs,
    MachinePVs,
    StabilizerPVs,
    TwinPVs,
    UndulatorPVs,
    make_diagnostic,
)
from ioc_sim.machine import MachineConfig, SimulatedMachine
from ioc_sim.motor_record import MotorRecord
from twin.description import BeamlineDescription, Detector
from twin.errors import ConfigError
from twin.observation import Observation
from twin.specimen import Specimen

__all__ = ["BeamlineIOC", "PvInfo", "check_prefix"]

log = logging.getLogger(__name__)

_PREFIX_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:-{}[]<>;.$")


def check_prefix(prefix: str) -> str:
    """Return *prefix* if it is a valid EPICS record-name prefix, else raise ConfigError."""
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"PV prefix must be a non-empty string, got {prefix!r}")
    bad = sorted(set(prefix) - _PREFIX_CHARS)
    if bad:
        raise ConfigError(f"PV prefix {prefix!r} has characters EPICS record names do not "
                          f"allow: {''.join(bad)!r}; use letters, digits and _ : - . ")
    if len(prefix) > 40:
        raise ConfigError(f"PV prefix {prefix!r} is longer than 40 characters")
    return prefix


@dataclass(frozen=True)
class PvInfo:
    """One served PV: name, access, type, units and meaning."""

    name: str
    access: str
    dtype: str
    units: str
    doc: str


class BeamlineIOC:
    """The simulated beamline's IOC.

    Parameters
    ----------
    desc : BeamlineDescription
    prefix : str
        PV prefix ``P`` (``"BT:"`` by default on the command line).
    config : MachineConfig, optional
        Backend, rays, hidden errors, seed, disturbances and noise.
    diag_rate_hz : float
        Diagnostics update rate while the detector is idle, Hz (0 to 20).
    machine : SimulatedMachine, optional
        An existing machine (tests); built from *config* otherwise.
    specimen : Specimen, optional
        A specimen mounted at the sample: the sample camera then serves its
        fluorescence (``{P}sample:Xrf_RBV``).
    """

    def __init__(self, desc: BeamlineDescription, prefix: str, *,
                 config: MachineConfig | None = None, diag_rate_hz: float = 2.0,
                 machine: SimulatedMachine | None = None,
                 specimen: Specimen | None = None) -> None:
        self.prefix = check_prefix(prefix)
        if not (isinstance(diag_rate_hz, (int, float)) and math.isfinite(diag_rate_hz)
                and 0 <= diag_rate_hz <= 20):
            raise ConfigError(f"diagnostics rate must be within [0, 20] Hz, got {diag_rate_hz!r}")
        self.desc = desc
        self.machine = machine or SimulatedMachine(desc, config)
        m = self.machine
        self.motors: dict[str, MotorRecord] = {}
        for name in desc.motors:
            element, axis = name.split(".", 1)
            self.motors[name] = MotorRecord(f"{prefix}{element}:{axis}", machine=m, motor=name)
        self.diagnostics: dict[str, DiagnosticPVs] = {
            e.name: make_diagnostic(prefix, e, specimen) for e in desc.diagnostics
            if not isinstance(e, Detector)}
        self.undulator = UndulatorPVs(f"{prefix}undulator:", machine=m)
        self.ring = MachinePVs(f"{prefix}machine:", machine=m)
        self.status = TwinPVs(f"{prefix}twin:", machine=m, rate_hz=diag_rate_hz)
        self.stabilizer = StabilizerPVs(f"{prefix}stab:")
        self.detector: AreaDetector = make_area_detector(prefix, m,
                                                         on_observation=self._observed)
        self._groups: list[PVGroup] = [*self.motors.values(), *self.diagnostics.values(),
                                       self.undulator, self.ring, self.status, self.stabilizer,
                                       self.detector]
        self._diag_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ pvdb
    @property
    def pvdb(self) -> dict[str, Any]:
        """Every PV this IOC serves: name -> caproto channel data.

        A motor record's bare name is its VAL field (the same channel).
        """
        db: dict[str, Any] = {}
        for g in self._groups:
            db.update(g.pvdb)
        for rec in self.motors.values():
            db[rec.prefix] = db[f"{rec.prefix}.VAL"]
        return db

    def pv_table(self) -> list[PvInfo]:
        """Every PV with access (``r``/``rw``), type, units and meaning, in name order."""
        rows: list[PvInfo] = []
        for name, ch in sorted(self.pvdb.items()):
            prop = getattr(ch, "pvspec", None)
            doc = getattr(prop, "doc", None) or ""
            read_only = bool(getattr(prop, "read_only", False))
            dtype = getattr(ch, "data_type", None)
            rows.append(PvInfo(name=name, access="r" if read_only else "rw",
                               dtype=dtype.name if isinstance(dtype, ChannelType) else "",
                               units=str(getattr(ch, "units", "") or ""),
                               doc=doc if name not in {r.prefix for r in self.motors.values()}
                               else "VAL (the record's bare name)"))
        return rows

    # ------------------------------------------------------------------ life cycle
    async def initialise(self) -> None:
        """Publish every group's configuration; call once before serving."""
        for g in self._groups:
            init = getattr(g, "initialise", None)
            if init is not None:
                await init()

    def start_background(self) -> None:
        """Start the diagnostics loop (call from the running event loop)."""
        if self._diag_task is None or self._diag_task.done():
            self._diag_task = asyncio.get_running_loop().create_task(self._diagnostics_loop())

    async def stop_background(self) -> None:
        """Stop the diagnostics loop and any acquisition."""
        await self.detector.abort()
        if self._diag_task is not None:
            self._diag_task.cancel()
            try:
                await self._diag_task
            except asyncio.CancelledError:
                pass

    async def _diagnostics_loop(self) -> None:
        while True:
            rate = float(self.status.rate.value)
            if rate <= 0:
                await asyncio.sleep(0.2)
                continue
            period = 1.0 / rate
            if self.detector.busy:
                await asyncio.sleep(period)
                continue
            t0 = asyncio.get_running_loop().time()
            try:
                snap = self.machine.snapshot()
                obs = await asyncio.to_thread(self.machine.observe, snap, period)
                await self._observed(obs, exposure_s=period)
            except Exception:  # keep serving: a failed trace is logged, not fatal
                log.exception("diagnostics trace failed")
            rest = period - (asyncio.get_running_loop().time() - t0)
            await asyncio.sleep(max(rest, 0.0))

    async def _observed(self, obs: Observation, exposure_s: float | None = None) -> None:
        """Publish one trace to every diagnostic and to the twin status."""
        exposure = exposure_s if exposure_s is not None else float(
            self.detector.acquire_time.value)
        await self.status.count(obs)
        uid = int(self.status.traces.value)
        for name, group in self.diagnostics.items():
            if name in obs.diagnostics:
                await group.publish(obs.diagnostics[name], uid, exposure)
