"""``beamtwin/Stabilize-v0``: hold the beam on the sample while the undulator gaps move.

Each episode plays one gap schedule (:mod:`agents.stabilize.schedules`, a kind
and a seed drawn from the episode's seed) on the linearised twin
(:class:`~agents.stabilize.plant.StabilizePlant`), by default with a fresh
hidden gap dependence per episode (domain randomisation: the agent cannot
learn one machine's map by heart and must read the diagnostics).

Observation (float32, 21 values):

* this gap scaled to [0, 1] over the working range, its rate (in units of the
  gap speed) and its direction (±1); the same three for the neighbour's gap;
* the six :data:`~agents.stabilize.plant.MEASURED` changes, in units of their
  tolerances (centroids 5 nm, sizes 0.4 %, XBPM 1 um), and whether the sample
  diagnostic read anew this period (1) or holds its last reading (0);
* the eight knob settings in effect, in units of their envelopes.

Action: bounded relative moves of the eight knobs (:data:`~agents.stabilize.plant.KNOBS`),
each in [-1, 1] of its step cap, :data:`STEP_FRACTION` of its envelope per
period (a knob crosses its envelope in about 5 s); settings stay inside the
envelope. A policy that had to place the knobs absolutely would need a
precision of 1e-3 of the envelope (a KB pitch of 1 nrad moves the focus
1.5 nm); moves make that an integration, as in feedback. A non-finite action
raises, before anything moves.

Reward per period: ``-log(1 + c)`` with ``c = ((dx/t)**2 + (dy/t)**2 + (ds/s)**2) / 3``
for the true centroid change dx, dy at the sample (t = ``centroid_tol_um``) and
the true vertical size change ds (s = ``size_tol_pct``): quadratic near the
target, and still sloped far from it. ``terminated``
is never set (there is no failure state short of the envelope, which the action
space already bounds); ``truncated`` ends the schedule.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from agents.stabilize.plant import (
    KNOBS,
    MEASURED,
    PlantRun,
    Reading,
    StabilizeConfig,
    StabilizePlant,
)
from agents.stabilize.schedules import KINDS, make_schedule, working_range
from twin.beam_response import BeamResponse
from twin.description import BeamlineDescription
from twin.errors import ConfigError, NonFiniteError
from twin.presets import default_preset

__all__ = ["StabilizeEnv", "observation", "OBS_SIZE", "STEP_FRACTION", "move_knobs"]

OBS_SIZE = 6 + len(MEASURED) + 1 + len(KNOBS)
#: step cap of every knob per period, as a fraction of its envelope
STEP_FRACTION = 0.002


def observation(reading: Reading, desc: BeamlineDescription, config: StabilizeConfig
                ) -> np.ndarray:
    """The environment's observation vector for one :class:`Reading`."""
    low, high, _, speed = working_range(desc)
    sg = desc.disturbances.source_gap
    scales = np.array([config.centroid_tol_um, config.centroid_tol_um, config.size_tol_pct,
                       config.size_tol_pct, 1.0, 1.0])
    lim = np.array([config.knob_limits[k] for k in KNOBS])
    head = [(reading.gap_mm - low) / (high - low), reading.gap_rate_mm_s / speed,
            reading.gap_direction,
            (reading.neighbour_mm - sg.neighbour_gap_low_mm)
            / (sg.neighbour_gap_high_mm - sg.neighbour_gap_low_mm),
            reading.neighbour_rate_mm_s / speed, reading.neighbour_direction]
    obs = np.concatenate([head, reading.measured / scales, [1.0 if reading.fresh else 0.0],
                          reading.knobs / lim])
    return np.clip(obs, -100.0, 100.0).astype(np.float32)


def move_knobs(target: np.ndarray, action: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Knob settings after a relative *action* (each in [-1, 1] of its step cap)."""
    step = np.clip(np.asarray(action, float), -1.0, 1.0) * STEP_FRACTION * limits
    return np.clip(target + step, -limits, limits)


class StabilizeEnv(gym.Env):
    """Gymnasium environment of feed-forward and feedback beam stabilisation.

    Parameters
    ----------
    desc : BeamlineDescription, optional
        Default: the built-in preset.
    seed : int
        Hidden gap dependence when *randomize* is False; else the first of them.
    config : StabilizeConfig, optional
    kinds : tuple of str
        Schedule kinds to draw from.
    duration_s : float
        Length of an episode, s.
    randomize : bool
        Draw a new hidden gap dependence (disturbance seed) every episode.
    response : BeamResponse, optional
        A measured response to share (default: measured once, a few seconds).
    schedule_seed_offset : int
        Added to every drawn schedule seed (keep training and test schedules apart).
    """

    metadata = {"render_modes": []}

    def __init__(self, desc: BeamlineDescription | None = None, *, seed: int = 0,
                 config: StabilizeConfig | None = None, kinds: tuple[str, ...] = KINDS,
                 duration_s: float = 20.0, randomize: bool = True,
                 response: BeamResponse | None = None, schedule_seed_offset: int = 0) -> None:
        super().__init__()
        self.desc = desc if desc is not None else default_preset()
        self.config = config if config is not None else StabilizeConfig()
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ConfigError(f"unknown schedule kinds {unknown}; kinds: {', '.join(KINDS)}")
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ConfigError(f"duration_s must be a finite number > 0, got {duration_s!r}")
        self.kinds, self.duration_s, self.randomize = tuple(kinds), duration_s, randomize
        self.schedule_seed_offset = int(schedule_seed_offset)
        self._plant = StabilizePlant(self.desc, seed, self.config, response=response)
        self.response = self._plant.response
        self._base_seed = int(seed)
        self.observation_space = gym.spaces.Box(-100.0, 100.0, (OBS_SIZE,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(KNOBS),), np.float32)
        self._lim = np.array([self.config.knob_limits[k] for k in KNOBS])
        self._run: PlantRun | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:  # noqa: D102
        super().reset(seed=seed)
        rng = self.np_random
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        sched_seed = self.schedule_seed_offset + int(rng.integers(0, 1_000_000))
        if self.randomize:
            self._plant = StabilizePlant(self.desc, int(rng.integers(0, 2**31 - 1)), self.config,
                                         response=self.response)
        schedule = make_schedule(self.desc, kind, sched_seed, duration_s=self.duration_s,
                                 dt_s=self.config.dt_s)
        self._run = self._plant.run(schedule, noise_seed=int(rng.integers(0, 2**31 - 1)))
        self._target = np.zeros(len(KNOBS))
        self._reading = self._run.reading()
        return observation(self._reading, self.desc, self.config), {
            "schedule": schedule.name, "disturbance_seed": self._plant.seed}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the knob settings, go one period on (see the module docstring)."""
        if self._run is None or self._run.done:
            raise ConfigError("call reset() before step()")
        a = np.asarray(action, dtype=float).reshape(-1)
        if a.shape != (len(KNOBS),):
            raise ConfigError(f"action must have {len(KNOBS)} values ({', '.join(KNOBS)}), got "
                              f"shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise NonFiniteError(f"action contains NaN or inf: {a.tolist()}; nothing moved")
        self._target = move_knobs(self._target, a, self._lim)
        self._run.apply(self._target)
        self._run.advance()
        truncated = self._run.done
        i = min(self._run.step, self._run.schedule.steps - 1)
        t = self._run.truth[i]
        cfg = self.config
        cost = ((t[0] / cfg.centroid_tol_um) ** 2 + (t[1] / cfg.centroid_tol_um) ** 2
                + (t[3] / cfg.size_tol_pct) ** 2) / 3.0
        reward = -math.log1p(float(cost))
        if not truncated:
            self._reading = self._run.reading()
        obs = observation(self._reading, self.desc, cfg)
        return obs, reward, False, truncated, {"centroid_um": (float(t[0]), float(t[1])),
                                               "size_y_pct": float(t[3])}
