"""Figures of merit for alignment, and the success criterion that judges a trial.

Every figure is relative to a reference reading of the same diagnostic (on
the twin: the ideal beamline's; on a machine: the design values), so 1.0 means
"as good as the ideal beamline" whatever the stage.

A spot pushed half off a detector or an aperture looks small: statistics are
computed inside each field of view, so clipping costs flux, and every figure
carries a strong flux constraint, ``min(1, T / 0.9) ** 4`` with ``T`` the flux
relative to the reference. Halving the flux to halve the spot then divides
the figure by 16 instead of leaving it unchanged.

Goals (see :class:`agents.stages.Stage`):

``flux``    ``T * c``
``centre``  ``T * c / (1 + d^2 / d0^2)``, ``d`` the centroid's distance from the
            reference centroid and ``d0`` half the reference FWHM (a Lorentzian: its
            long tail leaves a slope towards the target from far away)
``focus``   ``B * c``, with the brightness ``B = T * (Wx Wy)_ref / (Wx Wy)``
            (W: FWHM)
``target``  ``focus / (1 + d^2 / d0^2)``, the beam on the sample's origin

Success (the issue's criterion, hidden from agents): ``T >= 0.9`` and, for
``focus`` and ``target``, both FWHM within 1.1x the reference; for ``centre``
and ``target`` the centroid within ``max(0.5 um, 0.25 FWHM)`` of the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.stages import Stage
from twin.observation import BeamStats, Observation

__all__ = ["Objective", "Judgement", "FLUX_FLOOR", "SIZE_CAP", "SIZE_STOP"]

#: flux fraction below which the figure of merit is penalised (and success refused)
FLUX_FLOOR = 0.9
#: allowed spot size relative to the reference, for success
SIZE_CAP = 1.1
#: measured spot size relative to the reference at which agents may stop (a margin
#: inside SIZE_CAP for the measurement noise)
SIZE_STOP = 1.05


@dataclass(frozen=True)
class Judgement:
    """How one reading compares with the reference.

    Attributes
    ----------
    fom : float
        Figure of merit, 1 for the reference, 0 without beam.
    flux_ratio : float
    fwhm_ratio : float
        Geometric mean of the two FWHM ratios (NaN without beam).
    offset_um : float
        Centroid distance from the reference centroid, um (NaN without beam).
    success : bool
    fwhm_x_ratio, fwhm_y_ratio : float
        Each FWHM relative to the reference (NaN without beam).
    """

    fom: float
    flux_ratio: float
    fwhm_ratio: float
    offset_um: float
    success: bool
    fwhm_x_ratio: float = math.nan
    fwhm_y_ratio: float = math.nan

    def looks_aligned(self, stop_fom: float, goal: str, size_margin: float = SIZE_STOP) -> bool:
        """Whether an agent may stop here: the figure of merit at *stop_fom* and, for a
        focus, each FWHM within *size_margin* of the reference (a bright spot can hide
        one axis too wide behind the other too narrow)."""
        if not self.fom >= stop_fom:
            return False
        if goal in ("focus", "target"):
            return bool(self.fwhm_x_ratio <= size_margin and self.fwhm_y_ratio <= size_margin)
        return True


def _finite(v: float) -> bool:
    return isinstance(v, float) and math.isfinite(v)


@dataclass(frozen=True)
class Objective:
    """The figure of merit of one stage against a reference reading.

    Parameters
    ----------
    stage : Stage
    reference : BeamStats
        The reference reading of ``stage.diagnostic`` (the ideal beamline's).
    """

    stage: Stage
    reference: BeamStats

    def judge_stats(self, s: BeamStats) -> Judgement:
        """Judge one reading of the stage's diagnostic."""
        ref = self.reference
        t = s.flux / ref.flux if ref.flux > 0 else 0.0
        if not t > 0:
            return Judgement(0.0, 0.0, math.nan, math.nan, False)
        constraint = min(1.0, t / FLUX_FLOOR) ** 4
        goal = self.stage.goal
        offset = math.nan
        if _finite(s.centroid_x_um) and _finite(ref.centroid_x_um):
            offset = math.hypot(s.centroid_x_um - ref.centroid_x_um,
                                s.centroid_y_um - ref.centroid_y_um)
        ref_w = _mean_width(ref)
        d0 = max(0.5 * ref_w, 0.25) if math.isfinite(ref_w) else math.inf
        place = 1.0
        if goal in ("centre", "target"):
            # Lorentzian: a long tail keeps a slope towards the target from far away
            place = 1.0 / (1.0 + (offset / d0) ** 2) if math.isfinite(offset) else 0.0
        wr = math.nan
        if (_finite(s.fwhm_x_um) and _finite(s.fwhm_y_um) and s.fwhm_x_um > 0
                and s.fwhm_y_um > 0 and ref.fwhm_x_um > 0 and ref.fwhm_y_um > 0):
            wr = math.sqrt((s.fwhm_x_um / ref.fwhm_x_um) * (s.fwhm_y_um / ref.fwhm_y_um))
        if goal in ("focus", "target"):
            fom = (t / wr ** 2) * constraint * place if math.isfinite(wr) else 0.0
        else:
            fom = t * constraint * place
        ok = t >= FLUX_FLOOR
        if goal in ("focus", "target"):
            ok = ok and _finite(s.fwhm_x_um) and _finite(s.fwhm_y_um) \
                and s.fwhm_x_um <= SIZE_CAP * ref.fwhm_x_um \
                and s.fwhm_y_um <= SIZE_CAP * ref.fwhm_y_um
        if goal in ("centre", "target"):
            tol = max(0.5, 0.25 * ref_w) if math.isfinite(ref_w) else math.inf
            ok = ok and math.isfinite(offset) and offset <= tol
        rx = s.fwhm_x_um / ref.fwhm_x_um if math.isfinite(wr) else math.nan
        ry = s.fwhm_y_um / ref.fwhm_y_um if math.isfinite(wr) else math.nan
        return Judgement(fom, t, wr, offset, bool(ok), rx, ry)

    def judge(self, obs: Observation) -> Judgement:
        """Judge an observation at the stage's diagnostic."""
        return self.judge_stats(obs.reading(self.stage.diagnostic).stats)

    @staticmethod
    def loss(fom: float) -> float:
        """What minimisers minimise: ``-log(fom + 1e-6)``."""
        return -math.log(max(fom, 0.0) + 1e-6)


def _mean_width(s: BeamStats) -> float:
    if _finite(s.fwhm_x_um) and _finite(s.fwhm_y_um):
        return 0.5 * (s.fwhm_x_um + s.fwhm_y_um)
    return math.nan
