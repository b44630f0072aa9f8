"""Running agents on seeded misaligned beamlines, trial by trial, on equal terms.

:func:`run_trial` runs one agent on one :class:`~agents.problem.AlignmentProblem`
and judges the beamline it leaves behind. :func:`stage_trial` builds that
problem on a simulated beamline (:class:`~twin.simulator.TwinBeamline`) whose
hidden errors sit on the stage's own motors, so that every agent meets the same
beamlines for the same seeds. :func:`align` runs the progressive one-click
alignment, stage after stage on one beamline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from agents.objective import Judgement, Objective
from agents.problem import AlignmentProblem, default_span
from agents.safety import BudgetError, DivergenceError, SafetyConfig
from agents.stages import Stage, ordered_stages, stage
from agents.verdict import ON_FAIL, OnFail, StageVerdict, fmt3, stage_verdict
from twin.description import BeamlineDescription
from twin.errors import ConfigError
from twin.hidden import HiddenErrors
from twin.observation import BeamStats
from twin.protocol import MovableBeamline
from twin.simulator import TwinBeamline
from twin.tracer import Twin

__all__ = ["Agent", "check_agent", "TrialResult", "run_trial", "stage_trial", "align",
           "ideal_references", "BenchSettings", "References", "source_positions", "return_to"]


class Agent(Protocol):
    """What every agent provides: a name and ``run(problem, rng) -> chosen point``.

    An agent that can refuse a stage up front (a learned policy trained for other
    motors) also has ``check(stage)``, which raises before anything moves; see
    :func:`check_agent`.
    """

    name: str

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray: ...


def check_agent(agent: Agent, st: Stage) -> None:
    """Let *agent* refuse stage *st* before anything moves (if it has such a check)."""
    check = getattr(agent, "check", None)
    if check is not None:
        check(st)


@dataclass(frozen=True)
class TrialResult:
    """The outcome of one trial, judged where the agent left the beamline.

    Attributes
    ----------
    agent, stage, trial : str
    success : bool
    evaluations : int
        Evaluations the agent used, the final measurement included.
    budget : int
    moves : int
    beamline_time_s : float
        Simulated beamline time: motor travel and exposures.
    optimizer_s : float
        Wall time the agent spent thinking (not moving or measuring).
    final : dict
        The final judgement (``fom``, ``flux_ratio``, ``fwhm_ratio``, ``offset_um``,
        ``success``).
    foms : list of float
        Figure of merit after each evaluation (for convergence plots).
    error : str or None
        Why the trial ended early (divergence, budget), if it did.
    refusals : list of dict
        Moves the safety layer refused (type, axis, value, message).
    """

    agent: str
    stage: str
    trial: str
    success: bool
    evaluations: int
    budget: int
    moves: int
    beamline_time_s: float
    optimizer_s: float
    final: dict[str, Any]
    foms: list[float] = field(repr=False)
    error: str | None = None
    refusals: list[dict[str, Any]] = field(default_factory=list)
    recovered: str | None = None

    @property
    def verdict(self) -> StageVerdict:
        """The stage's verdict with its reason (:func:`agents.verdict.stage_verdict`)."""
        return stage_verdict(success=self.success, error=self.error,
                             evaluations=self.evaluations, budget=self.budget,
                             final=self.final, refusals=self.refusals)

    @property
    def counted_evaluations(self) -> int:
        """Evaluations for the statistics: a failed trial counts its whole budget."""
        return self.evaluations if self.success else self.budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d.pop("foms")
        v = self.verdict
        d["verdict"] = v.to_dict()
        d["reason"] = v.reason
        return d


def run_trial(agent: Agent, problem: AlignmentProblem, seed: int, *,
              truth: Callable[[], Judgement] | None = None,
              on_fail: OnFail = "stay") -> TrialResult:
    """Run *agent* on *problem* and judge the beamline it leaves behind.

    Parameters
    ----------
    truth : callable, optional
        Judges the beamline as it really is (in simulation: noise-free, against the
        ideal beamline); default: the agent's own final measurement.
    on_fail : {"stay", "best", "start"}
        When the agent's final measurement misses the criterion (or the budget ran
        out): ``best`` moves to the evaluation with the highest figure of merit and
        measures there (one more evaluation), if it measured better than the final
        one; ``start`` and ``stay`` leave the stage where the agent did (a run
        returns to its start itself). The decision uses the measurements only.
    """
    if on_fail not in ON_FAIL:
        raise ConfigError(f"on_fail must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
    rng = np.random.default_rng(seed)
    t_beam0 = problem.safe.time_s
    t0 = time.perf_counter()
    error = None
    try:
        u = agent.run(problem, rng)
        final = problem.finish(u)
        judgement = final.judgement
    except DivergenceError as exc:
        error = f"DivergenceError: {exc}"
        judgement = _judge_now(problem)
    except BudgetError as exc:
        error = f"BudgetError: {exc}"
        judgement = problem.history[-1].judgement if problem.history else _judge_now(problem)
    recovered = None
    if (on_fail == "best" and not judgement.success and problem.history
            and not (error or "").startswith("DivergenceError")):
        best = problem.best()
        if best.fom > judgement.fom:
            judgement = problem.recover(best.u).judgement
            recovered = "best"
            if error is not None and error.startswith("BudgetError"):
                error = None  # judged where the recovery left it, not where the budget ran out
    wall = time.perf_counter() - t0
    measured_fom = judgement.fom
    if truth is not None:
        judgement = truth()
    final = {k: _json_value(v) for k, v in asdict(judgement).items()}
    final["measured_fom"] = measured_fom
    return TrialResult(
        agent=agent.name, stage=problem.stage.name, trial=problem.trial,
        success=bool(judgement.success and error is None), evaluations=problem.evaluations,
        budget=problem.budget, moves=problem.safe.moves,
        beamline_time_s=problem.safe.time_s - t_beam0,
        optimizer_s=max(wall - problem.eval_wall_s, 0.0),
        final=final, foms=[e.fom for e in problem.history], error=error,
        refusals=list(problem.safe.refusals), recovered=recovered)


def _json_value(v: Any) -> Any:
    """NaN and inf become None, also inside tuples (the pointing offsets)."""
    if isinstance(v, (tuple, list)):
        return [_json_value(x) for x in v]
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _judge_now(problem: AlignmentProblem) -> Judgement:
    return problem.objective.judge(problem.safe.acquire(problem.exposure_s))


def ideal_references(desc: BeamlineDescription, *, rays: int, seed: int = 0,
                     backend: str = "xrt", noise: bool = False,
                     source: Mapping[str, float] | None = None) -> dict[str, BeamStats]:
    """Readings of every observation point on the ideal, aligned beamline.

    With *noise*, as the noisy diagnostics measure it (pixelated cameras
    included): the reference an agent compares its own measurements with.
    Without, the true beam: the reference that judges success. *source* sets the
    source's motors (e.g. the undulator gap where the beamline really has it).
    """
    obs = Twin(desc, backend=backend, rays=rays).trace(dict(source or {}), seed=seed,
                                                       noise=noise)
    out = {n: r.stats for n, r in obs.diagnostics.items()}
    out[obs.detector.name] = obs.detector.stats
    return out


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """How trials are simulated.

    Parameters
    ----------
    rays : int
        Rays per acquisition.
    budget : int
        Evaluations per stage.
    misalign : float
        Scale of the hidden errors (1: day one).
    noise : bool
        Detector and diagnostic noise.
    disturbances : bool
        Drift, vibration and the rest of the disturbance model.
    backend : str
        ``xrt`` or ``fast``.
    span_sigmas : float, optional
        Search-box half-width, in units of each motor's typical misalignment
        (default: each stage's own).
    """

    rays: int = 5000
    budget: int = 100
    misalign: float = 1.0
    noise: bool = True
    disturbances: bool = False
    backend: str = "xrt"
    span_sigmas: float | None = None
    safety: SafetyConfig = field(default_factory=SafetyConfig)


@dataclass(frozen=True)
class References:
    """The ideal beamline's readings: as measured (for agents) and true (for judging).

    A simulated beamline is judged against the ideal beamline traced with the
    *same rays* (the same seed): at a few thousand undulator rays the ray sample
    alone moves the ideal flux by +-10 % and the focus size by up to 25 %, and a
    reference traced with other rays would judge that sampling, not the alignment.
    """

    measured: dict[str, BeamStats]
    true: dict[str, BeamStats]

    @classmethod
    def of(cls, desc: BeamlineDescription, settings: BenchSettings,
           seed: int = 0, hidden: HiddenErrors | None = None) -> References:
        """Both references of *desc* at the settings' rays, backend and noise, for the
        beamline traced with ray seed *seed*.

        With *hidden*, the motors that set the source's draw (the undulator gap, the
        Bragg angle) sit where that beamline really has them (:func:`source_positions`),
        so that the references judge the alignment, not another Monte-Carlo sample.
        """
        source = source_positions(desc, hidden) if hidden is not None else None
        true = ideal_references(desc, rays=settings.rays, backend=settings.backend, seed=seed,
                                source=source)
        measured = ideal_references(desc, rays=settings.rays, backend=settings.backend,
                                    seed=seed, noise=True, source=source) \
            if settings.noise else true
        return cls(measured, true)


def source_positions(desc: BeamlineDescription, hidden: HiddenErrors) -> dict[str, float]:
    """Where the motors that set the source's draw really are on a beamline with *hidden*
    errors, motor units (``design + offset``): the source's own motors (not the ring's
    knobs) and the Bragg angle of every monochromator (the source is drawn at the energy
    the first one selects).

    A reference traced there shares the beamline's source: the same rays at the same
    energy. No one-click stage moves these motors; a gap 1 um off, or a Bragg angle
    2 urad off, draws another Monte-Carlo sample of the same source, which alone moves
    the flux and the focus size by 5 % rms at 5,000 rays.
    """
    from twin.description import CrystalMonochromator, MultilayerMonochromator

    knobs = desc.knob_motors()
    names = [f"{desc.source.name}.{m.axis}" for m in desc.source.motors]
    names += [f"{e.name}.bragg" for e in desc.elements
              if isinstance(e, (CrystalMonochromator, MultilayerMonochromator))
              and e.motor("bragg") is not None]
    out = {}
    for name in names:
        if name not in knobs and hidden.offset(name) != 0.0:
            out[name] = desc.motor(name).position + hidden.offset(name)
    return out


def stage_trial(desc: BeamlineDescription, stage_name: str, agent: Agent, *, seed: int,
                settings: BenchSettings) -> TrialResult:
    """One trial of *agent* on *stage_name*, hidden errors on that stage's motors only.

    The same *seed* gives every agent the same beamline (hidden errors, rays, noise).
    Success is judged on the true beam the agent leaves behind, against the ideal
    beamline with the same rays (:class:`References`).
    """
    st = stage(desc, stage_name)
    refs = References.of(desc, settings, seed)
    full = HiddenErrors.draw(desc, settings.misalign, seed)
    hidden = HiddenErrors({m: v for m, v in full.offsets.items() if m in st.motors},
                          settings.misalign, seed)
    bl = TwinBeamline(desc, hidden=hidden, seed=seed, backend=settings.backend,
                      rays=settings.rays, noise=settings.noise,
                      disturbances=settings.disturbances)
    problem = AlignmentProblem(bl, st, Objective.at(st, refs.measured),
                               span=default_span(desc, st, settings.span_sigmas),
                               budget=settings.budget, trial=f"{agent.name}-{stage_name}-{seed}",
                               safety=settings.safety)
    judge = Objective.at(st, refs.true)
    return run_trial(agent, problem, seed, truth=lambda: judge.judge(bl.ground_truth()))


def align(desc: BeamlineDescription, beamline: MovableBeamline,
          agents: Callable[[Stage], Agent], *, stage_names: Sequence[str] | None = None,
          settings: BenchSettings, references: References, seed: int,
          progress: Callable[[str], None] | None = None,
          on_stage: Callable[[int, Stage, Objective], None] | None = None,
          stop_on_divergence: bool = False, on_fail: OnFail = "best") -> dict[str, Any]:
    """Progressive alignment: each stage in order, on one beamline.

    Each stage stops when its criterion holds on the measurement (with a margin for
    noise), or when its agent gives up or spends its budget. A stage that fails is
    handled by *on_fail* (:data:`agents.verdict.ON_FAIL`):

    ``best``
        the stage moves to the best point it measured (if that beats where the
        agent stopped), and the run goes on;
    ``stay``
        the stage stays where the agent left it, and the run goes on;
    ``start``
        the run ends there, and every axis of the stages run so far goes back to
        where the run found it (``returned_to_start`` in the document).

    With *stop_on_divergence*, a stage that diverges (its axes already back where
    it started) ends the alignment: no later stage runs, and the document says
    why in ``stopped``.

    *on_stage* is called with each stage's index, the stage and its objective
    before the stage starts (a run's recorder uses it). On a simulated beamline (one
    with ``ground_truth``) each stage is judged on the true beam against
    ``references.true``; elsewhere on its own final measurement.

    Returns the ``beamtwin align --json`` document (without ``ideal``/``final`` of
    the whole beamline, which the caller measures), with ``stages``, and
    ``stopped`` and ``returned_to_start`` when the run ended early.
    """
    if on_fail not in ON_FAIL:
        raise ConfigError(f"on_fail must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
    available = {st.name: st for st in ordered_stages(desc, stage_names)}
    names = list(available)
    say = progress or (lambda m: None)
    chosen = {n: agents(available[n]) for n in names}
    for n, agent in chosen.items():  # refuse before the first stage moves anything
        check_agent(agent, available[n])
    simulated = callable(getattr(beamline, "ground_truth", None))  # the twin: truth is known
    run_start = beamline.positions()
    touched: list[str] = []
    out: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"stages": out, "on_fail": on_fail}
    for k, n in enumerate(names):
        st = available[n]
        agent = chosen[n]
        say(f"stage {n} ({st.dof} DOF, judged at {st.diagnostic}) with {agent.name}")
        objective = Objective.at(st, references.measured)
        if on_stage is not None:
            on_stage(k, st, objective)
        problem = AlignmentProblem(beamline, st, objective,
                                   span=default_span(desc, st, settings.span_sigmas),
                                   budget=settings.budget, trial=f"align-{n}",
                                   safety=settings.safety)
        touched.extend(m for m in st.motors if m not in touched)
        judge_truth = None
        if simulated:
            judge = Objective.at(st, references.true)
            judge_truth = (lambda j=judge: j.judge(beamline.ground_truth()))  # type: ignore[attr-defined]  # noqa: E731
        res = run_trial(agent, problem, seed + k, truth=judge_truth,
                        on_fail="best" if on_fail == "best" else "stay")
        out.append({"stage": n, "agent": agent.name, "motors": list(st.motors),
                    "diagnostic": st.diagnostic, **res.to_dict()})
        v = res.verdict
        say(f"  -> {'aligned' if v.aligned else 'NOT aligned'} in {res.evaluations} "
            f"evaluations, fom {fmt3(res.final['fom'])}"
            + ("" if v.aligned else f" ({v.reason}: {v.detail})"))
        if stop_on_divergence and v.reason == "diverged":
            say(f"stage {n} diverged: the alignment stops here")
            doc["stopped"] = f"stage {n} diverged: {res.error}"
            break
        if not v.aligned and on_fail == "start":
            doc["stopped"] = f"stage {n} failed ({v.reason}); on-fail start"
            break
    if doc.get("stopped"):
        for n in names[len(out):]:
            out.append({"stage": n, "agent": chosen[n].name, "motors": list(available[n].motors),
                        "diagnostic": available[n].diagnostic, "success": False,
                        "evaluations": 0, "budget": settings.budget, "moves": 0,
                        "beamline_time_s": 0.0, "final": {}, "error": None, "refusals": [],
                        "reason": "not_run",
                        "verdict": StageVerdict(False, "not_run", "an earlier stage ended the "
                                                "run").to_dict()})
        if on_fail == "start":
            say("on-fail start: every axis the run moved goes back to where it started")
            doc["returned_to_start"] = return_to(beamline, run_start, touched, settings.safety)
    return doc


def return_to(beamline: MovableBeamline, start: Mapping[str, float], axes: Sequence[str],
              safety: SafetyConfig) -> list[str]:
    """Move *axes* back to *start* in capped steps through the safety layer (inside
    each motor's soft limits); returns the axes moved back."""
    from agents.safety import SafeBeamline

    infos = beamline.motors()
    here = beamline.positions()
    back = [m for m in axes if here[m] != start[m]]
    if back:
        envelope = {m: (infos[m].low, infos[m].high) for m in back}
        SafeBeamline(beamline, envelope, safety).move_stepwise({m: start[m] for m in back})
    return back
