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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from agents.problem import AlignmentProblem, Evaluation

__all__ = ["BayesOptAgent"]

_EPS = 1e-3


@dataclass
class BayesOptAgent:
    """BoTorch GP + log-EI in an adaptive trust region.

    Parameters
    ----------
    n_init : int, optional
        Sobol points around the start before the model is used (default: the
        number of DOF + 1).
    length : float
        Initial trust-region half-width, agent units (the box is [-1, 1]).
    length_min : float
        Stop when the trust region shrinks below this.
    success_tol, failure_tol : int
        Improvements (failures) in a row that double (halve) the trust region.
    stop_fom : float
        Stop when the figure of merit reaches this.
    warm_start : list of (ndarray, float)
        ``(u, fom)`` pairs from earlier runs, in this problem's agent coordinates. The
        best of them is measured right after the start.
    restarts, raw_samples : int
        Acquisition optimiser settings.
    tr_restarts : int
        Times a collapsed trust region restarts at full size around the best point
        before the agent stops.
    refit_every : int
        Fit the GP's hyperparameters by maximum likelihood every this many
        evaluations; in between the GP takes the new data with the last fit's
        hyperparameters. The optimiser's own time is beam time: on the kb stage (xrt,
        10 trials, nothing else running) 3 takes 0.18 s per evaluation and 1 takes
        0.37 s, with the same success (docs/agents.md).
    """

    n_init: int | None = None
    length: float = 0.5
    length_min: float = 0.01
    success_tol: int = 2
    failure_tol: int | None = None
    stop_fom: float = 0.9
    warm_start: Sequence[tuple[np.ndarray, float]] = field(default_factory=list)
    restarts: int = 4
    raw_samples: int = 128
    tr_restarts: int = 3
    refit_every: int = 3
    name: str = "bo"

    def run(self, problem: AlignmentProblem, rng: np.random.Generator) -> np.ndarray:
        """Align; returns the chosen point (the best measured)."""
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Normalize, Standardize
        from botorch.optim import optimize_acqf
        from gpytorch.mlls import ExactMarginalLogLikelihood
        from torch.quasirandom import SobolEngine

        d = problem.dim
        torch_gen = int(rng.integers(0, 2**31 - 1))
        X: list[np.ndarray] = [np.asarray(u, float) for u, _ in self.warm_start]
        Y: list[float] = [math.log(max(f, 0.0) + _EPS) for _, f in self.warm_start]
        best: Evaluation = problem.observe_start()
        X.append(best.u.copy())
        Y.append(math.log(best.fom + _EPS))

        def done() -> bool:
            return best.fom >= self.stop_fom or problem.remaining <= 1

        def ingest(ev: Evaluation) -> bool:
            nonlocal best
            X.append(ev.u.copy())
            Y.append(math.log(ev.fom + _EPS))
            if ev.fom > best.fom * (1 + 1e-3):
                best = ev
                return True
            return False

        if self.warm_start and not done():
            # an earlier run's optimum is where this beamline most likely is aligned again:
            # measure it first, and search around it if it is better than the start
            u_prev = max(self.warm_start, key=lambda p: p[1])[0]
            ingest(problem.evaluate(np.clip(np.asarray(u_prev, float), -1.0, 1.0)))
        n_init = self.n_init if self.n_init is not None else d + 1
        sobol = SobolEngine(d, scramble=True, seed=torch_gen)
        for p in (sobol.draw(n_init).double().numpy() if n_init > 0 else []):
            if done():
                return best.u.copy()
            ingest(problem.evaluate(np.clip(best.u + self.length * (2 * p - 1), -1, 1)))
        length = self.length
        fail_tol = self.failure_tol if self.failure_tol is not None else max(3, d // 2)
        succ = fails = 0
        bounds_all = torch.stack([-torch.ones(d), torch.ones(d)]).double()
        restarts = 0
        hyper: dict[str, torch.Tensor] | None = None
        fitted_at = 0
        while not done():
            if length < self.length_min:
                if restarts >= self.tr_restarts:
                    break
                restarts, length = restarts + 1, self.length
            tx = torch.as_tensor(np.array(X), dtype=torch.float64)
            ty = torch.as_tensor(np.array(Y), dtype=torch.float64).unsqueeze(-1)
            gp = SingleTaskGP(tx, ty, input_transform=Normalize(d, bounds=bounds_all),
                              outcome_transform=Standardize(1))
            if hyper is not None and len(X) - fitted_at < self.refit_every:
                # the last fit's hyperparameters (not the data's statistics)
                gp.load_state_dict({k: v for k, v in hyper.items()
                                    if "outcome_transform" not in k}, strict=False)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
                    except Exception:  # noqa: BLE001 - a failed fit keeps the prior hyperparameters
                        pass
                hyper, fitted_at = {k: v.clone() for k, v in gp.state_dict().items()}, len(X)
            gp.eval()
            center = torch.as_tensor(best.u, dtype=torch.float64)
            lo = torch.clamp(center - length, -1.0, 1.0)
            hi = torch.clamp(center + length, -1.0, 1.0)
            acq = LogExpectedImprovement(gp, best_f=ty.max())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cand, _ = optimize_acqf(acq, bounds=torch.stack([lo, hi]), q=1,
                                        num_restarts=self.restarts,
                                        raw_samples=self.raw_samples,
                                        options={"seed": torch_gen + len(X)})
            improved = ingest(problem.evaluate(cand.detach().numpy().reshape(-1)))
            if improved:
                succ, fails = succ + 1, 0
            else:
                succ, fails = 0, fails + 1
            if succ >= self.success_tol:
                length, succ = min(2 * length, 1.0), 0
            elif fails >= fail_tol:
                length, fails = length / 2, 0
        return best.u.copy()
