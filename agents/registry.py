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
#: the best agent of the benchmark, used when none is named (docs/agents.md): on kb 90 % with
#: a median of 26 evaluations (bender focus and pitch trims; next best 80 %, 38); on m1 and
#: mono it steers with a response matrix, 100 % in 5-6 evaluations against 22-26 for a
#: simplex; and it aligned the whole beamline in 5 of 5 one-click runs on xrt (separable: 1)
DEFAULT_AGENT = "steer"


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
