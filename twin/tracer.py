"""The twin: a pure function of (description, motor positions, hidden errors, seed).

:class:`Twin` validates the requested motor positions, resolves them into
element settings, has a backend trace the rays, and turns the rays that reach
each observation point into readings: statistics inside the field of view,
images for cameras and the detector, and optional detector noise.

Example
-------
>>> from twin import Twin, HiddenErrors, default_preset
>>> twin = Twin(default_preset(), backend="xrt", rays=5000)      # doctest: +SKIP
>>> obs = twin.trace({"kb_v.pitch": 5.0}, seed=1)                # doctest: +SKIP
>>> obs.diagnostics["sample"].stats.fwhm_y_um                    # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from twin.description import (
    BeamlineDescription,
    BeamPositionMonitor,
    Detector,
    Element,
    IonChamber,
    SampleStage,
    _ImagingDiagnostic,
)
from twin.disturbances import DisturbanceState, nominal_current_mA
from twin.errors import ConfigError, NonFiniteError, UnknownNameError
from twin.hidden import HiddenErrors
from twin.limits import check_rays
from twin.observation import BeamStats, Observation, Reading, beam_stats, image_stats
from twin.settings import ElementSettings, resolve, validate_positions

__all__ = ["Twin", "BACKENDS", "TraceBackend"]

#: backend name -> "module:Class"; imported only when used (xrt takes ~2 s to import)
BACKENDS: dict[str, str] = {"xrt": "twin._xrt_backend:XrtBackend",
                           "fast": "twin._fast_backend:FastBackend"}

_NOISE_STREAM = 0x4E4F4953  # "NOIS"


class TraceBackend(Protocol):
    """What a tracing backend provides (see :mod:`twin._xrt_backend`)."""

    name: str

    def trace(self, settings: tuple[ElementSettings, ...], rays: int,
              seed: int) -> Mapping[str, Any]: ...

    def clear_cache(self) -> None: ...


def _histogram2d(x: np.ndarray, y: np.ndarray, w: np.ndarray, nx: int, ny: int,
                 extent: tuple[float, float, float, float]) -> np.ndarray:
    """Weighted 2-D histogram, ``(ny, nx)``, row 0 at *extent*'s bottom (bincount: fast)."""
    x0, x1, y0, y1 = extent
    ix = np.floor((x - x0) * (nx / (x1 - x0))).astype(np.int64)
    iy = np.floor((y - y0) * (ny / (y1 - y0))).astype(np.int64)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    flat = np.bincount(iy[inside] * nx + ix[inside], weights=w[inside], minlength=nx * ny)
    return flat.reshape(ny, nx)


#: relative rms error of a knife-edge size measurement at the sample
KNIFE_EDGE_SIZE_ERROR = 0.01


def _knife_edge(s: BeamStats, rng: np.random.Generator, exposure: float) -> BeamStats:
    """What knife-edge scans at the sample report: the beam's own statistics, with
    photon noise on the flux, the centroid known to ``rms / sqrt(photons)`` and the
    sizes to ``KNIFE_EDGE_SIZE_ERROR``."""
    if not s.flux > 0:
        return s
    photons = float(rng.poisson(s.flux * exposure))
    if photons <= 0:
        return BeamStats(flux=0.0)
    k = 1.0 / math.sqrt(photons)
    size = 1.0 + KNIFE_EDGE_SIZE_ERROR * rng.standard_normal(4)
    return BeamStats(flux=photons / exposure,
                     centroid_x_um=s.centroid_x_um + s.rms_x_um * k * rng.standard_normal(),
                     centroid_y_um=s.centroid_y_um + s.rms_y_um * k * rng.standard_normal(),
                     fwhm_x_um=s.fwhm_x_um * size[0], fwhm_y_um=s.fwhm_y_um * size[1],
                     rms_x_um=s.rms_x_um * size[2], rms_y_um=s.rms_y_um * size[3])


def _make_backend(name: str, desc: BeamlineDescription, **options: Any) -> TraceBackend:
    if name not in BACKENDS:
        raise UnknownNameError(f"unknown backend {name!r}; available backends: "
                               f"{', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(desc, **options)


class Twin:
    """Digital twin of one beamline.

    Parameters
    ----------
    desc : BeamlineDescription
        The frozen beamline description.
    backend : str
        Tracing fidelity: ``"xrt"`` (the physics reference) or ``"fast"`` (the torch
        tracer on xrt's rays, poses and reflectivities; batched and differentiable
        through :class:`twin.fast.FastTwin`).
    rays : int
        Rays per trace (per beamline state).
    **backend_options
        Passed to the backend, e.g. ``dtype=torch.float32`` or ``device="cuda"`` for
        ``"fast"``.
    """

    def __init__(self, desc: BeamlineDescription, *, backend: str = "xrt",
                 rays: int = 10_000, **backend_options: Any) -> None:
        check_rays(rays)
        self.desc = desc
        self.rays = rays
        self.backend_name = backend
        self._backend = _make_backend(backend, desc, **backend_options)
        self._nominal_mA = nominal_current_mA(desc)
        # noise-free readings of the last trace, reused while the backend reuses the rays
        self._readings: dict[str, tuple[object, float, Reading]] = {}

    @property
    def backend(self) -> TraceBackend:
        """The tracing backend (for cache statistics and benchmarks)."""
        return self._backend

    def trace(self, positions: Mapping[str, float] | None = None, *,
              hidden: HiddenErrors | None = None, seed: int = 0,
              disturbance: DisturbanceState | None = None, noise: bool = False,
              exposure_s: float | None = None, check_limits: bool = True,
              noise_seed: int | None = None) -> Observation:
        """Trace the beamline and observe it.

        Parameters
        ----------
        positions : mapping of str to float, optional
            Motor positions in motor units (``{"kb_v.pitch": 5.0}``); motors left
            out sit at their design positions.
        hidden : HiddenErrors, optional
            The beamline's hidden errors (none: the ideal beamline).
        seed : int
            Seeds the rays and the detector noise. Same inputs and seed, same result.
        disturbance : DisturbanceState, optional
            Disturbances at this instant (none: a quiet machine at nominal current).
        noise : bool
            Add photon (Poisson) and readout noise to the detector and camera
            images, and noise to BPM and ion-chamber readings; readings are then
            computed from the noisy data, as online analysis would.
        exposure_s : float, optional
            Exposure for the noise model, s (default: the detector's).
        check_limits : bool
            False lets positions beyond the soft limits through (the twin's own
            motor simulation uses this for backlash overshoot); finiteness and
            names are always checked.
        noise_seed : int, optional
            Seeds the detector noise on its own (default: *seed*). A live detector
            takes successive frames with the same rays and a new *noise_seed*.

        Raises
        ------
        UnknownNameError, NonFiniteError, LimitError
            For bad motor names or values; nothing is traced.
        """
        t0 = time.perf_counter()
        hidden = hidden if hidden is not None else HiddenErrors.none()
        hidden.check(self.desc)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        seed = int(seed)
        if noise_seed is None:
            noise_seed = seed
        elif isinstance(noise_seed, bool) or not isinstance(noise_seed, (int, np.integer)) \
                or noise_seed < 0:
            raise ConfigError(f"noise_seed must be an integer >= 0, got {noise_seed!r}")
        pos = validate_positions(self.desc, dict(positions or {}), check_limits=check_limits)
        exposure = exposure_s if exposure_s is not None else self.desc.detector.exposure_s
        if isinstance(exposure, bool) or not isinstance(exposure, (int, float)) or \
                not (math.isfinite(exposure) and exposure > 0):
            raise NonFiniteError(f"exposure_s must be a finite number > 0, got {exposure_s!r}")
        settings, energy = resolve(self.desc, pos, hidden, disturbance)
        hits = self._backend.trace(settings, self.rays, seed)
        current = disturbance.ring_current_mA if disturbance is not None else self._nominal_mA
        scale = current / self._nominal_mA if self._nominal_mA > 0 else 0.0
        rng = np.random.default_rng([_NOISE_STREAM, int(noise_seed)]) if noise else None
        readings: dict[str, Reading] = {}
        detector: Reading | None = None
        for e in self.desc.elements:
            if e.name not in hits:
                continue
            h = hits[e.name]
            memo = self._readings.get(e.name)
            if rng is None and memo is not None and memo[0] is h and memo[1] == scale:
                r = memo[2]  # the backend reused these rays: the reading is unchanged
            else:
                r = self._reading(e, h.x_um, h.y_um, h.w * scale, rng, exposure)
                if rng is None:
                    self._readings[e.name] = (h, scale, r)
            if isinstance(e, Detector):
                detector = r
            else:
                readings[e.name] = r
        if detector is None:  # pragma: no cover - validation guarantees a detector
            raise ConfigError("the beamline has no detector")
        full = {**self.desc.design_positions(), **pos}
        stats = getattr(self._backend, "stats", {})
        return Observation(detector=detector, diagnostics=readings, positions=full,
                           energy_eV=energy, ring_current_mA=current, backend=self.backend_name,
                           rays=self.rays, seed=seed,
                           meta={"trace_s": time.perf_counter() - t0, "backend_stats":
                                 dict(stats)})

    def _reading(self, e: Element, x: np.ndarray, y: np.ndarray, w: np.ndarray,
                 rng: np.random.Generator | None, exposure: float) -> Reading:
        if isinstance(e, _ImagingDiagnostic):
            fov = e.fov_um
            nx, ny = e.pixels
            extent = (-fov[0] / 2, fov[0] / 2, -fov[1] / 2, fov[1] / 2)
            image = _histogram2d(x, y, w, nx, ny, extent)
            if rng is None:
                return Reading(e.name, e.kind, beam_stats(x, y, w, fov), image, extent)
            counts = rng.poisson(np.clip(image, 0, None) * exposure).astype(float)
            readout = getattr(e, "readout_noise_ph", 0.0)
            if readout > 0:
                counts += rng.normal(0.0, readout, counts.shape)
            noisy = counts / exposure
            if isinstance(e, SampleStage):
                # a nano-focus is measured by knife-edge scans, not by the camera's pixels
                return Reading(e.name, e.kind, _knife_edge(beam_stats(x, y, w, fov), rng,
                                                           exposure), noisy, extent)
            return Reading(e.name, e.kind, image_stats(noisy, extent), noisy, extent)
        if isinstance(e, BeamPositionMonitor):
            fov = (e.fov_mm * 1e3, e.fov_mm * 1e3)
            stats = beam_stats(x, y, w, fov)
            if rng is not None and stats.flux > 0:
                sigma = e.position_noise_um * math.sqrt(1e12 / stats.flux)
                photons = rng.poisson(stats.flux * exposure) / exposure
                stats = BeamStats(flux=float(photons),
                                  centroid_x_um=stats.centroid_x_um + rng.normal(0, sigma),
                                  centroid_y_um=stats.centroid_y_um + rng.normal(0, sigma),
                                  fwhm_x_um=stats.fwhm_x_um, fwhm_y_um=stats.fwhm_y_um,
                                  rms_x_um=stats.rms_x_um, rms_y_um=stats.rms_y_um)
            return Reading(e.name, e.kind, stats)
        if isinstance(e, IonChamber):
            a = e.aperture_mm * 1e3
            stats = beam_stats(x, y, w, (a, a), position=False)
            if rng is not None:
                stats = BeamStats(flux=float(rng.poisson(stats.flux * exposure) / exposure))
            return Reading(e.name, e.kind, stats)
        raise ConfigError(f"{e.name!r} ({e.kind}) is not an observation point")  # pragma: no cover
