"""Alignment agents and the Gymnasium environments they learn in.

Importing :mod:`agents` registers ``beamtwin/Align-v0`` with Gymnasium
(``gym.make("beamtwin/Align-v0", stage="kb")``; ``gym.make_vec`` gives the
batched fast-twin :class:`~agents.env.AlignVecEnv`).
"""

import gymnasium as _gym

ENV_ID = "beamtwin/Align-v0"

if ENV_ID not in _gym.registry:
    _gym.register(id=ENV_ID, entry_point="agents.env:AlignEnv",
                  vector_entry_point="agents.env:AlignVecEnv", max_episode_steps=50)

__all__ = ["ENV_ID"]
