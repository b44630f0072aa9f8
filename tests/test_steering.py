"""Response-matrix steering (agents/steering.py) on the fast twin: the upstream stages
pointed at the KB, and the sample put under the focus."""

from __future__ import annotations

import numpy as np
import pytest

from agents.harness import BenchSettings, References, stage_trial
from agents.objective import Objective
from agents.problem import AlignmentProblem, default_span
from agents.stages import stage
from agents.steering import ResponseSteering, SteerAgent
from twin import default_preset
from twin.hidden import HiddenErrors
from twin.simulator import TwinBeamline


@pytest.fixture(scope="module")
def desc():
    return default_preset()


@pytest.fixture(scope="module")
def settings():
    return BenchSettings(rays=3000, budget=40, noise=True, backend="fast")


@pytest.mark.parametrize("name", ["m1", "mono"])
def test_steering_points_the_upstream_stages_at_the_kb(desc, settings, name):
    """A probe per motor and a Gauss-Newton step: aligned, pointing included, in a few
    evaluations (Nelder-Mead needed 21-37 on the same stages)."""
    results = [stage_trial(desc, name, SteerAgent(), seed=s, settings=settings)
               for s in (1, 2, 3)]
    assert all(r.success for r in results), [r.final for r in results]
    assert all(r.evaluations <= 10 for r in results), [r.evaluations for r in results]
    st = stage(desc, name)
    for r in results:
        assert len(r.final["pointing_um"]) == len(st.pointing_terms)
        assert all(abs(p) <= st.pointing_um for p in r.final["pointing_um"])


def test_steering_moves_the_sample_under_the_focus_and_leaves_its_focus_alone(desc):
    """Sample x and y move the beam on the sample one for one; z hardly at all, so the
    pseudo-inverse leaves z where it is."""
    st = stage(desc, "sample")
    s = BenchSettings(rays=3000, noise=False, backend="fast")
    refs = References.of(desc, s, seed=4)
    bl = TwinBeamline(desc, hidden=HiddenErrors({"sample.x": 12.0, "sample.y": -9.0}),
                      seed=4, backend="fast", rays=3000, noise=False, disturbances=False)
    prob = AlignmentProblem(bl, st, Objective.at(st, refs.measured),
                            span=default_span(desc, st), budget=20)
    start = prob.observe_start()
    steering = ResponseSteering()
    best = steering.run_from(prob, start)
    iz = st.motors.index("sample.z")
    assert steering.unsteered == [iz]
    assert best.u[iz] == pytest.approx(start.u[iz], abs=1e-9)
    assert np.all(np.abs(prob.objective.residuals(best.observation)) < 0.8)
    assert best.judgement.success and prob.evaluations <= 8


def test_steering_without_positions_to_null_is_the_separable_search(desc, settings):
    """The KB stage is judged by focus alone: nothing to steer, no probes spent."""
    st = stage(desc, "kb")
    refs = References.of(desc, settings, seed=2)
    bl = TwinBeamline(desc, hidden=HiddenErrors({"kb_v.pitch": 3.0}), seed=2, backend="fast",
                      rays=3000, disturbances=False)
    prob = AlignmentProblem(bl, st, Objective.at(st, refs.measured),
                            span=default_span(desc, st), budget=10)
    start = prob.observe_start()
    assert ResponseSteering().run_from(prob, start) is start
    assert prob.evaluations == 1


def test_the_vertex_of_a_parabola_and_its_guards():
    from agents.bender_focus import vertex

    x = np.array([-1.0, 0.0, 1.0])
    assert vertex(x, (x - 0.3) ** 2 + 2.0, 1.0) == pytest.approx(0.3)
    # opening downwards or flat: towards the lowest point, two steps beyond at most
    assert vertex(x, np.array([1.0, 2.0, 3.0]) * -1.0, 1.0) == pytest.approx(3.0)
    assert vertex(x, np.array([1.0, 1.0, 1.0]), 1.0) == pytest.approx(0.0)
    assert vertex(x, (x - 9.0) ** 2, 1.0) == pytest.approx(3.0)  # clipped


def test_the_bender_focus_finds_a_kb_focus_that_a_pitch_error_hides(desc, settings):
    """A KB-V pitch error that the bender alone cannot hide (1.5x at the best bend):
    focus, then trim the pitch, then focus again."""
    from agents.bender_focus import BenderFocus
    from agents.separable import focusing_planes

    st = stage(desc, "kb")
    refs = References.of(desc, settings, seed=3)
    hidden = HiddenErrors({"kb_v.pitch": 8.0, "kb_v.bend": 0.6, "kb_h.bend": -2.0})
    bl = TwinBeamline(desc, hidden=hidden, seed=3, backend="fast", rays=3000,
                      disturbances=False)
    prob = AlignmentProblem(bl, st, Objective.at(st, refs.measured),
                            span=default_span(desc, st), budget=60)
    start = prob.observe_start()
    assert start.judgement.fwhm_y_ratio > 3
    best = BenderFocus().continue_from(prob, start, focusing_planes(desc, st))
    assert best.judgement.fwhm_y_ratio < 1.1 and best.judgement.fwhm_x_ratio < 1.1
    assert prob.evaluations <= 45
    prob.finish(best.u)
    truth = Objective.at(st, refs.true).judge(bl.ground_truth())
    assert truth.success, truth
