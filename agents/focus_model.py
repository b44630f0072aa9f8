"""Aligning a KB pair from the twin's levers: centroids set pitch and height, sizes the bend.

For each mirror of a Kirkpatrick-Baez pair the fast twin says, once per stage and
search box, how the beam answers its motors:

- **Centroids.** The beam's position at the sample and at the detector behind it
  moves with the mirror's pitch and height, and with two lever arms the 2x2 response
  is well conditioned: the default beamline's KB-V moves the beam 28 and 108 um per
  40 urad of pitch, and 80 and about -50 um per 80 um of height, at the sample and
  the detector (the detector's height response bends where the mirror's end clips
  the beam's tail). One reading of both therefore gives the pitch and height
  offsets, as a response matrix steers an orbit.
- **Defocus.** The bender barely moves the beam, but it sets the focus. Near the
  design the squared spot size is a function of one coordinate, the defocus
  ``s = d_bend + slope_pitch d_pitch + slope_height d_height`` (the *valley*: a
  pitch error is compensated by the bend), which the twin tabulates,
  ``(W / W_design)^2 = f(s)``.

:class:`FocusModel` holds those levers (:meth:`FocusModel.from_twin`), and
:meth:`FocusModel.solve` turns readings taken at known motor positions into the
offsets of every motor (a :class:`Solution`):

- pitch and height: a Gauss-Newton fit through the twin of the centroids of the
  latest readings, with each motor's typical misalignment as the prior; a reading
  whose judge misses the beam is censored (the beam lies outside its field);
- the bend: the offset that lets the table explain every spot size measured so far
  (maximum a posteriori), and how well it does (the misfit).

:class:`TwinFocus` moves to ``design - offsets``, measures the bend either side of
that point (a spot near its waist does not say on which side the focus lies),
solves again with every reading, and stops when the stage looks aligned, or as soon
as a solve cannot explain the sizes (the levers are not this beamline's: a
diagnostic off its landmark). This is the model agent's calibrate-solve-move, with
the twin consulted through levers measured beforehand.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.bender_focus import vertex
from agents.problem import AlignmentProblem, Evaluation
from agents.separable import focusing_planes, plane_axes
from agents.stages import Stage
from twin.description import BeamlineDescription
from twin.errors import ConfigError
from twin.observation import BeamStats

__all__ = ["PlaneLevers", "FocusModel", "Solution", "TwinFocus", "LeverCache",
           "downstream_imager", "has_levers"]

#: rms of the model error of log(W^2) that the bend fit allows (twin against beamline,
#: the valley's coma the table leaves out, and the knife-edge's 1 % size error)
LOG_SIZE_SIGMA = 0.15
#: the rms misfit of log(W^2) (the sizes against the defocus table, at the solved
#: offsets) beyond which the levers do not describe this beamline: a diagnostic off its
#: landmark (the detector's own day-one error, 0.5 mm, reads as 185 urad of pitch), an
#: error outside the stage. Measured, fast twin, seeds 1000-1009: up to 0.10 with the
#: errors on the stage's motors; 0.4-8.9 in 8 of 10 with the detector and sample off too.
MAX_MISFIT = 0.3
#: rms error of a centroid at the judge and at the imager, um: the weights of the pitch
#: and height fit (measured at 5,000 rays: 0.03 and 3-8 um, photon noise; the judge's
#: allows for the twin's own error)
CENTROID_SIGMA_UM = (0.3, 6.0)
#: the latest readings that the centroid fit uses
MAX_READINGS = 8
#: a reading takes part in the fits only with at least this fraction of the flux
MIN_FLUX_RATIO = 0.5


@dataclass(frozen=True)
class Solution:
    """What :meth:`FocusModel.solve` makes of the readings.

    Attributes
    ----------
    offsets : dict of str to float
        The hidden offset of every stage motor, motor units.
    misfit : dict of str to float
        Per plane, the rms misfit of log(W^2) between the measured spot sizes and the
        defocus table at those offsets (0 without a size measured).
    """

    offsets: dict[str, float]
    misfit: dict[str, float]

    @property
    def trusted(self) -> bool:
        """Whether the levers explain the sizes (every misfit within :data:`MAX_MISFIT`)."""
        return max(self.misfit.values(), default=0.0) <= MAX_MISFIT


@dataclass(frozen=True)
class PlaneLevers:
    """The twin's levers for the mirror that focuses one plane.

    Attributes
    ----------
    plane : {"x", "y"}
    motors : tuple of str
        Pitch, height and bend motor names.
    index : tuple of int
        Their indices in the stage's motors.
    design : ndarray
        Their design positions, motor units.
    half_width : ndarray
        The search box's half-widths, motor units.
    jac : ndarray
        ``(2, 2)``: d(centroid at the judge, at the downstream imager) / d(pitch, height),
        um per motor unit.
    c_design : ndarray
        ``(2,)``: the centroids of the aligned beamline there, um.
    slope : ndarray
        ``(2,)``: the defocus coordinate's weights of pitch and height (bend units per
        motor unit): the best bend moves by ``-slope`` per unit of each.
    s_table, y_table : ndarray
        ``(W / W_design)^2`` at the judge against the defocus coordinate (bend units).
    straddle : float
        The bend step that grows the spot by a factor 1.5 in area (``y = 1.5``), bend
        units: the probes either side of a solved focus.
    """

    plane: str
    motors: tuple[str, str, str]
    index: tuple[int, int, int]
    design: np.ndarray
    half_width: np.ndarray
    jac: np.ndarray
    c_design: np.ndarray
    slope: np.ndarray
    s_table: np.ndarray
    y_table: np.ndarray
    straddle: float

    def size2(self, s: np.ndarray) -> np.ndarray:
        """The tabulated ``(W / W_design)^2`` at defocus *s* (bend units), held at the
        table's ends beyond them."""
        return np.interp(s, self.s_table, self.y_table)


def downstream_imager(desc: BeamlineDescription, judge: str) -> str | None:
    """The last imaging diagnostic (screen, sample or detector) after *judge*, if any."""
    names = [e.name for e in desc.elements]
    if judge not in names:
        return None
    after = [e for e in desc.elements[names.index(judge) + 1:]
             if e.kind in ("screen", "sample", "detector")]
    return after[-1].name if after else None


def has_levers(desc: BeamlineDescription | None, st: Stage) -> bool:
    """Whether stage *st* is a pair of mirrors focusing both planes with an imaging
    diagnostic behind its judge: what :class:`FocusModel` needs."""
    return desc is not None and focusing_planes(desc, st) is not None and \
        downstream_imager(desc, st.diagnostic) is not None


def _axes(stage: Stage, planes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, int, int]]:
    """Pitch, height and bend indices of each plane; ConfigError if one is missing."""
    out = {}
    for p, by in plane_axes(stage, planes).items():
        if not {"pitch", "height", "bend"} <= set(by):
            raise ConfigError(f"plane {p} of stage {stage.name!r} needs pitch, height and "
                              f"bend motors, has {sorted(by)}")
        out[p] = (by["pitch"], by["height"], by["bend"])
    return out


@dataclass(frozen=True)
class FocusModel:
    """The twin's levers of a KB pair (one :class:`PlaneLevers` per plane).

    Attributes
    ----------
    judge, imager : str
        The diagnostic that judges the focus and the imaging diagnostic after it.
    planes : dict of str to PlaneLevers
    twin : FastTwin
        The fast twin the levers come from; the centroid solve runs through it.
    marks : dict of str to tuple
        The twin's aligned beam at the judge and the imager: centroid x, y (um) and
        flux (ph/s), the landmarks when none are measured.
    seed : int
        Its ray seed.
    """

    judge: str
    imager: str
    planes: dict[str, PlaneLevers]
    twin: Any = field(repr=False)
    marks: dict[str, tuple[float, float, float]]
    seed: int = 0

    @classmethod
    def from_twin(cls, desc: BeamlineDescription, stage: Stage,
                  planes: Mapping[str, Sequence[int]], half_width: Mapping[str, float], *,
                  rays: int = 5000, seed: int = 0, table_points: int = 121,
                  table_span: float = 2.5) -> FocusModel:
        """Measure the levers on the ideal beamline in the fast twin (noise-free).

        Parameters
        ----------
        half_width : mapping of str to float
            Each stage motor's search half-width, motor units: the scale of the
            centroid probes (0.05 of it), the valley probes (0.1) and the defocus
            table (*table_span* of it each side).

        Raises
        ------
        ConfigError
            If the stage has no imaging diagnostic after its judge, or a plane lacks a
            pitch, height or bend motor.
        """
        from twin.fast import FastTwin

        imager = downstream_imager(desc, stage.diagnostic)
        if imager is None:
            raise ConfigError(f"stage {stage.name!r}: no screen or detector after "
                              f"{stage.diagnostic!r} to give the second lever arm")
        axes = _axes(stage, planes)
        ft = FastTwin(desc, rays=rays)
        names = {p: tuple(stage.motors[i] for i in ax) for p, ax in axes.items()}
        hw = {p: np.array([float(half_width[m]) for m in names[p]]) for p in axes}
        design = desc.design_positions()
        d0 = {p: np.array([design[m] for m in names[p]]) for p in axes}
        probe = 0.05

        # one batch: the design; pitch and height +- probe; the bend table; the bend
        # at pitch and height +-0.1 on a coarse grid (every plane moved together:
        # they are independent, each read in its own plane)
        dense = np.linspace(-0.3, 0.3, 241)  # the waist is narrow: 0.01 mm of bend in y
        grid = np.unique(np.concatenate([np.linspace(-table_span, table_span, table_points),
                                         dense]))
        coarse = np.linspace(-0.3, 0.3, 61)
        shifts = [0.1 * np.eye(3)[0], -0.1 * np.eye(3)[0], 0.1 * np.eye(3)[1],
                  -0.1 * np.eye(3)[1]]
        rows: list[dict[str, np.ndarray]] = [{p: np.zeros(3) for p in axes}]
        for k in (0, 1):
            for sign in (1.0, -1.0):
                rows.append({p: sign * probe * np.eye(3)[k] for p in axes})
        rows += [{p: g * np.eye(3)[2] for p in axes} for g in grid]
        rows += [{p: sh + g * np.eye(3)[2] for p in axes} for sh in shifts for g in coarse]

        def trace(rows: list[dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
            return _trace(ft, design, [{m: float(d0[p][j] + r[p][j] * hw[p][j])
                                        for p in axes for j, m in enumerate(names[p])}
                                       for r in rows], seed)

        obs = trace(rows)
        n0 = 5 + len(grid)
        # then each shifted valley's bottom on a fine grid around its coarse one
        fine = np.linspace(-0.02, 0.02, 41)
        around = {}
        for p in axes:
            y = obs[stage.diagnostic][f"fwhm_{p}_um"][n0:].reshape(len(shifts), len(coarse))
            around[p] = coarse[np.nanargmin(y, axis=1)]
        rows2 = [{p: sh + (around[p][i] + g) * np.eye(3)[2] for p in axes}
                 for i, sh in enumerate(shifts) for g in fine]
        obs2 = trace(rows2)
        out = {}
        for p in axes:
            c = np.stack([obs[stage.diagnostic][f"centroid_{p}_um"],
                          obs[imager][f"centroid_{p}_um"]], 1)
            jac = np.empty((2, 2))
            for k in (0, 1):
                jac[:, k] = (c[1 + 2 * k] - c[2 + 2 * k]) / (2.0 * probe * hw[p][k])
            w = obs[stage.diagnostic][f"fwhm_{p}_um"]
            y = (w / w[0]) ** 2
            table = y[5:n0]
            y2 = obs2[stage.diagnostic][f"fwhm_{p}_um"].reshape(len(shifts), len(fine))
            best = [_valley_bottom(dense, table[np.searchsorted(grid, dense)])] + [
                around[p][i] + _valley_bottom(fine, y2[i]) for i in range(len(shifts))]
            # best bend, half-widths: at the design, then pitch +-0.1, height +-0.1
            slope = np.array([-(best[1] - best[2]) / 0.2 * hw[p][2] / hw[p][0],
                              -(best[3] - best[4]) / 0.2 * hw[p][2] / hw[p][1]])
            if not (np.all(np.isfinite(jac)) and abs(np.linalg.det(jac)) > 0
                    and np.all(np.isfinite(slope)) and np.all(np.isfinite(table))):
                raise ConfigError(f"stage {stage.name!r}, plane {p}: the twin gives no usable "
                                  f"lever (centroid response {jac.tolist()}, valley slope "
                                  f"{slope.tolist()})")
            s = (grid - best[0]) * hw[p][2]  # defocus from the table's own minimum
            y_tab = table / table.min()
            wide = np.abs(s[y_tab >= 1.5])
            straddle = float(wide.min()) if wide.size else float(hw[p][2])
            out[p] = PlaneLevers(p, names[p], axes[p], d0[p], hw[p], jac, c[0].copy(), slope,
                                 s, y_tab, straddle)
        marks = {d: (float(obs[d]["centroid_x_um"][0]), float(obs[d]["centroid_y_um"][0]),
                     float(obs[d]["flux"][0])) for d in (stage.diagnostic, imager)}
        return cls(stage.diagnostic, imager, out, ft, marks, seed)

    # ------------------------------------------------------------------ solving
    def solve(self, evaluations: Sequence[Evaluation], ref_fwhm_um: Mapping[str, float],
              landmarks: Mapping[str, BeamStats] | None = None) -> Solution:
        """Offsets of every stage motor (motor units) that explain *evaluations*.

        Pitch and height: the offsets for which the twin moves the centroids at the
        judge and at the imager as far from the aligned beam's as the latest
        :data:`MAX_READINGS` readings measured them (Gauss-Newton through the twin,
        with the motors' typical misalignment, a quarter of the half-width, as a
        Gaussian prior). A centroid counts where its diagnostic sees at least
        :data:`MIN_FLUX_RATIO` of the aligned beam's flux, so that a beam off the
        sample still steers by the detector alone. *landmarks* gives the aligned
        beam's readings there as measured (default: the twin's own).

        Bend: the offset that makes the defocus table explain every reading's spot
        size at the judge, relative to *ref_fwhm_um* (the measured reference FWHM of
        each plane); with no size seen yet, the prior's zero.
        """
        marks = {d: (landmarks[d].centroid_x_um, landmarks[d].centroid_y_um, landmarks[d].flux)
                 for d in (self.judge, self.imager)} if landmarks is not None else self.marks
        recent = list(evaluations)[-MAX_READINGS:]
        bend = {p: 0.0 for p in self.planes}
        misfit = {p: 0.0 for p in self.planes}
        out: dict[str, float] = {}
        for _ in range(2):  # the centroids move a little with the bend: solve twice
            off_ph = self._centroid_offsets(recent, marks, bend)
            for p, lv in self.planes.items():
                s, logy = [], []
                for e in evaluations:
                    w = _stat(e, self.judge, f"fwhm_{p}_um")
                    if not (e.judgement.flux_ratio >= MIN_FLUX_RATIO and math.isfinite(w)
                            and w > 0):
                        continue
                    xe = np.array([e.positions[m] for m in lv.motors])
                    s.append(xe[2] - lv.design[2]
                             + lv.slope @ (xe[:2] + off_ph[p] - lv.design[:2]))
                    logy.append(2.0 * math.log(w / ref_fwhm_um[p]))
                bend[p], misfit[p] = self._bend_offset(lv, np.array(s), np.array(logy))
                out.update(zip(lv.motors[:2], map(float, off_ph[p]), strict=True))
                out[lv.motors[2]] = bend[p]
        return Solution(out, misfit)

    def _centroid_offsets(self, readings: Sequence[Evaluation],
                          marks: Mapping[str, tuple[float, float, float]],
                          bend: Mapping[str, float]) -> dict[str, np.ndarray]:
        """Pitch and height offsets of each plane (see :meth:`solve`).

        A plane whose beam the judge has not seen yet is censored, not unknown: the
        beam lies outside the judge's field of view there. Its solution is the most
        probable one with the judge's centroid just outside the field, on either
        side, that every reading which missed the beam agrees with.
        """
        diags = (self.judge, self.imager)
        col = {"x": 0, "y": 1}
        target, x = {}, {}
        for p, lv in self.planes.items():
            t = np.full((len(readings), 2), np.nan)
            for i, e in enumerate(readings):
                for k, d in enumerate(diags):
                    st = e.observation.reading(d).stats
                    c = (st.centroid_x_um, st.centroid_y_um)[col[p]]
                    if st.flux >= MIN_FLUX_RATIO * marks[d][2] and math.isfinite(c):
                        t[i, k] = c - marks[d][col[p]]
            target[p] = t
            x[p] = np.array([[e.positions[m] for m in lv.motors] for e in readings])
        blind = [p for p in self.planes if not np.isfinite(target[p][:, 0]).any()]
        if not blind:
            return self._gauss_newton(x, target, bend)[0]
        fov = getattr(self.twin.desc.element(self.judge), "fov_um", None)
        if not fov:
            return self._gauss_newton(x, target, bend)[0]
        # each blind plane: inside the field (the other plane hid the beam), or just
        # outside it on either side; at least one plane outside
        options: dict[str, list[tuple[float, np.ndarray]]] = {}
        tried = {0.0: self._gauss_newton(x, target, bend)}
        for sign in (1.0, -1.0):
            t = {p: v.copy() for p, v in target.items()}
            for p in blind:
                t[p][-1, 0] = sign * 0.6 * fov[col[p]]  # the latest reading
            tried[sign] = self._gauss_newton(x, t, bend)
        for p in blind:
            lv = self.planes[p]
            options[p] = []
            for sign, (off, cost) in tried.items():
                c_judge = (x[p][:, :2] + off[p] - lv.design[:2]) @ lv.jac[0]
                outside = bool(np.all(np.abs(c_judge) >= 0.45 * fov[col[p]]))
                if sign == 0.0 or outside:
                    options[p].append((cost[p], off[p]))
        out = dict(tried[0.0][0])
        best = math.inf
        for combo in itertools.product(*(range(len(options[p])) for p in blind)):
            if all(k == 0 for k in combo) and len(blind) == len(self.planes):
                continue  # no beam at all: some plane must be outside the field
            total = sum(options[p][k][0] for p, k in zip(blind, combo, strict=True))
            if total < best:
                best = total
                out.update({p: options[p][k][1] for p, k in zip(blind, combo, strict=True)})
        return out

    def _gauss_newton(self, x: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray],
                      bend: Mapping[str, float], iterations: int = 6
                      ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The offsets of each plane that move the twin's centroids by *target* (NaN:
        not seen) at the positions *x*, with the prior; and each plane's cost."""
        design = self.twin.desc.design_positions()
        sig = np.array(CENTROID_SIGMA_UM)
        n = len(next(iter(x.values())))
        off = {p: np.zeros(2) for p in self.planes}
        prior = {p: 0.25 * lv.half_width[:2] for p, lv in self.planes.items()}
        cost = {p: 0.0 for p in self.planes}
        for _ in range(iterations):
            # every reading at the estimate; the chord method steps with the design's
            # response (nudges of a few um would move rays across a mirror's end)
            rows = [{m: float(x[p][i, j] + (off[p][j] if j < 2 else bend[p]))
                     for p, lv in self.planes.items() for j, m in enumerate(lv.motors)}
                    for i in range(n)]
            obs = _trace(self.twin, design, rows, self.seed)
            done = True
            for p, lv in self.planes.items():
                c = np.stack([obs[d][f"centroid_{p}_um"] for d in (self.judge, self.imager)],
                             1) - lv.c_design
                # where the twin's beam leaves a field of view, its linear response
                lin = (x[p][:, :2] + off[p] - lv.design[:2]) @ lv.jac.T
                c = np.where(np.isfinite(c), c, lin)
                ok = np.isfinite(target[p])
                r = np.concatenate([((c - target[p]) / sig)[ok], off[p] / prior[p]])
                a = np.concatenate([np.broadcast_to(lv.jac / sig[:, None], (n, 2, 2))[ok],
                                    np.diag(1.0 / prior[p])])
                cost[p] = float(r @ r)
                step, *_ = np.linalg.lstsq(a, r, rcond=None)
                off[p] = off[p] - step
                done &= bool(np.all(np.abs(step) < 1e-3 * lv.half_width[:2]))
            if done:
                break
        return off, cost

    @staticmethod
    def _bend_offset(lv: PlaneLevers, s: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
        """The bend offset of largest posterior: the sizes' misfit (log, rms
        :data:`LOG_SIZE_SIGMA`) plus a Gaussian prior of a quarter of the half-width;
        and the rms misfit of log(W^2) there (0 without readings)."""
        if s.size == 0:
            return 0.0, 0.0
        hw = lv.half_width[2]
        b = np.linspace(-1.5 * hw, 1.5 * hw, 1201)
        pred = np.log(lv.size2(s[None, :] + b[:, None]))
        sq = np.sum((logy[None, :] - pred) ** 2, axis=1)
        k = int(np.argmin(sq / LOG_SIZE_SIGMA ** 2 + (b / (0.25 * hw)) ** 2))
        return float(b[k]), float(np.sqrt(sq[k] / s.size))

    def target(self, offsets: Mapping[str, float]) -> dict[str, float]:
        """Where the stage's motors align the beamline: ``design - offset``."""
        return {m: float(lv.design[j] - offsets[m])
                for lv in self.planes.values() for j, m in enumerate(lv.motors)}


def _trace(ft: Any, design: Mapping[str, float], rows: Sequence[Mapping[str, float]],
           seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The twin's noise-free readings with each row's motors moved from the design.

    A row beyond a motor's soft limits is traced at the limit: a solve that wanders
    (e.g. led by a diagnostic off its landmark) asks the model, never a motor, to go
    there, and the twin refuses positions beyond the limits (a one-click run at
    misalign 1.5 ended in that LimitError)."""
    desc = ft.desc

    def clipped(r: Mapping[str, float]) -> dict[str, float]:
        out = {}
        for m, v in r.items():
            spec = desc.motor(m)
            out[m] = min(max(v, spec.low), spec.high)
        return out

    with torch.no_grad():
        return ft.to_numpy(ft.observe(ft.positions([clipped({**design, **r}) for r in rows]),
                                      seed=seed))


class LeverCache:
    """The levers of the last stage asked for, per beamline, stage and search box: the
    ten trials of a benchmark share them, as do the rounds of one run."""

    def __init__(self) -> None:
        self._entry: tuple[BeamlineDescription, Any, FocusModel] | None = None

    def get(self, desc: BeamlineDescription, problem: AlignmentProblem, *,
            rays: int = 5000) -> FocusModel | None:
        """The levers of *problem*'s stage; None when it is not a pair of mirrors
        focusing both planes with an imaging diagnostic behind the judge."""
        st = problem.stage
        if not has_levers(desc, st):
            return None
        planes = focusing_planes(desc, st)
        half = {m: float(problem.hi[i] - problem.lo[i]) / 2.0 for i, m in enumerate(st.motors)}
        key = (st.motors, tuple(round(v, 9) for v in half.values()), rays)
        if self._entry is None or self._entry[0] is not desc or self._entry[1] != key:
            try:
                model = FocusModel.from_twin(desc, st, planes, half, rays=rays)
            except ConfigError:
                return None
            self._entry = (desc, key, model)
        return self._entry[2]


def _stat(e: Evaluation, diag: str, key: str) -> float:
    return float(getattr(e.observation.reading(diag).stats, key))


def _valley_bottom(grid: np.ndarray, y: np.ndarray) -> float:
    """Where *y* (sampled on the equally spaced *grid*) is least: the vertex of the
    parabola through the lowest sample and its neighbours."""
    k = int(np.clip(np.nanargmin(y), 1, len(grid) - 2))
    return vertex(grid[k - 1:k + 2], y[k - 1:k + 2], float(grid[1] - grid[0]))


@dataclass
class TwinFocus:
    """Align a KB pair with :class:`FocusModel`: solve, move, measure, repeat.

    Parameters
    ----------
    model : FocusModel
    rounds : int
        Solve-and-move rounds at most, each followed by a bend probe either side of
        the solved focus (three evaluations a round).
    stop_fom : float

    Attributes
    ----------
    trusted : bool
        False when a solve could not explain the sizes measured (misfit above
        :data:`MAX_MISFIT`), so that it stopped before moving there; also when no
        solved point brought the beam onto the judge (:data:`MIN_FLUX_RATIO` of the
        flux), or a solve returned to a point that had missed it.
    """

    model: FocusModel
    rounds: int = 4
    stop_fom: float = 0.95
    #: False once a solve's misfit exceeded :data:`MAX_MISFIT` or its point missed the
    #: judge (the levers were wrong)
    trusted: bool = field(default=True, init=False)

    def continue_from(self, problem: AlignmentProblem, start: Evaluation) -> Evaluation:
        """Solve and move from *start*; returns the best evaluation."""
        goal = problem.stage.goal
        ref = problem.objective.reference
        ref_w = {"x": ref.fwhm_x_um, "y": ref.fwhm_y_um}
        marks = problem.objective.landmarks
        landmarks = marks if self.model.judge in marks and self.model.imager in marks \
            else None
        seen = [start]
        best = start
        missed: list[np.ndarray] = []  # solved points whose reading missed the judge

        def take(u: np.ndarray) -> Evaluation:
            nonlocal best
            ev = problem.evaluate(np.clip(u, -1.0, 1.0))
            seen.append(ev)
            if ev.fom > best.fom:
                best = ev
            if ev.judgement.looks_aligned(self.stop_fom, goal):
                best = ev
                raise _Aligned
            return ev

        try:
            for _ in range(self.rounds):
                if problem.remaining <= 1:
                    break
                sol = self.model.solve(seen, ref_w, landmarks)
                if not sol.trusted:
                    self.trusted = False  # the sizes say these levers are not this beamline
                    break
                u = problem.to_u(self.model.target(sol.offsets))
                if any(np.allclose(u, m, atol=0.02) for m in missed):
                    # the solve returns to a point that left the beam beside the judge:
                    # the levers are not this beamline's (a diagnostic off its landmark)
                    self.trusted = False
                    break
                if take(u).judgement.flux_ratio < MIN_FLUX_RATIO:
                    missed.append(u)
                    continue  # still beside the judge: solve again, no sizes to straddle
                # a spot near its waist does not say on which side of it the focus
                # lies: measure either side, so that the next solve knows
                for sign in (1.0, -1.0):
                    if problem.remaining <= 2:
                        break
                    v = u.copy()
                    for lv in self.model.planes.values():
                        v[lv.index[2]] += sign * lv.straddle / lv.half_width[2]
                    take(v)
        except _Aligned:
            pass
        if missed and all(ev.judgement.flux_ratio < MIN_FLUX_RATIO for ev in seen[1:]):
            self.trusted = False  # no solve brought the beam onto the judge
        return best


class _Aligned(Exception):
    """The stage looks aligned."""
