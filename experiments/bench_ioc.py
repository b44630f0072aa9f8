"""Speed of the simulated IOCs over Channel Access, with caproto's stock server as baseline.

Run: ``python experiments/bench_ioc.py [--out docs]``. Runs ``beamtwin bench ioc``
(the same measurement), writes ``ioc_bench.json`` and ``img/ioc_latency.png``
(round-trip and put-to-monitor latencies per server) and prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from controllers.bench_ioc import bench_ioc
from twin import __version__


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    servers = ["stock", "nodelay", "beamtwin"]
    labels = {"stock": "caproto stock", "nodelay": "stock + TCP_NODELAY",
              "beamtwin": "beamtwin (NODELAY + no batching wait)"}
    metrics = [("put_wait_get_field", "put(wait) + get\n(VELO, RBV)"),
               ("put_wait_get_null_move", "put(wait) + get\n(null move of VAL)"),
               ("put_to_monitor", "put -> monitor\nupdate"),
               ("get", "get")]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = np.arange(len(metrics))
    w = 0.26
    for i, s in enumerate(servers):
        med = [doc["round_trip"][s][m]["median_ms"] for m, _ in metrics]
        p90 = [doc["round_trip"][s][m]["p90_ms"] for m, _ in metrics]
        bars = ax.bar(x + (i - 1) * w, med, w, label=labels[s])
        ax.errorbar(x + (i - 1) * w, med, yerr=[[0] * len(med), np.subtract(p90, med)],
                    fmt="none", ecolor="k", capsize=2, lw=0.8)
        for b, v in zip(bars, med, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v * 1.08, f"{v:.1f}", ha="center",
                    fontsize=7)
    ax.axhline(2.0, color="r", ls=":", lw=1, label="goal: 2 ms")
    ax.set_yscale("log")
    ax.set_xticks(x, [m[1] for m in metrics], fontsize=8)
    ax.set_ylabel("median latency, ms (bar: p90)")
    ax.set_title("pyepics against the beamline IOC, loopback, 2-core CPU", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs")
    ap.add_argument("--round-trips", type=int, default=500)
    ap.add_argument("--monitor-s", type=float, default=5.0)
    args = ap.parse_args()
    out = Path(args.out)
    doc = bench_ioc(round_trips=args.round_trips, monitor_s=args.monitor_s,
                    progress=lambda m: print(f"bench ioc: {m}", file=sys.stderr))
    doc["command"] = (f"python experiments/bench_ioc.py --round-trips {args.round_trips} "
                      f"--monitor-s {args.monitor_s}")
    doc["version"] = __version__
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "ioc_bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, out / "img" / "ioc_latency.png")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
