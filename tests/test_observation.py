"""Beam statistics: FWHM estimator, field-of-view clipping, image statistics."""

from __future__ import annotations

import numpy as np
import pytest

from twin.observation import BeamStats, beam_stats, fwhm, image_stats


@pytest.mark.parametrize("sigma", [0.03, 1.0, 250.0])
def test_fwhm_of_a_gaussian(sigma):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, sigma, 20000)
    assert fwhm(x, np.ones_like(x)) == pytest.approx(2.3548 * sigma, rel=0.05)


def test_fwhm_of_a_flat_top():
    x = np.random.default_rng(1).uniform(-1, 1, 20000)
    assert fwhm(x, np.ones_like(x)) == pytest.approx(2.0, rel=0.05)


def test_fwhm_needs_rays():
    assert np.isnan(fwhm(np.array([1.0, 2.0]), np.ones(2)))


def test_a_beam_half_off_the_field_of_view_loses_flux_not_size():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 10, 20000), rng.normal(0, 10, 20000)
    w = np.ones_like(x)
    centred = beam_stats(x, y, w, (200, 200))
    edge = beam_stats(x + 100, y, w, (200, 200))  # centroid on the edge of the FOV
    assert edge.flux == pytest.approx(0.5 * centred.flux, rel=0.05)
    assert centred.fwhm_x_um == pytest.approx(23.5, rel=0.06)


def test_no_beam_gives_nan_and_null_json():
    s = beam_stats(np.zeros(5), np.zeros(5), np.zeros(5), (1, 1))
    assert s.flux == 0 and np.isnan(s.centroid_x_um)
    assert s.to_dict()["centroid_x_um"] is None


def test_image_stats_agree_with_ray_stats():
    rng = np.random.default_rng(3)
    x, y = rng.normal(3, 20, 200000), rng.normal(-4, 10, 200000)
    w = np.full(x.size, 1e6)
    img, _, _ = np.histogram2d(y, x, bins=(200, 200), range=[[-200, 200], [-200, 200]], weights=w)
    s = image_stats(img, (-200, 200, -200, 200))
    r = beam_stats(x, y, w, (400, 400))
    assert isinstance(s, BeamStats)
    assert s.centroid_x_um == pytest.approx(r.centroid_x_um, abs=0.5)
    assert s.rms_y_um == pytest.approx(r.rms_y_um, rel=0.05)
    assert s.fwhm_x_um == pytest.approx(r.fwhm_x_um, rel=0.08)
