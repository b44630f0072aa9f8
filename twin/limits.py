"""Bounds on the twins' inputs that do not belong to one beamline.

A number of rays beyond :data:`MAX_RAYS` per trace is refused with a clear error
rather than left to exhaust memory (xrt holds about 1 kB of arrays per ray; the
fast twin holds a batch of states times the rays).
"""

from __future__ import annotations

from twin.errors import ConfigError

__all__ = ["MIN_RAYS", "MAX_RAYS", "check_rays"]

#: fewest rays per trace (fewer give no usable beam statistics)
MIN_RAYS = 100
#: most rays per trace (about 2 GB of xrt arrays)
MAX_RAYS = 2_000_000


def check_rays(rays: object) -> int:
    """*rays* if it is an integer in [MIN_RAYS, MAX_RAYS]; raises ConfigError otherwise."""
    if isinstance(rays, bool) or not isinstance(rays, int) or not MIN_RAYS <= rays <= MAX_RAYS:
        raise ConfigError(f"rays must be an integer within [{MIN_RAYS}, {MAX_RAYS}], "
                          f"got {rays!r}")
    return rays
