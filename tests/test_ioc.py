"""The simulated IOCs over real Channel Access: a caproto IOC in a subprocess,
driven by unmodified pyepics and ophyd clients."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from ioc_sim.process import IocProcess, random_prefix
from tests.helpers import get, wait_for

pytestmark = pytest.mark.ioc

SEED, MISALIGN, RAYS = 3, 0.5, 5000
IOC_ARGS = ["--backend", "fast", "--rays", str(RAYS), "--seed", str(SEED), "--misalign",
            str(MISALIGN), "--no-disturbances", "--diag-rate", "2"]


@pytest.fixture(scope="module")
def ioc(ca_ports):
    with IocProcess(random_prefix(), ca_ports[0], IOC_ARGS) as proc:
        yield proc


def pv(epics, name: str):
    p = epics.get_pv(name, connect=True, timeout=5.0)
    if not p.connected:
        raise AssertionError(f"PV {name} did not connect")
    return p


# --------------------------------------------------------------------------- serving
def test_ready_document_and_motor_records(ioc, epics, desc):
    assert ioc.ready["prefix"] == ioc.prefix
    # 28 of the beamline and the ring's 5 knobs at the source
    assert ioc.ready["motors"] == len(desc.motors) == 33
    rec = f"{ioc.prefix}kb_v:pitch"
    assert get(epics, rec + ".RTYP") == "motor"
    assert get(epics, rec + ".EGU") == desc.motor("kb_v.pitch").units
    assert get(epics, rec + ".HLM") == desc.motor("kb_v.pitch").high
    assert get(epics, rec + ".LLM") == desc.motor("kb_v.pitch").low
    assert get(epics, rec + ".VELO") == desc.motor("kb_v.pitch").speed
    assert get(epics, rec + ".MRES") == desc.motor("kb_v.pitch").resolution
    assert get(epics, rec) == get(epics, rec + ".VAL")  # the bare name is VAL
    assert get(epics, rec + ".DMOV") == 1
    for name in desc.motors:
        element, axis = name.split(".")
        # DRBV, not RBV: a plain pyepics PV cached under a name that ophyd later
        # wants breaks ophyd's PV shim (it lacks get_all_metadata_callback)
        assert get(epics, f"{ioc.prefix}{element}:{axis}.DRBV") == pytest.approx(
            desc.motor(name).position)


def test_ophyd_epics_motor_moves_and_reports_done(ioc, epics, desc):
    from ophyd import EpicsMotor

    m = EpicsMotor(f"{ioc.prefix}kb_h:pitch", name="kb_h_pitch")
    m.wait_for_connection(timeout=10)
    assert m.limits == (desc.motor("kb_h.pitch").low, desc.motor("kb_h.pitch").high)
    start = m.position
    t0 = time.monotonic()
    status = m.set(start + 4.0)
    status.wait(timeout=20)
    took = time.monotonic() - t0
    assert status.done and status.success
    assert m.position == pytest.approx(start + 4.0, abs=1e-9)
    assert get(epics, f"{ioc.prefix}kb_h:pitch.DMOV") == 1
    # the move took the motor's travel time (speed VELO, ACCL ramps), not zero
    assert took >= 4.0 / desc.motor("kb_h.pitch").speed
    status = m.set(start)
    status.wait(timeout=20)
    assert m.position == pytest.approx(start, abs=1e-9)


def test_pyepics_motor_moves(ioc, epics):
    m = epics.Motor(f"{ioc.prefix}sample:y")
    start = m.get_position()
    for k in range(5):
        target = start + 0.5 * (k + 1) * (-1) ** k
        assert m.move(target, wait=True, timeout=20) == 0
        # the monitored readback is already current when the put completes
        assert m.get_position(readback=True) == pytest.approx(target)
        assert m.DMOV == 1
    assert m.move(start, wait=True, timeout=20) == 0


def test_move_beyond_hlm_sets_lvio_and_does_not_move(ioc, epics):
    rec = f"{ioc.prefix}kb_v:height"
    hlm = get(epics, rec + ".HLM")
    before = get(epics, rec + ".RBV")
    val_before = get(epics, rec + ".VAL")
    for target in (hlm + 1.0, float(np.nextafter(hlm, math.inf))):
        epics.caput(rec + ".VAL", target, wait=True, timeout=5)
        assert get(epics, rec + ".LVIO") == 1
        assert get(epics, rec + ".VAL") == val_before  # the setpoint is restored
        time.sleep(0.1)
        assert get(epics, rec + ".RBV") == before
        assert get(epics, rec + ".DMOV") == 1 and get(epics, rec + ".MOVN") == 0
    # a valid move clears LVIO
    epics.caput(rec + ".VAL", before + 0.01, wait=True, timeout=10)
    assert get(epics, rec + ".LVIO") == 0
    epics.caput(rec + ".VAL", before, wait=True, timeout=10)


def test_ophyd_refuses_beyond_limits_before_it_puts(ioc, epics):
    from ophyd import EpicsMotor
    from ophyd.utils import LimitError

    m = EpicsMotor(f"{ioc.prefix}kb_v:bend", name="kb_v_bend")
    m.wait_for_connection(timeout=10)
    with pytest.raises(LimitError):
        m.set(m.limits[1] + 1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_setpoint_is_refused(ioc, epics, bad):
    rec = f"{ioc.prefix}kb_v:pitch"
    before, val_before = get(epics, rec + ".RBV"), get(epics, rec + ".VAL")
    epics.caput(rec + ".VAL", bad, wait=True, timeout=5)
    assert get(epics, rec + ".LVIO") == 1
    assert get(epics, rec + ".VAL") == val_before
    time.sleep(0.05)
    assert get(epics, rec + ".RBV") == before
    assert get(epics, rec + ".DMOV") == 1


def test_stop_halts_mid_move(ioc, epics):
    rec = f"{ioc.prefix}sample:x"
    start = get(epics, rec + ".RBV")
    velo = get(epics, rec + ".VELO")
    target = start + 20 * velo  # 20 s of travel
    epics.caput(rec + ".VAL", target, wait=False)
    assert wait_for(lambda: get(epics, rec + ".MOVN") == 1, 5)
    time.sleep(0.4)
    t0 = time.monotonic()
    epics.caput(rec + ".STOP", 1, wait=True, timeout=5)
    assert wait_for(lambda: get(epics, rec + ".DMOV") == 1, 5)
    assert time.monotonic() - t0 < 2.0
    rbv = get(epics, rec + ".RBV")
    assert start < rbv < target
    assert get(epics, rec + ".VAL") == pytest.approx(rbv)  # the setpoint follows the stop
    assert get(epics, rec + ".STOP") == 0
    time.sleep(0.2)
    assert get(epics, rec + ".RBV") == rbv  # it stays stopped
    epics.caput(rec + ".VAL", start, wait=True, timeout=30)


def test_readback_follows_the_motion(ioc, epics):
    rec = f"{ioc.prefix}sample:z"
    start = get(epics, rec + ".RBV")
    velo = get(epics, rec + ".VELO")
    seen: list[float] = []
    rbv = pv(epics, rec + ".RBV")
    rbv.add_callback(lambda value, **kw: seen.append(value))
    epics.caput(rec + ".VAL", start + 1.0 * velo, wait=True, timeout=10)
    rbv.clear_callbacks()
    inside = [v for v in seen if start < v < start + velo]
    assert len(inside) >= 10  # about 1 s of motion at 50 Hz
    assert inside == sorted(inside)
    epics.caput(rec + ".VAL", start, wait=True, timeout=10)


def test_read_only_fields_refuse_writes(ioc, epics):
    rbv = pv(epics, f"{ioc.prefix}kb_v:pitch.RBV")
    assert not rbv.write_access
    before = rbv.get(use_monitor=False)
    with pytest.raises(Exception, match="(?i)access"):
        rbv.put(before + 1.0, wait=True)
    assert rbv.get(use_monitor=False) == before


def test_bad_motor_parameters_are_refused(ioc, epics):
    rec = f"{ioc.prefix}kb_v:pitch"
    velo = get(epics, rec + ".VELO")
    for bad in (0.0, -1.0, math.nan):
        epics.caput(rec + ".VELO", bad, wait=True, timeout=5)
        assert get(epics, rec + ".VELO") == velo


# --------------------------------------------------------------------------- detector
def _frame_from_ioc(epics, prefix: str) -> tuple[np.ndarray, dict[str, float]]:
    det = f"{prefix}det:"
    n0 = get(epics, det + "cam1:ArrayCounter_RBV")
    assert epics.caput(det + "cam1:Acquire", 1, wait=True, timeout=30) == 1
    assert get(epics, det + "cam1:ArrayCounter_RBV") == n0 + 1
    assert get(epics, det + "cam1:DetectorState_RBV", as_string=True) == "Idle"
    nx, ny = get(epics, det + "image1:ArraySize0_RBV"), get(epics, det + "image1:ArraySize1_RBV")
    frame = np.asarray(get(epics, det + "image1:ArrayData", count=nx * ny)).reshape(ny, nx)
    stats = {k: get(epics, f"{det}Stats1:{k}_RBV") for k in
             ("Total", "CentroidX", "CentroidY", "SigmaX", "SigmaY", "FWHMX", "FWHMY",
              "MaxValue")}
    return frame, stats


def test_acquisition_is_consistent_with_twin_trace(ioc, epics, desc):
    from controllers.cli import trace_doc
    from ioc_sim.analysis import frame_stats

    det = f"{ioc.prefix}det:"
    exposure = 0.05
    epics.caput(det + "cam1:ImageMode", "Single", wait=True)
    epics.caput(det + "cam1:AcquireTime", exposure, wait=True)
    moves = {"kb_v.pitch": 3.0, "detector.x": 0.4}
    for name, value in moves.items():
        element, axis = name.split(".")
        epics.caput(f"{ioc.prefix}{element}:{axis}.VAL", value, wait=True, timeout=20)
    frame, stats = _frame_from_ioc(epics, ioc.prefix)
    # the published statistics are those of the published frame
    local = frame_stats(frame)
    assert stats["Total"] == pytest.approx(local.total)
    assert stats["CentroidX"] == pytest.approx(local.centroid_x)
    assert stats["SigmaY"] == pytest.approx(local.sigma_y)
    # ... and agree with `beamtwin twin trace` of the same beamline at the same positions
    doc, _ = trace_doc(desc, backend="fast", rays=RAYS, seed=SEED, misalign=MISALIGN,
                       sets=moves)
    d = desc.detector
    nx, ny = d.pixels
    px = d.pixel_um
    x_um = (stats["CentroidX"] + 0.5 - nx / 2) * px
    y_um = (ny / 2 - stats["CentroidY"] - 0.5) * px
    assert stats["Total"] / exposure == pytest.approx(doc["flux"], rel=0.01)
    tol_x = max(0.5, 0.05 * doc["fwhm_x_um"], px / 4)
    tol_y = max(0.5, 0.05 * doc["fwhm_y_um"], px / 4)
    assert x_um == pytest.approx(doc["centroid_x_um"], abs=tol_x)
    assert y_um == pytest.approx(doc["centroid_y_um"], abs=tol_y)
    rms_x = math.sqrt(max(stats["SigmaX"] ** 2 - 1 / 12, 0)) * px  # remove pixel binning
    assert rms_x == pytest.approx(doc["rms_x_um"], rel=0.1)
    # and the detector.x move shows: the beam sits 0.4 mm to the left in the detector frame
    doc0, _ = trace_doc(desc, backend="fast", rays=RAYS, seed=SEED, misalign=MISALIGN,
                        sets={"kb_v.pitch": 3.0})
    assert doc["centroid_x_um"] - doc0["centroid_x_um"] == pytest.approx(-400.0, abs=5.0)
    for name in moves:
        element, axis = name.split(".")
        epics.caput(f"{ioc.prefix}{element}:{axis}.VAL", desc.motor(name).position,
                    wait=True, timeout=20)


def test_shot_noise_scales_with_exposure(ioc, epics):
    det = f"{ioc.prefix}det:"
    totals = {}
    for exposure in (0.01, 0.04):
        epics.caput(det + "cam1:AcquireTime", exposure, wait=True)
        frames = [_frame_from_ioc(epics, ioc.prefix)[0].astype(float) for _ in range(2)]
        totals[exposure] = frames[0].sum()
        diff = frames[1] - frames[0]
        lit = (frames[0] + frames[1]) / 2 > 50
        # Poisson: var(a - b) = 2 * mean per pixel
        ratio = np.var(diff[lit]) / np.mean(2 * ((frames[0] + frames[1]) / 2)[lit])
        assert 0.7 < ratio < 1.3
    assert totals[0.04] / totals[0.01] == pytest.approx(4.0, rel=0.02)
    epics.caput(det + "cam1:AcquireTime", 0.05, wait=True)


def test_multiple_images_with_external_trigger(ioc, epics):
    det = f"{ioc.prefix}det:"
    epics.caput(det + "cam1:AcquireTime", 0.01, wait=True)
    epics.caput(det + "cam1:ImageMode", "Multiple", wait=True)
    epics.caput(det + "cam1:NumImages", 3, wait=True)
    epics.caput(det + "cam1:TriggerMode", "External", wait=True)
    n0 = get(epics, det + "cam1:ArrayCounter_RBV")
    epics.caput(det + "cam1:Acquire", 1, wait=False)
    for k in range(3):
        assert wait_for(lambda: get(epics, det + "cam1:DetectorState_RBV", as_string=True)
                        == "Waiting", 10)
        assert get(epics, det + "cam1:ArrayCounter_RBV") == n0 + k  # nothing without a trigger
        epics.caput(det + "cam1:Trigger", 1, wait=True)
        assert wait_for(lambda k=k: get(epics, det + "cam1:ArrayCounter_RBV") == n0 + k + 1, 10)
    assert wait_for(lambda: get(epics, det + "cam1:Acquire_RBV") == 0, 10)
    assert get(epics, det + "cam1:NumImagesCounter_RBV") == 3
    epics.caput(det + "cam1:TriggerMode", "Internal", wait=True)
    epics.caput(det + "cam1:ImageMode", "Single", wait=True)


def test_continuous_acquisition_stops_on_request(ioc, epics):
    det = f"{ioc.prefix}det:"
    epics.caput(det + "cam1:AcquireTime", 0.01, wait=True)
    epics.caput(det + "cam1:ImageMode", "Continuous", wait=True)
    n0 = get(epics, det + "cam1:ArrayCounter_RBV")
    epics.caput(det + "cam1:Acquire", 1, wait=False)
    assert wait_for(lambda: get(epics, det + "cam1:ArrayCounter_RBV") >= n0 + 3, 20)
    epics.caput(det + "cam1:Acquire", 0, wait=True)
    assert wait_for(lambda: get(epics, det + "cam1:Acquire_RBV") == 0, 5)
    n1 = get(epics, det + "cam1:ArrayCounter_RBV")
    time.sleep(0.3)
    assert get(epics, det + "cam1:ArrayCounter_RBV") == n1
    epics.caput(det + "cam1:ImageMode", "Single", wait=True)


def test_event_trigger_fires_on_its_condition(ioc, epics, desc):
    det = f"{ioc.prefix}det:"
    px = desc.detector.pixel_um
    epics.caput(det + "cam1:AcquireTime", 0.01, wait=True)
    epics.caput(det + "Trig1:Condition", "CentroidShift", wait=True)
    epics.caput(det + "Trig1:Threshold", 3.0, wait=True)  # pixels
    epics.caput(det + "Trig1:Mode", "Keep", wait=True)
    epics.caput(det + "Trig1:Enable", "Enable", wait=True)
    count0 = get(epics, det + "Trig1:FiredCount_RBV")
    _frame_from_ioc(epics, ioc.prefix)  # the reference frame
    uid_ref = get(epics, det + "image1:UniqueId_RBV")
    assert get(epics, det + "Trig1:Fired_RBV") == 0
    _frame_from_ioc(epics, ioc.prefix)  # same beam: does not fire, and is not kept
    assert get(epics, det + "Trig1:Fired_RBV") == 0
    assert get(epics, det + "image1:UniqueId_RBV") == uid_ref
    # move the detector by 2 pixels: below the threshold
    x0 = desc.motor("detector.x").position
    rec = f"{ioc.prefix}detector:x"
    epics.caput(rec, x0 + 2 * px / 1000, wait=True, timeout=20)
    _frame_from_ioc(epics, ioc.prefix)
    assert get(epics, det + "Trig1:Fired_RBV") == 0
    # ... and by 6 pixels: it fires, and the frame is kept
    epics.caput(rec, x0 + 6 * px / 1000, wait=True, timeout=20)
    _frame_from_ioc(epics, ioc.prefix)
    assert get(epics, det + "Trig1:Fired_RBV") == 1
    assert get(epics, det + "Trig1:FiredCount_RBV") == count0 + 1
    uid = get(epics, det + "Stats1:UniqueId_RBV")
    assert get(epics, det + "Trig1:LastFiredId_RBV") == uid
    assert get(epics, det + "image1:UniqueId_RBV") == uid
    # intensity drop: the front-end shutter closes
    epics.caput(rec, x0, wait=True, timeout=20)
    epics.caput(det + "Trig1:Condition", "IntensityDrop", wait=True)
    epics.caput(det + "Trig1:Threshold", 0.5, wait=True)
    _frame_from_ioc(epics, ioc.prefix)  # new reference (the condition changed)
    assert get(epics, det + "Trig1:Fired_RBV") == 0
    epics.caput(f"{ioc.prefix}machine:Shutter", "Closed", wait=True)
    try:
        frame, stats = _frame_from_ioc(epics, ioc.prefix)
        assert stats["Total"] < 1e-3 * frame.size + 10 * math.sqrt(frame.size)
        assert get(epics, det + "Trig1:Fired_RBV") == 1
    finally:
        epics.caput(f"{ioc.prefix}machine:Shutter", "Open", wait=True)
        epics.caput(det + "Trig1:Enable", "Disable", wait=True)
        epics.caput(det + "Trig1:Mode", "Mark", wait=True)
    epics.caput(det + "Trig1:Threshold", -1.0, wait=True)  # refused
    assert get(epics, det + "Trig1:Threshold") == 0.5


def test_roi_statistics(ioc, epics):
    det = f"{ioc.prefix}det:"
    frame, full = _frame_from_ioc(epics, ioc.prefix)
    cx, cy = int(full["CentroidX"]), int(full["CentroidY"])
    for k, v in (("MinX", cx - 20), ("MinY", cy - 20), ("SizeX", 40), ("SizeY", 40)):
        epics.caput(f"{det}ROI1:{k}", v, wait=True)
    epics.caput(det + "ROI1:EnableCallbacks", "Enable", wait=True)
    try:
        frame, roi = _frame_from_ioc(epics, ioc.prefix)
        sub = frame[cy - 20:cy + 20, cx - 20:cx + 20]
        assert roi["Total"] == pytest.approx(sub.sum())
        assert roi["CentroidX"] == pytest.approx(full["CentroidX"], abs=1.0)
    finally:
        epics.caput(det + "ROI1:EnableCallbacks", "Disable", wait=True)


# --------------------------------------------------------------------------- beamline
def test_diagnostics_follow_the_beam(ioc, epics, desc):
    bpm = f"{ioc.prefix}dcm_bpm:"
    assert wait_for(lambda: get(epics, bpm + "UniqueId_RBV") > 0, 10)
    assert get(epics, bpm + "Intensity_RBV") > 1e12
    assert get(epics, f"{ioc.prefix}i0:Intensity_RBV") > 1e12
    nx = get(epics, f"{ioc.prefix}m1_screen:image:ArraySize0_RBV")
    img = get(epics, f"{ioc.prefix}m1_screen:image:ArrayData")
    assert img.size == nx * get(epics, f"{ioc.prefix}m1_screen:image:ArraySize1_RBV")
    assert img.sum() > 0
    # the second crystal's pitch steers the beam vertically at the BPM
    y0 = get(epics, bpm + "PosY_RBV")
    uid = get(epics, bpm + "UniqueId_RBV")
    rec = f"{ioc.prefix}dcm:pitch2"
    p0 = get(epics, rec + ".RBV")
    epics.caput(rec, p0 + 2.0, wait=True, timeout=20)
    assert wait_for(lambda: get(epics, bpm + "UniqueId_RBV") > uid + 1, 10)
    y1 = get(epics, bpm + "PosY_RBV")
    epics.caput(rec, p0, wait=True, timeout=20)
    assert abs(y1 - y0) > 1.0  # um


def test_machine_shutter_and_beam_loss(ioc, epics):
    m = f"{ioc.prefix}machine:"
    assert get(epics, m + "RingCurrent_RBV") == pytest.approx(200.0, rel=0.01)
    epics.caput(m + "BeamLoss", "Yes", wait=True)
    try:
        assert wait_for(lambda: get(epics, m + "BeamAvailable_RBV", as_string=True) == "No", 3)
        assert get(epics, m + "RingCurrent_RBV") == 0.0
        uid = get(epics, f"{ioc.prefix}i0:UniqueId_RBV")
        assert wait_for(lambda: get(epics, f"{ioc.prefix}i0:UniqueId_RBV") > uid + 1, 10)
        assert get(epics, f"{ioc.prefix}i0:Intensity_RBV") == 0.0
    finally:
        epics.caput(m + "BeamLoss", "No", wait=True)
    assert wait_for(lambda: get(epics, m + "BeamAvailable_RBV", as_string=True) == "Yes", 3)


def test_undulator_energy_follows_the_gap(ioc, epics, desc):
    from twin.physics import harmonic_energy_eV, undulator_K

    und = desc.source
    u = f"{ioc.prefix}undulator:"
    e0 = get(epics, u + "Energy_RBV")
    gap = desc.motor("undulator.gap").position
    k = undulator_K(gap, und.period_mm, und.field_coeffs)
    assert e0 == pytest.approx(harmonic_energy_eV(k, und.period_mm, und.electron_energy_GeV,
                                                  und.harmonic), rel=1e-6)
    epics.caput(f"{ioc.prefix}undulator:gap", gap + 0.05, wait=True, timeout=30)
    assert wait_for(lambda: get(epics, u + "Energy_RBV") > e0 + 10, 3)  # opening raises E
    epics.caput(f"{ioc.prefix}undulator:gap", gap, wait=True, timeout=30)
    epics.caput(u + "Harmonic", 4, wait=True)  # even: refused
    assert get(epics, u + "Harmonic_RBV") == und.harmonic


def test_several_clients_at_once(ioc, ca_ports):
    import subprocess
    import sys

    script = (
        "import epics, sys\n"
        f"rec = '{ioc.prefix}sample:' + sys.argv[1]\n"
        "start = epics.caget(rec + '.RBV', timeout=5)\n"
        "for k in range(5):\n"
        "    assert epics.caput(rec + '.VAL', start + 0.1 * (k % 2), wait=True, timeout=10) == 1\n"
        "    assert epics.caget(rec + '.DMOV', use_monitor=False, timeout=5) == 1\n"
        "print('ok', epics.caget(rec + '.RBV', use_monitor=False))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, axis], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for axis in ("x", "y", "z")]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
        assert out.startswith("ok")


def test_no_ioc_gives_a_clear_error_not_a_hang(epics, ca_ports):
    t0 = time.monotonic()
    p = epics.PV("BTNOSUCHIOC:kb_v:pitch.RBV", connection_timeout=1.0)
    assert not p.wait_for_connection(timeout=1.0)
    assert p.get(timeout=0.5) is None
    assert time.monotonic() - t0 < 5
