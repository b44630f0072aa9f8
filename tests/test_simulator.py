"""TwinBeamline: the protocol, the clock, motor imperfections and disturbances."""

from __future__ import annotations

import dataclasses
import math

import pytest

from twin import LimitError, MovableBeamline, NonFiniteError, TwinBeamline, UnknownNameError
from twin.description import (
    Disturbances,
    MotorImperfections,
    RingCurrent,
    SourceGapDependence,
    ThermalDrift,
    Vibration,
)

QUIET = Disturbances(thermal_drift=ThermalDrift(enabled=False), vibration=Vibration(enabled=False),
                     source_gap=SourceGapDependence(enabled=False),
                     ring=RingCurrent(enabled=False),
                     motors=MotorImperfections(backlash=False, encoder_error=False))


def _line(desc, **dist):
    return dataclasses.replace(desc, disturbances=dataclasses.replace(QUIET, **dist))


def test_it_is_a_movable_beamline_and_hides_its_errors(desc):
    bl = TwinBeamline(desc, rays=2000)
    assert isinstance(bl, MovableBeamline)
    motors = bl.motors()
    assert set(motors) == set(desc.motors)
    assert not any("misalign" in f for f in dataclasses.asdict(motors["kb_v.pitch"]))


def test_moves_cost_travel_time_and_acquisitions_cost_exposure(desc):
    bl = TwinBeamline(_line(desc), rays=2000, noise=False)
    bl.move({"kb_v.pitch": 10.0, "kb_h.pitch": 2.0})  # 20 urad/s: 0.5 s, in parallel
    assert bl.time_s == pytest.approx(0.5)
    bl.acquire(0.25)
    assert bl.time_s == pytest.approx(0.75)
    assert bl.positions()["kb_v.pitch"] == pytest.approx(10.0)


def test_a_bad_target_moves_nothing(desc):
    bl = TwinBeamline(desc, rays=2000)
    before = bl.positions()
    for targets, error in [({"kb_v.pitch": 1.0, "kb_h.pitch": float("nan")}, NonFiniteError),
                           ({"kb_v.pitch": 1.0, "kb_h.pitch": 1e4}, LimitError),
                           ({"kb_v.pitch": 1.0, "kb_x.pitch": 1.0}, UnknownNameError)]:
        with pytest.raises(error):
            bl.move(targets)
        assert bl.positions() == before
        assert bl.time_s == 0.0


def test_backlash_leaves_lost_motion_after_a_negative_move(desc):
    bl = TwinBeamline(_line(desc, motors=MotorImperfections(backlash=True, encoder_error=False)),
                      rays=3000, noise=False)
    bl.move({"sample.x": -5.0})
    bl.move({"sample.x": 0.0})  # approached from below: exact
    from_below = bl.acquire().diagnostics["sample"].stats.centroid_x_um
    bl.move({"sample.x": 5.0})
    bl.move({"sample.x": 0.0})  # approached from above: 0.1 um lost motion
    from_above = bl.acquire().diagnostics["sample"].stats.centroid_x_um
    assert from_above - from_below == pytest.approx(0.1, abs=1e-6)


def test_encoder_error_shows_in_the_readback_only(desc):
    bl = TwinBeamline(_line(desc, motors=MotorImperfections(backlash=False, encoder_error=True)),
                      rays=2000, noise=False)
    bl.move({"kb_v.pitch": 5.0})
    rb = bl.positions()["kb_v.pitch"]
    assert rb != 5.0 and abs(rb - 5.0) < 5 * desc.motor("kb_v.pitch").encoder_error


def test_beam_loss_and_ring_decay(desc):
    bl = TwinBeamline(_line(desc, ring=RingCurrent(lifetime_h=20.0, topup_period_s=0.0)),
                      rays=2000, noise=False)
    f0 = bl.acquire().detector.stats.flux
    bl.wait(1800.0)
    f1 = bl.acquire().detector.stats.flux
    assert f1 / f0 == pytest.approx(math.exp(-1800.1 / (20 * 3600)),
                                    rel=1e-6)
    bl.inject_beam_loss()
    obs = bl.acquire()
    assert obs.detector.stats.flux == 0.0 and obs.ring_current_mA == 0.0
    bl.inject_beam_loss(False)
    assert bl.acquire().detector.stats.flux > 0


def test_gap_dependent_source_moves_the_beam_and_is_hidden(desc):
    bl = TwinBeamline(_line(desc, source_gap=SourceGapDependence()), rays=3000, noise=False)
    a = bl.acquire().diagnostics["dcm_bpm"].stats
    bl.move({"undulator.gap": desc.motor("undulator.gap").position + 0.3})
    b = bl.acquire().diagnostics["dcm_bpm"].stats
    assert (a.centroid_x_um, a.centroid_y_um) != (b.centroid_x_um, b.centroid_y_um)


def test_quiet_beamline_is_repeatable_and_noisy_one_is_seeded(desc):
    quiet = TwinBeamline(_line(desc), rays=2000, noise=False)
    assert quiet.acquire().to_dict() == quiet.acquire().to_dict()
    a = TwinBeamline(desc, rays=2000, seed=4).acquire().to_dict()
    b = TwinBeamline(desc, rays=2000, seed=4).acquire().to_dict()
    assert a == b
    with pytest.raises(NonFiniteError):
        quiet.acquire(float("nan"))
