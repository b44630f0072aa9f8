"""Pictures of the beam: where people would rather look than read.

Uses matplotlib's non-interactive Agg backend, so it works on a headless
machine. Only imaging observation points (screens, the sample, the detector)
are drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twin.errors import ConfigError
from twin.observation import Observation, Reading

__all__ = ["plot_observations", "save_figure", "PICTURE_FORMATS"]

#: the picture formats every plotting command writes (from the file name's suffix)
PICTURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def save_figure(fig: object, path: str | Path, **kw: object) -> Path:
    """Write a matplotlib figure all or nothing: to a hidden temporary file in the
    same folder, renamed to *path* once complete. A full disk or a write error
    leaves no empty or truncated picture behind; the error is raised.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or Path
        The picture's file name; its suffix sets the format.
    **kw
        Passed to ``savefig`` (``dpi`` ...).
    """
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in PICTURE_FORMATS:
        raise ConfigError(f"picture {str(path)!r}: the name must end in one of "
                          f"{', '.join('.' + f for f in PICTURE_FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format=fmt, **kw)  # type: ignore[attr-defined]
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out

_IMAGING = ("screen", "sample", "detector")


def _crop(r: Reading, half_width_um: float | None) -> tuple[np.ndarray, tuple[float, ...]]:
    """The image, cropped around the centroid when *half_width_um* is given."""
    img, ext = r.image, r.extent_um
    if half_width_um is None or not np.isfinite(r.stats.centroid_x_um):
        return img, ext
    ny, nx = img.shape
    px = (ext[1] - ext[0]) / nx
    py = (ext[3] - ext[2]) / ny
    cx = int((r.stats.centroid_x_um - ext[0]) / px)
    cy = int((r.stats.centroid_y_um - ext[2]) / py)
    hx, hy = max(2, int(half_width_um / px)), max(2, int(half_width_um / py))
    x0, x1 = max(0, cx - hx), min(nx, cx + hx)
    y0, y1 = max(0, cy - hy), min(ny, cy + hy)
    if x1 <= x0 or y1 <= y0:
        return img, ext
    return img[y0:y1, x0:x1], (ext[0] + x0 * px, ext[0] + x1 * px, ext[2] + y0 * py,
                               ext[2] + y1 * py)


def plot_observations(observations: Sequence[Observation], labels: Sequence[str],
                      path: str | Path, *, title: str = "",
                      zoom_um: dict[str, float] | None = None) -> Path:
    """Draw the images of every imaging point, one column per observation.

    Parameters
    ----------
    observations : sequence of Observation
    labels : sequence of str
        Column titles.
    path : str or Path
        PNG file to write.
    title : str
    zoom_um : dict of str to float, optional
        Half-width (um) to crop around the centroid, per observation point;
        by default the sample is shown +-4 um around its centroid.

    Returns
    -------
    Path
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    zoom = {"sample": 4.0} if zoom_um is None else zoom_um
    names = [n for n, r in observations[0].diagnostics.items() if r.kind in _IMAGING]
    names.append(observations[0].detector.name)
    ncol, nrow = len(observations), len(names)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    for j, (obs, label) in enumerate(zip(observations, labels, strict=True)):
        for i, name in enumerate(names):
            ax = axes[i][j]
            r = obs.reading(name)
            img, ext = _crop(r, zoom.get(name))
            ax.imshow(img, origin="lower", extent=ext, aspect="auto", cmap="inferno",
                      interpolation="nearest")
            s = r.stats
            txt = f"{s.flux:.2e} ph/s"
            if np.isfinite(s.fwhm_x_um):
                txt += f"\nFWHM {s.fwhm_x_um:.3g} x {s.fwhm_y_um:.3g} um"
                txt += f"\ncen ({s.centroid_x_um:.3g}, {s.centroid_y_um:.3g}) um"
            ax.text(0.02, 0.98, txt, transform=ax.transAxes, va="top", ha="left", fontsize=7,
                    color="white")
            ax.set_title(f"{label}: {name}", fontsize=9)
            ax.set_xlabel("x (um)", fontsize=8)
            ax.set_ylabel("y (um)", fontsize=8)
            ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
