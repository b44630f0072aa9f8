"""Alignment stages, figures of merit, the Gymnasium environments and the classical agents.
The twin is real (xrt, or the fast twin for the vector environment)."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import agents
from agents.bayes import BayesOptAgent
from agents.classic import RandomAgent, ScanAgent
from agents.harness import BenchSettings, References, stage_trial
from agents.objective import Objective
from agents.problem import AlignmentProblem, default_span
from agents.registry import AGENTS, make_agent
from agents.stages import STAGE_ORDER, stage, stages
from twin.errors import ConfigError, NonFiniteError, UnknownNameError
from twin.hidden import HiddenErrors
from twin.observation import BeamStats
from twin.simulator import TwinBeamline


# --------------------------------------------------------------------------- stages
def test_default_beamline_has_every_stage(desc):
    all_ = stages(desc)
    assert list(all_) == [*STAGE_ORDER, "full"]
    assert all_["kb"].dof == 6 and all_["kb"].diagnostic == "sample"
    assert set(all_["mono"].motors) == {"dcm.pitch2", "dcm.roll2"}
    assert all_["mono"].diagnostic == "dcm_bpm"
    assert all_["m1"].motors == ("m1.pitch", "m1.height", "m1.bend")
    assert set(all_["full"].motors) == {m for n in STAGE_ORDER for m in all_[n].motors}
    with pytest.raises(UnknownNameError, match="available: m1, mono"):
        stage(desc, "kbb")


def test_stages_of_another_beamline(mixed_desc):
    names = stages(mixed_desc)
    assert names  # derived by element type, not by the default preset's names
    for st in names.values():
        for m in st.motors:
            mixed_desc.motor(m)
        mixed_desc.element(st.diagnostic)


# --------------------------------------------------------------------------- objective
REF = BeamStats(flux=1e13, centroid_x_um=0.0, centroid_y_um=0.0, fwhm_x_um=1.0, fwhm_y_um=0.1,
                rms_x_um=0.4, rms_y_um=0.04)


def test_a_clipped_spot_does_not_look_good(desc):
    obj = Objective(stage(desc, "kb"), REF)
    good = obj.judge_stats(REF)
    assert good.fom == pytest.approx(1.0) and good.success
    # half the beam cut off: half the flux, half the width in one direction
    clipped = obj.judge_stats(BeamStats(flux=0.5e13, centroid_x_um=0.25, centroid_y_um=0.0,
                                        fwhm_x_um=0.5, fwhm_y_um=0.1))
    assert clipped.fom < 0.1 * good.fom and not clipped.success
    wide = obj.judge_stats(BeamStats(flux=1e13, centroid_x_um=0, centroid_y_um=0,
                                     fwhm_x_um=1.2, fwhm_y_um=0.1))
    assert not wide.success and wide.fom == pytest.approx(1 / 1.2)
    assert obj.judge_stats(BeamStats(flux=0.0)).fom == 0.0


def test_a_bright_spot_with_one_axis_too_wide_does_not_look_aligned(desc):
    st = stage(desc, "kb")
    obj = Objective(st, REF)
    # x focused tighter than the reference, y 15 % too wide: bright, yet not aligned
    j = obj.judge_stats(BeamStats(flux=1e13, centroid_x_um=0, centroid_y_um=0, fwhm_x_um=0.8,
                                  fwhm_y_um=0.115, rms_x_um=0.34, rms_y_um=0.049))
    assert j.fom > 0.95 and not j.success
    assert j.fwhm_x_ratio == pytest.approx(0.8) and j.fwhm_y_ratio == pytest.approx(1.15)
    assert not j.looks_aligned(0.95, st.goal)
    assert j.looks_aligned(0.95, "centre")  # a centring stage does not judge sizes


def test_centre_goal_penalises_an_offset_beam(desc):
    st = stage(desc, "m1")
    obj = Objective(st, REF, {d: REF for d in st.pointing})
    off = obj.judge_stats(BeamStats(flux=1e13, centroid_x_um=0.0, centroid_y_um=1.0,
                                    fwhm_x_um=1.0, fwhm_y_um=0.1))
    assert off.offset_um == pytest.approx(1.0)
    assert not off.success and off.fom < 0.2
    assert Objective.loss(0.0) == pytest.approx(-math.log(1e-6))


def test_upstream_stages_are_pointed_at_the_focusing_optics(desc):
    st = stages(desc)
    assert st["m1"].pointing == ("kb_bpm",) and st["m1"].pointing_planes == ("x",)
    assert st["mono"].pointing == ("kb_bpm",) and st["mono"].pointing_planes == ("x", "y")
    # the DCM's pitch and roll only tilt the beam: judged by flux near, pointing far
    assert st["mono"].goal == "flux" and st["m1"].goal == "centre"
    assert st["kb"].pointing == () and st["slits"].pointing == ()
    with pytest.raises(ConfigError, match="kb_bpm"):
        Objective(st["m1"], REF)  # a pointed stage needs the far reference too


def test_a_beam_centred_nearby_but_pointing_off_is_not_aligned(desc):
    """Centred at the screen after M1, 100 um off at the KB: the one-screen criterion
    called this aligned, and the KB clipped the beam."""
    st = stage(desc, "m1")
    far = BeamStats(flux=1e13, centroid_x_um=5.0, centroid_y_um=-3.0, fwhm_x_um=900.0,
                    fwhm_y_um=300.0)
    obj = Objective(st, REF, {"kb_bpm": far})
    near = REF
    on = obj.judge_stats(near, {"kb_bpm": far})
    assert on.success and on.fom == pytest.approx(1.0) and on.pointing_um == (0.0,)
    off = obj.judge_stats(near, {"kb_bpm": replace(far, centroid_x_um=105.0)})
    assert not off.success and off.pointing_um == (100.0,)
    assert off.fom == pytest.approx(1 / (1 + (100 / (2 * st.pointing_um)) ** 2))
    # M1 deflects horizontally: a vertical offset there is not M1's to judge
    assert obj.judge_stats(near, {"kb_bpm": replace(far, centroid_y_um=200.0)}).success
    # just inside and just outside the tolerance
    t = st.pointing_um
    assert obj.judge_stats(near, {"kb_bpm": replace(far, centroid_x_um=5 + 0.99 * t)}).success
    assert not obj.judge_stats(near, {"kb_bpm": replace(far, centroid_x_um=5 + 1.01 * t)}).success
    # no beam far downstream: not aligned, and the figure drops
    blind = obj.judge_stats(near, {"kb_bpm": BeamStats(flux=0.0)})
    assert not blind.success and blind.fom < 1e-3 and math.isnan(blind.pointing_um[0])


def test_a_stage_may_stop_when_the_criterion_holds_with_a_margin(desc):
    """Errors outside the stage cap the figure below the agents' 0.95; the criterion
    itself, met with a margin, still lets the stage stop (and only then)."""
    st = stage(desc, "m1")
    far = BeamStats(flux=1e13, centroid_x_um=0.0, centroid_y_um=0.0, fwhm_x_um=900.0,
                    fwhm_y_um=300.0)
    obj = Objective(st, REF, {"kb_bpm": far})
    capped = replace(REF, flux=0.94e13)  # another element's error costs 6 %
    j = obj.judge_stats(capped, {"kb_bpm": replace(far, centroid_x_um=10.0)})
    assert j.fom < 0.95 and j.success and j.within_margin and j.looks_aligned(0.95, st.goal)
    edge = obj.judge_stats(capped, {"kb_bpm": replace(far, centroid_x_um=0.9 * st.pointing_um)})
    assert edge.success and not edge.within_margin and not edge.looks_aligned(0.95, st.goal)
    dim = obj.judge_stats(replace(REF, flux=0.92e13), {"kb_bpm": far})
    assert dim.success and not dim.within_margin
    kb = Objective(stage(desc, "kb"), REF)
    wide = kb.judge_stats(replace(REF, fwhm_x_um=1.07))  # inside 1.1, outside 1.05
    assert wide.success and not wide.within_margin and not wide.looks_aligned(0.9, "focus")


# --------------------------------------------------------------------------- environments
@pytest.fixture(scope="module")
def env_kwargs():
    return {"stage": "kb", "backend": "xrt", "rays": 1000}


def test_align_env_passes_check_env(env_kwargs):
    env = gym.make(agents.ENV_ID, **env_kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec.max_episode_steps == 50


def _rollout(env, seed: int, steps: int = 6):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(0)
    out = [obs]
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        out.append(np.append(obs, [r, term, trunc, info["fom"]]))
    return out


def test_same_seed_same_rollout(env_kwargs):
    a = _rollout(gym.make(agents.ENV_ID, **env_kwargs), seed=11)
    b = _rollout(gym.make(agents.ENV_ID, **env_kwargs), seed=11)
    c = _rollout(gym.make(agents.ENV_ID, **env_kwargs), seed=12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_env_pickle_round_trip(env_kwargs):
    env = agents.env.AlignEnv(**env_kwargs)
    env.reset(seed=4)
    clone = pickle.loads(pickle.dumps(env))
    assert clone.config == env.config
    o1, _ = env.reset(seed=9)
    o2, _ = clone.reset(seed=9)
    np.testing.assert_array_equal(o1, o2)


def test_env_refuses_nan_and_clips_saturating_actions(env_kwargs):
    env = agents.env.AlignEnv(**env_kwargs)
    env.reset(seed=1)
    moves = env.problem.safe.moves
    with pytest.raises(NonFiniteError):
        env.step(np.full(6, np.nan))
    assert env.problem.safe.moves == moves
    u0 = env.problem.history[-1].u.copy()
    env.step(np.full(6, 1e9))  # saturating
    du = env.problem.history[-1].u - u0
    assert np.all(du <= env.config.max_step + 1e-12)
    assert env.problem.clipped == 0  # the env never asks for a point outside the box


def test_vector_env_steps_a_batch_on_the_fast_twin():
    vec = gym.make_vec(agents.ENV_ID, num_envs=4, vectorization_mode="vector_entry_point",
                       stage="mono", rays=500, max_episode_steps=3)
    obs, info = vec.reset(seed=2)
    assert obs.shape == (4, 7 + 2 + 2) and np.all(np.isfinite(obs))  # 2 pointing offsets
    seen_trunc = False
    for _ in range(4):
        obs, r, term, trunc, info = vec.step(np.zeros((4, 2)))
        assert obs.shape == (4, 11) and r.shape == (4,)
        seen_trunc |= bool(trunc.any())
    assert seen_trunc  # the step limit ends episodes; they reset on the next step
    obs2, _ = gym.make_vec(agents.ENV_ID, num_envs=4, vectorization_mode="vector_entry_point",
                           stage="mono", rays=500).reset(seed=2)
    np.testing.assert_array_equal(obs2, vec.reset(seed=2)[0])


def test_vector_env_randomises_energy_and_source_per_episode_and_resets_in_place():
    vec = agents.env.AlignVecEnv(8, stage="kb", rays=300, p_source=1.0,
                                 energies_eV=(9500.0, 10500.0))
    obs, _ = vec.reset(seed=3)
    assert set(vec._variant.tolist()) == {0, 1}  # both energies drawn
    assert [v.desc.energy_eV for v in vec._variants] == [9500.0, 10500.0]
    assert vec._variants[0].ref.flux != vec._variants[1].ref.flux  # each its own reference
    assert torch.all(vec._source[:, :4] != 0) and torch.all(vec._source[:, 4:] > 0)
    again = agents.env.AlignVecEnv(8, stage="kb", rays=300, p_source=1.0,
                                   energies_eV=(9500.0, 10500.0)).reset(seed=3)[0]
    np.testing.assert_array_equal(obs, again)  # seeded
    before = vec._hidden.clone()
    fresh = vec.reset_done(np.array([True] + [False] * 7))
    assert fresh.shape == (1, obs.shape[1]) and not vec._needs_reset.any()
    assert not torch.equal(before[0], vec._hidden[0]) and torch.equal(before[1:],
                                                                      vec._hidden[1:])


def test_an_optional_downsampled_detector_image_joins_the_observation():
    kw = {"stage": "kb", "rays": 500, "image_pixels": 8}
    vec = agents.env.AlignVecEnv(3, **kw)
    obs, _ = vec.reset(seed=1)
    assert obs.shape == (3, 7 + 6 + 64) and vec.single_observation_space.contains(obs[0])
    img = obs[:, 13:]
    assert np.all(img >= 0) and img.sum(axis=1).min() > 0.3  # most of the beam is on it
    env = agents.env.AlignEnv(backend="fast", **kw)
    one, _ = env.reset(seed=1)
    assert one.shape == (77,) and env.observation_space.contains(one)
    assert one[13:].sum() > 0.3
    check_env(env, skip_render_check=True)
    with pytest.raises(ConfigError, match="image_pixels"):
        agents.env.AlignConfig(image_pixels=1)


def test_single_env_randomises_energy_and_source(desc):
    env = agents.env.AlignEnv(stage="mono", backend="fast", rays=500, p_source=1.0,
                              energies_eV=(9500.0, 10500.0))
    energies = {env.reset(seed=s)[1]["energy_eV"] for s in range(6)}
    assert energies == {9500.0, 10500.0}
    assert env.beamline._source is not None and env.beamline._source.size_x_scale > 0


def test_the_imager_may_carry_its_own_day_one_offset():
    """With ``p_imager_error=1`` the detector behind the KB is off by its hidden error: the
    stage's motors and the judge's reading are as without, the imager's reading is not."""
    kw = {"stage": "kb", "rays": 300, "imager": True, "p_noise": 0.0}
    off = agents.env.AlignVecEnv(4, p_imager_error=1.0, **kw)
    b, _ = off.reset(seed=5)
    det = [off.ft.motor_names.index(m) for m in ("detector.x", "detector.y")]
    assert torch.all(off._hidden[:, det] != 0)
    ideal = off.ideal_u()
    off._hidden[:, det] = 0.0  # the same beamlines with the detector where it belongs
    a, _ = off._observe()
    np.testing.assert_array_equal(off.ideal_u(), ideal)  # the teacher's goal is unchanged
    imager = slice(7, 9)  # after the 7 readings: the imager's two centroid features
    np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=1e-6)
    assert np.all(np.abs(a[:, imager] - b[:, imager]).max(axis=1) > 0.1)
    plain = agents.env.AlignVecEnv(4, **kw)
    plain.reset(seed=5)
    assert torch.all(plain._hidden[:, det] == 0)
    env = agents.env.AlignEnv(backend="fast", p_imager_error=1.0, **kw)
    env.reset(seed=2)
    assert set(env.beamline._hidden.offsets) >= {"detector.x", "detector.y"}
    with pytest.raises(ConfigError, match="p_imager_error"):
        agents.env.AlignConfig(p_imager_error=2.0)


def test_env_config_refuses_bad_randomisation():
    with pytest.raises(ConfigError, match="p_source"):
        agents.env.AlignConfig(p_source=-0.1)
    with pytest.raises(ConfigError, match="source_scale"):
        agents.env.AlignConfig(source_scale=float("inf"))
    with pytest.raises(ConfigError, match="energies_eV"):
        agents.env.AlignConfig(energies_eV=(0.0,))


# --------------------------------------------------------------------------- agents
@pytest.fixture(scope="module")
def mono_settings():
    return BenchSettings(rays=2000, budget=40, noise=True)


@pytest.fixture(scope="module")
def mono_refs(desc, mono_settings):
    return References.of(desc, mono_settings, 21)  # the warm-start test's beamline


@pytest.mark.parametrize("name", list(AGENTS))
def test_every_agent_runs_a_trial(desc, name, mono_settings):
    agent = make_agent(name)
    settings = mono_settings if name not in ("bo", "model") else BenchSettings(
        rays=2000, budget=12, noise=True)
    res = stage_trial(desc, "mono", agent, seed=3, settings=settings)
    assert res.agent == agent.name and res.stage == "mono"
    assert 1 <= res.evaluations <= settings.budget
    assert len(res.foms) == res.evaluations
    assert res.beamline_time_s > 0 and res.optimizer_s >= 0
    assert set(res.final) >= {"fom", "flux_ratio", "fwhm_ratio", "offset_um", "success",
                              "measured_fom"}
    assert res.counted_evaluations == (res.evaluations if res.success else res.budget)


def test_the_operators_scan_aligns_the_monochromator(desc, mono_settings):
    wins = [stage_trial(desc, "mono", ScanAgent(), seed=s, settings=mono_settings).success
            for s in range(3)]
    assert sum(wins) >= 2


def test_same_seed_gives_every_agent_the_same_beamline(desc, mono_settings):
    a = stage_trial(desc, "mono", RandomAgent(), seed=8, settings=mono_settings)
    b = stage_trial(desc, "mono", ScanAgent(), seed=8, settings=mono_settings)
    assert a.foms[0] == b.foms[0]  # both start from the same misaligned beamline


def test_bayesian_optimisation_warm_starts_from_earlier_data(desc, mono_refs):
    """With the optimum of an earlier run in its data, BO goes there at once."""
    st = stage(desc, "mono")
    hidden = HiddenErrors.draw(desc, 1.0, 21)
    hidden = HiddenErrors({m: v for m, v in hidden.offsets.items() if m in st.motors})
    bl = TwinBeamline(desc, hidden=hidden, seed=21, rays=2000, disturbances=False)
    prob = AlignmentProblem(bl, st, Objective.at(st, mono_refs.measured),
                            span=default_span(desc, st), budget=10)
    ideal = prob.to_u(hidden.ideal_positions(desc))
    agent = BayesOptAgent(warm_start=[(ideal, 1.0)], n_init=0)
    u = agent.run(prob, np.random.default_rng(0))
    final = prob.finish(u)
    assert final.fom > 0.8
    assert prob.evaluations <= 6


@pytest.mark.parametrize("every", [1, 3])
def test_bayesian_optimisation_refits_its_hyperparameters_every_k_evaluations(desc, every,
                                                                              monkeypatch):
    import botorch.fit

    calls = []
    real = botorch.fit.fit_gpytorch_mll
    monkeypatch.setattr(botorch.fit, "fit_gpytorch_mll",
                        lambda mll, **kw: calls.append(1) or real(mll, **kw))
    st = stage(desc, "mono")
    hidden = HiddenErrors({"dcm.pitch2": 12.0})
    bl = TwinBeamline(desc, hidden=hidden, seed=2, backend="fast", rays=1000, disturbances=False)
    ref = TwinBeamline(desc, seed=2, backend="fast", rays=1000, disturbances=False)
    ref_obs = ref.acquire()
    prob = AlignmentProblem(bl, st, Objective.at(st, {d: ref_obs.reading(d).stats
                                                      for d in st.diagnostics}),
                            span=default_span(desc, st), budget=14)
    BayesOptAgent(refit_every=every, stop_fom=2.0).run(prob, np.random.default_rng(0))
    model_steps = prob.evaluations - 1 - 3  # start, 3 Sobol points, then one per model step
    assert len(calls) == -(-model_steps // every)  # ceil
