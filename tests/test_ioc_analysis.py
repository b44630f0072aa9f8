"""Online analysis of frames (NDStats-like) and the event trigger, without Channel Access."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ioc_sim.analysis import EventTrigger, FrameStats, Roi, TriggerCondition, frame_stats
from twin.errors import ConfigError


def gaussian_frame(nx=200, ny=120, cx=80.3, cy=50.7, sx=6.0, sy=3.0, peak=1000.0,
                   dtype=np.int32) -> np.ndarray:
    x = np.arange(nx)[None, :]
    y = np.arange(ny)[:, None]
    f = peak * np.exp(-0.5 * ((x - cx) / sx) ** 2 - 0.5 * ((y - cy) / sy) ** 2)
    return np.rint(f).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float64])
def test_gaussian_statistics(dtype):
    f = gaussian_frame(dtype=dtype)
    s = frame_stats(f)
    w = f.astype(float)
    ys, xs = np.indices(f.shape)
    assert s.total == pytest.approx(w.sum())
    assert s.centroid_x == pytest.approx((xs * w).sum() / w.sum())
    assert s.centroid_y == pytest.approx((ys * w).sum() / w.sum())
    assert s.centroid_x == pytest.approx(80.3, abs=0.01)
    assert s.sigma_x == pytest.approx(6.0, rel=0.01)
    assert s.sigma_y == pytest.approx(3.0, rel=0.02)
    assert s.fwhm_x == pytest.approx(2.3548 * 6.0, rel=0.02)
    assert s.fwhm_y == pytest.approx(2.3548 * 3.0, rel=0.03)
    assert s.max_value == w.max() and s.min_value == w.min()


def test_roi_keeps_full_frame_coordinates():
    f = gaussian_frame() + gaussian_frame(cx=170.0, cy=20.0)
    s = frame_stats(f, Roi(min_x=140, min_y=0, size_x=60, size_y=50))
    assert s.centroid_x == pytest.approx(170.0, abs=0.05)
    assert s.centroid_y == pytest.approx(20.0, abs=0.05)
    assert Roi(min_x=500).slices(f.shape)[1] == slice(200, 200)
    with pytest.raises(ConfigError, match="empty"):
        frame_stats(f, Roi(min_x=500))


def test_empty_frame_has_no_centroid():
    s = frame_stats(np.zeros((10, 10), dtype=np.int32))
    assert s.total == 0 and math.isnan(s.centroid_x) and math.isnan(s.fwhm_y)


def test_beam_cut_by_the_edge_has_no_fwhm():
    s = frame_stats(gaussian_frame(cx=1.0))
    assert math.isnan(s.fwhm_x) and not math.isnan(s.fwhm_y)


def test_rejects_non_2d():
    with pytest.raises(ConfigError, match="2-D"):
        frame_stats(np.zeros(10))


def stats(total=100.0, cx=10.0, cy=10.0, sx=2.0, sy=2.0) -> FrameStats:
    return FrameStats(total=total, max_value=1, min_value=0, centroid_x=cx, centroid_y=cy,
                      sigma_x=sx, sigma_y=sy)


def test_centroid_shift_trigger_uses_the_first_frame_as_reference():
    t = EventTrigger(TriggerCondition.CENTROID_SHIFT, 3.0)
    assert not t.evaluate(stats())
    assert not t.evaluate(stats(cx=12.0))
    assert t.evaluate(stats(cx=12.5, cy=12.5))
    assert t.evaluate(stats(cx=math.nan, cy=math.nan))  # the beam vanished
    t.reset_reference()
    assert not t.evaluate(stats(cx=40.0))


def test_intensity_and_width_triggers():
    drop = EventTrigger(TriggerCondition.INTENSITY_DROP, 0.5)
    assert not drop.evaluate(stats(total=100))
    assert not drop.evaluate(stats(total=60))
    assert drop.evaluate(stats(total=40))
    above = EventTrigger(TriggerCondition.INTENSITY_ABOVE, 150)
    assert not above.evaluate(stats(total=100)) and above.evaluate(stats(total=151))
    width = EventTrigger(TriggerCondition.WIDTH_CHANGE, 0.1)
    assert not width.evaluate(stats())
    assert not width.evaluate(stats(sx=2.1))
    assert width.evaluate(stats(sy=2.5))


@pytest.mark.parametrize("cond,thr,msg", [(7, 1.0, "unknown trigger condition"),
                                          (0, math.nan, "finite"), (0, -1.0, ">= 0"),
                                          (1, 1.5, "fraction")])
def test_trigger_refuses_bad_settings(cond, thr, msg):
    with pytest.raises(ConfigError, match=msg):
        EventTrigger().configure(cond, thr)
