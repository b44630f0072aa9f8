"""Run a scientist's scan request, on the twin in-process or over EPICS, with its data.

:func:`run_scan` is what ``beamtwin scan`` does:

1. check the request against the beamline: every motor and detector exists,
   every point of the trajectory lies inside the motors' envelopes (for an
   energy scan, every energy is reachable); a refusal names the field and the
   reason, and nothing moves (RELIABILITY.md R11);
2. run the plan (:mod:`controllers.scan_plans`, :mod:`controllers.adaptive`)
   under a RunEngine, every move through the safety layer
   (:class:`controllers.scan_devices.ScanBeamline`), with a progress bar;
3. write every point to a crash-safe NeXus file as it comes (``NXdata`` signal
   and axes set; a map's image as the default plot);
4. publish the online analysis when the run stops (:class:`ScanAnalysis`), fit,
   plot (PNG, or live with a display), and go to the result (``goto``),
   through the safety layer.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from controllers.adaptive import Box, CoarseToFine, GPMapper, adaptive_plan, reconstruct
from controllers.nexus import DataWriteError, NexusWriter
from controllers.plans import run_to_outcome
from controllers.scan_analysis import ScanAnalysis, has_display, plot_scan
from controllers.scan_devices import Axis, BeamDetector, EnergyAxis, ScanBeamline
from controllers.scan_request import MAP_PLANS, ScanRequest, ScanRequestError
from twin.cliutil import jsonable
from twin.description import BeamlineDescription
from twin.errors import ConfigError
from twin.protocol import MovableBeamline
from twin.specimen import Specimen

__all__ = ["run_scan", "movable_motors", "check_request"]


def movable_motors(request: ScanRequest, desc: BeamlineDescription) -> list[str]:
    """The motors *request* moves (the scan's allowlist); refuse unknown names."""
    if request.plan == "escan":
        return _energy_motors(desc)
    out = []
    for i, m in enumerate(request.motors):
        if m not in desc.motors:
            raise ScanRequestError(f"motors[{i}]", f"unknown motor {m!r}; known: "
                                                   f"{', '.join(desc.motors)}")
        out.append(m)
    return out


def _energy_motors(desc: BeamlineDescription) -> list[str]:
    from twin.description import CrystalMonochromator, Undulator

    mono = next((e for e in desc.elements if isinstance(e, CrystalMonochromator)), None)
    if mono is None:
        raise ScanRequestError("plan", "escan needs a crystal monochromator; this beamline "
                                       "has none")
    out = [f"{mono.name}.{a}" for a in ("bragg", "perp") if mono.motor(a) is not None]
    und = next((e for e in desc.elements if isinstance(e, Undulator)), None)
    if und is not None and und.motor("gap") is not None:
        out.append(f"{und.name}.gap")
    return out


def _detector(request: ScanRequest, desc: BeamlineDescription,
              specimen: Specimen | None, signals: Sequence[str] = ()) -> None:
    names = [d.name for d in desc.diagnostics] + [desc.detector.name]
    if request.detector in signals:
        return
    if request.detector == "xrf":
        if specimen is None:
            raise ScanRequestError("detector", "'xrf' is the signal of a mounted specimen; "
                                               "mount one (--specimen) or choose one of: "
                                               + ", ".join(names))
        if not any(d.kind == "sample" for d in desc.diagnostics):
            raise ScanRequestError("detector", "'xrf' needs a sample diagnostic (where the "
                                               "focus meets the specimen); this beamline has "
                                               "none")
        return
    if request.detector not in names:
        raise ScanRequestError("detector", f"unknown detector {request.detector!r}; one of: "
                                           f"{', '.join([*names, 'xrf'])}")
    kind = next((d.kind for d in desc.diagnostics if d.name == request.detector), "detector")
    if kind == "ion_chamber" and request.signal != "flux":
        raise ScanRequestError("signal", f"{request.detector} is an ion chamber: it measures "
                                         f"flux only, not {request.signal}")


def check_request(request: ScanRequest, beamline: ScanBeamline,
                  energy: EnergyAxis | None = None,
                  here: Mapping[str, float] | None = None) -> int:
    """Check every point of *request* on *beamline*; returns the number of points.

    *here* are the motors' readbacks (read from *beamline* if not given); relative
    plans start from them.

    Raises
    ------
    ScanRequestError
        Naming the field (``start[0]``, ``stop[1]``, ...) and the reason.
    """
    here = beamline.positions() if here is None else here
    if request.plan == "escan":
        if energy is None:  # pragma: no cover - run_scan always passes it
            raise ConfigError("an energy scan needs the energy axis")
        pts = request.points(here)[:, 0]
        ends_first = [0, len(pts) - 1, *range(1, len(pts) - 1)]  # name start/stop if they fail
        for i in ends_first:
            e = pts[i]
            try:
                energy.check_value(float(e))
            except (ValueError, KeyError) as exc:
                name = "start[0]" if i == 0 else "stop[0]" if i == len(pts) - 1 else "intervals"
                raise ScanRequestError(name, f"energy {e:.2f} eV is refused: {exc}") from None
        return len(pts)
    return request.check_trajectory(beamline.check, here)


class _NexusEvents:
    """A RunEngine subscriber: every primary event is a point of the NeXus file."""

    def __init__(self, writer: NexusWriter, axes: Mapping[str, str]) -> None:
        self.writer, self.axes = writer, dict(axes)  # field -> motor
        self._primary: set[str] = set()
        self.start: dict[str, Any] | None = None
        self.stop: dict[str, Any] | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.start = doc
            self.writer.set_metadata("run_uid", doc["uid"])
        elif name == "descriptor" and doc.get("name") == "primary":
            self._primary.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self._primary:
            values = {"point": float(doc["seq_num"])}
            values.update({k: float(v) for k, v in doc["data"].items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
            positions = {m: values[f] for f, m in self.axes.items() if f in values}
            self.writer.add_point(values, positions)
        elif name == "stop":
            self.stop = doc


def _progress_bar(total: int | None, label: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="pt", leave=False, file=sys.stderr)


def run_scan(request: ScanRequest, beamline: MovableBeamline, desc: BeamlineDescription, *,
             out_dir: str | Path = "beamtwin-scans", specimen: Specimen | None = None,
             progress: Callable[[str], None] | None = None, progress_bar: bool = True,
             live_plot: bool | None = None, wait: Callable[[float], None] | None = None,
             md: Mapping[str, Any] | None = None, signals: Sequence[str] = ()
             ) -> dict[str, Any]:
    """Run *request* on *beamline*; the ``scan --json`` document.

    Parameters
    ----------
    request : ScanRequest
    beamline : MovableBeamline
        The twin in-process or :class:`~controllers.epics_beamline.EpicsBeamline`
        (built with ``movable=movable_motors(request, desc)``).
    desc : BeamlineDescription
    out_dir : path
        Where the NeXus file and the plot go.
    specimen : Specimen, optional
        The simulated specimen under the focus (the ``xrf`` detector).
    live_plot : bool, optional
        Show bluesky's LivePlot (default: when a display exists).
    wait : callable, optional
        ``wait(seconds)`` that advances a simulated beamline's clock (timescan
        on the twin); default: real time.
    md : mapping, optional
        Extra start-document metadata (the RunEngine records it; so does the file).
    signals : sequence of str
        Scalar signals *beamline* measures itself (``EpicsBeamline(signals=...)``, e.g.
        ``xrf`` from a fluorescence detector); they take the place of a simulated specimen.
    """
    from bluesky import RunEngine

    say = progress or (lambda m: None)
    movable = movable_motors(request, desc)
    _detector(request, desc, specimen, signals)
    sbl = ScanBeamline(beamline, desc, movable=movable, exposure_s=request.exposure_s)
    det = BeamDetector(sbl, request.signal_field, specimen=specimen, signals=signals)
    energy = EnergyAxis(sbl) if request.plan == "escan" else None
    axes: list[Axis] = [energy] if energy is not None else [Axis(sbl, m) for m in request.motors]
    here = sbl.positions()
    npoints = check_request(request, sbl, energy, here)
    start_positions = {m: here[m] for m in movable}
    signal = request.signal_field
    axis_fields = [a.name for a in axes]
    is_map = request.plan in MAP_PLANS
    expected = {"gpscan": request.npoints, "c2fmap": None}.get(request.plan, npoints)

    out = Path(out_dir)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    writer = NexusWriter(out / f"{request.plan}-{stamp}.h5",
                         title=f"{request.plan} on {desc.name}", signal=signal,
                         axis=axis_fields[0] if axis_fields else "point",
                         description=jsonable(asdict(desc)), instrument_name=desc.name,
                         metadata={"plan": request.plan, "request": request.to_dict(),
                                   "seed": request.seed, "signal": signal,
                                   "specimen": jsonable(asdict(specimen)) if specimen else "",
                                   **{k: jsonable(v) for k, v in (md or {}).items()}})
    with writer:  # on an exception the file is closed as "fail" ("abort" for Ctrl-C)
        analysis = ScanAnalysis(signal, axis_fields, fit=request.fit, map2d=is_map)
        nexus_cb = _NexusEvents(writer, {a.name: a.motor for a in axes})
        bar = _progress_bar(expected, request.plan, progress_bar)
        # Ctrl-C handling needs the main thread; a scan run from another thread (a GUI, a
        # queue) is stopped through the RunEngine instead
        main = threading.current_thread() is threading.main_thread()
        RE = RunEngine({}, call_returns_result=True, context_managers=None if main else [])
        RE.subscribe(nexus_cb)
        RE.subscribe(analysis)
        if bar is not None:
            RE.subscribe(lambda n, d: bar.update(1) if n == "event" else None)
        if live_plot if live_plot is not None else has_display():
            with contextlib.suppress(Exception):  # a display that cannot plot: PNG only
                from bluesky.callbacks.mpl_plotting import LivePlot

                RE.subscribe(LivePlot(signal, axis_fields[0] if axis_fields else None))
        run_md = {"beamtwin_request": request.to_dict(), **dict(md or {})}
        engine: Any = None
        plan = _plan(request, det, axes, run_md, wait)
        if request.plan in ("gpscan", "c2fmap"):
            plan, engine = plan
        say(f"{request.plan}: {expected or 'adaptive'} points, signal {signal}")
        t0, bt0 = time.monotonic(), sbl.time_s
        try:
            exit_status, error = run_to_outcome(
                RE, plan, [det, *axes, _GroupErrors(sbl)], say)
        finally:
            if bar is not None:
                bar.close()
        run_s = time.monotonic() - t0
        result = analysis.result or analysis.compute()
        data = {k: analysis.columns[k] for k in [*axis_fields, signal]}
        moved_to = None
        if request.goto is not None and exit_status == "success":
            moved_to = _goto(request, sbl, axes, result["peak"], data, say)
        plot = _plot(out, stamp, request, desc, data, axis_fields, signal, result)
        status = {"success": "success", "abort": "abort"}.get(exit_status, "fail")
        nexus: Path | None = None
        try:  # a file that failed during the run raises its error again here, untouched
            if is_map and len(data[signal]) >= 4:
                _write_map(writer, request, data, axis_fields, signal)
            writer.set_metadata("analysis", jsonable(result))
            writer.set_metadata("moved_to", jsonable(moved_to) if moved_to else "")
            writer.set_metadata("refusals", sbl.refusals)
            writer.set_metadata("error", error or "")
            nexus = writer.close(status)
        except DataWriteError as exc:
            writer.abandon()
            say(f"the data file could not be written: {exc}")
        data_error = writer.error
    if data_error is not None:  # the scan's data are in this document, not in a file
        if exit_status == "success":
            exit_status = "fail"
        error = error or f"{type(data_error).__name__}: {data_error}"
    doc: dict[str, Any] = {
        "plan": request.plan, "motors": list(request.motors) if energy is None else ["energy"],
        "points": result["points"], "peak": result["peak"], "fit": result["fit"] or {},
        "nexus_file": str(nexus.resolve()) if nexus is not None else None,
        "data_error": str(data_error) if data_error is not None else None,
        "partial_file": (str(writer.partial) if nexus is None and writer.partial.exists()
                         else None),
        "moved_to": moved_to,
        "signal": signal, "detector": request.detector, "exit_status": exit_status,
        "error": error, "run_uid": (nexus_cb.start or {}).get("uid"),
        "analysis_latency_ms": result.get("latency_ms"), "plot": str(plot) if plot else None,
        "beamline_time_s": sbl.time_s - bt0, "wall_s": run_s,
        "start_positions": start_positions, "request": request.to_dict(),
        "refusals": sbl.refusals, "data": data}
    if engine is not None:
        doc["adaptive"] = _engine_doc(engine)
    return doc


def _plan(request: ScanRequest, det: BeamDetector, axes: list[Axis], md: dict[str, Any],
          wait: Callable[[float], None] | None) -> Any:
    from controllers import scan_plans as sp

    r, dets = request, [det]
    if r.plan == "count":
        return sp.count(dets, r.npoints, md=md)
    if r.plan == "timescan":
        return sp.timescan(dets, r.npoints, r.interval_s, wait=wait, md=md)
    if r.plan in ("ascan", "dscan"):
        return getattr(sp, r.plan)(dets, axes[0], r.start[0], r.stop[0], r.intervals[0], md=md)
    if r.plan in ("a2scan", "d2scan"):
        return getattr(sp, r.plan)(dets, axes[0], r.start[0], r.stop[0], axes[1], r.start[1],
                                   r.stop[1], r.intervals[0], md=md)
    if r.plan in ("anscan", "dnscan"):
        return getattr(sp, r.plan)(dets, list(zip(axes, r.start, r.stop, strict=True)),
                                   r.intervals[0], md=md)
    if r.plan in ("amesh", "dmesh"):
        return getattr(sp, r.plan)(dets, axes[0], r.start[0], r.stop[0], r.intervals[0],
                                   axes[1], r.start[1], r.stop[1], r.intervals[1],
                                   snake=r.snake, md=md)
    if r.plan == "escan":
        return sp.escan(dets, axes[0], r.start[0], r.stop[0], r.intervals[0], md=md)
    box = Box((min(r.start[0], r.stop[0]), min(r.start[1], r.stop[1])),
              (max(r.start[0], r.stop[0]), max(r.start[1], r.stop[1])))
    if r.plan == "gpscan":
        engine: Any = GPMapper(box, r.npoints, counting=r.detector == "xrf", seed=r.seed)
    else:
        engine = CoarseToFine(box, r.coarse_step, r.fine_step)
    meta = {"plan_name": r.plan, "beamtwin_plan": r.plan, **md}
    return adaptive_plan(dets, axes[0], axes[1], engine, request.signal_field, md=meta), engine


def _goto(request: ScanRequest, sbl: ScanBeamline, axes: list[Axis], peak: dict[str, Any],
          data: dict[str, list[float]], say: Callable[[str], None]) -> dict[str, float] | None:
    """Move to the analysis' *goto* result through the safety layer; the targets moved to."""
    key = request.goto
    value = peak.get(key)
    if value is None:
        raise ScanRequestError("goto", f"the scan gave no {key!r} to go to (flat or empty "
                                       f"signal); nothing moved")
    names = [a.name for a in axes]
    if request.plan in MAP_PLANS:
        target = {axes[0].motor: float(value[0]), axes[1].motor: float(value[1])}
    else:
        x = float(value[0]) if isinstance(value, list) else float(value)
        # every motor of a step scan at the same fraction of its trajectory as the first
        x0 = np.array(data[names[0]])
        t = np.interp(x, x0[np.argsort(x0)], np.linspace(0, 1, len(x0))[np.argsort(x0)]) \
            if len(x0) > 1 else 0.0
        target = {}
        for a in axes:
            col = np.array(data[a.name])
            target[a.motor] = x if a is axes[0] else float(col[0] + t * (col[-1] - col[0]))
    if isinstance(axes[0], EnergyAxis):
        e = target.pop("energy")
        moves = axes[0].targets(e)
        sbl.check(moves)
        say(f"goto {key}: energy {e:.2f} eV")
        sbl.move(moves)
        return {"energy": e}
    sbl.check(target)
    say(f"goto {key}: " + ", ".join(f"{m} = {v:.6g}" for m, v in target.items()))
    sbl.move(target)
    return target


def _plot(out: Path, stamp: str, request: ScanRequest, desc: BeamlineDescription,
          data: dict[str, list[float]], axis_fields: list[str], signal: str,
          result: dict[str, Any]) -> Path | None:
    y = np.array(data[signal])
    if len(y) == 0:
        return None
    title = f"{request.plan} on {desc.name}: {signal}"
    try:
        if request.plan in MAP_PLANS:
            return plot_scan(out / f"{request.plan}-{stamp}.png", x=np.array(data[axis_fields[0]]),
                             y=y, x_label=axis_fields[0], y_label=signal, title=title,
                             x2=np.array(data[axis_fields[1]]), x2_label=axis_fields[1])
        x = np.array(data[axis_fields[0]]) if axis_fields else np.arange(1, len(y) + 1)
        return plot_scan(out / f"{request.plan}-{stamp}.png", x=x, y=y,
                         x_label=axis_fields[0] if axis_fields else "point", y_label=signal,
                         title=title, stats=result["peak"], fit=result["fit"])
    except (OSError, ValueError) as exc:  # a plot must not lose the data
        print(f"scan: the plot could not be written: {exc}", file=sys.stderr)
        return None


def _write_map(writer: NexusWriter, request: ScanRequest, data: dict[str, list[float]],
               axis_fields: list[str], signal: str) -> None:
    """The map as a 2-D NXdata (the file's default plot): the measured grid for a mesh,
    the linear interpolation of the points for the adaptive routines."""
    x = np.array(data[axis_fields[0]])
    y = np.array(data[axis_fields[1]])
    z = np.array(data[signal])
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[good], y[good], z[good]
    if len(z) < 4:
        return
    if request.plan in ("amesh", "dmesh"):
        n0, n1 = request.intervals[0] + 1, request.intervals[1] + 1
        ax0 = np.linspace(x.min(), x.max(), n0)
        ax1 = np.linspace(y.min(), y.max(), n1)
        interpolated = False
    else:
        step = request.fine_step if request.plan == "c2fmap" else None
        n = 161 if step is None else int(min(401, np.ptp(x) / step + 1))
        ax0 = np.linspace(x.min(), x.max(), n)
        ax1 = np.linspace(y.min(), y.max(), n)
        interpolated = True
    g0, g1 = np.meshgrid(ax0, ax1, indexing="ij")
    try:
        img = reconstruct(np.c_[x, y], z, np.c_[g0.ravel(), g1.ravel()]).reshape(g0.shape)
    except (ValueError, RuntimeError):  # degenerate points (a line): no map
        return
    writer.add_map("map", img, axes=(axis_fields[0], ax0, axis_fields[1], ax1), signal=signal,
                   title=("linear interpolation of the measured points" if interpolated
                          else "measured grid"), default=True)


def _engine_doc(engine: Any) -> dict[str, Any]:
    if isinstance(engine, GPMapper):
        return {"kind": "gp", "points": len(engine.y), "batch": engine.batch,
                "initial": engine.initial, "min_distance": engine.min_distance,
                "gp_fit_s": round(engine.fit_s, 3)}
    return {"kind": "coarse_to_fine", "coarse_points": engine.coarse_points,
            "fine_points": len(engine.y) - engine.coarse_points,
            "full_fine_points": engine.fine_grid_points(),
            "roi_pixels": int(engine.roi.sum()) if engine.roi is not None else 0,
            "threshold_sigmas": engine.threshold, "rel_threshold": engine.rel_threshold}


class _GroupErrors:
    """The errors of the scan's group mover, which the plan creates only when it first
    moves several axes at once: read when the run has ended, not before it starts (a
    lost IOC was reported as bluesky's ``FailedStatus`` instead of its own error)."""

    def __init__(self, sbl: ScanBeamline) -> None:
        self._sbl = sbl

    @property
    def errors(self) -> list[BaseException]:
        mover = getattr(self._sbl, "_group_mover", None)
        return list(getattr(mover, "errors", []))
