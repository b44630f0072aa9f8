"""The beam stabiliser over EPICS: monitor the gaps, correct through the safety layer.

:class:`EpicsStabilizer` runs one corrector of a fitted
:class:`~agents.stabilize.stabilizer.Stabilizer` at a fixed rate against the
beamline served under a prefix (beamtwin's simulated IOC or a real one):

* each period it reads, from Channel Access monitors (no round trip), the
  undulator gap readback, the neighbouring device's gap, the sample
  diagnostic (centroid and rms size, with its ``UniqueId_RBV`` to tell a new
  reading) and the XBPM before the KB, all as changes since the loop started;
* the corrector turns them into knob settings (the ring's orbit bump and
  coupling knob, M1's and the KB's pitches), and every setting passes the
  safety layer (:class:`~agents.safety.SafeBeamline`: allowlist, finite
  values, the envelope of aligned position ± the knob's limit within the soft
  limits, a step cap per period) before a setpoint is written, without
  waiting for the move (the next period comes first). A knob approaches a
  setting further than its step cap over several periods. A refused
  correction moves nothing; the loop holds the knobs, counts the refusal and
  goes on;
* ``{P}stab:Enable`` switches it: while ``Off`` it holds every knob and only
  watches; each second it publishes the residuals and the loop rate under
  ``{P}stab:``.

On return (duration over, Ctrl-C or an error) the knobs stay where they are:
the beam is held, as an operator expects when a feedback is switched off.
Units: um, urad, %, mm, s.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.safety import SafeBeamline, SafetyConfig, SafetyError
from agents.stabilize.correctors import Corrector
from agents.stabilize.plant import KNOBS, Reading, StabilizeConfig
from controllers.ca import Channels
from controllers.pvnames import PvMap
from twin.errors import BeamtwinError, ConfigError, UnknownNameError
from twin.observation import Observation
from twin.protocol import MotorInfo

__all__ = ["LoopSettings", "EpicsStabilizer", "SetpointBeamline"]


@dataclass(frozen=True)
class LoopSettings:
    """How the EPICS loop runs.

    Parameters
    ----------
    rate_hz : float
        Loop rate, Hz.
    step_cap : float
        Largest change of a knob per period, as a fraction of its envelope's width.
    status_period_s : float
        How often the ``{P}stab:`` status PVs are published, s.
    connect_timeout_s : float
    """

    rate_hz: float = 100.0
    step_cap: float = 0.05
    status_period_s: float = 1.0
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for k in ("rate_hz", "step_cap", "status_period_s", "connect_timeout_s"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{k} must be a finite number > 0, got {v!r}")
        if self.rate_hz > 1000:
            raise ConfigError(f"rate_hz must be <= 1000, got {self.rate_hz}")


class SetpointBeamline:
    """The knobs as a movable beamline whose moves write setpoints without waiting.

    :meth:`positions` gives the last setpoints written (what a step cap must
    compare with at 100 Hz), :meth:`move` writes ``VAL`` of each knob whose
    setpoint changes by at least its resolution. It acquires nothing.
    """

    def __init__(self, ca: Channels, pvmap: PvMap, knobs: tuple[str, ...]) -> None:
        self.ca, self.map, self.knobs = ca, pvmap, knobs
        self._t0 = time.monotonic()
        self._info: dict[str, MotorInfo] = {}
        for k in knobs:
            spec = pvmap.desc.motor(k)
            f = lambda fld, k=k: ca.get_float(pvmap.motor_field(k, fld), fresh=True)  # noqa: E731
            self._info[k] = MotorInfo(k, spec.units, f("LLM"), f("HLM"), f("MRES"), f("VELO"),
                                      spec.description)
        self.setpoints = {k: ca.get_float(pvmap.motor_field(k, "VAL"), fresh=True) for k in knobs}
        self.writes = 0

    def motors(self) -> dict[str, MotorInfo]:
        """The knobs with their soft limits."""
        return dict(self._info)

    def positions(self) -> dict[str, float]:
        """The last setpoints written, motor units."""
        return dict(self.setpoints)

    @property
    def time_s(self) -> float:
        """Wall time since the loop connected, s."""
        return time.monotonic() - self._t0

    def move(self, targets: Mapping[str, float]) -> None:
        """Write the setpoints that changed by a motor step or more (no wait)."""
        for k, v in targets.items():
            if k not in self.setpoints:
                raise UnknownNameError(f"{k!r} is not a knob of this loop: {', '.join(self.knobs)}")
            if abs(v - self.setpoints[k]) >= self._info[k].resolution:
                self.ca.put(self.map.motor_field(k, "VAL"), float(v))
                self.setpoints[k] = float(v)
                self.writes += 1

    def acquire(self, exposure_s: float | None = None) -> Observation:  # pragma: no cover
        """Not available: the loop reads monitors."""
        raise ConfigError("the stabiliser's knob beamline does not acquire")


class EpicsStabilizer:
    """One corrector in closed loop with the beamline under *pvmap*.

    Parameters
    ----------
    pvmap : PvMap
    corrector : Corrector
    config : StabilizeConfig
        The knob envelopes (and the gap speed's scale) the corrector was built for.
    settings : LoopSettings, optional
    """

    def __init__(self, pvmap: PvMap, corrector: Corrector, config: StabilizeConfig,
                 settings: LoopSettings | None = None) -> None:
        self.map, self.corrector, self.config = pvmap, corrector, config
        self.settings = settings if settings is not None else LoopSettings()
        desc = pvmap.desc
        for k in KNOBS:
            desc.motor(k)  # UnknownNameError naming the knob the beamline lacks
        self.gap_motor = next(m for m in desc.motors if m.endswith(".gap"))
        stab, machine = pvmap.device("stab"), pvmap.device("machine")
        if stab is None or machine is None:
            raise ConfigError("the stabiliser needs the stab: and machine: devices")
        sample = next(e.name for e in desc.elements if e.kind == "sample")
        bpm = [e.name for e in desc.elements if e.kind == "bpm"][-1]
        sb, bb = pvmap.device(sample), pvmap.device(bpm)
        self.pv = {
            "gap": pvmap.motor_field(self.gap_motor, "RBV"),
            "neighbour": f"{machine}NeighbourGap_RBV",
            "sx": f"{sb}PosX_RBV", "sy": f"{sb}PosY_RBV", "wx": f"{sb}SigmaX_RBV",
            "wy": f"{sb}SigmaY_RBV", "uid": f"{sb}UniqueId_RBV",
            "bx": f"{bb}PosX_RBV", "by": f"{bb}PosY_RBV", "enable": f"{stab}Enable"}
        #: the loop's one status input: a JSON report the IOC checks and publishes
        #: as the read-only stab:*_RBV PVs
        self.report_pv = f"{stab}Report"
        allow = {pvmap.motor_field(k, "VAL") for k in KNOBS} | {self.report_pv}
        self.ca = Channels(allow, timeout=self.settings.connect_timeout_s)
        self.ca.connect([*self.pv.values(), self.report_pv,
                         *(pvmap.motor_field(k, f) for k in KNOBS
                           for f in ("VAL", "RBV", "LLM", "HLM", "MRES", "VELO"))],
                        self.settings.connect_timeout_s)
        self.knobs = SetpointBeamline(self.ca, pvmap, KNOBS)
        self.aligned = self.knobs.positions()
        envelope = {k: (self.aligned[k] - config.knob_limits[k],
                        self.aligned[k] + config.knob_limits[k]) for k in KNOBS}
        self.safe = SafeBeamline(self.knobs, envelope,
                                 SafetyConfig(step_cap=self.settings.step_cap,
                                              max_moves=2**62, max_time_s=1e12))
        self.refused = 0
        self.periods = 0

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict[str, float]:
        return {k: self.ca.get_float(v) for k, v in self.pv.items() if k != "enable"}

    def _baseline(self, timeout_s: float) -> dict[str, float]:
        """The first new sample reading after the loop starts (the aligned beam)."""
        uid0 = self.ca.get_float(self.pv["uid"])
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            v = self._read()
            if v["uid"] != uid0 and all(math.isfinite(v[k]) for k in ("sx", "sy", "wx", "wy")):
                return v
            time.sleep(0.005)
        raise ConfigError(f"the sample diagnostic {self.pv['uid']} published no new reading "
                          f"within {timeout_s:g} s; is the IOC's twin:DiagRate > 0?")

    # ------------------------------------------------------------------ loop
    def run(self, duration_s: float | None = None, *, stop: threading.Event | None = None,
            on_status: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the loop for *duration_s* (None: until *stop* is set); returns a summary.

        The summary has ``periods``, ``rate_hz`` (achieved), ``period_ms`` (median
        and 99th percentile), ``compute_us`` (the corrector, median and p99),
        ``refused``, ``writes``, the residuals and the final knob changes.
        """
        if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
            raise ConfigError(f"duration must be a finite number > 0 s, got {duration_s!r}")
        stop = stop or threading.Event()
        dt = 1.0 / self.settings.rate_hz
        base = self._baseline(max(5.0, 10 * self.settings.status_period_s))
        self.corrector.reset()
        self._report({"running": 1, "corrector": self.corrector.name[:39], "periods": 0,
                      "refused": 0})
        prev_gap, prev_nb = base["gap"], base["neighbour"]
        g_dir = n_dir = 1
        last_uid = base["uid"]
        t_start = time.monotonic()
        next_t = t_start
        periods_ms: list[float] = []
        compute: list[float] = []
        window: list[np.ndarray] = []
        last_status, last_t = t_start, t_start
        message = ""
        try:
            while not stop.is_set():
                now = time.monotonic()
                if duration_s is not None and now - t_start >= duration_s:
                    break
                v = self._read()
                gap_rate = (v["gap"] - prev_gap) / dt
                nb_rate = (v["neighbour"] - prev_nb) / dt
                if v["gap"] != prev_gap:
                    g_dir = 1 if v["gap"] > prev_gap else -1
                if v["neighbour"] != prev_nb:
                    n_dir = 1 if v["neighbour"] > prev_nb else -1
                prev_gap, prev_nb = v["gap"], v["neighbour"]
                fresh = v["uid"] != last_uid
                last_uid = v["uid"]
                measured = np.array([v["sx"] - base["sx"], v["sy"] - base["sy"],
                                     100.0 * (v["wx"] / base["wx"] - 1.0),
                                     100.0 * (v["wy"] / base["wy"] - 1.0),
                                     v["bx"] - base["bx"], v["by"] - base["by"]])
                if fresh:
                    window.append(measured[:4])
                here = self.knobs.positions()
                knobs_now = np.array([here[k] - self.aligned[k] for k in KNOBS])
                reading = Reading(time_s=now - t_start, gap_mm=v["gap"], gap_rate_mm_s=gap_rate,
                                  gap_direction=g_dir, neighbour_mm=v["neighbour"],
                                  neighbour_rate_mm_s=nb_rate, neighbour_direction=n_dir,
                                  measured=measured, fresh=fresh, knobs=knobs_now)
                enabled = self.ca.get(self.pv["enable"], as_string=True) == "On"
                if enabled:
                    t0 = time.perf_counter()
                    out = np.asarray(self.corrector.act(reading), dtype=float)
                    compute.append(time.perf_counter() - t0)
                    message = self._apply(out) or message
                self.periods += 1
                if now - last_status >= self.settings.status_period_s:
                    rate = self.periods / (now - t_start) if now > t_start else 0.0
                    self._publish(rate, window, message)
                    del self.ca.puts[:-1000]
                    window, last_status = [], now
                next_t += dt
                sleep = next_t - time.monotonic()
                if sleep > 0:
                    time.sleep(sleep)
                else:
                    next_t = time.monotonic()  # late: do not try to catch up
                t = time.monotonic()
                periods_ms.append((t - last_t) * 1e3)
                last_t = t
        finally:
            elapsed = time.monotonic() - t_start
            try:  # the last word: counts, residuals and the last refusal
                self._publish(self.periods / elapsed if elapsed > 0 else 0.0, window, message,
                              running=0)
            except BeamtwinError:  # pragma: no cover - the IOC went away
                pass
        here = self.knobs.positions()
        final = self._read()
        return {
            "corrector": self.corrector.name, "periods": self.periods,
            "duration_s": elapsed, "rate_hz": self.periods / elapsed if elapsed > 0 else 0.0,
            "target_rate_hz": self.settings.rate_hz,
            "period_ms": _stats(periods_ms), "compute_us": _stats([c * 1e6 for c in compute]),
            "refused": self.refused, "writes": self.knobs.writes, "last_message": message,
            "knob_changes": {k: here[k] - self.aligned[k] for k in KNOBS},
            "final_change": {"sample_x_um": final["sx"] - base["sx"],
                             "sample_y_um": final["sy"] - base["sy"],
                             "size_y_pct": 100.0 * (final["wy"] / base["wy"] - 1.0)},
            "refusals": self.safe.refusals[-10:]}

    def _apply(self, out: np.ndarray) -> str | None:
        """Knob changes *out* through the safety layer; a refusal moves nothing."""
        if out.shape != (len(KNOBS),):
            self.refused += 1
            return f"corrector returned {out.shape} values, expected {len(KNOBS)}"
        here = self.knobs.positions()
        targets = {}
        for k, x in zip(KNOBS, out, strict=True):
            target = self.aligned[k] + float(x)
            if math.isfinite(target):  # a knob approaches its setting at the step cap
                cap = 0.999 * self.safe.step_cap(k)
                target = min(max(target, here[k] - cap), here[k] + cap)
            targets[k] = target
        try:
            self.safe.move(targets)
        except (SafetyError, BeamtwinError) as exc:
            self.refused += 1
            return str(exc)[:39]  # a string PV holds 40 characters
        return None

    def _publish(self, rate: float, window: list[np.ndarray], message: str, *,
                 running: int = 1) -> None:
        w = np.asarray(window) if window else np.full((1, 4), math.nan)
        rms = np.sqrt(np.nanmean(w ** 2, axis=0)) if window else w[0]
        doc: dict[str, Any] = {"running": running, "periods": int(self.periods),
                               "refused": int(self.refused)}
        for key, value in (("rate", rate), ("res_x", rms[0]), ("res_y", rms[1]),
                           ("res_size", rms[3])):
            if math.isfinite(value):
                doc[key] = float(value)
        if message:
            doc["message"] = message.encode()[:39].decode(errors="ignore")
        self._report(doc)

    def _report(self, doc: dict[str, Any]) -> None:
        """Write one status report to ``{P}stab:Report`` (the IOC publishes it)."""
        self.ca.put(self.report_pv, json.dumps(doc, separators=(",", ":")))

    def close(self) -> None:
        """Disconnect."""
        self.ca.close()


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p99": None}
    a = np.asarray(values)
    return {"median": float(np.median(a)), "p99": float(np.quantile(a, 0.99))}
