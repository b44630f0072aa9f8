"""Agents by name, as ``beamtwin align --agent`` and ``beamtwin bench align --agents`` take them."""

from __future__ import annotations

from collections.abc import Callable

from agents.bayes import BayesOptAgent
from agents.classic import NelderMeadAgent, RandomAgent, ScanAgent
from agents.harness import Agent
from agents.model_based import ModelBasedAgent
from twin.errors import ConfigError, UnknownNameError

__all__ = ["AGENTS", "PLANNED", "make_agent", "DEFAULT_AGENT"]

#: built agents: name -> factory
AGENTS: dict[str, Callable[[], Agent]] = {
    "scan": ScanAgent,
    "nm": NelderMeadAgent,
    "random": RandomAgent,
    "bo": BayesOptAgent,
    "model": ModelBasedAgent,
}
#: agents the benchmark names that are not built yet
PLANNED = ("rl", "hybrid")
#: the best agent of the benchmark (docs/agents.md: most successes on kb, 100 % on mono),
#: used when none is named
DEFAULT_AGENT = "model"


def make_agent(name: str) -> Agent:
    """A fresh agent called *name*.

    Raises
    ------
    UnknownNameError
        For a name that is neither built nor planned.
    ConfigError
        For a planned agent that is not built yet.
    """
    if name in AGENTS:
        return AGENTS[name]()
    if name in PLANNED:
        raise ConfigError(f"agent {name!r} is not built yet; available agents: "
                          f"{', '.join(AGENTS)}")
    raise UnknownNameError(f"unknown agent {name!r}; available agents: {', '.join(AGENTS)} "
                           f"(planned: {', '.join(PLANNED)})")
