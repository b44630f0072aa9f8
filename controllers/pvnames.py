"""Where each part of a beamline lives in EPICS: PV names from a prefix and a mapping file.

beamtwin's own IOC (``beamtwin ioc --prefix P``) serves every part under one
prefix, with the names of the motor record and areaDetector:

* motor ``element.axis`` -> record ``{P}{element}:{axis}``;
* diagnostic ``name`` -> ``{P}{name}:`` + ``Intensity_RBV``, ``PosX_RBV``, ...;
* the area detector -> ``{P}det:`` + ``cam1:Acquire``, ``Stats1:Total_RBV``, ...;
* the ring and front end -> ``{P}machine:``; the undulator -> ``{P}undulator:``;
  the twin's own status -> ``{P}twin:``; the beam stabiliser's switch and
  status -> ``{P}stab:``.

A real beamline names its devices otherwise. A mapping file (TOML) gives the
record of any motor and the base name of any device; what it leaves out keeps
the default::

    [motors]
    "kb_v.pitch" = "BL07:KB:VPitch"       # a motor record (no prefix added)

    [devices]
    machine = "SR:"                        # RingCurrent_RBV, Shutter_RBV, ...
    detector = "BL07:EIG1:"                # cam1:..., Stats1:..., image1:...
    sample = "BL07:SAMCAM:"                # a diagnostic: Intensity_RBV, PosX_RBV, ...
    twin = ""                              # "" : this part does not exist (a real beamline)
    [signals]
    xrf = "BL07:XSP3:C1_ROI1:Value_RBV"    # a scalar detector scans can read (default
                                           # for xrf: {sample}Xrf_RBV, `beamtwin ioc --specimen`)
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twin.description import BeamlineDescription, Detector
from twin.errors import ConfigError, UnknownNameError

__all__ = ["PvMap", "DIAGNOSTIC_FIELDS", "INTENSITY_KINDS", "SIGNALS"]

#: fields of a diagnostic that measures intensity only (an ion chamber)
_INTENSITY_FIELDS = ("Intensity_RBV", "UniqueId_RBV")
#: fields of a diagnostic that also measures position and size (BPM, screen, camera)
DIAGNOSTIC_FIELDS = (*_INTENSITY_FIELDS, "PosX_RBV", "PosY_RBV", "FWHMX_RBV", "FWHMY_RBV",
                     "SigmaX_RBV", "SigmaY_RBV")
#: diagnostic kinds that measure intensity only
INTENSITY_KINDS = ("ion_chamber",)
#: scalar signals a scan may read besides the diagnostics
SIGNALS = ("xrf",)
#: devices other than motors and diagnostics, and their default base names
_DEVICES = ("machine", "undulator", "detector", "twin", "stab")


@dataclass(frozen=True)
class PvMap:
    """PV names of one beamline.

    Parameters
    ----------
    desc : BeamlineDescription
    prefix : str
        PV prefix of beamtwin's naming (e.g. ``"BT:"``).
    motors : mapping of str to str, optional
        Record name of a motor, by ``element.axis`` (overrides the default).
    devices : mapping of str to str, optional
        Base name of ``machine``, ``undulator``, ``detector``, ``twin`` or a
        diagnostic; ``""`` means the beamline has no such device.
    signals : mapping of str to str, optional
        PV of a scalar signal (:data:`SIGNALS`), e.g. a fluorescence detector's ROI.
    """

    desc: BeamlineDescription
    prefix: str
    motors: Mapping[str, str] = field(default_factory=dict)
    devices: Mapping[str, str] = field(default_factory=dict)
    signals: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise ConfigError(f"PV prefix must be a string, got {self.prefix!r}")
        known_motors = set(self.desc.motors)
        for name, record in self.motors.items():
            if name not in known_motors:
                raise UnknownNameError(f"mapping names unknown motor {name!r}; known: "
                                       f"{', '.join(self.desc.motors)}")
            if not isinstance(record, str) or not record or any(c.isspace() for c in record):
                raise ConfigError(f"mapping: record of {name!r} must be a PV name without "
                                  f"spaces, got {record!r}")
        known_devices = {*_DEVICES, *self.diagnostic_names}
        for name, base in self.devices.items():
            if name not in known_devices:
                raise UnknownNameError(f"mapping names unknown device {name!r}; known: "
                                       f"{', '.join(sorted(known_devices))}")
            if not isinstance(base, str) or any(c.isspace() for c in base):
                raise ConfigError(f"mapping: base name of {name!r} must be a string without "
                                  f"spaces, got {base!r}")
        for name, pv in self.signals.items():
            if name not in SIGNALS:
                raise UnknownNameError(f"mapping names unknown signal {name!r}; known: "
                                       f"{', '.join(SIGNALS)}")
            if not isinstance(pv, str) or not pv or any(c.isspace() for c in pv):
                raise ConfigError(f"mapping: signal {name!r} must be a PV name without spaces, "
                                  f"got {pv!r}")
        if self.device("machine") is None:
            raise ConfigError("mapping: the machine device (ring current, shutter) is required: "
                              "the beam watchdog needs it")
        if self.device("detector") is None:
            raise ConfigError("mapping: the detector device is required: acquisitions are "
                              "triggered through it")

    @classmethod
    def load(cls, desc: BeamlineDescription, prefix: str,
             path: str | Path | None = None) -> PvMap:
        """The map of *desc* under *prefix*, with the overrides of mapping file *path*."""
        if path is None:
            return cls(desc, prefix)
        try:
            doc: dict[str, Any] = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read mapping file {str(path)!r}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"mapping file {str(path)!r} is not valid TOML: {exc}") from None
        extra = sorted(set(doc) - {"motors", "devices", "signals"})
        if extra:
            raise ConfigError(f"mapping file {str(path)!r}: unknown tables {extra}; allowed: "
                              f"[motors], [devices], [signals]")
        motors, devices = doc.get("motors", {}), doc.get("devices", {})
        signals = doc.get("signals", {})
        if not all(isinstance(t, dict) for t in (motors, devices, signals)):
            raise ConfigError(f"mapping file {str(path)!r}: [motors], [devices] and [signals] "
                              f"must be tables")
        return cls(desc, prefix, motors=motors, devices=devices, signals=signals)

    # ------------------------------------------------------------------ names
    @property
    def diagnostic_names(self) -> list[str]:
        """Diagnostics other than the area detector, in beam order."""
        return [e.name for e in self.desc.diagnostics if not isinstance(e, Detector)]

    def motor(self, name: str) -> str:
        """Record name of motor *name* (``element.axis``)."""
        if name not in self.desc.motors:
            raise UnknownNameError(f"unknown motor {name!r}; known: {', '.join(self.desc.motors)}")
        if name in self.motors:
            return self.motors[name]
        element, axis = name.split(".", 1)
        return f"{self.prefix}{element}:{axis}"

    def motor_field(self, name: str, fld: str) -> str:
        """``{record}.{fld}`` of motor *name* (``VAL``, ``RBV``, ``DMOV``, ...)."""
        return f"{self.motor(name)}.{fld}"

    def device(self, name: str) -> str | None:
        """Base name of device *name*, or None if the beamline has none."""
        if name in self.devices:
            return self.devices[name] or None
        default = "det" if name == "detector" else name
        return f"{self.prefix}{default}:"

    def signal(self, name: str) -> str:
        """PV of scalar signal *name* (``xrf``: the fluorescence under the focus)."""
        if name not in SIGNALS:
            raise UnknownNameError(f"unknown signal {name!r}; known: {', '.join(SIGNALS)}")
        if name in self.signals:
            return self.signals[name]
        sample = next((e.name for e in self.desc.diagnostics if e.kind == "sample"), None)
        base = self.device(sample) if sample is not None else None
        if base is None:
            raise ConfigError(f"signal {name!r}: this beamline has no sample diagnostic; map "
                              f"its PV in the mapping file's [signals] table")
        return f"{base}Xrf_RBV"

    def diagnostic_kind(self, name: str) -> str:
        """``kind`` of diagnostic *name* (bpm, screen, sample, ion_chamber)."""
        for e in self.desc.diagnostics:
            if e.name == name and not isinstance(e, Detector):
                return e.kind
        raise UnknownNameError(f"unknown diagnostic {name!r}; known: "
                               f"{', '.join(self.diagnostic_names)}")

    def diagnostic_fields(self, name: str) -> tuple[str, ...]:
        """Fields diagnostic *name* serves."""
        kind = self.diagnostic_kind(name)
        return _INTENSITY_FIELDS if kind in INTENSITY_KINDS else DIAGNOSTIC_FIELDS

    def image(self, name: str) -> str | None:
        """PV of the image of diagnostic *name* (a camera), or None."""
        e = next(e for e in self.desc.diagnostics if e.name == name)
        base = self.device(name)
        return f"{base}image:ArrayData" if base and hasattr(e, "pixels") else None
