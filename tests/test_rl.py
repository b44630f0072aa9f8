"""Reinforcement learning: training with every algorithm, saved policies, the RL and hybrid agents.

Training runs on a tiny budget here (stable-baselines3's own practice); the
shipped policies are the ones trained at full budget (docs/agents.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.env import OBS_FEATURES, AlignVecEnv
from agents.harness import BenchSettings, stage_trial
from agents.rl import (
    HybridAgent,
    RLAgent,
    Sb3AlignVecEnv,
    TrainConfig,
    load_policy,
    policy_input,
    shipped_policy,
    train,
)
from agents.stages import STAGE_ORDER, stage
from twin.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_policies(tmp_path_factory):
    """A policy per algorithm, trained for a few hundred steps on the mono stage."""
    out = {}
    for algo in ("ppo", "sac", "td3"):
        cfg = TrainConfig(stage="mono", algo=algo, timesteps=256, num_envs=4, rays=100,
                          eval_every=128, eval_episodes=4, checkpoint_every=128, seed=3)
        out[algo] = train(cfg, tmp_path_factory.mktemp(algo), progress=False)
    return out


@pytest.mark.parametrize("algo", ["ppo", "sac", "td3"])
def test_every_algorithm_trains_and_saves_policy_with_its_metadata(tiny_policies, algo, desc):
    rep = tiny_policies[algo]
    assert rep.policy.is_file() and rep.policy.suffix == ".zip"
    meta = json.loads(rep.policy.with_suffix(".json").read_text())
    assert meta["algo"] == algo and meta["stage"] == "mono" and meta["seed"] == 3
    assert meta["motors"] == list(stage(desc, "mono").motors)
    assert meta["config"]["timesteps"] == 256 and meta["train_wall_s"] > 0
    assert {"beamtwin", "stable_baselines3", "torch", "gymnasium"} <= set(meta["versions"])
    assert 0.0 <= meta["eval"]["success_rate"] <= 1.0 and meta["eval"]["episodes"] == 4
    assert list((rep.policy.parent / "checkpoints").glob("mono_*_steps.zip"))
    assert (rep.policy.parent / "eval" / "evaluations.npz").is_file()
    doc = rep.to_dict()
    assert set(doc) >= {"stage", "algo", "timesteps", "seed", "wall_s", "policy", "eval"}
    pol = load_policy(rep.policy)
    n = len(OBS_FEATURES) + 2 + 2  # readings, the pointing at kb_bpm (x, y), two motors
    a = pol.act(np.zeros(n), np.ones(n))
    assert a.shape == (2,) and np.all(np.abs(a) <= 1.0)


def _train_and_deploy(tmp_path, desc, stage_name, budget, feature, **extra):
    """A tiny policy that sees *extra*'s feature, deployed as an agent for a short trial."""
    cfg = TrainConfig(stage=stage_name, timesteps=128, num_envs=4, rays=100, eval_every=0,
                      eval_episodes=2, checkpoint_every=0, **extra)
    rep = train(cfg, tmp_path, progress=False)
    assert feature in rep.metadata["observation"]
    settings = BenchSettings(rays=1000, budget=budget, noise=True, backend="fast")
    res = stage_trial(desc, stage_name, RLAgent(policy=rep.policy, max_steps=3), seed=5,
                      settings=settings)
    assert 1 <= res.evaluations <= budget and res.error is None
    return rep, settings


def test_a_policy_that_sees_the_detector_image_deploys_as_an_agent(tmp_path, desc):
    _train_and_deploy(tmp_path, desc, "mono", 6, "detector image 4x4", image_pixels=4)


def test_a_policy_that_sees_the_detector_behind_the_kb_deploys_as_an_agent(tmp_path, desc):
    """The imager features: the beam's centroid on the detector behind the sample, from where
    the ideal beam sits there; an agent without that landmark is refused up front."""
    import dataclasses

    from agents.env import AlignEnv, _imager_of
    from agents.harness import References
    from agents.objective import Objective
    from agents.problem import AlignmentProblem, default_span
    from twin.hidden import HiddenErrors
    from twin.simulator import TwinBeamline

    env = AlignEnv(stage="kb", imager=True, rays=500)
    plain = AlignEnv(stage="kb", rays=500)
    assert env.observation_space.shape[0] == plain.observation_space.shape[0] + 2
    obs0, _ = env.reset(seed=2, options={"misalign": 0.0})
    i = list(env.stage.motors).index("kb_v.pitch")
    a = np.zeros(env.stage.dof)
    a[i] = 1.0
    obs1, *_ = env.step(a)
    k = len(OBS_FEATURES) + 1  # the imager's y feature
    assert obs1[k] > obs0[k] + 0.5  # KB-V pitch up: the beam rises on the detector
    with pytest.raises(ConfigError, match="no screen or detector after"):
        _imager_of(env.config, desc, dataclasses.replace(env.stage, diagnostic="detector"))

    rep, settings = _train_and_deploy(tmp_path, desc, "kb", 5, "imager(centroid_y)",
                                      imager=True)
    st = stage(desc, "kb")
    refs = References.of(desc, settings, 5)
    bl = TwinBeamline(desc, hidden=HiddenErrors({}), backend="fast", rays=1000)
    prob = AlignmentProblem(bl, st, Objective(st, refs.measured["sample"]),  # no landmarks
                            span=default_span(desc, st), budget=5)
    with pytest.raises(ConfigError, match="observes the detector behind 'sample'"):
        RLAgent(policy=rep.policy).run(prob, np.random.default_rng(0))
    assert prob.evaluations == 0


def test_train_config_refuses_bad_settings():
    with pytest.raises(ConfigError, match="algo must be one of"):
        TrainConfig(algo="dqn")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timesteps"):
        TrainConfig(timesteps=0)
    with pytest.raises(ConfigError, match="p_source"):
        TrainConfig(p_source=1.5)
    with pytest.raises(ConfigError, match="energies_eV"):
        TrainConfig(energies_eV=(float("nan"),))


def test_sb3_adapter_resets_in_the_same_step_and_reports_the_ending():
    venv = Sb3AlignVecEnv(AlignVecEnv(3, stage="mono", rays=100, max_steps=2), seed=5)
    x = venv.reset()
    n = len(OBS_FEATURES) + 2 + 2  # readings, the pointing at kb_bpm (x, y), two motors
    assert x.shape == (3, 2 * n)
    np.testing.assert_array_equal(x[:, n:], 0.0)  # no change yet after a reset
    venv.step_async(np.zeros((3, 2)))
    x1, r1, done1, _ = venv.step_wait()
    venv.step_async(np.zeros((3, 2)))
    x2, _, done2, infos = venv.step_wait()
    assert done2.all()  # the two-step limit ends every episode
    for i in range(3):
        assert "terminal_observation" in infos[i] and "is_success" in infos[i]
        assert infos[i]["TimeLimit.truncated"] == (not infos[i]["is_success"])
    np.testing.assert_array_equal(x2[:, n:], 0.0)  # the new episode's first observation
    assert r1.dtype == np.float32


def test_policy_input_is_observation_and_its_change():
    prev, cur = np.array([1.0, 2.0]), np.array([1.5, 1.0])
    np.testing.assert_allclose(policy_input(prev, cur), [1.5, 1.0, 0.5, -1.0])


def test_bad_policy_files_are_refused(tmp_path, tiny_policies):
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(tmp_path / "none.zip")
    lone = tmp_path / "lone.zip"
    lone.write_bytes(tiny_policies["ppo"].policy.read_bytes())
    with pytest.raises(ConfigError, match="no metadata file"):
        load_policy(lone)
    lone.with_suffix(".json").write_text('{"format": 99}')
    with pytest.raises(ConfigError, match="not beamtwin policy metadata"):
        load_policy(lone)
    with pytest.raises(ConfigError, match="no shipped policy for stage 'full'"):
        shipped_policy("full")


def test_a_policy_for_other_motors_is_refused_before_anything_moves(desc, tiny_policies):
    agent = RLAgent(policy=tiny_policies["ppo"].policy)  # trained on mono
    with pytest.raises(ConfigError, match="was trained for motors"):
        agent.check(stage(desc, "slits"))


# --------------------------------------------------------------------------- shipped
@pytest.mark.parametrize("name", STAGE_ORDER)
def test_a_policy_ships_for_every_stage_of_the_default_beamline(desc, name):
    pol = load_policy(shipped_policy(name))
    assert pol.metadata["motors"] == list(stage(desc, name).motors)
    taught = (pol.metadata.get("imitation") or {}).get("samples", 0)
    assert pol.metadata["train_wall_s"] > 0 and pol.metadata["timesteps"] + taught > 0
    assert pol.path.stat().st_size < 1_000_000  # small zip files


@pytest.fixture(scope="module")
def fast_settings():
    return BenchSettings(rays=2000, budget=30, noise=True, backend="fast")


@pytest.mark.parametrize("name", ["mono", "slits", "m1", "kb", "sample"])
def test_shipped_policies_align_their_stage(desc, name, fast_settings):
    """Zero-shot, through the safety layer, on beamlines the policy never saw."""
    results = [stage_trial(desc, name, RLAgent(), seed=100 + s, settings=fast_settings)
               for s in range(4)]
    assert sum(r.success for r in results) >= 3, [r.final for r in results]
    assert all(r.evaluations <= fast_settings.budget for r in results)


def test_hybrid_refines_after_the_learned_steps(desc, fast_settings):
    res = stage_trial(desc, "slits", HybridAgent(rl_steps=2), seed=7, settings=fast_settings)
    assert res.agent == "hybrid" and res.evaluations <= fast_settings.budget
    assert res.success


def test_the_hybrid_hands_over_when_the_policy_stalls(desc, fast_settings):
    """A policy that only makes the beam worse is given up after `patience` steps."""
    class Stalling:
        name = "stalling"

        def __init__(self) -> None:
            self.rl = RLAgent()
            self.used = -1

        def check(self, st):
            self.rl.check(st)

        def run(self, problem, rng):
            pol = self.rl.policy_for(problem.stage)
            pol.act = lambda prev, cur: np.ones(problem.dim)  # push every motor away
            best = self.rl.drive(problem, 8, patience=2)
            self.used = problem.evaluations
            self.best_u = best.u.copy()
            return best.u.copy()

    agent = Stalling()
    stage_trial(desc, "mono", agent, seed=3, settings=fast_settings)
    assert agent.used == 1 + 2  # the start, then two steps that did not improve it
    assert np.array_equal(agent.best_u, np.zeros(2))  # the best is still the start


def test_a_policy_whose_observation_does_not_fit_the_stage_is_refused(desc):
    """The shipped m1 policy observes the pointing at kb_bpm; on a beamline whose m1 stage
    has no such lever, it is refused before anything moves, with what to do about it."""
    import dataclasses

    st = dataclasses.replace(stage(desc, "m1"), pointing=(), pointing_planes=())
    with pytest.raises(ConfigError, match="observes .* features.*retrain"):
        RLAgent().check(st)
    RLAgent().check(stage(desc, "m1"))  # the stage it was trained for
