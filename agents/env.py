"""Gymnasium environments for learning to align: ``beamtwin/Align-v0``.

:class:`AlignEnv` is one simulated beamline (:class:`~twin.simulator.TwinBeamline`
on the fast twin or on xrt) behind an :class:`~agents.problem.AlignmentProblem`,
so every step goes through the safety layer exactly as a deployed agent's would.
:class:`AlignVecEnv` steps many beamlines at once in one batched call of the
fast twin, for training.

Spaces and signals (both environments)
--------------------------------------
action
    ``Box(-1, 1, (d,))``: a relative move of each stage motor, as a fraction of
    ``max_step`` times the half-width of its search box (a bounded relative
    move, capped well inside the safety layer's step cap).
observation
    ``Box(-20, 20, (7 + p + d,))``, float32: what the stage's diagnostic reads,
    normalised (flux relative to the reference, centroid offset ``c`` in units
    of the reference FWHM as ``sign(c) log(1 + |c|)``, log FWHM ratios, the
    figure of merit, whether any beam is seen), the ``p`` pointing offsets of a
    stage pointed at a far diagnostic (each in units of ``Stage.pointing_um``, as
    the same signed log; ``p = 0`` for most stages, 1 for ``m1``, 2 for ``mono``)
    and the motors' positions in the search box (``u``, from the encoders). With
    ``image_pixels = n`` an ``n x n`` downsampled image of the area detector
    follows, each pixel's flux relative to the reference flux at the stage's
    diagnostic: ``Box(-20, 20, (7 + p + d + n^2,))``.
reward
    progress of the figure of merit, ``log(fom_t + 1e-6) - log(fom_{t-1} + 1e-6)``.
terminated
    the figure of merit stayed at or above ``stop_fom`` for ``success_steps`` steps.
truncated
    the step limit (``max_episode_steps``, a TimeLimit wrapper).

Domain randomisation per episode, from the environment's own random generator:
hidden-error scale drawn from ``misalign`` (a float or a ``(low, high)`` range);
noise and motor imperfections (backlash) switched on with probabilities
``p_noise`` and ``p_backlash``; with probability ``p_source`` a source that is
not the design's (position, pointing and size drawn with the preset's
gap-dependence amplitudes times ``source_scale``, :func:`twin.disturbances.draw_source`);
and a photon energy drawn from ``energies_eV`` (the beamline re-tuned there by
:func:`twin.presets.at_energy`, its ideal beam the reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.objective import Judgement, Objective
from agents.problem import AlignmentProblem, default_span
from agents.safety import SafetyConfig
from agents.stages import POINTING_UM, Stage, stage
from twin.description import BeamlineDescription
from twin.disturbances import SourcePerturbation, draw_source
from twin.errors import ConfigError, NonFiniteError
from twin.hidden import HiddenErrors
from twin.observation import STAT_KEYS, BeamStats
from twin.presets import at_energy, load_preset
from twin.simulator import TwinBeamline
from twin.tracer import Twin

__all__ = ["AlignConfig", "Episode", "AlignEnv", "AlignVecEnv", "observation_vector", "downsample",
           "imager_features", "OBS_FEATURES"]

#: readings features before the motor coordinates
OBS_FEATURES = ("flux_ratio", "centroid_x", "centroid_y", "log_fwhm_x", "log_fwhm_y", "fom",
                "beam_seen")
#: floor of the figure of merit in the reward: far below any start (a sample 10 um off the
#: beam has a figure of 7e-4), so progress from there is still rewarded
_EPS = 1e-6
#: every feature is clipped inside this bound
OBS_BOUND = 20.0
#: unit of the imager's centroid features, um (its photon noise at 5,000 rays: 3-8 um)
IMAGER_UM = 10.0
#: rms noise of the imager's centroid in the vector environment, um (measured on the
#: default detector at 5,000 rays, docs/agents.md)
IMAGER_NOISE_UM = 5.0


@dataclass(frozen=True)
class Episode:
    """The randomised conditions of one episode.

    Attributes
    ----------
    misalign : float
        Hidden-error scale.
    seed : int
        Seeds the hidden errors, rays and noise.
    noise, backlash : bool
    source : SourcePerturbation or None
        The source's difference from the design (None: the design source).
    energy : int
        Index into ``AlignConfig.energies_eV`` (0 with none).
    imager_error : bool
        The imager behind the judge carries its own hidden offset (day-one error).
    """

    misalign: float
    seed: int
    noise: bool
    backlash: bool
    source: SourcePerturbation | None
    energy: int
    imager_error: bool = False


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    """Settings of an alignment environment.

    Parameters
    ----------
    stage : str
        ``m1``, ``mono``, ``slits``, ``kb``, ``sample`` or ``full``.
    preset : str, optional
        Beamline TOML (default: the built-in beamline).
    backend : str
        ``fast`` (default) or ``xrt`` (for validation).
    rays : int
    max_step : float
        Largest move per step, as a fraction of each motor's search half-width.
    misalign : float or (float, float)
        Hidden-error scale, or the range it is drawn from per episode.
    p_noise, p_backlash : float
        Probability that an episode has detector noise / motor backlash.
    p_source : float
        Probability that an episode's source differs from the design.
    source_scale : float
        Size of that difference, in units of the preset's gap-dependence amplitudes.
    energies_eV : tuple of float
        Photon energies an episode is drawn from, eV (empty: the design energy).
    image_pixels : int
        Side of the downsampled detector image in the observation (0: none).
    imager : bool
        Also observe the beam's centroid at the imaging diagnostic behind the judge
        (the detector behind the sample), as its offset from where the ideal beam sits
        there: with the judge's own centroid it gives a KB mirror's pitch and height in
        one reading (docs/agents.md, the twin's levers). Two features, signed log of
        :data:`IMAGER_UM` units.
    p_imager_error : float
        Probability that an episode's imager carries its own day-one offset (its motors'
        hidden errors), as in a one-click run, where the detector is not where the ideal
        beam sat on it.
    stop_fom : float
        Figure of merit that counts as aligned.
    success_steps : int
        Steps the figure of merit must stay aligned for ``terminated``.
    span_sigmas : float, optional
        Search-box half-width in units of each motor's typical misalignment
        (default: each stage's own).
    max_steps : int
        Steps per episode (``truncated`` after them).
    """

    stage: str = "kb"
    preset: str | None = None
    backend: str = "fast"
    rays: int = 1000
    max_step: float = 0.2
    misalign: float | tuple[float, float] = (0.5, 1.5)
    p_noise: float = 1.0
    p_backlash: float = 0.5
    p_source: float = 0.0
    source_scale: float = 1.0
    energies_eV: tuple[float, ...] = ()
    image_pixels: int = 0
    imager: bool = False
    p_imager_error: float = 0.0
    stop_fom: float = 0.9
    success_steps: int = 2
    span_sigmas: float | None = None
    max_steps: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.imager, bool):
            raise ConfigError(f"imager must be true or false, got {self.imager!r}")
        if not (0 < self.max_step <= 1):
            raise ConfigError(f"max_step must be within (0, 1], got {self.max_step!r}")
        lo, hi = self.misalign_range
        if not (0 <= lo <= hi and math.isfinite(hi)):
            raise ConfigError(f"misalign must be >= 0 (or a range low <= high), got "
                              f"{self.misalign!r}")
        for name in ("p_noise", "p_backlash", "p_source", "p_imager_error"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {p!r}")
        if not (math.isfinite(self.source_scale) and self.source_scale >= 0):
            raise ConfigError(f"source_scale must be a finite number >= 0, got "
                              f"{self.source_scale!r}")
        if any(isinstance(e, bool) or not isinstance(e, (int, float)) or not
               (math.isfinite(e) and e > 0) for e in self.energies_eV):
            raise ConfigError(f"energies_eV must be finite energies > 0 (eV), got "
                              f"{self.energies_eV!r}")
        if isinstance(self.image_pixels, bool) or not isinstance(self.image_pixels, int) or \
                self.image_pixels < 0 or self.image_pixels == 1 or self.image_pixels > 64:
            raise ConfigError(f"image_pixels must be 0 (no image) or an integer in [2, 64], got "
                              f"{self.image_pixels!r}")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps!r}")
        if self.success_steps < 1:
            raise ConfigError(f"success_steps must be >= 1, got {self.success_steps!r}")

    def descriptions(self) -> list[BeamlineDescription]:
        """The beamline at each energy an episode may draw (the design energy if none)."""
        desc = load_preset(self.preset)
        return [at_energy(desc, e) for e in self.energies_eV] or [desc]

    def draw_episode(self, desc: BeamlineDescription, rng: np.random.Generator) -> Episode:
        """The randomised conditions of one episode, drawn from *rng*."""
        lo, hi = self.misalign_range
        scale = float(rng.uniform(lo, hi))
        seed = int(rng.integers(0, 2**31 - 1))
        noise = bool(rng.random() < self.p_noise)
        backlash = bool(rng.random() < self.p_backlash)
        source = draw_source(desc, rng, self.source_scale) \
            if self.p_source > 0 and rng.random() < self.p_source else None
        variant = int(rng.integers(len(self.energies_eV))) if len(self.energies_eV) > 1 else 0
        imager_error = bool(self.p_imager_error > 0 and rng.random() < self.p_imager_error)
        return Episode(scale, seed, noise, backlash, source, variant, imager_error)

    def obs_length(self, st: Stage) -> int:
        """Length of the observation for stage *st*."""
        return len(OBS_FEATURES) + len(st.pointing_terms) + 2 * self.imager + st.dof + \
            self.image_pixels ** 2

    @property
    def misalign_range(self) -> tuple[float, float]:
        """(low, high) of the hidden-error scale."""
        m = self.misalign
        return (float(m), float(m)) if isinstance(m, (int, float)) else (float(m[0]),
                                                                         float(m[1]))


def downsample(image: np.ndarray, n: int) -> np.ndarray:
    """Sum an image into ``n x n`` blocks (edges as even as the pixels allow)."""
    ny, nx = image.shape
    ey = np.linspace(0, ny, n + 1).astype(int)[:-1]
    ex = np.linspace(0, nx, n + 1).astype(int)[:-1]
    return np.add.reduceat(np.add.reduceat(image, ey, axis=0), ex, axis=1)


def imager_features(s: BeamStats, ref: BeamStats) -> list[float]:
    """The imager's centroid offsets from the reference, signed log of
    :data:`IMAGER_UM` units (0 where it sees no beam)."""
    out = []
    for v, r in ((s.centroid_x_um, ref.centroid_x_um), (s.centroid_y_um, ref.centroid_y_um)):
        if not (s.flux > 0 and math.isfinite(v) and math.isfinite(r)):
            out.append(0.0)
            continue
        out.append(_signed_log((v - r) / IMAGER_UM))
    return out


def _signed_log(q: float) -> float:
    """``sign(q) log(1 + |q|)``, clipped to the observation bound: resolves a fraction of
    its unit and still tells 10 from 1,000."""
    return float(np.clip(math.copysign(math.log1p(abs(q)), q), -OBS_BOUND, OBS_BOUND))


def observation_vector(j: Judgement, s: BeamStats, ref: BeamStats, u: np.ndarray,
                       image: np.ndarray | None = None,
                       pointing_um: float = POINTING_UM,
                       imager: Sequence[float] | None = None) -> np.ndarray:
    """The observation of the module docstring, float32.

    The pointing offsets come from ``j.pointing_um``, in units of *pointing_um*.
    *imager*, optional, are the :func:`imager_features`, after the pointing offsets.
    *image*, optional, is the downsampled detector image (photons/s per block); it
    is divided by the reference flux and appended after the motor coordinates.
    """
    seen = s.flux > 0
    w = 0.5 * (ref.fwhm_x_um + ref.fwhm_y_um) if math.isfinite(ref.fwhm_x_um) else 1.0

    def cen(v: float, r: float) -> float:
        if not (math.isfinite(v) and math.isfinite(r)):
            return 0.0
        return _signed_log((v - r) / w)

    def lw(v: float, r: float) -> float:
        return float(np.clip(math.log(v / r), -5, 5)) if (math.isfinite(v) and v > 0
                                                           and r > 0) else 5.0

    feats = [min(j.flux_ratio, 5.0), cen(s.centroid_x_um, ref.centroid_x_um),
             cen(s.centroid_y_um, ref.centroid_y_um), lw(s.fwhm_x_um, ref.fwhm_x_um),
             lw(s.fwhm_y_um, ref.fwhm_y_um), min(j.fom, 5.0), float(bool(seen))]
    for p in j.pointing_um:  # no beam there: as far off as the feature can say
        q = p / pointing_um if math.isfinite(p) else OBS_BOUND * 1e9
        feats.append(_signed_log(q))
    if imager is not None:
        feats.extend(imager)
    parts = [np.asarray(feats, dtype=np.float32), np.asarray(u, dtype=np.float32)]
    if image is not None:
        scaled = np.asarray(image, dtype=float).ravel() / (ref.flux if ref.flux > 0 else 1.0)
        parts.append(np.clip(scaled, 0.0, OBS_BOUND).astype(np.float32))
    return np.concatenate(parts)


def _row(out: dict[str, np.ndarray], r: int) -> BeamStats:
    """Row *r* of one diagnostic's batched readings (the fast twin's ``to_numpy``)."""
    return BeamStats(**{q: float(out[q][r]) if q in out else math.nan for q in STAT_KEYS})


def _imager_of(cfg: AlignConfig, desc: BeamlineDescription, st: Stage) -> str | None:
    """The imaging diagnostic behind the stage's judge when the config observes it."""
    if not cfg.imager:
        return None
    from agents.focus_model import downstream_imager

    name = downstream_imager(desc, st.diagnostic)
    if name is None:
        raise ConfigError(f"imager: stage {st.name!r} has no screen or detector after its "
                          f"diagnostic {st.diagnostic!r}")
    return name


def _imager_motors(desc: BeamlineDescription, imager: str | None) -> list[str]:
    """The motors that move the imager (none without one)."""
    return [m for m in desc.motors if imager is not None and m.startswith(f"{imager}.")]


def _reward(fom_new: float, fom_old: float) -> float:
    return float(math.log(fom_new + _EPS) - math.log(fom_old + _EPS))


class AlignEnv(gym.Env):
    """One simulated beamline to align (see the module docstring).

    Parameters
    ----------
    config : AlignConfig, optional
    **overrides
        Fields of :class:`AlignConfig` (``gym.make("beamtwin/Align-v0", stage="mono")``).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: AlignConfig | None = None, **overrides: Any) -> None:
        cfg = replace(config or AlignConfig(), **overrides)
        self.config = cfg
        self._descs = cfg.descriptions()
        self.desc: BeamlineDescription = self._descs[0]
        self.stage: Stage = stage(self.desc, cfg.stage)
        self._imager = _imager_of(cfg, self.desc, self.stage)
        self._twins: dict[int, Twin] = {}
        self._ref_true, self._ref_noisy = self._references(self._variant(0), 0)
        self._span = default_span(self.desc, self.stage, cfg.span_sigmas)
        d = self.stage.dof
        self.action_space = gym.spaces.Box(-1.0, 1.0, (d,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND,
                                                (cfg.obs_length(self.stage),), dtype=np.float32)
        self.problem: AlignmentProblem | None = None
        self.beamline: TwinBeamline | None = None
        self._u = np.zeros(d)
        self._fom = 0.0
        self._aligned = 0
        self._ref = self._ref_true

    def _variant(self, k: int) -> Twin:
        """The twin of energy *k*, built once."""
        if k not in self._twins:
            self._twins[k] = Twin(self._descs[k], backend=self.config.backend,
                                  rays=self.config.rays)
        return self._twins[k]

    def _references(self, twin: Twin, seed: int) -> tuple[dict[str, BeamStats],
                                                           dict[str, BeamStats]]:
        """The ideal beamline's readings of the stage's diagnostics (true, as measured)
        with the episode's rays: the ray sample alone moves the ideal flux by up to 10 %
        (see agents.harness.References)."""
        true, noisy = twin.trace({}, seed=seed), twin.trace({}, seed=seed, noise=True)
        names = self.stage.diagnostics + ((self._imager,) if self._imager else ())
        return ({d: true.reading(d).stats for d in names},
                {d: noisy.reading(d).stats for d in names})

    def _obs(self, ev: Any) -> np.ndarray:
        n = self.config.image_pixels
        image = downsample(ev.observation.detector.image, n) if n else None
        diag = self.stage.diagnostic
        far = imager_features(ev.observation.reading(self._imager).stats,
                              self._ref[self._imager]) if self._imager else None
        return observation_vector(ev.judgement, ev.observation.reading(diag).stats,
                                  self._ref[diag], ev.u, image, self.stage.pointing_um, far)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """A new misaligned beamline; options ``{"misalign": float}`` fixes the scale."""
        super().reset(seed=seed)
        ep = self.config.draw_episode(self.desc, self.np_random)
        scale = float((options or {}).get("misalign", ep.misalign))
        episode_seed = ep.seed
        twin = self._variant(ep.energy)
        self._ref_true, self._ref_noisy = self._references(twin, episode_seed)
        desc = self._descs[ep.energy]
        full = HiddenErrors.draw(desc, scale, episode_seed)
        kept = set(self.stage.motors) | (set(_imager_motors(desc, self._imager))
                                         if ep.imager_error else set())
        hidden = HiddenErrors({m: v for m, v in full.offsets.items() if m in kept},
                              scale, episode_seed)
        self.beamline = TwinBeamline(desc, hidden=hidden, seed=episode_seed, noise=ep.noise,
                                     disturbances=ep.backlash, twin=twin, source=ep.source)
        self._ref = self._ref_noisy if ep.noise else self._ref_true
        self.problem = AlignmentProblem(
            self.beamline, self.stage, Objective.at(self.stage, self._ref), span=self._span,
            budget=10**9, trial=f"env-{episode_seed}",
            safety=SafetyConfig(step_cap=max(self.config.max_step, 0.05) / 2 + 1e-9,
                                max_moves=10**9, divergence_ratio=1e-12,
                                divergence_count=10**9))
        ev = self.problem.observe_start()
        self._u, self._fom, self._aligned = ev.u.copy(), ev.fom, 0
        obs = self._obs(ev)
        info = self._info(ev.judgement, scale)
        info["energy_eV"] = desc.energy_eV
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by *action* (clipped to the action space), observe, reward progress."""
        if self.problem is None:
            raise ConfigError("call reset() before step()")
        a = np.asarray(action, dtype=float).reshape(-1)
        if a.shape != (self.stage.dof,):
            raise ConfigError(f"action must have shape ({self.stage.dof},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise NonFiniteError(f"action {a.tolist()} is not finite; nothing moved")
        a = np.clip(a, -1.0, 1.0)
        target = np.clip(self._u + self.config.max_step * a, -1.0, 1.0)
        ev = self.problem.evaluate(target)
        reward = _reward(ev.fom, self._fom)
        self._u, self._fom = ev.u.copy(), ev.fom
        self._aligned = self._aligned + 1 if ev.fom >= self.config.stop_fom else 0
        terminated = self._aligned >= self.config.success_steps
        return self._obs(ev), reward, terminated, False, self._info(ev.judgement)

    def _info(self, j: Judgement, scale: float | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"fom": j.fom, "flux_ratio": j.flux_ratio,
                                "beamline_time_s": self.beamline.time_s if self.beamline
                                else 0.0, "evaluations": self.problem.evaluations
                                if self.problem else 0}
        if scale is not None:
            info["misalign"] = scale
        return info

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the configuration and the RNG state; the twin is rebuilt on load."""
        return {"config": self.config, "np_random_state":
                self._np_random.bit_generator.state if self._np_random is not None else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]
        if state["np_random_state"] is not None:
            self._np_random = np.random.Generator(np.random.PCG64())
            self._np_random.bit_generator.state = state["np_random_state"]

    def true_success(self) -> bool:
        """Whether the true beam (noise-free) meets the success criterion (simulation only)."""
        if self.beamline is None:
            return False
        return Objective.at(self.stage, self._ref_true).judge(
            self.beamline.ground_truth()).success


@dataclass
class _Variant:
    """One energy of a vector environment: its fast twin, design and reference."""

    desc: BeamlineDescription
    ft: Any  # twin.fast.FastTwin
    design: torch.Tensor
    lo: np.ndarray
    hi: np.ndarray
    x0: np.ndarray
    ref: BeamStats
    objective: Objective

    def to_u(self, x: np.ndarray) -> np.ndarray:
        """Motor positions (motor units) in agent units: -1 and 1 at the box's edges."""
        return 2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0

    def to_x(self, u: np.ndarray) -> np.ndarray:
        """Agent units in motor positions (motor units)."""
        return self.lo + (u + 1.0) * 0.5 * (self.hi - self.lo)


class AlignVecEnv(gym.vector.VectorEnv):
    """``num_envs`` beamlines aligned at once, traced in one batched fast-twin call.

    Same spaces, rewards, termination and domain randomisation as :class:`AlignEnv`
    (noise: photon and knife-edge noise on the readings; no motor travel time, no
    backlash). Sub-environments that end are reset automatically on the next step;
    :meth:`reset_done` resets them at once instead (stable-baselines3's convention).
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 16, config: AlignConfig | None = None,
                 **overrides: Any) -> None:
        from twin.fast import SOURCE_FIELDS, FastTwin

        steps = overrides.pop("max_episode_steps", None)  # gym.make_vec passes the spec's
        if steps is not None and "max_steps" not in overrides:
            overrides["max_steps"] = int(steps)
        cfg = replace(config or AlignConfig(), **overrides)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ConfigError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.config = cfg
        self.num_envs = num_envs
        descs = cfg.descriptions()
        self.desc = descs[0]
        self.stage = stage(self.desc, cfg.stage)
        self._imager = _imager_of(cfg, self.desc, self.stage)
        self._variants = [self._make_variant(d, FastTwin) for d in descs]
        self.ft = self._variants[0].ft
        names = self.ft.motor_names
        self._cols = [names.index(m) for m in self.stage.motors]
        d = self.stage.dof
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (d,), dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND,
                                                       (cfg.obs_length(self.stage),),
                                                       dtype=np.float32)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space,
                                                         self.num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space,
                                                              self.num_envs)
        self._hidden = torch.zeros(self.num_envs, len(names), dtype=self.ft.param_dtype)
        self._source = torch.zeros(self.num_envs, len(SOURCE_FIELDS), dtype=self.ft.param_dtype)
        self._source[:, 4:] = 1.0
        self._variant = np.zeros(self.num_envs, dtype=int)
        self._u = np.zeros((self.num_envs, d))
        self._fom = np.zeros(self.num_envs)
        self._aligned = np.zeros(self.num_envs, dtype=int)
        self._noise = np.ones(self.num_envs, dtype=bool)
        self._steps = np.zeros(self.num_envs, dtype=int)
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)
        self._rng = np.random.default_rng()

    def _make_variant(self, desc: BeamlineDescription, fast_twin: type) -> _Variant:
        cfg = self.config
        ft = fast_twin(desc, rays=cfg.rays)
        design = desc.design_positions()
        design_t = torch.tensor([design[n] for n in ft.motor_names], dtype=ft.param_dtype)
        span = default_span(desc, self.stage, cfg.span_sigmas)
        span_a = np.array([span[m] for m in self.stage.motors])
        x0 = np.array([design[m] for m in self.stage.motors])
        lo = np.maximum(x0 - span_a, [desc.motor(m).low for m in self.stage.motors])
        hi = np.minimum(x0 + span_a, [desc.motor(m).high for m in self.stage.motors])
        with torch.no_grad():
            ideal = ft.to_numpy(ft.observe(design_t[None, :]))
        names = self.stage.diagnostics + ((self._imager,) if self._imager else ())
        refs = {d: BeamStats(**{k: float(v[0]) for k, v in ideal[d].items()}) for d in names}
        ref = refs[self.stage.diagnostic]
        return _Variant(desc, ft, design_t, lo, hi, x0, ref, Objective.at(self.stage, refs))

    # ------------------------------------------------------------------ helpers
    def _draw(self, i: int) -> None:
        ep = self.config.draw_episode(self.desc, self._rng)
        v = self._variants[ep.energy]
        full = HiddenErrors.draw(v.desc, ep.misalign, ep.seed)
        self._hidden[i] = 0.0
        for c, m in zip(self._cols, self.stage.motors, strict=True):
            self._hidden[i, c] = full.offset(m)
        if ep.imager_error:
            names = self.ft.motor_names
            for m in _imager_motors(v.desc, self._imager):
                self._hidden[i, names.index(m)] = full.offset(m)
        self._source[i] = v.ft.source_tensor([ep.source or SourcePerturbation()])[0]
        self._variant[i] = ep.energy
        self._u[i] = v.to_u(v.x0)
        self._noise[i] = ep.noise
        self._aligned[i] = 0
        self._steps[i] = 0

    def _observe(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, list[Judgement]]:
        """Observations and judgements of sub-environments *idx* (default: all), in order."""
        idx = np.arange(self.num_envs) if idx is None else np.asarray(idx, dtype=int)
        stats: dict[int, BeamStats] = {}
        far: dict[int, dict[str, BeamStats]] = {}
        behind: dict[int, BeamStats] = {}
        images: dict[int, np.ndarray] = {}
        n = self.config.image_pixels
        for k, v in enumerate(self._variants):
            sel = idx[self._variant[idx] == k]
            if sel.size == 0:
                continue
            x = v.to_x(self._u[sel])
            pos = v.design.repeat(sel.size, 1)
            pos[:, self._cols] = torch.as_tensor(x, dtype=self.ft.param_dtype)
            src = self._source[sel] if self.config.p_source > 0 else None
            with torch.no_grad():
                every = v.ft.to_numpy(v.ft.observe(pos, self._hidden[sel], source=src))
            for r, i in enumerate(sel):
                stats[int(i)] = _row(every[self.stage.diagnostic], r)
                far[int(i)] = {d: _row(every[d], r) for d in self.stage.pointing}
                if self._imager:
                    behind[int(i)] = _row(every[self._imager], r)
            if n:
                det = v.desc.detector
                with torch.no_grad():
                    img = v.ft.image(pos, det.name, self._hidden[sel], pixels=(n, n),
                                     pixel_um=max(det.fov_um) / n, source=src)
                for r, i in enumerate(sel):
                    images[int(i)] = img[r].numpy()
        obs, judged = [], []
        for i in idx:
            s = stats[int(i)]
            if self._noise[i] and s.flux > 0:
                k = 1e-3  # relative photon noise of a 0.1 s exposure at ~1e12 ph/s and more
                g = self._rng.standard_normal(3)
                s = replace(s, flux=s.flux * (1 + k * g[0]),
                            fwhm_x_um=s.fwhm_x_um * (1 + 0.01 * g[1]),
                            fwhm_y_um=s.fwhm_y_um * (1 + 0.01 * g[2]))
            v = self._variants[self._variant[i]]
            j = v.objective.judge_stats(s, far[int(i)])
            judged.append(j)
            feats = None
            if self._imager:
                b = behind[int(i)]
                if self._noise[i] and b.flux > 0:
                    g = self._rng.standard_normal(2) * IMAGER_NOISE_UM
                    b = replace(b, centroid_x_um=b.centroid_x_um + g[0],
                                centroid_y_um=b.centroid_y_um + g[1])
                feats = imager_features(b, v.objective.landmarks[self._imager])
            obs.append(observation_vector(j, s, v.ref, self._u[i], images.get(int(i)),
                                          self.stage.pointing_um, feats))
        return np.stack(obs), judged

    # ------------------------------------------------------------------ API
    @property
    def u(self) -> np.ndarray:
        """``(num_envs, dof)`` motor positions, agent units (a copy)."""
        return self._u.copy()

    def ideal_u(self) -> np.ndarray:
        """``(num_envs, dof)`` where each beamline's motors give the ideal beam, agent units.

        This reads the hidden errors, which a real beamline never tells: it is for
        teachers in simulation (:mod:`agents.imitation`), never for an agent. The ideal
        positions are ``design - offset`` (:meth:`twin.hidden.HiddenErrors.ideal_positions`)
        and may lie outside the search box (beyond +-1).
        """
        out = np.empty_like(self._u)
        off = self._hidden[:, self._cols].numpy()
        for k, v in enumerate(self._variants):
            sel = self._variant == k
            out[sel] = v.to_u(v.x0 - off[sel])
        return out

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Every sub-environment gets a new misaligned beamline."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        for i in range(self.num_envs):
            self._draw(i)
        obs, judged = self._observe()
        self._fom = np.array([j.fom for j in judged])
        self._needs_reset[:] = False
        return obs, {"fom": self._fom.copy()}

    def reset_done(self, mask: np.ndarray) -> np.ndarray:
        """Reset the sub-environments in *mask* now; returns their first observations.

        For learners whose vector environments reset in the same step that ends an
        episode (stable-baselines3), instead of on the next one.
        """
        idx = np.flatnonzero(np.asarray(mask, dtype=bool))
        if idx.size == 0:
            return np.zeros((0,) + self.single_observation_space.shape, dtype=np.float32)
        for i in idx:
            self._draw(int(i))
        obs, judged = self._observe(idx)
        self._fom[idx] = [j.fom for j in judged]
        self._needs_reset[idx] = False
        return obs

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray, dict[str, Any]]:
        """Move every sub-environment by its action; reset those that ended last step."""
        a = np.asarray(actions, dtype=float).reshape(self.num_envs, self.stage.dof)
        if not np.all(np.isfinite(a)):
            raise NonFiniteError("actions contain NaN or inf; nothing moved")
        a = np.clip(a, -1.0, 1.0)
        reset_now = self._needs_reset.copy()
        for i in np.flatnonzero(reset_now):
            self._draw(i)
        self._u = np.where(reset_now[:, None], self._u,
                           np.clip(self._u + self.config.max_step * a, -1.0, 1.0))
        obs, judged = self._observe()
        fom = np.array([j.fom for j in judged])
        reward = np.where(reset_now, 0.0, np.log(fom + _EPS) - np.log(self._fom + _EPS))
        self._aligned = np.where(fom >= self.config.stop_fom, self._aligned + 1, 0)
        self._steps = np.where(reset_now, 0, self._steps + 1)
        terminated = (self._aligned >= self.config.success_steps) & ~reset_now
        truncated = (self._steps >= self.config.max_steps) & ~terminated & ~reset_now
        self._fom = fom
        self._needs_reset = terminated | truncated
        return obs, reward.astype(np.float64), terminated, truncated, {"fom": fom}
