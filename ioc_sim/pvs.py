"""Declarations shared by the PV groups: typed ``pvproperty`` factories.

Every IOC PV is declared through these, so that types, read-only flags,
units and docs are written the same way everywhere (and ``pv_table`` can list them).
"""

from __future__ import annotations

import math

import numpy as np
from caproto import ChannelType
from caproto.server import pvproperty

__all__ = ["float_pv", "int_pv", "enum_pv", "string_pv", "array_pv", "bounded"]

#: caproto warns when max_length x backlog exceeds this many elements
_BACKLOG_ELEMENTS = 15_000_000


def float_pv(name: str, doc: str, value: float = math.nan, *, units: str = "",
             precision: int = 3, read_only: bool = True) -> pvproperty:
    """A DOUBLE PV (read-only unless told)."""
    return pvproperty(name=name, value=value, dtype=ChannelType.DOUBLE, read_only=read_only,
                      doc=doc, units=units, precision=precision)


def int_pv(name: str, doc: str, value: int = 0, *, read_only: bool = True) -> pvproperty:
    """A LONG PV (read-only unless told)."""
    return pvproperty(name=name, value=value, dtype=ChannelType.LONG, read_only=read_only,
                      doc=doc)


def enum_pv(name: str, doc: str, strings: tuple[str, ...], value: str, *,
            read_only: bool = False) -> pvproperty:
    """An ENUM PV (writable unless told)."""
    return pvproperty(name=name, value=value, dtype=ChannelType.ENUM, enum_strings=strings,
                      doc=doc, read_only=read_only)


def string_pv(name: str, doc: str, value: str = "", *, read_only: bool = True) -> pvproperty:
    """A STRING PV (at most 39 characters, read-only unless told)."""
    return pvproperty(name=name, value=value, dtype=ChannelType.STRING, read_only=read_only,
                      doc=doc)


def array_pv(name: str, doc: str, length: int) -> pvproperty:
    """A read-only float32 image of *length* pixels (areaDetector's Float32 data type).

    Photon counts of a focused beam overflow an int32 pixel; float32 holds
    whole counts exactly up to 2**24 and keeps 7 digits beyond.

    The monitor backlog is kept small (a slow client drops old frames rather
    than queueing hundreds of them).
    """
    backlog = int(min(100, max(2, _BACKLOG_ELEMENTS // length - 1)))
    return pvproperty(name=name, value=np.zeros(length, dtype=np.float32), dtype=ChannelType.FLOAT,
                      max_length=length, read_only=True, doc=doc,
                      max_subscription_backlog=backlog)


def bounded(name: str, value: object, lo: float, hi: float, unit: str = "") -> float:
    """*value* as a float within [lo, hi], else a ValueError naming the value and the range.

    A putter raises it; caproto turns it into a CA error for the client, and the IOC logs
    one line (:class:`ioc_sim.server.OneLineRefusals`).
    """
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{name}: {value!r} refused; allowed: {lo:.6g} to {hi:.6g}"
                         f"{' ' + unit if unit else ''}")
    return v
