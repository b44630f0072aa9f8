"""The stabilisation benchmark for the docs (issue 8): every corrector, several beamlines.

Run: ``python experiments/bench_stabilize.py [--seeds 0,1,2] [--duration 60]``.

For each seed (a beamline with its own hidden gap dependence, its own held-out
schedules and noise) it runs ``beamtwin stabilize bench`` in-process: the
calibration scans, the fits, the tuning on training schedules, and every
corrector on one held-out schedule of each kind, with the thermal drift and
without it. The RL corrector is the shipped policy (experiments/train_stabilizer.py).
It writes ``docs/stabilize_bench.json`` (every seed's document and a summary,
the medians over seeds) and ``docs/img/stabilize.png`` (seed 0: the beam at the
sample against time on the ``steps`` schedule).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from agents.stabilize.bench import BenchSettings, bench_stabilize
from controllers.stabilize_plot import plot_runs
from twin.presets import default_preset

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--doc", type=Path, default=DOCS / "stabilize_bench.json")
    ap.add_argument("--plot", type=Path, default=DOCS / "img" / "stabilize.png")
    a = ap.parse_args()
    desc = default_preset()
    seeds = [int(s) for s in a.seeds.split(",")]
    runs: dict[int, dict] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        doc = bench_stabilize(desc, seed=seed, settings=BenchSettings(duration_s=a.duration),
                              keep_runs=seed == seeds[0],
                              progress=lambda m, s=seed: print(f"seed {s}: {m}", flush=True))
        kept = doc.pop("_runs", None)
        if kept is not None:
            doc["plot"] = plot_runs(kept, a.plot)
        for m in doc["correctors"].values():
            m.pop("per_schedule", None)
        runs[seed] = doc
    names = list(runs[seeds[0]]["correctors"])
    summary = {}
    for n in names:
        ms = [runs[s]["correctors"][n] for s in seeds]
        summary[n] = {k: statistics.median(m[k] for m in ms) for k in (
            "centroid_rms_um", "size_rms_pct", "max_excursion_um", "centroid_x_rms_um",
            "centroid_y_rms_um", "size_x_rms_pct", "inference_us_median",
            "inference_us_p99")}
        summary[n]["gap_only_centroid_rms_um"] = statistics.median(
            m["gap_only"]["centroid_rms_um"] for m in ms)
        summary[n]["gap_only_size_rms_pct"] = statistics.median(
            m["gap_only"]["size_rms_pct"] for m in ms)
    goals = {g: [runs[s]["goals"][g] for s in seeds] for g in runs[seeds[0]]["goals"]}
    ratios = {r: [runs[s]["ratios"][r] for s in seeds] for r in runs[seeds[0]]["ratios"]}
    out = {"seeds": seeds, "duration_s": a.duration, "summary_median": summary,
           "goals_per_seed": goals, "ratios_per_seed": ratios,
           "wall_s": time.perf_counter() - t0, "runs": {str(s): d for s, d in runs.items()}}
    a.doc.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"summary_median": summary, "goals_per_seed": goals,
                      "ratios_per_seed": ratios}, indent=1))


if __name__ == "__main__":
    main()
