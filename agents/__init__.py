"""Alignment agents and the Gymnasium environments they learn in.

Importing :mod:`agents` registers ``beamtwin/Align-v0`` with Gymnasium
(``gym.make("beamtwin/Align-v0", stage="kb")``; ``gym.make_vec`` gives the
batched fast-twin :class:`~agents.env.AlignVecEnv`) and ``beamtwin/Stabilize-v0``
(:class:`~agents.stabilize.env.StabilizeEnv`, feed-forward beam stabilisation).
"""

import gymnasium as _gym

ENV_ID = "beamtwin/Align-v0"
STABILIZE_ENV_ID = "beamtwin/Stabilize-v0"

if ENV_ID not in _gym.registry:
    _gym.register(id=ENV_ID, entry_point="agents.env:AlignEnv",
                  vector_entry_point="agents.env:AlignVecEnv", max_episode_steps=50)

if STABILIZE_ENV_ID not in _gym.registry:
    _gym.register(id=STABILIZE_ENV_ID, entry_point="agents.stabilize.env:StabilizeEnv")

__all__ = ["ENV_ID", "STABILIZE_ENV_ID"]
