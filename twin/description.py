"""Typed, validated description of a beamline.

A beamline is an ordered tuple of elements along the beam, from the source to
the detector. Each element is a frozen, keyword-only dataclass whose fields
carry their units in their names (``y_m``, ``grazing_mrad``, ``length_mm``) and
whose motors are :class:`MotorSpec` records named ``element.axis``.

Descriptions are normally loaded from TOML presets by
:func:`twin.presets.load_preset`; this module holds the types and their
validation. Everything is immutable: the twin is a pure function of a
description, motor positions, hidden errors and a seed.

Element kinds (the ``type`` key in a preset):

========================  ==========================================  =============================
type                      what                                        motor axes
========================  ==========================================  =============================
``undulator``             planar undulator; gap sets K                ``gap``
``gaussian_source``       Gaussian source (sizes, or emittance+beta)  none
``slits``                 four-blade slits                            ``hgap vgap hcen vcen``
``aperture``              fixed rectangular or round aperture         ``x y``
``mirror``                flat, cylindrical, elliptical, toroidal     ``pitch roll yaw height``
                                                                      ``lateral bend``
``dcm``                   double-crystal monochromator (Si)           ``bragg pitch2 roll2 perp``
``dmm``                   double-multilayer monochromator             ``bragg pitch2 roll2 perp``
``crl``                   stack of paraboloid refractive lenses       ``x y``
``screen``                imaging screen (YAG + camera)               none
``bpm``                   X-ray beam position monitor                 none
``ion_chamber``           ion chamber (intensity only)                none
``sample``                sample stage, observed in its own frame     ``x y z``
``detector``              area detector                               ``x y``
========================  ==========================================  =============================
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import numpy as np

from twin.errors import ConfigError, UnknownNameError
from twin.units import Quantity, quantity_of

__all__ = [
    "MotorSpec",
    "MetalCoating",
    "MultilayerCoating",
    "Element",
    "Undulator",
    "GaussianSource",
    "Slits",
    "Aperture",
    "Mirror",
    "CrystalMonochromator",
    "MultilayerMonochromator",
    "CompoundRefractiveLens",
    "Screen",
    "BeamPositionMonitor",
    "IonChamber",
    "SampleStage",
    "Detector",
    "ThermalDrift",
    "Vibration",
    "SourceGapDependence",
    "RingCurrent",
    "MotorImperfections",
    "Disturbances",
    "BeamlineDescription",
    "ELEMENT_TYPES",
    "SOURCE_TYPES",
    "DIAGNOSTIC_TYPES",
    "MATERIAL_DENSITIES_G_CM3",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: Bulk densities (g/cm^3) of common coating and lens materials (CRC Handbook).
MATERIAL_DENSITIES_G_CM3: dict[str, float] = {
    "Rh": 12.41, "Pt": 21.45, "Pd": 12.02, "Ir": 22.56, "Au": 19.32, "Ni": 8.91,
    "Cr": 7.19, "Ru": 12.45, "W": 19.25, "Mo": 10.22, "Si": 2.329, "C": 2.267,
    "Be": 1.848, "Al": 2.70, "B": 2.34,
}


def _finite(value: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    return float(value)


def _positive(value: float, where: str) -> float:
    v = _finite(value, where)
    if v <= 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")
    return v


def _non_negative(value: float, where: str) -> float:
    v = _finite(value, where)
    if v < 0:
        raise ConfigError(f"{where} must be >= 0, got {value!r}")
    return v


# --------------------------------------------------------------------------- motors
@dataclass(frozen=True, kw_only=True)
class MotorSpec:
    """One motorised axis of an element, in its own engineering units.

    Parameters
    ----------
    axis : str
        Axis name within its element (``pitch``, ``gap`` ...). The motor's full
        name is ``element.axis``.
    units : str
        Engineering units of every number below (``mm``, ``um``, ``urad`` ...).
    low, high : float
        Soft limits, in *units*. ``low < high`` always: an axis without limits
        is refused.
    position : float
        Design position: where the motor sits on the ideal, aligned beamline.
    resolution : float
        Smallest step (motor record MRES), in *units*.
    speed : float
        Slew speed (motor record VELO), *units*/s.
    backlash : float
        Backlash distance (motor record BDST), *units*; 0 for none. The lost
        motion of the mechanics equals this distance.
    misalign_sigma : float
        RMS of the hidden zero offset drawn for a "1x" misaligned beamline, in
        *units*.
    encoder_error : float
        RMS error of the readback encoder, in *units*.
    description : str
        Free text (EPICS DESC).
    """

    axis: str
    units: str
    low: float
    high: float
    position: float
    resolution: float
    speed: float
    backlash: float = 0.0
    misalign_sigma: float = 0.0
    encoder_error: float = 0.0
    description: str = ""

    @property
    def quantity(self) -> Quantity:
        """``"length"``, ``"angle"`` or ``"ratio"``."""
        return quantity_of(self.units)

    def validate(self, where: str) -> None:
        """Check the spec for consistency; raise :class:`ConfigError` naming *where*."""
        quantity_of(self.units)
        low = _finite(self.low, f"{where}.low")
        high = _finite(self.high, f"{where}.high")
        if not low < high:
            raise ConfigError(
                f"{where}: soft limits must satisfy low < high (an axis without limits cannot be "
                f"driven safely), got low={low}, high={high}"
            )
        pos = _finite(self.position, f"{where}.position")
        if not low <= pos <= high:
            raise ConfigError(f"{where}.position={pos} lies outside its limits [{low}, {high}]")
        _positive(self.resolution, f"{where}.resolution")
        _positive(self.speed, f"{where}.speed")
        _non_negative(self.backlash, f"{where}.backlash")
        _non_negative(self.misalign_sigma, f"{where}.misalign_sigma")
        _non_negative(self.encoder_error, f"{where}.encoder_error")


# --------------------------------------------------------------------------- coatings
@dataclass(frozen=True, kw_only=True)
class MetalCoating:
    """A single-layer metal coating on a silicon substrate.

    Parameters
    ----------
    material : str
        Chemical symbol (``Rh``, ``Pt`` ...).
    density_g_cm3 : float
        Layer density, g/cm^3.
    """

    material: str
    density_g_cm3: float


@dataclass(frozen=True, kw_only=True)
class MultilayerCoating:
    """A periodic multilayer (e.g. W/B4C, W/Si) on a silicon substrate.

    Parameters
    ----------
    top, bottom : str
        Chemical symbols of the top (heavy) and bottom (spacer) layers.
    top_density_g_cm3, bottom_density_g_cm3 : float
        Layer densities, g/cm^3.
    period_nm : float
        Bilayer period d, nm.
    gamma : float
        Thickness fraction of the top layer, 0 < gamma < 1.
    pairs : int
        Number of bilayers.
    """

    top: str
    bottom: str
    top_density_g_cm3: float
    bottom_density_g_cm3: float
    period_nm: float
    gamma: float
    pairs: int


Coating = MetalCoating | MultilayerCoating


# --------------------------------------------------------------------------- elements
@dataclass(frozen=True, kw_only=True)
class Element:
    """Base of every beamline element.

    Parameters
    ----------
    name : str
        Lower-case identifier, unique in the beamline (``kb_v``).
    y_m : float
        Position along the floor axis (global Y), m from the source point.
    motors : tuple of MotorSpec
        The element's motorised axes.
    description : str
        Free text.
    """

    kind: ClassVar[str] = ""
    #: allowed motor axes and the quantity each must be expressed in
    AXES: ClassVar[dict[str, Quantity]] = {}
    #: axes every element of this kind must have
    REQUIRED_AXES: ClassVar[frozenset[str]] = frozenset()
    #: fields that must be > 0, and >= 0 (checked by :meth:`validate`; None is skipped)
    POSITIVE: ClassVar[tuple[str, ...]] = ()
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ()

    name: str
    y_m: float
    motors: tuple[MotorSpec, ...] = ()
    description: str = ""

    def motor(self, axis: str) -> MotorSpec | None:
        """The motor for *axis*, or ``None`` if the element has none."""
        for m in self.motors:
            if m.axis == axis:
                return m
        return None

    def validate(self) -> None:
        """Check the element; raise :class:`ConfigError` naming the key at fault."""
        where = f"element {self.name!r}"
        if not _NAME_RE.match(self.name):
            raise ConfigError(
                f"{where}: name must match {_NAME_RE.pattern} (lower case, digits, underscores)"
            )
        _non_negative(self.y_m, f"{where}.y_m")
        for key in self.POSITIVE:
            if getattr(self, key) is not None:
                _positive(getattr(self, key), f"{where}.{key}")
        for key in self.NON_NEGATIVE:
            if getattr(self, key) is not None:
                _non_negative(getattr(self, key), f"{where}.{key}")
        seen: set[str] = set()
        for m in self.motors:
            mwhere = f"motor {self.name}.{m.axis}"
            if m.axis not in self.AXES:
                allowed = ", ".join(sorted(self.AXES)) or "none"
                raise ConfigError(
                    f"{mwhere}: unknown axis {m.axis!r} for a {self.kind}; allowed axes: {allowed}"
                )
            if m.axis in seen:
                raise ConfigError(f"{mwhere}: defined twice")
            seen.add(m.axis)
            if m.quantity != self.AXES[m.axis]:
                raise ConfigError(
                    f"{mwhere}: units {m.units!r} measure {m.quantity}, but this axis is an "
                    f"{self.AXES[m.axis]}"
                )
            m.validate(mwhere)
        missing = self.REQUIRED_AXES - seen
        if missing:
            raise ConfigError(f"{where}: a {self.kind} needs motors for {sorted(missing)}")


@dataclass(frozen=True, kw_only=True)
class Undulator(Element):
    """Planar (in-vacuum) undulator on a storage-ring straight section.

    Parameters
    ----------
    period_mm : float
        Magnetic period, mm.
    n_periods : int
        Number of periods.
    harmonic : int
        Harmonic used at the design energy (odd).
    field_coeffs : tuple of float
        ``(a [T], b, c)`` of ``B = a exp(-r (b - c r))``, r = gap/period.
    electron_energy_GeV : float
        Storage-ring energy, GeV.
    current_mA : float
        Nominal ring current, mA (flux scales with it).
    emittance_x_pm, emittance_y_pm : float
        Electron emittances, pm rad.
    beta_x_m, beta_y_m : float
        Beta functions at the source point, m.
    energy_spread : float
        Relative rms energy spread.
    acceptance_x_urad, acceptance_y_urad : float
        Half-widths of the emission cone sampled by the tracer, urad. Choose
        them just above what the front-end slits accept.
    band_eV : float
        Full width of the photon-energy band sampled around the monochromator
        energy, eV. Must exceed the monochromator bandpass.
    """

    kind: ClassVar[str] = "undulator"
    #: ``gap`` is the undulator's; the others are the storage ring's knobs at this
    #: source point, optional: a local orbit bump (position ``bump_x``/``bump_y``,
    #: angle ``bump_xp``/``bump_yp``) and a coupling knob (``coupling``, the relative
    #: change of the vertical emittance, which the horizontal gives up)
    AXES: ClassVar[dict[str, Quantity]] = {
        "gap": "length", "bump_x": "length", "bump_xp": "angle", "bump_y": "length",
        "bump_yp": "angle", "coupling": "ratio"}
    #: the ring's knobs: no hidden offset (an orbit bump is zero by definition of the
    #: ring's BPMs), never part of an alignment stage
    KNOB_AXES: ClassVar[frozenset[str]] = frozenset(
        {"bump_x", "bump_xp", "bump_y", "bump_yp", "coupling"})
    REQUIRED_AXES: ClassVar[frozenset[str]] = frozenset({"gap"})

    period_mm: float
    n_periods: int
    harmonic: int
    field_coeffs: tuple[float, float, float]
    electron_energy_GeV: float
    current_mA: float
    emittance_x_pm: float
    emittance_y_pm: float
    beta_x_m: float
    beta_y_m: float
    energy_spread: float
    acceptance_x_urad: float
    acceptance_y_urad: float
    band_eV: float

    @property
    def sigma_x_um(self) -> float:
        """Electron rms size, horizontal, um: sqrt(eps beta)."""
        return math.sqrt(self.emittance_x_pm * 1e-12 * self.beta_x_m) * 1e6

    @property
    def sigma_y_um(self) -> float:
        """Electron rms size, vertical, um."""
        return math.sqrt(self.emittance_y_pm * 1e-12 * self.beta_y_m) * 1e6

    @property
    def sigma_xp_urad(self) -> float:
        """Electron rms divergence, horizontal, urad: sqrt(eps / beta)."""
        return math.sqrt(self.emittance_x_pm * 1e-12 / self.beta_x_m) * 1e6

    @property
    def sigma_yp_urad(self) -> float:
        """Electron rms divergence, vertical, urad."""
        return math.sqrt(self.emittance_y_pm * 1e-12 / self.beta_y_m) * 1e6

    def coupling_scales(self, coupling: Any) -> tuple[Any, Any]:
        """Source-size multipliers ``(x, y)`` for a coupling-knob setting (a ratio,
        a float or an array of them).

        The knob moves emittance between the planes: the vertical emittance grows
        by the ratio *coupling* and the horizontal loses as much (their sum is
        fixed); sizes go as the square root of the emittances.
        """
        ey = self.emittance_y_pm * np.asarray(coupling, dtype=float)
        sx = np.sqrt(np.maximum(1e-6, 1.0 - ey / self.emittance_x_pm))
        sy = np.sqrt(np.maximum(1e-6, 1.0 + np.asarray(coupling, dtype=float)))
        if np.ndim(sx) == 0:
            return float(sx), float(sy)
        return sx, sy

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "period_mm", "electron_energy_GeV", "current_mA", "emittance_x_pm", "emittance_y_pm",
        "beta_x_m", "beta_y_m", "acceptance_x_urad", "acceptance_y_urad", "band_eV")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("energy_spread",)

    def validate(self) -> None:  # noqa: D102
        super().validate()
        w = f"element {self.name!r}"
        if self.n_periods < 1:
            raise ConfigError(f"{w}.n_periods must be >= 1, got {self.n_periods}")
        if self.harmonic < 1 or self.harmonic % 2 == 0:
            raise ConfigError(f"{w}.harmonic must be an odd integer >= 1, got {self.harmonic}")
        if len(self.field_coeffs) != 3:
            raise ConfigError(f"{w}.field_coeffs must be [a_T, b, c], got {self.field_coeffs!r}")
        for i, c in enumerate(self.field_coeffs):
            _finite(c, f"{w}.field_coeffs[{i}]")


@dataclass(frozen=True, kw_only=True)
class GaussianSource(Element):
    """Gaussian (geometric) source.

    Give either the photon sizes and divergences directly, or the electron
    emittances and beta functions (sizes = sqrt(eps beta), divergences =
    sqrt(eps / beta)); not both.

    Parameters
    ----------
    sigma_x_um, sigma_y_um : float, optional
        RMS source sizes, um.
    sigma_xp_urad, sigma_yp_urad : float, optional
        RMS divergences, urad.
    emittance_x_pm, emittance_y_pm, beta_x_m, beta_y_m : float, optional
        Electron emittances (pm rad) and beta functions (m).
    flux_ph_s : float
        Photon flux in the sampled band, photons/s.
    band_eV : float
        Full width of the sampled energy band (flat), eV.
    """

    kind: ClassVar[str] = "gaussian_source"
    POSITIVE: ClassVar[tuple[str, ...]] = ("flux_ph_s", "band_eV")

    sigma_x_um: float | None = None
    sigma_y_um: float | None = None
    sigma_xp_urad: float | None = None
    sigma_yp_urad: float | None = None
    emittance_x_pm: float | None = None
    emittance_y_pm: float | None = None
    beta_x_m: float | None = None
    beta_y_m: float | None = None
    flux_ph_s: float = 1e13
    band_eV: float = 10.0

    def sizes(self) -> tuple[float, float, float, float]:
        """``(sigma_x_um, sigma_y_um, sigma_xp_urad, sigma_yp_urad)``."""
        if self.sigma_x_um is not None:
            return (self.sigma_x_um, self.sigma_y_um, self.sigma_xp_urad,  # type: ignore[return-value]
                    self.sigma_yp_urad)
        ex, ey = self.emittance_x_pm * 1e-12, self.emittance_y_pm * 1e-12  # type: ignore[operator]
        bx, by = self.beta_x_m, self.beta_y_m
        return (math.sqrt(ex * bx) * 1e6, math.sqrt(ey * by) * 1e6,  # type: ignore[operator]
                math.sqrt(ex / bx) * 1e6, math.sqrt(ey / by) * 1e6)  # type: ignore[operator]

    def validate(self) -> None:  # noqa: D102
        super().validate()
        w = f"element {self.name!r}"
        direct = ("sigma_x_um", "sigma_y_um", "sigma_xp_urad", "sigma_yp_urad")
        derived = ("emittance_x_pm", "emittance_y_pm", "beta_x_m", "beta_y_m")
        has_d = [getattr(self, k) is not None for k in direct]
        has_e = [getattr(self, k) is not None for k in derived]
        if all(has_d) and not any(has_e):
            keys = direct
        elif all(has_e) and not any(has_d):
            keys = derived
        else:
            raise ConfigError(
                f"{w}: give either all of {list(direct)} or all of {list(derived)}, not a mix"
            )
        for k in keys:
            _non_negative(getattr(self, k), f"{w}.{k}")


@dataclass(frozen=True, kw_only=True)
class Slits(Element):
    """Four-blade slits. Gap and centre axes in mm, in the plane normal to the beam."""

    kind: ClassVar[str] = "slits"
    AXES: ClassVar[dict[str, Quantity]] = {
        "hgap": "length", "vgap": "length", "hcen": "length", "vcen": "length"}
    REQUIRED_AXES: ClassVar[frozenset[str]] = frozenset({"hgap", "vgap"})


@dataclass(frozen=True, kw_only=True)
class Aperture(Element):
    """Fixed aperture (rectangular or round), optionally on x/y translations.

    Parameters
    ----------
    shape : {"rect", "round"}
    width_mm, height_mm : float
        Opening for ``rect``; for ``round`` *width_mm* is the diameter.
    """

    kind: ClassVar[str] = "aperture"
    AXES: ClassVar[dict[str, Quantity]] = {"x": "length", "y": "length"}

    POSITIVE: ClassVar[tuple[str, ...]] = ("width_mm", "height_mm")

    shape: Literal["rect", "round"] = "rect"
    width_mm: float = 1.0
    height_mm: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Mirror(Element):
    """Grazing-incidence mirror.

    Parameters
    ----------
    shape : {"flat", "cylindrical", "elliptical", "toroidal"}
        Figure. ``elliptical`` is an elliptical cylinder (KB mirror).
    deflection : {"up", "down", "left", "right"}
        Direction the mirror deflects the beam, seen looking downstream.
    grazing_mrad : float
        Design grazing angle, mrad.
    length_mm, width_mm : float
        Optical surface, mm.
    coating : MetalCoating or MultilayerCoating
    radius_m : float, optional
        Meridional radius, m (``cylindrical`` and ``toroidal``); ``flat`` has none.
    sagittal_radius_mm : float, optional
        Sagittal radius, mm (``toroidal`` only).
    p_m, q_m : float, optional
        Source and focal distances, m (``elliptical``). *p_m* defaults to the
        optical path length from the source.

    Motor axes: ``pitch`` (angle added to the grazing angle), ``roll`` and
    ``yaw`` (angles about the beam and the surface normal), ``height``
    (translation along the surface normal), ``lateral`` (translation across
    the surface) and ``bend``. For ``elliptical`` mirrors ``bend`` is the
    focal distance q the bender is set to (a length, usually mm). For the
    others it is the bender sagitta over the mirror length (a length, usually
    um), which adds a meridional curvature ``8 s / L^2``.
    """

    kind: ClassVar[str] = "mirror"
    AXES: ClassVar[dict[str, Quantity]] = {
        "pitch": "angle", "roll": "angle", "yaw": "angle",
        "height": "length", "lateral": "length", "bend": "length"}

    shape: Literal["flat", "cylindrical", "elliptical", "toroidal"]
    deflection: Literal["up", "down", "left", "right"]
    grazing_mrad: float
    length_mm: float
    width_mm: float
    coating: Coating
    radius_m: float | None = None
    sagittal_radius_mm: float | None = None
    p_m: float | None = None
    q_m: float | None = None

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "grazing_mrad", "length_mm", "width_mm", "radius_m", "sagittal_radius_mm", "p_m", "q_m")

    def validate(self) -> None:  # noqa: D102
        super().validate()
        w = f"element {self.name!r}"
        if self.shape in ("cylindrical", "toroidal") and self.radius_m is None:
            raise ConfigError(f"{w}: a {self.shape} mirror needs radius_m")
        if self.shape == "toroidal" and self.sagittal_radius_mm is None:
            raise ConfigError(f"{w}: a toroidal mirror needs sagittal_radius_mm")
        if self.shape == "elliptical" and self.q_m is None:
            raise ConfigError(f"{w}: an elliptical mirror needs q_m (focal distance)")
        if self.shape != "elliptical" and (self.p_m is not None or self.q_m is not None):
            raise ConfigError(f"{w}: p_m/q_m apply to elliptical mirrors only")
        if self.shape == "flat" and self.radius_m is not None:
            raise ConfigError(f"{w}: a flat mirror has no radius_m; use shape='cylindrical'")


@dataclass(frozen=True, kw_only=True)
class CrystalMonochromator(Element):
    """Fixed-exit double-crystal monochromator, deflecting up then down.

    Parameters
    ----------
    crystal : {"Si111", "Si220", "Si311", "Si333"}
    temperature_K : float
        Crystal temperature (77 K for LN2-cooled crystals).
    fixed_exit_mm : float
        Vertical offset of the exit beam, mm.
    length_mm, width_mm : float
        Crystal surfaces, mm (the second crystal is twice as long).

    Motor axes: ``bragg`` (Bragg angle of both crystals, usually deg),
    ``pitch2`` and ``roll2`` (second-crystal angles, usually urad) and
    ``perp`` (gap between the crystal surfaces, mm; fixed exit needs
    ``perp = fixed_exit / (2 cos bragg)``).
    """

    kind: ClassVar[str] = "dcm"
    AXES: ClassVar[dict[str, Quantity]] = {
        "bragg": "angle", "pitch2": "angle", "roll2": "angle", "perp": "length"}
    REQUIRED_AXES: ClassVar[frozenset[str]] = frozenset({"bragg"})

    POSITIVE: ClassVar[tuple[str, ...]] = ("temperature_K", "fixed_exit_mm", "length_mm",
                                           "width_mm")

    crystal: Literal["Si111", "Si220", "Si311", "Si333"] = "Si111"
    temperature_K: float = 77.0
    fixed_exit_mm: float = 20.0
    length_mm: float = 60.0
    width_mm: float = 30.0


@dataclass(frozen=True, kw_only=True)
class MultilayerMonochromator(Element):
    """Fixed-exit double-multilayer monochromator (DMM). Axes as for a DCM."""

    kind: ClassVar[str] = "dmm"
    AXES: ClassVar[dict[str, Quantity]] = CrystalMonochromator.AXES
    REQUIRED_AXES: ClassVar[frozenset[str]] = frozenset({"bragg"})

    coating: MultilayerCoating
    fixed_exit_mm: float = 10.0
    length_mm: float = 200.0
    width_mm: float = 30.0

    POSITIVE: ClassVar[tuple[str, ...]] = ("fixed_exit_mm", "length_mm", "width_mm")

    def validate(self) -> None:  # noqa: D102
        super().validate()
        if not isinstance(self.coating, MultilayerCoating):
            raise ConfigError(f"element {self.name!r}.coating must be a multilayer")


@dataclass(frozen=True, kw_only=True)
class CompoundRefractiveLens(Element):
    """Stack of bi-concave paraboloid lenses (CRL).

    Parameters
    ----------
    material : str
        Lens material symbol (``Be``).
    density_g_cm3 : float
    radius_um : float
        Apex radius of curvature, um.
    n_lenses : int
    aperture_mm : float
        Geometric aperture 2 R0, mm.
    thickness_um : float
        Web thickness between the apexes, um.
    """

    kind: ClassVar[str] = "crl"
    AXES: ClassVar[dict[str, Quantity]] = {"x": "length", "y": "length"}

    material: str = "Be"
    density_g_cm3: float = 1.848
    radius_um: float = 50.0
    n_lenses: int = 10
    aperture_mm: float = 0.45
    thickness_um: float = 30.0

    POSITIVE: ClassVar[tuple[str, ...]] = ("density_g_cm3", "radius_um", "aperture_mm",
                                           "thickness_um")

    def validate(self) -> None:  # noqa: D102
        super().validate()
        if self.n_lenses < 1:
            raise ConfigError(f"element {self.name!r}.n_lenses must be >= 1, got {self.n_lenses}")


@dataclass(frozen=True, kw_only=True)
class _ImagingDiagnostic(Element):
    """A diagnostic with a pixelated field of view.

    Parameters
    ----------
    pixels : tuple of int
        ``(nx, ny)`` pixel counts.
    pixel_um : float
        Pixel pitch, um. Field of view = pixels x pixel_um, centred on the
        design beam axis; statistics are computed inside it only.
    """

    POSITIVE: ClassVar[tuple[str, ...]] = ("pixel_um",)

    pixels: tuple[int, int] = (256, 256)
    pixel_um: float = 10.0

    @property
    def fov_um(self) -> tuple[float, float]:
        """Field of view ``(width, height)``, um."""
        return self.pixels[0] * self.pixel_um, self.pixels[1] * self.pixel_um

    def validate(self) -> None:  # noqa: D102
        super().validate()
        w = f"element {self.name!r}"
        if len(self.pixels) != 2 or any(int(p) != p or p < 2 for p in self.pixels):
            raise ConfigError(f"{w}.pixels must be [nx, ny] with integers >= 2, got {self.pixels}")


@dataclass(frozen=True, kw_only=True)
class Screen(_ImagingDiagnostic):
    """Scintillator screen with a camera: image, flux, centroid and size."""

    kind: ClassVar[str] = "screen"


@dataclass(frozen=True, kw_only=True)
class BeamPositionMonitor(Element):
    """X-ray BPM (e.g. a diamond quadrant): position and intensity, no image.

    Parameters
    ----------
    fov_mm : float
        Full width of the sensitive area, mm.
    position_noise_um : float
        RMS position noise at 1e12 ph/s (scales as 1/sqrt(flux)), um.
    """

    kind: ClassVar[str] = "bpm"

    POSITIVE: ClassVar[tuple[str, ...]] = ("fov_mm",)
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("position_noise_um",)

    fov_mm: float = 2.0
    position_noise_um: float = 0.1


@dataclass(frozen=True, kw_only=True)
class IonChamber(Element):
    """Ion chamber: intensity only (position and size read as null).

    Parameters
    ----------
    aperture_mm : float
        Full width of the entrance window, mm.
    """

    kind: ClassVar[str] = "ion_chamber"

    POSITIVE: ClassVar[tuple[str, ...]] = ("aperture_mm",)

    aperture_mm: float = 10.0


@dataclass(frozen=True, kw_only=True)
class SampleStage(_ImagingDiagnostic):
    """Sample stage; the beam is observed in the sample's own frame.

    Motor axes ``x``, ``y`` (transverse, usually um) and ``z`` (along the
    beam, usually mm). Moving the stage by +x moves the beam by -x in the
    sample's frame.
    """

    kind: ClassVar[str] = "sample"
    AXES: ClassVar[dict[str, Quantity]] = {"x": "length", "y": "length", "z": "length"}


@dataclass(frozen=True, kw_only=True)
class Detector(_ImagingDiagnostic):
    """Area detector (the beamline's final observation point).

    Parameters
    ----------
    readout_noise_ph : float
        RMS readout noise per pixel and frame, in photons.
    exposure_s : float
        Default exposure time of a frame, s.
    """

    kind: ClassVar[str] = "detector"
    AXES: ClassVar[dict[str, Quantity]] = {"x": "length", "y": "length"}

    POSITIVE: ClassVar[tuple[str, ...]] = ("pixel_um", "exposure_s")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("readout_noise_ph",)

    readout_noise_ph: float = 0.0
    exposure_s: float = 0.1


ELEMENT_TYPES: dict[str, type[Element]] = {
    cls.kind: cls for cls in (
        Undulator, GaussianSource, Slits, Aperture, Mirror, CrystalMonochromator,
        MultilayerMonochromator, CompoundRefractiveLens, Screen, BeamPositionMonitor,
        IonChamber, SampleStage, Detector)
}
SOURCE_TYPES = ("undulator", "gaussian_source")
DIAGNOSTIC_TYPES = ("screen", "bpm", "ion_chamber", "sample", "detector")


# --------------------------------------------------------------------------- disturbances
@dataclass(frozen=True, kw_only=True)
class ThermalDrift:
    """Slow thermal drift of motorised angles or positions.

    Parameters
    ----------
    enabled : bool
    amplitudes : dict of str to float
        Peak drift per motor (``element.axis`` -> value in that motor's units).
    period_s : float
        Period of the slowest drift component, s (heat-load cycles follow the
        top-up and the gap changes: tens of minutes to hours).
    """

    enabled: bool = True
    amplitudes: Mapping[str, float] = field(default_factory=dict)
    period_s: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class Vibration:
    """Random jitter on every reading (e.g. mirror and crystal vibrations).

    Parameters
    ----------
    enabled : bool
    rms : dict of str to float
        RMS jitter per motor (``element.axis`` -> value in that motor's units).
    """

    enabled: bool = True
    rms: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SourceGapDependence:
    """How the photon source moves and breathes with the undulator gap.

    The changes are smooth, non-linear functions of the gap, drawn from the
    seed, with a hysteresis term that depends on the direction of the last
    gap motion. Amplitudes are peak values across the whole gap range.

    Parameters
    ----------
    enabled : bool
    position_x_um, position_y_um : float
        Source-position change, um.
    pointing_x_urad, pointing_y_urad : float
        Pointing change, urad.
    size_x_pct, size_y_pct : float
        Relative source-size change, percent.
    hysteresis : float
        Fraction of each amplitude that flips sign with the gap direction.
    neighbour_scale : float
        The neighbouring insertion device's gap perturbs this source too (through
        the closed orbit and the coupling of the ring): its own seeded shapes, with
        amplitudes this fraction of the ones above. 0 switches it off.
    neighbour_gap_low_mm, neighbour_gap_high_mm, neighbour_gap_mm : float
        The neighbour's gap range and its gap at rest, mm (no change there).
    """

    enabled: bool = True
    position_x_um: float = 2.0
    position_y_um: float = 0.5
    pointing_x_urad: float = 1.0
    pointing_y_urad: float = 0.5
    size_x_pct: float = 2.0
    size_y_pct: float = 3.0
    hysteresis: float = 0.15
    neighbour_scale: float = 0.3
    neighbour_gap_low_mm: float = 6.0
    neighbour_gap_high_mm: float = 30.0
    neighbour_gap_mm: float = 12.0


@dataclass(frozen=True, kw_only=True)
class RingCurrent:
    """Ring current: decay, top-up and beam loss.

    Parameters
    ----------
    enabled : bool
    lifetime_h : float
        Beam lifetime, h (exponential decay between top-ups).
    topup_period_s : float
        Interval between top-up injections, s; 0 for decay mode without top-up.
    beam_loss_per_h : float
        Rate of spontaneous beam losses (Poisson), per hour.
    refill_s : float
        Time from a beam loss to a refilled ring, s.
    """

    enabled: bool = True
    lifetime_h: float = 20.0
    topup_period_s: float = 3600.0
    beam_loss_per_h: float = 0.0
    refill_s: float = 600.0


@dataclass(frozen=True, kw_only=True)
class MotorImperfections:
    """Switches for the per-motor backlash and encoder errors of :class:`MotorSpec`."""

    backlash: bool = True
    encoder_error: bool = True


@dataclass(frozen=True, kw_only=True)
class Disturbances:
    """All disturbances of a beamline; each is seeded and switchable."""

    thermal_drift: ThermalDrift = field(default_factory=ThermalDrift)
    vibration: Vibration = field(default_factory=Vibration)
    source_gap: SourceGapDependence = field(default_factory=SourceGapDependence)
    ring: RingCurrent = field(default_factory=RingCurrent)
    motors: MotorImperfections = field(default_factory=MotorImperfections)


# --------------------------------------------------------------------------- beamline
@dataclass(frozen=True, kw_only=True)
class BeamlineDescription:
    """A whole beamline: elements in beam order, design energy and disturbances.

    Parameters
    ----------
    name : str
    description : str
    energy_eV : float
        Design photon energy, eV.
    elements : tuple of Element
        In beam order, strictly increasing ``y_m``; the first is the source and
        exactly one is a ``detector``.
    disturbances : Disturbances
    """

    name: str
    energy_eV: float
    elements: tuple[Element, ...]
    disturbances: Disturbances = field(default_factory=Disturbances)
    description: str = ""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ lookup
    @property
    def source(self) -> Element:
        """The source element (the first)."""
        return self.elements[0]

    @property
    def detector(self) -> Detector:
        """The area detector."""
        return next(e for e in self.elements if isinstance(e, Detector))  # type: ignore[return-value]

    @property
    def diagnostics(self) -> tuple[Element, ...]:
        """Every observation point except the detector, in beam order."""
        return tuple(e for e in self.elements
                     if e.kind in DIAGNOSTIC_TYPES and e.kind != "detector")

    def element(self, name: str) -> Element:
        """The element called *name*.

        Raises
        ------
        UnknownNameError
            With the list of element names.
        """
        for e in self.elements:
            if e.name == name:
                return e
        raise UnknownNameError(
            f"unknown element {name!r}; elements are: {', '.join(e.name for e in self.elements)}"
        )

    @functools.cached_property
    def _motor_table(self) -> dict[str, MotorSpec]:
        # built once per (immutable) description; a plain dict, so it pickles
        return {f"{e.name}.{m.axis}": m for e in self.elements for m in e.motors}

    @property
    def motors(self) -> Mapping[str, MotorSpec]:
        """All motors, ``element.axis`` -> spec, in beam order (a read-only view)."""
        return MappingProxyType(self._motor_table)

    def knob_motors(self) -> frozenset[str]:
        """Motors that are the storage ring's knobs at the source, not the beamline's
        (see :attr:`Undulator.KNOB_AXES`): no hidden errors, in no alignment stage."""
        return frozenset(f"{e.name}.{m.axis}" for e in self.elements if isinstance(e, Undulator)
                         for m in e.motors if m.axis in Undulator.KNOB_AXES)

    def motor(self, name: str) -> MotorSpec:
        """The motor called ``element.axis``.

        Raises
        ------
        UnknownNameError
            Naming the motor and listing the known ones.
        """
        motors = self.motors
        if name not in motors:
            raise UnknownNameError(
                f"unknown motor {name!r}; motors are named element.axis, one of: "
                f"{', '.join(motors)}"
            )
        return motors[name]

    def design_positions(self) -> dict[str, float]:
        """Design (ideal, aligned) position of every motor, in motor units."""
        return {name: m.position for name, m in self.motors.items()}

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check the whole beamline; raise :class:`ConfigError` naming what is wrong."""
        _positive(self.energy_eV, "energy_eV")
        if not self.elements:
            raise ConfigError("a beamline needs at least a source and a detector")
        names: set[str] = set()
        for e in self.elements:
            if e.name in names:
                raise ConfigError(f"element name {e.name!r} is used twice; names must be unique")
            names.add(e.name)
            e.validate()
        if self.elements[0].kind not in SOURCE_TYPES:
            raise ConfigError(
                f"the first element must be a source ({' or '.join(SOURCE_TYPES)}), "
                f"got {self.elements[0].kind!r} ({self.elements[0].name!r})"
            )
        extra_sources = [e.name for e in self.elements[1:] if e.kind in SOURCE_TYPES]
        if extra_sources:
            raise ConfigError(f"only one source is allowed; also found {extra_sources}")
        detectors = [e.name for e in self.elements if e.kind == "detector"]
        if len(detectors) != 1:
            raise ConfigError(f"exactly one element of type 'detector' is needed, got {detectors}")
        for a, b in zip(self.elements, self.elements[1:], strict=False):
            if not b.y_m > a.y_m:
                raise ConfigError(
                    f"elements must be in beam order with increasing y_m: {b.name!r} "
                    f"(y_m={b.y_m}) follows {a.name!r} (y_m={a.y_m})"
                )
        motors = self.motors
        d = self.disturbances
        for label, table in (("disturbances.thermal_drift.amplitudes", d.thermal_drift.amplitudes),
                             ("disturbances.vibration.rms", d.vibration.rms)):
            for mname, v in table.items():
                if mname not in motors:
                    raise ConfigError(
                        f"{label}: unknown motor {mname!r}; motors are: {', '.join(motors)}")
                _non_negative(v, f"{label}[{mname!r}]")
        _positive(d.thermal_drift.period_s, "disturbances.thermal_drift.period_s")
        sg = d.source_gap
        for k in ("position_x_um", "position_y_um", "pointing_x_urad", "pointing_y_urad",
                  "size_x_pct", "size_y_pct"):
            _non_negative(getattr(sg, k), f"disturbances.source_gap.{k}")
        _non_negative(sg.neighbour_scale, "disturbances.source_gap.neighbour_scale")
        if not sg.neighbour_gap_low_mm <= sg.neighbour_gap_mm <= sg.neighbour_gap_high_mm or \
                not sg.neighbour_gap_low_mm < sg.neighbour_gap_high_mm:
            raise ConfigError(
                "disturbances.source_gap needs neighbour_gap_low_mm <= neighbour_gap_mm <= "
                f"neighbour_gap_high_mm (low < high), got {sg.neighbour_gap_low_mm}, "
                f"{sg.neighbour_gap_mm}, {sg.neighbour_gap_high_mm}")
        if not 0 <= sg.hysteresis <= 1:
            raise ConfigError(
                f"disturbances.source_gap.hysteresis must lie in [0, 1], got {sg.hysteresis}")
        _positive(d.ring.lifetime_h, "disturbances.ring.lifetime_h")
        _non_negative(d.ring.topup_period_s, "disturbances.ring.topup_period_s")
        _non_negative(d.ring.beam_loss_per_h, "disturbances.ring.beam_loss_per_h")
        _positive(d.ring.refill_s, "disturbances.ring.refill_s")
