"""Separable refinement: one simplex per focusing plane, both fed by every measurement.

A Kirkpatrick-Baez pair focuses each plane with its own mirror: the horizontal
spot size depends only on the motors of the horizontally deflecting mirror, the
vertical one only on those of the vertically deflecting mirror. Every reading at
the sample reports both sizes, so two 3-D searches can run at once, each judging
its own plane, for the price of one 6-D search. A 3-D simplex also needs far
fewer evaluations than a 6-D one, and the KB's pitch-height-bend valley is 3-D
in each plane.

:func:`focusing_planes` splits a stage's motors by the plane their mirror
deflects in; :class:`SeparableSimplex` refines a point with one Nelder-Mead
simplex (ask/tell, :func:`nelder_mead`) per plane. Each plane minimises
``2 log(W / W_ref) - log(T c)`` (its own FWHM ratio, and the shared flux with its
constraint), so neither may buy a small spot with lost flux.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agents.classic import NelderMeadAgent
from agents.objective import FLUX_FLOOR
from agents.problem import AlignmentProblem, Evaluation
from agents.stages import Stage
from twin.description import BeamlineDescription, Mirror
from twin.errors import ConfigError

__all__ = ["focusing_planes", "plane_axes", "plane_loss", "nelder_mead", "SeparableSimplex",
           "SeparableAgent", "refine"]

#: deflection -> the plane a mirror focuses (and whose spot size it sets)
_PLANE = {"left": "x", "right": "x", "up": "y", "down": "y"}


def focusing_planes(desc: BeamlineDescription, st: Stage) -> dict[str, list[int]] | None:
    """Indices of the stage's motors by the plane they focus (``{"x": [...], "y": [...]}``).

    None if the stage is not separable that way: a motor that is not on a mirror,
    or mirrors in one plane only.
    """
    out: dict[str, list[int]] = {"x": [], "y": []}
    for i, name in enumerate(st.motors):
        e = desc.element(name.split(".")[0])
        if not isinstance(e, Mirror):
            return None
        out[_PLANE[e.deflection]].append(i)
    return out if out["x"] and out["y"] else None


def plane_axes(st: Stage, planes: Mapping[str, Sequence[int]]) -> dict[str, dict[str, int]]:
    """Each plane's motors by axis (``{"y": {"pitch": 3, "height": 4, "bend": 5}}``), as
    indices into the stage's motors."""
    return {p: {st.motors[i].rsplit(".", 1)[1]: i for i in idx} for p, idx in planes.items()}


def plane_loss(ev: Evaluation, diagnostic: str, plane: str, size: str = "fwhm") -> float:
    """One focusing plane's loss at *diagnostic*: ``2 log W - log(T c)``, its spot size ``W``
    (um) and the shared flux ratio ``T`` with its constraint ``c`` (so that no plane buys a
    small spot with lost flux); inf without beam or without a FWHM.

    *size* is ``"fwhm"`` (the size the success criterion judges) or ``"rms"``. The rms
    size weighs the tails that a pitch error's coma leaves beside the focus, which the
    FWHM hardly sees, and it averages every ray, so it is the smoother of the two to
    model (:class:`agents.bayes.BayesOptAgent` uses it).
    """
    if size not in ("fwhm", "rms"):
        raise ConfigError(f"plane size must be 'fwhm' or 'rms', got {size!r}")
    j = ev.judgement
    s = ev.observation.reading(diagnostic).stats
    fwhm = s.fwhm_x_um if plane == "x" else s.fwhm_y_um
    w = fwhm if size == "fwhm" else (s.rms_x_um if plane == "x" else s.rms_y_um)
    # a reading without a FWHM (a few stray rays) counts as no beam, whatever the size
    if not (j.flux_ratio > 0 and math.isfinite(fwhm) and fwhm > 0 and math.isfinite(w)
            and w > 0):
        return math.inf
    c = min(1.0, j.flux_ratio / FLUX_FLOOR) ** 4
    return 2.0 * math.log(w) - math.log(j.flux_ratio * c)


def nelder_mead(x0: np.ndarray, step: float, *, xatol: float = 0.004, fatol: float = 0.01
                ) -> Generator[np.ndarray, float, np.ndarray]:
    """Nelder-Mead as a coroutine: yields points in [-1, 1]^n, is sent their values.

    Standard coefficients (reflection 1, expansion 2, contraction and shrink 1/2),
    as scipy's. Returns the best point when the simplex is smaller than *xatol*
    and its values spread less than *fatol*.
    """
    n = len(x0)
    x0 = np.clip(np.asarray(x0, dtype=float), -1.0 + step, 1.0 - step)
    pts = [x0] + [np.clip(x0 + step * e, -1.0, 1.0) for e in np.eye(n)]
    vals = []
    for p in pts:
        vals.append((yield p.copy()))
    while True:
        order = np.argsort(vals)
        pts = [pts[i] for i in order]
        vals = [vals[i] for i in order]
        size = max(float(np.max(np.abs(p - pts[0]))) for p in pts[1:])
        if size <= xatol and vals[-1] - vals[0] <= fatol:
            return pts[0]
        c = np.mean(pts[:-1], axis=0)
        xr = np.clip(2.0 * c - pts[-1], -1.0, 1.0)
        fr = yield xr.copy()
        if fr < vals[0]:
            xe = np.clip(3.0 * c - 2.0 * pts[-1], -1.0, 1.0)
            fe = yield xe.copy()
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = c + 0.5 * ((xr if fr < vals[-1] else pts[-1]) - c)
            fc = yield xc.copy()
            if fc < min(fr, vals[-1]):
                pts[-1], vals[-1] = xc, fc
            else:
                for i in range(1, n + 1):
                    pts[i] = pts[0] + 0.5 * (pts[i] - pts[0])
                    vals[i] = yield pts[i].copy()


@dataclass
class SeparableSimplex:
    """Refine a focusing stage with one simplex per plane, sharing each measurement.

    Parameters
    ----------
    initial_step : float
        Simplex size, agent units; each restart halves it.
    xatol : float
        Simplex size at which a plane's search has converged, agent units.
    stop_fom : float
        Measured figure of merit at which to stop (with each FWHM within
        :data:`~agents.objective.SIZE_STOP` of the reference, on a focus).
    """

    initial_step: float = 0.05
    xatol: float = 0.004
    stop_fom: float = 0.95
    name: str = "separable"

    def continue_from(self, problem: AlignmentProblem, start: Evaluation,
                      planes: dict[str, list[int]]) -> np.ndarray:
        """Search from *start*; returns the chosen point (best of each plane, combined)."""
        diag = problem.stage.diagnostic
        goal = problem.stage.goal

        def done(ev: Evaluation) -> bool:
            return ev.judgement.looks_aligned(self.stop_fom, goal)

        def loss(ev: Evaluation, plane: str) -> float:
            return plane_loss(ev, diag, plane)

        best_ev = start
        best = {p: (loss(start, p), start.u[idx].copy()) for p, idx in planes.items()}
        step = self.initial_step
        while not done(best_ev) and problem.remaining > 1:
            gens = {p: nelder_mead(best[p][1], step, xatol=self.xatol)
                    for p in planes}
            asks = {p: next(g) for p, g in gens.items()}
            while asks and not done(best_ev) and problem.remaining > 1:
                u = best_ev.u.copy()
                for p, idx in planes.items():
                    u[idx] = asks[p] if p in asks else best[p][1]
                ev = problem.evaluate(u)
                if done(ev) or (ev.fom > best_ev.fom and not done(best_ev)):
                    best_ev = ev
                for p in list(asks):
                    f = loss(ev, p)
                    if f < best[p][0]:
                        best[p] = (f, ev.u[planes[p]].copy())
                    try:
                        asks[p] = gens[p].send(f)
                    except StopIteration:
                        del asks[p]  # this plane has converged; it holds its best point
            step = max(self.xatol * 2, step * 0.5)
        if done(best_ev):
            return best_ev.u.copy()
        u = best_ev.u.copy()
        for p, idx in planes.items():
            u[idx] = best[p][1]
        return u


def refine(problem: AlignmentProblem, start: Evaluation, desc: BeamlineDescription | None, *,
           stop_fom: float, initial_step: float) -> np.ndarray:
    """Local refinement from *start*: one simplex per focusing plane where the stage is
    separable (:func:`focusing_planes`), one Nelder-Mead simplex over every motor elsewhere
    (stopping where the criterion holds with a margin, or after a restart that gained
    nothing). Returns the chosen point."""
    planes = focusing_planes(desc, problem.stage) if desc is not None else None
    if planes is not None:
        return SeparableSimplex(initial_step=initial_step, stop_fom=stop_fom).continue_from(
            problem, start, planes)
    return NelderMeadAgent(initial_step=initial_step, stop_fom=stop_fom, stop_within_margin=True,
                           idle_restarts=1).continue_from(problem, start)


@dataclass
class SeparableAgent:
    """The classical agent that knows how a KB pair works: one simplex per focusing plane,
    from the start (one Nelder-Mead simplex over every motor on other stages).

    Parameters
    ----------
    initial_step : float
        Simplex size, agent units.
    stop_fom : float
    """

    initial_step: float = 0.4
    stop_fom: float = 0.95
    name: str = "separable"

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point."""
        # beam_search splits the planes with this module: imported here, not above
        from agents.beam_search import find_beam

        desc = getattr(problem.safe.inner, "desc", None)
        start = find_beam(problem, problem.observe_start(), desc)
        return refine(problem, start, desc, stop_fom=self.stop_fom,
                      initial_step=self.initial_step)
