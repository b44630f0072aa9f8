"""Design geometry: where each element sits and how the central ray travels.

The design (ideal) beamline is laid out once, analytically, by following the
central ray from the source: every element is centred where that ray crosses
its floor position ``y_m``, mirrors deflect it by twice their grazing angle,
and a monochromator offsets it by its fixed exit. The result is frozen, so
that no Monte-Carlo 'auto' centring leaves micrometre offsets (xrt's
``'auto'`` does; see shared/GOTCHAS.md).

Global frame (xrt's): x horizontal (to the right, looking downstream), y along
the floor axis of the beamline, z up. Lengths in mm, angles in rad.

The beam direction is written with an azimuth ``az`` (towards +x) and an
elevation ``el`` (towards +z): ``d = (sin az cos el, cos az cos el, sin el)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twin.description import (
    BeamlineDescription,
    CrystalMonochromator,
    Mirror,
    MultilayerMonochromator,
)

__all__ = ["Frame", "design_frames", "transverse_axes", "direction", "rot_z", "rot_x",
           "mirror_normal"]


def rot_x(a: float) -> np.ndarray:
    """Rotation matrix about x by *a* rad (y towards z)."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=float)


def rot_z(a: float) -> np.ndarray:
    """Rotation matrix about z by *a* rad (x towards y)."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=float)


def direction(az: float, el: float) -> np.ndarray:
    """Unit beam direction for azimuth *az* and elevation *el* (rad)."""
    return np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])


def transverse_axes(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical unit vectors normal to beam direction *d*.

    ``x = d x z_hat`` (to the right looking downstream), ``z = x x d`` (up).
    """
    x = np.cross(d, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    z = np.cross(x, d)
    return x, z / np.linalg.norm(z)


def mirror_normal(deflection: str, grazing: float, az: float, el: float) -> np.ndarray:
    """Outward surface normal of a mirror at design, for an incoming (az, el) beam.

    Vertically deflecting mirrors are tilted with the beam; horizontally
    deflecting ones stand vertical (their normal is horizontal), as mirrors
    are mounted.
    """
    if deflection == "up":
        return rot_z(-az) @ rot_x(el + grazing) @ np.array([0.0, 0.0, 1.0])
    if deflection == "down":
        return rot_z(-az) @ rot_x(el - grazing) @ np.array([0.0, 0.0, -1.0])
    if deflection == "right":
        return rot_z(-az - grazing) @ np.array([1.0, 0.0, 0.0])
    return rot_z(-az + grazing) @ np.array([-1.0, 0.0, 0.0])  # left


@dataclass(frozen=True)
class Frame:
    """Design frame of one element.

    Attributes
    ----------
    name : str
    center : ndarray
        Element centre on the central ray, mm (global).
    d_in, d_out : ndarray
        Unit directions of the central ray before and after the element.
    az_in, el_in : float
        Azimuth and elevation of the incoming central ray, rad.
    path_mm : float
        Optical path length from the source to the centre, mm.
    normal : ndarray or None
        Outward surface normal (mirrors), or the exit-offset direction (monochromators).
    """

    name: str
    center: np.ndarray
    d_in: np.ndarray
    d_out: np.ndarray
    az_in: float
    el_in: float
    path_mm: float
    normal: np.ndarray | None = None

    @property
    def axes_out(self) -> tuple[np.ndarray, np.ndarray]:
        """Transverse (x, z) unit vectors of the outgoing beam."""
        return transverse_axes(self.d_out)

    @property
    def axes_in(self) -> tuple[np.ndarray, np.ndarray]:
        """Transverse (x, z) unit vectors of the incoming beam."""
        return transverse_axes(self.d_in)


def design_frames(desc: BeamlineDescription) -> dict[str, Frame]:
    """Lay out the design beamline; return one :class:`Frame` per element name."""
    frames: dict[str, Frame] = {}
    p = np.zeros(3)
    az = el = 0.0
    d = direction(az, el)
    path = 0.0
    for e in desc.elements:
        s = (e.y_m * 1e3 - p[1]) / d[1]
        center = p + s * d
        path += s
        normal = None
        d_out = d
        if isinstance(e, Mirror):
            theta = e.grazing_mrad * 1e-3
            normal = mirror_normal(e.deflection, theta, az, el)
            d_out = d - 2.0 * float(np.dot(d, normal)) * normal
        elif isinstance(e, (CrystalMonochromator, MultilayerMonochromator)):
            normal = rot_z(-az) @ rot_x(el) @ np.array([0.0, 0.0, 1.0])  # exit offset: up
            center_exit = center + e.fixed_exit_mm * normal
            frames[e.name] = Frame(e.name, center, d, d, az, el, path, normal)
            p = center_exit
            continue
        frames[e.name] = Frame(e.name, center, d, d_out, az, el, path, normal)
        p = center
        d = d_out / np.linalg.norm(d_out)
        az = math.atan2(d[0], d[1])
        el = math.asin(max(-1.0, min(1.0, d[2])))
    return frames
