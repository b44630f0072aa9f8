"""One alignment trial: the loop every agent shares (suggest -> acquire -> evaluate -> ingest).

:class:`AlignmentProblem` puts a stage of a beamline in an agent's coordinates:
``u`` in ``[-1, 1]^d``, the box of ``start +- span`` around where the motors
stood when the trial began (intersected with the soft limits). An agent calls
:meth:`AlignmentProblem.evaluate` with a point; the problem moves there through
the safety layer (in capped steps), acquires, judges the reading and returns an
:class:`Evaluation` with a trial id. The agent sees the figure of merit and the
readings; whether a point *succeeds* is judged against the ideal beamline and is
for the harness only.

When the agent stops, :meth:`AlignmentProblem.finish` moves to the point it
chose and measures there: a trial is judged on the beamline the agent leaves
behind, not on the best point it passed through, and that last measurement
counts as an evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from agents.objective import Judgement, Objective
from agents.safety import BudgetError, DivergenceError, SafeBeamline, SafetyConfig
from agents.stages import Stage
from twin.description import BeamlineDescription
from twin.errors import ConfigError, NonFiniteError
from twin.observation import Observation
from twin.protocol import MovableBeamline

__all__ = ["Evaluation", "AlignmentProblem", "default_span"]

#: default half-width of the search box, in units of each motor's misalign_sigma
SPAN_SIGMAS = 4.0


def default_span(desc: BeamlineDescription, stage: Stage,
                 sigmas: float | None = None) -> dict[str, float]:
    """Half-width of each stage motor's search box: *sigmas* (default: the stage's own)
    times its typical misalignment. A motor without one gets 5 % of its range.
    """
    sigmas = stage.span_sigmas if sigmas is None else sigmas
    out = {}
    for name in stage.motors:
        m = desc.motor(name)
        out[name] = sigmas * m.misalign_sigma if m.misalign_sigma > 0 else 0.05 * (m.high - m.low)
    return out


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a trial.

    Attributes
    ----------
    trial_id : str
        ``{trial}/{n}``: the trial and the evaluation's number in it (from 1).
    u : ndarray
        The point, agent coordinates.
    positions : dict of str to float
        Motor readbacks after the move, motor units.
    judgement : Judgement
    observation : Observation
    moves : int
        Moves this evaluation took (capped steps).
    readbacks : dict of str to float
        Readbacks of every motor of the beamline after the move (upstream stages
        included), motor units.
    """

    trial_id: str
    u: np.ndarray
    positions: dict[str, float]
    judgement: Judgement
    observation: Observation = field(repr=False)
    moves: int = 1
    readbacks: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def fom(self) -> float:
        """Figure of merit (what the agent optimises)."""
        return self.judgement.fom

    @property
    def loss(self) -> float:
        """``-log(fom + 1e-6)``, for minimisers."""
        return Objective.loss(self.judgement.fom)


class AlignmentProblem:
    """A stage of a beamline, in an agent's coordinates, behind the safety layer.

    Parameters
    ----------
    beamline : MovableBeamline
    stage : Stage
    objective : Objective
    span : mapping of str to float
        Half-width of each motor's search box, motor units.
    budget : int
        Evaluations allowed (the final measurement included).
    trial : str
        Trial name for the ids.
    safety : SafetyConfig, optional
    exposure_s : float, optional
        Exposure per evaluation (default: the beamline's).
    """

    def __init__(self, beamline: MovableBeamline, stage: Stage, objective: Objective, *,
                 span: Mapping[str, float], budget: int = 100, trial: str = "trial",
                 safety: SafetyConfig | None = None, exposure_s: float | None = None) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 2:
            raise ConfigError(f"budget must be an integer >= 2 evaluations, got {budget!r}")
        missing = [m for m in stage.motors if m not in span]
        if missing:
            raise ConfigError(f"span has no entry for {', '.join(missing)}")
        self.stage, self.objective, self.budget, self.trial = stage, objective, budget, trial
        self.exposure_s = exposure_s
        here = beamline.positions()
        infos = beamline.motors()
        self.x0 = np.array([here[m] for m in stage.motors], dtype=float)
        lo = np.array([max(here[m] - span[m], infos[m].low) for m in stage.motors])
        hi = np.array([min(here[m] + span[m], infos[m].high) for m in stage.motors])
        if np.any(hi <= lo):
            raise ConfigError(f"empty search box for stage {stage.name!r}: {lo} .. {hi}")
        self.lo, self.hi = lo, hi
        self.safe = SafeBeamline(beamline, {m: (lo[i], hi[i])
                                            for i, m in enumerate(stage.motors)}, safety)
        self.history: list[Evaluation] = []
        self.clipped = 0
        self._start_fom: float | None = None
        self._below = 0
        self.finished: Evaluation | None = None
        self._recovering = False
        self.eval_wall_s = 0.0  # wall time spent moving and acquiring

    # ------------------------------------------------------------------ coordinates
    @property
    def dim(self) -> int:
        """Degrees of freedom."""
        return self.stage.dof

    def to_motors(self, u: np.ndarray) -> dict[str, float]:
        """Agent coordinates to motor positions."""
        x = self.lo + (np.asarray(u, dtype=float) + 1.0) * 0.5 * (self.hi - self.lo)
        return {m: float(x[i]) for i, m in enumerate(self.stage.motors)}

    def to_u(self, positions: Mapping[str, float]) -> np.ndarray:
        """Motor positions to agent coordinates."""
        x = np.array([positions[m] for m in self.stage.motors], dtype=float)
        return 2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0

    @property
    def u0(self) -> np.ndarray:
        """Where the trial started, agent coordinates."""
        return self.to_u(dict(zip(self.stage.motors, self.x0, strict=True)))

    @property
    def evaluations(self) -> int:
        """Evaluations so far (the final measurement included)."""
        return len(self.history)

    @property
    def remaining(self) -> int:
        """Evaluations left."""
        return self.budget - self.evaluations

    def best(self) -> Evaluation:
        """The best evaluation so far (by figure of merit)."""
        if not self.history:
            raise ConfigError("no evaluation yet")
        return max(self.history, key=lambda e: e.fom)

    # ------------------------------------------------------------------ the loop
    def evaluate(self, u: np.ndarray) -> Evaluation:
        """Move to *u* (clipped to the box), acquire and judge.

        Raises
        ------
        NonFiniteError
            If *u* holds NaN or infinity (nothing moves).
        BudgetError
            If the evaluation budget is spent.
        DivergenceError
            If the figure of merit stayed far below its starting value; every axis
            is back where the trial started.
        """
        u = np.asarray(u, dtype=float).reshape(-1)
        if u.shape != (self.dim,):
            raise ConfigError(f"a point of stage {self.stage.name!r} has {self.dim} "
                              f"coordinates, got shape {u.shape}")
        if not np.all(np.isfinite(u)):
            raise NonFiniteError(f"agent point {u.tolist()} is not finite; nothing moved")
        if self.remaining <= 0 and not self._recovering:
            raise BudgetError(f"the budget of {self.budget} evaluations is spent")
        if np.any(np.abs(u) > 1.0):
            self.clipped += 1
            u = np.clip(u, -1.0, 1.0)
        t0 = time.perf_counter()
        moves = self.safe.move_stepwise(self.to_motors(u))
        obs = self.safe.acquire(self.exposure_s)
        self.eval_wall_s += time.perf_counter() - t0
        j = self.objective.judge(obs)
        readbacks = self.safe.positions()
        ev = Evaluation(f"{self.trial}/{self.evaluations + 1}", u.copy(),
                        {m: readbacks[m] for m in self.stage.motors}, j, obs, moves, readbacks)
        self.history.append(ev)
        self._watch(j.fom)
        return ev

    def observe_start(self) -> Evaluation:
        """Measure where the trial starts (counts as an evaluation)."""
        return self.evaluate(self.u0)

    def finish(self, u: np.ndarray) -> Evaluation:
        """Move to the agent's chosen point and measure there: the trial's result."""
        if self.remaining <= 0:
            # the agent spent every evaluation: it is judged where it stands
            self.finished = self.history[-1]
            return self.finished
        self.finished = self.evaluate(u)
        return self.finished

    def recover(self, u: np.ndarray) -> Evaluation:
        """Move to *u* and measure there although the budget may be spent: the one
        recovery move of a failed stage (``--on-fail best``). It counts as an
        evaluation and becomes the trial's result."""
        self._recovering = True
        try:
            self.finished = self.evaluate(u)
        finally:
            self._recovering = False
        return self.finished

    def return_to_start(self) -> None:
        """Every stage motor back to where the trial started."""
        self.safe.return_to_safe()

    def _watch(self, fom: float) -> None:
        if self._start_fom is None:
            self._start_fom = fom
            return
        cfg = self.safe.config
        if self._start_fom > 0 and fom < cfg.divergence_ratio * self._start_fom:
            self._below += 1
        else:
            self._below = 0
        if self._below >= cfg.divergence_count:
            self.return_to_start()
            raise DivergenceError(
                f"stage {self.stage.name!r}: the figure of merit stayed below "
                f"{cfg.divergence_ratio:g}x its starting value ({self._start_fom:.3g}) for "
                f"{cfg.divergence_count} evaluations; every axis is back at its start")
