"""Online analysis of scans: peak statistics, fits, plots.

:class:`ScanAnalysis` is a RunEngine subscriber. It collects the scanned
axis and the signal from every event and, when the run stops, computes

* the peak statistics of bluesky's own ``PeakStats`` (com, cen, max, min,
  fwhm; for 1-D scans it *is* ``PeakStats``, fed the same documents), or for a
  map the 2-D equivalents (:func:`map_stats`);
* an optional least-squares fit (:func:`fit_curve`): a Gaussian, a Lorentzian,
  or an error function for knife-edge scans (the beam's FWHM is that of the
  edge's derivative);

and publishes them at once (``result``, the callbacks in ``on_result``),
recording how long after the stop document that was (``latency_ms``). The
plot is live when a display exists (bluesky's ``LivePlot``) and a PNG
otherwise (:func:`plot_scan`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bluesky.callbacks.fitting import PeakStats  # imported here: no import in the latency
from scipy.optimize import curve_fit
from scipy.special import erf

from twin.plotting import save_figure

__all__ = ["ScanAnalysis", "peak_stats", "map_stats", "fit_curve", "plot_scan", "has_display",
           "FWHM_PER_SIGMA"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_STATS = ("com", "cen", "max", "min", "fwhm")


def _none_if_nan(v: Any) -> Any:
    if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
        return None
    return float(v) if isinstance(v, (np.floating, np.integer)) else v


def peak_stats(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """bluesky ``PeakStats`` of the points (x, y): com, cen, max, min, fwhm.

    ``max``/``min`` are ``[x, y]`` pairs as in bluesky; a result that cannot be
    computed (flat data, a single point, no half-maximum crossing) is ``None``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    good = np.isfinite(x) & np.isfinite(y)
    x, y = x[good], y[good]
    out: dict[str, Any] = dict.fromkeys(_STATS)
    if len(x) < 2 or np.ptp(y) == 0:
        if len(x):
            i, j = int(np.argmax(y)), int(np.argmin(y))
            out["max"], out["min"] = [float(x[i]), float(y[i])], [float(x[j]), float(y[j])]
        return out
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    ps = PeakStats("x", "y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            stats = ps._calc_stats(xs, ys, ps._stats_fields.copy())  # noqa: SLF001
        except Exception:  # noqa: BLE001 - degenerate data: report what is computable
            stats = None
    if stats is not None:
        out["com"] = _none_if_nan(stats.com)
        out["cen"] = _none_if_nan(stats.cen)
        out["fwhm"] = _none_if_nan(stats.fwhm)
        out["max"] = [float(v) for v in stats.max]
        out["min"] = [float(v) for v in stats.min]
    return out


def map_stats(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> dict[str, Any]:
    """Statistics of a 2-D map of *z* at points (*x*, *y*).

    ``com``: centre of mass of ``z - min(z)``; ``cen``: centre of the points at
    or above half maximum; ``max``/``min``: ``[x, y, z]`` of the extreme points;
    ``fwhm``: ``[fx, fy]``, the extent of the half-maximum region along each axis.
    Positions are ``[x, y]``.
    """
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[good], y[good], z[good]
    out: dict[str, Any] = dict.fromkeys(_STATS)
    if len(z) == 0:
        return out
    i, j = int(np.argmax(z)), int(np.argmin(z))
    out["max"] = [float(x[i]), float(y[i]), float(z[i])]
    out["min"] = [float(x[j]), float(y[j]), float(z[j])]
    w = z - z.min()
    if w.sum() > 0:
        out["com"] = [float(np.sum(w * x) / w.sum()), float(np.sum(w * y) / w.sum())]
        half = z >= z.min() + 0.5 * np.ptp(z)
        out["cen"] = [float(x[half].mean()), float(y[half].mean())]
        out["fwhm"] = [float(np.ptp(x[half])), float(np.ptp(y[half]))]
    return out


def _gauss(x: np.ndarray, a: float, c: float, s: float, b: float) -> np.ndarray:
    return a * np.exp(-0.5 * ((x - c) / s) ** 2) + b


def _lorentz(x: np.ndarray, a: float, c: float, g: float, b: float) -> np.ndarray:
    return a / (1.0 + ((x - c) / g) ** 2) + b


def _edge(x: np.ndarray, a: float, c: float, s: float, b: float) -> np.ndarray:
    return 0.5 * a * (1.0 + erf((x - c) / (math.sqrt(2.0) * s))) + b


_MODELS: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "gaussian": (_gauss, "sigma"), "lorentzian": (_lorentz, "gamma"), "erf": (_edge, "sigma")}


def fit_curve(x: Sequence[float], y: Sequence[float], model: str) -> dict[str, Any]:
    """Least-squares fit of *model* (gaussian, lorentzian or erf) to the points.

    Returns ``{"model", "ok", "params": {"amplitude", "center", "sigma"|"gamma",
    "background", "fwhm"}, "errors": {same, 1-sigma}, "r2", "message"}``. For
    ``erf`` (a knife edge) ``fwhm`` is the FWHM of the beam, i.e. of the edge's
    derivative, and a negative amplitude is a falling edge.
    """
    if model not in _MODELS:
        raise ValueError(f"unknown fit model {model!r}; one of {', '.join(_MODELS)}")
    fn, width = _MODELS[model]
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    good = np.isfinite(x) & np.isfinite(y)
    x, y = x[good], y[good]
    doc: dict[str, Any] = {"model": model, "ok": False, "params": None, "errors": None,
                           "r2": None, "message": ""}
    if len(x) < 5 or np.ptp(x) == 0 or np.ptp(y) == 0:
        doc["message"] = f"needs at least 5 distinct points with a varying signal, got {len(x)}"
        return doc
    order = np.argsort(x)
    x, y = x[order], y[order]
    span = float(np.ptp(x))
    if model == "erf":
        rising = y[-max(1, len(y) // 5):].mean() > y[: max(1, len(y) // 5)].mean()
        a0 = float(np.ptp(y)) * (1 if rising else -1)
        b0 = float(y.min()) if rising else float(y.max())
        grad = np.abs(np.gradient(y, x))
        c0, w0 = float(x[int(np.argmax(grad))]), span / 10
    else:
        i = int(np.argmax(np.abs(y - np.median(y))))
        b0 = float(np.median(y))
        a0, c0 = float(y[i] - b0), float(x[i])
        st = peak_stats(x, y)
        w0 = (st["fwhm"] or span / 5) / (FWHM_PER_SIGMA if model == "gaussian" else 2.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, cov = curve_fit(fn, x, y, p0=[a0, c0, max(w0, span * 1e-3), b0], maxfev=20_000)
    except (RuntimeError, ValueError) as exc:
        doc["message"] = f"the fit did not converge: {exc}"
        return doc
    perr = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else \
        np.full(4, np.nan)
    w = abs(float(p[2]))
    fwhm = w * FWHM_PER_SIGMA if width == "sigma" else 2.0 * w
    resid = y - fn(x, *p)
    ss = float(np.sum((y - y.mean()) ** 2))
    names = ("amplitude", "center", width, "background")
    params = {k: float(v) for k, v in zip(names, p, strict=True)}
    params[width] = w
    params["fwhm"] = fwhm
    errors = {k: _none_if_nan(float(v)) for k, v in zip(names, perr, strict=True)}
    errors["fwhm"] = _none_if_nan(float(perr[2]) * fwhm / w) if w > 0 else None
    doc.update(ok=bool(np.all(np.isfinite(p))), params=params, errors=errors,
               r2=1.0 - float(np.sum(resid ** 2)) / ss if ss > 0 else None)
    return doc


def has_display() -> bool:
    """True when a live plot can be shown (a display and an interactive backend)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import matplotlib

    return matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo",
                                                    "template")


def plot_scan(path: str | Path, *, x: np.ndarray, y: np.ndarray, x_label: str, y_label: str,
              title: str, stats: dict[str, Any] | None = None, fit: dict[str, Any] | None = None,
              x2: np.ndarray | None = None, x2_label: str = "") -> Path:
    """Write the scan's plot as a PNG: points, fit and markers (1-D), or the map (with *x2*)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    if x2 is None:
        ax.plot(x, y, "o-", ms=4, lw=1, label="measured")
        if fit is not None and fit.get("ok"):
            fn, _ = _MODELS[fit["model"]]
            p = fit["params"]
            xf = np.linspace(np.nanmin(x), np.nanmax(x), 400)
            w = p.get("sigma", p.get("gamma"))
            ax.plot(xf, fn(xf, p["amplitude"], p["center"], w, p["background"]), "-", lw=1.5,
                    label=f"{fit['model']} fit: centre {p['center']:.4g}, FWHM {p['fwhm']:.4g}")
        for key, style in (("cen", "--"), ("com", ":")):
            v = (stats or {}).get(key)
            if isinstance(v, (int, float)):
                ax.axvline(v, ls=style, color="0.4", lw=1, label=f"{key} {v:.4g}")
        ax.set_xlabel(x_label)
    else:
        sc = ax.scatter(x, x2, c=y, s=max(4.0, 3000.0 / max(len(y), 1)), marker="s",
                        cmap="viridis")
        fig.colorbar(sc, ax=ax, label=y_label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(x2_label)
        ax.set_aspect("equal", adjustable="datalim")
    if x2 is None:
        ax.set_ylabel(y_label)
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
    return path


class ScanAnalysis:
    """A RunEngine subscriber: peak statistics and a fit, published when the run stops.

    Parameters
    ----------
    signal : str
        Event field analysed.
    axes : sequence of str
        Event fields of the scanned axes (the first is the x of a 1-D scan; two
        make a map); empty for count/timescan (x is the point number).
    fit : str
        none, gaussian, lorentzian or erf.
    """

    def __init__(self, signal: str, axes: Sequence[str], *, fit: str = "none",
                 map2d: bool = False) -> None:
        self.signal, self.axes, self.fit_model, self.map2d = signal, list(axes), fit, map2d
        self.columns: dict[str, list[float]] = {k: [] for k in [*self.axes, signal]}
        self.seq: list[int] = []
        self.result: dict[str, Any] | None = None
        self.on_result: list[Callable[[dict[str, Any]], None]] = []
        self._primary: set[str] = set()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:  # noqa: D102
        if name == "descriptor" and doc.get("name") == "primary":
            self._primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self._primary:
            self.seq.append(int(doc["seq_num"]))
            for k in self.columns:
                self.columns[k].append(float(doc["data"].get(k, math.nan)))
        elif name == "stop":
            self.result = self.compute()
            self.result["latency_ms"] = round((time.time() - float(doc["time"])) * 1e3, 3)
            for cb in self.on_result:
                cb(self.result)

    def compute(self) -> dict[str, Any]:
        """The statistics (and fit) of what was collected so far."""
        y = np.array(self.columns[self.signal])
        x = np.array(self.columns[self.axes[0]]) if self.axes else np.array(self.seq, float)
        if self.map2d and len(self.axes) >= 2:
            peak = map_stats(x, np.array(self.columns[self.axes[1]]), y)
            fit = None
        else:
            peak = peak_stats(x, y)
            fit = fit_curve(x, y, self.fit_model) if self.fit_model != "none" else None
        return {"peak": peak, "fit": fit, "points": len(y)}
