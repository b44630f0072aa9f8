"""Motor kinematics of the simulated motor record (no Channel Access)."""

from __future__ import annotations

import math

import pytest

from ioc_sim.motion import AxisMotion, Segment


def axis(**kw) -> AxisMotion:
    base = dict(position=0.0, velocity=1.0, accel_s=0.1, bdst=0.0, bvel=1.0,
                mechanical_backlash=0.0, travel_low=-10.0, travel_high=10.0, resolution=1e-3)
    base.update(kw)
    return AxisMotion(**base)


def test_trapezoid_reaches_target_at_slew_speed():
    seg = Segment(0.0, 0.0, 2.0, vmax=1.0, accel=10.0)
    # 0.1 s to accelerate (0.05 units), 0.1 s to stop (0.05), 1.9 s of cruise
    assert seg.duration == pytest.approx(2.1)
    p, v = seg.state(1.0)
    assert v == pytest.approx(1.0)
    assert p == pytest.approx(0.05 + 0.9)
    assert seg.state(5.0) == (2.0, 0.0)


def test_short_move_is_triangular_and_symmetric():
    seg = Segment(0.0, 1.0, 0.99, vmax=1.0, accel=10.0)
    vp = math.sqrt(10.0 * 0.01)
    assert seg.duration == pytest.approx(2 * vp / 10.0)
    p, v = seg.state(seg.duration / 2)
    assert p == pytest.approx(0.995)
    assert v == pytest.approx(-vp)


def test_move_quantises_and_takes_its_time():
    a = axis()
    target = a.move_to(1.23456, t=0.0)
    assert target == pytest.approx(1.235)
    assert a.moving(0.5)
    assert not a.moving(a.end_time() + 1e-9)
    assert a.state(100.0) == (pytest.approx(1.235), 0.0)


def test_backlash_correction_ends_every_move_positive():
    a = axis(bdst=0.2, bvel=0.5, mechanical_backlash=0.2)
    a.move_to(-1.0, t=0.0)
    # first to target - bdst, then the final approach upwards
    assert [s.end for s in a.segments] == [pytest.approx(-1.2), pytest.approx(-1.0)]
    t_end = a.end_time()
    assert a.state(t_end + 1) == (pytest.approx(-1.0), 0.0)
    assert a.last_direction == 1
    assert a.load_position(t_end + 1) == pytest.approx(-1.0)  # no lost motion


def test_without_correction_the_load_lags_after_a_negative_move():
    a = axis(bdst=0.0, mechanical_backlash=0.05)
    a.move_to(-1.0, t=0.0)
    t = a.end_time() + 1
    assert a.state(t)[0] == pytest.approx(-1.0)
    assert a.load_position(t) == pytest.approx(-1.05)
    a.move_to(0.0, t=t)
    assert a.load_position(a.end_time() + 1) == pytest.approx(0.0)


def test_stop_decelerates_and_rests_between_start_and_target():
    a = axis(velocity=1.0, accel_s=0.2)
    a.move_to(5.0, t=0.0)
    end = a.stop(1.0)
    p_stop, v = a.state(1.0)
    assert v == pytest.approx(1.0)
    assert end == pytest.approx(p_stop + 0.1, abs=1e-3)  # v^2 / 2a with a = 5 units/s^2
    assert a.state(10.0) == (pytest.approx(end, abs=1e-3), 0.0)
    assert 0 < end < 5.0


def test_new_target_while_moving_stops_then_goes_on():
    a = axis()
    a.move_to(5.0, t=0.0)
    a.move_to(-1.0, t=1.0)
    assert a.segments[0].direction == 1 and a.segments[-1].direction == -1
    assert a.state(100.0)[0] == pytest.approx(-1.0)


def test_hardware_travel_stops_the_motor_and_reports_the_switch():
    a = axis(travel_high=2.0)
    a.move_to(5.0, t=0.0)
    p, v = a.state(10.0)
    assert (p, v) == (2.0, 0.0)
    assert a.hit_high and not a.hit_low
