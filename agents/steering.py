"""Response-matrix steering: put the beam where it belongs by solving for the moves.

Where a stage's job is to put the beam somewhere (centred on a screen, pointed
at the focusing optics, on the sample's origin), its errors are positions, and
positions respond linearly to the motors that steer them: a mirror's pitch
moves the beam in proportion to the distance, a sample stage moves the sample
under the beam one for one. Storage rings correct their orbits this way, from a
measured response matrix and its pseudo-inverse, and beamline staff do the same
by hand ("the beam moved 58 um for 1 urad, so go back 2.1 urad").

:class:`ResponseSteering` measures the matrix by moving each motor once by a
small probe, then takes Gauss-Newton steps ``du = -pinv(J) r`` on the residuals
of :meth:`agents.objective.Objective.residuals` (each in units of its
tolerance, so a pointing error weighs as much as the stage allows it to),
updating ``J`` with Broyden's rank-one rule after every step. A motor that
moves no residual (a bender, a sample's z) keeps its place: the pseudo-inverse
gives the smallest move. A step that makes the residuals worse is halved once,
then the steering stops. It ignores flux and size; :class:`SteerAgent`
therefore searches the motors steering left alone (a simplex on them only),
then hands over to the separable refinement if the stage still does not look
aligned. A focusing stage has nothing to steer; :class:`SteerAgent` focuses it
with the benders first (:mod:`agents.bender_focus`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agents.beam_search import find_beam
from agents.bender_focus import focus_then_refine
from agents.objective import Objective
from agents.problem import AlignmentProblem, Evaluation
from agents.separable import focusing_planes, nelder_mead, refine

__all__ = ["ResponseSteering", "SteerAgent"]


def _simplex_on(problem: AlignmentProblem, start: Evaluation, idx: list[int], step: float,
                stop_fom: float) -> Evaluation:
    """Nelder-Mead on the motors *idx* only, the others held at *start*; returns the best
    evaluation (it stops when the stage looks aligned, converges, or one evaluation
    before the budget)."""
    goal = problem.stage.goal
    best = start
    gen = nelder_mead(start.u[idx], step)
    try:
        x = next(gen)
        while problem.remaining > 1:
            u = start.u.copy()
            u[idx] = x
            ev = problem.evaluate(u)
            if ev.fom > best.fom or ev.judgement.looks_aligned(stop_fom, goal):
                best = ev
            if ev.judgement.looks_aligned(stop_fom, goal):
                break
            x = gen.send(Objective.loss(ev.fom))
    except StopIteration:
        pass
    return best


def _norm(r: np.ndarray) -> float:
    return float(np.sqrt(np.sum(r ** 2))) if np.all(np.isfinite(r)) else np.inf


@dataclass
class ResponseSteering:
    """Null a stage's position residuals with a measured response matrix.

    Parameters
    ----------
    probe : float
        Size of each motor's probe move, agent units (a fraction of the search
        half-width).
    max_steps : int
        Gauss-Newton steps after the probes.
    rcond : float
        Singular values below ``rcond`` times the largest are ignored (a motor
        combination that hardly moves the beam is not used).
    max_move : float
        Largest move of any motor per step, agent units.
    stop_fom : float
        As for the other agents: steering ends when the stage looks aligned.
    """

    probe: float = 0.05
    max_steps: int = 6
    rcond: float = 0.02
    max_move: float = 0.5
    stop_fom: float = 0.95

    #: motors whose response column is below this fraction of the largest do not steer
    weak: float = 0.05
    #: after :meth:`run_from`: indices of the motors that hardly move any residual
    unsteered: list[int] = field(default_factory=list, init=False)

    def run_from(self, problem: AlignmentProblem, start: Evaluation) -> Evaluation:
        """Steer from *start*; returns the best evaluation (residual norm, then figure).

        Afterwards :attr:`unsteered` holds the indices of the motors that hardly move
        any residual (a bender, a sample's z): what is left for a refinement."""
        self.unsteered = []
        obj = problem.objective
        goal = problem.stage.goal
        r0 = obj.residuals(start.observation)
        if r0.size == 0 or not np.all(np.isfinite(r0)):
            return start  # nothing to steer, or no beam to steer by
        best, r_best = start, r0
        if start.judgement.looks_aligned(self.stop_fom, goal):
            return start
        d = problem.dim
        jac = np.zeros((r0.size, d))
        u0 = start.u.copy()
        for i in range(d):  # the response matrix, one motor at a time
            if problem.remaining <= 2:
                return best
            h = self.probe if u0[i] + self.probe <= 1.0 else -self.probe
            for side in (h, -h):  # a probe that loses the beam is tried the other way
                if problem.remaining <= 2 or abs(u0[i] + side) > 1.0:
                    return best
                u = u0.copy()
                u[i] += side
                ev = problem.evaluate(u)
                r = obj.residuals(ev.observation)
                if np.all(np.isfinite(r)):
                    h = side
                    break
            else:
                return best  # lost both ways: leave it to the refinement
            jac[:, i] = (r - r0) / h
            if ev.judgement.looks_aligned(self.stop_fom, goal):
                return ev
        norms = np.sqrt(np.sum(jac ** 2, axis=0))
        self.unsteered = [i for i in range(d) if norms[i] < self.weak * float(norms.max())]
        u, r = u0, r0
        for _ in range(self.max_steps):
            if problem.remaining <= 1:
                break
            used = jac.copy()
            used[:, self.unsteered] = 0.0  # a motor that barely steers is not moved
            du = -np.linalg.pinv(used, rcond=self.rcond) @ r
            big = float(np.max(np.abs(du))) if du.size else 0.0
            if big > self.max_move:
                du *= self.max_move / big
            if big < 1e-6:
                break
            for _attempt in range(2):
                target = np.clip(u + du, -1.0, 1.0)
                ev = problem.evaluate(target)
                r_new = obj.residuals(ev.observation)
                if _norm(r_new) < _norm(r):
                    break
                du *= 0.5
                if problem.remaining <= 1:
                    break
            else:
                break  # worse twice: the linear model no longer holds here
            if not np.all(np.isfinite(r_new)) or _norm(r_new) >= _norm(r):
                break
            step = ev.u - u
            step[self.unsteered] = 0.0  # encoder rounding, not a move
            if float(step @ step) > 0:  # Broyden: the matrix learns from every step
                jac += np.outer(r_new - r - jac @ step, step) / float(step @ step)
            u, r = ev.u.copy(), r_new
            if _norm(r) < _norm(r_best) or ev.judgement.looks_aligned(self.stop_fom, goal):
                best, r_best = ev, r
            if ev.judgement.looks_aligned(self.stop_fom, goal):
                break
        return best


@dataclass
class SteerAgent:
    """Response-matrix steering for the stages that place the beam, then the separable
    refinement (one simplex per focusing plane on a KB pair, Nelder-Mead elsewhere).

    A focusing stage (a KB pair: nothing to steer) is focused the way beamline staff
    do it, with each mirror's bender and then a pitch trim
    (:class:`~agents.bender_focus.BenderFocus`), and refined with one simplex per
    plane if it does not look aligned after that. Another stage with nothing to
    steer (judged by flux alone) gets the ``separable`` agent's search.

    Parameters
    ----------
    probe : float
        Probe move per motor for the response matrix, agent units.
    initial_step : float
        Simplex size of the refinement from the start, agent units.
    refine_step : float
        Simplex size of the refinement after steering (it starts close).
    focus_refine_step : float
        Simplex size of the refinement after the bender focus.
    stop_fom : float
    """

    probe: float = 0.05
    initial_step: float = 0.4
    refine_step: float = 0.05
    focus_refine_step: float = 0.1
    stop_fom: float = 0.95
    name: str = "steer"

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point."""
        desc = getattr(problem.safe.inner, "desc", None)
        goal = problem.stage.goal
        start = find_beam(problem, problem.observe_start(), desc)
        steering = ResponseSteering(probe=self.probe, stop_fom=self.stop_fom)
        best = steering.run_from(problem, start)
        if best.judgement.looks_aligned(self.stop_fom, goal) or problem.remaining <= 1:
            return best.u.copy()
        if best is start:  # nothing to steer: a focus
            planes = focusing_planes(desc, problem.stage) if desc is not None else None
            if planes is None:
                return refine(problem, start, desc, stop_fom=self.stop_fom,
                              initial_step=self.initial_step)
            return focus_then_refine(problem, start, desc, stop_fom=self.stop_fom,
                                     initial_step=self.focus_refine_step)
        if steering.unsteered:  # first what steering left alone (a sample's focus, a bender)
            best = _simplex_on(problem, best, steering.unsteered, self.initial_step / 2,
                               self.stop_fom)
            if best.judgement.looks_aligned(self.stop_fom, goal) or problem.remaining <= 1:
                return best.u.copy()
        return refine(problem, best, desc, stop_fom=self.stop_fom, initial_step=self.refine_step)
