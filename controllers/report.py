"""The report of a one-click alignment: pictures, every move, the final figures.

:func:`write_report` writes, in one folder:

* ``beam.png``: the beam at every camera before and after the alignment;
* ``convergence.png``: the figure of merit at every evaluation, coloured by stage;
* ``report.md``: the stages, the final figures against the ideal beamline, the
  refusals and suspensions, and every move (target and readback);
* ``report.json``: the same, for scripts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twin.cliutil import jsonable
from twin.plotting import save_figure

__all__ = ["write_report"]


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _plot_beams(path: Path, before: Mapping[str, np.ndarray | None],
                after: Mapping[str, np.ndarray | None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in before if before[n] is not None or after.get(n) is not None]
    if not names:
        return
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.2), squeeze=False)
    for j, n in enumerate(names):
        window = _window([before.get(n), after.get(n)])
        for i, (label, imgs) in enumerate((("before", before), ("after", after))):
            ax = axes[i][j]
            img = imgs.get(n)
            if img is not None:
                r0, r1, c0, c1 = window
                ax.imshow(img[r0:r1, c0:c1], cmap="inferno", origin="upper",
                          interpolation="nearest")
            ax.set_title(f"{n}: {label} (cropped)", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _window(images: Sequence[np.ndarray | None], *, level: float = 0.05,
            min_px: int = 24) -> tuple[int, int, int, int]:
    """Rows and columns (r0, r1, c0, c1) around the beam in any of *images*, padded."""
    shape = next(i.shape for i in images if i is not None)
    rows, cols = [], []
    for img in images:
        if img is None or not np.any(img > 0):
            continue
        r, c = np.nonzero(img > level * float(np.max(img)))
        rows += [int(r.min()), int(r.max())]
        cols += [int(c.min()), int(c.max())]
    if not rows:
        return 0, shape[0], 0, shape[1]

    def span(lo: int, hi: int, n: int) -> tuple[int, int]:
        half = max((hi - lo) * 0.8, min_px / 2)
        mid = (lo + hi) / 2
        return max(int(mid - half), 0), min(int(mid + half) + 1, n)

    r0, r1 = span(min(rows), max(rows), shape[0])
    c0, c1 = span(min(cols), max(cols), shape[1])
    return r0, r1, c0, c1


def _plot_convergence(path: Path, events: Sequence[Mapping[str, float]],
                      stage_names: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(1, len(events) + 1)
    fom = np.array([e.get("fom", math.nan) for e in events], dtype=float)
    st = np.array([e.get("stage", 0) for e in events], dtype=int)
    for k, name in enumerate(stage_names):
        sel = st == k
        if sel.any():
            ax.plot(x[sel], np.clip(fom[sel], 1e-4, None), ".-", label=name, ms=4, lw=0.8)
    ax.axhline(0.95, color="k", ls=":", lw=1, label="agents stop (0.95)")
    ax.set_yscale("log")
    ax.set_xlabel("evaluation (event number)")
    ax.set_ylabel("figure of merit (1 = ideal)")
    ax.set_title("one-click alignment over EPICS")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_report(out_dir: str | Path, doc: Mapping[str, Any], *,
                 events: Sequence[Mapping[str, float]],
                 before_images: Mapping[str, np.ndarray | None],
                 after_images: Mapping[str, np.ndarray | None],
                 moves: Sequence[Mapping[str, Any]]) -> Path:
    """Write the report of run *doc* (the ``align --epics --json`` document) into *out_dir*.

    Returns the path of ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage_names = [s["stage"] for s in doc.get("stages", [])]
    _plot_beams(out / "beam.png", before_images, after_images)
    _plot_convergence(out / "convergence.png", events, stage_names)
    _write_text(out / "report.json", json.dumps(jsonable({**doc, "moves": list(moves)}),
                                                indent=1))
    f, i, b = doc.get("final") or {}, doc.get("ideal") or {}, doc.get("before") or {}
    lines = [
        f"# One-click alignment of {doc.get('beamline', 'the beamline')} over EPICS",
        "",
        f"- result: **{'aligned' if doc.get('success') else 'NOT aligned'}** "
        f"(exit status: {doc.get('exit_status', '')}"
        + ("" if doc.get("success") else
           f"; reason: {(doc.get('verdict') or {}).get('reason')}: "
           f"{(doc.get('verdict') or {}).get('detail')}")
        + f"); agent `{doc.get('agent')}`, prefix `{doc.get('prefix')}`",
        f"- criterion: {(doc.get('verdict') or {}).get('criterion', '')}",
        f"- {doc.get('evaluations')} evaluations, {doc.get('moves')} moves, "
        f"{_fmt(doc.get('beamline_time_s'), '.1f')} s of beamline time",
        f"- NeXus file: `{doc.get('nexus_file')}`",
        "",
        "![beam before and after](beam.png)",
        "",
        "![convergence](convergence.png)",
        "",
        f"## Beam at `{doc.get('observed_at')}`",
        "",
        "| | flux, ph/s | FWHM x, um | FWHM y, um | centroid x, um | centroid y, um |",
        "|---|---|---|---|---|---|",
    ]
    for label, s in (("before", b), ("after", f), ("ideal (twin)", i)):
        lines.append(f"| {label} | {_fmt(s.get('flux'))} | {_fmt(s.get('fwhm_x_um'))} | "
                     f"{_fmt(s.get('fwhm_y_um'))} | {_fmt(s.get('centroid_x_um'))} | "
                     f"{_fmt(s.get('centroid_y_um'))} |")
    lines += ["", "## Stages", "",
              "| stage | agent | aligned | evaluations | moves | beamline s | fom | why not |",
              "|---|---|---|---|---|---|---|---|"]
    for s in doc.get("stages", []):
        v = s.get("verdict") or {"aligned": s["success"], "reason": s.get("error"), "detail": ""}
        why = "" if v["aligned"] else f"{v['reason']}: {v['detail']}"
        lines.append(f"| {s['stage']} | {s['agent']} | {'yes' if v['aligned'] else 'no'} | "
                     f"{s['evaluations']} | {s['moves']} | {_fmt(s['beamline_time_s'], '.1f')} | "
                     f"{_fmt(s['final'].get('fom'), '.3g')} | {why} |")
    safety = doc.get("safety", {})
    lines += ["", "## Safety", "",
              f"- refusals: {len(safety.get('refusals', []))}",
              f"- beam suspensions: {safety.get('beam_losses', 0)} "
              f"({_fmt(safety.get('suspended_s'), '.1f')} s); frames discarded: "
              f"{safety.get('frames_discarded', 0)}",
              f"- CA writes: {safety.get('ca_puts', 0)}, all on the allowlist", ""]
    for r in safety.get("refusals", []):
        lines.append(f"  - {r.get('type')}: {r.get('message')}")
    lines += ["", f"## Every move ({len(moves)})", "",
              "| t, s | duration, s | targets | readbacks |", "|---|---|---|---|"]
    for m in moves:
        tg = ", ".join(f"{k}={_fmt(v, '.5g')}" for k, v in m["targets"].items())
        rb = ", ".join(f"{k}={_fmt(v, '.5g')}" for k, v in m["readbacks"].items())
        lines.append(f"| {_fmt(m['t'], '.2f')} | {_fmt(m['duration_s'], '.2f')} | {tg} | {rb} |")
    path = out / "report.md"
    _write_text(path, "\n".join(lines) + "\n")
    return path


def _write_text(path: Path, text: str) -> None:
    """Write *text* all or nothing (a temporary file renamed), so a full disk leaves
    no truncated report behind."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
