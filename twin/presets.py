"""Load beamline descriptions from TOML presets.

A preset is a TOML file with top-level keys ``name``, ``description`` and
``energy_eV``, an array of ``[[elements]]`` tables (each with a ``type`` and
its ``[[elements.motors]]``), and an optional ``[disturbances]`` table. The
default preset, a realistic ESRF-EBS-like nano-focusing beamline, ships inside
the package (``twin/presets/default.toml``).

Loading is strict: an unknown key, a missing key, a value of the wrong type or
an unknown element type raises :class:`~twin.errors.ConfigError` naming the key
(with its path in the file) and what is allowed. Nothing gets a silent default
except the keys documented with one.

Motors may omit ``position`` where the design position follows from the
design energy: an undulator ``gap`` (the gap that puts the chosen harmonic at
the energy), a DCM ``bragg`` angle and ``perp`` (fixed exit), and an elliptical
mirror's ``bend`` (its focal distance q). Offset-like axes (pitch, roll, yaw,
height, lateral, centres, stage translations) default to 0.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from twin import physics
from twin.description import (
    ELEMENT_TYPES,
    MATERIAL_DENSITIES_G_CM3,
    BeamlineDescription,
    CrystalMonochromator,
    Disturbances,
    Element,
    MetalCoating,
    Mirror,
    MotorImperfections,
    MotorSpec,
    MultilayerCoating,
    RingCurrent,
    SourceGapDependence,
    ThermalDrift,
    Undulator,
    Vibration,
)
from twin.errors import ConfigError
from twin.units import from_internal, to_internal

__all__ = ["load_preset", "default_preset", "preset_from_dict", "at_energy",
           "DEFAULT_PRESET_NAME"]

DEFAULT_PRESET_NAME = "default.toml"

#: axes whose design position must be given in the preset
_POSITION_REQUIRED = {("slits", "hgap"), ("slits", "vgap")}


def default_preset() -> BeamlineDescription:
    """The built-in default beamline (``twin/presets/default.toml``)."""
    text = resources.files("twin").joinpath("presets", DEFAULT_PRESET_NAME).read_text("utf-8")
    return preset_from_dict(_parse_toml(text, DEFAULT_PRESET_NAME))


def load_preset(path: str | Path | None = None) -> BeamlineDescription:
    """Load a beamline from a TOML file, or the default beamline if *path* is None.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid TOML, or describes an invalid beamline.
    """
    if path is None:
        return default_preset()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"preset file {str(p)!r} does not exist")
    try:
        text = p.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"preset file {str(p)!r} is not a text (UTF-8 TOML) file: byte "
                          f"{exc.start} is {exc.object[exc.start:exc.start + 1]!r}") from None
    except OSError as exc:
        raise ConfigError(f"preset file {str(p)!r} cannot be read: {exc.strerror or exc}"
                          ) from None
    return preset_from_dict(_parse_toml(text, str(p)))


def at_energy(desc: BeamlineDescription, energy_eV: float) -> BeamlineDescription:
    """The same beamline set up for another photon energy.

    The crystal monochromator's Bragg angle and crystal gap are derived anew, and
    the undulator gap follows the energy: the on-axis formula at the new energy
    plus the correction the preset's own gap carries at its design energy (a gap
    table measured at one energy, transferred). Everything else is unchanged.

    Parameters
    ----------
    desc : BeamlineDescription
    energy_eV : float
        Photon energy, eV.

    Raises
    ------
    ConfigError
        For a non-finite or non-positive energy, an energy outside the reach of a
        motor's limits, or a multilayer monochromator (its Bragg position must be
        given explicitly).
    """
    if isinstance(energy_eV, bool) or not isinstance(energy_eV, (int, float)) or \
            not (math.isfinite(energy_eV) and energy_eV > 0):
        raise ConfigError(f"energy_eV must be a finite number > 0, got {energy_eV!r}")
    energy_eV = float(energy_eV)
    if energy_eV == desc.energy_eV:
        return desc
    elements = []
    for e in desc.elements:
        if e.kind == "dmm":
            raise ConfigError(f"element {e.name!r}: a multilayer monochromator's Bragg position "
                              f"is set in the preset; at_energy() cannot re-derive it")
        motors = []
        for m in e.motors:
            new = None
            if isinstance(e, Undulator) and m.axis == "gap":
                old = from_internal(_design_value_internal(e, "gap", desc.energy_eV), m.units)
                new = m.position - old + from_internal(
                    _design_value_internal(e, "gap", energy_eV), m.units)
            elif isinstance(e, CrystalMonochromator) and m.axis in ("bragg", "perp"):
                new = from_internal(_design_value_internal(e, m.axis, energy_eV), m.units)
            if new is not None:
                new = round(round(new / m.resolution) * m.resolution, 10)
                if not m.low <= new <= m.high:
                    raise ConfigError(f"motor {e.name}.{m.axis}: {energy_eV:g} eV needs "
                                      f"{new:g} {m.units}, outside its limits [{m.low:g}, "
                                      f"{m.high:g}]")
                m = dataclasses.replace(m, position=new)
            motors.append(m)
        elements.append(dataclasses.replace(e, motors=tuple(motors)))
    return dataclasses.replace(desc, energy_eV=energy_eV, elements=tuple(elements))


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None


# --------------------------------------------------------------------------- generic conversion
def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML value to the annotated type *tp*, or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of "
                          f"the allowed forms: " + "; ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be finite, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be an array, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args,
                                                                                   strict=True)))
    if origin in (Mapping, dict, typing.Mapping):
        _, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return {str(k): _convert(v, vt, f"{where}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - programming error


def _build(cls: type, table: dict[str, Any], where: str, skip: tuple[str, ...] = (),
           prebuilt: dict[str, Any] | None = None) -> Any:
    """Build dataclass *cls* from *table*, strictly; *prebuilt* values pass unconverted."""
    prebuilt = prebuilt or {}
    hints = typing.get_type_hints(cls)
    flds = {f.name: f for f in dataclasses.fields(cls)
            if f.init and f.name not in skip and f.name not in prebuilt}
    unknown = sorted(set(table) - set(flds))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys are {sorted(flds)}"
        )
    kwargs: dict[str, Any] = {}
    for name, f in flds.items():
        if name in table:
            kwargs[name] = _convert(table[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    return cls(**kwargs, **prebuilt)


# --------------------------------------------------------------------------- coatings
def _coating(value: Any, where: str) -> MetalCoating | MultilayerCoating:
    if isinstance(value, str):
        value = {"material": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a material symbol (e.g. \"Rh\") or a table")
    if "material" in value:
        table = dict(value)
        if "density_g_cm3" not in table:
            sym = table["material"]
            if sym not in MATERIAL_DENSITIES_G_CM3:
                raise ConfigError(
                    f"{where}: no built-in density for {sym!r}; give density_g_cm3 or use one of "
                    f"{sorted(MATERIAL_DENSITIES_G_CM3)}")
            table["density_g_cm3"] = MATERIAL_DENSITIES_G_CM3[sym]
        return _build(MetalCoating, table, where)
    if "top" in value:
        table = dict(value)
        for layer in ("top", "bottom"):
            key = f"{layer}_density_g_cm3"
            if key not in table and table.get(layer) in MATERIAL_DENSITIES_G_CM3:
                table[key] = MATERIAL_DENSITIES_G_CM3[table[layer]]
        return _build(MultilayerCoating, table, where)
    raise ConfigError(
        f"{where}: a coating table needs 'material' (metal) or 'top'/'bottom' (multilayer)")


# --------------------------------------------------------------------------- elements
def _element(table: dict[str, Any], index: int) -> Element:
    where = f"elements[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    if "type" not in table:
        raise ConfigError(f"{where}: missing key 'type'; allowed types are {sorted(ELEMENT_TYPES)}")
    kind = table["type"]
    if kind not in ELEMENT_TYPES:
        raise ConfigError(
            f"{where}: unknown element type {kind!r}; allowed types are {sorted(ELEMENT_TYPES)}")
    cls = ELEMENT_TYPES[kind]
    name = table.get("name", f"#{index}")
    where = f"elements[{index}] ({name!r})"
    body = {k: v for k, v in table.items() if k not in ("type", "motors", "coating")}
    motors_raw = table.get("motors", [])
    if not isinstance(motors_raw, list):
        raise ConfigError(f"{where}.motors must be an array of tables ([[elements.motors]])")
    motors = []
    for j, mt in enumerate(motors_raw):
        mwhere = f"{where}.motors[{j}]"
        if not isinstance(mt, dict):
            raise ConfigError(f"{mwhere} must be a table")
        mt = dict(mt)
        derived = "position" not in mt
        if derived:
            axis = mt.get("axis")
            if (kind, axis) in _POSITION_REQUIRED:
                raise ConfigError(f"{mwhere}: missing required key 'position' for {kind}.{axis}")
            mt["position"] = 0.0
        motor = _build(MotorSpec, mt, mwhere)
        if derived:  # filled in by _resolve_positions once the element is known
            motor = dataclasses.replace(motor, position=math.nan)
        motors.append(motor)
    prebuilt: dict[str, Any] = {}
    if "coating" in table:
        if "coating" not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"{where}: a {kind} has no 'coating'")
        prebuilt["coating"] = _coating(table["coating"], f"{where}.coating")
    elif "coating" in {f.name for f in dataclasses.fields(cls)}:
        raise ConfigError(f"{where}: missing required key 'coating'")
    element = _build(cls, body, where, skip=("motors",), prebuilt=prebuilt)
    return dataclasses.replace(element, motors=tuple(motors))


def _design_value_internal(e: Element, axis: str, energy_eV: float) -> float:
    """Design position (mm or rad) of an axis whose preset omitted ``position``."""
    if isinstance(e, Undulator) and axis == "gap":
        m = e.motor("gap")
        if m is None:
            raise ConfigError(f"element {e.name!r}: an undulator needs a 'gap' motor")
        lo, hi = to_internal(m.low, m.units), to_internal(m.high, m.units)
        return physics.gap_for_energy_mm(energy_eV, e.period_mm, e.field_coeffs,
                                         e.electron_energy_GeV, e.harmonic, (lo, hi))
    if isinstance(e, CrystalMonochromator) and axis in ("bragg", "perp"):
        theta = physics.bragg_angle_rad(
            energy_eV, physics.crystal_d_spacing_A(e.crystal, e.temperature_K))
        return theta if axis == "bragg" else e.fixed_exit_mm / (2.0 * math.cos(theta))
    if e.kind == "dmm" and axis == "bragg":
        raise ConfigError(
            f"motor {e.name}.bragg: a multilayer monochromator needs an explicit 'position' "
            f"(its reflectivity peak is shifted from the kinematic angle by refraction)")
    if e.kind == "dmm" and axis == "perp":
        bragg = e.motor("bragg")
        theta = to_internal(bragg.position, bragg.units)  # type: ignore[union-attr]
        return e.fixed_exit_mm / (2.0 * math.cos(theta))  # type: ignore[attr-defined]
    if isinstance(e, Mirror) and axis == "bend":
        if e.shape == "elliptical":
            return e.q_m * 1e3  # type: ignore[operator]
        return 0.0
    return 0.0


def _resolve_positions(elements: list[Element], energy_eV: float) -> list[Element]:
    out = []
    for e in elements:
        # validate the element first (derived positions stand in at the low limit),
        # so that a bad parameter is reported as such, not as an unreachable energy
        dataclasses.replace(e, motors=tuple(
            dataclasses.replace(m, position=m.low) if math.isnan(m.position) else m
            for m in e.motors)).validate()
        motors = []
        for m in e.motors:
            if math.isnan(m.position):
                value = from_internal(_design_value_internal(e, m.axis, energy_eV), m.units)
                # round to the motor resolution, as a real motor would sit
                value = round(round(value / m.resolution) * m.resolution, 10)
                m = dataclasses.replace(m, position=value)
            motors.append(m)
        out.append(dataclasses.replace(e, motors=tuple(motors)))
    return out


def _disturbances(table: Any) -> Disturbances:
    if table is None:
        return Disturbances()
    if not isinstance(table, dict):
        raise ConfigError("disturbances must be a table")
    parts = {"thermal_drift": ThermalDrift, "vibration": Vibration,
             "source_gap": SourceGapDependence, "ring": RingCurrent, "motors": MotorImperfections}
    unknown = sorted(set(table) - set(parts))
    if unknown:
        raise ConfigError(f"disturbances: unknown key {unknown[0]!r}; allowed keys are "
                          f"{sorted(parts)}")
    kwargs = {k: _build(cls, table[k], f"disturbances.{k}") for k, cls in parts.items()
              if k in table}
    return Disturbances(**kwargs)


def preset_from_dict(data: Mapping[str, Any]) -> BeamlineDescription:
    """Build and validate a :class:`BeamlineDescription` from parsed TOML."""
    allowed = {"name", "description", "energy_eV", "elements", "disturbances"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; allowed keys are "
                          f"{sorted(allowed)}")
    for key in ("name", "energy_eV", "elements"):
        if key not in data:
            raise ConfigError(f"missing required top-level key {key!r}")
    name = _convert(data["name"], str, "name")
    energy = _convert(data["energy_eV"], float, "energy_eV")
    if energy <= 0:
        raise ConfigError(f"energy_eV must be > 0, got {energy}")
    raw = data["elements"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("elements must be a non-empty array of tables ([[elements]])")
    elements = [_element(t, i) for i, t in enumerate(raw)]
    elements = _resolve_positions(elements, energy)
    return BeamlineDescription(
        name=name,
        description=_convert(data.get("description", ""), str, "description"),
        energy_eV=energy,
        elements=tuple(elements),
        disturbances=_disturbances(data.get("disturbances")),
    )
