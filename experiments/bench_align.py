"""Alignment agents on equal terms: the benchmark table and convergence plots in docs/agents.md.

Run: ``python experiments/bench_align.py [--trials 50] [--stages kb,mono] [--agents ...]
[--seed S] [--out docs]``. Without ``--seed`` the base seed is drawn afresh (and
recorded): figures come from beamlines the code has never met.
For each stage it runs ``beamtwin bench align`` (the same code) on the same
seeded 1x-misaligned beamlines, keeps every trial in
``docs/agents_bench_raw.json``, and rebuilds ``docs/agents_bench.json``,
``docs/img/align_<stage>.png`` and the Markdown table from all trials kept.
``--agents`` re-runs some agents and keeps the others' trials, provided they
were run with the same trials, seed and budget; ``--report-only`` rebuilds the
outputs from the trials kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agents.bench import bench_align, plot_convergence, summarise
from agents.harness import BenchSettings, TrialResult
from agents.registry import AGENTS
from twin import __version__, default_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--stages", default="kb,mono")
    ap.add_argument("--agents", default=",".join(AGENTS))
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None,
                    help="base seed (trial k uses seed + k) [default: drawn afresh]")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--report-only", action="store_true",
                    help="Rebuild the table, JSON and plots from the trials kept; run nothing.")
    args = ap.parse_args()
    if args.seed is None:
        from agents.oneclick_bench import fresh_seed

        args.seed = fresh_seed()
    desc = default_preset()
    settings = BenchSettings(rays=5000, budget=args.budget, misalign=1.0)
    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    raw_path = out / "agents_bench_raw.json"
    kept = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    run = {"trials": args.trials, "seed": args.seed, "budget": args.budget}
    for stage in [] if args.report_only else args.stages.split(","):
        print(f"stage {stage}", file=sys.stderr)
        entry = kept.get(stage, {})
        if entry.get("run") != run:
            entry = {"run": run, "agents": {}}
        for agent in args.agents.split(","):  # saved agent by agent: a long run can stop
            _, raw = bench_align(desc, [agent], stage, trials=args.trials, seed=args.seed,
                                 settings=settings,
                                 progress=lambda n, k, t: print(f"  {n} {k}/{t}",
                                                                file=sys.stderr))
            entry["agents"][agent] = [{**r.to_dict(), "foms": r.foms} for r in raw[agent]]
            kept[stage] = entry
            raw_path.write_text(json.dumps(kept, indent=1) + "\n")
    rows = ["| stage | agent | success | median evals | p90 evals | flux ratio | FWHM ratio "
            "| optimiser s/eval | beamline time s |", "|---|---|---|---|---|---|---|---|---|"]
    docs = {}
    for stage, entry in kept.items():
        derived = ("verdict", "reason")  # to_dict() adds them; the record rebuilds them
        results = {n: [TrialResult(**{k: v for k, v in t.items() if k not in derived})
                       for t in trials]
                   for n, trials in sorted(entry["agents"].items(),
                                           key=lambda kv: list(AGENTS).index(kv[0]))}
        summary = {n: summarise(r) for n, r in results.items()}
        r = entry["run"]
        plot = plot_convergence(results, str(out / "img" / f"align_{stage}.png"),
                                title=f"stage {stage}: {r['trials']} trials, misalign 1, "
                                      f"budget {r['budget']}")
        docs[stage] = {"stage": stage, **r, "agents": summary, "plot": plot}
        for name, a in summary.items():
            rows.append(f"| {stage} | {name} | {a['success_rate']:.0%} | "
                        f"{a['median_evaluations']:.0f} | {a['p90_evaluations']:.0f} | "
                        f"{a['final_flux_ratio']:.2f} | {a['final_fwhm_ratio'] or float('nan'):.2f}"
                        f" | {a['optimizer_s_per_eval']:.4f} | {a['median_beamline_time_s']:.0f} |")
    result = {"command": f"python experiments/bench_align.py --trials {args.trials} --stages "
                         f"{args.stages} --budget {args.budget} --seed {args.seed}",
              "version": __version__, "rays": settings.rays, "backend": settings.backend,
              "stages": docs, "table": rows}
    (out / "agents_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
