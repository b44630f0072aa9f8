"""Imitation of a privileged teacher (DAgger), to start an alignment policy near its goal.

Reinforcement learning from the figure of merit alone does not find the KB's aligned
set in a training budget of minutes: it is a valley about 1 % of the search box wide
in bend (docs/agents.md). In simulation the way out is a teacher that knows what the
beamline hides. The fast twin knows each episode's hidden errors, so it knows where the
motors give the ideal beam; the teacher's move is the step towards there, capped at the
policy's largest step. The student (the stable-baselines3 policy that ships) sees only
what a real beamline shows it: its readings, their change since the last move and the
motor positions. It learns the teacher's moves by regression.

Plain behaviour cloning fails the usual way: the student drifts into states the teacher
never visited. DAgger (Ross, Gordon and Bagnell 2011) closes that gap: each round rolls
out the student (mixed with the teacher), labels every state it visits with the
teacher's move, adds them to the data set and refits on all of it.

Only the student's deterministic action is fitted (for PPO the mean of its Gaussian,
for SAC and TD3 the actor). The result is an ordinary SB3 model: the RL algorithm can
fine-tune it (:func:`agents.rl.train` with ``timesteps > 0``) and
:class:`~agents.rl.RLAgent` runs it like any other policy, on any backend.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import stable_baselines3 as sb3
import torch

from agents.env import AlignVecEnv
from twin.errors import ConfigError

__all__ = ["ImitationConfig", "ImitationReport", "teacher_actions", "imitate"]


def teacher_actions(venv: AlignVecEnv) -> np.ndarray:
    """The teacher's moves: straight towards each beamline's ideal positions.

    Parameters
    ----------
    venv : AlignVecEnv

    Returns
    -------
    ndarray
        ``(num_envs, dof)`` actions in [-1, 1] (units of the largest step per move).
    """
    step = venv.config.max_step
    return np.clip((venv.ideal_u() - venv.u) / step, -1.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class ImitationConfig:
    """How to imitate.

    Parameters
    ----------
    steps : int
        Environment steps in all, summed over the parallel beamlines (each is one labelled
        sample).
    rollout : int
        Steps per beamline in one DAgger round.
    teacher_mix : float
        In the rounds after the first, the probability that a beamline's next move is the
        teacher's rather than the student's, drawn per beamline and step (the first round
        follows the teacher, with noise).
    first_noise : float
        rms of the noise on the teacher's moves in the first round, action units.
    epochs : int
        Passes over the data set after each round (three times that after the last).
    lr : (float, float)
        Adam's learning rate in the first and the last round (geometric in between).
    batch_size : int
    """

    steps: int
    rollout: int = 50
    teacher_mix: float = 0.3
    first_noise: float = 0.3
    epochs: int = 8
    lr: tuple[float, float] = (1e-3, 1e-4)
    batch_size: int = 512

    def __post_init__(self) -> None:
        for name in ("steps", "rollout", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"imitation {name} must be an integer >= 1, got {v!r}")
        for name in ("teacher_mix", "first_noise"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ConfigError(f"imitation {name} must be within [0, 1], got {v!r}")
        if len(self.lr) != 2 or not all(isinstance(v, (int, float)) and 0 < v < 1
                                        for v in self.lr):
            raise ConfigError(f"imitation lr must be two rates in (0, 1), got {self.lr!r}")


@dataclass
class ImitationReport:
    """What :func:`imitate` did.

    Attributes
    ----------
    rounds : int
    samples : int
        Labelled states in the final data set.
    wall_s : float
    history : list of dict
        Per round: ``{"round", "samples", "loss", "lr"}`` (loss: mean squared error of
        the student's moves against the teacher's on the whole data set, action units).
    """

    rounds: int
    samples: int
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"rounds": self.rounds, "samples": self.samples, "wall_s": self.wall_s,
                "final_loss": self.history[-1]["loss"] if self.history else None,
                "teacher": "step to the ideal positions (the hidden errors, simulation only)"}


def _student_action(model: Any, obs: torch.Tensor) -> torch.Tensor:
    """The deterministic action of an SB3 model, differentiable in its parameters."""
    if isinstance(model, sb3.SAC):
        return model.actor(obs, deterministic=True)
    if isinstance(model, sb3.TD3):
        return model.actor(obs)
    return model.policy.get_distribution(obs).distribution.mean


def _parameters(model: Any) -> list[torch.nn.Parameter]:
    return list(model.actor.parameters()) if hasattr(model, "actor") else \
        list(model.policy.parameters())


def imitate(model: Any, env: Any, cfg: ImitationConfig, *, seed: int = 0,
            progress: bool = False) -> ImitationReport:
    """Fit *model*'s policy to the teacher's moves by DAgger.

    Parameters
    ----------
    model : stable_baselines3 PPO, SAC or TD3
        Its observation is :func:`~agents.rl.policy_input`.
    env : agents.rl.Sb3AlignVecEnv
        The beamlines to roll out in (its ``venv`` is the :class:`AlignVecEnv`).
    cfg : ImitationConfig
    seed : int
        Seeds the mixing of teacher and student and the teacher's noise.
    progress : bool
        A progress bar over the rounds on stderr.

    Returns
    -------
    ImitationReport
    """
    venv: AlignVecEnv = env.venv
    n = env.num_envs
    rollout = min(cfg.rollout, max(1, cfg.steps // n))
    rounds = max(1, cfg.steps // (n * rollout))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    params = _parameters(model)
    opt = torch.optim.Adam(params, lr=cfg.lr[0])
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=rounds, desc="imitate", unit="round", file=sys.stderr, leave=False)
    t0 = time.perf_counter()
    x = env.reset()
    for r in range(rounds):
        for _ in range(rollout):
            target = teacher_actions(venv)
            xs.append(x.copy())
            ys.append(target.astype(np.float32))
            if r == 0:
                a = target + cfg.first_noise * rng.standard_normal(target.shape)
            else:
                mine, _ = model.predict(x, deterministic=True)
                a = np.where(rng.random((n, 1)) < cfg.teacher_mix, target, mine)
            x, _, _, _ = env.step(np.clip(a, -1.0, 1.0))
        data_x = torch.as_tensor(np.concatenate(xs))
        data_y = torch.as_tensor(np.concatenate(ys))
        lr = cfg.lr[0] * (cfg.lr[1] / cfg.lr[0]) ** (r / max(1, rounds - 1))
        for g in opt.param_groups:
            g["lr"] = lr
        for _ in range(cfg.epochs * (3 if r == rounds - 1 else 1)):
            perm = torch.randperm(len(data_x), generator=gen)
            for b in range(0, len(data_x), cfg.batch_size):
                i = perm[b:b + cfg.batch_size]
                loss = ((_student_action(model, data_x[i]) - data_y[i]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            full = float(((_student_action(model, data_x) - data_y) ** 2).mean())
        history.append({"round": r, "samples": len(data_x), "loss": full, "lr": lr})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{full:.3f}")
    if bar is not None:
        bar.close()
    if hasattr(model, "actor_target"):  # TD3: its target actor starts where the actor is
        model.actor_target.load_state_dict(model.actor.state_dict())
    return ImitationReport(rounds, int(sum(len(v) for v in xs)), time.perf_counter() - t0,
                           history)
