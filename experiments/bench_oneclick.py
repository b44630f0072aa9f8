"""One-click alignment on freshly seeded beamlines: the docs' tables and plots (issue 22).

Run: ``python experiments/bench_oneclick.py [--trials 50] [--misalign 1,1.5] [--workers 2]
[--epics-trials 20]``.

For each misalignment scale it runs ``beamtwin bench oneclick`` (xrt, 5,000 rays,
noise, budget 100 per stage, the ``auto`` agent, ``--on-fail best``) on ``--trials``
beamlines whose base seed is drawn afresh from the operating system's entropy, never
a list of seeds the code has met; with ``--epics-trials`` also over EPICS, each trial
against its own IOC with the xrt twin and the disturbances behind it. It writes
``docs/oneclick_bench[_m{scale}].json`` (summary), ``..._runs.json`` (every run) and
``docs/img/oneclick_bench[_m{scale}].png``, and prints the Markdown table of the docs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agents.harness import BenchSettings
from agents.oneclick_bench import bench_oneclick, plot_oneclick
from twin import default_preset
from twin.cliutil import jsonable

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _suffix(scale: float) -> str:
    return "" if scale == 1.0 else f"_m{scale:g}".replace(".", "")


def _write(name: str, doc: dict, runs: list) -> None:
    (DOCS / f"{name}.json").write_text(json.dumps(jsonable(doc), indent=1) + "\n")
    (DOCS / f"{name}_runs.json").write_text(
        json.dumps(jsonable({"summary": doc, "runs": runs}), indent=1) + "\n")
    doc["plot"] = plot_oneclick(doc, runs, str(DOCS / "img" / f"{name}.png"))


def _row(label: str, d: dict) -> str:
    lo, hi = d["success_ci95"]
    return (f"| {label} | **{d['aligned']} of {d['trials']}** ({d['success_rate']:.0%}; "
            f"95 % CI {lo:.0%}–{hi:.0%}) | {d['median_evaluations']:.0f} | "
            f"{d['p90_evaluations']:.0f} | {d['median_beamline_time_s']:.0f} s | "
            f"{d['seed']}+k |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--misalign", default="1,1.5")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epics-trials", type=int, default=0)
    args = ap.parse_args()
    desc = default_preset()
    rows = []
    for scale in (float(s) for s in args.misalign.split(",")):
        settings = BenchSettings(rays=5000, backend="xrt", misalign=scale)
        print(f"twin, misalign {scale:g}: {args.trials} trials", file=sys.stderr)
        doc, runs = bench_oneclick(desc, trials=args.trials, seed=None, settings=settings,
                                   workers=args.workers)
        _write(f"oneclick_bench{_suffix(scale)}", doc, runs)
        rows.append(_row(f"xrt twin, misalign {scale:g}", doc))
    if args.epics_trials:
        from controllers.oneclick import epics_trial

        settings = BenchSettings(rays=5000, backend="xrt")
        fn = epics_trial(None, backend="xrt", rays=5000, misalign=1.0, budget=100,
                         agent_name=None, on_fail="best", out_dir="beamtwin-bench-oneclick")
        doc, runs = bench_oneclick(desc, trials=args.epics_trials, seed=None,
                                   settings=settings, trial_fn=fn)
        doc["epics"] = True
        _write("oneclick_epics_bench", doc, runs)
        rows.append(_row("over EPICS, xrt behind the IOC, disturbances on", doc))
    print("| one-click, `auto`, budget 100 per stage | aligned | median evaluations | "
          "p90 evaluations | median beamline time | seeds |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
