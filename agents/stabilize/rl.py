"""The reinforcement-learning corrector: a stable-baselines3 policy on ``Stabilize-v0``.

:func:`train_stabilizer` trains SAC on :class:`~agents.stabilize.env.StabilizeEnv`
with a new hidden gap dependence every episode and schedules seeded apart from
the benchmark's, so the policy meets the benchmark's beamline for the first time
there. :class:`RLCorrector` runs a trained policy behind the corrector protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agents.stabilize.env import StabilizeEnv, move_knobs, observation
from agents.stabilize.plant import KNOBS, Reading, StabilizeConfig
from twin.beam_response import BeamResponse
from twin.description import BeamlineDescription
from twin.errors import ConfigError

__all__ = ["RLCorrector", "train_stabilizer", "shipped_policy", "TRAIN_SCHEDULE_OFFSET"]

#: training schedules are drawn from seeds at and above this (the benchmark's lie below)
TRAIN_SCHEDULE_OFFSET = 1_000_000


def shipped_policy(desc: BeamlineDescription) -> Path | None:
    """The stabiliser policy shipped for *desc* (the built-in beamline only), or None."""
    from twin.presets import default_preset

    path = Path(__file__).resolve().parents[1] / "policies" / "stabilize.zip"
    return path if path.is_file() and desc.name == default_preset().name else None


class RLCorrector:
    """A trained stable-baselines3 policy as a corrector (deterministic actions)."""

    name = "rl"

    def __init__(self, model: object, desc: BeamlineDescription, config: StabilizeConfig) -> None:
        self.model, self.desc, self.config = model, desc, config
        self._lim = np.array([config.knob_limits[k] for k in KNOBS])
        self.reset()

    @classmethod
    def load(cls, path: str | Path, desc: BeamlineDescription,
             config: StabilizeConfig) -> RLCorrector:
        """Load a policy saved by :func:`train_stabilizer`."""
        from stable_baselines3 import SAC

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"no stabiliser policy at {str(p)!r}")
        return cls(SAC.load(str(p), device="cpu"), desc, config)

    def reset(self) -> None:  # noqa: D102
        self._target = np.zeros(len(KNOBS))

    def act(self, reading: Reading) -> np.ndarray:  # noqa: D102
        obs = observation(reading, self.desc, self.config)
        action, _ = self.model.predict(obs, deterministic=True)  # type: ignore[attr-defined]
        self._target = move_knobs(self._target, np.asarray(action, float), self._lim)
        return self._target.copy()


def train_stabilizer(desc: BeamlineDescription, *, config: StabilizeConfig | None = None,
                     response: BeamResponse | None = None, timesteps: int = 100_000,
                     seed: int = 0, episode_s: float = 20.0, save: str | Path | None = None,
                     progress: Callable[[str], None] | None = None,
                     progress_bar: bool = False) -> tuple[RLCorrector, float]:
    """Train a SAC stabiliser; returns it and the training wall time, s.

    SAC, not PPO: the knob moves a period must make are tiny against their caps,
    and PPO's on-policy noise kept its policies far from them (measured: PPO with
    300k steps held the beam worse than no correction in one plane on three of four
    schedules).

    Parameters
    ----------
    desc : BeamlineDescription
    config : StabilizeConfig, optional
    response : BeamResponse, optional
        Shared with the environment (default: measured).
    timesteps : int
        Environment steps (loop periods) of training.
    seed : int
        Seeds SAC and the episodes.
    episode_s : float
        Length of a training episode, s.
    save : path, optional
        Where to save the policy (zip).
    progress_bar : bool
        Show stable-baselines3's progress bar.
    """
    if not isinstance(timesteps, int) or timesteps < 1000:
        raise ConfigError(f"timesteps must be an integer >= 1000, got {timesteps!r}")
    import torch
    from stable_baselines3 import SAC

    cfg = config if config is not None else StabilizeConfig()
    say = progress or (lambda _m: None)
    env = StabilizeEnv(desc, seed=seed + 1000, config=cfg, duration_s=episode_s,
                       randomize=True, response=response,
                       schedule_seed_offset=TRAIN_SCHEDULE_OFFSET)
    env.reset(seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = SAC("MlpPolicy", env, learning_rate=3e-4, buffer_size=min(timesteps, 300_000),
                    batch_size=256, gamma=0.98, train_freq=4, gradient_steps=1, seed=seed,
                    device="cpu", verbose=0, policy_kwargs={"net_arch": [64, 64]})
        say(f"training SAC for {timesteps} loop periods")
        t0 = time.perf_counter()
        model.learn(total_timesteps=timesteps, progress_bar=progress_bar)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    if save is not None:
        model.save(str(save))
    return RLCorrector(model, desc, cfg), wall
