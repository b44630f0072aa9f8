"""Reinforcement learning: train an alignment policy on the fast twin, deploy it as an agent.

:func:`train` trains a stable-baselines3 policy (PPO, SAC or TD3) on
:class:`~agents.env.AlignVecEnv`, many beamlines in one batched fast-twin call,
with a progress bar, periodic evaluation and checkpoints, optionally after imitation
of a teacher that knows the hidden errors (:mod:`agents.imitation`). It saves the policy
(``{stage}.zip``) with a metadata file beside it (``{stage}.json``: the stage and
its motors, the training configuration, seed, code and library versions,
training wall time and the final evaluation).

:class:`RLAgent` runs such a policy on an
:class:`~agents.problem.AlignmentProblem`, through the same safety layer and
with the same one-evaluation-per-step accounting as every other agent.
:class:`HybridAgent` takes a few learned steps, then refines (on a KB pair: bender
focus, then a simplex per plane).
Policies for every stage of the built-in beamline ship in ``agents/policies``.

The policy sees the environment's observation and how it changed since the
last step (``[obs_t, obs_t - obs_{t-1}]``; the change is zero after a reset):
the readings alone do not say which way a defocused spot must go, their change
after a move does.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import stable_baselines3 as sb3
import torch
from stable_baselines3.common.callbacks import (
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    ProgressBarCallback,
)
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from agents.beam_search import find_beam
from agents.bender_focus import focus_then_refine
from agents.env import (
    OBS_BOUND,
    OBS_FEATURES,
    AlignConfig,
    AlignVecEnv,
    downsample,
    imager_features,
    observation_vector,
)
from agents.focus_model import downstream_imager
from agents.imitation import ImitationConfig, imitate
from agents.problem import AlignmentProblem, Evaluation
from agents.stages import Stage
from agents.stages import stage as stage_of
from twin import __version__
from twin.errors import ConfigError
from twin.presets import load_preset

__all__ = ["ALGORITHMS", "TrainConfig", "TrainReport", "Sb3AlignVecEnv", "policy_input",
           "train", "evaluate_policy_success", "Policy", "load_policy", "shipped_policy",
           "RLAgent", "HybridAgent"]

Algorithm = Literal["ppo", "sac", "td3"]
#: the stable-baselines3 class of each algorithm
_ALGORITHM_CLASSES = {"ppo": sb3.PPO, "sac": sb3.SAC, "td3": sb3.TD3}
#: algorithms :func:`train` offers
ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHM_CLASSES)
#: version of the metadata written beside a policy
METADATA_FORMAT = 1
#: measured figure of merit at which the learned agents stop
RL_STOP_FOM = 0.95


def policy_input(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """What the policy sees: ``[obs_t, obs_t - obs_{t-1}]`` (float32, last axis)."""
    cur = np.asarray(current, dtype=np.float32)
    return np.concatenate([cur, cur - np.asarray(previous, dtype=np.float32)], axis=-1)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train a policy.

    Parameters
    ----------
    stage : str
        Alignment stage (``m1``, ``mono``, ``slits``, ``kb``, ``sample``, ``full``).
    algo : {"ppo", "sac", "td3"}
    timesteps : int
        Environment steps to train for (summed over the parallel beamlines).
    num_envs : int
        Beamlines traced in one batch.
    rays : int
        Rays per beamline state (the fast twin's).
    seed : int
        Seeds the learner and the environments.
    preset : str, optional
        Beamline TOML (default: the built-in beamline).
    max_steps : int
        Steps per episode.
    max_step : float
        Largest move per step, fraction of each motor's search half-width.
    misalign : (float, float)
        Range the hidden-error scale is drawn from per episode.
    p_source : float
        Probability of a source that is not the design's (domain randomisation).
    energies_eV : tuple of float
        Photon energies drawn per episode (empty: the design energy).
    image_pixels : int
        Side of the downsampled detector image the policy also sees (0: none).
    imager : bool
        The policy also sees the beam's centroid at the detector behind the judge
        (:class:`~agents.env.AlignConfig`).
    net_arch : tuple of int
        Hidden layers of the policy and value networks.
    eval_every : int
        Timesteps between evaluations (0: none during training).
    eval_episodes : int
        Episodes per evaluation.
    checkpoint_every : int
        Timesteps between checkpoints (0: none).
    threads : int
        torch threads (one suits small networks on a 2-core machine).
    p_imager_error : float
        Probability that an episode's imager carries its own day-one offset
        (:class:`~agents.env.AlignConfig`).
    imitation_steps : int
        Environment steps of imitation before the RL algorithm (0: none): DAgger from a
        teacher that knows the hidden errors (:mod:`agents.imitation`). With imitation,
        ``timesteps`` may be 0 (no RL fine-tuning).
    """

    stage: str = "kb"
    algo: Algorithm = "ppo"
    timesteps: int = 200_000
    num_envs: int = 16
    rays: int = 300
    seed: int = 0
    preset: str | None = None
    max_steps: int = 25
    max_step: float = 0.2
    misalign: tuple[float, float] = (0.5, 1.5)
    p_source: float = 0.5
    energies_eV: tuple[float, ...] = ()
    image_pixels: int = 0
    imager: bool = False
    net_arch: tuple[int, ...] = (64, 64)
    eval_every: int = 50_000
    eval_episodes: int = 64
    checkpoint_every: int = 100_000
    threads: int = 1
    imitation_steps: int = 0
    p_imager_error: float = 0.0

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"algo must be one of {', '.join(ALGORITHMS)}, got {self.algo!r}")
        for name in ("imitation_steps", "timesteps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        if self.timesteps + self.imitation_steps == 0:
            raise ConfigError("nothing to train: timesteps and imitation_steps are both 0")
        for name in ("num_envs", "rays", "max_steps", "eval_episodes", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("eval_every", "checkpoint_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        if not self.net_arch or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                    for n in self.net_arch):
            raise ConfigError(f"net_arch must be layer widths >= 1, got {self.net_arch!r}")
        self.env_config()  # validates the environment's share

    def env_config(self) -> AlignConfig:
        """The environment these settings train in."""
        return AlignConfig(stage=self.stage, preset=self.preset, backend="fast", rays=self.rays,
                           max_step=self.max_step, misalign=tuple(self.misalign),
                           p_source=self.p_source, energies_eV=tuple(self.energies_eV),
                           image_pixels=self.image_pixels, imager=self.imager,
                           p_imager_error=self.p_imager_error,
                           max_steps=self.max_steps)


class Sb3AlignVecEnv(VecEnv):
    """An :class:`~agents.env.AlignVecEnv` as a stable-baselines3 ``VecEnv``.

    Episodes that end are reset in the same step (SB3's convention; the final
    observation is in ``info["terminal_observation"]``, and ``is_success`` and
    ``TimeLimit.truncated`` are set). Observations are :func:`policy_input`.

    Parameters
    ----------
    venv : AlignVecEnv
    seed : int
        Seeds the first :meth:`reset`; each later reset takes the next seed.
    """

    def __init__(self, venv: AlignVecEnv, seed: int = 0) -> None:
        n = venv.single_observation_space.shape[0]
        space = gym.spaces.Box(-2 * OBS_BOUND, 2 * OBS_BOUND, (2 * n,), dtype=np.float32)
        super().__init__(venv.num_envs, space, venv.single_action_space)
        self.venv = venv
        self._seed = seed
        self._prev = np.zeros((venv.num_envs, n), dtype=np.float32)
        self._actions = np.zeros((venv.num_envs,) + venv.single_action_space.shape)

    def reset(self) -> np.ndarray:
        """New beamlines in every sub-environment."""
        obs, _ = self.venv.reset(seed=self._seed)
        self._seed += 1
        self._prev = obs
        return policy_input(obs, obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Step every beamline; reset those that ended."""
        obs, reward, term, trunc, _ = self.venv.step(self._actions)
        done = term | trunc
        x = policy_input(self._prev, obs)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(done):
            infos[i] = {"terminal_observation": x[i].copy(), "is_success": bool(term[i]),
                        "TimeLimit.truncated": bool(trunc[i] and not term[i])}
        if done.any():
            fresh = self.venv.reset_done(done)
            obs = obs.copy()
            obs[done] = fresh
            x[done] = policy_input(fresh, fresh)
        self._prev = obs
        return x, reward.astype(np.float32), done, infos

    def close(self) -> None:
        """Nothing to release."""

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """An attribute of the batched environment, once per index."""
        value = None if attr_name == "render_mode" else getattr(self.venv, attr_name)
        return [value] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the batched environment (shared by every index)."""
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None,
                   **kwargs: Any) -> list[Any]:
        """Call a method of the batched environment once."""
        out = getattr(self.venv, method_name)(*args, **kwargs)
        return [out] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """No Gymnasium wrappers: the batch is one environment."""
        return [False] * len(self._get_indices(indices))


@dataclass
class TrainReport:
    """What :func:`train` produced.

    Attributes
    ----------
    policy : Path
        The saved policy (``.zip``).
    metadata : dict
        What was written beside it (``.json``).
    wall_s : float
        Training wall time, s (evaluations during training included).
    """

    policy: Path
    metadata: dict[str, Any]
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """The ``beamtwin train --json`` document."""
        m = self.metadata
        return {"stage": m["stage"], "algo": m["algo"], "timesteps": m["timesteps"],
                "seed": m["seed"], "wall_s": self.wall_s, "policy": str(self.policy.resolve()),
                "metadata": str(self.policy.with_suffix(".json").resolve()),
                "eval": m["eval"], "checkpoints": m.get("checkpoints"),
                "imitation": m.get("imitation")}


def _code_version() -> dict[str, Any]:
    """beamtwin, library versions and (in a git checkout) the commit."""
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"beamtwin": __version__, "git_commit": commit,
            "stable_baselines3": sb3.__version__, "torch": torch.__version__,
            "gymnasium": gym.__version__}


def _algo_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    policy_kwargs: dict[str, Any] = {"net_arch": list(cfg.net_arch)}
    if cfg.algo == "ppo":
        # exploration noise well inside a step: alignment needs small, precise moves
        policy_kwargs["log_std_init"] = -1.0
        return {"n_steps": max(32, 1024 // cfg.num_envs), "batch_size": 256, "n_epochs": 5,
                "gamma": 0.95, "learning_rate": 3e-4, "ent_coef": 0.0,
                "policy_kwargs": policy_kwargs}
    return {"buffer_size": 200_000, "learning_starts": 1000, "batch_size": 256,
            "gamma": 0.95, "train_freq": 1, "gradient_steps": 1,
            "policy_kwargs": policy_kwargs}


def evaluate_policy_success(model: Any, cfg: TrainConfig, *, episodes: int,
                            seed: int) -> dict[str, Any]:
    """Run *model* deterministically on fresh beamlines of the fast twin.

    Returns ``{"episodes", "success_rate", "median_steps", "p90_steps",
    "mean_final_fom"}``: an episode succeeds when it terminates (figure of merit held
    at the aligned level); a failed one counts its whole step limit.
    """
    n = min(episodes, 32)
    venv = Sb3AlignVecEnv(AlignVecEnv(n, cfg.env_config()), seed)
    x = venv.reset()
    steps = np.zeros(n, dtype=int)
    results: list[tuple[bool, int, float]] = []
    while len(results) < episodes:
        a, _ = model.predict(x, deterministic=True)
        x, _, done, infos = venv.step(a)
        steps += 1
        for i in np.flatnonzero(done):
            if len(results) < episodes:
                ok = infos[i]["is_success"]
                fom = float(infos[i]["terminal_observation"][OBS_FEATURES.index("fom")])
                results.append((ok, int(steps[i]) if ok else cfg.max_steps, fom))
            steps[i] = 0
    counted = np.array([r[1] for r in results])
    return {"episodes": episodes, "success_rate": float(np.mean([r[0] for r in results])),
            "median_steps": float(np.median(counted)),
            "p90_steps": float(np.percentile(counted, 90)),
            "mean_final_fom": float(np.mean([r[2] for r in results]))}


def train(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> TrainReport:
    """Train a policy for one stage on the fast twin and save it under *out_dir*.

    With ``cfg.imitation_steps``, the policy first imitates the teacher that knows the
    hidden errors (:func:`agents.imitation.imitate`), then takes ``cfg.timesteps`` steps
    of the RL algorithm (none when 0).

    Writes ``{stage}.zip`` (the SB3 model), ``{stage}.json`` (metadata),
    ``checkpoints/`` and ``eval/`` (SB3's evaluation log).

    Raises
    ------
    ConfigError
        For bad settings (nothing is trained).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        env = VecMonitor(Sb3AlignVecEnv(AlignVecEnv(cfg.num_envs, cfg.env_config()), cfg.seed))
        algo = _ALGORITHM_CLASSES[cfg.algo]
        model = algo("MlpPolicy", env, seed=cfg.seed, device="cpu", verbose=0,
                     **_algo_kwargs(cfg))
        callbacks: list[Any] = []
        if cfg.checkpoint_every:
            callbacks.append(CheckpointCallback(
                save_freq=max(1, cfg.checkpoint_every // cfg.num_envs),
                save_path=str(out / "checkpoints"), name_prefix=cfg.stage))
        if cfg.eval_every and cfg.timesteps:  # SB3's evaluations run during RL steps
            eval_env = VecMonitor(Sb3AlignVecEnv(
                AlignVecEnv(min(cfg.num_envs, 16), cfg.env_config()), cfg.seed + 100_000))
            callbacks.append(EvalCallback(eval_env, n_eval_episodes=cfg.eval_episodes,
                                          eval_freq=max(1, cfg.eval_every // cfg.num_envs),
                                          log_path=str(out / "eval"), deterministic=True,
                                          verbose=0))
        if progress:
            callbacks.append(ProgressBarCallback())
        t0 = time.perf_counter()
        imitation = None
        if cfg.imitation_steps:
            teach_env = Sb3AlignVecEnv(AlignVecEnv(cfg.num_envs, cfg.env_config()),
                                       cfg.seed + 300_000)
            imitation = imitate(model, teach_env, ImitationConfig(steps=cfg.imitation_steps),
                                seed=cfg.seed, progress=progress).to_dict()
        if cfg.timesteps:
            model.learn(total_timesteps=cfg.timesteps, callback=CallbackList(callbacks))
        wall = time.perf_counter() - t0
        evaluation = evaluate_policy_success(model, cfg, episodes=cfg.eval_episodes,
                                             seed=cfg.seed + 200_000)
    finally:
        torch.set_num_threads(threads)
    path = out / f"{cfg.stage}.zip"
    model.save(str(path))
    desc = load_preset(cfg.preset)
    meta = {"format": METADATA_FORMAT, "stage": cfg.stage,
            "motors": list(stage_of(desc, cfg.stage).motors), "beamline": desc.name,
            "algo": cfg.algo, "observation": list(OBS_FEATURES) + [
                f"pointing({d}.{q})" for d, q in stage_of(desc, cfg.stage).pointing_terms] + (
                ["imager(centroid_x)", "imager(centroid_y)"] if cfg.imager else []) + [
                "u(motor)..."] + (
                [f"detector image {cfg.image_pixels}x{cfg.image_pixels}"]
                if cfg.image_pixels else []),
            "policy_input": "[obs_t, obs_t - obs_{t-1}]", "max_step": cfg.max_step,
            "max_steps": cfg.max_steps, "timesteps": cfg.timesteps, "seed": cfg.seed,
            "config": dataclasses.asdict(cfg), "versions": _code_version(),
            "train_wall_s": wall, "imitation": imitation, "eval": evaluation,
            "checkpoints": str((out / "checkpoints").resolve())
            if cfg.checkpoint_every and cfg.timesteps else None}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
    return TrainReport(path, meta, wall)


@dataclass
class Policy:
    """A trained policy and its metadata.

    Attributes
    ----------
    model : stable_baselines3 model
    metadata : dict
    path : Path
    """

    model: Any
    metadata: dict[str, Any]
    path: Path

    @property
    def max_step(self) -> float:
        """Largest move per step it was trained with (fraction of the half-width)."""
        return float(self.metadata["max_step"])

    def act(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        """The deterministic action for two successive observations, in [-1, 1]."""
        a, _ = self.model.predict(policy_input(previous, current), deterministic=True)
        return np.clip(np.asarray(a, dtype=float).reshape(-1), -1.0, 1.0)


def shipped_policy(stage_name: str) -> Path:
    """The policy shipped for *stage_name* of the built-in beamline.

    Raises
    ------
    ConfigError
        If none ships for that stage.
    """
    root = resources.files("agents").joinpath("policies")
    p = Path(str(root.joinpath(f"{stage_name}.zip")))
    if not p.is_file():
        have = sorted(q.stem for q in Path(str(root)).glob("*.zip")) if Path(
            str(root)).is_dir() else []
        raise ConfigError(f"no shipped policy for stage {stage_name!r} (shipped: "
                          f"{', '.join(have) or 'none'}); train one with "
                          f"`beamtwin train --stage {stage_name}`")
    return p


def load_policy(path: str | Path) -> Policy:
    """Load a policy saved by :func:`train` (the ``.zip``, metadata beside it).

    Raises
    ------
    ConfigError
        If the file or its metadata is missing or not a beamtwin policy.
    """
    p = Path(path)
    meta_path = p.with_suffix(".json")
    if not p.is_file():
        raise ConfigError(f"policy file {str(p)!r} does not exist")
    if not meta_path.is_file():
        raise ConfigError(f"policy {str(p)!r} has no metadata file {meta_path.name!r} beside it")
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read policy metadata {str(meta_path)!r}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT or \
            meta.get("algo") not in ALGORITHMS:
        raise ConfigError(f"{str(meta_path)!r} is not beamtwin policy metadata (format "
                          f"{METADATA_FORMAT}, algo one of {', '.join(ALGORITHMS)})")
    algo = _ALGORITHM_CLASSES[meta["algo"]]
    model = algo.load(str(p), device="cpu")
    return Policy(model, meta, p)


@dataclass
class RLAgent:
    """A trained policy as an alignment agent: one evaluation per step.

    Parameters
    ----------
    policy : str or Path, optional
        A policy saved by :func:`train` (default: the one shipped for the stage).
    max_steps : int
        Steps before it stops (the step limit it was trained with, by default).
    stop_fom : float
        Measured figure of merit at which it stops (a margin above the 0.9 that
        counts as aligned: measurements are noisy).
    """

    policy: str | Path | None = None
    max_steps: int | None = None
    stop_fom: float = RL_STOP_FOM
    name: str = "rl"
    _loaded: dict[str, Policy] = field(default_factory=dict, repr=False)

    def policy_for(self, st: Stage) -> Policy:
        """The policy for stage *st*, checked against its motors.

        Raises
        ------
        ConfigError
            If there is no policy for the stage, or it was trained for other motors.
        """
        path = Path(self.policy) if self.policy is not None else shipped_policy(st.name)
        key = str(path)
        if key not in self._loaded:
            self._loaded[key] = load_policy(path)
        pol = self._loaded[key]
        if pol.metadata["motors"] != list(st.motors):
            raise ConfigError(f"policy {path.name!r} was trained for motors "
                              f"{pol.metadata['motors']}, stage {st.name!r} has "
                              f"{list(st.motors)}; train one for this beamline with "
                              f"`beamtwin train --stage {st.name} --preset FILE`")
        n = int(pol.metadata["config"].get("image_pixels", 0))
        imager = bool(pol.metadata["config"].get("imager", False))
        # [obs_t, obs_t - obs_t-1]
        expected = 2 * AlignConfig(image_pixels=n, imager=imager).obs_length(st)
        got = int(np.prod(pol.model.observation_space.shape))
        if got != expected:
            raise ConfigError(f"policy {path.name!r} observes {got} features, stage "
                              f"{st.name!r} gives {expected} (pointing at "
                              f"{list(st.pointing) or 'nothing'}); retrain it with "
                              f"`beamtwin train --stage {st.name}`")
        return pol

    def check(self, st: Stage) -> None:
        """Refuse a stage it has no usable policy for, before anything moves."""
        self.policy_for(st)

    def drive(self, problem: AlignmentProblem, steps: int | None = None,
              patience: int | None = None, start: Evaluation | None = None) -> Evaluation:
        """Take up to *steps* policy steps; returns the best evaluation seen.

        With *patience*, stop once that many steps in a row have not improved on the
        best figure of merit (the policy has stalled). The policy starts from *start*
        (default: a reading where the trial starts).
        """
        pol = self.policy_for(problem.stage)
        limit = steps if steps is not None else (self.max_steps or
                                                 int(pol.metadata["max_steps"]))
        ref = problem.objective.reference
        diag = problem.stage.diagnostic
        n = int(pol.metadata["config"].get("image_pixels", 0))
        imager = None
        if pol.metadata["config"].get("imager", False):
            desc = getattr(problem.safe.inner, "desc", None)
            imager = downstream_imager(desc, diag) if desc is not None else None
            if imager is None or imager not in problem.objective.landmarks:
                raise ConfigError(f"policy {pol.path.name!r} observes the detector behind "
                                  f"{diag!r} against the ideal beam's reading there; this "
                                  f"beamline or objective has none")

        def observe(e: Evaluation) -> np.ndarray:
            image = downsample(e.observation.detector.image, n) if n else None
            far = imager_features(e.observation.reading(imager).stats,
                                  problem.objective.landmarks[imager]) if imager else None
            return observation_vector(e.judgement, e.observation.reading(diag).stats, ref, e.u,
                                      image, problem.stage.pointing_um, far)

        ev = start if start is not None else problem.observe_start()
        best = ev
        cur = observe(ev)
        prev = cur
        def aligned(e: Evaluation) -> bool:
            return e.judgement.looks_aligned(self.stop_fom, problem.stage.goal)

        idle = 0
        for _ in range(limit):
            if aligned(best) or problem.remaining <= 1:
                break
            if patience is not None and idle >= patience:
                break
            a = pol.act(prev, cur)
            ev = problem.evaluate(np.clip(ev.u + pol.max_step * a, -1.0, 1.0))
            if aligned(ev) or ev.fom > best.fom:
                best, idle = ev, 0
            else:
                idle += 1
            prev, cur = cur, observe(ev)
        return best

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point (the best the policy reached)."""
        return self.drive(problem).u.copy()


@dataclass
class HybridAgent:
    """A few learned steps to get close, then a simplex to finish.

    Learned policies get near the optimum quickly but not always onto it;
    classical refinement finishes reliably from close by: Nelder-Mead, or on a
    stage of bendable mirrors focusing in both planes the bender focus and then
    one simplex per plane (:func:`~agents.bender_focus.focus_then_refine`). A beam
    that misses the judge at the start is found first
    (:func:`~agents.beam_search.find_beam`).

    Parameters
    ----------
    policy : str or Path, optional
        As for :class:`RLAgent`.
    rl_steps : int
        Policy steps before refining, at most.
    rl_patience : int
        Hand over to the refinement once this many policy steps in a row have not
        improved the beam (the policy has stalled).
    initial_step : float
        Simplex size of the refinement, agent units.
    stop_fom : float
    """

    policy: str | Path | None = None
    rl_steps: int = 8
    rl_patience: int = 2
    initial_step: float = 0.1
    stop_fom: float = RL_STOP_FOM
    name: str = "hybrid"

    def __post_init__(self) -> None:
        self._rl = RLAgent(self.policy, stop_fom=self.stop_fom)  # loads each policy once

    def check(self, st: Stage) -> None:
        """Refuse a stage it has no usable policy for, before anything moves."""
        self._rl.check(st)

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point."""
        desc = getattr(problem.safe.inner, "desc", None)
        start = find_beam(problem, problem.observe_start(), desc)
        best = self._rl.drive(problem, self.rl_steps, patience=self.rl_patience, start=start)
        if best.judgement.looks_aligned(self.stop_fom, problem.stage.goal) or \
                problem.remaining <= 1:
            return best.u.copy()
        return focus_then_refine(problem, best, desc, stop_fom=self.stop_fom,
                                 initial_step=self.initial_step)

