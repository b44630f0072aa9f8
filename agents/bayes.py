"""Bayesian optimisation with BoTorch, in a trust region around the best point (TuRBO-like).

:class:`BayesOptAgent` models ``log(fom + 1e-3)`` with a Gaussian process whose
noise level is fitted (the readings are noisy), proposes the next point by
log expected improvement inside a box of half-width ``L`` around the best point
so far, and adapts ``L``: it doubles after ``success_tol`` improvements in a row
and halves after ``failure_tol`` evaluations without one; a collapsed region
restarts at full size around the best point (``tr_restarts`` times). Steps therefore stay
local, as on a beamline they should, while the first box spans half the search
range. The flux constraint is part of the figure of merit (a beam below 90 % of
the reference flux is penalised by the fourth power), so the model learns where
it holds. Data from earlier runs (``warm_start``) seeds the model, and the best
earlier point is measured first: on a beamline aligned before, that is where it
most likely is aligned again.

On a stage whose motors split into focusing planes (a KB pair, see
:func:`agents.separable.focusing_planes`) it runs one such GP per plane instead, on its
own plane's figure ``-(2 log W - log(T c))``: the plane's rms size ``W`` and the shared
flux with its constraint (:func:`agents.separable.plane_loss`). Each evaluation moves both
mirrors to their GP's proposal and feeds both GPs: two small searches for the price of one
6-D one. Where a plane's mirror has a pitch, a height and a bender, its GP searches pitch
and bender only, and the height follows them: it is set where a linear fit of the plane's
centroid on the three motors, over every reading with beam so far, puts the centroid on
the reference's (:func:`height_for_centre`). That is what staff do by hand (keep the beam
on the sample with one motor while they focus with the others), and it takes the beam-
steering direction out of the GP's valley. A plane whose spot is within
:data:`~agents.objective.SIZE_STOP` of the reference holds its point while the other
plane searches on. When the sample sees no beam at the start, the mirrors' heights
are rastered first (:func:`agents.beam_search.find_beam`), as the model-free agents do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from agents.beam_search import find_beam
from agents.objective import FLUX_FLOOR, FLUX_STOP, SIZE_CAP, SIZE_STOP
from agents.problem import AlignmentProblem, Evaluation
from agents.separable import focusing_planes, plane_axes, plane_loss
from twin.description import BeamlineDescription
from twin.errors import ConfigError

__all__ = ["BayesOptAgent", "height_for_centre"]

_EPS = 1e-3
#: a plane holding its focus searches again when its spot grows beyond this (relative to
#: the reference): between the stop margin and the success cap, clear of the 1 % noise
_HOLD_SIZE = (SIZE_STOP + SIZE_CAP) / 2
#: readings with beam needed before a plane's height follows its centroid fit
_MIN_CENTRE_ROWS = 4
#: flux (relative to the reference) below which a reading's centroid is too few rays to fit
_CENTRE_MIN_FLUX = 0.05


def height_for_centre(readings: Sequence[tuple[np.ndarray, float]], target_um: float,
                      pitch: float, bend: float) -> float | None:
    """Where the height puts a plane's centroid on *target_um*, for a pitch and a bender.

    Parameters
    ----------
    readings : sequence of (ndarray, float)
        ``((pitch, height, bend), centroid_um)`` for every reading with beam so far, the
        motors in agent units.
    target_um : float
        The centroid wanted (the reference's), um.
    pitch, bend : float
        The pitch and bender about to be set, agent units.

    Returns
    -------
    float or None
        The height, agent units, clipped to the box; None with fewer than four readings
        or a height that does not move the centroid. The fit is linear,
        ``c = a p + b h + d q + e``, by least squares (the least-norm solution where the
        readings do not determine it).
    """
    if len(readings) < _MIN_CENTRE_ROWS:
        return None
    X = np.array([np.r_[np.asarray(m, float), 1.0] for m, _ in readings])
    y = np.array([c for _, c in readings], dtype=float)
    a, b, d, e = np.linalg.lstsq(X, y, rcond=1e-9)[0]
    if not abs(b) > 1e-9:
        return None
    return float(np.clip((target_um - a * pitch - d * bend - e) / b, -1.0, 1.0))


class _TrustRegionGP:
    """One GP over some motors (agent coordinates) and its trust region.

    ``add`` takes a point and its value (higher is better; -inf for a reading without
    beam, which the GP sees one unit below the worst finite value); ``ask`` fits the
    GP (its hyperparameters every *refit_every* points) and returns the log-EI
    maximiser inside the box of half-width ``length`` around the best point;
    ``tell`` adapts ``length`` after an evaluation.
    """

    def __init__(self, dim: int, length: float, seed: int, *, refit_every: int,
                 restarts: int, raw_samples: int) -> None:
        self.dim, self.length, self.seed = dim, length, seed
        self.refit_every, self.restarts, self.raw_samples = refit_every, restarts, raw_samples
        self.X: list[np.ndarray] = []
        self.Y: list[float] = []
        self.best_i = -1
        self.succ = self.fails = 0
        self._hyper: dict[str, torch.Tensor] | None = None
        self._fitted_at = 0

    def add(self, x: np.ndarray, y: float) -> bool:
        """Store a point; True if it improves on the best by more than 1e-3."""
        self.X.append(np.asarray(x, float).copy())
        self.Y.append(float(y))
        if self.best_i < 0 or y > self.Y[self.best_i] + 1e-3:
            self.best_i = len(self.Y) - 1
            return True
        return False

    def ask(self) -> np.ndarray:
        """The next point to measure, agent coordinates."""
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Normalize, Standardize
        from botorch.optim import optimize_acqf
        from gpytorch.mlls import ExactMarginalLogLikelihood

        d = self.dim
        y = np.array(self.Y)
        finite = np.isfinite(y)
        y = np.where(finite, y, (y[finite].min() if finite.any() else 0.0) - 1.0)
        tx = torch.as_tensor(np.array(self.X), dtype=torch.float64)
        ty = torch.as_tensor(y, dtype=torch.float64).unsqueeze(-1)
        bounds = torch.stack([-torch.ones(d), torch.ones(d)]).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a flat outcome (no beam anywhere yet) warns
            gp = SingleTaskGP(tx, ty, input_transform=Normalize(d, bounds=bounds),
                              outcome_transform=Standardize(1))
        if self._hyper is not None and len(self.X) - self._fitted_at < self.refit_every:
            # the last fit's hyperparameters (not the data's statistics)
            gp.load_state_dict({k: v for k, v in self._hyper.items()
                                if "outcome_transform" not in k}, strict=False)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
                except Exception:  # noqa: BLE001 - a failed fit keeps the prior hyperparameters
                    pass
            self._hyper = {k: v.clone() for k, v in gp.state_dict().items()}
            self._fitted_at = len(self.X)
        gp.eval()
        center = torch.as_tensor(self.X[self.best_i], dtype=torch.float64)
        lo = torch.clamp(center - self.length, -1.0, 1.0)
        hi = torch.clamp(center + self.length, -1.0, 1.0)
        acq = LogExpectedImprovement(gp, best_f=ty.max())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cand, _ = optimize_acqf(acq, bounds=torch.stack([lo, hi]), q=1,
                                    num_restarts=self.restarts, raw_samples=self.raw_samples,
                                    options={"seed": self.seed + len(self.X)})
        return cand.detach().numpy().reshape(-1)

    def tell(self, improved: bool, success_tol: int, failure_tol: int) -> None:
        """Double the region after *success_tol* improvements in a row, halve it after
        *failure_tol* evaluations without one."""
        if improved:
            self.succ, self.fails = self.succ + 1, 0
        else:
            self.succ, self.fails = 0, self.fails + 1
        if self.succ >= success_tol:
            self.length, self.succ = min(2 * self.length, 1.0), 0
        elif self.fails >= failure_tol:
            self.length, self.fails = self.length / 2, 0


@dataclass
class BayesOptAgent:
    """BoTorch GP + log-EI in an adaptive trust region (one GP per focusing plane on a
    KB pair).

    Parameters
    ----------
    n_init : int, optional
        Sobol points around the start before the model is used (default: the
        number of DOF + 1; on a KB pair, of one plane's DOF + 1, both planes drawn at once).
    length : float
        Initial trust-region half-width of the joint GP, agent units (the box is [-1, 1]).
    plane_length : float
        The same for each plane's GP, and the half-width of its Sobol start. On the kb
        stage 0.3 took fewer evaluations than 0.2, 0.25 or 0.5 (fast-twin trials, see
        docs/agents.md).
    length_min : float
        A region smaller than this restarts (at full size for the joint GP, at a
        quarter of it for a plane's).
    success_tol, failure_tol : int
        Improvements (failures) in a row that double (halve) the trust region.
    stop_fom : float
        Stop when the figure of merit reaches this (on a focus, with each FWHM within
        :data:`~agents.objective.SIZE_STOP`; or when the success criterion holds on
        the measurement with its margins).
    warm_start : list of (ndarray, float)
        ``(u, fom)`` pairs from earlier runs, in this problem's agent coordinates. The
        best of them is measured right after the start (and, for the joint GP, they
        all seed the model).
    restarts, raw_samples : int
        Acquisition optimiser settings.
    tr_restarts : int
        Times the joint GP's collapsed trust region restarts at full size around the
        best point before the agent stops.
    refit_every : int
        Fit the GP's hyperparameters by maximum likelihood every this many
        evaluations; in between the GP takes the new data with the last fit's
        hyperparameters. The optimiser's own time is beam time: with one GP over the
        kb stage's six motors (xrt, 10 trials, nothing else running) 3 takes 0.18 s
        per evaluation and 1 takes 0.37 s, with the same success; the two plane GPs
        (pitch and bender each) take 0.07 s with 3 (docs/agents.md).
    planes : bool
        One GP per focusing plane where the stage splits into planes (a KB pair);
        False: one GP over every motor on every stage.
    plane_size : {"rms", "fwhm"}
        The spot size each plane's GP minimises (:func:`agents.separable.plane_loss`).
        Success is judged on the FWHM either way.
    steer_height : bool
        A plane's height follows its pitch and bender to keep the centroid on the
        reference's (:func:`height_for_centre`), and the plane's GP searches pitch and
        bender only; False: the GP searches all of the plane's motors.
    """

    n_init: int | None = None
    length: float = 0.5
    plane_length: float = 0.3
    length_min: float = 0.01
    success_tol: int = 2
    failure_tol: int | None = None
    stop_fom: float = 0.9
    warm_start: Sequence[tuple[np.ndarray, float]] = field(default_factory=list)
    restarts: int = 4
    raw_samples: int = 128
    tr_restarts: int = 3
    refit_every: int = 3
    planes: bool = True
    plane_size: str = "rms"
    steer_height: bool = True
    name: str = "bo"

    def __post_init__(self) -> None:
        if self.plane_size not in ("rms", "fwhm"):
            raise ConfigError(f"plane_size must be 'rms' or 'fwhm', got {self.plane_size!r}")
        for k in ("length", "plane_length", "length_min"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{k} must be a finite number > 0, got {v!r}")

    def _gp(self, dim: int, seed: int, length: float | None = None) -> _TrustRegionGP:
        return _TrustRegionGP(dim, self.length if length is None else length, seed,
                              refit_every=self.refit_every, restarts=self.restarts,
                              raw_samples=self.raw_samples)

    def _start(self, problem: AlignmentProblem, done: Callable[[Evaluation], bool]
               ) -> tuple[Evaluation, Evaluation | None]:
        """The start's reading and, with a warm start, the reading at the best earlier
        point (measured right after the start)."""
        start = problem.observe_start()
        if not self.warm_start or done(start) or problem.remaining <= 1:
            return start, None
        # an earlier run's optimum is where this beamline most likely is aligned again
        u_prev = max(self.warm_start, key=lambda p: p[1])[0]
        return start, problem.evaluate(np.clip(np.asarray(u_prev, float), -1.0, 1.0))

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point."""
        desc = getattr(problem.safe.inner, "desc", None)
        planes = (focusing_planes(desc, problem.stage)
                  if self.planes and desc is not None else None)
        seed = int(rng.integers(0, 2**31 - 1))
        if planes is not None:
            return self._run_planes(problem, planes, desc, seed)
        return self._run_joint(problem, seed)

    def _run_joint(self, problem: AlignmentProblem, seed: int) -> np.ndarray:
        """One GP of ``log(fom + 1e-3)`` over every motor; returns the best point measured."""
        from torch.quasirandom import SobolEngine

        d = problem.dim
        gp = self._gp(d, seed)
        for u, f in self.warm_start:
            gp.add(np.asarray(u, float), math.log(max(f, 0.0) + _EPS))

        def done() -> bool:
            return best.fom >= self.stop_fom or problem.remaining <= 1

        def ingest(ev: Evaluation) -> bool:
            """Add a reading; the trust region stays around this run's best reading."""
            nonlocal best, best_i
            gp.add(ev.u, math.log(ev.fom + _EPS))
            improved = ev is best or ev.fom > best.fom * (1 + 1e-3)
            if improved:
                best, best_i = ev, len(gp.X) - 1
            gp.best_i = best_i
            return improved

        start, prev = self._start(problem, lambda ev: ev.fom >= self.stop_fom)
        best, best_i = start, -1
        ingest(start)
        if prev is not None:
            ingest(prev)
        n_init = self.n_init if self.n_init is not None else d + 1
        sobol = SobolEngine(d, scramble=True, seed=seed)
        for p in (sobol.draw(n_init).double().numpy() if n_init > 0 else []):
            if done():
                return best.u.copy()
            ingest(problem.evaluate(np.clip(best.u + self.length * (2 * p - 1), -1, 1)))
        fail_tol = self.failure_tol if self.failure_tol is not None else max(3, d // 2)
        restarts = 0
        while not done():
            if gp.length < self.length_min:
                if restarts >= self.tr_restarts:
                    break
                restarts, gp.length = restarts + 1, self.length
            gp.tell(ingest(problem.evaluate(gp.ask())), self.success_tol, fail_tol)
        return best.u.copy()

    def _run_planes(self, problem: AlignmentProblem, planes: dict[str, list[int]],
                    desc: BeamlineDescription, seed: int) -> np.ndarray:
        """One GP per focusing plane, both fed by every reading; returns the point of the
        reading that looks aligned, else of the best reading."""
        from torch.quasirandom import SobolEngine

        diag, goal = problem.stage.diagnostic, problem.stage.goal
        ref = problem.objective.reference
        target = {"x": ref.centroid_x_um, "y": ref.centroid_y_um}
        # each plane's (pitch, height, bend) where the height can follow the centroid
        steered = {p: (ax["pitch"], ax["height"], ax["bend"])
                   for p, ax in plane_axes(problem.stage, planes).items()
                   if self.steer_height and {"pitch", "height", "bend"} <= set(ax)
                   and math.isfinite(target[p])}
        searched = {p: ([i for i in idx if i != steered[p][1]] if p in steered else idx)
                    for p, idx in planes.items()}
        centred: dict[str, list[tuple[np.ndarray, float]]] = {p: [] for p in steered}

        def done(ev: Evaluation) -> bool:
            return ev.judgement.looks_aligned(self.stop_fom, goal)

        def score(ev: Evaluation, plane: str) -> float:
            return -plane_loss(ev, diag, plane, self.plane_size)

        def in_focus(ev: Evaluation, plane: str, size: float, flux: float) -> bool:
            j = ev.judgement
            r = j.fwhm_x_ratio if plane == "x" else j.fwhm_y_ratio
            return bool(r <= size and j.flux_ratio >= flux)

        start, prev = self._start(problem, done)
        gps = {p: self._gp(len(idx), seed + 1000 * k, self.plane_length)
               for k, (p, idx) in enumerate(searched.items())}
        best = start

        def ingest(ev: Evaluation) -> dict[str, bool]:
            nonlocal best
            if done(ev) or (ev.fom > best.fom and not done(best)):
                best = ev
            s = ev.observation.reading(diag).stats
            for p, axes in steered.items():
                c = s.centroid_x_um if p == "x" else s.centroid_y_um
                if ev.judgement.flux_ratio > _CENTRE_MIN_FLUX and math.isfinite(c):
                    centred[p].append((ev.u[list(axes)], c))
            return {p: gps[p].add(ev.u[idx], score(ev, p)) for p, idx in searched.items()}

        ingest(start)
        if prev is not None:
            ingest(prev)
        if not done(best):
            found = find_beam(problem, best, desc)
            if found is not best:
                ingest(found)
        n_init = self.n_init if self.n_init is not None else max(map(len, planes.values())) + 1
        draws = {p: SobolEngine(len(idx), scramble=True, seed=seed + k).draw(n_init)
                 .double().numpy() for k, (p, idx) in enumerate(planes.items())}
        origin = best.u.copy()
        for i in range(n_init):  # every motor moves, the heights included: the fit needs them
            if done(best) or problem.remaining <= 1:
                return best.u.copy()
            u = origin.copy()
            for p, idx in planes.items():
                u[idx] = np.clip(origin[idx] + self.plane_length * (2 * draws[p][i] - 1), -1, 1)
            ingest(problem.evaluate(u))
        fail_tol = self.failure_tol if self.failure_tol is not None else 3
        held: dict[str, np.ndarray] = {}  # planes in focus hold their point
        while not done(best) and problem.remaining > 1:
            u = best.u.copy()
            for p, idx in planes.items():
                if p in held:
                    u[idx] = held[p]
                    continue
                if gps[p].length < self.length_min:
                    gps[p].length = self.plane_length / 4
                u[searched[p]] = gps[p].ask()
                if p in steered:
                    ip, ih, ib = steered[p]
                    h = height_for_centre(centred[p], target[p], u[ip], u[ib])
                    if h is not None:
                        u[ih] = h
            ev = problem.evaluate(u)
            improved = ingest(ev)
            for p, idx in planes.items():
                if p in held:
                    if not in_focus(ev, p, _HOLD_SIZE, FLUX_FLOOR):
                        del held[p]  # the held point no longer holds (beyond the noise)
                    continue
                gps[p].tell(improved[p], self.success_tol, fail_tol)
                if in_focus(ev, p, SIZE_STOP, FLUX_STOP):
                    held[p] = ev.u[idx].copy()
        # the best reading: a point measured as a whole, where each plane's best point
        # was measured with the other plane elsewhere
        return best.u.copy()
