"""Autonomous maps: an adaptive Gaussian-process scan and a coarse-to-fine map.

Both are ask/tell engines over a 2-D box of two motors, and both run as
bluesky plans (:func:`adaptive_plan`): the engine asks for a batch of points,
the plan moves there and reads the detector (one event per point, through
the safety layer), and tells the engine what it measured.

:class:`GPMapper` (BoTorch)
    A ``SingleTaskGP`` (Matern 5/2, fitted hyperparameters, standardised
    outcomes) over the normalised box. It starts from a coarse Sobol design
    with the four corners, then picks each batch where a *target-aware*
    acquisition is highest: the posterior standard deviation times
    ``floor + |grad mu| / max |grad mu|`` on a dense candidate grid. Pure
    posterior variance spreads points like a grid; weighting by the predicted
    gradient sends them to the edges and peaks of features, where a map's
    error is, and leaves the flat background sparse. No two points of a batch,
    nor a new point and an old one, lie closer than ``min_distance`` (in box
    units): batches hold no near-duplicates.

:class:`CoarseToFine`
    A coarse grid first; the regions of interest are the coarse pixels whose
    signal departs from the background (the median) by more than ``threshold``
    times the robust noise (1.4826 MAD) *and* by ``rel_threshold`` of the
    map's range, grown by one coarse pixel on every side (a feature's edge may
    lie in a neighbour); then a fine grid over those regions only.

A map's reconstruction (:func:`reconstruct`) is the linear interpolation of
the measured points (Delaunay), the same for a grid and for adaptive points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import Msg

from controllers.scan_devices import move_together
from twin.errors import ConfigError

__all__ = ["GPMapper", "CoarseToFine", "reconstruct", "adaptive_plan", "Box"]


@dataclass(frozen=True)
class Box:
    """A 2-D box of two motors: ``lo``/``hi`` per axis, motor units."""

    lo: tuple[float, float]
    hi: tuple[float, float]

    def __post_init__(self) -> None:
        for i in range(2):
            if not (math.isfinite(self.lo[i]) and math.isfinite(self.hi[i])) or \
                    self.lo[i] >= self.hi[i]:
                raise ConfigError(f"box axis {i}: need finite lo < hi, got "
                                  f"{self.lo[i]} .. {self.hi[i]}")

    def to_unit(self, p: np.ndarray) -> np.ndarray:
        """Motor units -> [0, 1]^2."""
        lo, hi = np.array(self.lo), np.array(self.hi)
        return (np.asarray(p, float) - lo) / (hi - lo)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """[0, 1]^2 -> motor units."""
        lo, hi = np.array(self.lo), np.array(self.hi)
        return lo + np.asarray(u, float) * (hi - lo)

    def grid(self, n0: int, n1: int) -> np.ndarray:
        """A uniform grid of n0 x n1 points covering the box (axis 0 outer)."""
        a = np.linspace(self.lo[0], self.hi[0], n0)
        b = np.linspace(self.lo[1], self.hi[1], n1)
        return np.array([(x, y) for x in a for y in b])


def reconstruct(points: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Linear interpolation of scattered *values* at *points*, evaluated at *at*;
    outside the points' hull the nearest value."""
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    pts = np.asarray(points, float)
    vals = np.asarray(values, float)
    lin = LinearNDInterpolator(pts, vals)(at)
    bad = ~np.isfinite(lin)
    if bad.any():
        lin[bad] = NearestNDInterpolator(pts, vals)(at[bad])
    return lin


class GPMapper:
    """Adaptive Gaussian-process mapping (ask/tell, BoTorch).

    Parameters
    ----------
    box : Box
    budget : int
        Points in all.
    batch : int
        Points per ask after the initial design.
    initial : int, optional
        Points of the initial design (default: ``max(16, budget // 8)``).
    min_distance : float
        Smallest distance between any two points, in box units (0-1).
    floor : float
        Weight of the posterior deviation where the predicted gradient is 0
        (1 gives pure posterior variance).
    candidates : int
        Candidate grid per axis.
    refit_every : int
        Refit the hyperparameters every this many batches (the others reuse them).
    explore : float
        Share of each batch picked by posterior deviation alone (exploration).
    counting : bool
        The signal counts photons: its noise variance is the count (Poisson).
        Otherwise the noise is :attr:`noise_fraction` of the signal's spread.
    seed : int
    """

    def __init__(self, box: Box, budget: int, *, batch: int = 24, initial: int | None = None,
                 min_distance: float = 0.006, floor: float = 0.1, candidates: int = 161,
                 refit_every: int = 3, explore: float = 0.25, counting: bool = False,
                 seed: int = 0) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 10:
            raise ConfigError(f"budget must be an integer >= 10 points, got {budget!r}")
        self.box, self.budget, self.batch, self.seed = box, budget, batch, seed
        self.counting = counting
        if not 0.0 <= explore <= 1.0:
            raise ConfigError(f"explore must lie in [0, 1], got {explore!r}")
        self.explore = explore
        self.initial = min(budget, initial if initial is not None else max(16, budget // 12))
        self.min_distance, self.floor, self.refit_every = min_distance, floor, refit_every
        self.percentile, self.bulk = 97.0, 75.0
        #: measurement noise, as a fraction of the signal's standard deviation
        self.noise_fraction = 0.01
        g = np.linspace(0.0, 1.0, candidates)
        self._cand = np.array(np.meshgrid(g, g, indexing="ij")).reshape(2, -1).T
        self.X = np.zeros((0, 2))
        self.y = np.zeros(0)
        self._batches = 0
        self._state: dict[str, Any] | None = None
        self.fit_s = 0.0

    @property
    def done(self) -> bool:
        """True when the budget is spent."""
        return len(self.y) >= self.budget

    def ask(self) -> np.ndarray:
        """The next batch of points, motor units, shape (n, 2); empty when done."""
        left = self.budget - len(self.y)
        if left <= 0:
            return np.zeros((0, 2))
        if len(self.y) == 0:
            return self.box.from_unit(self._initial_design(min(self.initial, left)))
        sd, weighted = self._acquisition()
        k = min(self.batch, left)
        k_explore = int(round(self.explore * k))
        # a share of every batch goes where the map is least known, wherever that is (it
        # finds features the initial design missed); the rest where the target-aware score is
        picked = self._pick(sd, k_explore, [], spread=0.05)
        picked = self._pick(weighted, k - len(picked), list(picked))
        return self.box.from_unit(picked)

    def tell(self, points: np.ndarray, values: Sequence[float]) -> None:
        """Record measured *values* at *points* (motor units)."""
        u = self.box.to_unit(np.asarray(points, float).reshape(-1, 2))
        v = np.asarray(values, float).reshape(-1)
        if len(u) != len(v):
            raise ConfigError(f"tell: {len(u)} points but {len(v)} values")
        good = np.isfinite(v)
        self.X = np.vstack([self.X, u[good]])
        self.y = np.concatenate([self.y, v[good]])

    def predict(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at *at* (motor units)."""
        model = self._model()
        return self._posterior(model, self.box.to_unit(at))

    # ------------------------------------------------------------------ internals
    def _initial_design(self, n: int) -> np.ndarray:
        """A regular k x k grid (k = floor(sqrt(n)), corners included), topped up with
        scrambled Sobol points: every feature larger than the grid step is seen."""
        from scipy.stats import qmc

        k = max(2, int(math.isqrt(n)))
        g = np.linspace(0.0, 1.0, k)
        grid = np.array([(a, b) for a in g for b in g])[:n]
        rest = n - len(grid)
        if rest <= 0:
            return grid
        sob = qmc.Sobol(2, scramble=True, seed=self.seed).random(2 ** math.ceil(math.log2(rest)))
        return np.vstack([grid, sob[:rest]])

    def _model(self) -> Any:
        import time

        import torch
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Standardize
        from gpytorch.kernels import MaternKernel, ScaleKernel
        from gpytorch.mlls import ExactMarginalLogLikelihood

        t0 = time.perf_counter()
        X = torch.tensor(self.X, dtype=torch.float64)
        Y = torch.tensor(self.y, dtype=torch.float64).unsqueeze(-1)
        # the measurement noise is known and small: a GP that may call the features
        # noise (BoTorch's default inferred noise) flattens the map and learns nothing
        floor = float(max(np.var(self.y), 1e-30)) * self.noise_fraction ** 2
        # a photon-counting signal has Poisson variance (the count), at least the floor
        var = np.maximum(self.y, floor) if self.counting else np.full(len(self.y), floor)
        yvar = torch.tensor(var, dtype=torch.float64).unsqueeze(-1)
        model = SingleTaskGP(X, Y, train_Yvar=yvar,
                             covar_module=ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=2)),
                             outcome_transform=Standardize(m=1))
        refit = self._state is None or self._batches % self.refit_every == 0
        if refit:
            torch.manual_seed(self.seed + self._batches)
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            self._state = {k: v for k, v in model.state_dict().items()
                           if "outcome_transform" not in k}
        else:
            model.load_state_dict(self._state, strict=False)
        model.eval()
        self.fit_s += time.perf_counter() - t0
        return model

    @staticmethod
    def _posterior(model: Any, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        out_m, out_s = [], []
        with torch.no_grad():
            for chunk in np.array_split(u, max(1, len(u) // 8192)):
                # a batch of single points: marginal variances, no test-test covariance
                post = model.posterior(torch.tensor(chunk, dtype=torch.float64).unsqueeze(-2))
                out_m.append(post.mean.reshape(-1).numpy())
                out_s.append(post.variance.clamp_min(0).sqrt().reshape(-1).numpy())
        return np.concatenate(out_m), np.concatenate(out_s)

    def _acquisition(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior standard deviation and the target-aware score on the candidates."""
        model = self._model()
        self._batches += 1
        mu, sd = self._posterior(model, self._cand)
        n = int(round(math.sqrt(len(self._cand))))
        m2 = mu.reshape(n, n)
        gx, gy = np.gradient(m2)
        grad = np.hypot(gx, gy).reshape(-1)
        # gradients below the bulk's (the mean's wiggles between background points) count 0
        top, bulk = np.percentile(grad, self.percentile), np.percentile(grad, self.bulk)
        weight = self.floor + np.clip((grad - bulk) / (top - bulk), 0, 1) if top > bulk \
            else np.ones_like(grad)
        return sd, sd * weight

    def _pick(self, score: np.ndarray, k: int, chosen: list[np.ndarray],
              spread: float = 0.0) -> np.ndarray:
        """*chosen* and the *k* best candidates after them, each at least min_distance from
        every point so far, and the new ones at least max(min_distance, *spread*) (box
        units) from each other."""
        from scipy.spatial import cKDTree

        chosen = list(chosen)
        k = k + len(chosen)
        if len(chosen) >= k:
            return np.array(chosen).reshape(-1, 2)
        sep = max(self.min_distance, spread, 1.5 / math.sqrt(len(self._cand)))
        tree = cKDTree(self.X) if len(self.X) else None
        for i in np.argsort(-score):
            c = self._cand[i]
            if tree is not None and tree.query(c)[0] < self.min_distance:
                continue
            if any(np.hypot(*(c - q)) < sep for q in chosen):
                continue
            chosen.append(c)
            if len(chosen) == k:
                break
        return np.array(chosen).reshape(-1, 2)


class CoarseToFine:
    """A coarse map, then fine maps of the regions of interest only (ask/tell).

    Parameters
    ----------
    box : Box
    coarse_step, fine_step : float
        Grid steps, motor units (the same on both axes).
    threshold : float
        A coarse pixel is of interest when it departs from the median by more
        than this many robust noise sigmas ...
    rel_threshold : float
        ... and by more than this fraction of the coarse map's range.
    grow : int
        Coarse pixels added around each one of interest.
    """

    def __init__(self, box: Box, coarse_step: float, fine_step: float, *,
                 threshold: float = 5.0, rel_threshold: float = 0.05, grow: int = 1) -> None:
        if not (0 < fine_step < coarse_step):
            raise ConfigError(f"need 0 < fine_step < coarse_step, got {fine_step}, {coarse_step}")
        self.box, self.coarse_step, self.fine_step = box, coarse_step, fine_step
        self.threshold, self.rel_threshold, self.grow = threshold, rel_threshold, grow
        self._axes = [np.arange(box.lo[i], box.hi[i] + 0.5 * coarse_step, coarse_step)
                      for i in range(2)]
        self.phase = "coarse"
        self.X = np.zeros((0, 2))
        self.y = np.zeros(0)
        self.roi: np.ndarray | None = None  # boolean mask over the coarse grid
        self.coarse_points = 0

    @property
    def done(self) -> bool:  # noqa: D102
        return self.phase == "done"

    def ask(self) -> np.ndarray:
        """The coarse grid, then the fine points of every ROI; empty when done."""
        if self.phase == "coarse":
            a, b = self._axes
            return np.array([(x, y) for x in a for y in b])
        if self.phase == "fine":
            return self._fine_points()
        return np.zeros((0, 2))

    def tell(self, points: np.ndarray, values: Sequence[float]) -> None:  # noqa: D102
        pts = np.asarray(points, float).reshape(-1, 2)
        self.X = np.vstack([self.X, pts])
        self.y = np.concatenate([self.y, np.asarray(values, float)])
        if self.phase == "coarse":
            self.coarse_points = len(pts)
            self.roi = self._select(pts, np.asarray(values, float))
            self.phase = "fine"
        elif self.phase == "fine":
            self.phase = "done"

    def _select(self, pts: np.ndarray, v: np.ndarray) -> np.ndarray:
        from scipy.ndimage import binary_dilation

        n0, n1 = len(self._axes[0]), len(self._axes[1])
        z = np.full((n0, n1), np.nan)  # the points may come in any order (a serpentine)
        ia = np.clip(np.round((pts[:, 0] - self.box.lo[0]) / self.coarse_step).astype(int), 0,
                     n0 - 1)
        ib = np.clip(np.round((pts[:, 1] - self.box.lo[1]) / self.coarse_step).astype(int), 0,
                     n1 - 1)
        z[ia, ib] = v
        med = np.nanmedian(z)
        noise = 1.4826 * np.nanmedian(np.abs(z - med))
        rng = np.nanmax(z) - np.nanmin(z)
        dev = np.nan_to_num(np.abs(z - med), nan=0.0)
        mask = (dev > self.threshold * noise) & (dev > self.rel_threshold * rng)
        if self.grow > 0:
            mask = binary_dilation(mask, iterations=self.grow)
        return mask

    def _fine_points(self) -> np.ndarray:
        """Fine grid points inside the ROI pixels (each coarse pixel is the square of side
        coarse_step around its point), without duplicates."""
        if self.roi is None or not self.roi.any():
            return np.zeros((0, 2))
        a, b = self._axes
        fa = np.arange(self.box.lo[0], self.box.hi[0] + 0.5 * self.fine_step, self.fine_step)
        fb = np.arange(self.box.lo[1], self.box.hi[1] + 0.5 * self.fine_step, self.fine_step)
        ia = np.clip(np.round((fa - self.box.lo[0]) / self.coarse_step).astype(int), 0, len(a) - 1)
        ib = np.clip(np.round((fb - self.box.lo[1]) / self.coarse_step).astype(int), 0, len(b) - 1)
        keep = self.roi[ia[:, None], ib[None, :]]
        xx, yy = np.meshgrid(fa, fb, indexing="ij")
        return np.stack([xx[keep], yy[keep]], axis=1)

    def fine_grid_points(self) -> int:
        """Points of a full fine map of the box (what this routine saves against)."""
        na = len(np.arange(self.box.lo[0], self.box.hi[0] + 0.5 * self.fine_step, self.fine_step))
        nb = len(np.arange(self.box.lo[1], self.box.hi[1] + 0.5 * self.fine_step, self.fine_step))
        return na * nb


def adaptive_plan(detectors: Sequence[Any], m1: Any, m2: Any, engine: Any, signal: str, *,
                  md: dict[str, Any] | None = None,
                  on_batch: Callable[[int], None] | None = None) -> Generator[Msg, Any, Any]:
    """Run an ask/tell *engine* (:class:`GPMapper`, :class:`CoarseToFine`) as one bluesky run.

    Every point is a checkpoint, a move of both motors (one move of the beamline for
    beamtwin's axes) and a ``trigger_and_read`` of the detectors and motors; the
    engine is told the *signal* field of each reading. Batches are ordered along
    a serpentine in axis 0 so that the motors do not zig-zag across the box.
    """
    names = [d.name for d in detectors]
    meta = {"detectors": names, "motors": [m1.name, m2.name],
            "hints": {"dimensions": [([m1.name], "primary"), ([m2.name], "primary")]}}
    meta.update(md or {})

    @bpp.stage_decorator(list(detectors))
    @bpp.run_decorator(md=meta)
    def inner() -> Generator[Msg, Any, Any]:
        while not engine.done:
            batch = engine.ask()
            if len(batch) == 0:
                engine.tell(np.zeros((0, 2)), [])
                continue
            order = np.lexsort((batch[:, 1], np.round(batch[:, 0], 9)))
            batch = batch[order]
            values = []
            for p in batch:
                yield Msg("checkpoint")
                yield from move_together({m1: float(p[0]), m2: float(p[1])})
                reading = yield from bps.trigger_and_read(list(detectors) + [m1, m2])
                values.append(float(reading[signal]["value"]) if signal in reading
                              else math.nan)
            engine.tell(batch, values)
            if on_batch is not None:
                on_batch(len(values))

    return (yield from inner())
