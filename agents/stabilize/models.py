"""Feed-forward models: from the gaps to the source-knob settings that cancel them.

Three, fitted to the same :class:`~agents.stabilize.calibration.Calibration`:

:class:`LookupTable`
    What facilities run: one table per insertion device, this gap to the
    corrections, the up and down scans averaged, linear interpolation. It knows
    nothing of the direction of motion or of the neighbour.
:class:`MLPModel`
    A torch MLP, additive over the two insertion devices (each has a tower of
    its gap and direction, as their perturbations superpose), so it learns the
    hysteresis and the neighbour from 1-D scans of each.
:class:`GPModel`
    A Gaussian process with an additive kernel of the same structure (an RBF
    over gap and direction per device) and a predictive standard deviation;
    outside what the scans covered it falls back towards no correction.

All predict in :data:`~agents.stabilize.calibration.SOURCE_KNOBS` order, in
knob units (um, urad, %), from :func:`~agents.stabilize.calibration.features`.
Prediction of one state takes microseconds (see ``beamtwin stabilize bench``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from agents.stabilize.calibration import Calibration
from twin.errors import ConfigError

__all__ = ["FeedForwardModel", "LookupTable", "MLPModel", "GPModel", "fit_model", "model_from_dict",
           "MODEL_KINDS"]

MODEL_KINDS = ("table", "nn", "gp")


class FeedForwardModel(ABC):
    """Base of the feed-forward models: ``predict(x) -> knob settings``."""

    kind = ""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Source-knob settings ``(..., 5)`` for inputs ``(..., 4)``."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (:func:`model_from_dict` reads it back)."""


class LookupTable(FeedForwardModel):
    """The facilities' table: this gap -> corrections, directions averaged."""

    kind = "table"

    def __init__(self, gaps: np.ndarray, values: np.ndarray) -> None:
        self.gaps = np.asarray(gaps, float)
        self.values = np.asarray(values, float)

    @classmethod
    def fit(cls, cal: Calibration) -> LookupTable:
        """Average the up and down legs of this gap's scan at each point."""
        sel = np.isin(cal.leg, ("gap_up", "gap_down"))
        u = np.round(cal.x[sel, 0], 9)
        grid = np.unique(u)
        vals = np.stack([cal.targets[sel][u == g].mean(axis=0) for g in grid])
        return cls(grid, vals)

    def predict(self, x: np.ndarray) -> np.ndarray:  # noqa: D102
        x = np.asarray(x, float)
        u = x[..., 0]
        return np.stack([np.interp(u, self.gaps, self.values[:, j])
                         for j in range(self.values.shape[1])], axis=-1)

    def to_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"kind": self.kind, "gaps": self.gaps.tolist(), "values": self.values.tolist()}


class _Additive(torch.nn.Module):
    def __init__(self, n_out: int, hidden: int) -> None:
        super().__init__()

        def tower() -> torch.nn.Sequential:
            return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, n_out))

        self.own, self.other = tower(), tower()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.own(x[..., :2]) + self.other(x[..., 2:])


class MLPModel(FeedForwardModel):
    """Additive torch MLP (two towers of 2 -> hidden -> hidden -> 5, tanh)."""

    kind = "nn"

    def __init__(self, net: _Additive, scale: np.ndarray, hidden: int) -> None:
        self.net = net.eval()
        self.scale = np.asarray(scale, float)
        self.hidden = hidden
        self._w = [p.detach().numpy().astype(np.float64) for p in net.parameters()]

    @classmethod
    def fit(cls, cal: Calibration, *, hidden: int = 32, iterations: int = 3000,
            seed: int = 0) -> MLPModel:
        """Fit by Adam on the mean squared error of the scaled targets (full batch)."""
        torch.manual_seed(seed)
        scale = np.maximum(np.abs(cal.targets).max(axis=0), 1e-9)
        net = _Additive(cal.targets.shape[1], hidden).double()
        x = torch.tensor(cal.x, dtype=torch.float64)
        y = torch.tensor(cal.targets / scale, dtype=torch.float64)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
        for _ in range(iterations):
            opt.zero_grad()
            loss = torch.mean((net(x) - y) ** 2)
            loss.backward()
            opt.step()
            sched.step()
        return cls(net, scale, hidden)

    def predict(self, x: np.ndarray) -> np.ndarray:  # noqa: D102
        # numpy forward pass: a few microseconds for one state, no autograd
        x = np.asarray(x, float)
        w = self._w

        def tower(z: np.ndarray, k: int) -> np.ndarray:
            h = np.tanh(z @ w[k].T + w[k + 1])
            h = np.tanh(h @ w[k + 2].T + w[k + 3])
            return h @ w[k + 4].T + w[k + 5]

        return (tower(x[..., :2], 0) + tower(x[..., 2:], 6)) * self.scale

    def to_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"kind": self.kind, "hidden": self.hidden, "scale": self.scale.tolist(),
                "weights": [p.tolist() for p in self._w]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MLPModel:
        """Inverse of :meth:`to_dict`."""
        net = _Additive(len(doc["scale"]), int(doc["hidden"])).double()
        with torch.no_grad():
            for p, v in zip(net.parameters(), doc["weights"], strict=True):
                p.copy_(torch.tensor(v, dtype=torch.float64))
        return cls(net, np.asarray(doc["scale"]), int(doc["hidden"]))


def _additive_kernel(a: np.ndarray, b: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Sum of two ARD RBF kernels, on columns (0, 1) and (2, 3)."""
    e = np.exp(theta)
    scale = np.array([e[1], e[2], e[4], e[5]])
    d2 = ((a[:, None, :] - b[None, :, :]) / scale) ** 2
    return e[0] * np.exp(-0.5 * (d2[..., 0] + d2[..., 1])) + \
        e[3] * np.exp(-0.5 * (d2[..., 2] + d2[..., 3]))


class GPModel(FeedForwardModel):
    """Gaussian process, additive kernel, shared hyperparameters, zero prior mean."""

    kind = "gp"

    def __init__(self, x: np.ndarray, alpha: np.ndarray, theta: np.ndarray, noise: float,
                 scale: np.ndarray, chol: np.ndarray) -> None:
        self.x, self.alpha, self.theta, self.noise = x, alpha, theta, noise
        self.scale, self.chol = scale, chol
        inv_l = np.linalg.inv(chol)
        self._kinv = inv_l.T @ inv_l  # K^-1, for the variance in one product
        self._prior = float(np.exp(theta[0]) + np.exp(theta[3]))

    @classmethod
    def fit(cls, cal: Calibration) -> GPModel:
        """Fit the hyperparameters by maximising the log marginal likelihood."""
        x = np.asarray(cal.x, float)
        scale = np.maximum(np.abs(cal.targets).max(axis=0), 1e-9)
        y = cal.targets / scale
        n, m = y.shape

        def nll(p: np.ndarray) -> float:
            k = _additive_kernel(x, x, p[:6]) + (math.exp(p[6]) + 1e-8) * np.eye(n)
            try:
                c = np.linalg.cholesky(k)
            except np.linalg.LinAlgError:
                return 1e10
            a = np.linalg.solve(c.T, np.linalg.solve(c, y))
            return float(0.5 * np.sum(y * a) + m * np.sum(np.log(np.diag(c))))

        start = np.log([0.3, 0.3, 1.0, 0.1, 0.3, 1.0, 1e-3])
        best = minimize(nll, start, method="L-BFGS-B",
                        bounds=[(-8, 3), (-4, 1), (-3, 3)] * 2 + [(-14, 0)])
        theta = best.x if np.isfinite(best.fun) else start
        k = _additive_kernel(x, x, theta[:6]) + (math.exp(theta[6]) + 1e-8) * np.eye(n)
        c = np.linalg.cholesky(k)
        alpha = np.linalg.solve(c.T, np.linalg.solve(c, y))
        return cls(x, alpha, theta[:6], float(math.exp(theta[6])), scale, c)

    def predict(self, x: np.ndarray) -> np.ndarray:  # noqa: D102
        return self.predict_with_std(x)[0]

    def predict_with_std(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean ``(..., 5)`` and standard deviation ``(...,)`` (in units of the
        largest calibrated correction of each knob; the same for every knob)."""
        x = np.asarray(x, float)
        flat = x.reshape(-1, x.shape[-1])
        ks = _additive_kernel(flat, self.x, self.theta)
        mean = ks @ self.alpha * self.scale
        var = self._prior - np.einsum("ij,jk,ik->i", ks, self._kinv, ks)
        std = np.sqrt(np.maximum(var, 0.0))
        return mean.reshape(x.shape[:-1] + (-1,)), std.reshape(x.shape[:-1])

    def to_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"kind": self.kind, "x": self.x.tolist(), "alpha": self.alpha.tolist(),
                "theta": self.theta.tolist(), "noise": self.noise, "scale": self.scale.tolist(),
                "chol": self.chol.tolist()}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> GPModel:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(doc["x"]), np.asarray(doc["alpha"]), np.asarray(doc["theta"]),
                   float(doc["noise"]), np.asarray(doc["scale"]), np.asarray(doc["chol"]))


def fit_model(kind: str, cal: Calibration, *, seed: int = 0) -> FeedForwardModel:
    """Fit a feed-forward model of *kind* (:data:`MODEL_KINDS`) to *cal*."""
    if kind == "table":
        return LookupTable.fit(cal)
    if kind == "nn":
        return MLPModel.fit(cal, seed=seed)
    if kind == "gp":
        return GPModel.fit(cal)
    raise ConfigError(f"unknown feed-forward model {kind!r}; kinds: {', '.join(MODEL_KINDS)}")


def model_from_dict(doc: dict[str, Any]) -> FeedForwardModel:
    """A model written by ``to_dict``."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == "table":
        return LookupTable(np.asarray(doc["gaps"]), np.asarray(doc["values"]))
    if kind == "nn":
        return MLPModel.from_dict(doc)
    if kind == "gp":
        return GPModel.from_dict(doc)
    raise ConfigError(f"not a feed-forward model (kind {kind!r}); kinds: {', '.join(MODEL_KINDS)}")
