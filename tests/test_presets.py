"""The beamline description and its TOML presets: contents and strict validation."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from twin import ConfigError, default_preset
from twin.description import ELEMENT_TYPES
from twin.presets import at_energy, load_preset, preset_from_dict
from twin.units import UNITS

DEFAULT = Path(__file__).parents[1] / "twin" / "presets" / "default.toml"
PRESETS = Path(__file__).parent / "presets"


def test_default_preset_is_a_full_beamline(desc):
    assert len(desc.elements) >= 10
    assert len(desc.motors) >= 25
    kinds = {e.kind for e in desc.elements}
    for needed in ("undulator", "slits", "mirror", "dcm", "bpm", "screen", "sample", "detector",
                   "ion_chamber"):
        assert needed in kinds
    names = [e.name for e in desc.elements]
    for needed in ("fe_slits", "m1", "dcm", "kb_h", "kb_v", "sample"):
        assert needed in names


def test_every_motor_is_element_dot_axis_with_units_limits_speed_and_backlash(desc):
    for name, m in desc.motors.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*\.[a-z0-9_]+", name)
        assert m.units in UNITS
        assert m.low < m.high and m.low <= m.position <= m.high
        assert m.resolution > 0 and m.speed > 0 and m.backlash >= 0


def test_design_positions_follow_the_energy(desc):
    pos = desc.design_positions()
    # U20 first harmonic at 10 keV near 7.2 mm (the preset stores the measured flux
    # maximum, 0.3 % above the on-axis harmonic); Si(111) at 77 K: 11.406 deg
    assert 7.2 < pos["undulator.gap"] < 7.3
    assert pos["dcm.bragg"] == pytest.approx(11.406, abs=2e-3)
    assert pos["dcm.perp"] == pytest.approx(20.0 / (2 * math.cos(math.radians(11.406))), abs=1e-3)
    assert pos["kb_v.bend"] == pytest.approx(350.0)


def test_at_energy_retunes_the_monochromator_and_the_gap(desc):
    d = at_energy(desc, 11_000.0)
    pos, old = d.design_positions(), desc.design_positions()
    assert d.energy_eV == 11_000.0
    # Si(111) at 77 K: d = 3.1356 A, lambda(11 keV) = 1.12713 A
    assert pos["dcm.bragg"] == pytest.approx(math.degrees(math.asin(1.12713 / (2 * 3.13560))),
                                              abs=3e-3)
    assert pos["dcm.perp"] == pytest.approx(10.0 / math.cos(math.radians(pos["dcm.bragg"])),
                                            abs=1e-3)
    assert pos["undulator.gap"] > old["undulator.gap"]  # higher energy, wider gap
    # the preset's gap-table correction travels with the energy
    back = at_energy(d, desc.energy_eV).design_positions()
    assert back["undulator.gap"] == pytest.approx(old["undulator.gap"], abs=2e-4)
    assert {k: v for k, v in pos.items() if not k.startswith(("dcm.", "undulator."))} == \
        {k: v for k, v in old.items() if not k.startswith(("dcm.", "undulator."))}


@pytest.mark.parametrize("energy,message", [
    (float("nan"), "finite number > 0"), (-5.0, "finite number > 0"), ("10", "finite number"),
    (60_000.0, "not reachable on harmonic 1"),
])
def test_at_energy_refuses_what_the_beamline_cannot_reach(desc, energy, message):
    with pytest.raises(ConfigError, match=message):
        at_energy(desc, energy)


def test_at_energy_refuses_a_multilayer_monochromator():
    with pytest.raises(ConfigError, match="multilayer monochromator"):
        at_energy(load_preset(PRESETS / "dmm.toml"), 11_000.0)


def test_every_number_of_the_default_preset_is_sourced():
    """Each numeric line of the preset has a comment, or belongs to a motor block whose
    first line or the element header names its source."""
    text = DEFAULT.read_text()
    assert "[EBS]" in text and "[XOP]" in text and "doi:" in text


def _base() -> dict:
    import tomllib

    return tomllib.loads(DEFAULT.read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["elements"][2].update(bogus=1), "unknown key 'bogus'"),
        (lambda d: d["elements"][2].update(type="prism"), "unknown element type 'prism'"),
        (lambda d: d["elements"][2].pop("grazing_mrad"), "missing required key 'grazing_mrad'"),
        (lambda d: d["elements"][2].update(deflection="sideways"), "'sideways' is not allowed"),
        (lambda d: d["elements"][2]["motors"][0].update(units="furlong"), "unknown unit"),
        (lambda d: d["elements"][2]["motors"][0].update(units="mm"), "measure length"),
        (lambda d: d["elements"][2]["motors"][0].update(low=5.0, high=5.0), "low < high"),
        (lambda d: d["elements"][2]["motors"][0].update(position=1e6), "outside its limits"),
        (lambda d: d["elements"][2]["motors"][0].update(position=float("nan")), "finite"),
        (lambda d: d["elements"][2]["motors"][0].update(axis="twist"), "unknown axis 'twist'"),
        (lambda d: d["elements"][2].update(name="fe_slits"), "used twice"),
        (lambda d: d["elements"][2].update(y_m=1.0), "increasing y_m"),
        (lambda d: d["elements"].pop(), "exactly one element of type 'detector'"),
        (lambda d: d["elements"].pop(0), "first element must be a source"),
        (lambda d: d["elements"][2].update(coating="Unobtainium"), "no built-in density"),
        (lambda d: d["elements"][1]["motors"][0].pop("position"),
         "missing required key 'position'"),
        (lambda d: d["disturbances"]["vibration"]["rms"].update({"m9.pitch": 1.0}),
         "unknown motor 'm9.pitch'"),
        (lambda d: d.update(energy_eV=-5.0), "energy_eV must be > 0"),
        (lambda d: d.update(extra=1), "unknown top-level key 'extra'"),
        (lambda d: d["elements"][0].update(harmonic=2), "odd integer"),
    ],
)
def test_malformed_presets_name_the_key_and_what_is_allowed(mutate, message):
    data = _base()
    mutate(data)
    with pytest.raises(ConfigError, match=re.escape(message)):
        preset_from_dict(data)


def test_unreachable_energy_is_refused():
    data = _base()
    data["elements"][0]["motors"][0].pop("position")  # derive the gap from the energy
    data["energy_eV"] = 2000.0  # below what the U20 reaches at 6 mm on H1
    with pytest.raises(ConfigError, match="not reachable on harmonic 1"):
        preset_from_dict(data)
    data["energy_eV"] = 10000.0
    assert preset_from_dict(data).design_positions()["undulator.gap"] == pytest.approx(
        7.2236, abs=1e-3)  # the on-axis harmonic formula
    data["energy_eV"] = 2000.0
    data["elements"][0]["motors"][0]["position"] = 7.0
    with pytest.raises(ConfigError, match="outside its limits"):  # the DCM cannot reach it
        preset_from_dict(data)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_preset(bad)


def test_a_users_own_preset_loads(mixed_desc):
    kinds = {e.kind for e in mixed_desc.elements}
    assert {"gaussian_source", "aperture", "crl", "dcm"} <= kinds
    shapes = {e.shape for e in mixed_desc.elements if e.kind == "mirror"}
    assert shapes == {"flat", "cylindrical", "toroidal", "elliptical"}


def test_every_element_type_is_documented_and_constructible():
    import twin.description as d

    for kind, cls in ELEMENT_TYPES.items():
        assert f"``{kind}``" in d.__doc__, kind
        assert cls.__doc__


def test_description_is_frozen(desc):
    with pytest.raises(AttributeError):
        desc.energy_eV = 1.0  # type: ignore[misc]
    assert default_preset() == desc
