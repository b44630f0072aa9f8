"""The fast twin: a batched, differentiable ray tracer in PyTorch.

It traces a batch of B beamline states x N rays at once, with no Python loop
over rays or states (only over the elements), on the CPU or CUDA, and
``torch.autograd`` differentiates every reading with respect to the motor
positions and the hidden errors.

It is the same beamline as the xrt reference, not an approximation of it:

* the source rays are xrt's own (sampled once per gap, energy, rays and seed
  by the xrt adapter and cached); source perturbations are applied per state;
* every optical surface sits at the exact pose xrt gives it: the design pose
  is read from xrt (:meth:`XrtBackend.element_pose`), motor rotations follow
  xrt's conventions (``R = R0 Rz(yaw) Ry(roll) Rx(pitch)``), and a DCM's two
  crystals are composed exactly as xrt composes them;
* ray-surface intersections are exact: in closed form for elliptical-cylinder
  mirrors, by Newton iterations on z = f(x, y) started from the tangent plane for
  flat, bent-flat (parabolic cylinder) and toroidal ones, with footprint clipping;
* reflectivities come from tables of xrt's own material models: mirror and
  multilayer coatings versus grazing angle and energy, and the crystal's
  intrinsic Bragg curve versus the deviation from the kinematic Bragg angle.

Masks (slit blades, mirror edges, fields of view) are hard in the forward
pass; the gradient flows through positions, directions and reflectivities.

Positions are kept relative to the design centre of the last element passed (a
float64 origin on the Python side) and surfaces are evaluated in
cancellation-free forms, so that precision does not depend on the distance from
the source. Not traced by the fast backend: compound refractive lenses (use
``xrt``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from twin import _fast_kernels as K
from twin import physics
from twin.description import (
    Aperture,
    BeamlineDescription,
    CompoundRefractiveLens,
    CrystalMonochromator,
    Element,
    Mirror,
    MultilayerMonochromator,
    Slits,
)
from twin.disturbances import SourcePerturbation
from twin.errors import BackendError
from twin.geometry import Frame, transverse_axes
from twin.settings import (
    ElementSettings,
    MirrorSettings,
    MonoSettings,
    ObserverSettings,
    OffsetSettings,
    SlitSettings,
    SourceSettings,
)
from twin.units import UNITS

__all__ = ["FastBackend", "Rays", "params_from_settings", "PARAM_FIELDS"]

#: per-kind parameter vectors (the batched form of twin.settings)
PARAM_FIELDS: dict[str, tuple[str, ...]] = {
    "source": ("gap_mm", "energy_eV", "dx_um", "dy_um", "dxp_urad", "dyp_urad", "size_x", "size_y"),
    "slits": ("left", "right", "bottom", "top"),
    "offset": ("dx", "dz"),
    "mirror": ("dpitch", "roll", "yaw", "height", "lateral", "bend"),
    "mono": ("bragg", "pitch2", "roll2", "perp"),
    "observer": ("dx", "dz", "dy"),
}
#: Newton steps of the ray-surface intersection (flat, bent-flat and toroidal mirrors)
_NEWTON_STEPS = 3
#: a band narrower than this fraction of its energy uses 1-D (angle-only) tables
_NARROW_BAND = 0.005
_NO_PERTURBATION = SourcePerturbation()


def _kind(e: Element) -> str:
    if e.kind in ("undulator", "gaussian_source"):
        return "source"
    if isinstance(e, Slits):
        return "slits"
    if isinstance(e, (Aperture, CompoundRefractiveLens)):
        return "offset"
    if isinstance(e, Mirror):
        return "mirror"
    if isinstance(e, (CrystalMonochromator, MultilayerMonochromator)):
        return "mono"
    return "observer"


def params_from_settings(desc: BeamlineDescription,
                         batch: Sequence[Sequence[ElementSettings]],
                         dtype: torch.dtype = torch.float64,
                         device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Stack per-state :mod:`twin.settings` records into ``(B, k)`` tensors per element."""
    out: dict[str, torch.Tensor] = {}
    for i, e in enumerate(desc.elements):
        rows = []
        for states in batch:
            s = states[i]
            if isinstance(s, SourceSettings):
                p = s.perturbation
                rows.append([s.gap_mm if s.gap_mm is not None else math.nan, s.energy_eV,
                             p.dx_um, p.dy_um, p.dxp_urad, p.dyp_urad, p.size_x_scale,
                             p.size_y_scale])
            elif isinstance(s, SlitSettings):
                rows.append([s.left, s.right, s.bottom, s.top])
            elif isinstance(s, OffsetSettings):
                rows.append([s.dx, s.dz])
            elif isinstance(s, MirrorSettings):
                rows.append([s.dpitch, s.roll, s.yaw, s.height, s.lateral, s.bend])
            elif isinstance(s, MonoSettings):
                rows.append([s.bragg, s.pitch2, s.roll2, s.perp])
            elif isinstance(s, ObserverSettings):
                rows.append([s.dx, s.dz, s.dy])
            else:  # pragma: no cover
                raise BackendError(f"no settings for element {e.name!r}")
        out[e.name] = torch.tensor(rows, dtype=dtype, device=device)
    return out


# --------------------------------------------------------------------------- rotations
def _rot(axis: str, a: torch.Tensor) -> torch.Tensor:
    """Batched rotation matrices (B, 3, 3) about a coordinate axis (xrt's sign)."""
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    if axis == "x":
        rows = [[o, z, z], [z, c, -s], [z, s, c]]
    elif axis == "y":
        rows = [[c, z, s], [z, o, z], [-s, z, c]]
    else:
        rows = [[c, -s, z], [s, c, z], [z, z, o]]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


_RAY_FIELDS = ("x", "y", "z", "a", "b", "c", "E", "ih", "iv", "alive")


@dataclass
class Rays:
    """A batch of rays as a structure of (B, N) arrays (or (1, N) where every state
    shares them): positions ``x, y, z`` (mm), unit directions ``a, b, c``, energies
    ``E`` (eV), intensities of the horizontal and vertical polarisation ``ih, iv``, and
    the alive weight (0/1, or in between with soft edges)."""

    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    E: torch.Tensor
    ih: torch.Tensor
    iv: torch.Tensor
    alive: torch.Tensor
    w0: torch.Tensor  # (B, 1) photons/s per unit intensity
    #: float64 global position (mm) that the positions are relative to: the design centre
    #: of the last element. Keeping positions small is what lets float32 resolve nanometres.
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def replace(self, **kw: Any) -> Rays:
        """A copy with some fields replaced."""
        return Rays(**{**{f: getattr(self, f) for f in (*_RAY_FIELDS, "w0", "origin")}, **kw})

    def select(self, idx: torch.Tensor) -> Rays:
        """The rays of index *idx* (along N) in every state."""
        return self.replace(**{f: getattr(self, f).index_select(1, idx) for f in _RAY_FIELDS})


@dataclass
class Hits:
    """Rays at an observation point: local positions (B, N) um and weights (B, N) ph/s."""

    x_um: torch.Tensor
    y_um: torch.Tensor
    w: torch.Tensor


@dataclass(frozen=True)
class _Table:
    """A reflectivity table for :func:`twin._fast_kernels.lerp1` / ``lerp2``: values
    (flattened, row-major in energy then angle) and the grid as a small tensor."""

    v: torch.Tensor
    g: torch.Tensor
    two_d: bool

    @classmethod
    def build(cls, e_grid: np.ndarray | None, a_grid: np.ndarray, values: np.ndarray,
              dtype: torch.dtype, device: torch.device) -> _Table:
        a0, da, na = float(a_grid[0]), float(a_grid[1] - a_grid[0]), len(a_grid)
        ag = [a0, da, na - 1, na - 2]
        if e_grid is None:
            g = ag
        else:
            ne = len(e_grid)
            de = float(e_grid[1] - e_grid[0]) if ne > 1 else 1.0
            g = [float(e_grid[0]), de, ne - 1, max(ne - 2, 0), *ag, na]
        return cls(torch.as_tensor(values, dtype=dtype, device=device).reshape(-1),
                   torch.tensor(g, dtype=dtype, device=device), e_grid is not None)


#: compiled graphs allowed per kernel: one per element kind, formula, dtype and the
#: one-state (shared) trace; torch's default of 8 is too few for a mixed beamline
_RECOMPILE_LIMIT = 64


def compiled(f: Any) -> Any:
    """*f* compiled by :func:`torch.compile` (dynamic shapes), allowed
    :data:`_RECOMPILE_LIMIT` variants; the limit is set for these calls only."""
    # the kernels' table indices are clamped into range by construction
    # (:func:`twin._fast_kernels._grid_index`), so the per-element bounds checks go
    c = torch.compile(f, dynamic=True, options={"assert_indirect_indexing": False})

    cfg = torch._dynamo.config

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        old = cfg.recompile_limit  # set and restored around the call (3x faster than patch)
        cfg.recompile_limit = max(old, _RECOMPILE_LIMIT)
        try:
            return c(*args, **kwargs)
        finally:
            cfg.recompile_limit = old

    return run


class FastBackend:
    """Batched torch tracer of a beamline (see the module docstring).

    Parameters
    ----------
    desc : BeamlineDescription
    device : str or torch.device, optional
        Default: CUDA when available, else the CPU.
    dtype : torch.dtype
        ``torch.float64`` (default) or ``torch.float32`` (~3x faster compiled). Ray positions
        are kept relative to the last element's design centre, and surfaces are
        evaluated in cancellation-free forms, so that float32 still resolves a 30 nm
        focus 60 m from the source. The DCM rotates no ray through its large Bragg
        angles, which would leave ~1e-7 rad of noise on float32 directions: what is
        large about it is per-state float64 constants (:func:`twin._fast_kernels.mono`).
    soft_edges_mm : float
        Sigmoid width of slit blades and mirror ends, mm (0: hard edges, as xrt).
    compile : bool
        Compile the element kernels with :func:`torch.compile` (C++/OpenMP on the CPU,
        Triton on CUDA). Each kernel then runs as a few fused loops over the rays, several
        times faster than eager mode, at the price of compiling once per element kind
        when first traced (cached on disk by torch between runs). Results equal the
        eager ones to rounding. Default: eager.
    """

    name = "fast"

    def __init__(self, desc: BeamlineDescription, *, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float64, soft_edges_mm: float = 0.0,
                 compile: bool = False) -> None:
        from twin._xrt_backend import XrtBackend  # the reference: rays, poses, tables

        for e in desc.elements:
            if isinstance(e, CompoundRefractiveLens):
                raise BackendError(
                    f"the fast backend does not trace compound refractive lenses ({e.name!r}); "
                    f"use backend='xrt'")
        if dtype not in (torch.float64, torch.float32):
            raise BackendError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
        if not (math.isfinite(soft_edges_mm) and soft_edges_mm >= 0):
            raise BackendError(f"soft_edges_mm must be finite and >= 0, got {soft_edges_mm!r}")
        #: width of the sigmoid edge of slit blades and mirror ends, mm; 0 = hard edges.
        #: Soft edges let gradients flow through slit and footprint positions.
        self.soft = float(soft_edges_mm)
        self.desc = desc
        try:
            self.device = torch.device(device if device is not None else
                                       ("cuda" if torch.cuda.is_available() else "cpu"))
        except (RuntimeError, TypeError) as exc:
            raise BackendError(f"device {device!r} is not a torch device (cpu, cuda, "
                               f"cuda:N): {exc}") from None
        self.dtype = dtype
        self.compiled = bool(compile)
        self._k = {n: (compiled(f) if compile else f) for n, f in K.KERNELS.items()}
        self.ref = XrtBackend(desc)
        self.frames: dict[str, Frame] = self.ref.frames
        self._tables: dict[tuple, tuple[_Table, _Table]] = {}
        self._sources: dict[tuple, dict[str, torch.Tensor]] = {}
        self._consts = self._constants()
        self._run_band = (desc.energy_eV - 10.0, desc.energy_eV + 10.0)
        kinds = [_kind(e) for e in desc.elements]
        #: per element: does a slit, mirror or monochromator follow it?
        self._optics_after = [any(k in ("slits", "offset", "mirror", "mono")
                                  for k in kinds[i + 1:]) for i in range(len(kinds))]
        self.stats = {"source_builds": 0, "states_traced": 0}

    def kernel(self, name: str) -> Any:
        """The kernel *name* of :data:`twin._fast_kernels.KERNELS`, compiled if asked."""
        return self._k[name]

    # ------------------------------------------------------------------ constants
    def _t(self, a: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=float), dtype=self.dtype, device=self.device)

    def _constants(self) -> dict[str, dict[str, Any]]:
        from twin.hidden import HiddenErrors
        from twin.settings import resolve

        design, _ = resolve(self.desc, {}, HiddenErrors.none())
        out: dict[str, dict[str, Any]] = {}
        for e, s in zip(self.desc.elements, design, strict=True):
            f = self.frames[e.name]
            xa, za = transverse_axes(f.d_in)
            c: dict[str, Any] = {"center64": np.asarray(f.center, dtype=float),
                                 "n_in": self._t(f.d_in), "xa": self._t(xa), "za": self._t(za)}
            if isinstance(e, Mirror):
                c0, R0 = self.ref.element_pose(e.name, s)
                lat = np.cross(f.normal, f.d_in)
                c.update(c0_64=np.asarray(c0, dtype=float), R0=self._t(R0),
                         normal=self._t(f.normal),
                         lat=self._t(lat / np.linalg.norm(lat)),
                         size=self._t([e.width_mm / 2, e.length_mm / 2, max(self.soft, 1e-9)]))
                if e.shape == "elliptical":
                    c["p"] = f.path_mm
            elif isinstance(e, (CrystalMonochromator, MultilayerMonochromator)):
                bragg = e.motor("bragg")
                from twin.units import to_internal

                theta0 = to_internal(bragg.position, bragg.units)  # type: ignore[union-attr]
                c["long2"] = e.fixed_exit_mm / (2.0 * math.cos(theta0)) / math.tan(theta0)
                c["el"], c["az"] = f.el_in, f.az_in
                c["n_in64"] = torch.as_tensor(np.asarray(f.d_in, dtype=float),
                                              dtype=torch.float64, device=self.device)
                c["size"] = self._t([e.width_mm / 2, e.length_mm / 2, e.length_mm])
                if isinstance(e, CrystalMonochromator):
                    c["d_A"] = physics.crystal_d_spacing_A(e.crystal, e.temperature_K)
                    c["kb"] = physics.HC_EV_ANGSTROM / (2.0 * c["d_A"])  # eV
                else:
                    c["kb"] = 0.0
            elif isinstance(e, Aperture):
                c["size"] = self._t([e.width_mm / 2, e.height_mm / 2, 1.0])
            elif isinstance(e, Slits):
                c["size"] = self._t([0.0, 0.0, max(self.soft, 1e-9)])
            out[e.name] = c
        return out

    # ------------------------------------------------------------------ tables
    def _tables_for(self, key: tuple, fetch: Any, angles: np.ndarray, e_lo: float, e_hi: float,
                    e_step: float) -> tuple[_Table, _Table]:
        """Reflectivity tables ``(Rs, Rp)`` of one element, built once per band.

        Over a narrow band (under 0.5 % of the energy) reflectivity depends on the angle
        only: 1-D tables at the band centre; otherwise 2-D in energy and angle. When Rs
        and Rp agree (metal coatings at grazing incidence) one table serves both.
        """
        if key not in self._tables:
            if e_hi - e_lo < _NARROW_BAND * e_lo:
                rs, rp = fetch(np.array([0.5 * (e_lo + e_hi)]), angles)
                t_s = _Table.build(None, angles, rs[0], self.dtype, self.device)
                t_p = t_s if np.allclose(rs, rp, rtol=1e-5, atol=1e-9) else \
                    _Table.build(None, angles, rp[0], self.dtype, self.device)
            else:
                E = np.linspace(e_lo, e_hi, max(2, int((e_hi - e_lo) / e_step) + 2))
                rs, rp = fetch(E, angles)
                t_s = _Table.build(E, angles, rs, self.dtype, self.device)
                t_p = _Table.build(E, angles, rp, self.dtype, self.device)
            self._tables[key] = (t_s, t_p)
        return self._tables[key]

    def _mirror_table(self, name: str, e_lo: float, e_hi: float) -> tuple[_Table, _Table]:
        """Coating or multilayer reflectivity against the sine of the grazing angle, on a
        regular grid of sines (the kernels then need no arcsine per ray)."""
        e = self.desc.element(name)
        if isinstance(e, MultilayerMonochromator):
            bragg = e.motor("bragg")
            theta0 = UNITS[bragg.units] * bragg.position  # type: ignore[union-attr]
        else:
            theta0 = e.grazing_mrad * 1e-3  # type: ignore[attr-defined]
        sines = np.linspace(math.sin(max(1e-5, 0.2 * theta0)), math.sin(1.8 * theta0), 801)
        return self._tables_for(("m", name, round(e_lo, 1), round(e_hi, 1)),
                                lambda E, s: self.ref.mirror_reflectivity(name, E,
                                                                          np.arcsin(s)),
                                sines, e_lo, e_hi, 20.0)

    def _crystal_table(self, name: str, e_lo: float, e_hi: float) -> tuple[_Table, _Table]:
        """Intrinsic Bragg curve against the deviation from the kinematic angle (rad)."""
        return self._tables_for(("c", name, round(e_lo, 1), round(e_hi, 1)),
                                lambda E, a: self.ref.crystal_reflectivity(name, E, a),
                                np.linspace(-400e-6, 400e-6, 3201), e_lo, e_hi, 2.0)

    # ------------------------------------------------------------------ sources
    def _source(self, prm: torch.Tensor, rays: int, seed: int) -> Rays:
        B = prm.shape[0]
        ge = prm[:, :2].detach().cpu()
        # the distinct (gap, energy) pairs of the batch, and each state's: a loop over
        # sources, not states (a Gaussian source has no gap: NaN, the same for every state)
        ge = torch.nan_to_num(ge, nan=-1.0)
        uniq, which = (ge[:1], torch.zeros(B, dtype=torch.long)) if B == 1 or bool(
            (ge == ge[:1]).all()) else torch.unique(ge, dim=0, return_inverse=True)
        cols = []
        for g, en in uniq.tolist():
            k = (None if g < 0 else round(g, 9), round(en, 9), rays, seed)
            if k not in self._sources:
                raw = self.ref.source_rays(SourceSettings(k[0], k[1], _NO_PERTURBATION),
                                           rays, seed)
                self._sources[k] = {n: self._t(v) for n, v in raw.items()}
                self.stats["source_builds"] += 1
            cols.append(self._sources[k])
        if len(cols) == 1:
            src = {n: v.unsqueeze(0) if v.dim() else v for n, v in cols[0].items()}
        else:
            idx = which.to(self.device)
            src = {n: torch.stack([c[n] for c in cols]).index_select(0, idx) for n in cols[0]}
        x, y, z, a, b, c = self._k["source"](src["x"], src["y"], src["z"], src["a"], src["b"],
                                             src["c"], prm.to(self.dtype))
        w0 = src["w0"].reshape(-1, 1)[:, :1].expand(B, 1) if src["w0"].dim() \
            else src["w0"].expand(B, 1)
        # energies and intensities stay (1, N) while every state shares them
        return Rays(x, y, z, a, b, c, E=src["E"], ih=src["Jss"], iv=src["Jpp"],
                    alive=torch.ones_like(x), w0=w0)

    # ------------------------------------------------------------------ elements
    def _rel(self, point64: np.ndarray, r: Rays) -> torch.Tensor:
        """A float64 global point relative to the rays' origin, in the rays' dtype."""
        return torch.as_tensor(np.asarray(point64, dtype=float) - r.origin,
                               dtype=self.dtype, device=self.device)

    def _slits(self, e: Element, prm: torch.Tensor, r: Rays) -> Rays:
        k = self._consts[e.name]
        if isinstance(e, Slits):
            mode = "slits_soft" if self.soft > 0 else "slits"
        else:
            mode = "round" if e.shape == "round" else "rect"  # type: ignore[attr-defined]
        x, y, z, alive = self._k["slits"](r.x, r.y, r.z, r.a, r.b, r.c, r.alive,
                                          self._rel(k["center64"], r), k["n_in"], k["xa"],
                                          k["za"], prm, k["size"], mode)
        return r.replace(x=x, y=y, z=z, alive=alive, origin=k["center64"])

    def _ellipse_coeffs(self, e: Mirror, bend: torch.Tensor) -> torch.Tensor:
        """Coefficients ``(alpha, beta, gamma, k1, k2)`` (B, 5) of the elliptical cylinder
        in the mirror's local (y, z) frame, computed in float64 (they involve
        near-cancelling lengths) and cast.

        With foci F1 = p (-cos t, sin t) and F2 = q (cos t, sin t), centre (cy, cz),
        major-axis direction (ey, ez), semi-axes a and b: the ellipse reads
        alpha Z^2 + 2 beta Y Z + gamma Y^2 = 1 with Y = y - cy, Z = z - cz.
        """
        th = e.grazing_mrad * 1e-3
        p = self._consts[e.name]["p"]
        q = bend.to(torch.float64)
        ct, st = math.cos(th), math.sin(th)
        f1y, f1z = -p * ct, p * st
        f2y, f2z = q * ct, q * st
        cy, cz = 0.5 * (f1y + f2y), 0.5 * (f1z + f2z)
        dy_, dz_ = f2y - f1y, f2z - f1z
        cf = 0.5 * torch.sqrt(dy_ * dy_ + dz_ * dz_)
        a = 0.5 * (p + q)
        b2 = a * a - cf * cf
        ey, ez = dy_ / (2 * cf), dz_ / (2 * cf)
        alpha = ez * ez / (a * a) + ey * ey / b2
        beta = ey * ez * (1.0 / (a * a) - 1.0 / b2)
        gamma = ey * ey / (a * a) + ez * ez / b2
        k1 = gamma * cy + beta * cz
        k2 = beta * cy + alpha * cz
        return torch.stack([alpha, beta, gamma, k1, k2], -1).to(self.dtype)

    def _surface_coeffs(self, e: Mirror, bend: torch.Tensor) -> torch.Tensor:
        """Per-state surface coefficients (B, k) for :func:`twin._fast_kernels._surface`."""
        if e.shape == "elliptical":
            return self._ellipse_coeffs(e, bend)
        kappa0 = 1.0 / (e.radius_m * 1e3) if e.radius_m is not None else 0.0
        kappa = kappa0 + 8.0 * bend / e.length_mm**2
        other = e.sagittal_radius_mm if e.shape == "toroidal" else e.length_mm
        return torch.stack([kappa, torch.full_like(kappa, float(other))], -1)

    def _mirror(self, e: Mirror, prm: torch.Tensor, r: Rays) -> Rays:
        k = self._consts[e.name]
        R = k["R0"] @ _rot("z", prm[:, 2]) @ _rot("y", prm[:, 1]) @ _rot("x", prm[:, 0])
        center = k["center64"]
        cpos = (self._t(k["c0_64"] - center) + prm[:, 3:4] * k["normal"]
                + prm[:, 4:5] * k["lat"])
        t_s, t_p = self._mirror_table(e.name, *self._band(r))
        shape = e.shape if e.shape in ("elliptical", "toroidal") else "flat"
        # a vertical deflection makes the horizontal polarisation sigma
        t_h, t_v = (t_s, t_p) if e.deflection in ("up", "down") else (t_p, t_s)
        out = self._k["mirror"](r.x, r.y, r.z, r.a, r.b, r.c, r.E, r.ih, r.iv, r.alive,
                                self._rel(center, r), k["n_in"], R, cpos,
                                self._surface_coeffs(e, prm[:, 5]), k["size"], t_h.v, t_h.g,
                                t_v.v, t_v.g, shape, t_h.two_d, t_v is t_h, self.soft > 0,
                                _NEWTON_STEPS)
        return r.replace(**dict(zip(("x", "y", "z", "a", "b", "c", "ih", "iv", "alive"), out,
                                    strict=True)), origin=center)

    @staticmethod
    def _compact(r: Rays, optics_after: bool = True) -> Rays:
        """Drop the rays that are dead in every state of the batch (exact: they carry 0).

        Only where a slit, mirror or monochromator follows (*optics_after*): the copy
        costs about as much as one element's kernel, and observation points alone read
        the rays too cheaply to pay it back (measured: 10 ms to drop 23 % of 1,024 x
        1,000 rays after the last KB mirror, against 3 ms for the two points behind it).
        """
        if not optics_after:
            return r
        # the weights are >= 0: a column's maximum is one pass, where (alive > eps).any(0)
        # makes a boolean copy of the batch first (10x slower at 1,024 x 1,000)
        keep = r.alive.detach().amax(0) > 1e-12
        n_keep = int(keep.sum())
        if n_keep > 0.8 * keep.numel():
            return r
        keep[0] = True  # one (possibly dead) ray keeps every shape valid
        idx = torch.nonzero(keep).squeeze(-1)
        return r.select(idx)

    def _band(self, r: Rays) -> tuple[float, float]:
        """Energy range of the reflectivity tables: the source band of this run, snapped
        outwards to 10 eV so that a result never depends on the rest of the batch."""
        return self._run_band

    def _crystal_pose(self, e: Element, prm: torch.Tensor,
                      second: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose of crystal 1 or 2, composed exactly as xrt's DCM.local_to_global."""
        k = self._consts[e.name]
        B = prm.shape[0]
        el = torch.full((B,), k["el"], dtype=prm.dtype, device=self.device)
        az = torch.full((B,), k["az"], dtype=prm.dtype, device=self.device)
        bragg, pitch2, roll2, perp = prm[:, 0], prm[:, 1], prm[:, 2], prm[:, 3]
        c = torch.zeros(B, 3, dtype=prm.dtype, device=self.device)  # rays are re-origined
        if not second:
            R = _rot("z", -az) @ _rot("x", el + bragg)
            return R, c
        R = (_rot("y", torch.full_like(el, math.pi)) @ _rot("z", az) @ _rot("y", roll2)
             @ _rot("x", -el - bragg + pitch2))
        t = torch.stack([torch.zeros_like(perp), torch.full_like(perp, k["long2"]), -perp], -1)
        return R, c + torch.einsum("bij,bj->bi", R, t)

    @staticmethod
    def _asin_taylor(s0: torch.Tensor) -> torch.Tensor:
        """Coefficients (..., 3) of ``asin(s0 + s) - asin(s0)`` to third order in s."""
        c2 = 1.0 - s0 * s0
        c = torch.sqrt(c2)
        return torch.stack([1.0 / c, s0 / (2.0 * c2 * c), (1.0 + 2.0 * s0 * s0)
                            / (6.0 * c2 * c2 * c)], -1)

    def _mono_geometry(self, e: Element, prm: torch.Tensor, r: Rays,
                       crystal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-state geometry (B, 43) and energy
        reference (5,) of :func:`twin._fast_kernels.mono`, computed in float64 and cast.

        Everything large about the two reflections is folded in here, in float64: the
        map of directions ``H2 H1 - 1`` (``H = 1 - 2 n n^T``), which nearly vanishes for
        parallel crystals, and the axis ray's sines of incidence and Bragg deviations.
        """
        f64 = torch.float64
        k = self._consts[e.name]
        R1, _ = self._crystal_pose(e, prm.to(f64), False)  # crystal 1 sits at the origin
        R2, c2 = self._crystal_pose(e, prm.to(f64), True)
        n1, n2 = R1[:, :, 2], R2[:, :, 2]
        m2 = n2 - 2.0 * (n1 * n2).sum(-1, keepdim=True) * n1  # H1 n2
        n1n1, n2n2 = n1[:, :, None] * n1[:, None, :], n2[:, :, None] * n2[:, None, :]
        Am = -2.0 * n1n1 - 2.0 * n2n2 + 4.0 * (n1 * n2).sum(-1)[:, None, None] \
            * n2[:, :, None] * n1[:, None, :]
        axis = k["n_in64"]
        s1, s2 = -(n1 @ axis), -(m2 @ axis)
        E0 = 0.5 * sum(self._band(r))  # any energy near the rays' will do
        kb = k["kb"]
        if crystal:
            sb0 = kb / E0
            D1, D2 = torch.asin(s1) - math.asin(sb0), torch.asin(s2) - math.asin(sb0)
            ref = torch.cat([torch.tensor([E0, kb], dtype=f64),
                             self._asin_taylor(torch.tensor(sb0, dtype=f64))])
        else:
            D1, D2 = torch.zeros_like(s1), torch.zeros_like(s2)
            ref = torch.tensor([E0, 0.0, 0.0, 0.0, 0.0], dtype=f64)
        geo = torch.cat([n1, R1[:, :, 0], R1[:, :, 1], n2, R2[:, :, 0], R2[:, :, 1], c2, m2,
                         Am.reshape(-1, 9), s1[:, None], s2[:, None], D1[:, None],
                         D2[:, None], self._asin_taylor(s1), self._asin_taylor(s2)], -1)
        return geo.to(self.dtype), ref.to(device=self.device, dtype=self.dtype)

    def _mono(self, e: Element, prm: torch.Tensor, r: Rays) -> Rays:
        k = self._consts[e.name]
        crystal = isinstance(e, CrystalMonochromator)
        band = self._band(r)
        t_s, t_p = self._crystal_table(e.name, *band) if crystal else \
            self._mirror_table(e.name, *band)
        geo, ref = self._mono_geometry(e, prm, r, crystal)
        out = self._k["mono"](r.x, r.y, r.z, r.a, r.b, r.c, r.E, r.ih, r.iv, r.alive,
                              self._rel(k["center64"], r), k["n_in"], geo, ref, k["size"],
                              t_s.v, t_s.g, t_p.v, t_p.g, t_s.two_d, t_p is t_s, crystal)
        return r.replace(**dict(zip(("x", "y", "z", "a", "b", "c", "ih", "iv", "alive"), out,
                                    strict=True)), origin=k["center64"])

    def _observe(self, e: Element, prm: torch.Tensor, r: Rays) -> Hits:
        k = self._consts[e.name]
        cpt = (self._rel(k["center64"], r) + prm[:, 0:1] * k["xa"] + prm[:, 1:2] * k["za"]
               + prm[:, 2:3] * k["n_in"])
        x, y, w = self._k["observe"](r.x, r.y, r.z, r.a, r.b, r.c, r.ih, r.iv, r.alive, r.w0,
                                     cpt, k["n_in"], k["xa"], k["za"])
        return Hits(x, y, w)

    # ------------------------------------------------------------------ tracing
    def run(self, params: Mapping[str, torch.Tensor], rays: int, seed: int) -> dict[str, Hits]:
        """Trace a batch: ``params[element] -> (B, k)`` tensors (see :data:`PARAM_FIELDS`).

        Returns the hits at every observation point, by element name.
        """
        hits: dict[str, Hits] = {}
        r: Rays | None = None
        B = next(iter(params.values())).shape[0]
        # while every state so far has the same settings, trace one and share it
        shared = B > 1
        optics_after = self._optics_after
        for i, e in enumerate(self.desc.elements):
            prm = params[e.name]
            kind = _kind(e)
            if shared and not bool((prm == prm[:1]).all()) or prm.requires_grad:
                if shared and r is not None:
                    r = self._expand(r, B)
                shared = False
            if shared:
                prm = prm[:1]
            if kind == "source":
                # its gap and energy pick the cached source: they are not cast
                r = self._source(prm, rays, seed)
                E = r.E.detach()
                self._run_band = (10.0 * math.floor(float(E.min()) / 10.0 - 0.1),
                                  10.0 * math.ceil(float(E.max()) / 10.0 + 0.1))
                continue
            prm64, prm = prm, prm.to(self.dtype)  # FastTwin's parameters are float64
            if r is None:  # pragma: no cover - validation puts the source first
                raise BackendError("no source upstream")
            elif kind in ("slits", "offset"):
                r = self._compact(self._slits(e, prm, r), optics_after[i])
            elif kind == "mirror":
                r = self._compact(self._mirror(e, prm, r),  # type: ignore[arg-type]
                                  optics_after[i])
            elif kind == "mono":
                # its geometry is composed in float64 from the parameters as given
                r = self._compact(self._mono(e, prm64, r), optics_after[i])
            else:
                hits[e.name] = self._observe(e, prm, r)
        for name, h in hits.items():
            if h.w.shape[0] != B:
                hits[name] = Hits(h.x_um.expand(B, -1), h.y_um.expand(B, -1), h.w.expand(B, -1))
        self.stats["states_traced"] += B
        return hits

    @staticmethod
    def _expand(r: Rays, B: int) -> Rays:
        """Rays of one shared state, repeated for B states."""
        return r.replace(**{f: getattr(r, f).expand(B, -1) for f in _RAY_FIELDS},
                         w0=r.w0.expand(B, -1))

    def trace(self, settings: tuple[ElementSettings, ...], rays: int, seed: int) -> dict[str, Any]:
        """The :class:`twin.tracer.Twin` interface: one state, numpy hits."""
        from twin._xrt_backend import RayHits

        # float64 parameters, as FastTwin's: run() casts them, the source's key aside
        params = params_from_settings(self.desc, [settings], torch.float64, self.device)
        with torch.no_grad():
            hits = self.run(params, rays, seed)
        return {n: RayHits(h.x_um[0].cpu().numpy(), h.y_um[0].cpu().numpy(),
                           h.w[0].cpu().numpy()) for n, h in hits.items()}

    def clear_cache(self) -> None:
        """Forget cached source rays and tables."""
        self._sources.clear()
        self._tables.clear()
