"""Online analysis of detector frames, as areaDetector's NDStats and NDROI plugins do it.

Everything here is plain numpy on one frame, with no Channel Access, so it can
be tested and benchmarked on its own (``beamtwin bench ioc``). Statistics use
two projections of the frame (one pass over the pixels for each) and the
maximum (a third pass); every other figure comes from the 1-D projections, so
a 1024 x 1024 frame costs about 1 ms on one core.

Coordinates are pixel indices of the frame as published (``image1:ArrayData``):
``x`` is the column (``ArraySize0``), ``y`` the row (``ArraySize1``), row 0 at
the top, as a camera shows it. Centroids of a region of interest are given in
the same full-frame pixel coordinates.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from twin.errors import ConfigError

__all__ = ["FrameStats", "Roi", "frame_stats", "counts_frame", "TriggerCondition",
           "EventTrigger"]

_NAN = float("nan")


@dataclass(frozen=True)
class FrameStats:
    """Per-frame statistics (NDStats names in brackets).

    Attributes
    ----------
    total : float
        Sum of the pixels, counts (``Total_RBV``).
    max_value, min_value : float
        Brightest and dimmest pixel, counts (``MaxValue_RBV``, ``MinValue_RBV``).
    centroid_x, centroid_y : float
        Intensity-weighted centroid, pixels (``CentroidX_RBV``); NaN for an empty frame.
    sigma_x, sigma_y : float
        Intensity-weighted rms width, pixels (``SigmaX_RBV``).
    fwhm_x, fwhm_y : float
        Full width at half maximum of the projections, pixels, with linear
        interpolation of the half-maximum crossings.
    """

    total: float
    max_value: float
    min_value: float
    centroid_x: float = _NAN
    centroid_y: float = _NAN
    sigma_x: float = _NAN
    sigma_y: float = _NAN
    fwhm_x: float = _NAN
    fwhm_y: float = _NAN


@dataclass(frozen=True)
class Roi:
    """A rectangular region of interest, pixels (NDROI ``MinX``, ``SizeX`` ...).

    A size of 0 means "to the edge of the frame".
    """

    min_x: int = 0
    min_y: int = 0
    size_x: int = 0
    size_y: int = 0

    def slices(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """(rows, columns) slices of a frame of *shape* ``(ny, nx)``, clipped to it."""
        ny, nx = shape
        x0 = min(max(int(self.min_x), 0), nx)
        y0 = min(max(int(self.min_y), 0), ny)
        x1 = nx if self.size_x <= 0 else min(nx, x0 + int(self.size_x))
        y1 = ny if self.size_y <= 0 else min(ny, y0 + int(self.size_y))
        return slice(y0, y1), slice(x0, x1)


def counts_frame(image_ph_s: np.ndarray, exposure_s: float) -> np.ndarray:
    """A camera frame from a twin image: whole photon counts, float32, row 0 at the top.

    Parameters
    ----------
    image_ph_s : ndarray
        ``(ny, nx)`` photons/s per pixel, row 0 at the bottom (the twin's images).
    exposure_s : float
        Exposure, s.
    """
    return np.rint(np.clip(image_ph_s, 0.0, None) * exposure_s)[::-1].astype(np.float32)


def _fwhm(profile: np.ndarray) -> float:
    """FWHM of a 1-D profile in samples; linear interpolation at half maximum."""
    n = profile.size
    if n < 3:
        return _NAN
    i = int(np.argmax(profile))
    peak = float(profile[i])
    if not peak > 0:
        return _NAN
    half = 0.5 * peak
    below_left = np.flatnonzero(profile[:i] <= half)
    below_right = np.flatnonzero(profile[i + 1:] <= half)
    if below_left.size == 0 or below_right.size == 0:
        return _NAN  # the profile does not fall to half maximum inside the frame
    a = int(below_left[-1])
    b = i + 1 + int(below_right[0])

    def cross(j0: int, j1: int) -> float:
        y0, y1 = float(profile[j0]), float(profile[j1])
        return j0 + (half - y0) * (j1 - j0) / (y1 - y0) if y1 != y0 else float(j0)

    return cross(b - 1, b) - cross(a, a + 1)


def _moments(profile: np.ndarray, total: float) -> tuple[float, float]:
    idx = np.arange(profile.size, dtype=np.float64)
    c = float(idx @ profile) / total
    var = float(((idx - c) ** 2) @ profile) / total
    return c, math.sqrt(max(var, 0.0))


def frame_stats(frame: np.ndarray, roi: Roi | None = None) -> FrameStats:
    """Statistics of *frame* ``(ny, nx)``, or of its *roi*, in full-frame pixels.

    Parameters
    ----------
    frame : ndarray
        2-D array of counts (any numeric dtype).
    roi : Roi, optional
        Region to analyse (default: the whole frame).

    Raises
    ------
    ConfigError
        If *frame* is not 2-D or the region is empty.
    """
    if frame.ndim != 2:
        raise ConfigError(f"a frame must be 2-D, got shape {frame.shape}")
    x_off = y_off = 0
    if roi is not None:
        rows, cols = roi.slices(frame.shape)
        frame = frame[rows, cols]
        x_off, y_off = cols.start, rows.start
    if frame.size == 0:
        raise ConfigError(f"the region of interest {roi} is empty for this frame")
    acc = np.float64 if frame.dtype.kind == "f" else np.int64
    px = frame.sum(axis=0, dtype=acc).astype(np.float64)  # profile along x (columns)
    py = frame.sum(axis=1, dtype=acc).astype(np.float64)  # profile along y (rows)
    total = float(px.sum())
    vmax, vmin = float(frame.max()), float(frame.min())
    if not total > 0:
        return FrameStats(total=total, max_value=vmax, min_value=vmin)
    cx, sx = _moments(px, total)
    cy, sy = _moments(py, total)
    return FrameStats(total=total, max_value=vmax, min_value=vmin,
                      centroid_x=cx + x_off, centroid_y=cy + y_off, sigma_x=sx, sigma_y=sy,
                      fwhm_x=_fwhm(px), fwhm_y=_fwhm(py))


class TriggerCondition(enum.IntEnum):
    """What makes a frame matter (the ``Trig1:Condition`` enum, in this order)."""

    CENTROID_SHIFT = 0
    """The centroid moved more than ``threshold`` pixels from the reference frame's."""
    INTENSITY_DROP = 1
    """The total fell below ``(1 - threshold)`` of the reference frame's (threshold 0..1)."""
    INTENSITY_ABOVE = 2
    """The total exceeds ``threshold`` counts."""
    WIDTH_CHANGE = 3
    """An rms width changed by more than ``threshold`` (a fraction) from the reference."""


TRIGGER_LABELS = ("CentroidShift", "IntensityDrop", "IntensityAbove", "WidthChange")


@dataclass
class EventTrigger:
    """A condition on the per-frame analysis that marks the frames that matter.

    The reference is the first frame analysed after the trigger is armed or
    re-referenced (:meth:`reset_reference`).

    Parameters
    ----------
    condition : TriggerCondition
    threshold : float
        In the condition's units (pixels, fraction or counts); finite and >= 0.
    """

    condition: TriggerCondition = TriggerCondition.CENTROID_SHIFT
    threshold: float = 5.0
    reference: FrameStats | None = None

    def __post_init__(self) -> None:
        self.configure(self.condition, self.threshold)

    def configure(self, condition: int, threshold: float) -> None:
        """Set the condition and threshold; refuses a non-finite or negative threshold."""
        try:
            cond = TriggerCondition(int(condition))
        except ValueError:
            raise ConfigError(f"unknown trigger condition {condition!r}; allowed: "
                              f"{', '.join(f'{c.value} ({c.name})' for c in TriggerCondition)}"
                              ) from None
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
                and threshold >= 0):
            raise ConfigError(f"trigger threshold must be finite and >= 0, got {threshold!r}")
        if cond is TriggerCondition.INTENSITY_DROP and threshold > 1:
            raise ConfigError(f"an IntensityDrop threshold is a fraction in [0, 1], "
                              f"got {threshold!r}")
        self.condition, self.threshold = cond, float(threshold)

    def reset_reference(self) -> None:
        """The next frame becomes the reference."""
        self.reference = None

    def evaluate(self, stats: FrameStats) -> bool:
        """True if the frame with *stats* meets the condition (sets the reference first)."""
        if self.reference is None:
            self.reference = stats
        ref, thr = self.reference, self.threshold
        c = self.condition
        if c is TriggerCondition.INTENSITY_ABOVE:
            return stats.total > thr
        if c is TriggerCondition.INTENSITY_DROP:
            return stats.total < (1.0 - thr) * ref.total
        if c is TriggerCondition.CENTROID_SHIFT:
            if not (math.isfinite(stats.centroid_x) and math.isfinite(ref.centroid_x)):
                # a beam that appears or vanishes has moved by any measure
                return math.isfinite(stats.centroid_x) != math.isfinite(ref.centroid_x)
            return math.hypot(stats.centroid_x - ref.centroid_x,
                              stats.centroid_y - ref.centroid_y) > thr
        # WIDTH_CHANGE
        for now, was in ((stats.sigma_x, ref.sigma_x), (stats.sigma_y, ref.sigma_y)):
            if not (math.isfinite(now) and math.isfinite(was)) or was <= 0:
                if math.isfinite(now) != math.isfinite(was):
                    return True
                continue
            if abs(now - was) / was > thr:
                return True
        return False
