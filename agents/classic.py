"""Classical alignment agents, honestly tuned: the operator's scan, Nelder-Mead, random search.

Each agent works on an :class:`~agents.problem.AlignmentProblem` through the
shared loop and returns the point it chooses; the harness then measures there
(:func:`agents.harness.run_trial`). Agents stop when the figure of merit reaches
``stop_fom`` (the reference is the design beam, so 0.9 means "as good as the
design, within noise"), when they converge, or one evaluation before the budget
ends (that one is the final measurement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from agents.problem import AlignmentProblem, Evaluation

__all__ = ["ScanAgent", "NelderMeadAgent", "RandomAgent", "STOP_FOM"]

#: figure of merit at which agents consider the stage aligned
STOP_FOM = 0.9


class _Stop(Exception):
    """Raised inside an optimiser's objective to end the search."""


def _can_evaluate(problem: AlignmentProblem) -> bool:
    return problem.remaining > 1  # keep one for the final measurement


@dataclass
class ScanAgent:
    """The operator's way: scan each motor in turn and go to the peak (``lineup``).

    Each pass scans every motor over ``points`` positions around the current
    best, moves it to the peak, and narrows the scan by ``shrink`` for the next
    pass. The first pass spans the whole search box.

    Parameters
    ----------
    points : int
        Positions per scan.
    passes : int
        Passes over all motors.
    shrink : float
        Scan width of each pass relative to the previous one.
    stop_fom : float
    """

    points: int = 7
    passes: int = 4
    shrink: float = 0.35
    stop_fom: float = STOP_FOM
    name: str = "scan"

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point."""
        best = problem.observe_start()
        current = best.u.copy()
        width = 1.0
        for _ in range(self.passes):
            for i in range(problem.dim):
                if best.fom >= self.stop_fom or not _can_evaluate(problem):
                    return current
                grid = np.clip(current[i] + np.linspace(-width, width, self.points), -1, 1)
                grid = np.unique(grid)
                for g in grid:
                    if not _can_evaluate(problem):
                        break
                    u = current.copy()
                    u[i] = g
                    ev = problem.evaluate(u)
                    if ev.fom > best.fom:
                        best = ev
                    if best.fom >= self.stop_fom:
                        break
                current = best.u.copy()
            width *= self.shrink
        return current


@dataclass
class NelderMeadAgent:
    """Nelder-Mead simplex (scipy) on ``-log(fom)``, restarted from the best point.

    Parameters
    ----------
    initial_step : float
        Initial simplex size, agent units (the box is [-1, 1]).
    xatol, fatol : float
        Convergence tolerances (agent units; loss).
    stop_fom : float
    stop_within_margin : bool
        Also stop where the success criterion holds on the measurement with a margin
        (``Judgement.within_margin``), as the refining agents do.
    idle_restarts : int, optional
        Stop after this many restarts in a row that did not raise the best figure of
        merit by 1 % (None: restart until the budget is spent, the baseline's way).
        Where errors outside the stage cap the figure below ``stop_fom``, restarting
        only spends beam time.
    """

    initial_step: float = 0.4
    xatol: float = 0.01
    fatol: float = 0.02
    stop_fom: float = STOP_FOM
    stop_within_margin: bool = False
    idle_restarts: int | None = None
    name: str = "nm"

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point."""
        return self.continue_from(problem, problem.observe_start())

    def continue_from(self, problem: AlignmentProblem, start: Evaluation) -> np.ndarray:
        """Search from an evaluation already made (other agents refine with it)."""
        best: list[Evaluation] = [start]

        def done() -> bool:
            return best[0].fom >= self.stop_fom or (self.stop_within_margin
                                                     and best[0].judgement.within_margin)

        def fun(u: np.ndarray) -> float:
            if done() or not _can_evaluate(problem):
                raise _Stop
            ev = problem.evaluate(u)
            if ev.fom > best[0].fom or (self.stop_within_margin and ev.judgement.within_margin):
                best[0] = ev
            return ev.loss

        step = self.initial_step
        idle = 0
        while not done() and _can_evaluate(problem):
            if self.idle_restarts is not None and idle > self.idle_restarts:
                break
            before = best[0].fom
            x0 = np.clip(best[0].u, -1 + step, 1 - step)
            simplex = np.vstack([x0] + [x0 + step * e for e in np.eye(problem.dim)])
            try:
                minimize(fun, x0, method="Nelder-Mead",
                         options={"initial_simplex": simplex, "xatol": self.xatol,
                                  "fatol": self.fatol, "maxfev": problem.remaining})
            except _Stop:
                break
            idle = idle + 1 if best[0].fom <= 1.01 * before else 0
            step = max(0.05, step * 0.5)  # restart smaller around the best point
        return best[0].u.copy()


@dataclass
class RandomAgent:
    """Uniform random search in the box; goes to the best point seen.

    Parameters
    ----------
    stop_fom : float
    """

    stop_fom: float = STOP_FOM
    name: str = "random"

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point."""
        best = problem.observe_start()
        while best.fom < self.stop_fom and _can_evaluate(problem):
            ev = problem.evaluate(rng.uniform(-1.0, 1.0, problem.dim))
            if ev.fom > best.fom:
                best = ev
        return best.u.copy()
