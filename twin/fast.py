"""The batched, differentiable face of the fast twin.

:class:`FastTwin` traces B beamline states at once and returns every reading as
``(B,)`` torch tensors. Flux, centroids and rms sizes are differentiable with
respect to the motor positions and the hidden errors; the FWHM is measured
(not differentiated) with the same estimator as :mod:`twin.observation`.

>>> ft = FastTwin(default_preset(), rays=1000)                      # doctest: +SKIP
>>> pos = ft.positions([{"kb_v.pitch": 5.0}, {"kb_v.pitch": -5.0}])  # doctest: +SKIP
>>> pos.requires_grad_(True)                                         # doctest: +SKIP
>>> out = ft.observe(pos)                                            # doctest: +SKIP
>>> out["sample"]["centroid_y_um"].sum().backward()                  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from twin import _fast_kernels as K
from twin import physics
from twin._fast_backend import FastBackend, Hits, compiled
from twin.description import (
    Aperture,
    BeamlineDescription,
    BeamPositionMonitor,
    CompoundRefractiveLens,
    CrystalMonochromator,
    Detector,
    IonChamber,
    Mirror,
    MultilayerMonochromator,
    SampleStage,
    Slits,
    Undulator,
    _ImagingDiagnostic,
)
from twin.disturbances import SourcePerturbation, nominal_current_mA
from twin.errors import ConfigError
from twin.hidden import HiddenErrors
from twin.limits import check_rays
from twin.observation import STAT_KEYS
from twin.settings import validate_positions
from twin.units import UNITS

__all__ = ["FastTwin", "batch_stats", "batch_fwhm", "SOURCE_FIELDS"]

#: columns of a source-perturbation tensor (:meth:`FastTwin.hits`), the fields of
#: :class:`~twin.disturbances.SourcePerturbation`: um, urad and size multipliers
SOURCE_FIELDS = ("dx_um", "dy_um", "dxp_urad", "dyp_urad", "size_x_scale", "size_y_scale")

#: fewer live rays than this give no FWHM (NaN), as twin.observation.fwhm
_MIN_FWHM_RAYS = 10


@torch.compiler.disable
def _argsort_rows(v: torch.Tensor) -> torch.Tensor:
    """Sorting order of each row. On the CPU numpy's vectorised sort is several times
    torch's (measured 5x on 1024 x 1000 float64); kept out of compiled graphs."""
    if v.device.type == "cpu":
        return torch.from_numpy(np.argsort(v.detach().numpy(), axis=-1))
    return torch.argsort(v, dim=-1)


def _weighted_quantile(v: torch.Tensor, w: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Weighted quantiles along the last axis, (B, N) -> (B, len(qs)): linear
    interpolation of the values on the normalised cumulative weights, as
    ``np.interp(q, cumsum(w) / sum(w), sorted(v))`` does."""
    order = _argsort_rows(v)
    vs, ws = torch.gather(v, -1, order), torch.gather(w, -1, order)
    cw = torch.cumsum(ws, -1)
    cw = cw / cw[..., -1:].clamp(min=torch.finfo(v.dtype).tiny)
    q = torch.tensor(qs, dtype=v.dtype, device=v.device).expand(v.shape[0], len(qs)).contiguous()
    i1 = torch.searchsorted(cw.contiguous(), q).clamp(min=1, max=v.shape[-1] - 1)
    i0 = i1 - 1
    c0, c1 = torch.gather(cw, -1, i0), torch.gather(cw, -1, i1)
    v0, v1 = torch.gather(vs, -1, i0), torch.gather(vs, -1, i1)
    frac = torch.where(c1 > c0, (q - c0) / (c1 - c0), torch.zeros_like(q)).clamp(0, 1)
    out = v0 + frac * (v1 - v0)
    first = torch.gather(cw, -1, torch.zeros_like(i0))
    return torch.where(q <= first, torch.gather(vs, -1, torch.zeros_like(i0)), out)


def _fwhm_rows(v: torch.Tensor, w: torch.Tensor, prep: Callable[..., Any] | None = None,
               hist: Callable[..., Any] | None = None) -> torch.Tensor:
    """FWHM of weighted samples per row: the batched twin of :func:`twin.observation.fwhm`.

    Same estimator step for step: bins of max(sigma / 10, 2 IQR n_eff^(-1/3))
    over the data range clipped to the median +- 8 sigma (plus 3 bins), a
    1-bin Gaussian smoothing, and interpolated half-maximum crossings walked
    outwards from the maximum. NaN for fewer than 10 rays.

    *prep* and *hist* replace its two stages (:func:`_fwhm_bins`,
    :func:`_fwhm_histogram`) by compiled forms.
    """
    prep = prep or _fwhm_bins
    hist = hist or _fwhm_histogram
    B, N = v.shape
    if N < _MIN_FWHM_RAYS:  # every state lost all but a few rays (compacted batch)
        return torch.full((B,), math.nan, dtype=v.dtype, device=v.device)
    lo, hi, nb_row, sigma = prep(v, w)
    return hist(v, w, lo, hi, nb_row, sigma, int(nb_row.max()) if B else 8)


def _fwhm_bins(v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The binning of :func:`_fwhm_rows`: range ``lo, hi``, bins per row and sigma."""
    live = w > 0
    q25, q50, q75 = _weighted_quantile(v, w, (0.25, 0.5, 0.75)).unbind(-1)
    sigma = (q75 - q25) / 1.349
    tiny = torch.finfo(v.dtype).tiny
    n_eff = w.sum(-1) ** 2 / (w * w).sum(-1).clamp(min=tiny)
    width = torch.maximum(sigma / 10.0, 2.0 * (q75 - q25) * n_eff.clamp(min=1.0) ** (-1.0 / 3.0))
    width = width.clamp(min=tiny)
    big = torch.finfo(v.dtype).max
    vmin = torch.where(live, v, torch.full_like(v, big)).min(-1).values
    vmax = torch.where(live, v, torch.full_like(v, -big)).max(-1).values
    lo = torch.maximum(vmin, q50 - 8 * sigma) - 3 * width
    hi = torch.minimum(vmax, q50 + 8 * sigma) + 3 * width
    nb_row = torch.nan_to_num(torch.ceil((hi - lo) / width), nan=8.0).clamp(8, 4000)
    return lo, hi, nb_row, sigma


def _fwhm_histogram(v: torch.Tensor, w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    nb_row: torch.Tensor, sigma: torch.Tensor, nb: int) -> torch.Tensor:
    """The histogram, smoothing and half-maximum crossings of :func:`_fwhm_rows`, on
    *nb* bins (the most of any row)."""
    B = v.shape[0]
    live = w > 0
    bw = (hi - lo) / nb_row  # actual bin width per row, as numpy's histogram
    idx = torch.floor((v - lo.unsqueeze(-1)) / bw.unsqueeze(-1)).long()
    idx = torch.where(v == hi.unsqueeze(-1), idx - 1, idx)
    ok = (idx >= 0) & (idx < nb_row.long().unsqueeze(-1)) & live
    hist = torch.zeros(B, nb, dtype=v.dtype, device=v.device)
    hist.scatter_add_(1, torch.where(ok, idx, torch.zeros_like(idx)),
                      torch.where(ok, w, torch.zeros_like(w)))
    k = torch.arange(-5, 6, dtype=v.dtype, device=v.device)
    kernel = torch.exp(-0.5 * (k / 1.0) ** 2)
    kernel = (kernel / kernel.sum()).reshape(1, 1, -1)
    ar = torch.arange(nb, device=v.device).expand(B, nb)
    smooth = torch.nn.functional.conv1d(hist.unsqueeze(1), kernel, padding=5).squeeze(1)
    in_row = ar < nb_row.long().unsqueeze(-1)
    smooth = torch.where(in_row, smooth, torch.zeros_like(smooth))
    imax = smooth.argmax(-1, keepdim=True)
    half = 0.5 * torch.gather(smooth, -1, imax)
    below = smooth <= half
    left = torch.where(below & (ar < imax), ar, torch.zeros_like(ar)).max(-1).values
    last = nb_row.long() - 1
    right = torch.where(below & (ar > imax) & in_row, ar, last.unsqueeze(-1).expand(B, nb))
    right = right.min(-1).values

    def cross(i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
        y0 = torch.gather(smooth, -1, i0.unsqueeze(-1)).squeeze(-1)
        y1 = torch.gather(smooth, -1, i1.unsqueeze(-1)).squeeze(-1)
        frac = torch.where(y1 != y0, (half.squeeze(-1) - y0) / (y1 - y0), torch.zeros_like(y0))
        return i0.to(v.dtype) + 0.5 + frac * (i1 - i0).to(v.dtype)

    f = (cross((right - 1).clamp(min=0), right) - cross(left, left + 1)) * bw
    n_rays = live.sum(-1)
    return torch.where(n_rays >= _MIN_FWHM_RAYS, torch.where(sigma > 0, f, torch.zeros_like(f)),
                       torch.full_like(f, math.nan))


#: the FWHM of weighted samples per row, measured (not differentiated)
batch_fwhm = torch.no_grad()(_fwhm_rows)

#: the kernels of the readings, by name (see :func:`batch_stats`)
READING_KERNELS: dict[str, Callable[..., Any]] = {"moments": K.moments, "fwhm": batch_fwhm}


def batch_stats(h: Hits, fov_um: tuple[float, float] | None, *, position: bool = True,
                fwhm: bool = True, kernels: Mapping[str, Callable[..., Any]] | None = None
                ) -> dict[str, torch.Tensor]:
    """Readings of a batch of hits inside the field of view (the batched ``beam_stats``).

    *kernels* (default :data:`READING_KERNELS`) sums the moments and measures the
    FWHM; :class:`FastTwin` passes compiled forms when built with ``compile=True``.
    """
    kernels = kernels if kernels is not None else READING_KERNELS
    half = torch.tensor([0.5 * fov_um[0], 0.5 * fov_um[1]] if fov_um is not None else [0, 0],
                        dtype=h.w.dtype, device=h.w.device)
    w, flux, cx, cy, rx, ry = kernels["moments"](h.x_um, h.y_um, h.w, half, fov_um is not None)
    out = {"flux": flux}
    nan = torch.full_like(flux, math.nan)
    if not position:
        return {**out, **{k: nan for k in STAT_KEYS[1:]}}
    has = flux > 0
    out.update(centroid_x_um=torch.where(has, cx, nan), centroid_y_um=torch.where(has, cy, nan),
               rms_x_um=torch.where(has, rx, nan), rms_y_um=torch.where(has, ry, nan))
    if fwhm:
        with torch.no_grad():
            out["fwhm_x_um"] = torch.where(has, kernels["fwhm"](h.x_um, w), nan)
            out["fwhm_y_um"] = torch.where(has, kernels["fwhm"](h.y_um, w), nan)
    return out


class FastTwin:
    """Batched, differentiable twin of one beamline.

    Parameters
    ----------
    desc : BeamlineDescription
    rays : int
        Rays per state.
    device : str, optional
        ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
    dtype : torch.dtype
        Of the rays: ``torch.float64`` (default) or ``torch.float32`` (faster, as
        accurate against xrt: see :class:`twin._fast_backend.FastBackend`). Motor
        positions and hidden errors are float64 whatever the rays' dtype
        (:attr:`param_dtype`): a gap or Bragg angle rounded to float32 would make the
        twin re-sample its source at another gap or energy than xrt's, a different
        Monte-Carlo draw of the same source.
    soft_edges_mm : float
        Sigmoid width of slit blades and mirror ends, mm (0: hard edges, as xrt).
        A few um let gradients flow through slit positions; calibration uses it.
    compile : bool
        Compile the ray kernels and the readings' (moments, FWHM binning) with
        :func:`torch.compile`: 3-4x faster tracing at large batches, after a one-off
        compilation when first traced (one to two minutes on a 2-core CPU; torch caches
        it on disk, and later processes load it in seconds). Worth it for long runs:
        benchmarks, training. Default: eager.
    """

    def __init__(self, desc: BeamlineDescription, *, rays: int = 1000,
                 device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float64, soft_edges_mm: float = 0.0,
                 compile: bool = False) -> None:
        check_rays(rays)
        self.desc = desc
        self.rays = rays
        self.backend = FastBackend(desc, device=device, dtype=dtype, soft_edges_mm=soft_edges_mm,
                                   compile=compile)
        self._kernels = {"moments": self.backend.kernel("moments"),
                         "fwhm": batch_fwhm}
        if compile:
            self._kernels["fwhm"] = functools.partial(
                _fwhm_rows, prep=compiled(_fwhm_bins), hist=compiled(_fwhm_histogram))
        self.device, self.dtype = self.backend.device, dtype
        self.motor_names = list(desc.motors)
        self._index = {n: i for i, n in enumerate(self.motor_names)}
        specs = desc.motors
        #: dtype of motor positions, hidden errors and element parameters (the backend
        #: casts each element's parameters to the rays' dtype, the source's key aside)
        self.param_dtype = torch.float64
        self._factor = torch.tensor([UNITS[specs[n].units] for n in self.motor_names],
                                    dtype=self.param_dtype, device=self.device)
        self._design = torch.tensor([specs[n].position for n in self.motor_names],
                                    dtype=self.param_dtype, device=self.device)
        self.nominal_mA = nominal_current_mA(desc)

    # ------------------------------------------------------------------ inputs
    def positions(self, batch: Sequence[Mapping[str, float]]) -> torch.Tensor:
        """``(B, M)`` float64 tensor of motor positions (motor units) from dicts;
        validated."""
        rows = []
        for pos in batch:
            checked = validate_positions(self.desc, pos)
            row = self._design.clone()
            for n, v in checked.items():
                row[self._index[n]] = v
            rows.append(row)
        return torch.stack(rows)

    def hidden(self, batch: Sequence[HiddenErrors]) -> torch.Tensor:
        """``(B, M)`` float64 tensor of hidden offsets (motor units)."""
        return torch.tensor([[h.offset(n) for n in self.motor_names] for h in batch],
                            dtype=self.param_dtype, device=self.device)

    # ------------------------------------------------------------------ physics
    def _params(self, phys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Element parameter tensors from physical positions (B, M) in internal units."""
        B = phys.shape[0]
        phys = phys.to(self.param_dtype)
        zero = torch.zeros(B, dtype=self.param_dtype, device=self.device)

        def ax(e_name: str, axis: str, default: torch.Tensor | float = 0.0) -> torch.Tensor:
            key = f"{e_name}.{axis}"
            if key in self._index:
                return phys[:, self._index[key]]
            return default if isinstance(default, torch.Tensor) else zero + default

        energy = zero + self.desc.energy_eV
        for e in self.desc.elements:
            if isinstance(e, CrystalMonochromator):
                d = physics.crystal_d_spacing_A(e.crystal, e.temperature_K)
                energy = physics.HC_EV_ANGSTROM / (2.0 * d * torch.sin(ax(e.name, "bragg")))
                break
            if isinstance(e, MultilayerMonochromator):
                bm = e.motor("bragg")
                design = bm.position * UNITS[bm.units]  # type: ignore[union-attr]
                energy = self.desc.energy_eV * math.sin(design) / torch.sin(ax(e.name, "bragg"))
                break
        out: dict[str, torch.Tensor] = {}
        for e in self.desc.elements:
            n = e.name
            if e.kind in ("undulator", "gaussian_source"):
                gap = ax(n, "gap") if isinstance(e, Undulator) else zero + math.nan
                one = zero + 1.0
                sx, sy = one, one
                if isinstance(e, Undulator) and f"{n}.coupling" in self._index:
                    # the ring's coupling knob (see Undulator.coupling_scales)
                    c = ax(n, "coupling")
                    ey = e.emittance_y_pm * c
                    sx = torch.sqrt(torch.clamp(1.0 - ey / e.emittance_x_pm, min=1e-6))
                    sy = torch.sqrt(torch.clamp(1.0 + c, min=1e-6))
                # the ring's orbit bump at the source, um and urad
                out[n] = torch.stack([gap, energy, ax(n, "bump_x") * 1e3, ax(n, "bump_y") * 1e3,
                                      ax(n, "bump_xp") * 1e6, ax(n, "bump_yp") * 1e6, sx, sy], -1)
            elif isinstance(e, Slits):
                hg, vg = ax(n, "hgap"), ax(n, "vgap")
                hc, vc = ax(n, "hcen"), ax(n, "vcen")
                out[n] = torch.stack([hc - hg / 2, hc + hg / 2, vc - vg / 2, vc + vg / 2], -1)
            elif isinstance(e, (Aperture, CompoundRefractiveLens)):
                out[n] = torch.stack([ax(n, "x"), ax(n, "y")], -1)
            elif isinstance(e, Mirror):
                bend0 = e.q_m * 1e3 if e.shape == "elliptical" else 0.0  # type: ignore[operator]
                out[n] = torch.stack([ax(n, "pitch"), ax(n, "roll"), ax(n, "yaw"),
                                      ax(n, "height"), ax(n, "lateral"), ax(n, "bend", bend0)],
                                     -1)
            elif isinstance(e, (CrystalMonochromator, MultilayerMonochromator)):
                bragg = ax(n, "bragg")
                perp0 = e.fixed_exit_mm / (2.0 * torch.cos(bragg))
                out[n] = torch.stack([bragg, ax(n, "pitch2"), ax(n, "roll2"),
                                      ax(n, "perp", perp0)], -1)
            elif isinstance(e, SampleStage):
                out[n] = torch.stack([ax(n, "x"), ax(n, "y"), ax(n, "z")], -1)
            elif isinstance(e, Detector):
                out[n] = torch.stack([ax(n, "x"), ax(n, "y"), zero], -1)
            else:
                out[n] = torch.stack([zero, zero, zero], -1)
        return out

    def hits(self, positions: torch.Tensor, hidden: torch.Tensor | None = None, *,
             seed: int = 0, source: torch.Tensor | None = None) -> dict[str, Hits]:
        """Rays at every observation point for a batch of states.

        *source*, optional, is a ``(B, 6)`` tensor of source perturbations per state
        (:data:`SOURCE_FIELDS`: position um, pointing urad, size multipliers), as the
        disturbance model's :class:`~twin.disturbances.SourcePerturbation` holds them.
        """
        phys = positions if hidden is None else positions + hidden
        params = self._params(phys * self._factor)
        if source is not None:
            params = self._perturb_source(params, source)
        return self.backend.run(params, self.rays, seed)

    def _perturb_source(self, params: dict[str, torch.Tensor],
                        source: torch.Tensor) -> dict[str, torch.Tensor]:
        src = next(e.name for e in self.desc.elements
                   if e.kind in ("undulator", "gaussian_source"))
        prm = params[src]
        if source.dim() != 2 or source.shape != (prm.shape[0], len(SOURCE_FIELDS)):
            raise ConfigError(f"source must be (B, {len(SOURCE_FIELDS)}) = "
                              f"({prm.shape[0]}, {len(SOURCE_FIELDS)}) ({', '.join(SOURCE_FIELDS)})"
                              f", got {tuple(source.shape)}")
        if not torch.isfinite(source.detach()).all():
            raise ConfigError("source perturbations contain NaN or inf")
        if bool((source[:, 4:] <= 0).any()):
            raise ConfigError("source size multipliers must be > 0")
        out = dict(params)
        src_t = source.to(prm)  # added to the ring knobs' change: positions add, sizes multiply
        out[src] = torch.cat([prm[:, :2], prm[:, 2:6] + src_t[:, :4], prm[:, 6:] * src_t[:, 4:]],
                             dim=1)
        return out

    @staticmethod
    def source_tensor(batch: Sequence[SourcePerturbation]) -> torch.Tensor:
        """``(B, 6)`` source perturbations from :class:`SourcePerturbation` records."""
        return torch.tensor([[getattr(p, f) for f in SOURCE_FIELDS] for p in batch],
                            dtype=torch.float64)

    def observe(self, positions: torch.Tensor, hidden: torch.Tensor | None = None, *,
                seed: int = 0, fwhm: bool = True, current_mA: float | None = None,
                source: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Readings of every diagnostic and the detector: ``{name: {stat: (B,) tensor}}``.

        Parameters
        ----------
        positions : Tensor
            ``(B, M)`` commanded motor positions in motor units (see :meth:`positions`).
        hidden : Tensor, optional
            ``(B, M)`` hidden offsets in motor units.
        seed : int
            Seeds the source rays (the same rays for every state).
        fwhm : bool
            Also measure the FWHM (not differentiable; skip it for speed).
        current_mA : float, optional
            Ring current (default: nominal).
        source : Tensor, optional
            ``(B, 6)`` source perturbation of each state (see :meth:`hits`).
        """
        if positions.dim() != 2 or positions.shape[1] != len(self.motor_names):
            raise ConfigError(f"positions must be (B, {len(self.motor_names)}), got "
                              f"{tuple(positions.shape)}")
        if not torch.isfinite(positions.detach()).all():
            raise ConfigError("positions contain NaN or inf")
        hits = self.hits(positions, hidden, seed=seed, source=source)
        scale = (current_mA if current_mA is not None else self.nominal_mA) / self.nominal_mA
        out = {}
        for e in self.desc.elements:
            if e.name not in hits:
                continue
            h = hits[e.name]
            h = Hits(h.x_um, h.y_um, h.w * scale)
            if isinstance(e, _ImagingDiagnostic):
                out[e.name] = batch_stats(h, e.fov_um, fwhm=fwhm, kernels=self._kernels)
            elif isinstance(e, BeamPositionMonitor):
                out[e.name] = batch_stats(h, (e.fov_mm * 1e3, e.fov_mm * 1e3), fwhm=fwhm,
                                          kernels=self._kernels)
            elif isinstance(e, IonChamber):
                a = e.aperture_mm * 1e3
                out[e.name] = batch_stats(h, (a, a), position=False, kernels=self._kernels)
        return out

    def image(self, positions: torch.Tensor, name: str, hidden: torch.Tensor | None = None, *,
              seed: int = 0, pixels: tuple[int, int] | None = None,
              pixel_um: float | None = None,
              source: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable image ``(B, ny, nx)`` in photons/s per pixel (bilinear splatting).

        Defaults to the diagnostic's own pixels; *pixels* and *pixel_um* override
        them (coarse images keep batches small). *source* as for :meth:`hits`.
        """
        e = self.desc.element(name)
        if not isinstance(e, _ImagingDiagnostic):
            raise ConfigError(f"{name!r} is a {e.kind}, not an imaging diagnostic")
        nx, ny = pixels if pixels is not None else e.pixels
        px = pixel_um if pixel_um is not None else e.pixel_um
        h = self.hits(positions, hidden, seed=seed, source=source)[name]
        fx = h.x_um / px + nx / 2 - 0.5
        fy = h.y_um / px + ny / 2 - 0.5
        B = fx.shape[0]
        img = torch.zeros(B, ny * nx, dtype=self.dtype, device=self.device)
        x0, y0 = torch.floor(fx.detach()), torch.floor(fy.detach())
        for ox in (0, 1):
            for oy in (0, 1):
                xi, yi = x0 + ox, y0 + oy
                wgt = (1 - (fx - xi).abs()) * (1 - (fy - yi).abs()) * h.w
                ok = (xi >= 0) & (xi < nx) & (yi >= 0) & (yi < ny)
                flat = torch.where(ok, yi * nx + xi, torch.zeros_like(xi)).long()
                img = img.scatter_add(1, flat, torch.where(ok, wgt, torch.zeros_like(wgt)))
        return img.reshape(B, ny, nx)

    def to_numpy(self, readings: Mapping[str, Mapping[str, torch.Tensor]]) -> dict:
        """Readings as nested dicts of numpy arrays."""
        return {n: {k: v.detach().cpu().numpy() for k, v in r.items()}
                for n, r in readings.items()}


