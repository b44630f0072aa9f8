"""``beamtwin bench scan``: adaptive and coarse-to-fine maps against uniform grids.

The benchmark map is the test specimen (:meth:`twin.specimen.Specimen.default`:
three Gaussian particles and two sharp-edged domains in an 80 x 80 um field)
under the focus of the default beamline as the fast twin traces it (the
spot's FWHM at the sample), in fluorescence counts with Poisson noise. Every
routine measures the same function; a map is reconstructed by linear
interpolation of its points (:func:`controllers.adaptive.reconstruct`), and its
error is the RMS difference from the noise-free map on a 241 x 241 grid,
divided by the map's range (NRMSE).

* **Adaptive GP scan**: the error of a uniform ``grid x grid`` map is the
  target; the GP scan runs batch by batch until its error is at or below the
  target. ``ratio = grid_points / adaptive_points`` (goal: >= 3).
* **Coarse-to-fine**: a coarse grid, ROIs by threshold, fine grids in the ROIs,
  against a full fine grid: points, beamline time (the twin's motor speeds, the
  exposure and a per-point overhead) and the coverage of the features (the
  fraction of the specimen's feature area within the fine maps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from controllers.adaptive import Box, CoarseToFine, GPMapper, reconstruct
from twin.errors import ConfigError
from twin.plotting import save_figure
from twin.specimen import Specimen

__all__ = ["MapSettings", "bench_scan", "adaptive_trial", "coarse_to_fine_trial", "map_time_s"]


@dataclass(frozen=True, kw_only=True)
class MapSettings:
    """The benchmark's map.

    Parameters
    ----------
    field_um : float
        Side of the square field, um.
    grid : int
        Points per side of the reference grid (61: a 1.33 um step over 80 um, about the
        focus' horizontal size, the step a scientist maps at).
    exposure_s : float
        Exposure per point, s.
    overhead_s : float
        Settling and readout per point of a step map, s.
    batch : int
        Adaptive points per batch.
    coarse_step_um, fine_step_um : float
        Coarse-to-fine steps, um.
    """

    field_um: float = 80.0
    grid: int = 61
    exposure_s: float = 0.01
    overhead_s: float = 0.05
    batch: int = 24
    coarse_step_um: float = 4.0
    fine_step_um: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or \
                not 5 <= self.grid <= 201:
            raise ConfigError(f"grid must be an integer in [5, 201], got {self.grid!r}")
        for name in ("field_um", "exposure_s", "coarse_step_um", "fine_step_um"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"MapSettings.{name} must be a finite number > 0, got {v!r}")


def _spot(rays: int = 20_000) -> tuple[float, float, float]:
    """Flux (ph/s) and FWHM (um) of the ideal default beamline's focus (fast twin)."""
    from twin.presets import load_preset
    from twin.tracer import Twin

    obs = Twin(load_preset(None), backend="fast", rays=rays).trace(seed=0)
    s = obs.diagnostics["sample"].stats
    return float(s.flux), float(s.fwhm_x_um), float(s.fwhm_y_um)


def _measure(specimen: Specimen, flux: float, fx: float, fy: float, exposure: float,
             rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    def f(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, float).reshape(-1, 2)
        # the beam in the sample frame is at -stage (moving the stage by +x moves it by -x)
        lam = flux * exposure * specimen.efficiency * specimen.value(-p[:, 0], -p[:, 1], fx, fy)
        return rng.poisson(lam).astype(float)

    return f


def map_time_s(points: np.ndarray, exposure_s: float, overhead_s: float,
               speed_um_s: float = 100.0) -> float:
    """Beamline time of a step map visiting *points* in order (um), s: each move at the
    stage's speed (both axes together), then the exposure and the overhead."""
    p = np.asarray(points, float).reshape(-1, 2)
    if len(p) == 0:
        return 0.0
    moves = np.abs(np.diff(p, axis=0)).max(axis=1) / speed_um_s if len(p) > 1 else np.zeros(0)
    return float(moves.sum() + len(p) * (exposure_s + overhead_s))


def _serpentine(p: np.ndarray) -> np.ndarray:
    """Order points row by row (axis 0), alternating the direction of axis 1."""
    p = np.asarray(p, float)
    if len(p) == 0:
        return p
    rows = np.unique(np.round(p[:, 0], 6))
    out = []
    for i, r in enumerate(rows):
        row = p[np.round(p[:, 0], 6) == r]
        row = row[np.argsort(row[:, 1])]
        out.append(row[::-1] if i % 2 else row)
    return np.vstack(out)


def adaptive_trial(seed: int, settings: MapSettings, spot: tuple[float, float, float],
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One specimen: the grid's error, then the GP scan until it matches it."""
    specimen = Specimen.default(seed, field_um=settings.field_um)
    rng = np.random.default_rng(seed)
    f = _measure(specimen, *spot, settings.exposure_s, rng)
    h = settings.field_um / 2
    box = Box((-h, -h), (h, h))
    g = np.linspace(-h, h, 241)
    ev = np.array(np.meshgrid(g, g, indexing="ij")).reshape(2, -1).T
    truth = spot[0] * settings.exposure_s * specimen.efficiency * specimen.value(
        -ev[:, 0], -ev[:, 1], spot[1], spot[2])
    rng_span = float(np.ptp(truth))

    def error(p: np.ndarray, v: np.ndarray) -> float:
        return float(np.sqrt(np.mean((reconstruct(p, v, ev) - truth) ** 2)) / rng_span)

    curve_grid = []
    for n in sorted({11, 21, 31, 41, 51, 61, settings.grid}):
        p = box.grid(n, n)
        curve_grid.append({"points": n * n, "error": error(p, f(p))})
    grid_points = settings.grid ** 2
    target = next(c["error"] for c in curve_grid if c["points"] == grid_points)
    t0 = time.perf_counter()
    # past half the grid's points the ratio is below 2 whatever happens: stop there
    mapper = GPMapper(box, grid_points // 2, batch=settings.batch, counting=True, seed=seed)
    curve_adaptive, reached = [], None
    while not mapper.done:
        p = mapper.ask()
        mapper.tell(p, f(p))
        err = error(box.from_unit(mapper.X), mapper.y)
        curve_adaptive.append({"points": len(mapper.y), "error": err})
        if err <= target:
            reached = len(mapper.y)
            break
    wall = time.perf_counter() - t0
    # the same run against every coarser grid: where the adaptive curve first reaches its error
    by_grid = []
    for c in curve_grid:
        if c["points"] > grid_points:
            continue
        hit = next((a["points"] for a in curve_adaptive if a["error"] <= c["error"]), None)
        by_grid.append({"grid_points": c["points"], "error": c["error"], "adaptive_points": hit,
                        "ratio": c["points"] / hit if hit else None})
    if progress:
        progress(f"specimen {seed}: grid {grid_points} points -> error {target:.4f}; adaptive "
                 f"{reached or 'not reached'} points ({wall:.1f} s)")
    return {"seed": seed, "grid_points": grid_points, "adaptive_points": reached,
            "ratio": grid_points / reached if reached else None, "error_target": target,
            "adaptive_error": curve_adaptive[-1]["error"], "wall_s": round(wall, 2),
            "gp_fit_s": round(mapper.fit_s, 2), "by_grid": by_grid, "curve_grid": curve_grid,
            "curve_adaptive": curve_adaptive, "points": box.from_unit(mapper.X).tolist()}


def coarse_to_fine_trial(seed: int, settings: MapSettings, spot: tuple[float, float, float]
                         ) -> dict[str, Any]:
    """One specimen: coarse-to-fine against a full fine map."""
    specimen = Specimen.default(seed, field_um=settings.field_um)
    rng = np.random.default_rng(seed + 1000)
    f = _measure(specimen, *spot, settings.exposure_s, rng)
    h = settings.field_um / 2
    box = Box((-h, -h), (h, h))
    c2f = CoarseToFine(box, settings.coarse_step_um, settings.fine_step_um)
    order: list[np.ndarray] = []
    while not c2f.done:
        p = _serpentine(c2f.ask())
        order.append(p)
        c2f.tell(p, f(p) if len(p) else [])
    coarse, fine = order[0], (order[1] if len(order) > 1 else np.zeros((0, 2)))
    full = _serpentine(box.grid(*(len(np.arange(-h, h + 0.5 * settings.fine_step_um,
                                                settings.fine_step_um)),) * 2))
    t_c2f = map_time_s(np.vstack([coarse, fine]), settings.exposure_s, settings.overhead_s)
    t_full = map_time_s(full, settings.exposure_s, settings.overhead_s)
    # coverage: the specimen's features (in stage coordinates) inside the fine maps' pixels
    fg = np.arange(-h, h + 0.5 * settings.fine_step_um, settings.fine_step_um)
    xx, yy = np.meshgrid(fg, fg, indexing="ij")
    feat = specimen.feature_mask(-xx, -yy)
    covered = np.zeros_like(feat)
    if len(fine):
        idx = np.round((fine + h) / settings.fine_step_um).astype(int)
        covered[idx[:, 0], idx[:, 1]] = True
    coverage = float((feat & covered).sum() / max(feat.sum(), 1))
    return {"seed": seed, "coarse_points": len(coarse), "fine_points": len(fine),
            "points": len(coarse) + len(fine), "full_fine_points": len(full),
            "points_saved_pct": 100.0 * (1 - (len(coarse) + len(fine)) / len(full)),
            "time_s": round(t_c2f, 1), "full_fine_time_s": round(t_full, 1),
            "time_saved_pct": 100.0 * (1 - t_c2f / t_full), "feature_coverage": coverage,
            "roi_pixels": int(c2f.roi.sum()) if c2f.roi is not None else 0,
            "coarse": coarse.tolist(), "fine": fine.tolist(),
            "fine_bbox": [fine.min(0).tolist(), fine.max(0).tolist()] if len(fine) else None}


def bench_scan(*, seed: int = 0, trials: int = 3, settings: MapSettings | None = None,
               plot: str | None = None, progress: Callable[[str], None] | None = None
               ) -> dict[str, Any]:
    """The ``bench scan --json`` document (see the module docstring).

    Top-level ``grid_points``, ``adaptive_points``, ``ratio`` and ``error_target``
    are those of specimen *seed*; ``trials`` has every specimen, ``ratio_min`` and
    ``ratio_median`` summarise them.
    """
    settings = settings or MapSettings()
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 50:
        raise ConfigError(f"trials must be an integer in [1, 50], got {trials!r}")
    spot = _spot()
    if progress:
        progress(f"focus at the sample: {spot[1]:.3f} x {spot[2]:.3f} um FWHM, "
                 f"{spot[0]:.3g} ph/s")
    adaptive = [adaptive_trial(seed + k, settings, spot, progress) for k in range(trials)]
    c2f = [coarse_to_fine_trial(seed + k, settings, spot) for k in range(trials)]
    ratios = [a["ratio"] or 0.0 for a in adaptive]
    first = adaptive[0]
    doc: dict[str, Any] = {
        "grid_points": first["grid_points"], "adaptive_points": first["adaptive_points"],
        "ratio": first["ratio"], "error_target": first["error_target"],
        "ratio_min": min(ratios), "ratio_median": float(np.median(ratios)),
        "goal_ratio": 3.0, "goal_met": min(ratios) >= 3.0,
        "seed": seed, "spot_fwhm_um": [spot[1], spot[2]],
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "trials": [{k: v for k, v in a.items() if k != "points"} for a in adaptive],
        "coarse_to_fine": {
            "trials": [{k: v for k, v in c.items() if k not in ("coarse", "fine")} for c in c2f],
            "points_saved_pct_median": float(np.median([c["points_saved_pct"] for c in c2f])),
            "time_saved_pct_median": float(np.median([c["time_saved_pct"] for c in c2f])),
            "feature_coverage_min": min(c["feature_coverage"] for c in c2f)},
    }
    if plot:
        doc["plot"] = _plot(plot, adaptive[0], c2f[0], settings, spot)
    return doc


def _plot(path: str, a: dict[str, Any], c: dict[str, Any], settings: MapSettings,
          spot: tuple[float, float, float]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    specimen = Specimen.default(a["seed"], field_um=settings.field_um)
    h = settings.field_um / 2
    g = np.linspace(-h, h, 241)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    img = specimen.value(-xx, -yy, spot[1], spot[2])
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.6), dpi=100)
    gp = np.array(a["points"])
    ax[0].imshow(img.T, origin="lower", extent=(-h, h, -h, h), cmap="viridis")
    ax[0].plot(gp[:, 0], gp[:, 1], ".", ms=2.5, color="tab:red")
    ax[0].set_title(f"adaptive GP scan: {len(gp)} points", fontsize=10)
    ax[1].loglog([p["points"] for p in a["curve_grid"]], [p["error"] for p in a["curve_grid"]],
                 "o-", label="uniform grid")
    ax[1].loglog([p["points"] for p in a["curve_adaptive"]],
                 [p["error"] for p in a["curve_adaptive"]], ".-", label="adaptive GP")
    ax[1].axhline(a["error_target"], color="0.5", ls="--", lw=1,
                  label=f"target: {a['grid_points']}-point grid")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax[1].xaxis.set_major_formatter(ScalarFormatter())
    ax[1].xaxis.set_minor_formatter(NullFormatter())
    ax[1].set_xticks([100, 200, 500, 1000, 2000, 4000])
    ax[1].set_xlabel("points")
    ax[1].set_ylabel("reconstruction error (NRMSE)")
    ax[1].legend(fontsize=8)
    ax[1].set_title(f"same error with {a['ratio']:.1f}x fewer points" if a["ratio"]
                    else "target not reached", fontsize=10)
    ax[2].imshow(img.T, origin="lower", extent=(-h, h, -h, h), cmap="gray")
    co = np.array(c["coarse"])
    ax[2].plot(co[:, 0], co[:, 1], "+", ms=3, color="tab:orange", label="coarse")
    fi = np.array(c["fine"]).reshape(-1, 2)
    ax[2].plot(fi[:, 0], fi[:, 1], ",", color="tab:red", label="fine (ROIs)")
    if c["fine_bbox"] is not None:
        ax[2].set_title(f"coarse-to-fine: {c['points']} points vs {c['full_fine_points']} "
                        f"({c['time_saved_pct']:.0f} % less time)", fontsize=10)
    for a_ in ax[::2]:
        a_.set_xlabel("sample.x (um)")
        a_.set_ylabel("sample.y (um)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
