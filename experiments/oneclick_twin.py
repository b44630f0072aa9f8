"""One-click alignment of the whole simulated beamline, over several seeds and agents.

Run: ``python experiments/oneclick_twin.py [--seeds S1,S2,...] [--agents steer,separable]
[--backend xrt] [--rays 5000]`` (without ``--seeds``, five seeds drawn afresh). For the
docs' success rates use ``experiments/bench_oneclick.py`` (>= 50 fresh trials).

For each agent and seed it runs what ``beamtwin align --seed S --agent A --json`` runs
(:func:`agents.bench.one_click_align`): day-one hidden errors on all 28 motors, m1 ->
mono -> slits -> kb -> sample, budget 100 per stage, noise on, and the final true beam at
the sample judged against the ideal one with the same rays. It writes every run's
document (less the per-stage refusals) to ``docs/oneclick_twin.json`` (or ``--doc``) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from agents.bench import one_click_align
from agents.harness import BenchSettings
from twin import default_preset

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default=None, help="comma-separated [default: 5 drawn afresh]")
    ap.add_argument("--agents", default="steer,separable")
    ap.add_argument("--backend", default="xrt", choices=["xrt", "fast"])
    ap.add_argument("--rays", type=int, default=5000)
    ap.add_argument("--doc", default=str(DOCS / "oneclick_twin.json"))
    args = ap.parse_args()
    desc = default_preset()
    settings = BenchSettings(rays=args.rays, backend=args.backend)
    if args.seeds is None:
        from agents.oneclick_bench import fresh_seed

        base = fresh_seed()
        seeds = [base + k for k in range(5)]
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {}
    for agent in args.agents.split(","):
        for seed in seeds:
            print(f"{agent} seed {seed}", file=sys.stderr)
            doc = one_click_align(desc, agent_name=agent, stage_names=None, seed=seed,
                                  settings=settings)
            for st in doc["stages"]:
                st.pop("refusals", None)
            runs.setdefault(agent, []).append(doc)
    summary = {}
    print("| agent | whole beamline aligned | evaluations (median, range) | beamline time "
          "(median, range) | final flux | final FWHM / ideal (x, y) |")
    print("|---|---|---|---|---|---|")
    for agent, docs in runs.items():
        ev = [d["evaluations"] for d in docs]
        bt = [d["beamline_time_s"] for d in docs]
        fx = [d["final"]["fwhm_x_um"] / d["ideal"]["fwhm_x_um"] for d in docs]
        fy = [d["final"]["fwhm_y_um"] / d["ideal"]["fwhm_y_um"] for d in docs]
        fl = [d["final_flux_ratio"] for d in docs]
        ok = sum(d["success"] for d in docs)
        summary[agent] = {"success": ok, "runs": len(docs),
                          "median_evaluations": statistics.median(ev),
                          "median_beamline_time_s": statistics.median(bt)}
        print(f"| `{agent}` | {ok} of {len(docs)} | {statistics.median(ev):.0f} ({min(ev)}–"
              f"{max(ev)}) | {statistics.median(bt):.0f} s ({min(bt):.0f}–{max(bt):.0f}) | "
              f"{min(fl):.2f}–{max(fl):.2f}x | {min(fx):.2f}–{max(fx):.2f}, "
              f"{min(fy):.2f}–{max(fy):.2f} |")
    Path(args.doc).write_text(json.dumps({"backend": args.backend, "rays": args.rays,
                                          "seeds": seeds, "summary": summary, "runs": runs},
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()
