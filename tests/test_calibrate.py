"""Calibration recovers hidden errors from xrt-made observations (fast-twin gradients)."""

from __future__ import annotations

import numpy as np
import pytest

from twin import ConfigError, HiddenErrors, Twin
from twin.calibrate import calibrate

UPSTREAM = ["fe_slits.hcen", "fe_slits.vcen", "m1.pitch", "m1.height", "m1.roll", "m1.bend",
            "dcm.pitch2", "dcm.roll2", "dcm.perp"]
DIAGS = ["m1_screen", "dcm_bpm", "dcm_screen", "i0"]


def _scans(desc, motors, k=3.0):
    out = [{}]
    for m in motors:
        s = desc.motor(m)
        out += [{m: s.position + k * s.misalign_sigma}, {m: s.position - k * s.misalign_sigma}]
    return out


def test_upstream_calibration_recovers_errors_and_predicts_unseen_settings(desc):
    truth = HiddenErrors.draw(desc, 1.0, 21)
    real = Twin(desc, rays=4000)  # the "real" beamline: xrt, its own rays
    obs = [(c, real.trace(c, hidden=truth, seed=3))
           for c in _scans(desc, ["m1.pitch", "m1.bend", "dcm.pitch2", "dcm.roll2"])]
    res = calibrate(desc, obs, motors=UPSTREAM, diagnostics=DIAGS, rays=2000, seed=8, steps=8)
    rec = res.recovery(truth, desc)
    # what the scans see well is recovered to a fraction of the day-one error
    assert rec["dcm.pitch2"]["error_sigma"] < 0.3
    assert rec["dcm.perp"]["error_sigma"] < 0.3
    # and the calibrated twin predicts unseen settings far better than the ideal one
    rng = np.random.default_rng(1)
    fast = Twin(desc, backend="fast", rays=2000)
    err_cal, err_ideal = [], []
    for _ in range(6):
        c = {m: desc.motor(m).position + 2 * desc.motor(m).misalign_sigma * rng.standard_normal()
             for m in ("m1.pitch", "dcm.pitch2", "m1.bend")}
        a = real.trace(c, hidden=truth, seed=3).diagnostics["dcm_bpm"].stats
        for h, errs in ((res.hidden, err_cal), (HiddenErrors.none(), err_ideal)):
            b = fast.trace(c, hidden=h, seed=8).diagnostics["dcm_bpm"].stats
            errs.append(np.hypot(a.centroid_x_um - b.centroid_x_um,
                                 a.centroid_y_um - b.centroid_y_um))
    assert np.median(err_cal) < np.median(err_ideal) / 4


def test_calibration_input_is_checked(desc):
    with pytest.raises(ConfigError, match="at least one observation"):
        calibrate(desc, [])


def test_kb_fit_with_relative_sizes_stays_in_its_bound_and_starts_where_told(desc):
    """Sizes weighed relatively (the KB's 40 nm focus counts), offsets bounded, warm start."""
    kb = ["kb_v.pitch", "kb_v.height", "kb_v.bend"]
    truth = HiddenErrors({"kb_v.pitch": 6.0, "kb_v.height": -15.0, "kb_v.bend": 0.8})
    real = Twin(desc, backend="fast", rays=2000)
    obs = [(c, real.trace(c, hidden=truth, seed=3)) for c in _scans(desc, kb, k=0.5)]
    kw = dict(motors=kb, diagnostics=["sample", "detector"], rays=2000, seed=8,
              size_rel=0.03, position_rel=0.05, bound_sigma=1.5)
    res = calibrate(desc, obs, steps=4, **kw)
    for m in kb:
        assert abs(res.hidden.offset(m)) <= 1.5 * desc.motor(m).misalign_sigma + 1e-9
    # no iterations: the fit is where it was told to start
    at_truth = calibrate(desc, obs, steps=0, initial=truth, **{**kw, "bound_sigma": 3.0})
    for m in kb:
        assert at_truth.hidden.offset(m) == pytest.approx(truth.offset(m), rel=1e-6)


@pytest.mark.parametrize("option", ["size_rel", "position_rel", "bound_sigma"])
def test_calibration_options_are_checked(desc, option):
    obs = [({}, Twin(desc, backend="fast", rays=500).trace({}))]
    with pytest.raises(ConfigError, match=option):
        calibrate(desc, obs, **{option: float("nan")})
