"""Agents by name, as ``beamtwin align --agent`` and ``beamtwin bench align --agents`` take them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agents.bayes import BayesOptAgent
from agents.classic import NelderMeadAgent, RandomAgent, ScanAgent
from agents.focus_model import has_levers
from agents.harness import Agent
from agents.model_based import ModelBasedAgent
from agents.problem import AlignmentProblem
from agents.rl import HybridAgent, RLAgent
from agents.separable import SeparableAgent
from agents.stages import Stage
from agents.steering import SteerAgent
from twin.description import BeamlineDescription
from twin.errors import UnknownNameError

__all__ = ["AGENTS", "make_agent", "agent_for_stage", "best_agent_for", "AutoAgent",
           "DEFAULT_AGENT"]

#: every agent: name -> factory
AGENTS: dict[str, Callable[[], Agent]] = {
    "scan": ScanAgent,
    "nm": NelderMeadAgent,
    "random": RandomAgent,
    "bo": BayesOptAgent,
    "model": ModelBasedAgent,
    "rl": RLAgent,
    "hybrid": HybridAgent,
    "separable": SeparableAgent,
    "steer": SteerAgent,
}


def best_agent_for(desc: BeamlineDescription | None, st: Stage) -> str:
    """The benchmark's best agent for stage *st* (docs/agents.md).

    ``model`` on a pair of mirrors focusing both planes with an imaging diagnostic
    behind the judge (the KB: 10 of 10 in a median of 6 evaluations on xrt, where
    the next best, ``steer``, needs 26); ``steer`` everywhere else (m1 and mono:
    100 % in 5-6 evaluations, as the RL policies, against 7-9 for ``model``).
    """
    return "model" if has_levers(desc, st) else "steer"


@dataclass
class AutoAgent:
    """The benchmark's best agent for whatever stage it is given (:func:`best_agent_for`)."""

    name: str = "auto"
    _agents: dict[str, Agent] = field(default_factory=dict, init=False, repr=False)

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align with the stage's best agent; returns the chosen point."""
        pick = best_agent_for(getattr(problem.safe.inner, "desc", None), problem.stage)
        if pick not in self._agents:
            self._agents[pick] = AGENTS[pick]()
        return self._agents[pick].run(problem, rng)


AGENTS["auto"] = AutoAgent
#: used when no agent is named: the best of the benchmark for each stage (``auto``)
DEFAULT_AGENT = "auto"


def agent_for_stage(name: str, desc: BeamlineDescription | None, st: Stage) -> Agent:
    """A fresh agent *name* for stage *st*; ``auto`` resolves to the stage's best agent
    (so that a stage's record names the agent that ran it)."""
    return make_agent(best_agent_for(desc, st) if name == "auto" else name)


def make_agent(name: str) -> Agent:
    """A fresh agent called *name*.

    Raises
    ------
    UnknownNameError
        For a name that is not an agent.
    """
    if name in AGENTS:
        return AGENTS[name]()
    raise UnknownNameError(f"unknown agent {name!r}; available agents: {', '.join(AGENTS)}")
