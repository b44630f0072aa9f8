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
