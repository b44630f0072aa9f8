"""Units of beamtwin.

Internally the twin works in **millimetres** and **radians** (xrt's convention),
and in plain ratios for dimensionless knobs (``%`` is 0.01).
Motors are described and driven in their own engineering units; this module
converts between the two. Unit names are plain strings, as they appear in
presets, JSON output and EPICS ``EGU`` fields.
"""

from __future__ import annotations

import math
from typing import Literal

from twin.errors import ConfigError

__all__ = ["LENGTH_UNITS", "ANGLE_UNITS", "RATIO_UNITS", "UNITS", "Quantity", "to_internal",
           "from_internal", "quantity_of"]

Quantity = Literal["length", "angle", "ratio"]

#: length units -> factor to millimetres
LENGTH_UNITS: dict[str, float] = {"m": 1e3, "mm": 1.0, "um": 1e-3, "nm": 1e-6}
#: angle units -> factor to radians
ANGLE_UNITS: dict[str, float] = {"rad": 1.0, "mrad": 1e-3, "urad": 1e-6, "deg": math.pi / 180.0}
#: dimensionless units (a ring's coupling knob) -> factor to a plain ratio
RATIO_UNITS: dict[str, float] = {"%": 1e-2, "ratio": 1.0}
UNITS: dict[str, float] = {**LENGTH_UNITS, **ANGLE_UNITS, **RATIO_UNITS}


def quantity_of(units: str) -> Quantity:
    """Return ``"length"``, ``"angle"`` or ``"ratio"`` for a unit name.

    Raises
    ------
    ConfigError
        If *units* is not one of :data:`UNITS`.
    """
    if units in LENGTH_UNITS:
        return "length"
    if units in ANGLE_UNITS:
        return "angle"
    if units in RATIO_UNITS:
        return "ratio"
    raise ConfigError(f"unknown unit {units!r}; allowed units are {sorted(UNITS)}")


def to_internal(value: float, units: str) -> float:
    """Convert *value* in *units* to internal units (mm or rad)."""
    quantity_of(units)
    return value * UNITS[units]


def from_internal(value: float, units: str) -> float:
    """Convert *value* in internal units (mm or rad) to *units*."""
    quantity_of(units)
    return value / UNITS[units]
