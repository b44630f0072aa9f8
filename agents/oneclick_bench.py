"""``beamtwin bench oneclick``: one-click alignment over many freshly seeded beamlines.

Each trial is one whole one-click run (:func:`agents.bench.one_click_align` on the
twin, or a caller's trial function, e.g. over EPICS against an IOC), judged by
:func:`agents.verdict.run_verdict`. Trial ``k`` uses seed ``seed + k``; without a
seed the benchmark draws one afresh from the operating system's entropy and
reports it, so that figures never come from a list of seeds the code has met.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from agents.bench import _pct
from agents.harness import BenchSettings
from agents.verdict import CRITERION_TEXT, OnFail
from twin.description import BeamlineDescription
from twin.errors import BeamtwinError, ConfigError
from twin.plotting import save_figure

__all__ = ["bench_oneclick", "summarise_runs", "wilson_ci95", "fresh_seed", "plot_oneclick",
           "errored_run"]

#: a trial: seed -> the run's ``align --json`` document
TrialFn = Callable[[int], dict[str, Any]]


def fresh_seed() -> int:
    """A base seed drawn from the operating system's entropy (0 <= seed < 2**31 - 10**6)."""
    return secrets.randbelow(2**31 - 10**6)


def wilson_ci95(successes: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a success rate (``(0, 1)`` for no trial)."""
    if n <= 0:
        return 0.0, 1.0
    z = 1.959964
    p = successes / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def summarise_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of ``bench oneclick --json`` from the runs' documents.

    Every run counts the evaluations it used (a failed run's included): on a
    beamline that is what an operator waits for.
    """
    n = len(runs)
    ok = sum(bool(r["success"]) for r in runs)
    ev = [r["evaluations"] for r in runs]
    bt = [r["beamline_time_s"] for r in runs]
    failures = []
    for r in runs:
        if r["success"]:
            continue
        fs = r.get("verdict", {}).get("failures") or [{"stage": "run", "reason": r.get("reason"),
                                                        "detail": ""}]
        first = fs[0]
        failures.append({"seed": r["seed"], "stage": first["stage"], "reason": first["reason"],
                         "detail": first.get("detail", ""),
                         "all": [{"stage": f["stage"], "reason": f["reason"]} for f in fs]})
    stages: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(s["stage"] for r in runs for s in r["stages"]))
    for name in names:
        recs = [s for r in runs for s in r["stages"] if s["stage"] == name]
        aligned = [s for s in recs if s.get("verdict", {}).get("aligned", s["success"])]
        reasons = Counter(s.get("verdict", {}).get("reason") for s in recs
                          if not s.get("verdict", {}).get("aligned", s["success"]))
        stages[name] = {"runs": len(recs), "aligned": len(aligned),
                        "success_rate": len(aligned) / len(recs) if recs else None,
                        "median_evaluations": _pct([s["evaluations"] for s in recs], 50),
                        "p90_evaluations": _pct([s["evaluations"] for s in recs], 90),
                        "failures": dict(reasons)}
    lo, hi = wilson_ci95(ok, n)
    return {"trials": n, "aligned": ok, "success_rate": ok / n if n else None,
            "success_ci95": [lo, hi],
            "median_evaluations": _pct(ev, 50), "p90_evaluations": _pct(ev, 90),
            "median_beamline_time_s": _pct(bt, 50), "p90_beamline_time_s": _pct(bt, 90),
            "failures": failures, "stages": stages}


def _twin_trial(args: tuple[BeamlineDescription, str | None, int, BenchSettings, str]
                ) -> dict[str, Any]:
    """One one-click run on the twin (a top-level function, so that workers can run it)."""
    import torch

    from agents.bench import one_click_align

    desc, agent, seed, settings, on_fail = args
    torch.set_num_threads(1)
    try:
        doc = one_click_align(desc, agent_name=agent, stage_names=None, seed=seed,
                              settings=settings, on_fail=on_fail)  # type: ignore[arg-type]
    except BeamtwinError as exc:  # one trial's error is that trial's failure, with its seed
        return errored_run(seed, exc)
    for st in doc["stages"]:
        st.pop("refusals", None)
    return doc


def errored_run(seed: int, exc: BaseException) -> dict[str, Any]:
    """The record of a run that an error ended: failed, with the error as its reason."""
    detail = f"{type(exc).__name__}: {exc}"
    return {"seed": seed, "success": False, "exit_status": "fail", "reason": "error",
            "evaluations": 0, "moves": 0, "beamline_time_s": 0.0, "stages": [],
            "error": detail,
            "verdict": {"aligned": False, "exit_status": "fail", "reason": "error",
                        "detail": detail, "failures": [{"stage": "run", "reason": "error",
                                                        "detail": detail}]}}


def bench_oneclick(desc: BeamlineDescription, *, trials: int, seed: int | None,
                   settings: BenchSettings, agent_name: str | None = None,
                   on_fail: OnFail = "best", workers: int = 1,
                   trial_fn: TrialFn | None = None,
                   progress: Callable[[dict[str, Any]], None] | None = None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one-click alignment on *trials* beamlines; returns (JSON doc, runs).

    Parameters
    ----------
    trials : int
        Number of runs (>= 1).
    seed : int or None
        Base seed (trial k uses ``seed + k``); None draws one afresh (:func:`fresh_seed`).
    settings : BenchSettings
        Rays, budget per stage, misalignment, backend, noise.
    workers : int
        Local worker processes for twin trials (1: in this process).
    trial_fn : callable, optional
        seed -> run document; default: one-click on the twin with *settings*.
    progress : callable, optional
        Called with each finished run's document (and first, when the seed is drawn,
        with ``{"seed_drawn": base}``, so that a long run can be reproduced).

    A trial that raises a :class:`~twin.errors.BeamtwinError` is recorded as a failed
    run with reason ``error`` and its seed; the benchmark goes on.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be an integer >= 1, got {trials!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    from agents.registry import DEFAULT_AGENT, make_agent

    name = agent_name or DEFAULT_AGENT
    make_agent(name)  # an unknown agent is refused before any trial
    drawn = seed is None
    base = fresh_seed() if seed is None else seed
    seeds = [base + k for k in range(trials)]
    runs: list[dict[str, Any]] = []
    if progress is not None and drawn:
        progress({"seed_drawn": base})
    if trial_fn is not None:
        for s in seeds:
            try:
                runs.append(trial_fn(s))
            except BeamtwinError as exc:
                runs.append(errored_run(s, exc))
            if progress is not None:
                progress(runs[-1])
    elif workers == 1:
        for s in seeds:
            runs.append(_twin_trial((desc, name, s, settings, on_fail)))
            if progress is not None:
                progress(runs[-1])
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for doc in pool.map(_twin_trial, [(desc, name, s, settings, on_fail)
                                              for s in seeds]):
                runs.append(doc)
                if progress is not None:
                    progress(doc)
    doc = {**summarise_runs(runs), "seed": base, "seed_drawn": drawn, "seeds": seeds,
           "agent": name, "on_fail": on_fail, "beamline": desc.name,
           "misalign": settings.misalign, "budget": settings.budget, "rays": settings.rays,
           "backend": settings.backend, "noise": settings.noise,
           "success_criterion": CRITERION_TEXT}
    return doc, runs


def plot_oneclick(doc: dict[str, Any], runs: Sequence[dict[str, Any]], path: str) -> str:
    """Evaluations per stage (a box per stage, aligned runs' points and failed ones
    marked) and each stage's failures by reason; returns *path*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["stages"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    rng = np.random.default_rng(0)  # jitter only
    data = [[s["evaluations"] for r in runs for s in r["stages"] if s["stage"] == n]
            for n in names]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    for i, n in enumerate(names, start=1):
        for r in runs:
            for s in r["stages"]:
                if s["stage"] != n:
                    continue
                ok = s.get("verdict", {}).get("aligned", s["success"])
                ax.plot(i + rng.uniform(-0.18, 0.18), s["evaluations"],
                        "o" if ok else "x", color="tab:green" if ok else "tab:red",
                        ms=4, alpha=0.7)
    ax.axhline(doc["budget"], color="0.5", ls=":", lw=1)
    ax.text(0.6, doc["budget"], " budget", va="bottom", fontsize=8, color="0.4")
    ax.set_ylabel("evaluations in the stage")
    lo, hi = doc["success_ci95"]
    ax.set_title(f"{doc['aligned']} of {doc['trials']} aligned (95 % CI {lo:.0%}–{hi:.0%}); "
                 f"median {doc['median_evaluations']:.0f} evaluations", fontsize=10)
    reasons = sorted({k for n in names for k in doc["stages"][n]["failures"]})
    bottom = np.zeros(len(names))
    for reason in reasons:
        v = np.array([doc["stages"][n]["failures"].get(reason, 0) for n in names], dtype=float)
        bx.bar(names, v, bottom=bottom, label=reason)
        bottom += v
    bx.set_ylabel("failed runs of the stage")
    bx.set_title("failures by reason", fontsize=10)
    if reasons:
        bx.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"one-click on {doc['beamline']}: {doc['backend']}, misalign "
                 f"{doc['misalign']:g}, seeds {doc['seed']}+k", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
