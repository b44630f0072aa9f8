"""The one seam: a beamline that can be moved and observed.

Agents, scans and benchmarks only ever see this protocol. The twin implements
it in-process (:class:`twin.simulator.TwinBeamline`); the controllers layer
implements it over EPICS. An agent cannot tell which one it drives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from twin.observation import Observation

__all__ = ["MotorInfo", "MovableBeamline"]


@dataclass(frozen=True)
class MotorInfo:
    """What a client may know about a motor (no hidden errors here).

    Attributes
    ----------
    name : str
        ``element.axis``.
    units : str
    low, high : float
        Soft limits, in *units*.
    resolution : float
        Smallest step, *units*.
    speed : float
        Slew speed, *units*/s.
    description : str
    """

    name: str
    units: str
    low: float
    high: float
    resolution: float
    speed: float
    description: str = ""


@runtime_checkable
class MovableBeamline(Protocol):
    """A beamline that can be moved and observed.

    Every method either does what it says or raises a
    :class:`~twin.errors.BeamtwinError` subclass; a refused move moves nothing.
    """

    def motors(self) -> dict[str, MotorInfo]:
        """Every motor, by name, with its limits and units."""
        ...

    def positions(self) -> dict[str, float]:
        """Readback of every motor, in motor units."""
        ...

    def move(self, targets: Mapping[str, float]) -> None:
        """Move motors to absolute *targets* (motor units) and wait until they are done.

        All targets are validated before any motor moves.
        """
        ...

    def acquire(self, exposure_s: float | None = None) -> Observation:
        """Take one observation of every diagnostic and the detector."""
        ...

    @property
    def time_s(self) -> float:
        """Beamline time spent so far (moves and exposures), s."""
        ...
