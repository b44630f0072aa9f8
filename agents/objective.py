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

Success (hidden from agents; :mod:`agents.verdict` builds every verdict on it):
``T >= 0.9`` and, for ``focus`` and ``target``, both FWHM within 1.1x the
reference; for ``centre`` and ``target`` the centroid within a quarter of the
reference FWHM of the reference centroid in each plane (at least 0.1 um).

Pointing (stages with ``Stage.pointing``, see :mod:`agents.stages`): each
offset ``p`` of the centroid from the reference's at a far diagnostic, in each
of the stage's planes, multiplies the figure by ``1 / (1 + p^2 / (2 t)^2)``,
``t = Stage.pointing_um``, and success needs ``|p| <= t`` for each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from agents.stages import Stage
from twin.errors import ConfigError
from twin.observation import BeamStats, Observation

__all__ = ["Objective", "Judgement", "FLUX_FLOOR", "SIZE_CAP", "SIZE_STOP", "FLUX_STOP",
           "PLACE_STOP", "CENTRE_FLOOR_UM"]

#: flux fraction below which the figure of merit is penalised (and success refused)
FLUX_FLOOR = 0.9
#: allowed spot size relative to the reference, for success
SIZE_CAP = 1.1
#: measured spot size relative to the reference at which agents may stop (a margin
#: inside SIZE_CAP for the measurement noise)
SIZE_STOP = 1.05
#: measured flux relative to the reference at which agents may stop (inside FLUX_FLOOR)
FLUX_STOP = 0.93
#: fraction of a position tolerance (centroid, pointing) within which agents may stop
PLACE_STOP = 0.8
#: smallest centroid tolerance at a stage's diagnostic, um: about three times the beam's
#: own rms motion at the sample without stabilisation (31.6 nm, docs/stabilize.md); a
#: tighter mark failed aligned beamlines over EPICS, where that motion is on
CENTRE_FLOOR_UM = 0.1


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
    pointing_um : tuple of float
        Centroid offsets at the stage's pointing diagnostics, um, in the order of
        ``Stage.pointing_terms`` (empty when the stage has none or they were not
        read; NaN where the diagnostic saw no beam).
    within_margin : bool
        The success criterion holds with a margin for measurement noise: flux
        ``>= FLUX_STOP``, each FWHM ``<= SIZE_STOP`` (focus, target), centroid and
        pointing offsets within ``PLACE_STOP`` of their tolerances.
    """

    fom: float
    flux_ratio: float
    fwhm_ratio: float
    offset_um: float
    success: bool
    fwhm_x_ratio: float = math.nan
    fwhm_y_ratio: float = math.nan
    pointing_um: tuple[float, ...] = ()
    within_margin: bool = False

    def looks_aligned(self, stop_fom: float, goal: str, size_margin: float = SIZE_STOP) -> bool:
        """Whether an agent may stop here: the success criterion holds on the measurement
        with a margin (``within_margin``), or the figure of merit is at *stop_fom* and,
        for a focus, each FWHM within *size_margin* of the reference (a bright spot can
        hide one axis too wide behind the other too narrow).

        The first is what lets a stage stop on a real beamline, where errors outside
        the stage (another element's, drift, a reference traced by another model) cap
        the figure below *stop_fom* although the stage is aligned."""
        if self.within_margin:
            return True
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
    pointing : mapping of str to BeamStats
        The reference readings of the stage's pointing diagnostics (see
        :meth:`at`, which picks both from the readings of every diagnostic).
    landmarks : mapping of str to BeamStats
        The ideal beamline's readings of every diagnostic (:meth:`at` keeps them all):
        where the aligned beam sits on each, as beamline staff note it at
        commissioning. They do not enter the figure of merit; an agent may steer
        towards them (:mod:`agents.focus_model` uses the detector's).
    """

    stage: Stage
    reference: BeamStats
    pointing: Mapping[str, BeamStats] = field(default_factory=dict)
    landmarks: Mapping[str, BeamStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [d for d in self.stage.pointing if d not in self.pointing]
        if missing:
            raise ConfigError(f"stage {self.stage.name!r} is pointed at {missing}, but no "
                              f"reference reading was given for them")

    @classmethod
    def at(cls, stage: Stage, references: Mapping[str, BeamStats]) -> Objective:
        """The objective of *stage* against *references*, the reference readings of
        every diagnostic by name (e.g. :func:`agents.harness.ideal_references`)."""
        return cls(stage, references[stage.diagnostic],
                   {d: references[d] for d in stage.pointing}, dict(references))

    def offsets(self, readings: Mapping[str, BeamStats]) -> tuple[float, ...]:
        """Centroid offsets from the reference at the pointing diagnostics, um, in the
        order of ``Stage.pointing_terms`` (NaN where a diagnostic sees no beam)."""
        out = []
        for d, plane in self.stage.pointing_terms:
            s, r = readings[d], self.pointing[d]
            v, rv = (s.centroid_x_um, r.centroid_x_um) if plane == "x" else \
                (s.centroid_y_um, r.centroid_y_um)
            out.append(v - rv if s.flux > 0 and _finite(v) and _finite(rv) else math.nan)
        return tuple(out)

    @property
    def centre_tolerance_um(self) -> float:
        """The smaller of :attr:`centre_tolerances_um`, um."""
        return min(self.centre_tolerances_um)

    @property
    def centre_tolerances_um(self) -> tuple[float, float]:
        """Allowed centroid offset at the stage's diagnostic for ``centre`` and ``target``,
        in x and in y, um: a quarter of the reference FWHM in that plane, and at least
        :data:`CENTRE_FLOOR_UM` (inf without a reference size). On the default beamline's
        0.96 x 0.089 um focus: 0.24 um horizontally, 0.1 um vertically."""
        out = []
        for w in (self.reference.fwhm_x_um, self.reference.fwhm_y_um):
            out.append(max(CENTRE_FLOOR_UM, 0.25 * w) if _finite(w) and w > 0 else math.inf)
        return out[0], out[1]

    def residuals(self, obs: Observation) -> np.ndarray:
        """The position errors the stage must null, each in units of its tolerance.

        For ``centre`` and ``target``: the centroid offset at the stage's diagnostic,
        x then y, in units of :attr:`centre_tolerance_um`; then every pointing offset
        (``Stage.pointing_terms``) in units of ``Stage.pointing_um``. Empty for a
        stage judged by flux or focus alone; NaN where a diagnostic sees no beam.
        """
        out: list[float] = []
        if self.stage.goal in ("centre", "target"):
            s, r = obs.reading(self.stage.diagnostic).stats, self.reference
            tols = self.centre_tolerances_um
            for v, rv, tol in ((s.centroid_x_um, r.centroid_x_um, tols[0]),
                               (s.centroid_y_um, r.centroid_y_um, tols[1])):
                out.append((v - rv) / tol if s.flux > 0 and _finite(v) and _finite(rv)
                           and math.isfinite(tol) else math.nan)
        if self.stage.pointing:
            far = self.offsets({d: obs.reading(d).stats for d in self.stage.pointing})
            out.extend(p / self.stage.pointing_um for p in far)
        return np.asarray(out, dtype=float)

    def judge_stats(self, s: BeamStats,
                    pointing: Mapping[str, BeamStats] | None = None) -> Judgement:
        """Judge one reading of the stage's diagnostic and, given *pointing* (readings
        of the pointing diagnostics by name), where the beam arrives far downstream.
        Without *pointing*, only the stage's own diagnostic is judged."""
        ref = self.reference
        t = s.flux / ref.flux if ref.flux > 0 else 0.0
        offs = self.offsets(pointing) if pointing is not None and self.stage.pointing else ()
        if not t > 0:
            return Judgement(0.0, 0.0, math.nan, math.nan, False, pointing_um=offs)
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
        sure = t >= FLUX_STOP
        if goal in ("focus", "target"):
            sized = _finite(s.fwhm_x_um) and _finite(s.fwhm_y_um)
            ok = ok and sized and s.fwhm_x_um <= SIZE_CAP * ref.fwhm_x_um \
                and s.fwhm_y_um <= SIZE_CAP * ref.fwhm_y_um
            sure = sure and sized and s.fwhm_x_um <= SIZE_STOP * ref.fwhm_x_um \
                and s.fwhm_y_um <= SIZE_STOP * ref.fwhm_y_um
        if goal in ("centre", "target"):
            tx, ty = self.centre_tolerances_um
            dx = abs(s.centroid_x_um - ref.centroid_x_um) if math.isfinite(offset) else math.inf
            dy = abs(s.centroid_y_um - ref.centroid_y_um) if math.isfinite(offset) else math.inf
            ok = ok and dx <= tx and dy <= ty
            sure = sure and dx <= PLACE_STOP * tx and dy <= PLACE_STOP * ty
        if offs:
            d0p = 2.0 * self.stage.pointing_um
            for p in offs:
                # no beam far downstream: the figure drops as for an offset of 100 t
                q = p if math.isfinite(p) else 100.0 * self.stage.pointing_um
                fom /= 1.0 + (q / d0p) ** 2
            ok = ok and all(math.isfinite(p) and abs(p) <= self.stage.pointing_um
                            for p in offs)
            sure = sure and all(math.isfinite(p) and abs(p) <= PLACE_STOP * self.stage.pointing_um
                                for p in offs)
        rx = s.fwhm_x_um / ref.fwhm_x_um if math.isfinite(wr) else math.nan
        ry = s.fwhm_y_um / ref.fwhm_y_um if math.isfinite(wr) else math.nan
        return Judgement(fom, t, wr, offset, bool(ok), rx, ry, offs, bool(ok and sure))

    def judge(self, obs: Observation) -> Judgement:
        """Judge an observation at the stage's diagnostic and its pointing diagnostics."""
        pointing = {d: obs.reading(d).stats for d in self.stage.pointing}
        return self.judge_stats(obs.reading(self.stage.diagnostic).stats, pointing)

    @staticmethod
    def loss(fom: float) -> float:
        """What minimisers minimise: ``-log(fom + 1e-6)``."""
        return -math.log(max(fom, 0.0) + 1e-6)


def _mean_width(s: BeamStats) -> float:
    if _finite(s.fwhm_x_um) and _finite(s.fwhm_y_um):
        return 0.5 * (s.fwhm_x_um + s.fwhm_y_um)
    return math.nan
