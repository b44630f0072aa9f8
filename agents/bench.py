"""``beamtwin bench align`` and ``beamtwin align``: agents on equal terms, and one-click alignment.

Every agent of a benchmark meets the same seeded misaligned beamlines (trial
``k`` uses seed ``seed + k``), the same budget and the same safety layer. A trial
is judged on the true beam the agent leaves behind; a failed trial counts its
whole budget of evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agents.harness import (
    BenchSettings,
    References,
    TrialResult,
    align,
    check_agent,
    stage_trial,
)
from agents.objective import FLUX_FLOOR, SIZE_CAP
from agents.registry import make_agent
from agents.stages import stage, stages
from agents.verdict import OnFail, beam_meets, run_verdict
from twin.description import BeamlineDescription
from twin.errors import ConfigError
from twin.hidden import HiddenErrors
from twin.observation import BeamStats
from twin.plotting import save_figure
from twin.simulator import TwinBeamline

__all__ = ["bench_align", "one_click_align", "summarise", "plot_convergence", "beamline_aligned"]


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarise(results: Sequence[TrialResult]) -> dict[str, Any]:
    """The per-agent figures of ``bench align --json``."""
    ev = [r.counted_evaluations for r in results]
    flux = [r.final["flux_ratio"] for r in results if r.final.get("flux_ratio") is not None]
    fwhm = [r.final["fwhm_ratio"] for r in results if r.final.get("fwhm_ratio") is not None]
    n_eval = sum(r.evaluations for r in results)
    return {
        "success_rate": sum(r.success for r in results) / len(results),
        "median_evaluations": _pct(ev, 50),
        "p90_evaluations": _pct(ev, 90),
        "final_flux_ratio": _pct(flux, 50),
        "final_fwhm_ratio": _pct(fwhm, 50),
        "optimizer_s_per_eval": sum(r.optimizer_s for r in results) / max(n_eval, 1),
        "median_beamline_time_s": _pct([r.beamline_time_s for r in results], 50),
        "median_moves": _pct([r.moves for r in results], 50),
        "errors": sum(r.error is not None for r in results),
    }


def bench_align(desc: BeamlineDescription, agent_names: Sequence[str], stage_name: str, *,
                trials: int, seed: int, settings: BenchSettings,
                progress: Callable[[str, int, int], None] | None = None
                ) -> tuple[dict[str, Any], dict[str, list[TrialResult]]]:
    """Run every agent on the same *trials* beamlines; returns (JSON doc, raw results)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be an integer >= 1, got {trials!r}")
    st = stage(desc, stage_name)  # refuse an unknown stage before any work
    agents = {n: make_agent(n) for n in agent_names}  # refuse unknown agents up front
    for agent in agents.values():
        check_agent(agent, st)
    raw: dict[str, list[TrialResult]] = {}
    for name, agent in agents.items():
        raw[name] = []
        for k in range(trials):
            raw[name].append(stage_trial(desc, stage_name, agent, seed=seed + k,
                                         settings=settings))
            if progress is not None:
                progress(name, k + 1, trials)
    doc = {"stage": stage_name, "trials": trials, "seed": seed,
           "agents": {n: summarise(r) for n, r in raw.items()},
           "budget": settings.budget, "misalign": settings.misalign, "rays": settings.rays,
           "backend": settings.backend, "noise": settings.noise,
           "success_criterion": f"flux >= {FLUX_FLOOR:g} x ideal and FWHM <= {SIZE_CAP:g} x "
                                f"ideal (true beam, after the agent's last move)"}
    return doc, raw


def one_click_align(desc: BeamlineDescription, *, agent_name: str | None,
                    stage_names: Sequence[str] | None, seed: int, settings: BenchSettings,
                    progress: Callable[[str], None] | None = None,
                    on_fail: OnFail = "best",
                    machine: BeamlineDescription | None = None) -> dict[str, Any]:
    """Progressive alignment of a misaligned simulated beamline; the ``align --json`` doc.

    *machine*, if given, is the beamline that is really there (a reality gap: a mirror
    off its design distance, a larger source); the agents and the references know only
    *desc*, as on a real beamline. The verdict then still compares the final beam with
    *desc*'s ideal: a beamline that cannot reach its design is reported as not aligned.

    Hidden errors sit on every motor (drawn at ``settings.misalign`` from *seed*),
    also on those no stage aligns. The final true beam at the sample is judged
    against the ideal beamline traced with the same source rays
    (:meth:`agents.harness.References.of` with the hidden errors), and the run's
    verdict is :func:`agents.verdict.run_verdict`: ``success``, ``exit_status`` and
    the exit code of ``beamtwin align`` all read it.
    """
    from agents.registry import DEFAULT_AGENT, agent_for_stage

    name = agent_name or DEFAULT_AGENT
    make_agent(name)
    hidden = HiddenErrors.draw(desc, settings.misalign, seed)
    refs = References.of(desc, settings, seed, hidden)  # the ideal beamline, same rays
    bl = TwinBeamline(machine or desc, hidden=hidden, seed=seed, backend=settings.backend,
                      rays=settings.rays, noise=settings.noise,
                      disturbances=settings.disturbances)
    kb = stages(desc).get("kb")
    sample = kb.diagnostic if kb is not None else desc.detector.name
    before = bl.ground_truth().reading(sample).stats
    seen = bl if machine is None else _AsDescribed(bl, desc)  # agents know only desc
    doc = align(desc, seen, lambda st: agent_for_stage(name, desc, st), stage_names=stage_names,
                settings=settings, references=refs, seed=seed, progress=progress,
                on_fail=on_fail)
    final = bl.ground_truth().reading(sample).stats
    ideal = refs.true[sample]
    st = doc["stages"]
    verdict = run_verdict(st, final, ideal)
    return {"success": verdict.aligned, "agent": name, "seed": seed,
            "misalign": settings.misalign,
            "evaluations": sum(s["evaluations"] for s in st),
            "moves": sum(s["moves"] for s in st),
            "beamline_time_s": bl.time_s,
            "stages": st, "observed_at": sample,
            "before": before.to_dict(), "final": final.to_dict(), "ideal": ideal.to_dict(),
            "final_flux_ratio": final.flux / ideal.flux if ideal.flux > 0 else None,
            "stages_aligned": sum(bool(s["success"]) for s in st),
            "exit_status": verdict.exit_status, "reason": verdict.reason,
            "verdict": verdict.to_dict(), "on_fail": on_fail,
            "stopped": doc.get("stopped"), "returned_to_start": doc.get("returned_to_start"),
            "backend": settings.backend, "rays": settings.rays}


class _AsDescribed:
    """A simulated beamline that tells agents the user's description, not the machine's
    (``desc``): everything else is the machine's."""

    def __init__(self, beamline: TwinBeamline, desc: BeamlineDescription) -> None:
        self._beamline = beamline
        self.desc = desc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._beamline, name)


def beamline_aligned(final: BeamStats, ideal: BeamStats) -> bool:
    """The whole-beamline beam criterion (:func:`agents.verdict.beam_meets`)."""
    return beam_meets(final, ideal)[0]


def plot_convergence(raw: dict[str, list[TrialResult]], path: str, *, title: str) -> str:
    """Figure of merit (best so far, measured) against evaluations: median and 25-75 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, results in raw.items():
        n = max(len(r.foms) for r in results)
        curves = np.full((len(results), n), np.nan)
        for i, r in enumerate(results):
            best = np.maximum.accumulate(np.asarray(r.foms, dtype=float))
            curves[i, :len(best)] = best
            curves[i, len(best):] = best[-1]
        x = np.arange(1, n + 1)
        med = np.nanmedian(curves, axis=0)
        lo, hi = np.nanpercentile(curves, 25, axis=0), np.nanpercentile(curves, 75, axis=0)
        (line,) = ax.plot(x, med, label=name)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    ax.axhline(0.9, color="k", ls=":", lw=1, label="stop (0.9)")
    ax.set_yscale("log")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best figure of merit so far (1 = ideal)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
