"""The twin as a function: determinism, caching, hidden errors, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twin import (
    ConfigError,
    DisturbanceState,
    HiddenErrors,
    LimitError,
    NonFiniteError,
    Twin,
    UnknownNameError,
)


def test_same_seed_same_observation(desc):
    a = Twin(desc, rays=3000).trace({"kb_v.pitch": 3.0}, seed=5).to_dict()
    b = Twin(desc, rays=3000).trace({"kb_v.pitch": 3.0}, seed=5).to_dict()
    assert a == b


def test_different_seeds_draw_different_rays(xrt_twin):
    a = xrt_twin.trace(seed=1).detector.stats
    b = xrt_twin.trace(seed=2).detector.stats
    assert a.centroid_x_um != b.centroid_x_um


def test_cached_retrace_equals_a_full_trace(xrt_twin, desc):
    xrt_twin.trace(seed=3)
    cached = xrt_twin.trace({"kb_v.pitch": 7.0}, seed=3)
    fresh = Twin(desc, rays=xrt_twin.rays).trace({"kb_v.pitch": 7.0}, seed=3)
    assert cached.to_dict() == fresh.to_dict()


def test_a_mirror_move_never_regenerates_the_source(xrt_twin):
    xrt_twin.trace(seed=4)
    builds = xrt_twin.backend.stats["source_builds"]
    reused = xrt_twin.backend.stats["stages_reused"]
    xrt_twin.trace({"kb_v.pitch": 2.0}, seed=4)
    xrt_twin.trace({"m1.pitch": 1.0}, seed=4)
    assert xrt_twin.backend.stats["source_builds"] == builds
    assert xrt_twin.backend.stats["stages_reused"] > reused
    xrt_twin.trace({"undulator.gap": 7.3}, seed=4)  # a gap move does
    assert xrt_twin.backend.stats["source_builds"] == builds + 1


def test_hidden_errors_are_seeded_and_scale(desc):
    a = HiddenErrors.draw(desc, 1.0, 7)
    assert a == HiddenErrors.draw(desc, 1.0, 7)
    assert a.offsets != HiddenErrors.draw(desc, 1.0, 8).offsets
    assert all(v == 0 for v in HiddenErrors.draw(desc, 0.0, 7).offsets.values())
    two = HiddenErrors.draw(desc, 2.0, 7)
    m = "kb_v.pitch"
    assert two.offset(m) == pytest.approx(2 * a.offset(m))
    # the ring's knobs at the source have no hidden error and draw nothing
    assert desc.knob_motors() and set(a.offsets) == set(desc.motors) - desc.knob_motors()
    assert all(a.offset(k) == 0 for k in desc.knob_motors())
    for name, v in a.offsets.items():
        assert abs(v) <= 3 * desc.motor(name).misalign_sigma + 1e-12
    with pytest.raises(ConfigError):
        HiddenErrors.draw(desc, float("nan"), 1)


def test_misalignment_degrades_and_perfect_alignment_recovers_the_ideal_beam(xrt_twin, desc):
    ideal = xrt_twin.trace(seed=6).diagnostics["sample"].stats
    hidden = HiddenErrors.draw(desc, 1.0, 6)
    bad = xrt_twin.trace(hidden=hidden, seed=6).diagnostics["sample"].stats
    assert math.hypot(bad.centroid_x_um - ideal.centroid_x_um,
                      bad.centroid_y_um - ideal.centroid_y_um) > 1.0
    fixed = xrt_twin.trace(hidden.ideal_positions(desc), hidden=hidden,
                           seed=6).diagnostics["sample"].stats
    for k in ("flux", "centroid_x_um", "centroid_y_um", "fwhm_x_um", "fwhm_y_um"):
        assert getattr(fixed, k) == pytest.approx(getattr(ideal, k), rel=1e-6, abs=1e-6), k


@pytest.mark.parametrize(
    ("value", "error"),
    [(float("nan"), NonFiniteError), (float("inf"), NonFiniteError),
     (-float("inf"), NonFiniteError), (1e308, LimitError),
     (math.nextafter(500.0, math.inf), LimitError), (None, NonFiniteError),
     ("5", NonFiniteError), (True, NonFiniteError)],
)
def test_bad_positions_are_refused_before_anything_is_traced(xrt_twin, value, error):
    traced = xrt_twin.backend.stats["stages_traced"]
    with pytest.raises(error, match="kb_v.pitch"):
        xrt_twin.trace({"kb_v.pitch": value}, seed=0)
    assert xrt_twin.backend.stats["stages_traced"] == traced


def test_unknown_motor_lists_the_known_ones(xrt_twin):
    with pytest.raises(UnknownNameError, match="kb_v.pitch"):
        xrt_twin.trace({"kb_v.ptich": 1.0})


def test_unknown_backend_and_bad_rays(desc):
    with pytest.raises(UnknownNameError, match="available backends: xrt"):
        Twin(desc, backend="warp")
    with pytest.raises(ConfigError, match="rays"):
        Twin(desc, rays=10)


def test_noise_is_seeded_and_unbiased(xrt_twin):
    a = xrt_twin.trace(seed=9, noise=True)
    b = xrt_twin.trace(seed=9, noise=True)
    clean = xrt_twin.trace(seed=9)
    assert np.array_equal(a.detector.image, b.detector.image)
    assert not np.array_equal(a.detector.image, clean.detector.image)
    assert a.detector.stats.flux == pytest.approx(clean.detector.stats.flux, rel=0.01)
    assert a.diagnostics["i0"].stats.flux == pytest.approx(
        clean.diagnostics["i0"].stats.flux, rel=0.01)


def test_flux_scales_with_ring_current(xrt_twin):
    full = xrt_twin.trace(seed=2).detector.stats.flux
    half = xrt_twin.trace(seed=2, disturbance=DisturbanceState(ring_current_mA=100.0))
    assert half.detector.stats.flux == pytest.approx(0.5 * full, rel=1e-9)
    assert half.ring_current_mA == 100.0


def test_images_are_photons_per_second_per_pixel(xrt_twin):
    obs = xrt_twin.trace(seed=2)
    det = obs.detector
    assert det.image.shape == (256, 256)
    assert det.image.sum() == pytest.approx(det.stats.flux, rel=1e-9)
