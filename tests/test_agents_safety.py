"""The safety layer between agents and motors (RELIABILITY.md R1, R2, R4, R10).

The beamline under the safety layer is the real twin (xrt); a recording wrapper
counts every move that reaches it, so the tests can show that a refused move
never does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.objective import Objective
from agents.problem import AlignmentProblem, default_span
from agents.safety import (
    BudgetError,
    DivergenceError,
    EnvelopeError,
    SafeBeamline,
    SafetyConfig,
    StepCapError,
)
from agents.stages import stage
from twin.errors import ConfigError, NonFiniteError, UnknownNameError
from twin.hidden import HiddenErrors
from twin.protocol import MotorInfo
from twin.simulator import TwinBeamline


class Recorder:
    """A MovableBeamline wrapper that records every move reaching the machine."""

    def __init__(self, inner):
        self.inner = inner
        self.moves: list[dict[str, float]] = []

    def motors(self):
        return self.inner.motors()

    def positions(self):
        return self.inner.positions()

    def move(self, targets):
        self.moves.append(dict(targets))
        self.inner.move(targets)

    def acquire(self, exposure_s=None):
        return self.inner.acquire(exposure_s)

    @property
    def time_s(self):
        return self.inner.time_s


@pytest.fixture(scope="module")
def twin_beamline(desc, xrt_twin):
    return TwinBeamline(desc, hidden=HiddenErrors.draw(desc, 1.0, 5), seed=5, noise=False,
                        disturbances=False, twin=xrt_twin)


@pytest.fixture()
def safe(twin_beamline):
    rec = Recorder(twin_beamline)
    here = rec.positions()
    env = {"kb_v.pitch": (here["kb_v.pitch"] - 40.0, here["kb_v.pitch"] + 40.0),
           "kb_v.height": (here["kb_v.height"] - 80.0, here["kb_v.height"] + 80.0)}
    return SafeBeamline(rec, env, SafetyConfig(step_cap=0.25, max_moves=50)), rec


BAD_VALUES = [math.nan, math.inf, -math.inf, 1e308, -1e308, None, "5", True]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_bad_values_are_refused_and_nothing_moves(safe, bad):
    sb, rec = safe
    with pytest.raises((NonFiniteError, EnvelopeError)) as err:
        sb.move({"kb_v.pitch": bad})
    assert "kb_v.pitch" in str(err.value)
    assert rec.moves == []
    assert sb.refusals and sb.refusals[-1]["axis"] == "kb_v.pitch"


def test_one_ulp_outside_the_envelope_is_refused(safe):
    sb, rec = safe
    lo, hi = sb.envelope("kb_v.pitch")
    # walk to the edge in allowed steps, then try 1 ULP beyond
    sb.move_stepwise({"kb_v.pitch": hi})
    n = len(rec.moves)
    with pytest.raises(EnvelopeError, match=r"outside the envelope"):
        sb.move({"kb_v.pitch": float(np.nextafter(hi, math.inf))})
    assert len(rec.moves) == n
    sb.return_to_safe()
    assert rec.positions()["kb_v.pitch"] == pytest.approx(sb.start["kb_v.pitch"])


def test_unknown_and_unlisted_motors_are_refused(safe):
    sb, rec = safe
    with pytest.raises(UnknownNameError, match="allowlist"):
        sb.move({"m1.pitch": 0.0})  # a real motor, but not this run's
    with pytest.raises(UnknownNameError, match="allowlist"):
        sb.move({"kb_v.pitchh": 0.0})
    assert rec.moves == []


def test_step_cap_and_stepwise_moves(safe):
    sb, rec = safe
    cap = sb.step_cap("kb_v.pitch")
    start = sb.start["kb_v.pitch"]
    with pytest.raises(StepCapError, match="step cap"):
        sb.move({"kb_v.pitch": start + 1.5 * cap})
    assert rec.moves == []
    n = sb.move_stepwise({"kb_v.pitch": start + 1.75 * cap})
    assert n == 2 and len(rec.moves) == 2
    steps = np.diff([start] + [m["kb_v.pitch"] for m in rec.moves])
    assert np.all(np.abs(steps) <= cap * (1 + 1e-9))
    sb.return_to_safe()


def test_move_budget(twin_beamline):
    here = twin_beamline.positions()["kb_v.pitch"]
    sb = SafeBeamline(twin_beamline, {"kb_v.pitch": (here - 10, here + 10)},
                      SafetyConfig(max_moves=2))
    sb.move({"kb_v.pitch": here + 1})
    sb.move({"kb_v.pitch": here})
    with pytest.raises(BudgetError, match="budget"):
        sb.move({"kb_v.pitch": here + 1})


def test_axis_without_limits_is_refused(twin_beamline):
    class NoLimits(Recorder):
        def motors(self):
            m = self.inner.motors()
            info = m["kb_v.pitch"]
            m["kb_v.pitch"] = MotorInfo(info.name, info.units, 0.0, 0.0, info.resolution,
                                        info.speed)
            return m

    with pytest.raises(EnvelopeError, match="no usable soft limits"):
        SafeBeamline(NoLimits(twin_beamline), {"kb_v.pitch": (-1.0, 1.0)})


@pytest.mark.parametrize("bad", [{"step_cap": 0}, {"step_cap": math.nan}, {"max_moves": 0},
                                 {"divergence_count": 1.5}])
def test_safety_config_is_validated(bad):
    with pytest.raises(ConfigError):
        SafetyConfig(**bad)


# --------------------------------------------------------------------------- R10
@pytest.fixture(scope="module")
def kb_problem_factory(desc, xrt_twin):
    st = stage(desc, "kb")
    ref = xrt_twin.trace({}, seed=0).reading("sample").stats

    def make(seed: int = 5, **safety) -> tuple[AlignmentProblem, Recorder]:
        bl = TwinBeamline(desc, hidden=HiddenErrors.draw(desc, 1.0, seed), seed=seed,
                          noise=False, disturbances=False, twin=xrt_twin)
        rec = Recorder(bl)
        prob = AlignmentProblem(rec, st, Objective(st, ref), span=default_span(desc, st),
                                budget=60, trial=f"t{seed}", safety=SafetyConfig(**safety))
        return prob, rec

    return make


def _check_moves(prob: AlignmentProblem, rec: Recorder) -> None:
    here = dict(zip(prob.stage.motors, prob.x0, strict=True))
    for move in rec.moves:
        for name, value in move.items():
            lo, hi = prob.safe.envelope(name)
            assert math.isfinite(value) and lo <= value <= hi
            assert abs(value - here[name]) <= prob.safe.step_cap(name) * (1 + 1e-9)
            here[name] = value


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                   st.sampled_from([1.0, -1.0, 1e6, -1e6])),
                         min_size=6, max_size=6), min_size=1, max_size=6))
def test_agent_outputs_never_leave_the_envelope_or_exceed_the_cap(kb_problem_factory, points):
    """R10: random, NaN, saturating and adversarial points from an agent."""
    prob, rec = kb_problem_factory()
    for p in points:
        u = np.array(p, dtype=float)
        if not np.all(np.isfinite(u)):
            n = len(rec.moves)
            with pytest.raises(NonFiniteError):
                prob.evaluate(u)
            assert len(rec.moves) == n
        else:
            prob.evaluate(u)
    _check_moves(prob, rec)
    assert prob.evaluations <= prob.budget


def test_divergence_returns_every_axis_to_the_start(kb_problem_factory):
    prob, rec = kb_problem_factory(divergence_ratio=0.5, divergence_count=3)
    start = dict(zip(prob.stage.motors, prob.x0, strict=True))
    prob.observe_start()
    with pytest.raises(DivergenceError, match="back at its start"):
        for _ in range(10):  # an adversarial agent: always the far corner
            prob.evaluate(np.ones(prob.dim))
    here = rec.positions()
    for name, value in start.items():
        assert here[name] == pytest.approx(value, abs=prob.safe.inner.motors()[name].resolution)
    _check_moves(prob, rec)


def test_budget_is_enforced(kb_problem_factory):
    prob, _ = kb_problem_factory()
    prob.budget = 3
    for _ in range(3):
        prob.evaluate(np.zeros(prob.dim))
    with pytest.raises(BudgetError):
        prob.evaluate(np.zeros(prob.dim))
