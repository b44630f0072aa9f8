"""The stabilisation benchmark's figure: the beam at the sample against time.

One column per corrector shown (none, feedback, feed-forward, both), rows for
the horizontal and vertical centroid change (nm) and the vertical size change
(%), on the benchmark's first ``steps`` schedule (or its first), with the
undulator gap on a twin axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from twin.plotting import save_figure

__all__ = ["plot_runs", "SHOWN"]

#: correctors shown, and the labels they get
SHOWN = {"none": "none", "fb": "feedback", "ff_gp": "feed-forward (GP)",
         "ff_nn": "feed-forward (MLP)", "ff_fb": "feed-forward + feedback"}


def plot_runs(runs: Mapping[str, Sequence[object]], path: str | Path,
              kind: str = "steps") -> str:
    """Write the figure of the benchmark's *runs* (``{corrector: [RunResult]}``) to *path*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in SHOWN if n in runs]
    if "ff_fb" in runs and "ff_gp" in names and "ff_nn" in names:
        names.remove("ff_nn")
    first = runs[names[0]]
    idx = next((i for i, r in enumerate(first) if r.schedule.kind == kind), 0)  # type: ignore[attr-defined]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    sched = first[idx].schedule  # type: ignore[attr-defined]
    t = sched.time_s
    for name in names:
        tr = runs[name][idx].truth  # type: ignore[attr-defined]
        axes[0].plot(t, tr[:, 0] * 1e3, lw=0.8, label=SHOWN[name])
        axes[1].plot(t, tr[:, 1] * 1e3, lw=0.8, label=SHOWN[name])
        axes[2].plot(t, tr[:, 3], lw=0.8, label=SHOWN[name])
    axes[0].set_ylabel("centroid x change (nm)")
    axes[1].set_ylabel("centroid y change (nm)")
    axes[2].set_ylabel("vertical size change (%)")
    axes[2].set_xlabel("time (s)")
    gap_ax = axes[0].twinx()
    gap_ax.plot(t, sched.gap_mm, color="0.6", lw=1.0, ls="--")
    gap_ax.set_ylabel("gap (mm, dashed)", color="0.4")
    axes[0].legend(loc="upper left", fontsize=8, ncol=2)
    axes[0].set_title(f"beam at the sample during gap schedule {sched.name} "
                      "(thermal drift on)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=110)
    plt.close(fig)
    return str(out)
