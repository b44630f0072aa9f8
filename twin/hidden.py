"""Hidden errors: the misalignment of *this* beamline, which agents cannot read.

Hidden errors live on the motorised degrees of freedom, as motor zero offsets:
the physics sees ``position + offset`` where the motor reads ``position``. A
perfect alignment (every motor at ``design - offset``) therefore recovers the
ideal beam exactly. The twin models no error that a motor cannot compensate
(no figure or slope errors), so "ideal" means the design beamline itself.

Offsets are drawn from a seeded generator: ``offset = scale * sigma * z`` with
z standard normal, clipped at 3 sigma, and sigma the motor's
``misalign_sigma``. ``scale = 1`` is a realistic day-one beamline. The draw
depends only on the description, the scale and the seed, never on the
tracing backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from twin.description import BeamlineDescription
from twin.errors import ConfigError

__all__ = ["HiddenErrors", "MAX_SCALE"]

_STREAM = 0x48494444  # "HIDD": separates this stream from others drawn from the same seed


#: the largest misalignment scale: 10 day-one beamlines. A scale of 1e12 once put the
#: undulator's gap where xrt's source integral runs for hours (the command-line fuzz)
MAX_SCALE = 10.0


@dataclass(frozen=True)
class HiddenErrors:
    """Zero offsets per motor (``element.axis`` -> offset in that motor's units)."""

    offsets: Mapping[str, float] = field(default_factory=dict)
    scale: float = 0.0
    seed: int | None = None

    @classmethod
    def none(cls) -> HiddenErrors:
        """No hidden errors: the ideal beamline."""
        return cls({}, 0.0, None)

    @classmethod
    def draw(cls, desc: BeamlineDescription, scale: float, seed: int) -> HiddenErrors:
        """Draw a realistic misalignment of magnitude *scale* from *seed*.

        Parameters
        ----------
        desc : BeamlineDescription
        scale : float
            Multiplier of every motor's ``misalign_sigma`` (0 gives no errors).
        seed : int
            Non-negative seed.

        Raises
        ------
        ConfigError
            If *scale* is negative, above :data:`MAX_SCALE` or not finite.
        """
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or \
                not 0 <= scale <= MAX_SCALE:
            raise ConfigError(f"misalignment scale must be a finite number within "
                              f"[0, {MAX_SCALE:g}] (1 is a day-one beamline), got {scale!r}")
        rng = np.random.default_rng([_STREAM, int(seed)])
        offsets = {}
        knobs = desc.knob_motors()
        for name, m in desc.motors.items():  # fixed (beam) order: same seed, same errors
            if name in knobs:  # the ring's knobs have no hidden offset (and draw nothing)
                continue
            z = float(np.clip(rng.standard_normal(), -3.0, 3.0))
            offset = scale * m.misalign_sigma * z
            # keep the ideal position (design - offset) reachable within the limits
            offset = min(max(offset, m.position - m.high), m.position - m.low)
            offsets[name] = offset
        return cls(offsets, float(scale), int(seed))

    def offset(self, motor: str) -> float:
        """Offset of *motor* (0 if it has none)."""
        return float(self.offsets.get(motor, 0.0))

    def ideal_positions(self, desc: BeamlineDescription) -> dict[str, float]:
        """Motor positions (motor units) that give the ideal beam: ``design - offset``."""
        return {n: m.position - self.offset(n) for n, m in desc.motors.items()}

    def check(self, desc: BeamlineDescription) -> None:
        """Raise :class:`UnknownNameError` if an offset names no motor of *desc*."""
        for name in self.offsets:
            desc.motor(name)

    def __post_init__(self) -> None:
        for k, v in self.offsets.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"hidden error for {k!r} must be finite, got {v!r}")

    def to_dict(self) -> dict[str, float]:
        """Offsets as a plain dict (for ground truth in tests and benchmarks)."""
        return dict(self.offsets)


