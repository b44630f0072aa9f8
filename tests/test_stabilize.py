"""Feed-forward beam stabilisation: the twin's knobs and gap dependence, the linearised
plant against full traces, schedules, calibration, models, correctors, the environment,
the benchmark and the command line."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest

from agents.stabilize.calibration import calibrate, features
from agents.stabilize.correctors import Feedback, FeedbackGains, FeedForward, NoCorrection
from agents.stabilize.env import StabilizeEnv
from agents.stabilize.evaluate import metrics, play
from agents.stabilize.models import GPModel, LookupTable, MLPModel, fit_model
from agents.stabilize.plant import KNOB_LIMITS, KNOBS, StabilizeConfig, StabilizePlant, check_knobs
from agents.stabilize.schedules import KINDS, make_schedule, working_range
from agents.stabilize.stabilizer import Stabilizer, fit_stabilizer
from twin import HiddenErrors
from twin.beam_response import measure_response
from twin.disturbances import DisturbanceModel
from twin.errors import ConfigError, LimitError, NonFiniteError
from twin.fast import FastTwin
from twin.simulator import TwinBeamline

QUIET = StabilizeConfig(drift=False, centroid_noise_um=0.0, size_noise_pct=0.0,
                        bpm_noise_um=0.0)


@pytest.fixture(scope="module")
def response(desc):
    """The default beamline's response, measured once (20k rays)."""
    return measure_response(desc, motors=("m1.pitch", "dcm.pitch2", "kb_h.pitch", "kb_v.pitch"),
                            diagnostics=("sample", "kb_bpm"), rays=20_000)


@pytest.fixture(scope="module")
def quiet_cal(desc, response):
    """A calibration of a noise- and drift-free plant (seed 3), and the plant."""
    plant = StabilizePlant(desc, 3, QUIET, response=response)
    return plant, calibrate(plant, points=12, ref_every=4, iterations=2)


# ------------------------------------------------------------------------- the twin
@pytest.mark.parametrize("backend", ["fast", "xrt"])
def test_the_rings_knobs_move_and_resize_the_source_in_both_backends(desc, backend):
    """A 10 um bump moves the focus by 10 um / 82 (the KB's demagnification), a +21 %
    coupling knob grows the vertical focus by sqrt(1.21) = 1.1; xrt agrees with torch."""
    bl = TwinBeamline(desc, hidden=HiddenErrors.none(), backend=backend, rays=20_000,
                      noise=False, disturbances=False, seed=1)
    s0 = bl.ground_truth().reading("sample").stats
    bl.move({"undulator.bump_x": 10.0})
    s1 = bl.ground_truth().reading("sample").stats
    # the KB-H images the source 59.25 m away onto the sample 0.75 m behind it
    assert s1.centroid_x_um - s0.centroid_x_um == pytest.approx(-10.0 * 0.75 / 59.25, rel=0.05)
    bl.move({"undulator.bump_x": 0.0, "undulator.coupling": 21.0})
    s2 = bl.ground_truth().reading("sample").stats
    assert s2.rms_y_um / s0.rms_y_um == pytest.approx(1.1, rel=0.02)
    assert s2.rms_x_um < s0.rms_x_um  # the horizontal gives up the emittance


def test_knobs_have_no_hidden_error_and_join_no_alignment_stage(desc):
    from agents.stages import stages

    assert len(desc.knob_motors()) == 5
    h = HiddenErrors.draw(desc, 2.0, 11)
    assert all(h.offset(k) == 0 for k in desc.knob_motors())
    for st in stages(desc).values():
        assert not set(st.motors) & desc.knob_motors()


def test_the_neighbours_gap_perturbs_the_source_and_arrays_match_scalars(desc):
    m = DisturbanceModel(desc, 5)
    rest = desc.disturbances.source_gap.neighbour_gap_mm
    assert m.source(9.0, 1, rest, 1) == m.source(9.0, 1) or \
        abs(m.source(9.0, 1, rest, 1).dx_um - m.source(9.0, 1).dx_um) < 0.2
    moved = m.source(9.0, 1, 25.0, 1)
    assert abs(moved.dx_um - m.source(9.0, 1).dx_um) > 0.01
    rng = np.random.default_rng(0)
    g, gn = rng.uniform(6, 17, 40), rng.uniform(6, 30, 40)
    dg, dn = rng.choice([-1, 1], 40), rng.choice([-1, 1], 40)
    arr = m.source_array(g, dg, gn, dn)
    for i in range(40):
        s = m.source(g[i], dg[i], gn[i], dn[i])
        assert arr[i] == pytest.approx([s.dx_um, s.dy_um, s.dxp_urad, s.dyp_urad,
                                        s.size_x_scale - 1, s.size_y_scale - 1], abs=1e-12)
    t = np.linspace(0, 600, 7)
    assert m.drift_array("m1.pitch", t) == pytest.approx([m.drift("m1.pitch", x) for x in t])


def test_the_simulator_refuses_a_bad_neighbour_gap_and_keeps_the_old_one(desc):
    bl = TwinBeamline(desc, backend="fast", rays=500, noise=False)
    bl.set_neighbour_gap(20.0)
    with pytest.raises(NonFiniteError, match="nan"):
        bl.set_neighbour_gap(float("nan"))
    with pytest.raises(LimitError, match=r"40.0 mm .*\[6.0, 30.0\]"):
        bl.set_neighbour_gap(40.0)
    assert bl.neighbour_gap_mm == 20.0


def test_the_second_order_response_predicts_full_traces(desc, response):
    """The linearised twin against the fast twin at the disturbance's amplitudes:
    source changes of the preset's size and pitch changes of 0.1 urad rms (an hour's drift
    of the KB, a few minutes' of M1's and the DCM's)."""
    ft = FastTwin(desc, rays=20_000)
    rng = np.random.default_rng(4)
    a = desc.disturbances.source_gap
    n = 12
    src = np.column_stack([rng.normal(0, a.position_x_um, n), rng.normal(0, a.position_y_um, n),
                           rng.normal(0, a.pointing_x_urad, n),
                           rng.normal(0, a.pointing_y_urad, n),
                           rng.normal(0, a.size_x_pct / 100, n),
                           rng.normal(0, a.size_y_pct / 100, n)])
    pitches = rng.normal(0, 0.1, (n, 4))
    names = ("m1.pitch", "dcm.pitch2", "kb_h.pitch", "kb_v.pitch")
    base = response.positions
    pos = [{**base, **{m: base.get(m, desc.motor(m).position) + p[j]
                       for j, m in enumerate(names)}} for p in pitches]
    import torch

    source = torch.tensor(np.column_stack([src[:, :4], 1 + src[:, 4:]]), dtype=torch.float64)
    traced = ft.to_numpy(ft.observe(ft.positions(pos), source=source))
    predicted = response.predict(np.column_stack([src, pitches]))
    y0 = response.y0
    for j, out in enumerate(response.outputs):
        if not out.startswith("sample."):
            continue
        stat = out.split(".", 1)[1]
        change = traced["sample"][stat] - y0[j]
        err = np.abs(predicted[:, j] - traced["sample"][stat])
        if stat == "rms_x_um":
            # the horizontal size, which no knob holds and the benchmark only reports:
            # cross terms leave up to 10 nm of the 400 nm (measured)
            assert np.all(err <= 0.03 * y0[j]), (out, err)
            continue
        # the centroids and the vertical size, what the stabiliser holds. Measured:
        # errors of 0.1-10 nm on changes of 5-120 nm (cross terms and the front-end
        # slits, which clip a beam that points off)
        assert np.all(err <= np.maximum(2e-3, 0.15 * np.abs(change))), (out, err, change)
        assert np.sqrt(np.mean(err ** 2)) <= max(1e-3, 0.1 * np.sqrt(np.mean(change ** 2)))


# ------------------------------------------------------------------------- schedules, plant
def test_schedules_are_seeded_speed_limited_and_in_range(desc):
    low, high, design, speed = working_range(desc)
    for kind in KINDS:
        a = make_schedule(desc, kind, 7, duration_s=30.0)
        b = make_schedule(desc, kind, 7, duration_s=30.0)
        assert np.array_equal(a.gap_mm, b.gap_mm) and a.steps == 3000
        assert np.all(np.abs(np.diff(a.gap_mm)) <= speed * a.dt_s + 1e-9)
        assert a.gap_mm.min() >= low - 1e-9 and a.gap_mm.max() <= high + 1e-9
        assert a.gap_mm[0] == design
    assert not np.array_equal(make_schedule(desc, "steps", 1).gap_mm,
                              make_schedule(desc, "steps", 2).gap_mm)
    with pytest.raises(ConfigError, match="unknown gap schedule 'ramp'.*energy_scan"):
        make_schedule(desc, "ramp", 0)


def test_bad_corrections_are_refused_by_name_and_change_nothing(desc, response):
    plant = StabilizePlant(desc, 0, QUIET, response=response)
    run = plant.run(make_schedule(desc, "steps", 0, duration_s=1.0))
    good = np.zeros(len(KNOBS))
    good[0] = 1.0
    run.apply(good)
    bad = good.copy()
    bad[6] = math.nan
    with pytest.raises(NonFiniteError, match="kb_h.pitch is nan"):
        run.apply(bad)
    bad[6] = 0.0
    bad[4] = 99.0
    with pytest.raises(LimitError, match=r"undulator.coupling = 99 .*\[-15, 15\]"):
        run.apply(bad)
    with pytest.raises(ConfigError, match="expected 8 knob settings"):
        check_knobs([1.0, 2.0], KNOB_LIMITS)
    run.advance()  # the good setting takes effect one period later, the bad ones never
    assert np.array_equal(run.knobs, good)


def test_a_bump_undoes_the_sources_move_exactly(desc, response):
    """The orbit bump adds to the source position: equal and opposite cancels it."""
    plant = StabilizePlant(desc, 0, QUIET, response=response)
    d = np.zeros(len(response.inputs))
    d[0], d[2] = 1.5, 0.7  # source dx (um), dxp (urad)
    k = np.zeros(len(KNOBS))
    k[0], k[1] = -1.5, -0.7
    assert np.abs(plant.beam(d) - plant.beam(np.zeros_like(d)))[0] > 0.01
    assert plant.beam(plant.knob_inputs(k, d)) == pytest.approx(plant.beam(np.zeros_like(d)))


# ------------------------------------------------------------------------- calibration, models
def test_calibration_learns_the_hidden_gap_map_and_the_hysteresis(quiet_cal, desc):
    plant, cal = quiet_cal
    assert set(cal.leg) == {"gap_up", "gap_down", "neighbour_up", "neighbour_down"}
    assert len(cal.x) == 48 and cal.duration_s > 60
    gp, nn, table = (fit_model(k, cal) for k in ("gp", "nn", "table"))
    x_up = features(12.0, 1, cal.neighbour_rest_mm, 1, cal.gap_range, cal.neighbour_range)
    x_dn = features(12.0, -1, cal.neighbour_rest_mm, 1, cal.gap_range, cal.neighbour_range)
    # the needed bump is minus the source's move, which differs with direction
    s_up, s_dn = plant.model.source(12.0, 1), plant.model.source(12.0, -1)
    rest = plant.model.source(working_range(desc)[2], 1)
    for model in (gp, nn):
        up, dn = model.predict(x_up), model.predict(x_dn)
        assert up[0] == pytest.approx(-(s_up.dx_um - rest.dx_um), abs=0.1)
        assert dn[0] == pytest.approx(-(s_dn.dx_um - rest.dx_um), abs=0.1)
    # the facilities' table cannot tell the directions apart
    assert np.array_equal(table.predict(x_up), table.predict(x_dn))
    # the GP knows where it was not calibrated
    _, std_in = gp.predict_with_std(x_up)
    _, std_out = gp.predict_with_std(features(40.0, 1, 12.0, 1, cal.gap_range,
                                              cal.neighbour_range))
    assert std_out > 5 * std_in


def test_learned_feed_forward_cancels_the_gap_induced_motion(quiet_cal, desc):
    plant, cal = quiet_cal
    sched = make_schedule(desc, "mixed", 5, duration_s=30.0)
    none = metrics([play(plant, sched, NoCorrection(), drift=False)])
    table = metrics([play(plant, sched, FeedForward(fit_model("table", cal), cal, KNOB_LIMITS),
                          drift=False)])
    gp = metrics([play(plant, sched, FeedForward(fit_model("gp", cal), cal, KNOB_LIMITS),
                       drift=False)])
    assert gp["centroid_rms_um"] < none["centroid_rms_um"] / 10
    assert gp["size_rms_pct"] < none["size_rms_pct"] / 5
    assert gp["centroid_rms_um"] < table["centroid_rms_um"]


def test_feedback_holds_the_beam_against_drift(desc, response):
    plant = StabilizePlant(desc, 2, StabilizeConfig(), response=response)
    cal = calibrate(plant, points=6, ref_every=6, iterations=1)
    sched = make_schedule(desc, "steps", 3, duration_s=30.0)
    none = metrics([play(plant, sched, NoCorrection())])
    fb = metrics([play(plant, sched, Feedback(cal.response, FeedbackGains(ki=0.2),
                                              KNOB_LIMITS))])
    assert fb["centroid_rms_um"] < none["centroid_rms_um"] / 5


def test_a_stabilizer_file_round_trips(quiet_cal, desc, tmp_path):
    plant, cal = quiet_cal
    train = [make_schedule(desc, "steps", 9, duration_s=5.0)]
    stab = fit_stabilizer(plant, cal, train)
    path = stab.save(tmp_path / "s.json")
    back = Stabilizer.load(path)
    x = features(10.0, -1, 20.0, 1, cal.gap_range, cal.neighbour_range)
    for k in ("table", "nn", "gp"):
        assert back.models[k].predict(x) == pytest.approx(stab.models[k].predict(x))
    assert isinstance(back.models["gp"], GPModel) and isinstance(back.models["nn"], MLPModel)
    assert isinstance(back.models["table"], LookupTable)
    assert back.ff_fb_model in ("nn", "gp") and back.fb_gains == stab.fb_gains
    with pytest.raises(ConfigError, match="unknown corrector 'pid'"):
        back.corrector("pid", KNOB_LIMITS)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a stabiliser file"):
        Stabilizer.load(tmp_path / "bad.json")


# ------------------------------------------------------------------------- environment
def test_stabilize_env_passes_check_env_and_replays(response):
    from gymnasium.utils.env_checker import check_env

    import agents  # noqa: F401 - registers the environments

    env = gym.make("beamtwin/Stabilize-v0", duration_s=1.0, response=response)
    check_env(env.unwrapped)

    def rollout(seed: int) -> list[float]:
        e = StabilizeEnv(duration_s=1.0, response=response)
        e.reset(seed=seed)
        e.action_space.seed(seed)
        out = []
        for _ in range(50):
            obs, r, term, trunc, _ = e.step(e.action_space.sample())
            out.append(r)
        return out

    assert rollout(3) == rollout(3) and rollout(3) != rollout(4)
    e = StabilizeEnv(duration_s=1.0, response=response)
    e.reset(seed=0)
    with pytest.raises(NonFiniteError, match="NaN"):
        e.step(np.full(8, np.nan))
    with pytest.raises(ConfigError, match="8 values"):
        e.step(np.zeros(3))


# ------------------------------------------------------------------------- bench and CLI
def test_the_benchmark_compares_every_corrector_on_held_out_schedules(desc):
    from agents.stabilize.bench import BenchSettings, bench_stabilize

    doc = bench_stabilize(desc, seed=1, settings=BenchSettings(
        duration_s=8.0, train_duration_s=5.0, calibration_points=6, rl_policy=None))
    c = doc["correctors"]
    assert {"none", "fb", "table", "ff_nn", "ff_gp", "ff_fb"} <= set(c)
    for m in c.values():
        assert {"centroid_rms_um", "size_rms_pct", "max_excursion_um", "gap_only"} <= set(m)
    assert c["ff_fb"]["centroid_rms_um"] < c["none"]["centroid_rms_um"] / 5
    assert c["ff_fb"]["size_rms_pct"] < c["none"]["size_rms_pct"]
    assert all(s["name"].split(":")[0] in KINDS for s in doc["schedules"])
    assert doc["goals"]["inference_under_1ms"] in (True, False)
    json.dumps(doc)


def test_the_command_line_calibrates_runs_and_refuses_bad_input(tmp_path):
    from click.testing import CliRunner

    from controllers.cli import cli

    out = tmp_path / "stab.json"
    r = CliRunner().invoke(cli, ["stabilize", "calibrate", "--points", "6", "--out", str(out),
                                 "--train-duration", "5", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["stabilizer"] == str(out) and out.is_file()
    r = CliRunner().invoke(cli, ["stabilize", "run", "--model", str(out), "--duration", "5",
                                 "--schedule", "energy_scan", "--json"])
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)
    assert run["mode"] == "twin" and run["corrector"] == "ff_fb"
    assert run["centroid_rms_um"] < 0.05
    r = CliRunner().invoke(cli, ["stabilize", "run", "--model", str(out), "--rate", "nan",
                                 "--json"])
    assert r.exit_code == 2 and "rate" in json.loads(r.stdout)["error"]
    r = CliRunner().invoke(cli, ["stabilize", "run", "--model", str(tmp_path / "none.json"),
                                 "--json"])
    assert r.exit_code == 2 and "no stabiliser file" in json.loads(r.stdout)["error"]
