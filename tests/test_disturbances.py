"""Disturbance model: drift, vibration, gap-dependent source with hysteresis, ring."""

from __future__ import annotations

import numpy as np
import pytest

from twin import DisturbanceModel


def test_drift_starts_at_zero_and_stays_within_its_amplitude(desc):
    model = DisturbanceModel(desc, seed=1)
    amp = desc.disturbances.thermal_drift.amplitudes["dcm.pitch2"]
    assert model.drift("dcm.pitch2", 0.0) == 0.0
    values = [model.drift("dcm.pitch2", t) for t in np.linspace(0, 20000, 400)]
    assert max(abs(v) for v in values) <= 2 * amp
    assert np.std(values) > 0.1 * amp
    assert model.drift("undulator.gap", 100.0) == 0.0


def test_vibration_has_the_configured_rms_and_is_replayable(desc):
    model = DisturbanceModel(desc, seed=2)
    rms = desc.disturbances.vibration.rms["dcm.pitch2"]
    v = np.array([model.vibration("dcm.pitch2", t * 1e-3) for t in range(3000)])
    assert np.std(v) == pytest.approx(rms, rel=0.1)
    assert model.vibration("dcm.pitch2", 1.234) == model.vibration("dcm.pitch2", 1.234)


def test_gap_dependence_is_smooth_nonlinear_bounded_and_hysteretic(desc):
    model = DisturbanceModel(desc, seed=3)
    cfg = desc.disturbances.source_gap
    gaps = np.linspace(6, 30, 49)
    up = np.array([model.source(g, +1).dx_um for g in gaps])
    down = np.array([model.source(g, -1).dx_um for g in gaps])
    assert np.max(np.abs(up)) <= 2 * cfg.position_x_um
    assert np.max(np.abs(up - down)) > 0.1 * cfg.position_x_um  # hysteresis
    second = np.diff(up, 2)
    assert np.max(np.abs(second)) > 1e-4  # not linear
    sizes = np.array([model.source(g, 1).size_y_scale for g in gaps])
    assert np.all(np.abs(sizes - 1) <= 2 * cfg.size_y_pct / 100)


def test_ring_current_decays_and_tops_up(desc):
    model = DisturbanceModel(desc, seed=4)
    period = desc.disturbances.ring.topup_period_s
    before, _ = model.ring(period - 1)
    after, _ = model.ring(period + 1)
    assert before < after <= 200.0
    assert model.ring(0.0) == (200.0, True)


def test_everything_can_be_switched_off(desc):
    model = DisturbanceModel(desc, seed=5, enabled=False)
    s = model.state(1234.5, gap_mm=10.0)
    assert not s.axis_offsets and s.ring_current_mA == 200.0
    assert s.source.dx_um == 0.0 and s.beam_available
