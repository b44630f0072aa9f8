"""Focusing a KB pair the way beamline staff do: find the waist with the bender, then trim
the pitch to the pitch whose waist is smallest.

For one mirror, the squared spot size at the sample is, to first order, a parabola
in the bender setting (the defocus is linear in it), and the smallest spot the
bender can reach grows with the pitch error (the coma an elliptical mirror shows
off its design angle). :class:`BenderFocus` therefore

1. fits a parabola to the squared spot size at three bender settings and goes to
   its vertex (twice, the second time with a smaller step): the focus at the sample;
2. repeats that at a pitch one step up and one step down, with the bender moved
   along the valley slope learned from the first repeat;
3. fits a parabola to the three waists against the pitch, goes to its vertex, and
   focuses there once more; and trims again around it with half the pitch step, until
   the stage looks aligned.

Both mirrors of the pair are searched in the same evaluations: every reading at the
sample reports both spot sizes, and each depends only on its own mirror
(:func:`agents.separable.focusing_planes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agents.objective import FLUX_FLOOR
from agents.problem import AlignmentProblem, Evaluation
from agents.separable import SeparableSimplex, focusing_planes, plane_axes, refine
from twin.description import BeamlineDescription

__all__ = ["BenderFocus", "vertex"]


class _Done(Exception):
    """The stage looks aligned, or the budget allows only the final measurement."""


def vertex(x: np.ndarray, y: np.ndarray, step: float) -> float:
    """The minimum of the parabola through three points (x sorted, equally spaced by
    *step*); towards the lowest point, at most two steps beyond it, where the
    parabola opens downwards or is flat."""
    x0, x1, x2 = x
    y0, y1, y2 = y
    curv = y0 - 2.0 * y1 + y2
    if not (math.isfinite(curv) and curv > 1e-12 * max(abs(y1), 1.0)):
        k = 1 if y1 <= min(y0, y2) else int(np.argmin(y))  # a tie keeps the centre
        return float(x[k] + (-2.0 * step if k == 0 else 2.0 * step if k == 2 else 0.0))
    v = x1 + 0.5 * step * (y0 - y2) / curv
    return float(np.clip(v, x0 - 2.0 * step, x2 + 2.0 * step))


@dataclass
class BenderFocus:
    """Focus each mirror with its bender and trim its pitch (see the module docstring).

    Parameters
    ----------
    bend_step : float
        First bender step of the parabola, agent units.
    pitch_step : float
        Pitch step of the first trim, agent units; each further trim halves it.
    trims : int
        Pitch trims at most.
    stop_fom : float
    """

    bend_step: float = 0.06
    pitch_step: float = 0.12
    trims: int = 3
    stop_fom: float = 0.95

    def continue_from(self, problem: AlignmentProblem, start: Evaluation,
                      planes: dict[str, list[int]]) -> Evaluation:
        """Search from *start*; returns the best evaluation (figure of merit)."""
        goal = problem.stage.goal
        diag = problem.stage.diagnostic
        ref = problem.objective.reference
        axes = plane_axes(problem.stage, planes)
        if not all({"pitch", "bend"} <= set(a) for a in axes.values()):
            return start
        best = start

        def size2(ev: Evaluation, plane: str) -> float:
            s = ev.observation.reading(diag).stats
            w, w0 = (s.fwhm_x_um, ref.fwhm_x_um) if plane == "x" else (s.fwhm_y_um,
                                                                        ref.fwhm_y_um)
            if not (ev.judgement.flux_ratio > 0.5 * FLUX_FLOOR and math.isfinite(w) and w > 0):
                return math.inf
            return (w / w0) ** 2

        def take(u: np.ndarray) -> Evaluation:
            nonlocal best
            if problem.remaining <= 1:
                raise _Done
            ev = problem.evaluate(np.clip(u, -1.0, 1.0))
            if ev.judgement.looks_aligned(self.stop_fom, goal) or ev.fom > best.fom:
                best = ev
            if ev.judgement.looks_aligned(self.stop_fom, goal):
                raise _Done
            return ev

        #: per plane, the smallest squared size seen since the pitch last changed, and
        #: the bender setting that gave it
        waist: dict[str, tuple[float, float]] = {}

        def note(ev: Evaluation) -> None:
            for p, a in axes.items():
                w = size2(ev, p)
                if p not in waist or w < waist[p][0]:
                    waist[p] = (w, float(ev.u[a["bend"]]))

        def focus(centre: Evaluation, step: float) -> Evaluation:
            """One bender parabola per plane, both at once; returns the evaluation at the
            vertices. Every evaluation at this pitch joins ``waist``."""
            note(centre)
            u0 = centre.u.copy()
            evs = []
            for sign in (-1.0, 1.0):
                u = u0.copy()
                for a in axes.values():
                    u[a["bend"]] += sign * step
                evs.append(take(u))
            u = u0.copy()
            for p, a in axes.items():
                y = np.array([size2(evs[0], p), size2(centre, p), size2(evs[1], p)])
                b = u0[a["bend"]]
                if np.all(np.isfinite(y)):
                    u[a["bend"]] = vertex(np.array([b - step, b, b + step]), y, step)
                else:
                    k = int(np.nanargmin(np.where(np.isfinite(y), y, np.nan))) \
                        if np.any(np.isfinite(y)) else 1
                    u[a["bend"]] = b + (k - 1) * step
            for ev in evs:
                note(ev)
            there = take(u)
            note(there)
            return there

        def trim(here: Evaluation, step: float,
                 slope: dict[str, float]) -> tuple[Evaluation, dict[str, float]]:
            """Focus one pitch step up and one down, go to the pitch of the smallest
            waist (a parabola through the three) and focus there."""
            # each pitch's waist is the smallest size its bender search saw (the last,
            # predicted setting can miss it), and its bend the setting that gave it
            note(here)
            waists = {p: [math.nan, waist[p][0], math.nan] for p in axes}
            bends = {p: [math.nan, waist[p][1], math.nan] for p in axes}
            centre = here.u.copy()
            for p, a in axes.items():
                centre[a["bend"]] = bends[p][1]
            slope = dict(slope)
            for k, sign in ((2, 1.0), (0, -1.0)):
                u = centre.copy()
                for p, a in axes.items():
                    u[a["pitch"]] += sign * step
                    u[a["bend"]] += sign * step * slope[p]
                waist.clear()
                focus(take(u), self.bend_step / 3)
                for p in axes:
                    waists[p][k] = waist[p][0]
                    bends[p][k] = waist[p][1]
                    slope[p] = (bends[p][k] - bends[p][1]) / (sign * step)
            u = centre.copy()
            for p, a in axes.items():
                x = np.array([centre[a["pitch"]] - step, centre[a["pitch"]],
                              centre[a["pitch"]] + step])
                w = np.asarray(waists[p])
                if np.all(np.isfinite(w)):
                    v = vertex(x, w, step)
                    u[a["pitch"]] = v
                    u[a["bend"]] = bends[p][1] + slope[p] * (v - centre[a["pitch"]])
            waist.clear()
            return focus(take(u), self.bend_step / 3), slope

        try:
            waist.clear()
            here = focus(focus(start, self.bend_step), self.bend_step / 3)
            slope = {p: 0.0 for p in axes}
            step = self.pitch_step
            for _ in range(self.trims):
                here, slope = trim(here, step, slope)
                step /= 2.0
        except _Done:
            pass
        return best


def focus_then_refine(problem: AlignmentProblem, start: Evaluation,
                      desc: BeamlineDescription | None, *, stop_fom: float,
                      initial_step: float) -> np.ndarray:
    """Local refinement that focuses first: on a stage of bendable mirrors focusing in
    both planes, the bender focus (:class:`BenderFocus`), then one simplex per plane;
    on any other stage :func:`agents.separable.refine`. Returns the chosen point."""
    planes = focusing_planes(desc, problem.stage) if desc is not None else None
    if planes is None:
        return refine(problem, start, desc, stop_fom=stop_fom, initial_step=initial_step)
    best = BenderFocus(stop_fom=stop_fom).continue_from(problem, start, planes)
    if best.judgement.looks_aligned(stop_fom, problem.stage.goal) or problem.remaining <= 1:
        return best.u.copy()
    return SeparableSimplex(initial_step=initial_step, stop_fom=stop_fom).continue_from(
        problem, best, planes)
