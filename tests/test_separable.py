"""Separable refinement: one simplex per focusing plane (agents/separable.py), and the
per-plane GPs of Bayesian optimisation on a KB pair (agents/bayes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from agents.harness import BenchSettings, References, stage_trial
from agents.model_based import ModelBasedAgent
from agents.objective import Objective
from agents.problem import AlignmentProblem, default_span
from agents.separable import SeparableSimplex, focusing_planes, nelder_mead
from agents.stages import stage
from twin.hidden import HiddenErrors
from twin.simulator import TwinBeamline


def _minimise(f, x0, step, **kw):
    gen = nelder_mead(np.asarray(x0, dtype=float), step, **kw)
    x = next(gen)
    n = 0
    try:
        while True:
            n += 1
            x = gen.send(f(x))
    except StopIteration as done:
        return done.value, n


def test_the_simplex_coroutine_finds_a_minimum_in_the_box():
    target = np.array([0.3, -0.2, 0.1])
    best, n = _minimise(lambda x: float(np.sum((x - target) ** 2 * [1, 10, 100])),
                        [0.0, 0.0, 0.0], 0.2, xatol=1e-4, fatol=1e-10)
    np.testing.assert_allclose(best, target, atol=1e-3)
    assert n < 400
    # a minimum outside the box: it stays inside, at the wall
    best, _ = _minimise(lambda x: float((x[0] - 3.0) ** 2), [0.0], 0.2, xatol=1e-4,
                        fatol=1e-10)
    assert best[0] == pytest.approx(1.0)


def test_kb_motors_split_by_the_plane_each_mirror_focuses(desc):
    st = stage(desc, "kb")
    planes = focusing_planes(desc, st)
    assert [st.motors[i] for i in planes["x"]] == ["kb_h.pitch", "kb_h.height", "kb_h.bend"]
    assert [st.motors[i] for i in planes["y"]] == ["kb_v.pitch", "kb_v.height", "kb_v.bend"]
    assert focusing_planes(desc, stage(desc, "mono")) is None  # not mirrors
    assert focusing_planes(desc, stage(desc, "m1")) is None  # one plane only


@pytest.fixture(scope="module")
def fast_kb(desc):
    settings = BenchSettings(rays=3000, budget=60, noise=True, backend="fast")
    return settings, References.of(desc, settings, 4)


def test_separable_refinement_focuses_a_slightly_misaligned_kb(desc, fast_kb):
    settings, refs = fast_kb
    st = stage(desc, "kb")
    hidden = HiddenErrors({"kb_h.bend": 1.0, "kb_v.bend": -0.3, "kb_v.pitch": 2.0})
    bl = TwinBeamline(desc, hidden=hidden, seed=4, backend="fast", rays=3000,
                      disturbances=False)
    prob = AlignmentProblem(bl, st, Objective(st, refs.measured["sample"]),
                            span=default_span(desc, st), budget=60)
    start = prob.observe_start()
    assert start.fom < 0.5
    u = SeparableSimplex().continue_from(prob, start, focusing_planes(desc, st))
    final = prob.finish(u)
    truth = Objective(st, refs.true["sample"]).judge(bl.ground_truth())
    assert truth.success, (final.judgement, truth)
    assert prob.evaluations <= 60


@pytest.mark.slow
def test_model_agent_aligns_the_kb_with_it(desc, fast_kb):
    settings, refs = fast_kb
    res = stage_trial(desc, "kb", ModelBasedAgent(), seed=2, settings=settings)
    assert res.success and res.evaluations <= settings.budget


def _kb_problem(desc, refs, hidden, budget):
    st = stage(desc, "kb")
    bl = TwinBeamline(desc, hidden=HiddenErrors(hidden), seed=4, backend="fast", rays=3000,
                      disturbances=False)
    prob = AlignmentProblem(bl, st, Objective(st, refs.measured["sample"]),
                            span=default_span(desc, st), budget=budget)
    return st, bl, prob


def test_bayesian_optimisation_runs_one_gp_per_plane_and_holds_a_plane_in_focus(desc, fast_kb):
    """Only KB-V is misaligned: the horizontal plane, once measured in focus, holds its
    point while the vertical GP searches, and the pair ends aligned."""
    from agents.bayes import BayesOptAgent

    settings, refs = fast_kb
    st, bl, prob = _kb_problem(desc, refs, {"kb_v.pitch": -4.0, "kb_v.bend": 0.4}, budget=100)
    moves = []
    evaluate = prob.evaluate
    prob.evaluate = lambda u: moves.append(np.asarray(u, float).copy()) or evaluate(u)
    u = BayesOptAgent().run(prob, np.random.default_rng(0))
    prob.finish(u)
    truth = Objective(st, refs.true["sample"]).judge(bl.ground_truth())
    assert truth.success, truth
    planes = focusing_planes(desc, st)
    x, y = planes["x"], planes["y"]
    held = [i for i in range(1, len(moves)) if np.array_equal(moves[i][x], moves[i - 1][x])
            and not np.array_equal(moves[i][y], moves[i - 1][y])]
    assert held, "the horizontal plane never held its point"


def test_bayesian_optimisation_with_planes_off_runs_one_joint_gp(desc, fast_kb):
    """planes=False runs the one GP over every motor on a KB pair too."""
    from agents.bayes import BayesOptAgent

    settings, refs = fast_kb
    st, bl, prob = _kb_problem(desc, refs, {"kb_v.bend": 0.4}, budget=8)
    calls = []
    agent = BayesOptAgent(planes=False)
    agent._run_planes = lambda *a, **k: calls.append("planes")
    joint = agent._run_joint
    agent._run_joint = lambda *a, **k: calls.append("joint") or joint(*a, **k)
    agent.run(prob, np.random.default_rng(0))
    assert calls == ["joint"] and 1 < prob.evaluations <= 8
    assert BayesOptAgent().planes  # the default splits a KB pair


def test_bayesian_optimisation_that_never_sees_the_beam_returns_to_the_start(desc, fast_kb):
    """Both heights far beyond the beam search: every reading is dark, and BO hands back
    the start instead of a point it never saw a beam at."""
    from agents.bayes import BayesOptAgent

    settings, refs = fast_kb
    st, bl, prob = _kb_problem(desc, refs, {"kb_h.height": 400.0, "kb_v.height": 400.0},
                               budget=30)
    u = BayesOptAgent().run(prob, np.random.default_rng(0))
    assert prob.evaluations == 30 - 1  # the whole budget searched, one kept for the finish
    np.testing.assert_array_equal(u, np.zeros(len(st.motors)))


def test_height_for_centre_solves_a_linear_centroid_model():
    from agents.bayes import height_for_centre

    rng = np.random.default_rng(3)
    a, b, d, e = 40.0, -25.0, 3.0, 7.0  # um per agent unit, and an offset
    pts = rng.uniform(-0.5, 0.5, size=(6, 3))
    readings = [(m, a * m[0] + b * m[1] + d * m[2] + e) for m in pts]
    h = height_for_centre(readings, target_um=2.0, pitch=0.1, bend=-0.2)
    assert a * 0.1 + b * h + d * -0.2 + e == pytest.approx(2.0, abs=1e-3)
    # too few readings, a height that moves nothing, a target beyond the box
    assert height_for_centre(readings[:3], 2.0, 0.1, -0.2) is None
    flat = [(m, a * m[0] + e) for m in pts]
    assert height_for_centre(flat, 2.0, 0.1, -0.2) is None
    assert height_for_centre(readings, 1e6, 0.1, -0.2) == -1.0


def test_plane_loss_and_bo_refuse_an_unknown_size(desc):
    from agents.bayes import BayesOptAgent
    from agents.separable import plane_loss
    from twin.errors import ConfigError

    with pytest.raises(ConfigError, match="'fwhm' or 'rms'.*'area'"):
        plane_loss(None, "sample", "x", size="area")
    with pytest.raises(ConfigError, match="plane_size.*'area'"):
        BayesOptAgent(plane_size="area")
    with pytest.raises(ConfigError, match="plane_length.*nan"):
        BayesOptAgent(plane_length=float("nan"))


def test_bayesian_optimisation_steers_each_height_from_its_centroid_fit(desc, fast_kb,
                                                                         monkeypatch):
    """After the Sobol start each plane's GP proposes pitch and bender, and every height the
    centroid fit gives is the one sent; with steering off the fit is never asked."""
    import agents.bayes as bayes

    settings, refs = fast_kb
    st, bl, prob = _kb_problem(desc, refs, {"kb_v.pitch": -4.0, "kb_v.bend": 0.4}, budget=40)
    given = []
    fit = bayes.height_for_centre
    monkeypatch.setattr(bayes, "height_for_centre",
                        lambda *a: given.append(fit(*a)) or given[-1])
    moves = []
    evaluate = prob.evaluate
    prob.evaluate = lambda u: moves.append(np.asarray(u, float).copy()) or evaluate(u)
    bayes.BayesOptAgent().run(prob, np.random.default_rng(0))
    heights = [st.motors.index("kb_h.height"), st.motors.index("kb_v.height")]
    sent = {round(float(m[i]), 12) for m in moves for i in heights}
    steered = [h for h in given if h is not None]
    assert steered, "the height never followed the centroid fit"
    assert {round(h, 12) for h in steered} <= sent
    with_off = bayes.BayesOptAgent(steer_height=False)
    given.clear()
    st, bl, prob = _kb_problem(desc, refs, {"kb_v.pitch": -4.0, "kb_v.bend": 0.4}, budget=12)
    with_off.run(prob, np.random.default_rng(0))
    assert given == []  # off: the GPs search the heights themselves
