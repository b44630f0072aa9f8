"""Alignment as a bluesky plan: agents decide, the RunEngine moves and measures.

An agent is a blocking loop (``move``, ``acquire``, think, repeat); a bluesky
plan is a generator the RunEngine drives. :class:`PlanBridge` joins them. The
agents run in a worker thread against :class:`BridgedBeamline`, a
:class:`~twin.protocol.MovableBeamline` whose ``move`` and ``acquire`` become
requests. :func:`agent_plan` turns each request into messages:

* a move -> ``checkpoint``, ``set`` on :class:`BeamlineMover` (which moves through
  :class:`~controllers.epics_beamline.EpicsBeamline`), ``wait``;
* an acquisition -> ``trigger_and_read`` of :class:`BeamlineReader`: one event
  per evaluation in the ``primary`` stream, with the figure of merit, every
  diagnostic and every motor's readback.

So the RunEngine owns the run: pause and resume at checkpoints, abort and
Ctrl-C (it stops every axis it moved), gapless event numbers, and documents for
the NeXus writer (:class:`NexusCallback`) and the report.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import Msg
from ophyd.status import Status

from agents.objective import Objective
from controllers.epics_beamline import EpicsBeamline
from controllers.nexus import NexusWriter
from twin.errors import BeamtwinError
from twin.observation import Observation
from twin.protocol import MotorInfo

__all__ = ["RunAborted", "in_thread", "PlanBridge", "BridgedBeamline", "BeamlineMover",
           "BeamlineReader", "agent_plan", "run_to_outcome", "NexusCallback"]


class RunAborted(BeamtwinError, RuntimeError):
    """The run ended (abort, Ctrl-C, an error in the plan) while an agent waited on it."""


def _stats_keys(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}_{k}" for k in ("flux", "x_um", "y_um", "fwhm_x_um", "fwhm_y_um"))


def in_thread(obj: Any, fn: Callable[[], object], errors: list[BaseException],
               what: str) -> Status:
    """Run *fn* in a thread; a Status that finishes with it (an error is kept in *errors*)."""
    status = Status(obj=obj)

    def work() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the RunEngine
            errors.append(exc)
            status.set_exception(exc)
        else:
            status.set_finished()

    threading.Thread(target=work, name=f"beamtwin-{what}", daemon=True).start()
    return status


class BeamlineMover:
    """A bluesky ``Movable`` for a whole set of motor targets at once.

    ``set({motor: target})`` moves through :meth:`EpicsBeamline.move` in a thread
    and returns a Status; ``stop()`` writes STOP to every motor moved in the run.
    """

    def __init__(self, beamline: EpicsBeamline, name: str = "beamline_motors") -> None:
        self.beamline, self.name, self.parent = beamline, name, None
        self.errors: list[BaseException] = []

    def set(self, targets: Mapping[str, float]) -> Status:  # noqa: D102
        return in_thread(self, lambda: self.beamline.move(targets), self.errors, "move")

    def stop(self, *, success: bool = False) -> None:  # noqa: D102
        self.beamline.stop()


class BeamlineReader:
    """A bluesky ``Triggerable``/``Readable``: one acquisition of the whole beamline.

    ``trigger()`` acquires through :meth:`EpicsBeamline.acquire` (which waits for
    the beam); ``read()`` gives the figure of merit under the current stage's
    objective, every diagnostic's statistics and every motor's readback.
    """

    def __init__(self, beamline: EpicsBeamline, name: str = "beam") -> None:
        self.beamline, self.name, self.parent = beamline, name, None
        self.objective: Objective | None = None
        self.stage_index = 0
        self.last: Observation | None = None
        self.errors: list[BaseException] = []
        self._diags = [d for d in beamline.map.diagnostic_names
                       if beamline.map.device(d) is not None]

    def trigger(self) -> Status:  # noqa: D102
        def acquire() -> None:
            self.last = self.beamline.acquire()

        return in_thread(self, acquire, self.errors, "acquire")

    def _values(self) -> dict[str, float]:
        obs = self.last
        out: dict[str, float] = {"stage": float(self.stage_index)}
        j = self.objective.judge(obs) if (self.objective is not None and obs is not None) \
            else None
        out["fom"] = j.fom if j is not None else math.nan
        out["flux_ratio"] = j.flux_ratio if j is not None else math.nan
        out["fwhm_ratio"] = j.fwhm_ratio if j is not None else math.nan
        for d in self._diags:
            s = obs.diagnostics[d].stats if obs is not None and d in obs.diagnostics else None
            vals = (s.flux, s.centroid_x_um, s.centroid_y_um, s.fwhm_x_um, s.fwhm_y_um) \
                if s is not None else (math.nan,) * 5
            out.update(dict(zip(_stats_keys(d), vals, strict=True)))
        out["frame"] = float(obs.meta.get("frame", math.nan)) if obs is not None else math.nan
        if obs is not None:
            for m, v in obs.positions.items():
                out[f"pos_{m.replace('.', '_')}"] = v
        return out

    def read(self) -> dict[str, dict[str, Any]]:  # noqa: D102
        now = time.time()
        return {f"{self.name}_{k}": {"value": v, "timestamp": now}
                for k, v in self._values().items()}

    def describe(self) -> dict[str, dict[str, Any]]:  # noqa: D102
        keys = ["stage", "fom", "flux_ratio", "fwhm_ratio"]
        for d in self._diags:
            keys += list(_stats_keys(d))
        keys.append("frame")
        keys += [f"pos_{m.replace('.', '_')}" for m in self.beamline.desc.motors]
        return {f"{self.name}_{k}": {"source": "EPICS", "dtype": "number", "shape": []}
                for k in keys}

    def read_configuration(self) -> dict[str, Any]:  # noqa: D102
        return {}

    def describe_configuration(self) -> dict[str, Any]:  # noqa: D102
        return {}


@dataclass
class _Request:
    kind: str
    payload: Any = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class PlanBridge:
    """The queue between agents (a worker thread) and the plan (the RunEngine)."""

    def __init__(self) -> None:
        self.requests: queue.Queue[_Request] = queue.Queue()
        self.closed: str | None = None
        self._lock = threading.Lock()
        self._pending: list[_Request] = []

    def call(self, kind: str, payload: Any = None) -> Any:
        """From the agent thread: ask the plan, wait for its answer."""
        req = _Request(kind, payload)
        with self._lock:
            if self.closed is not None:
                raise RunAborted(f"the run has ended ({self.closed})")
            self._pending.append(req)
            self.requests.put(req)
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def reply(self, req: _Request, result: Any = None,
              error: BaseException | None = None) -> None:
        """From the plan: answer *req*."""
        with self._lock:
            if req in self._pending:
                self._pending.remove(req)
        req.result, req.error = result, error
        req.done.set()

    def close(self, reason: str) -> None:
        """End the bridge: every waiting and later request raises :class:`RunAborted`."""
        with self._lock:
            if self.closed is None:
                self.closed = reason
            pending, self._pending = self._pending, []
        for req in pending:
            req.error = RunAborted(f"the run has ended ({reason})")
            req.done.set()


class BridgedBeamline:
    """The :class:`~twin.protocol.MovableBeamline` agents see inside the plan.

    Reads go straight to the EPICS beamline; moves and acquisitions go through
    the plan, so that the RunEngine performs and records them.
    """

    def __init__(self, beamline: EpicsBeamline, bridge: PlanBridge) -> None:
        self.inner, self.bridge = beamline, bridge
        #: the beamline description (agents that know the optics, e.g. which mirror
        #: focuses which plane, read it here as they do on the twin)
        self.desc = beamline.desc

    def motors(self) -> dict[str, MotorInfo]:  # noqa: D102
        return self.inner.motors()

    def positions(self) -> dict[str, float]:  # noqa: D102
        return self.inner.positions()

    @property
    def time_s(self) -> float:  # noqa: D102
        return self.inner.time_s

    def move(self, targets: Mapping[str, float]) -> None:  # noqa: D102
        self.bridge.call("move", dict(targets))

    def acquire(self, exposure_s: float | None = None) -> Observation:  # noqa: D102
        return self.bridge.call("acquire", exposure_s)


def agent_plan(bridge: PlanBridge, mover: BeamlineMover, reader: BeamlineReader,
               work: Callable[[], Any], *, md: Mapping[str, Any] | None = None,
               poll_s: float = 0.002) -> Generator[Msg, Any, Any]:
    """A plan that runs *work* (the agents, in a worker thread) as one bluesky run.

    Returns what *work* returns; re-raises what it raised.
    """
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the plan
            outcome["error"] = exc
        finally:
            bridge.close("the agents finished")

    @bpp.run_decorator(md=dict(md or {}))
    def inner() -> Generator[Msg, Any, Any]:
        thread = threading.Thread(target=worker, name="beamtwin-agents", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    req = bridge.requests.get_nowait()
                except queue.Empty:
                    if not thread.is_alive() and bridge.requests.empty():
                        break
                    yield Msg("sleep", None, poll_s)
                    continue
                try:
                    if req.kind == "move":
                        yield Msg("checkpoint")
                        yield Msg("set", mover, req.payload, group="beamtwin-move")
                        yield Msg("wait", None, group="beamtwin-move")
                        bridge.reply(req)
                    elif req.kind == "acquire":
                        yield from bps.trigger_and_read([reader], name="primary")
                        bridge.reply(req, reader.last)
                    else:  # pragma: no cover - BridgedBeamline sends only these
                        bridge.reply(req, error=RunAborted(f"unknown request {req.kind!r}"))
                except BaseException as exc:
                    bridge.reply(req, error=_cause(exc, mover, reader))
                    raise
        finally:
            bridge.close("the plan ended")
            thread.join(timeout=30)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    return (yield from inner())


def _cause(exc: BaseException, mover: BeamlineMover, reader: BeamlineReader) -> BaseException:
    """What the agent should see when the plan stopped on *exc*.

    A failed move or acquisition gives the original error (a refusal, a timeout);
    an abort, a stop or the plan's closing gives :class:`RunAborted`.
    """
    from bluesky.utils import FailedStatus

    if isinstance(exc, FailedStatus):
        errors = mover.errors + reader.errors
        if errors:
            return errors[-1]
    if isinstance(exc, Exception) and not isinstance(exc, FailedStatus) and \
            type(exc).__module__.split(".")[0] != "bluesky":
        return exc
    return RunAborted(f"the run was ended by the RunEngine ({type(exc).__name__})")


class OneLineErrors(logging.Filter):
    """The RunEngine's "Run aborted" and "Failed to stop" as one line each.

    The RunEngine logs the exception that ended a run with its full traceback.
    beamtwin reports that exception as the run's typed outcome (the JSON's
    ``error``, the exit status), so the log keeps its type and message only.
    """

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info, record.exc_text = None, None
        return True


def run_to_outcome(RE: Any, plan: Any, devices: Sequence[Any],
                   say: Callable[[str], None]) -> tuple[str, str | None]:
    """Run *plan* on *RE*; ``(exit_status, error)`` instead of an exception.

    Ctrl-C pauses the RunEngine, which is then aborted (every axis it moved gets
    STOP): ``("abort", ...)``. An exception in the plan gives ``("fail", ...)``,
    naming the last error a device recorded (a refusal, a timeout) rather than
    the RunEngine's wrapper. The RunEngine's own messages go to stderr, so that
    stdout holds only a command's JSON document.
    """
    from bluesky.utils import RunEngineInterrupted

    quiet = contextlib.redirect_stdout(sys.stderr)
    quiet.__enter__()
    one_line = OneLineErrors()
    bluesky_log = logging.getLogger("bluesky")
    bluesky_log.addFilter(one_line)
    try:
        res = RE(plan)
        if res.exit_status != "success":
            return res.exit_status, res.reason or res.exit_status
        return "success", None
    except RunEngineInterrupted:
        say("interrupted: aborting the run; every moved axis gets STOP")
        with contextlib.suppress(Exception):  # the abort's own result is what we report
            RE.abort(reason="Ctrl-C")
        return "abort", "interrupted (Ctrl-C)"
    except BaseException as exc:  # noqa: BLE001 - reported as the run's outcome
        if isinstance(exc, KeyboardInterrupt):
            return "abort", "interrupted (Ctrl-C)"
        errors = [e for d in devices if d is not None for e in getattr(d, "errors", [])]
        cause = errors[-1] if errors else exc
        return "fail", f"{type(cause).__name__}: {cause}"
    finally:
        bluesky_log.removeFilter(one_line)
        quiet.__exit__(None, None, None)


class NexusCallback:
    """A RunEngine subscriber that writes every event of the primary stream to a NeXus file.

    Keys ``{reader}_pos_*`` become motor readbacks in the instrument, the other
    numbers columns of the NXdata; the event's ``seq_num`` is the ``point`` axis.
    """

    def __init__(self, writer: NexusWriter, motors: list[str],
                 reader_name: str = "beam") -> None:
        self.writer = writer
        self._pos = {f"{reader_name}_pos_{m.replace('.', '_')}": m for m in motors}
        self._strip = f"{reader_name}_"
        self._streams: dict[str, str] = {}
        self.start: dict[str, Any] | None = None
        self.stop: dict[str, Any] | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:  # noqa: D102
        if name == "start":
            self.start = doc
            self.writer.set_metadata("run_uid", doc["uid"])
        elif name == "descriptor":
            self._streams[doc["uid"]] = doc.get("name", "primary")
        elif name == "event" and self._streams.get(doc["descriptor"]) == "primary":
            values: dict[str, float] = {"point": float(doc["seq_num"])}
            positions: dict[str, float] = {}
            for k, v in doc["data"].items():
                if k in self._pos:
                    positions[self._pos[k]] = float(v)
                elif k.startswith(self._strip):
                    values[k[len(self._strip):]] = float(v)
            self.writer.add_point(values, positions)
        elif name == "stop":
            self.stop = doc
            self.writer.set_metadata("exit_status", doc.get("exit_status", ""))
            if doc.get("reason"):
                self.writer.set_metadata("stop_reason", doc["reason"])
