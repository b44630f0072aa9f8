"""What "aligned" means: one definition for a stage and for a run.

Every consumer of a verdict (``beamtwin align`` and its ``--json``, the process
exit code, the report, the NeXus file, ``bench align`` and ``bench oneclick``)
reads it from here, so they cannot disagree.

A **stage** is aligned when its own criterion holds on the beam it leaves behind
(:class:`agents.objective.Objective`: flux >= ``FLUX_FLOOR`` of the reference,
each FWHM <= ``SIZE_CAP`` of it for a focus, the centroid on its mark for a
centring or targeting stage, and the pointing far downstream). A stage that does
not get there is *failed*, with one reason of :data:`REASONS`:

``budget_spent``   the agent used every evaluation it was given
``no_beam``        the stage's diagnostic saw no beam where the agent stopped
``diverged``       the figure of merit collapsed; the stage's axes went back
``safety_refusal`` the safety layer refused a move the agent needed (envelope,
                   step cap, move budget or beamline-time limit)
``converged_below`` the agent stopped (or stalled) short of the criterion
``aborted``        the run was aborted (Ctrl-C, an abort request, a lost IOC)
``not_run``        an earlier stage ended the run before this one started

and for a run also ``final_beam`` (the beam at the sample misses the criterion),
``error`` (an exception ended the run: a lost IOC, a timeout) and
``data_not_written`` (the beam was aligned, but the run's data file could not be
written: a full disk; the document says where the partial file is).

A **run** is aligned when the final beam at the sample meets the whole-beamline
criterion (:func:`beam_meets`: flux >= ``FLUX_FLOOR`` and each FWHM <=
``SIZE_CAP`` of the reference) *and* every stage it ran is aligned. A run that
is not aligned names the first reason (:attr:`RunVerdict.reason`) and lists
every failure (:attr:`RunVerdict.failures`).

Exit codes of the commands that align (:data:`EXIT_CODES`): 0 aligned, 1 not
aligned (failed), 130 aborted; 2 stays for bad input, refused before anything
moved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.objective import FLUX_FLOOR, SIZE_CAP
from twin.observation import BeamStats

__all__ = ["REASONS", "EXIT_CODES", "ON_FAIL", "OnFail", "StageVerdict", "RunVerdict",
           "stage_verdict", "beam_meets", "run_verdict", "CRITERION_TEXT", "fmt3"]

#: why a stage or run is not aligned (see the module docstring)
REASONS = ("budget_spent", "no_beam", "diverged", "safety_refusal", "converged_below",
           "aborted", "not_run", "final_beam", "error", "data_not_written")

#: process exit code per run status
EXIT_CODES = {"success": 0, "fail": 1, "abort": 130}

OnFail = Literal["best", "start", "stay"]
#: what a run does with the motors of a stage (or run) that fails: ``best`` moves the
#: stage to the best point it measured; ``start`` returns every axis the run moved
#: to where the run found it and ends the run; ``stay`` leaves them where the agent did
ON_FAIL: tuple[OnFail, ...] = ("best", "start", "stay")

#: the whole-beamline criterion, as the JSON documents state it
CRITERION_TEXT = (f"at the sample: flux >= {FLUX_FLOOR:g} x the reference and each FWHM <= "
                  f"{SIZE_CAP:g} x the reference; and every stage met its own criterion")


def fmt3(v: Any) -> str:
    """A number for people: three significant figures ("—" when missing or not finite)."""
    return "—" if not isinstance(v, float | int) or not math.isfinite(v) else f"{v:.3g}"


@dataclass(frozen=True)
class StageVerdict:
    """One stage's verdict.

    Attributes
    ----------
    aligned : bool
    reason : str or None
        One of :data:`REASONS` when not aligned.
    detail : str
        A sentence for people (empty when aligned).
    """

    aligned: bool
    reason: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"aligned": self.aligned, "reason": self.reason, "detail": self.detail}


def stage_verdict(*, success: bool, error: str | None, evaluations: int, budget: int,
                  final: Mapping[str, Any], refusals: Sequence[Mapping[str, Any]] = ()
                  ) -> StageVerdict:
    """The verdict on a stage from its trial record (:class:`agents.harness.TrialResult`).

    Parameters
    ----------
    success : bool
        The stage's criterion held on the beam it left behind, and no error ended it.
    error : str or None
        Why the agent's run ended early (``DivergenceError: ...``, ``BudgetError: ...``,
        a refusal), if it did.
    evaluations, budget : int
    final : mapping
        The final judgement (``flux_ratio``, ``fwhm_x_ratio``, ...).
    refusals : sequence of mapping
        Moves the safety layer refused during the stage.
    """
    if success and error is None:
        return StageVerdict(True)
    err = error or ""
    flux = final.get("flux_ratio")
    if err.startswith("DivergenceError"):
        return StageVerdict(False, "diverged", err)
    if err.startswith("BudgetError") and ("move budget" in err or "beamline-time" in err):
        return StageVerdict(False, "safety_refusal", err)
    if err and not err.startswith("BudgetError"):
        return StageVerdict(False, "safety_refusal", err)
    if flux is None or not (isinstance(flux, float | int) and flux > 0):
        return StageVerdict(False, "no_beam",
                            f"no beam at the stage's diagnostic after {evaluations} evaluations")
    misses = _misses(final)
    if evaluations >= budget or err.startswith("BudgetError"):
        return StageVerdict(False, "budget_spent",
                            f"all {budget} evaluations used; {misses}")
    if refusals:
        last = refusals[-1].get("message", refusals[-1])
        return StageVerdict(False, "safety_refusal",
                            f"{len(refusals)} move(s) refused, the last: {last}; {misses}")
    return StageVerdict(False, "converged_below",
                        f"the agent stopped after {evaluations} of {budget} evaluations; {misses}")


def _misses(final: Mapping[str, Any]) -> str:
    """What of the criterion a final judgement misses, for people."""
    out = []
    flux = final.get("flux_ratio")
    if isinstance(flux, float | int) and flux < FLUX_FLOOR:
        out.append(f"flux {flux:.3g} x the reference (needs >= {FLUX_FLOOR:g})")
    for plane in ("x", "y"):
        r = final.get(f"fwhm_{plane}_ratio")
        if isinstance(r, float | int) and r > SIZE_CAP:
            out.append(f"FWHM {plane} {r:.3g} x the reference (needs <= {SIZE_CAP:g})")
    pts = final.get("pointing_um") or []
    if pts:
        out.append("pointing offsets " + ", ".join("—" if p is None else f"{p:.3g} um"
                                                   for p in pts))
    off = final.get("offset_um")
    if isinstance(off, float | int) and not out:
        out.append(f"centroid {off:.3g} um from its mark")
    return "; ".join(out) or "criterion not met"


def beam_meets(final: BeamStats | None, reference: BeamStats) -> tuple[bool, str]:
    """Whether the beam *final* at the sample meets the whole-beamline criterion.

    The run's last judging diagnostic stands in for the sample when a run ends before
    the KB (``--stages m1,mono,slits``): where the reference has no size there (an ion
    chamber), the flux alone is judged.

    Returns
    -------
    ok : bool
    why : str
        What it misses, for people (empty when it meets it).
    """
    if final is None:
        return False, "the final beam was not measured"
    if not final.flux > 0:
        return False, "no beam at the sample"
    out = []
    t = final.flux / reference.flux if reference.flux > 0 else math.nan
    if not t >= FLUX_FLOOR:
        out.append(f"flux {t:.3g} x the reference (needs >= {FLUX_FLOOR:g})")
    for plane, w, rw in (("x", final.fwhm_x_um, reference.fwhm_x_um),
                         ("y", final.fwhm_y_um, reference.fwhm_y_um)):
        if not math.isfinite(rw):
            continue  # a diagnostic that measures no size (an ion chamber): flux alone
        if not (math.isfinite(w) and w <= SIZE_CAP * rw):
            out.append(f"FWHM {plane} {w:.3g} um against {rw:.3g} um (needs <= {SIZE_CAP:g} x)")
    return (not out), "; ".join(out)


@dataclass(frozen=True)
class RunVerdict:
    """A run's verdict.

    Attributes
    ----------
    aligned : bool
    exit_status : {"success", "fail", "abort"}
        Agrees with *aligned*: ``success`` only for an aligned run.
    reason : str or None
        The first reason the run is not aligned (:data:`REASONS`).
    detail : str
        A sentence for people.
    failures : list of dict
        ``{"stage", "reason", "detail"}`` for every failed stage, and ``{"stage":
        "run", "reason": "final_beam", ...}`` when the final beam misses the criterion.
    """

    aligned: bool
    exit_status: Literal["success", "fail", "abort"]
    reason: str | None
    detail: str
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The process exit code (:data:`EXIT_CODES`)."""
        return EXIT_CODES[self.exit_status]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"aligned": self.aligned, "exit_status": self.exit_status,
                "reason": self.reason, "detail": self.detail, "failures": list(self.failures),
                "criterion": CRITERION_TEXT}


def run_verdict(stages: Sequence[Mapping[str, Any]], final: BeamStats | None,
                reference: BeamStats, *, aborted: str | None = None,
                failed: str | None = None) -> RunVerdict:
    """The verdict on a run from its stages' records and the final beam at the sample.

    Parameters
    ----------
    stages : sequence of mapping
        The stages' records, each with ``stage`` and a ``verdict`` (:meth:`StageVerdict.to_dict`).
    final : BeamStats or None
        The final (true, in simulation) beam at the sample; None if not measured.
    reference : BeamStats
        What the beam at the sample is compared with.
    aborted : str, optional
        Why the run was aborted, if it was.
    failed : str, optional
        The error that ended the run, if one did.
    """
    failures = [{"stage": s["stage"], "reason": s["verdict"]["reason"],
                 "detail": s["verdict"]["detail"]}
                for s in stages if not s["verdict"]["aligned"]]
    ok, why = beam_meets(final, reference)
    if not ok:
        failures.append({"stage": "run", "reason": "final_beam", "detail": why})
    if aborted is not None:
        return RunVerdict(False, "abort", "aborted", aborted, failures)
    if failed is not None:
        return RunVerdict(False, "fail", "error", f"the run failed: {failed}", failures)
    if not failures:
        return RunVerdict(True, "success", None, "", [])
    first = failures[0]
    return RunVerdict(False, "fail", first["reason"],
                      f"{first['stage']}: {first['detail']}", failures)
