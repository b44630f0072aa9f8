"""The xrt adapter: the one module of beamtwin that touches xrt.

It turns the backend-neutral element settings of :mod:`twin.settings` into
xrt objects placed on the frozen design geometry of :mod:`twin.geometry`,
traces the beam element by element, and returns the rays that reach every
observation point. Nothing xrt-specific leaves this module.

Speed (every later layer calls this):

* the source rays are generated once per (gap, energy, rays, seed) and kept
  in a small LRU cache; a source perturbation is applied to a copy;
* the beam after every element is cached with the settings that produced it,
  so a move re-traces only from the first element whose settings changed;
* rays lost at an element (blocked, or missing a mirror, which xrt would let
  continue unreflected) are dropped right there.

xrt draws its random numbers from numpy's global generator; every call here
runs under a scoped seed and restores the global state afterwards. xrt's
console chatter is swallowed so that ``--json`` output stays clean.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from twin import physics
from twin.description import (
    Aperture,
    BeamlineDescription,
    CompoundRefractiveLens,
    CrystalMonochromator,
    Element,
    GaussianSource,
    MetalCoating,
    Mirror,
    MultilayerCoating,
    MultilayerMonochromator,
    Undulator,
)
from twin.errors import BackendError
from twin.geometry import Frame, design_frames, transverse_axes
from twin.settings import (
    ElementSettings,
    MirrorSettings,
    MonoSettings,
    ObserverSettings,
    OffsetSettings,
    SlitSettings,
    SourceSettings,
)
from twin.units import to_internal

__all__ = ["XrtBackend", "RayHits"]

_SOURCE_CACHE_SIZE = 8
_HC_EV_A = physics.HC_EV_ANGSTROM


@contextlib.contextmanager
def _quiet_seeded(seed: int | None) -> Iterator[None]:
    """Run xrt with numpy's global RNG seeded (then restored) and stdout swallowed."""
    state = np.random.get_state()  # noqa: NPY002 - xrt uses the legacy global RNG
    if seed is not None:
        np.random.seed(seed % (2**32))  # noqa: NPY002
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _import_xrt() -> Any:
    with _quiet_seeded(None):
        import xrt.backends.raycing as raycing
        import xrt.backends.raycing.apertures as ra
        import xrt.backends.raycing.materials as rm
        import xrt.backends.raycing.oes as roe
        import xrt.backends.raycing.screens as rsc
        import xrt.backends.raycing.sources as rs
    return raycing, rs, roe, ra, rsc, rm


@dataclass(frozen=True)
class RayHits:
    """Rays arriving at an observation point.

    Attributes
    ----------
    x_um, y_um : ndarray
        Positions in the observation plane, um.
    w : ndarray
        Weights, photons/s at the nominal ring current.
    """

    x_um: np.ndarray
    y_um: np.ndarray
    w: np.ndarray


@dataclass
class _Stage:
    key: tuple
    beam: Any  # xrt Beam of surviving rays after this element (None for observers)
    w0: float  # photons/s per unit ray intensity
    hits: RayHits | None = None


class XrtBackend:
    """Traces a beamline with xrt, caching what a move does not change.

    Parameters
    ----------
    desc : BeamlineDescription
    """

    name = "xrt"

    def __init__(self, desc: BeamlineDescription) -> None:
        self.desc = desc
        self.frames: dict[str, Frame] = design_frames(desc)
        self._x = _import_xrt()
        raycing = self._x[0]
        raycing._VERBOSITY_ = 0
        self._materials: dict[tuple, Any] = {}
        self._sources: OrderedDict[tuple, tuple[Any, float]] = OrderedDict()
        self._stages: list[_Stage] = []
        self.stats = {"source_builds": 0, "stages_traced": 0, "stages_reused": 0}

    # ------------------------------------------------------------------ public
    def trace(self, settings: tuple[ElementSettings, ...], rays: int,
              seed: int) -> dict[str, RayHits]:
        """Trace *rays* rays through the beamline set as *settings*.

        Returns
        -------
        dict of str to RayHits
            For every observation point (diagnostics and detector), by name.
        """
        if len(settings) != len(self.desc.elements):
            raise BackendError("settings do not match the beamline's elements")
        keys = [(rays, seed, s) for s in settings]
        start = 0
        while (start < len(self._stages) and start < len(keys)
               and self._stages[start].key == keys[start]):
            start += 1
        self.stats["stages_reused"] += start
        del self._stages[start:]
        try:
            for i in range(start, len(keys)):
                e, s = self.desc.elements[i], settings[i]
                prev = self._stages[i - 1] if i > 0 else None
                self._stages.append(self._run_stage(e, s, prev, rays, seed, keys[i]))
                self.stats["stages_traced"] += 1
        except BackendError:
            raise
        except Exception as exc:  # xrt raised: report it as ours, with the element
            raise BackendError(f"xrt failed while tracing element {e.name!r}: {exc}") from exc
        return {st_e.name: st.hits for st_e, st in zip(self.desc.elements, self._stages,
                                                       strict=True) if st.hits is not None}

    def element_pose(self, name: str, settings: ElementSettings,
                     second_crystal: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Exact pose of an optical surface as xrt places it: ``(center_mm, R)``.

        ``R`` maps the element's local frame (x across, y along, z the surface
        normal) to the global frame: ``global = center + R @ local``. Used by the
        fast backend to share xrt's conventions, and by its tests.
        """
        e = self.desc.element(name)
        frame = self.frames[name]
        with _quiet_seeded(None):
            if isinstance(settings, MirrorSettings):
                oe = self._build_mirror(e, settings, frame)  # type: ignore[arg-type]
                kw: dict[str, Any] = {}
            elif isinstance(settings, MonoSettings):
                oe = self._build_mono(e, settings, frame)
                kw = {"is2ndXtal": second_crystal}
            else:
                raise BackendError(f"{name!r} has no optical surface to probe")
            rs = self._x[1]
            probe = rs.Beam(nrays=4)
            pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
            probe.x[:], probe.y[:], probe.z[:] = pts[:, 0], pts[:, 1], pts[:, 2]
            probe.a[:], probe.b[:], probe.c[:] = 0.0, 1.0, 0.0
            oe.local_to_global(probe, **kw)
        g = np.stack([probe.x, probe.y, probe.z], axis=1)
        return g[0].copy(), (g[1:] - g[0]).T.copy()

    def surface_material(self, name: str) -> Any:
        """The xrt material of an optical element (for the fast backend's tables)."""
        e = self.desc.element(name)
        if isinstance(e, CrystalMonochromator):
            return self._crystal(e)
        return self._material(e.coating)  # type: ignore[attr-defined]

    def source_rays(self, settings: SourceSettings, rays: int, seed: int) -> dict[str, Any]:
        """Unperturbed source rays as plain arrays (shared with the fast backend).

        Returns ``x, y, z`` (mm), ``a, b, c`` (direction cosines), ``E`` (eV),
        ``Jss, Jpp`` (intensities of the horizontal and vertical polarisation)
        and ``w0`` (photons/s per unit ray intensity at nominal current).
        """
        beam, w0 = self._cached_source(settings, rays, seed)
        out = {k: np.array(getattr(beam, k), dtype=float)
               for k in ("x", "y", "z", "a", "b", "c", "E")}
        out["Jss"] = np.real(np.asarray(beam.Jss)).astype(float)
        out["Jpp"] = np.real(np.asarray(beam.Jpp)).astype(float)
        out["w0"] = w0
        return out

    def mirror_reflectivity(self, name: str, energies_eV: np.ndarray,
                            grazing_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intensity reflectivity ``(Rs, Rp)`` of a mirror or multilayer on an
        ``energies x angles`` grid, from xrt's material model."""
        mat = self.surface_material(name)
        E, th = np.meshgrid(energies_eV, grazing_rad, indexing="ij")
        with _quiet_seeded(None):
            amp = mat.get_amplitude(E.ravel(), -np.sin(th.ravel()))
        rs, rp = np.abs(amp[0]) ** 2, np.abs(amp[1]) ** 2
        return rs.reshape(E.shape), rp.reshape(E.shape)

    def crystal_reflectivity(self, name: str, energies_eV: np.ndarray,
                             dtheta_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Symmetric-Bragg intensity reflectivity ``(Rs, Rp)`` of a crystal versus
        the deviation from the kinematic Bragg angle, on an ``energies x dtheta``
        grid (the intrinsic curve, refraction shift included)."""
        mat = self.surface_material(name)
        E, dth = np.meshgrid(energies_eV, dtheta_rad, indexing="ij")
        theta = np.arcsin(np.clip(
            _HC_EV_A / (2.0 * mat.d * E), -1.0, 1.0)) + dth
        with _quiet_seeded(None):
            amp = mat.get_amplitude(E.ravel(), -np.sin(theta.ravel()), np.sin(theta.ravel()))
        rs, rp = np.abs(amp[0]) ** 2, np.abs(amp[1]) ** 2
        return rs.reshape(E.shape), rp.reshape(E.shape)

    def clear_cache(self) -> None:
        """Forget every cached beam (the next trace is a full one)."""
        self._stages.clear()
        self._sources.clear()

    # ------------------------------------------------------------------ stages
    def _run_stage(self, e: Element, s: ElementSettings, prev: _Stage | None, rays: int,
                   seed: int, key: tuple) -> _Stage:
        if isinstance(s, SourceSettings):
            beam, w0 = self._source(e, s, rays, seed)
            return _Stage(key, beam, w0)
        if prev is None:
            raise BackendError(f"element {e.name!r} comes before any source")
        upstream = self._last_beam_stage()
        beam_in, w0 = upstream.beam, upstream.w0
        frame = self.frames[e.name]
        if isinstance(s, ObserverSettings):
            return _Stage(key, None, w0, self._observe(e, s, frame, beam_in, w0))
        with _quiet_seeded(seed + 7919 * (self.desc.elements.index(e) + 1)):
            if isinstance(s, SlitSettings) or (isinstance(s, OffsetSettings)
                                               and isinstance(e, Aperture)):
                out = self._aperture(e, s, frame, beam_in)
            elif isinstance(s, MirrorSettings):
                out = self._mirror(e, s, frame, beam_in)  # type: ignore[arg-type]
            elif isinstance(s, MonoSettings):
                out = self._mono(e, s, frame, beam_in)
            elif isinstance(s, OffsetSettings) and isinstance(e, CompoundRefractiveLens):
                out = self._lens(e, s, frame, beam_in)
            else:  # pragma: no cover - every element kind is handled above
                raise BackendError(f"xrt backend cannot trace a {e.kind} ({e.name!r})")
        return _Stage(key, out, w0)

    def _last_beam_stage(self) -> _Stage:
        for st in reversed(self._stages):
            if st.beam is not None:
                return st
        raise BackendError("no beam upstream")  # pragma: no cover

    def _copy(self, beam: Any) -> Any:
        return self._x[1].Beam(copyFrom=beam)

    def _keep(self, beam: Any, mask: np.ndarray) -> Any:
        """A copy of *beam* with only the rays in *mask* (all marked good)."""
        out = self._copy(beam)
        out.filter_by_index(np.nonzero(mask)[0])
        return out

    # ------------------------------------------------------------------ source
    def _source(self, e: Element, s: SourceSettings, rays: int, seed: int) -> tuple[Any, float]:
        base, w0 = self._cached_source(s, rays, seed)
        return self._perturb(base, s), w0

    def _cached_source(self, s: SourceSettings, rays: int, seed: int) -> tuple[Any, float]:
        """Unperturbed source beam and its weight, from the LRU cache or made anew."""
        gap = None if s.gap_mm is None else round(s.gap_mm, 9)
        key = (gap, round(s.energy_eV, 9), rays, seed)
        if key in self._sources:
            self._sources.move_to_end(key)
            return self._sources[key]
        made = self._make_source(self.desc.source, s, rays, seed)
        self._sources[key] = made
        self.stats["source_builds"] += 1
        while len(self._sources) > _SOURCE_CACHE_SIZE:
            self._sources.popitem(last=False)
        return made

    def _make_source(self, e: Element, s: SourceSettings, rays: int,
                     seed: int) -> tuple[Any, float]:
        raycing, rs = self._x[0], self._x[1]
        bl = raycing.BeamLine()
        with _quiet_seeded(seed):
            if isinstance(e, Undulator):
                K = physics.undulator_K(s.gap_mm, e.period_mm, e.field_coeffs)  # type: ignore[arg-type]
                src = rs.Undulator(
                    bl, center=[0, 0, 0], nrays=rays, period=e.period_mm, n=e.n_periods, K=K,
                    eE=e.electron_energy_GeV, eI=e.current_mA * 1e-3,
                    eEpsilonX=e.emittance_x_pm * 1e-3, eEpsilonZ=e.emittance_y_pm * 1e-3,
                    betaX=e.beta_x_m, betaZ=e.beta_y_m, eEspread=e.energy_spread,
                    eMin=s.energy_eV - e.band_eV / 2, eMax=s.energy_eV + e.band_eV / 2,
                    distE="eV", xPrimeMax=e.acceptance_x_urad * 1e-3,
                    zPrimeMax=e.acceptance_y_urad * 1e-3, targetOpenCL=None,
                    uniformRayDensity=False)
                beam = src.shine()
                if beam is None or len(beam.x) < rays:
                    raise BackendError(
                        f"undulator produced no rays at gap {s.gap_mm:.4f} mm, "
                        f"{s.energy_eV:.1f} eV")
                sw = np.asarray(getattr(beam, "sourceWeight", 0.0), dtype=float)
                if sw.ndim:
                    sw = sw[:rays]
                beam.filter_by_index(np.arange(rays))
                w0 = float(np.mean(sw))
            elif isinstance(e, GaussianSource):
                sx, sy, sxp, syp = e.sizes()
                src = rs.GeometricSource(
                    bl, center=[0, 0, 0], nrays=rays, distx="normal", dx=sx * 1e-3,
                    distz="normal", dz=sy * 1e-3, distxprime="normal", dxprime=sxp * 1e-6,
                    distzprime="normal", dzprime=syp * 1e-6, distE="flat",
                    energies=(s.energy_eV - e.band_eV / 2, s.energy_eV + e.band_eV / 2),
                    polarization="horizontal")
                beam = src.shine()
                w0 = e.flux_ph_s / rays
            else:  # pragma: no cover
                raise BackendError(f"{e.kind} is not a source")
        return beam, w0

    def _perturb(self, base: Any, s: SourceSettings) -> Any:
        p = s.perturbation
        beam = self._copy(base)
        if (p.dx_um, p.dy_um, p.dxp_urad, p.dyp_urad, p.size_x_scale, p.size_y_scale) == \
                (0.0, 0.0, 0.0, 0.0, 1.0, 1.0):
            return beam
        beam.x[:] = beam.x * p.size_x_scale + p.dx_um * 1e-3
        beam.z[:] = beam.z * p.size_y_scale + p.dy_um * 1e-3
        beam.a[:] = beam.a + p.dxp_urad * 1e-6 * beam.b
        beam.c[:] = beam.c + p.dyp_urad * 1e-6 * beam.b
        norm = np.sqrt(beam.a**2 + beam.b**2 + beam.c**2)
        beam.a /= norm
        beam.b /= norm
        beam.c /= norm
        return beam

    # ------------------------------------------------------------------ optics
    def _aperture(self, e: Element, s: SlitSettings | OffsetSettings, frame: Frame,
                  beam_in: Any) -> Any:
        raycing, ra = self._x[0], self._x[3]
        bl = raycing.BeamLine()
        xa, za = transverse_axes(frame.d_in)
        beam = self._copy(beam_in)
        if isinstance(s, SlitSettings):
            ap = ra.RectangularAperture(bl, center=list(frame.center), x=list(xa), z=list(za),
                                        opening=[s.left, s.right, s.bottom, s.top])
        else:
            ap_e: Aperture = e  # type: ignore[assignment]
            center = frame.center + s.dx * xa + s.dz * za
            if ap_e.shape == "round":
                ap = ra.RoundAperture(bl, center=list(center), x=list(xa), z=list(za),
                                      r=ap_e.width_mm / 2)
            else:
                w, h = ap_e.width_mm / 2, ap_e.height_mm / 2
                ap = ra.RectangularAperture(bl, center=list(center), x=list(xa), z=list(za),
                                            opening=[-w, w, -h, h])
        ap.propagate(beam)
        return self._keep(beam, beam.state == 1)

    def _material(self, coating: MetalCoating | MultilayerCoating) -> Any:
        rm = self._x[5]
        key = ("coating", coating)
        if key not in self._materials:
            if isinstance(coating, MetalCoating):
                mat = rm.Material(coating.material, rho=coating.density_g_cm3, kind="mirror")
            else:
                d_A = coating.period_nm * 10.0
                mat = rm.Multilayer(
                    tLayer=rm.Material(coating.top, rho=coating.top_density_g_cm3),
                    tThickness=d_A * coating.gamma,
                    bLayer=rm.Material(coating.bottom, rho=coating.bottom_density_g_cm3),
                    bThickness=d_A * (1.0 - coating.gamma), nPairs=coating.pairs,
                    substrate=rm.Material("Si", rho=2.329))
            self._materials[key] = mat
        return self._materials[key]

    def _crystal(self, e: CrystalMonochromator) -> Any:
        rm = self._x[5]
        key = ("crystal", e.crystal, e.temperature_K)
        if key not in self._materials:
            hkl = tuple(int(c) for c in e.crystal[2:])
            self._materials[key] = rm.CrystalSi(hkl=hkl, tK=e.temperature_K)
        return self._materials[key]

    def _build_mirror(self, e: Mirror, s: MirrorSettings, frame: Frame) -> Any:
        raycing, roe = self._x[0], self._x[2]
        bl = raycing.BeamLine()
        theta = e.grazing_mrad * 1e-3
        el, az = frame.el_in, frame.az_in
        pitch, roll = {"up": (theta + el, 0.0), "down": (theta - el, math.pi),
                       "right": (theta, math.pi / 2), "left": (theta, -math.pi / 2)}[e.deflection]
        normal = frame.normal
        lateral_dir = np.cross(normal, frame.d_in)
        lateral_dir /= np.linalg.norm(lateral_dir)
        center = frame.center + s.height * normal + s.lateral * lateral_dir
        common = dict(pitch=pitch, positionRoll=roll, yaw=-az, extraPitch=s.dpitch,
                      extraRoll=s.roll, extraYaw=s.yaw, material=self._material(e.coating),
                      limPhysX=[-e.width_mm / 2, e.width_mm / 2],
                      limPhysY=[-e.length_mm / 2, e.length_mm / 2])
        L = e.length_mm
        if e.shape == "elliptical":
            oe = roe.EllipticalMirrorParam(bl, center=list(center), p=frame.path_mm, q=s.bend,
                                           pAxis=list(frame.d_in), isCylindrical=True, **common)
        else:
            kappa0 = 1.0 / (e.radius_m * 1e3) if e.radius_m is not None else 0.0
            kappa = kappa0 + 8.0 * s.bend / L**2
            if e.shape == "toroidal":
                oe = roe.ToroidMirror(bl, center=list(center), R=(1.0 / kappa if kappa else None),
                                      r=e.sagittal_radius_mm, **common)
            else:
                # a bent flat with fixed ends: its centre sags by kappa L^2 / 8; the design
                # sag is compensated so that only bending away from design moves the surface
                center = center + kappa0 * L**2 / 8.0 * normal
                oe = roe.BentFlatMirror(bl, center=list(center),
                                        R=(1.0 / kappa if abs(kappa) > 1e-15 else None), **common)
        return oe

    def _mirror(self, e: Mirror, s: MirrorSettings, frame: Frame, beam_in: Any) -> Any:
        oe = self._build_mirror(e, s, frame)
        gb, lb = oe.reflect(self._copy(beam_in))
        return self._keep(gb, (lb.state == 1) & (gb.state == 1))

    def _mono(self, e: Element, s: MonoSettings, frame: Frame, beam_in: Any) -> Any:
        dcm = self._build_mono(e, s, frame)
        gb, lb1, lb2 = dcm.double_reflect(self._copy(beam_in))
        return self._keep(gb, (lb1.state == 1) & (lb2.state == 1) & (gb.state == 1))

    def _build_mono(self, e: Element, s: MonoSettings, frame: Frame) -> Any:
        raycing, roe = self._x[0], self._x[2]
        bl = raycing.BeamLine()
        if isinstance(e, CrystalMonochromator):
            mat = self._crystal(e)
        elif isinstance(e, MultilayerMonochromator):
            mat = self._material(e.coating)
        else:  # pragma: no cover
            raise BackendError(f"{e.kind} is not a monochromator")
        w, L = e.width_mm / 2, e.length_mm / 2
        # the second crystal is centred on the design footprint, perp / tan(bragg) along it
        bragg_m = e.motor("bragg")
        theta0 = to_internal(bragg_m.position, bragg_m.units)  # type: ignore[union-attr]
        long2 = e.fixed_exit_mm / (2.0 * math.cos(theta0)) / math.tan(theta0)
        dcm = roe.DCM(bl, center=list(frame.center), bragg=s.bragg, pitch=frame.el_in,
                      yaw=-frame.az_in, material=mat, material2=mat,
                      cryst2perpTransl=s.perp, cryst2longTransl=long2,
                      cryst2pitch=s.pitch2, cryst2roll=s.roll2,
                      limPhysX=[-w, w], limPhysY=[-L, L], limPhysX2=[-w, w],
                      limPhysY2=[-2 * L, 2 * L])
        return dcm

    def _lens(self, e: CompoundRefractiveLens, s: OffsetSettings, frame: Frame,
              beam_in: Any) -> Any:
        raycing, roe, rm = self._x[0], self._x[2], self._x[5]
        bl = raycing.BeamLine()
        key = ("lens", e.material, e.density_g_cm3)
        if key not in self._materials:
            self._materials[key] = rm.Material(e.material, rho=e.density_g_cm3, kind="lens")
        xa, za = transverse_axes(frame.d_in)
        center = frame.center + s.dx * xa + s.dz * za
        focus = e.radius_um * 1e-3 / 2.0  # paraboloid z = r^2 / (4 focus) = r^2 / (2 R)
        r0 = e.aperture_mm / 2.0
        lens = roe.DoubleParaboloidLens(
            bl, center=list(center), pitch=math.pi / 2 + frame.el_in, yaw=-frame.az_in,
            material=self._materials[key], t=e.thickness_um * 1e-3, focus=focus,
            zmax=r0**2 / (4 * focus), nCRL=e.n_lenses, limPhysX=[-r0, r0], limPhysY=[-r0, r0])
        out = lens.multiple_refract(self._copy(beam_in))
        gb = out[0] if isinstance(out, tuple) else out
        return self._keep(gb, gb.state == 1)

    # ------------------------------------------------------------------ observers
    def _observe(self, e: Element, s: ObserverSettings, frame: Frame, beam_in: Any,
                 w0: float) -> RayHits:
        raycing, rsc = self._x[0], self._x[4]
        bl = raycing.BeamLine()
        xa, za = transverse_axes(frame.d_in)
        center = frame.center + s.dx * xa + s.dz * za + s.dy * frame.d_in
        with _quiet_seeded(None):
            screen = rsc.Screen(bl, center=list(center), x=list(xa), z=list(za))
            lb = screen.expose(beam_in)
        good = lb.state == 1
        w = np.where(good, (lb.Jss + lb.Jpp) * w0, 0.0)
        return RayHits(x_um=np.asarray(lb.x) * 1e3, y_um=np.asarray(lb.z) * 1e3, w=w)

