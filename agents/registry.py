"""Agents by name, as ``beamtwin align --agent`` and ``beamtwin bench align --agents`` take them."""

from __future__ import annotations

from collections.abc import Callable

from agents.bayes import BayesOptAgent
from agents.classic import NelderMeadAgent, RandomAgent, ScanAgent
from agents.harness import Agent
from agents.model_based import ModelBasedAgent
from agents.rl import HybridAgent, RLAgent
from twin.errors import UnknownNameError

__all__ = ["AGENTS", "make_agent", "DEFAULT_AGENT"]

#: every agent: name -> factory
AGENTS: dict[str, Callable[[], Agent]] = {
    "scan": ScanAgent,
    "nm": NelderMeadAgent,
    "random": RandomAgent,
    "bo": BayesOptAgent,
    "model": ModelBasedAgent,
    "rl": RLAgent,
    "hybrid": HybridAgent,
}
#: the best agent of the benchmark (docs/agents.md: most successes on kb, 100 % on mono),
#: used when none is named
DEFAULT_AGENT = "model"


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
