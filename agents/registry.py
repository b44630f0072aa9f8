"""Agents by name, as ``beamtwin align --agent`` and ``beamtwin bench align --agents`` take them."""

from __future__ import annotations

from collections.abc import Callable

from agents.bayes import BayesOptAgent
from agents.classic import NelderMeadAgent, RandomAgent, ScanAgent
from agents.harness import Agent
from agents.model_based import ModelBasedAgent
from agents.rl import HybridAgent, RLAgent
from agents.separable import SeparableAgent
from agents.steering import SteerAgent
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
    "separable": SeparableAgent,
    "steer": SteerAgent,
}
#: the best agent of the benchmark (docs/agents.md: most successes on kb and fewest evaluations
#: among the successful, 100 % on m1, mono and slits),
#: used when none is named
DEFAULT_AGENT = "separable"


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
