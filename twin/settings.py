"""From motor positions to the physical settings of every element.

This is the backend-neutral heart of the twin: the physics position of each
axis is ``commanded + hidden offset + disturbance offset``, converted to
internal units (mm, rad), and every element turns its axes into a small
frozen settings record that any tracing backend (xrt, torch) consumes. The
records are hashable, so a backend can cache everything downstream of an
element whose settings did not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from twin import physics
from twin.description import (
    Aperture,
    BeamlineDescription,
    CompoundRefractiveLens,
    CrystalMonochromator,
    Detector,
    Element,
    GaussianSource,
    Mirror,
    MultilayerMonochromator,
    SampleStage,
    Slits,
    Undulator,
)
from twin.disturbances import DisturbanceState, SourcePerturbation, combine_sources
from twin.errors import LimitError, NonFiniteError
from twin.hidden import HiddenErrors
from twin.units import to_internal

__all__ = [
    "SourceSettings", "SlitSettings", "OffsetSettings", "MirrorSettings", "MonoSettings",
    "ObserverSettings", "ElementSettings", "resolve", "validate_positions", "selected_energy_eV",
    "knob_perturbation",
]


@dataclass(frozen=True)
class SourceSettings:
    """Source: effective gap (mm; None without undulator), band centre (eV), perturbation."""

    gap_mm: float | None
    energy_eV: float
    perturbation: SourcePerturbation


@dataclass(frozen=True)
class SlitSettings:
    """Blade edges in the slit plane, mm: left < right (x), bottom < top (z)."""

    left: float
    right: float
    bottom: float
    top: float


@dataclass(frozen=True)
class OffsetSettings:
    """Transverse translation (aperture, lens), mm."""

    dx: float = 0.0
    dz: float = 0.0


@dataclass(frozen=True)
class MirrorSettings:
    """Mirror pose changes from design (rad, mm) and bender value.

    ``bend`` is the focal distance q (mm) for elliptical mirrors, else the
    bender sagitta (mm).
    """

    dpitch: float = 0.0
    roll: float = 0.0
    yaw: float = 0.0
    height: float = 0.0
    lateral: float = 0.0
    bend: float = 0.0


@dataclass(frozen=True)
class MonoSettings:
    """Monochromator: Bragg angle (rad), second-crystal pitch and roll (rad), perp gap (mm)."""

    bragg: float
    pitch2: float
    roll2: float
    perp: float


@dataclass(frozen=True)
class ObserverSettings:
    """Observation point displaced from design: dx, dz transverse and dy along the beam, mm."""

    dx: float = 0.0
    dz: float = 0.0
    dy: float = 0.0


ElementSettings = (SourceSettings | SlitSettings | OffsetSettings | MirrorSettings | MonoSettings
                   | ObserverSettings | None)


def validate_positions(desc: BeamlineDescription, positions: Mapping[str, object], *,
                       check_limits: bool = True) -> dict[str, float]:
    """Check requested motor positions; return them as floats.

    *check_limits* False skips the soft-limit test (names and finiteness are always
    checked): the twin's own motor simulation passes positions past a limit by the
    backlash.

    Raises
    ------
    UnknownNameError
        For a name that is not ``element.axis`` of a motor of *desc*.
    NonFiniteError
        For NaN, inf, or a value that is not a number.
    LimitError
        For a value outside the motor's soft limits.
    """
    motors = desc.motors
    out: dict[str, float] = {}
    for name, value in positions.items():
        m = motors[name] if name in motors else desc.motor(name)  # raises, listing motors
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NonFiniteError(f"motor {name}: position must be a number in {m.units}, "
                                 f"got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise NonFiniteError(f"motor {name}: position must be finite, got {value!r}; "
                                 f"allowed range is [{m.low}, {m.high}] {m.units}")
        if check_limits and not m.low <= v <= m.high:
            raise LimitError(f"motor {name}: {v} {m.units} is outside its soft limits "
                             f"[{m.low}, {m.high}] {m.units}")
        out[name] = v
    return out


def _physical(desc: BeamlineDescription, positions: Mapping[str, float], hidden: HiddenErrors,
              disturbance: DisturbanceState | None) -> dict[str, float]:
    """Physics positions in internal units: commanded + hidden + disturbance."""
    out = {}
    for name, m in desc.motors.items():
        v = positions.get(name, m.position) + hidden.offset(name)
        if disturbance is not None:
            v += disturbance.axis_offsets.get(name, 0.0)
        out[name] = to_internal(v, m.units)
    return out


def selected_energy_eV(desc: BeamlineDescription, phys: Mapping[str, float]) -> float:
    """Photon energy (eV) the first monochromator selects; the design energy if none."""
    for e in desc.elements:
        if isinstance(e, CrystalMonochromator):
            return physics.energy_from_bragg_eV(
                phys[f"{e.name}.bragg"], physics.crystal_d_spacing_A(e.crystal, e.temperature_K))
        if isinstance(e, MultilayerMonochromator):
            bragg = e.motor("bragg")
            # the preset's bragg position is the reflectivity peak at the design energy
            design = to_internal(bragg.position, bragg.units)  # type: ignore[union-attr]
            return desc.energy_eV * math.sin(design) / math.sin(phys[f"{e.name}.bragg"])
    return desc.energy_eV


def _axis(e: Element, phys: Mapping[str, float], axis: str, default: float) -> float:
    key = f"{e.name}.{axis}"
    return phys[key] if key in phys else default


def knob_perturbation(und: Undulator, knobs: Mapping[str, float]) -> SourcePerturbation:
    """The source change the ring's knobs make (see :attr:`Undulator.KNOB_AXES`).

    Parameters
    ----------
    und : Undulator
    knobs : mapping of str to float
        Knob settings in internal units: ``bump_x``/``bump_y`` in mm,
        ``bump_xp``/``bump_yp`` in rad, ``coupling`` as a ratio; missing knobs are 0.
    """
    sx, sy = und.coupling_scales(knobs.get("coupling", 0.0))
    return SourcePerturbation(dx_um=knobs.get("bump_x", 0.0) * 1e3,
                              dy_um=knobs.get("bump_y", 0.0) * 1e3,
                              dxp_urad=knobs.get("bump_xp", 0.0) * 1e6,
                              dyp_urad=knobs.get("bump_yp", 0.0) * 1e6,
                              size_x_scale=sx, size_y_scale=sy)


def resolve(desc: BeamlineDescription, positions: Mapping[str, float], hidden: HiddenErrors,
            disturbance: DisturbanceState | None = None) -> tuple[tuple[ElementSettings, ...],
                                                                  float]:
    """Settings of every element (in beam order) and the selected photon energy (eV).

    *positions* are commanded motor positions in motor units; motors left out
    sit at their design positions. Positions must already be validated.
    """
    phys = _physical(desc, positions, hidden, disturbance)
    energy = selected_energy_eV(desc, phys)
    out: list[ElementSettings] = []
    for e in desc.elements:
        s: ElementSettings
        if isinstance(e, Undulator):
            base = disturbance.source if disturbance is not None else SourcePerturbation()
            knobs = knob_perturbation(e, {a: _axis(e, phys, a, 0.0) for a in e.KNOB_AXES})
            s = SourceSettings(gap_mm=phys[f"{e.name}.gap"], energy_eV=energy,
                               perturbation=(base if knobs == SourcePerturbation()
                                             else combine_sources(base, knobs)))
        elif isinstance(e, GaussianSource):
            s = SourceSettings(gap_mm=None, energy_eV=energy,
                               perturbation=(disturbance.source if disturbance is not None
                                             else SourcePerturbation()))
        elif isinstance(e, Slits):
            hgap, vgap = phys[f"{e.name}.hgap"], phys[f"{e.name}.vgap"]
            hcen, vcen = _axis(e, phys, "hcen", 0.0), _axis(e, phys, "vcen", 0.0)
            s = SlitSettings(left=hcen - hgap / 2, right=hcen + hgap / 2,
                             bottom=vcen - vgap / 2, top=vcen + vgap / 2)
        elif isinstance(e, (Aperture, CompoundRefractiveLens)):
            s = OffsetSettings(dx=_axis(e, phys, "x", 0.0), dz=_axis(e, phys, "y", 0.0))
        elif isinstance(e, Mirror):
            design_bend = e.q_m * 1e3 if e.shape == "elliptical" else 0.0  # type: ignore[operator]
            s = MirrorSettings(
                dpitch=_axis(e, phys, "pitch", 0.0), roll=_axis(e, phys, "roll", 0.0),
                yaw=_axis(e, phys, "yaw", 0.0), height=_axis(e, phys, "height", 0.0),
                lateral=_axis(e, phys, "lateral", 0.0), bend=_axis(e, phys, "bend", design_bend))
        elif isinstance(e, (CrystalMonochromator, MultilayerMonochromator)):
            bragg = phys[f"{e.name}.bragg"]
            design_perp = e.fixed_exit_mm / (2.0 * math.cos(bragg))
            s = MonoSettings(bragg=bragg, pitch2=_axis(e, phys, "pitch2", 0.0),
                             roll2=_axis(e, phys, "roll2", 0.0),
                             perp=_axis(e, phys, "perp", design_perp))
        elif isinstance(e, SampleStage):
            s = ObserverSettings(dx=_axis(e, phys, "x", 0.0), dz=_axis(e, phys, "y", 0.0),
                                 dy=_axis(e, phys, "z", 0.0))
        elif isinstance(e, Detector):
            s = ObserverSettings(dx=_axis(e, phys, "x", 0.0), dz=_axis(e, phys, "y", 0.0))
        else:  # screens, BPMs, ion chambers: fixed
            s = ObserverSettings()
        out.append(s)
    return tuple(out), energy
