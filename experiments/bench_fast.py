"""Speed of the fast twin against batch size, with xrt measured in the same run.

Run: ``python experiments/bench_fast.py [--rays 1000] [--out docs/img]``. Prints one
JSON document (a list of ``beamtwin bench twin --backend fast`` results) and writes
``fast_speed.png``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from twin import default_preset
from twin.bench import bench_fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rays", type=int, default=1000)
    ap.add_argument("--batches", default="1,4,16,64,256,1024")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    desc = default_preset()
    rows = [bench_fast(desc, rays=args.rays, batch=int(b), repeats=3)
            for b in args.batches.split(",")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog([r["batch"] for r in rows], [r["states_per_s"] for r in rows], "o-",
              label="fast twin (torch, CPU, float64)")
    ax.loglog([r["batch"] for r in rows], [r["xrt_states_per_s"] for r in rows], "s--",
              label="xrt, same states, same run")
    ax.set(xlabel="batch size (beamline states)", ylabel="states per second",
           title=f"{args.rays} rays per state, 2-core CPU")
    ax.legend()
    fig.tight_layout()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.out) / "fast_speed.png", dpi=110)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
