"""Calibration: fit the twin's hidden errors to what the real beamline shows.

Given readings observed at known motor positions (beam positions, sizes and
fluxes at the diagnostics), find the hidden motor offsets that make the fast
twin reproduce them, by gradient descent through the differentiable tracer.
This is what makes the twin a twin of *this* beamline rather than of an ideal
one.

The fit is a maximum a-posteriori estimate: offsets are parametrised in units
of each motor's ``misalign_sigma`` with a weak Gaussian prior, so that an
offset the observations cannot see stays near zero instead of wandering.
Offsets that change the source (undulator gap, monochromator Bragg angle)
re-sample the source rays and are not differentiable; they are held at zero
and act as unmodelled error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from twin.description import BeamlineDescription
from twin.errors import ConfigError
from twin.fast import FastTwin
from twin.hidden import HiddenErrors
from twin.observation import Observation

__all__ = ["CalibrationResult", "calibrate", "NOT_FITTED"]

#: axes whose offsets re-sample the source: not fitted
NOT_FITTED = ("gap", "bragg")
_STATS = ("centroid_x_um", "centroid_y_um", "rms_x_um", "rms_y_um")


@dataclass
class CalibrationResult:
    """Fitted hidden errors and how the fit went.

    Attributes
    ----------
    hidden : HiddenErrors
        The fitted offsets (motor units).
    fitted : list of str
        Motors whose offsets were fitted.
    loss_history : list of float
    seconds : float
        Wall time of the fit.
    residual_rms : float
        RMS of the normalised residuals at the end.
    """

    hidden: HiddenErrors
    fitted: list[str]
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    residual_rms: float = math.nan

    def recovery(self, truth: HiddenErrors, desc: BeamlineDescription) -> dict[str, dict]:
        """Per fitted motor: true and fitted offsets and the error in units of sigma."""
        out = {}
        for n in self.fitted:
            s = desc.motor(n).misalign_sigma
            t, f = truth.offset(n), self.hidden.offset(n)
            out[n] = {"true": t, "fitted": f, "error_sigma": abs(f - t) / s if s else math.nan,
                      "true_sigma": abs(t) / s if s else math.nan}
        return out


def calibrate(desc: BeamlineDescription,
              observations: Sequence[tuple[Mapping[str, float], Observation]], *,
              motors: Sequence[str] | None = None, diagnostics: Sequence[str] | None = None,
              rays: int = 3000, seed: int = 0, steps: int = 15, lr: float = 1.0,
              prior: float = 1e-3, soft_edges_mm: float = 0.002,
              fixed: HiddenErrors | None = None, size_rel: float | None = None,
              position_rel: float | None = None, initial: HiddenErrors | None = None,
              bound_sigma: float | None = None) -> CalibrationResult:
    """Fit hidden errors to observations made at known motor positions.

    Parameters
    ----------
    desc : BeamlineDescription
    observations : sequence of (positions, Observation)
        Commanded motor positions (motor units; others at design) and what the
        beamline showed there.
    motors : sequence of str, optional
        Motors whose offsets to fit (default: every motor with a
        ``misalign_sigma``, except gaps and Bragg angles).
    diagnostics : sequence of str, optional
        Observation points to use (default: every one with position readings).
    rays, seed : int
        Rays and seed of the fast twin (need not match the observations').
    steps : int
        L-BFGS outer iterations (each up to 20 evaluations, strong-Wolfe line search).
    lr : float
        L-BFGS initial step (offsets are in units of sigma).
    prior : float
        Weight of the Gaussian prior on the offsets (in sigma units).
    soft_edges_mm : float
        Soft slit and mirror edges of the fast twin, mm (gradients through slits).
    fixed : HiddenErrors, optional
        Offsets already known (e.g. from an upstream stage), held fixed.
    size_rel : float, optional
        Relative error of the size readings: size residuals become
        ``log(model / observed) / size_rel``, so a focus of 40 nm weighs as much as
        a beam of 40 um. Default: sizes to 2 % of the ideal beam there, but never
        finer than 0.05 um (a camera's view of a focus).
    position_rel : float, optional
        Position error as a fraction of the ideal beam's rms along each axis
        (default: 2 % of the larger rms, at least 0.05 um).
    initial : HiddenErrors, optional
        Where the fit starts (default: no offsets): an earlier fit, refined.
    bound_sigma : float, optional
        Keep every fitted offset within this many of its motor's ``misalign_sigma``
        (a smooth bound, ``b tanh(z / b)``): a fit that loses the beam cannot run off
        to implausible offsets.
    """
    for name, v in (("size_rel", size_rel), ("position_rel", position_rel),
                    ("bound_sigma", bound_sigma)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")
    if not observations:
        raise ConfigError("calibration needs at least one observation")
    ft = FastTwin(desc, rays=rays, soft_edges_mm=soft_edges_mm)
    names = ft.motor_names
    if motors is None:
        motors = [n for n in names if desc.motor(n).misalign_sigma > 0
                  and n.split(".")[1] not in NOT_FITTED]
    for m in motors:
        desc.motor(m)
    first = observations[0][1]
    if diagnostics is None:
        diagnostics = [n for n, r in first.diagnostics.items() if r.kind != "ion_chamber"]
        diagnostics.append(first.detector.name)
    pos = ft.positions([p for p, _ in observations])
    sel = torch.tensor([names.index(m) for m in motors])
    sigma = torch.tensor([desc.motor(m).misalign_sigma for m in motors], dtype=ft.dtype)

    # targets and scales: positions to 2 % of the ideal rms (at least 0.02 um),
    # sizes to 5 %, flux in log to 5 %
    base = torch.zeros(len(names), dtype=ft.dtype)
    if fixed is not None:
        for n in names:
            base[names.index(n)] = fixed.offset(n)
    # residual scales: what a diagnostic resolves in practice. Positions and sizes to
    # 2 % of the ideal beam size there, but never finer than 0.05 um; flux to 5 % in log
    ideal = ft.observe(ft.positions([{}]), fwhm=False, seed=seed)
    targets, scales = {}, {}
    for d in diagnostics:
        obs = [o.reading(d).stats for _, o in observations]
        ref = ideal[d]
        r_scale = max(float(ref["rms_x_um"][0]), float(ref["rms_y_um"][0]))
        for k in _STATS:
            targets[(d, k)] = torch.tensor([getattr(s, k) for s in obs], dtype=ft.dtype)
            scales[(d, k)] = max(0.02 * r_scale, 0.05)
            if k.startswith("rms") and size_rel is not None:
                targets[(d, k)] = torch.log(targets[(d, k)].clamp(min=1e-9))
                scales[(d, k)] = size_rel
            elif k.startswith("centroid") and position_rel is not None:
                axis_rms = float(ref[k.replace("centroid", "rms")][0])
                scales[(d, k)] = max(position_rel * axis_rms, 1e-4)
        targets[(d, "flux")] = torch.log(torch.tensor([s.flux for s in obs], dtype=ft.dtype)
                                         .clamp(min=1.0))
        scales[(d, "flux")] = 0.05

    z0 = torch.zeros(len(motors), dtype=ft.dtype)
    if initial is not None:
        z0 = torch.tensor([initial.offset(m) for m in motors], dtype=ft.dtype) / sigma
        if bound_sigma is not None:  # start inside the bound (atanh of its image)
            z0 = bound_sigma * torch.atanh((z0 / bound_sigma).clamp(-0.999, 0.999))
    z = z0.clone().requires_grad_(True)

    def offsets_sigma() -> torch.Tensor:
        return z if bound_sigma is None else bound_sigma * torch.tanh(z / bound_sigma)
    history: list[float] = []
    t0 = time.perf_counter()

    phase = {"keys": [key for key in targets if key[1].startswith("centroid")]}

    def loss_fn() -> tuple[torch.Tensor, torch.Tensor]:
        hidden = base.expand(pos.shape[0], -1).clone()
        hidden = hidden.index_copy(1, sel, (offsets_sigma() * sigma).expand(pos.shape[0], -1))
        sim = ft.observe(pos, hidden, fwhm=False, seed=seed)
        res = []
        for d, k in phase["keys"]:
            target = targets[(d, k)]
            val = sim[d][k]
            if k == "flux":
                val = torch.log(val.clamp(min=1.0))
            elif k.startswith("rms") and size_rel is not None:
                val = torch.log(val.clamp(min=1e-9))
            ok = torch.isfinite(target) & torch.isfinite(val)
            res.append(torch.where(ok, (val - target) / scales[(d, k)], torch.zeros_like(val)))
        r = torch.cat(res)
        # robust (pseudo-Huber) loss: far-off points (a beam off a screen) do not dominate
        robust = 2.0 * (torch.sqrt(1.0 + (r / 3.0) ** 2) - 1.0) * 9.0
        return robust.mean() + prior * (offsets_sigma() ** 2).sum(), r

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss, _ = loss_fn()
        loss.backward()
        history.append(loss.detach().item())
        return loss

    # phase 1: centroids only (nearly linear in the offsets: lands in the right basin);
    # phase 2: everything (sizes pin benders and focus, flux pins slits and detuning)
    for keys in (phase["keys"], list(targets)):
        phase["keys"] = keys
        opt = torch.optim.LBFGS([z], lr=lr, max_iter=20, history_size=20,
                                line_search_fn="strong_wolfe")
        start = len(history)
        for _ in range(steps):
            opt.step(closure)
            n = len(history) - start
            if n > 40 and history[-40] - history[-1] < 1e-6 * history[-40]:
                break
    with torch.no_grad():
        _, r = loss_fn()
    offsets = {n: float(base[i]) for i, n in enumerate(names) if base[i] != 0}
    offsets.update({m: float(v) for m, v in zip(motors, (offsets_sigma() * sigma).detach().numpy(),
                                                  strict=True)})
    return CalibrationResult(hidden=HiddenErrors(offsets), fitted=list(motors),
                             loss_history=history, seconds=time.perf_counter() - t0,
                             residual_rms=float(np.sqrt(np.mean(r.numpy() ** 2))))
