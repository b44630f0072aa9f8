"""Speed of the fast twin against batch size, with xrt measured in the same run.

Run: ``python experiments/bench_fast.py [--rays 1000] [--out docs]``. Measures each
configuration of the fast twin (eager and compiled, float64 and float32) at each
batch size with ``twin.bench.bench_fast`` (what ``beamtwin bench twin --backend
fast`` runs), plus one alignment-stage workload (``--vary kb_h,kb_v``). Prints one
JSON document and writes ``fast_speed.json`` and ``img/fast_speed.png`` under
``--out``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from twin import default_preset
from twin.bench import bench_fast

#: (label, compile, dtype)
CONFIGS = [("eager, float64", False, "float64"), ("compiled, float64", True, "float64"),
           ("compiled, float32", True, "float32")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rays", type=int, default=1000)
    ap.add_argument("--batches", default="1,16,64,256,1024")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    desc = default_preset()
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    jobs = [(c, b) for c in CONFIGS for b in batches]
    for (label, comp, dtype), b in tqdm(jobs, desc="bench fast"):
        r = bench_fast(desc, rays=args.rays, batch=b, repeats=3, compile=comp, dtype=dtype)
        rows.append({"config": label, **r})
    stage = [{"config": f"{label}, KB stage", **bench_fast(
        desc, rays=args.rays, batch=max(batches), repeats=3, compile=comp, dtype=dtype,
        vary=["kb_h", "kb_v"])} for label, comp, dtype in CONFIGS[1:]]
    doc = {"rays": args.rays, "rows": rows, "stage": stage}
    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "fast_speed.json").write_text(json.dumps(doc, indent=1) + "\n")
    _plot(rows, args.rays, out / "img" / "fast_speed.png")
    print(json.dumps(doc, indent=1))


def _plot(rows: list[dict], rays: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for label, _, _ in CONFIGS:
        sel = [r for r in rows if r["config"] == label]
        ax.loglog([r["batch"] for r in sel], [r["states_per_s"] for r in sel], "o-",
                  label=f"fast twin, {label}: traced")
        ax.loglog([r["batch"] for r in sel], [r["observed_states_per_s"] for r in sel], ":",
                  marker=".", color=ax.lines[-1].get_color(),
                  label=f"fast twin, {label}: every reading")
    xrt = [r for r in rows if r["config"] == CONFIGS[0][0]]
    ax.loglog([r["batch"] for r in xrt], [r["xrt_states_per_s"] for r in xrt], "s--", color="k",
              label="xrt, same states, same run: traced")
    ax.loglog([r["batch"] for r in xrt], [100 * r["xrt_states_per_s"] for r in xrt], "-",
              color="0.6", lw=3, alpha=0.5, label="100x xrt (goal)")
    ax.set(xlabel="batch size (beamline states)", ylabel="states per second",
           title=f"{rays} rays per state, 2-core CPU")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the curves
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
