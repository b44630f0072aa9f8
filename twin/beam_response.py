"""The beamline's response to small changes, measured on the fast twin.

Stabilising a beam deals in nanometres and fractions of a percent around one
operating point, far inside the range where the optics respond smoothly. There
the beam at each diagnostic is, to second order in each input,

    y(d) = y0 + J d + 1/2 diag(H) d**2

for a change *d* of the source (position, pointing, size) and of a few motors
(the pitches that drift and the ones that correct). :func:`measure_response`
measures ``y0``, ``J`` and the diagonal of the Hessian on the fast twin: for each
input a parabola fitted by least squares through six offsets (±0.5, ±1, ±2
steps), with the same rays for every state (common random numbers), so the
differences are free of ray statistics. A stabilisation loop then costs
microseconds a step instead of a trace; ``tests/test_stabilize.py`` checks the
expansion against full traces at the disturbance's amplitudes.

Units: centroids and rms sizes in um, source positions in um, pointing in urad,
size changes as ratios (0.01 = 1 %), motors in their own units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from twin.description import BeamlineDescription
from twin.errors import ConfigError, UnknownNameError
from twin.fast import SOURCE_FIELDS, FastTwin
from twin.hidden import HiddenErrors

__all__ = ["SOURCE_INPUTS", "STATS", "BeamResponse", "measure_response"]

#: source inputs of a response: position (um), pointing (urad), size change (ratio)
SOURCE_INPUTS: tuple[str, ...] = ("source.dx_um", "source.dy_um", "source.dxp_urad",
                                  "source.dyp_urad", "source.size_x", "source.size_y")
#: statistics measured at each diagnostic, um
STATS: tuple[str, ...] = ("centroid_x_um", "centroid_y_um", "rms_x_um", "rms_y_um")
_SOURCE_STEPS = (1.0, 0.5, 0.5, 0.5, 0.02, 0.02)
#: offsets of each input, in steps, through which its parabola is fitted
_FRACTIONS = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class BeamResponse:
    """Second-order expansion of the beam at some diagnostics about one state.

    Attributes
    ----------
    inputs : tuple of str
        :data:`SOURCE_INPUTS` that were measured, then motor names.
    outputs : tuple of str
        ``"diagnostic.stat"`` for every diagnostic and :data:`STATS` entry.
    y0 : ndarray, shape (n_out,)
        The outputs at the operating point, um.
    jacobian : ndarray, shape (n_out, n_in)
        First derivatives, output units per input unit.
    curvature : ndarray, shape (n_out, n_in)
        Second derivatives along each input (the Hessian's diagonal).
    steps : ndarray, shape (n_in,)
        Steps used (the fit spans ±2 steps), input units.
    positions : dict of str to float
        The operating point's motor positions, motor units.
    rays : int
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    y0: np.ndarray
    jacobian: np.ndarray
    curvature: np.ndarray
    steps: np.ndarray
    positions: dict[str, float]
    rays: int

    def index(self, name: str) -> int:
        """Column of input *name* or row of output *name*."""
        if name in self.inputs:
            return self.inputs.index(name)
        if name in self.outputs:
            return self.outputs.index(name)
        raise UnknownNameError(f"{name!r} is neither an input ({', '.join(self.inputs)}) nor an "
                               f"output ({', '.join(self.outputs)}) of this response")

    def predict(self, deltas: np.ndarray) -> np.ndarray:
        """Outputs for input changes *deltas* of shape ``(..., n_in)``; shape ``(..., n_out)``."""
        d = np.asarray(deltas, dtype=float)
        if d.shape[-1] != len(self.inputs):
            raise ConfigError(f"deltas must end in {len(self.inputs)} inputs "
                              f"({', '.join(self.inputs)}), got shape {d.shape}")
        return self.y0 + d @ self.jacobian.T + 0.5 * (d * d) @ self.curvature.T

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"inputs": list(self.inputs), "outputs": list(self.outputs),
                "y0": self.y0.tolist(), "jacobian": self.jacobian.tolist(),
                "curvature": self.curvature.tolist(), "steps": self.steps.tolist(),
                "positions": dict(self.positions), "rays": self.rays}


def measure_response(desc: BeamlineDescription, *, motors: Sequence[str],
                     diagnostics: Sequence[str], positions: Mapping[str, float] | None = None,
                     hidden: HiddenErrors | None = None, motor_steps: Mapping[str, float] | None
                     = None, rays: int = 50_000, seed: int = 0) -> BeamResponse:
    """Measure the beam's second-order response about one state on the fast twin.

    Parameters
    ----------
    desc : BeamlineDescription
    motors : sequence of str
        Motors to differentiate by (after the six source inputs).
    diagnostics : sequence of str
        Observation points whose :data:`STATS` are the outputs.
    positions : mapping, optional
        The operating point (motor units); default: *hidden*'s ideal positions.
    hidden : HiddenErrors, optional
        The beamline's hidden errors (default: none).
    motor_steps : mapping, optional
        Step per motor, motor units (default: 0.1 of the unit, e.g. 0.1 urad).
    rays : int
        Rays per state (one batch of ``1 + 6 n_in`` states).
    seed : int
        Seeds the source rays.

    Raises
    ------
    UnknownNameError
        For a motor or diagnostic the beamline does not have.
    ConfigError
        If a diagnostic loses the beam at the operating point.
    """
    hidden = hidden if hidden is not None else HiddenErrors.none()
    for m in motors:
        desc.motor(m)
    for d in diagnostics:
        desc.element(d)
    base = dict(positions) if positions is not None else hidden.ideal_positions(desc)
    steps_m = {m: float((motor_steps or {}).get(m, 0.1)) for m in motors}
    n_src = len(SOURCE_INPUTS)
    steps = np.array(list(_SOURCE_STEPS) + [steps_m[m] for m in motors])
    n_in = len(steps)
    batch_pos, batch_src = [base], [np.array([0, 0, 0, 0, 1.0, 1.0])]
    for i in range(n_in):
        for frac in _FRACTIONS:
            pos = dict(base)
            src = np.array([0, 0, 0, 0, 1.0, 1.0])
            if i < n_src:
                src[i] += frac * steps[i]
            else:
                name = motors[i - n_src]
                pos[name] = base.get(name, desc.motor(name).position) + frac * steps[i]
            batch_pos.append(pos)
            batch_src.append(src)
    ft = FastTwin(desc, rays=rays, device="cpu", dtype=torch.float64)
    with torch.no_grad():
        p = ft.positions(batch_pos)
        h = ft.hidden([hidden] * len(batch_pos))
        s = torch.tensor(np.stack(batch_src), dtype=torch.float64)
        if s.shape[1] != len(SOURCE_FIELDS):  # pragma: no cover - guarded by SOURCE_FIELDS
            raise ConfigError("source fields changed")
        readings = ft.to_numpy(ft.observe(p, h, seed=seed, source=s))
    outputs = tuple(f"{d}.{k}" for d in diagnostics for k in STATS)
    values = np.stack([readings[d][k] for d in diagnostics for k in STATS], axis=1)
    if not np.isfinite(values).all():
        raise ConfigError(f"a diagnostic of {', '.join(diagnostics)} loses the beam at the "
                          "operating point or a step from it; align the beamline first")
    y0 = values[0]
    # per input, a least-squares parabola through the six offsets: rays that cross a
    # slit blade or a mirror end one by one make single differences ragged
    k = len(_FRACTIONS)
    a = np.asarray(_FRACTIONS)
    design = np.column_stack([a, 0.5 * a * a])
    pinv = np.linalg.pinv(design)  # (2, k)
    jac = np.zeros((len(outputs), n_in))
    curv = np.zeros((len(outputs), n_in))
    for i in range(n_in):
        dy = values[1 + i * k:1 + (i + 1) * k] - y0  # (k, n_out)
        coef = pinv @ dy
        jac[:, i] = coef[0] / steps[i]
        curv[:, i] = coef[1] / steps[i] ** 2
    return BeamResponse(inputs=SOURCE_INPUTS + tuple(motors), outputs=outputs, y0=y0,
                        jacobian=jac, curvature=curv, steps=steps,
                        positions={k: float(v) for k, v in base.items()}, rays=rays)
