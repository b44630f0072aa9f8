"""Model-based alignment: calibrate the differentiable twin, solve in it, move, repeat.

On a KB pair with an imaging diagnostic behind the sample, :class:`ModelBasedAgent`
solves with the twin's levers (:mod:`agents.focus_model`). The centroids at the
sample and the detector give every mirror's pitch and height offsets from the
start reading, and the spot sizes give the bend, measured either side of each
solved focus. When the levers cannot explain the sizes, or their solve leaves the
beam beside the judge (a diagnostic off its landmark), it refines from the start
exactly as ``steer`` does: it finds the beam with the mirrors' heights
(:func:`agents.beam_search.find_beam`), then focuses.

On any other stage it measures the diagnostic at the start and at a few probing
points, fits the hidden offsets of the stage's motors to those readings with
:func:`twin.calibrate.calibrate` (gradient descent through the fast twin), and
moves to where the calibrated twin is aligned: every motor at
``design - fitted offset``. Each new reading joins the fit. When the model's
prediction stops improving the beam, it refines locally: with the bender focus and
one simplex per plane on a KB pair without an imager behind it, with Nelder-Mead
elsewhere.

Offsets of motors outside the stage are not fitted: on a beamline aligned
stage by stage they are the earlier stages' business, and whatever is left of
them acts as unmodelled error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agents.beam_search import find_beam
from agents.bender_focus import focus_then_refine
from agents.focus_model import LeverCache, TwinFocus
from agents.problem import AlignmentProblem, Evaluation
from agents.stages import Stage
from agents.steering import SteerAgent
from twin.description import BeamlineDescription

__all__ = ["ModelBasedAgent"]


@dataclass
class ModelBasedAgent:
    """Calibrate the fast twin on the readings so far, go to its optimum, repeat.

    Parameters
    ----------
    desc : BeamlineDescription, optional
        The beamline (default: taken from the problem's beamline when it has one).
    probe : float
        Half-width of the probing moves around the start, agent units.
    probe_sides : {1, 2}
        Probe each motor one way (+) or both ways.
    rounds : int
        Calibrate-and-move rounds before local refinement.
    rays : int
        Rays of the fast twin used for the fit.
    steps : int
        L-BFGS iterations per phase of each fit.
    stop_fom : float
    downstream : bool
        Fit the readings of the imaging diagnostics downstream of the judge too (the
        detector sees where the KB points the beam after the focus).
    separable : bool
        Refine a stage of mirrors focusing in both planes (a KB pair) with one simplex
        per plane (:class:`~agents.separable.SeparableSimplex`) instead of one
        Nelder-Mead simplex over every motor.
    levers : bool
        On a KB pair with an imaging diagnostic behind the judge, solve with the
        twin's levers (:class:`agents.focus_model.TwinFocus`: centroids give pitch and
        height, sizes the bend) instead of probing and calibrating by gradient descent.
    lever_rays : int
        Rays of the fast twin that measures the levers (once per beamline and box).
    """

    desc: BeamlineDescription | None = None
    probe: float = 0.25
    probe_sides: int = 2
    rounds: int = 4
    rays: int = 2000
    steps: int = 6
    stop_fom: float = 0.95
    downstream: bool = True
    separable: bool = True
    levers: bool = True
    lever_rays: int = 5000
    name: str = "model"
    _levers: LeverCache = field(default_factory=LeverCache, init=False, repr=False,
                                compare=False)

    def _diagnostics(self, desc: BeamlineDescription, st) -> list[str]:
        """The judge and its pointing diagnostics, and with ``downstream`` every imaging
        diagnostic after the judge."""
        names = [st.diagnostic, *st.pointing]
        if self.downstream:
            i = next(k for k, e in enumerate(desc.elements) if e.name == st.diagnostic)
            names += [e.name for e in desc.elements[i + 1:]
                      if e.kind in ("screen", "sample", "detector") and e.name not in names]
        return names

    def _done(self, ev: Evaluation, st: Stage) -> bool:
        return ev.judgement.looks_aligned(self.stop_fom, st.goal)

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point."""
        desc = self.desc or getattr(problem.safe.inner, "desc", None)
        if desc is None:
            raise TypeError("ModelBasedAgent needs the beamline description (desc=...)")
        st = problem.stage
        start: Evaluation = problem.observe_start()
        if self.levers:
            model = self._levers.get(desc, problem, rays=self.lever_rays)
            if model is not None:
                solver = TwinFocus(model, stop_fom=self.stop_fom)
                best = solver.continue_from(problem, start)
                if self._done(best, st) or problem.remaining <= 1:
                    return best.u.copy()
                # refine from where the levers led (close by: a small simplex), or, if they
                # were wrong, from the start exactly as steer does
                if solver.trusted:
                    return focus_then_refine(problem, best, desc, stop_fom=self.stop_fom,
                                             initial_step=0.05)
                # the bender focus needs the beam on the judge: look for it first, by
                # the mirrors' heights (they translate the beam; the focus is the
                # pitch's and the bender's), as steer does
                found = find_beam(problem, start, desc)
                if self._done(found, st) or problem.remaining <= 1:
                    return found.u.copy()
                return focus_then_refine(problem, found, desc, stop_fom=self.stop_fom,
                                         initial_step=SteerAgent.focus_refine_step)
        return self._calibrate_and_move(desc, problem, start)

    def _calibrate_and_move(self, desc: BeamlineDescription, problem: AlignmentProblem,
                            start: Evaluation) -> np.ndarray:
        """Probe, calibrate the fast twin by gradient descent, move; refine locally."""
        from twin.calibrate import calibrate

        st = problem.stage
        best = start
        seen: list[Evaluation] = [best]

        def take(u: np.ndarray) -> Evaluation:
            nonlocal best
            ev = problem.evaluate(u)
            seen.append(ev)
            if ev.fom > best.fom:
                best = ev
            return ev

        # probes: each motor moved both ways, so every offset shows in the readings
        for i in range(problem.dim):
            for sign in (1.0, -1.0)[:self.probe_sides]:
                if self._done(best, st) or problem.remaining <= 1:
                    return best.u.copy()
                u = seen[0].u.copy()
                u[i] = np.clip(u[i] + sign * self.probe, -1, 1)
                take(u)
        design = desc.design_positions()
        last_fom = -1.0
        for _ in range(self.rounds):
            if self._done(best, st) or problem.remaining <= 1:
                return best.u.copy()
            usable = [e for e in seen if e.judgement.flux_ratio > 0]
            if not usable:
                break
            fit = calibrate(desc, [(e.readbacks, e.observation) for e in usable],
                            motors=list(st.motors), diagnostics=self._diagnostics(desc, st),
                            rays=self.rays, steps=self.steps)
            target = {m: design[m] - fit.hidden.offset(m) for m in st.motors}
            ev = take(np.clip(problem.to_u(target), -1, 1))
            if ev.fom <= last_fom * 1.02:
                break  # the model no longer improves the beam: refine locally
            last_fom = ev.fom
        if not self._done(best, st) and problem.remaining > 1:
            return focus_then_refine(problem, best, desc if self.separable else None,
                                     stop_fom=self.stop_fom, initial_step=0.05)
        return best.u.copy()
