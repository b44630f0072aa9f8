"""Finding a beam that misses the diagnostic: a raster of the mirrors' heights.

A KB pair misaligned by a few of its typical errors can put the focus beside the
sample camera's field of view (the default sample sees 100 um; a KB-V height error
of 60 um, three of its typical 20 um, moves the beam 60 um there). The figure of
merit is then zero everywhere near the start, and a local search has nothing to
climb. Beamline staff then look for the beam: they step the mirror heights, which
translate the beam at the sample, until the camera sees it.

:func:`find_beam` does that for a stage of mirrors focusing in both planes: it
rasters the height motor of each plane's mirror around the start, nearest points
first, and stops at the first reading that holds :data:`SEEN_FLUX_RATIO` of the
ideal flux. Agents that need a beam to climb call it before they start
(``steer``, ``separable``, ``hybrid``). The ``model`` agent first steers by the
detector behind the sample, and calls it when that fails (a detector off its
landmark, as on day one, sends the levers' solve beside the sample too).
"""

from __future__ import annotations

from agents.problem import AlignmentProblem, Evaluation
from agents.separable import focusing_planes, plane_axes
from twin.description import BeamlineDescription

__all__ = ["find_beam", "raster", "SEEN_FLUX_RATIO"]

#: the beam counts as found when the judge sees this fraction of the ideal flux
SEEN_FLUX_RATIO = 0.5


def raster(rings: int) -> list[tuple[int, int]]:
    """Grid steps ``(i, j)`` around ``(0, 0)`` out to *rings*, nearest first (by ring,
    then the axes before the diagonals); the centre excluded."""
    pts = [(i, j) for i in range(-rings, rings + 1) for j in range(-rings, rings + 1)
           if (i, j) != (0, 0)]
    return sorted(pts, key=lambda p: (max(abs(p[0]), abs(p[1])), abs(p[0]) + abs(p[1])))


def _height_axes(problem: AlignmentProblem, desc: BeamlineDescription | None
                 ) -> dict[str, int] | None:
    """The height motor's index of each plane's mirror; None if the stage is not a
    pair of mirrors with height motors."""
    planes = focusing_planes(desc, problem.stage) if desc is not None else None
    if planes is None:
        return None
    axes = plane_axes(problem.stage, planes)
    if not all("height" in axes[p] for p in ("x", "y")):
        return None
    return {p: axes[p]["height"] for p in ("x", "y")}


def find_beam(problem: AlignmentProblem, start: Evaluation,
              desc: BeamlineDescription | None, *, step: float = 0.5,
              rings: int = 2) -> Evaluation:
    """The first reading near *start* whose judge sees the beam.

    *start* itself when its judge sees at least :data:`SEEN_FLUX_RATIO` of the ideal
    flux, or when the stage is not a pair of mirrors with height motors. Otherwise
    the height motors of the two planes' mirrors step over a raster of *step*
    (agent units) out to *rings* steps, nearest points first, keeping one
    evaluation of the budget back; returns the first reading that sees the beam,
    else the one with the most flux.
    """
    if start.judgement.flux_ratio >= SEEN_FLUX_RATIO:
        return start
    axes = _height_axes(problem, desc)
    if axes is None:
        return start
    heights = [axes["x"], axes["y"]]
    best = start
    for i, j in raster(rings):
        if problem.remaining <= 2:
            break
        u = start.u.copy()
        u[heights[0]] += i * step
        u[heights[1]] += j * step
        if abs(u[heights[0]]) > 1.0 or abs(u[heights[1]]) > 1.0:
            continue  # outside the search box
        ev = problem.evaluate(u)
        if ev.judgement.flux_ratio >= SEEN_FLUX_RATIO:
            return ev
        if ev.judgement.flux_ratio > best.judgement.flux_ratio:
            best = ev
    return best

