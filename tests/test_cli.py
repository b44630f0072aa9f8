"""The command-line contract: names, options and JSON keys (users' scripts rely on them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from controllers.cli import cli
from twin.observation import STAT_KEYS


def run(*args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res.exit_code, json.loads(res.stdout) if res.stdout.strip() else {}


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "controllers.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert "beamtwin" in out.stdout


def test_twin_info_json(desc):
    code, doc = run("twin", "info", "--json")
    assert code == 0
    assert {"elements", "motors", "diagnostics"} <= set(doc)
    assert all({"name", "type"} <= set(e) for e in doc["elements"])
    assert all({"name", "units", "low", "high", "position"} <= set(m) for m in doc["motors"])
    assert len(doc["motors"]) == len(desc.motors)
    units = {m["units"] for m in doc["motors"]}
    assert units <= {"mm", "um", "nm", "m", "mrad", "urad", "rad", "deg", "%"}  # "%": coupling
    assert {d["name"] for d in doc["diagnostics"]} >= {"m1_screen", "dcm_bpm", "sample"}


def test_twin_trace_json_keys_set_and_png(tmp_path):
    png = tmp_path / "beam.png"
    code, doc = run("twin", "trace", "--rays", "2000", "--seed", "3", "--set", "kb_v.pitch=5",
                    "--set", "kb_h.pitch=-2", "--png", str(png), "--json")
    assert code == 0
    assert set(STAT_KEYS) <= set(doc)
    for name, d in doc["diagnostics"].items():
        assert set(STAT_KEYS) == set(d), name
    assert doc["diagnostics"]["sample"]["centroid_y_um"] > 2.0
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert doc["png"] == str(png.resolve())


def test_same_seed_same_hidden_errors_from_the_cli():
    a = run("twin", "trace", "--rays", "1000", "--seed", "4", "--misalign", "1", "--json")[1]
    b = run("twin", "trace", "--rays", "1000", "--seed", "4", "--misalign", "1", "--json")[1]
    c = run("twin", "trace", "--rays", "1000", "--seed", "4", "--json")[1]
    assert a == b and a["flux"] != c["flux"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--set", "kb_v.pitch=nan"], "finite"),
     (["--set", "kb_v.pitch=1e9"], "outside its soft limits"),
     (["--set", "kb_v.pich=1"], "unknown motor 'kb_v.pich'"),
     (["--set", "kb_v.pitch"], "expected MOTOR=VALUE"),
     (["--set", "kb_v.pitch=abc"], "is not a number"),
     (["--backend", "warp"], "unknown backend 'warp'"),
     (["--preset", "/nonexistent.toml"], "does not exist"),
     (["--misalign", "-1"], "misalignment scale")],
)
def test_bad_input_exits_2_with_a_json_error(args, needle):
    code, doc = run("twin", "trace", "--rays", "1000", *args, "--json")
    assert code == 2
    assert needle in doc["error"] and doc["type"]


def test_bench_twin_json():
    code, doc = run("bench", "twin", "--rays", "1000", "--repeats", "1", "--json")
    assert code == 0
    assert {"rays", "full_traces_per_s", "cached_retraces_per_s"} <= set(doc)
    assert doc["rays"] == 1000
    assert doc["cached_retraces_per_s"] > doc["full_traces_per_s"] > 0


@pytest.mark.ioc
def test_demo_is_one_click_alignment_over_epics(tmp_path):
    """The main job, end to end, in its own process (it sets up its own CA client)."""
    r = subprocess.run([sys.executable, "-m", "controllers.cli", "demo", "--rays", "2000",
                        "--stages", "m1,mono", "--budget", "25", "--no-disturbances",
                        "--out", str(tmp_path), "--no-progress", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    a = doc["alignment"]
    assert {"success", "agent", "evaluations", "moves", "beamline_time_s", "stages", "final",
            "ideal", "stages_aligned", "exit_status"} <= set(a)
    assert a["exit_status"] == "success" and a["stages_aligned"] == 2
    assert doc["nexus_file"] == a["nexus_file"] and Path(doc["nexus_file"]).is_absolute()
    from controllers.nexus import validate

    assert validate(doc["nexus_file"])["points"] == a["evaluations"]
    assert Path(doc["report"]).exists() and (tmp_path / "beam.png").exists()
    assert json.loads((tmp_path / "demo.json").read_text())["summary"] == doc["summary"]
    assert doc["ioc"]["exit_status"] == 0  # the IOC was stopped cleanly
    assert "demo: stopping the IOC" in r.stderr


def test_bench_twin_fast_json():
    code, doc = run("bench", "twin", "--backend", "fast", "--batch", "8", "--rays", "500",
                    "--repeats", "1", "--json")
    assert code == 0
    assert {"backend", "batch", "rays", "states_per_s", "xrt_states_per_s", "speedup",
            "observed_states_per_s", "xrt_observed_states_per_s", "observed_speedup"} <= set(doc)
    assert doc["backend"] == "fast" and doc["batch"] == 8 and doc["rays"] == 500
    assert doc["speedup"] == pytest.approx(doc["states_per_s"] / doc["xrt_states_per_s"])
    assert doc["observed_speedup"] == pytest.approx(
        doc["observed_states_per_s"] / doc["xrt_observed_states_per_s"])
    assert doc["compile"] is False and doc["dtype"] == "float64"


def test_twin_trace_fast_backend_gives_the_same_keys_and_numbers():
    a = run("twin", "trace", "--rays", "2000", "--seed", "5", "--misalign", "1", "--json")[1]
    b = run("twin", "trace", "--backend", "fast", "--rays", "2000", "--seed", "5", "--misalign",
            "1", "--json")[1]
    assert set(a) == set(b) and b["backend"] == "fast"
    assert b["flux"] == pytest.approx(a["flux"], rel=0.01)
    assert b["diagnostics"]["sample"]["centroid_x_um"] == pytest.approx(
        a["diagnostics"]["sample"]["centroid_x_um"], abs=0.05)


def test_ioc_list_pvs_json(desc):
    code, doc = run("ioc", "--prefix", "LP:", "--backend", "xrt", "--list-pvs", "--json")
    assert code == 0 and doc["prefix"] == "LP:"
    names = {p["name"] for p in doc["pvs"]}
    assert {"LP:kb_v:pitch", "LP:kb_v:pitch.RBV", "LP:det:cam1:Acquire",
            "LP:det:Trig1:Condition", "LP:machine:Shutter"} <= names
    row = next(p for p in doc["pvs"] if p["name"] == "LP:kb_v:pitch.RBV")
    assert row == {"name": "LP:kb_v:pitch.RBV", "access": "r", "dtype": "DOUBLE",
                   "units": desc.motor("kb_v.pitch").units, "doc": "user readback"}


@pytest.mark.parametrize("args,needle", [
    (["--prefix", "bad prefix"], "prefix"),
    (["--port", "80"], "--port"),
    (["--diag-rate", "100"], "rate"),
    (["--misalign", "-1"], "misalign"),
    (["--rays", "10"], "rays"),
])
def test_ioc_bad_options_exit_2_before_serving(args, needle):
    code, doc = run("ioc", "--backend", "xrt", *args, "--json")
    assert code == 2
    assert needle in doc["error"] and doc["type"]


def test_ioc_on_a_preset_the_fast_twin_cannot_trace_says_why(tmp_path):
    from tests.conftest import PRESETS

    code, doc = run("ioc", "--preset", str(PRESETS / "mixed.toml"), "--backend", "fast",
                    "--list-pvs", "--json")
    assert code == 2
    assert "xrt" in doc["error"]


def test_bench_align_json_contract(tmp_path):
    png = tmp_path / "conv.png"
    code, doc = run("bench", "align", "--agents", "scan,random", "--stage", "mono", "--trials",
                    "2", "--budget", "12", "--rays", "1000", "--plot", str(png), "--json")
    assert code == 0
    assert {"stage", "trials", "seed", "agents"} <= set(doc)
    assert doc["stage"] == "mono" and doc["trials"] == 2
    assert doc["seed_drawn"] is True  # no --seed: beamlines drawn afresh
    for name in ("scan", "random"):
        a = doc["agents"][name]
        assert {"success_rate", "median_evaluations", "p90_evaluations", "final_flux_ratio",
                "final_fwhm_ratio", "optimizer_s_per_eval"} <= set(a)
        assert 0 <= a["success_rate"] <= 1 and 1 <= a["median_evaluations"] <= 12
    assert png.stat().st_size > 10_000


def test_align_json_contract():
    code, doc = run("align", "--agent", "scan", "--stages", "mono,slits", "--budget", "10",
                    "--rays", "1000", "--seed", "2", "--json")
    assert code == (0 if doc["success"] else 1)  # the exit code agrees with the verdict
    assert {"success", "evaluations", "moves", "beamline_time_s", "stages", "final",
            "ideal", "exit_status", "reason", "verdict", "on_fail"} <= set(doc)
    assert doc["exit_status"] == ("success" if doc["success"] else "fail")
    assert [s["stage"] for s in doc["stages"]] == ["mono", "slits"]
    # each stage: its budget, and one recovery move to its best point (--on-fail best)
    assert doc["evaluations"] == sum(s["evaluations"] for s in doc["stages"]) <= 2 * (10 + 1)
    assert doc["beamline_time_s"] > 0 and isinstance(doc["success"], bool)
    assert set(doc["final"]) == set(STAT_KEYS) == set(doc["ideal"])
    assert doc["agent"] == "scan" and all(s["agent"] == "scan" for s in doc["stages"])


def test_align_without_agent_uses_the_benchmarks_best():
    from agents.registry import AGENTS, DEFAULT_AGENT

    assert DEFAULT_AGENT in AGENTS
    code, doc = run("align", "--stages", "slits", "--budget", "4", "--rays", "1000", "--json")
    assert code == (0 if doc["success"] else 1) and doc["agent"] == DEFAULT_AGENT


@pytest.mark.parametrize("args,needle", [
    (["bench", "align", "--agents", "scan,bogus"], "unknown agent 'bogus'"),
    (["bench", "align", "--agents", "rl", "--stage", "full"], "no shipped policy for stage"),
    (["align", "--agent", "hybrid", "--stages", "mono,full"], "no shipped policy for stage"),
    (["bench", "align", "--stage", "kbb"], "unknown alignment stage"),
    (["bench", "align", "--trials", "0"], "trials"),
    (["align", "--budget", "1"], "--budget"),
    (["align", "--misalign", "nan"], "--misalign"),
    (["align", "--stages", "kb,bogus"], "unknown alignment stage 'bogus'"),
])
def test_align_bad_input_exits_2_before_anything_moves(args, needle):
    code, doc = run(*args, "--json")
    assert code == 2 and needle in doc["error"]


def test_train_json_writes_a_policy_and_its_metadata(tmp_path):
    code, doc = run("train", "--stage", "mono", "--algo", "ppo", "--timesteps", "64", "--envs",
                    "2", "--rays", "100", "--eval-every", "0", "--checkpoint-every", "0",
                    "--max-steps", "4", "--no-progress", "--out", str(tmp_path), "--json")
    assert code == 0, doc
    assert set(doc) >= {"stage", "algo", "timesteps", "seed", "wall_s", "policy", "metadata",
                        "eval"}
    assert doc["policy"].endswith("mono.zip") and (tmp_path / "mono.zip").is_file()
    meta = json.loads((tmp_path / "mono.json").read_text())
    assert meta["config"]["max_steps"] == 4 and meta["config"]["rays"] == 100


def test_train_imitate_json_reports_the_imitation(tmp_path):
    code, doc = run("train", "--stage", "mono", "--timesteps", "0", "--imitate", "64", "--envs",
                    "2", "--rays", "100", "--net-arch", "32,32", "--eval-every", "0",
                    "--checkpoint-every", "0", "--max-steps", "4", "--no-progress", "--out",
                    str(tmp_path), "--json")
    assert code == 0, doc
    assert doc["timesteps"] == 0 and doc["imitation"]["samples"] == 64
    assert doc["imitation"]["rounds"] == 1 and doc["checkpoints"] is None
    meta = json.loads((tmp_path / "mono.json").read_text())
    assert meta["config"]["net_arch"] == [32, 32]


@pytest.mark.parametrize("args,needle", [
    (["--stage", "kbb"], "unknown alignment stage"),
    (["--timesteps", "0"], "nothing to train"),
    (["--imitate", "-3"], "imitation_steps must be"),
    (["--net-arch", "64,x"], "--net-arch"),
    (["--net-arch", "0"], "net_arch must be"),
    (["--p-imager-error", "1.5"], "p_imager_error"),
    (["--p-source", "2"], "p_source"),
    (["--energies", "9e3,x"], "--energies"),
    (["--max-step", "0"], "max_step"),
])
def test_train_bad_input_exits_2_before_training(args, needle, tmp_path):
    code, doc = run("train", *args, "--out", str(tmp_path / "never"), "--json")
    assert code == 2 and needle in doc["error"]
    assert not (tmp_path / "never").exists()
