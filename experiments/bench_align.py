"""Alignment agents on equal terms: the benchmark table and convergence plots in docs/agents.md.

Run: ``python experiments/bench_align.py [--trials 10] [--stages kb,mono,m1,sample]``.
For each stage it runs ``beamtwin bench align`` (the same code) with every built
agent on the same seeded 1x-misaligned beamlines, writes
``docs/agents_bench.json`` and ``docs/img/align_<stage>.png``, and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agents.bench import bench_align, plot_convergence
from agents.harness import BenchSettings
from agents.registry import AGENTS
from twin import __version__, default_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--stages", default="kb,mono,m1,sample")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    desc = default_preset()
    settings = BenchSettings(rays=5000, budget=args.budget, misalign=1.0)
    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    docs = {}
    rows = ["| stage | agent | success | median evals | p90 evals | flux ratio | FWHM ratio "
            "| optimiser s/eval | beamline time s |", "|---|---|---|---|---|---|---|---|---|"]
    for stage in args.stages.split(","):
        print(f"stage {stage}", file=sys.stderr)
        doc, raw = bench_align(desc, list(AGENTS), stage, trials=args.trials, seed=args.seed,
                               settings=settings,
                               progress=lambda n, k, t: print(f"  {n} {k}/{t}",
                                                              file=sys.stderr))
        doc["plot"] = plot_convergence(raw, str(out / "img" / f"align_{stage}.png"),
                                       title=f"stage {stage}: {args.trials} trials, "
                                             f"misalign 1, budget {args.budget}")
        docs[stage] = doc
        for name, a in doc["agents"].items():
            rows.append(f"| {stage} | {name} | {a['success_rate']:.0%} | "
                        f"{a['median_evaluations']:.0f} | {a['p90_evaluations']:.0f} | "
                        f"{a['final_flux_ratio']:.2f} | {a['final_fwhm_ratio'] or float('nan'):.2f}"
                        f" | {a['optimizer_s_per_eval']:.4f} | {a['median_beamline_time_s']:.0f} |")
    result = {"command": f"python experiments/bench_align.py --trials {args.trials} --stages "
                         f"{args.stages} --budget {args.budget} --seed {args.seed}",
              "version": __version__, "stages": docs, "table": rows}
    (out / "agents_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
