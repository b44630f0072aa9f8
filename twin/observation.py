"""What the beamline's diagnostics report: readings, images and beam statistics.

Statistics are computed **inside the field of view only**: rays that land
outside a camera or a BPM are not seen by it, so a beam pushed half off a
detector loses flux instead of looking small. Positions are in um in the
plane of the observation point (x horizontal to the right looking downstream,
y vertical up); flux is in photons/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twin.errors import UnknownNameError

__all__ = ["BeamStats", "Reading", "Observation", "beam_stats", "fwhm", "image_stats",
           "STAT_KEYS"]

#: JSON keys of a reading, in order (a contract with users' scripts)
STAT_KEYS = ("flux", "centroid_x_um", "centroid_y_um", "fwhm_x_um", "fwhm_y_um", "rms_x_um",
             "rms_y_um")

_NAN = float("nan")


@dataclass(frozen=True)
class BeamStats:
    """Beam statistics at one observation point.

    Attributes
    ----------
    flux : float
        Photons/s inside the field of view.
    centroid_x_um, centroid_y_um : float
        Intensity-weighted centroid, um (NaN without beam).
    fwhm_x_um, fwhm_y_um : float
        Full width at half maximum of the projected profiles, um.
    rms_x_um, rms_y_um : float
        Intensity-weighted rms sizes, um.
    """

    flux: float
    centroid_x_um: float = _NAN
    centroid_y_um: float = _NAN
    fwhm_x_um: float = _NAN
    fwhm_y_um: float = _NAN
    rms_x_um: float = _NAN
    rms_y_um: float = _NAN

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready dict; NaN (no beam, or not measured) becomes ``None``."""
        return {k: _json_float(getattr(self, k)) for k in STAT_KEYS}


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


@dataclass(frozen=True)
class Reading:
    """The reading of one observation point.

    Attributes
    ----------
    name : str
        Element name.
    kind : str
        ``screen``, ``bpm``, ``ion_chamber``, ``sample`` or ``detector``.
    stats : BeamStats
    image : ndarray or None
        ``(ny, nx)`` photons/s per pixel, row 0 at the bottom (y increasing),
        for imaging diagnostics.
    extent_um : tuple of float or None
        ``(x0, x1, y0, y1)`` of the image, um.
    """

    name: str
    kind: str
    stats: BeamStats
    image: np.ndarray | None = None
    extent_um: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Observation:
    """Everything a trace returns: the detector and every diagnostic.

    Attributes
    ----------
    detector : Reading
    diagnostics : dict of str to Reading
        In beam order.
    positions : dict of str to float
        Motor positions the trace used, in motor units (as commanded).
    energy_eV : float
        Photon energy the monochromator actually selects.
    ring_current_mA : float
    backend : str
    rays : int
    seed : int
    meta : dict
        Free-form extras (timings, cache use).
    """

    detector: Reading
    diagnostics: dict[str, Reading]
    positions: dict[str, float]
    energy_eV: float
    ring_current_mA: float
    backend: str
    rays: int
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)

    def reading(self, name: str) -> Reading:
        """The reading of the detector or the diagnostic called *name*."""
        if name == self.detector.name:
            return self.detector
        if name in self.diagnostics:
            return self.diagnostics[name]
        raise UnknownNameError(
            f"unknown observation point {name!r}; known: "
            f"{', '.join([self.detector.name, *self.diagnostics])}")

    def to_dict(self) -> dict[str, Any]:
        """The ``beamtwin twin trace --json`` document (images left out)."""
        out: dict[str, Any] = dict(self.detector.stats.to_dict())
        out["diagnostics"] = {n: r.stats.to_dict() for n, r in self.diagnostics.items()}
        out["energy_eV"] = self.energy_eV
        out["ring_current_mA"] = self.ring_current_mA
        out["backend"] = self.backend
        out["rays"] = self.rays
        out["seed"] = self.seed
        return out


# --------------------------------------------------------------------------- statistics
def fwhm(values: np.ndarray, weights: np.ndarray) -> float:
    """FWHM of a weighted 1-D sample, from a smoothed histogram (same units as *values*).

    The bin width is a tenth of a robust sigma (IQR / 1.349), so that a
    Gaussian's FWHM spans about 24 bins whatever its size, but never finer than
    the Freedman-Diaconis width ``2 IQR n_eff^(-1/3)`` for the effective number
    of rays (Kish: ``(sum w)^2 / sum w^2``): a sparse, slit-cut flat top would
    otherwise dip below half maximum inside its top. The histogram is smoothed
    with a 1-bin Gaussian and the half-maximum crossings are interpolated
    linearly. Returns NaN for fewer than 10 rays.
    """
    n = values.size
    if n < 10 or not np.any(weights > 0):
        return _NAN
    q25, q50, q75 = _weighted_quantiles(values, weights, (0.25, 0.5, 0.75))
    sigma = (q75 - q25) / 1.349
    if not sigma > 0:
        # a line focus or a single point: width below what the sample resolves
        return 0.0
    n_eff = float(weights.sum()) ** 2 / float(np.dot(weights, weights))
    width = max(sigma / 10.0, 2.0 * (q75 - q25) * n_eff ** (-1.0 / 3.0))
    lo = max(values.min(), q50 - 8 * sigma) - 3 * width
    hi = min(values.max(), q50 + 8 * sigma) + 3 * width
    nb = int(min(4000, max(8, math.ceil((hi - lo) / width))))
    hist, edges = np.histogram(values, bins=nb, range=(lo, hi), weights=weights)
    k = np.arange(-5, 6)
    kernel = np.exp(-0.5 * (k / 1.0) ** 2)
    smooth = np.convolve(hist, kernel / kernel.sum(), mode="same")
    i_max = int(np.argmax(smooth))
    half = 0.5 * smooth[i_max]
    centers = 0.5 * (edges[:-1] + edges[1:])
    left = i_max
    while left > 0 and smooth[left] > half:
        left -= 1
    right = i_max
    while right < nb - 1 and smooth[right] > half:
        right += 1

    def cross(i0: int, i1: int) -> float:
        y0, y1 = smooth[i0], smooth[i1]
        if y1 == y0:
            return float(centers[i0])
        return float(centers[i0] + (half - y0) * (centers[i1] - centers[i0]) / (y1 - y0))

    return cross(right - 1, right) - cross(left, left + 1)


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray,
                        qs: tuple[float, ...]) -> tuple[float, ...]:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cw = np.cumsum(w)
    cw /= cw[-1]
    return tuple(float(np.interp(q, cw, v)) for q in qs)


def beam_stats(x_um: np.ndarray, y_um: np.ndarray, w_ph_s: np.ndarray,
               fov_um: tuple[float, float] | None, *, position: bool = True) -> BeamStats:
    """Statistics of rays at an observation point.

    Parameters
    ----------
    x_um, y_um : ndarray
        Ray positions in the plane of the observation point, um.
    w_ph_s : ndarray
        Ray weights, photons/s (dead rays carry 0).
    fov_um : tuple of float or None
        Full width and height of the field of view, centred on 0; None for no limit.
    position : bool
        False for intensity-only detectors (ion chambers): sizes and centroids are NaN.
    """
    inside = w_ph_s > 0
    if fov_um is not None:
        inside &= (np.abs(x_um) <= 0.5 * fov_um[0]) & (np.abs(y_um) <= 0.5 * fov_um[1])
    w = w_ph_s[inside]
    flux = float(w.sum())
    if not position or flux <= 0:
        return BeamStats(flux=flux)
    x, y = x_um[inside], y_um[inside]
    cx = float(np.dot(w, x) / flux)
    cy = float(np.dot(w, y) / flux)
    rx = math.sqrt(max(0.0, float(np.dot(w, (x - cx) ** 2) / flux)))
    ry = math.sqrt(max(0.0, float(np.dot(w, (y - cy) ** 2) / flux)))
    return BeamStats(flux=flux, centroid_x_um=cx, centroid_y_um=cy, fwhm_x_um=fwhm(x, w),
                     fwhm_y_um=fwhm(y, w), rms_x_um=rx, rms_y_um=ry)


def _profile_fwhm(profile: np.ndarray, centers: np.ndarray) -> float:
    if profile.max() <= 0:
        return _NAN
    i = int(np.argmax(profile))
    half = 0.5 * profile[i]
    above = np.nonzero(profile >= half)[0]
    lo, hi = above.min(), above.max()

    def interp(a: int, b: int) -> float:
        ya, yb = profile[a], profile[b]
        return float(centers[a] + (half - ya) * (centers[b] - centers[a]) / (yb - ya)) \
            if yb != ya else float(centers[a])

    left = interp(lo - 1, lo) if lo > 0 else float(centers[0])
    right = interp(hi, hi + 1) if hi < profile.size - 1 else float(centers[-1])
    return right - left


def image_stats(image: np.ndarray, extent_um: tuple[float, float, float, float]) -> BeamStats:
    """Statistics of a (noisy) image, as a camera's online analysis computes them.

    Parameters
    ----------
    image : ndarray
        ``(ny, nx)`` photons/s per pixel, row 0 at the bottom.
    extent_um : tuple of float
        ``(x0, x1, y0, y1)``, um.
    """
    img = np.clip(image, 0.0, None)
    flux = float(img.sum())
    if flux <= 0:
        return BeamStats(flux=float(image.sum()))
    ny, nx = img.shape
    x0, x1, y0, y1 = extent_um
    xc = x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx
    yc = y0 + (np.arange(ny) + 0.5) * (y1 - y0) / ny
    px, py = img.sum(axis=0), img.sum(axis=1)
    cx, cy = float(px @ xc / flux), float(py @ yc / flux)
    rx = math.sqrt(max(0.0, float(px @ (xc - cx) ** 2 / flux)))
    ry = math.sqrt(max(0.0, float(py @ (yc - cy) ** 2 / flux)))
    return BeamStats(flux=float(image.sum()), centroid_x_um=cx, centroid_y_um=cy,
                     fwhm_x_um=_profile_fwhm(px, xc), fwhm_y_um=_profile_fwhm(py, yc),
                     rms_x_um=rx, rms_y_um=ry)
