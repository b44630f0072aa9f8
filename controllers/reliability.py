"""The reliability campaign: shared/RELIABILITY.md's matrix at full counts, as JSON.

Every fault is real: caproto IOCs in subprocesses killed with SIGKILL and
restarted, the command line in subprocesses, NeXus writers killed mid-file, a
file system that refuses writes (``RLIMIT_FSIZE``, the kernel's own "file too
large", the same path through h5py as a full disk) and a folder that cannot
exist. Nothing is mocked.

Parts (:class:`Counts` sets how many of each; :data:`FULL` is the nightly run,
:data:`QUICK` the one the test suite runs):

``fuzz``
    R1/R12: puts of hostile values (NaN, ±inf, ±1e308, one ULP outside the
    limits, huge integers, strings, the limits themselves) to every writable and
    read-only field of every motor record, the detector and the status PVs. The
    IOC counts every position beyond the soft limits of the move that reached it
    (``twin:LimitExcursions_RBV``); the client also watches every readback
    against the widest limits the record ever had. Afterwards every record must
    be consistent (finite readbacks, DLLM <= DHLM, VELO <= VMAX) and come to rest.
``align_kills``, ``scan_kills``
    R3: ``beamtwin align --epics`` or ``beamtwin scan --epics`` runs; its IOC is
    killed at a random moment and restarted under the same prefix and port. The
    run must end within a bound with a typed error and no traceback, every file
    at a final name must validate, and the restarted IOC must receive no motion
    command from the dead run.
``writer_kills``
    R9: a process writing a NeXus file point by point is killed (SIGKILL) at a
    random moment; its ``.partial`` must validate with at most one point lost.
``disk_faults``
    R9: scans whose data folder fills up at a random size, or cannot be
    created: exit 1 or 2, the summary on stdout, no traceback, no file at a
    final name that does not validate, no empty or truncated picture.
``scan_requests``, ``cli``
    R11: random scan requests (wrong types, missing and extra fields, huge
    counts, unknown motors) and random command lines: each is refused with its
    field named, or runs; none crashes.
``soak``
    8 clients read, move and acquire for an hour against one IOC: its memory,
    file descriptors and threads over time, and the clients' latency percentiles.

:func:`run_campaign` runs the parts and says whether the goals hold: 0 positions
beyond a soft limit, 0 hung runs, 0 corrupt files at a final name, 0 tracebacks,
every error typed and naming its value.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controllers.nexus import DataWriteError, recover, validate
from ioc_sim.machine import TRAVEL_MARGIN
from ioc_sim.process import IocProcess, random_prefix
from twin.description import BeamlineDescription
from twin.errors import ConfigError

__all__ = ["Counts", "FULL", "QUICK", "run_campaign", "fuzz_puts", "kill_runs", "writer_kills",
           "disk_faults", "fuzz_scan_requests", "fuzz_cli", "soak", "GOALS", "limit_file_size"]

#: the goals the campaign checks (every count must be 0)
GOALS = ("out_of_limit_positions", "hung_runs", "corrupt_final_files", "tracebacks",
         "untyped_errors", "inconsistent_records", "puts_to_a_restarted_ioc")

#: errors a run that lost its IOC may end with (docs/controllers.md)
TYPED_LOSS_ERRORS = ("DisconnectedError", "MoveTimeoutError", "BeamLostError")

IOC_ARGS = ["--backend", "fast", "--rays", "2000", "--seed", "5", "--misalign", "0.5",
            "--no-disturbances", "--diag-rate", "2"]


@dataclass(frozen=True)
class Counts:
    """How much of each part to run (0 skips a part)."""

    fuzz_puts: int = 100_000
    align_kills: int = 50
    scan_kills: int = 50
    writer_kills: int = 1_000
    disk_faults: int = 50
    scan_requests: int = 100_000
    cli: int = 1_000
    soak_s: float = 3600.0
    soak_clients: int = 8

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not \
                    (math.isfinite(v) and v >= 0):
                raise ConfigError(f"Counts.{k} must be a finite number >= 0, got {v!r}")


#: the nightly campaign (about three hours on two cores)
FULL = Counts()
#: the test suite's campaign (about two minutes)
QUICK = Counts(fuzz_puts=400, align_kills=1, scan_kills=1, writer_kills=6, disk_faults=3,
               scan_requests=2_000, cli=10, soak_s=8.0, soak_clients=4)


def _beamtwin(*args: str) -> list[str]:
    return [sys.executable, "-m", "controllers.cli", *args]


def _root() -> Path:
    return Path(__file__).resolve().parents[1]


def _traceback_in(*texts: str) -> bool:
    return any("Traceback (most recent call last)" in t for t in texts)


# --------------------------------------------------------------------------- R1 / R12
def _fuzz_values(rng: random.Random, lo: float, hi: float) -> list[Any]:
    span = (hi - lo) or 1.0
    return [math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-300, 0, -1, 1, 2 ** 31 - 1,
            -(2 ** 31), "abc", "", "1e999", lo, hi, math.nextafter(lo, -math.inf),
            math.nextafter(hi, math.inf), rng.uniform(lo, hi), rng.uniform(lo, hi),
            lo - rng.uniform(0, 10) * span, hi + rng.uniform(0, 10) * span,
            rng.uniform(-1e6, 1e6)]


MOTOR_FIELDS = ("VAL", "DVAL", "RLV", "TWV", "TWF", "TWR", "OFF", "DIR", "HLM", "LLM", "DHLM",
                "DLLM", "STOP", "SPMG", "VELO", "ACCL", "BDST", "BVEL", "RDBD", "HOMF", "HOMR",
                "RBV", "DRBV", "DMOV", "MOVN", "MSTA", "VMAX", "MRES", "LVIO", "DIFF")
DEVICE_FIELDS = ("det:cam1:AcquireTime", "det:cam1:AcquirePeriod", "det:cam1:NumImages",
                 "det:cam1:ArrayCounter", "det:ROI1:MinX", "det:ROI1:MinY", "det:ROI1:SizeX",
                 "det:ROI1:SizeY", "det:Trig1:Threshold", "det:cam1:ArraySizeX_RBV",
                 "det:Stats1:Total_RBV", "stab:Report", "stab:Running_RBV", "stab:Refused_RBV",
                 "twin:DiagRate", "twin:RefusedPuts_RBV", "machine:NeighbourGap")


def fuzz_puts(desc: BeamlineDescription, prefix: str, n: int, seed: int, *,
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """*n* hostile puts to the IOC under *prefix*; what the IOC and the client saw."""
    import epics

    from controllers.pvnames import PvMap

    rng = random.Random(seed)
    pvmap = PvMap(desc, prefix)
    records = {m: pvmap.motor_field(m, "VAL")[: -len(".VAL")] for m in desc.motors}
    envelope: dict[str, list[float]] = {}
    seen_outside: list[tuple[str, float, tuple[float, float]]] = []
    lock = threading.Lock()
    monitors = []

    def watch(motor: str) -> None:
        rec = records[motor]
        lo = epics.caget(rec + ".DLLM", timeout=5)
        hi = epics.caget(rec + ".DHLM", timeout=5)
        envelope[motor] = [float(lo), float(hi)]

        spec = desc.motor(motor)
        margin = TRAVEL_MARGIN * (spec.high - spec.low)
        now = {"DLLM": float(lo), "DHLM": float(hi)}

        def on_limit(value: float, pvname: str = "", **_: Any) -> None:
            with lock:
                e = envelope[motor]
                if not math.isfinite(value):
                    return
                now[pvname.rsplit(".", 1)[-1]] = value
                if now["DLLM"] == 0 and now["DHLM"] == 0:
                    # DLLM = DHLM = 0: no soft limits (the motor record's rule); the
                    # hardware travel is then the only limit
                    e[0] = min(e[0], spec.low - margin)
                    e[1] = max(e[1], spec.high + margin)
                elif pvname.endswith(".DLLM"):
                    e[0] = min(e[0], value)
                else:
                    e[1] = max(e[1], value)

        def on_position(value: float, **_: Any) -> None:
            with lock:
                e = envelope[motor]
                res = desc.motor(motor).resolution
                if not (math.isfinite(value) and e[0] - res <= value <= e[1] + res):
                    seen_outside.append((motor, float(value), (e[0], e[1])))

        for f, cb in ((".DLLM", on_limit), (".DHLM", on_limit), (".DRBV", on_position)):
            p = epics.PV(rec + f, auto_monitor=True, callback=cb)
            monitors.append(p)

    for m in desc.motors:
        watch(m)
    for p in monitors:
        p.wait_for_connection(timeout=5)
    sent = ca_errors = accepted_nonfinite = 0
    fields = [(records[m], f, m) for m in desc.motors for f in MOTOR_FIELDS]
    fields += [(f"{prefix}{d}", "", None) for d in DEVICE_FIELDS]
    for k in range(n):
        base, fld, motor = fields[rng.randrange(len(fields))]
        name = f"{base}.{fld}" if fld else base
        if motor is not None:
            spec = desc.motor(motor)
            value = rng.choice(_fuzz_values(rng, spec.low, spec.high))
        else:
            value = rng.choice(_fuzz_values(rng, 0.0, 100.0) + ['{"running": 1}', "[1]"])
        try:
            rc = epics.caput(name, value, wait=fld not in ("VAL", "DVAL", "RLV", "TWF", "TWR",
                                                           "HOMF", "HOMR", "SPMG"),
                             timeout=2)
            ca_errors += rc != 1
        except Exception:  # noqa: BLE001 - pyepics raises for values it cannot send
            ca_errors += 1
        sent += 1
        if fld in ("VELO", "ACCL", "OFF", "HLM", "LLM", "DHLM", "DLLM", "BDST", "BVEL"):
            back = epics.caget(name, timeout=2, use_monitor=False)
            if back is not None and not math.isfinite(float(back)):
                accepted_nonfinite += 1
        if progress is not None and (k + 1) % 100 == 0:
            progress(k + 1)
    # everything stops; then every record must be consistent and at rest
    for m in desc.motors:
        epics.caput(records[m] + ".SET", 0, wait=True, timeout=2)
        epics.caput(records[m] + ".SPMG", "Go", wait=True, timeout=2)
        epics.caput(records[m] + ".STOP", 1, wait=True, timeout=2)
    inconsistent, hung = [], []
    for m in desc.motors:
        rec = records[m]
        deadline = time.monotonic() + 75  # a STOP decelerates over ACCL, at most 60 s
        while epics.caget(rec + ".DMOV", timeout=2, use_monitor=False) != 1:
            if time.monotonic() > deadline:
                hung.append(m)
                break
            time.sleep(0.05)
        v = {f: epics.caget(f"{rec}.{f}", timeout=2, use_monitor=False)
             for f in ("RBV", "DRBV", "DLLM", "DHLM", "VELO", "VMAX", "HLM", "LLM")}
        bad = [f for f, x in v.items() if x is None or not math.isfinite(float(x))]
        if bad or v["DLLM"] > v["DHLM"] or v["VELO"] > v["VMAX"] or v["VELO"] <= 0:
            inconsistent.append({"motor": m, **{k: (None if x is None else float(x))
                                                for k, x in v.items()}})
    excursions = epics.caget(f"{prefix}twin:LimitExcursions_RBV", timeout=5,
                             use_monitor=False)
    refused = epics.caget(f"{prefix}twin:RefusedPuts_RBV", timeout=5, use_monitor=False)
    for p in monitors:
        p.clear_callbacks()
        p.disconnect()
    return {"puts": sent, "ca_errors": ca_errors, "setpoints_refused_at_ioc": refused,
            "limit_excursions_at_ioc": excursions, "positions_outside_seen_by_client":
            len(seen_outside), "examples_outside": seen_outside[:5],
            "accepted_non_finite": accepted_nonfinite, "inconsistent_records": inconsistent,
            "motors_not_at_rest": hung}


# --------------------------------------------------------------------------- R3
def kill_runs(kind: str, n: int, seed: int, port: int, out_dir: Path, *,
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """*n* alignments (``kind="align"``) or scans (``"scan"``) whose IOC is killed at a
    random moment and restarted under the same prefix and port."""
    import epics

    rng = random.Random(seed)
    runs = []
    for k in range(n):
        prefix = random_prefix()
        out = out_dir / f"{kind}-{k}"
        ioc = IocProcess(prefix, port, IOC_ARGS).start()
        if kind == "align":
            cmd = _beamtwin("align", "--epics", "--prefix", prefix, "--out", str(out),
                            "--json", "--no-progress", "--agent", "steer")
            wait_puts, bound_s = rng.randint(1, 60), 240.0
        else:
            cmd = _beamtwin("scan", "ascan", "sample.x", "0", "30", "300", "--epics",
                            "--prefix", prefix, "--detector", "sample", "--out", str(out),
                            "--json", "--no-progress")
            wait_puts, bound_s = rng.randint(1, 200), 120.0
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=_root())
        again = None
        rec: dict[str, Any] = {"kind": kind, "kill_after_motion_puts": wait_puts}
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                puts = epics.caget(f"{prefix}twin:MotionPuts_RBV", timeout=2,
                                   use_monitor=False)
                if puts is not None and puts >= wait_puts:
                    break
                time.sleep(0.05)
            rec["finished_before_kill"] = proc.poll() is not None
            ioc.kill()
            killed = time.monotonic()
            again = IocProcess(prefix, port, IOC_ARGS).start()
            try:
                out_s, err_s = proc.communicate(timeout=bound_s)
                rec["hung"] = False
            except subprocess.TimeoutExpired:
                proc.kill()
                out_s, err_s = proc.communicate()
                rec["hung"] = True
            rec["ended_s_after_kill"] = round(time.monotonic() - killed, 2)
            time.sleep(0.5)
            counted = None
            deadline = time.monotonic() + 20
            while counted is None and time.monotonic() < deadline:
                counted = epics.caget(f"{prefix}twin:MotionPuts_RBV", timeout=5,
                                      use_monitor=False)
            # unread is not zero: a count that could not be read fails the goal
            rec["puts_at_restarted_ioc"] = int(counted) if counted is not None else -1
        finally:
            if proc.poll() is None:
                proc.kill()
            ioc.kill()
            if again is not None:
                again.kill()
        rec["exit_code"] = proc.returncode
        rec["traceback"] = _traceback_in(out_s, err_s)
        try:
            doc = json.loads(out_s)
        except json.JSONDecodeError:
            doc = {}
        rec["json"] = bool(doc)
        error = doc.get("error") or ""
        rec["error"] = error[:200]
        rec["typed"] = bool(rec["finished_before_kill"] or
                            error.split(":", 1)[0] in TYPED_LOSS_ERRORS)
        rec.update(_final_files(out))
        runs.append(rec)
        if progress is not None:
            progress(k + 1)
    return {"runs": len(runs), "hung": sum(r["hung"] for r in runs),
            "tracebacks": sum(r["traceback"] for r in runs),
            "untyped_errors": sum(not r["typed"] for r in runs),
            "no_json": sum(not r["json"] for r in runs),
            "puts_at_restarted_ioc": sum(max(r["puts_at_restarted_ioc"], 0) for r in runs),
            "unread_counts": sum(r["puts_at_restarted_ioc"] < 0 for r in runs),
            "corrupt_final_files": sum(r["corrupt_final_files"] for r in runs),
            "final_files": sum(r["final_files"] for r in runs),
            "median_end_s": _median([r["ended_s_after_kill"] for r in runs]),
            "max_end_s": max([r["ended_s_after_kill"] for r in runs], default=None),
            "errors": sorted({r["error"].split(":", 1)[0] for r in runs if r["error"]}),
            "failures": [r for r in runs if r["hung"] or r["traceback"] or not r["typed"]
                         or r["puts_at_restarted_ioc"] or r["corrupt_final_files"]][:5]}


def _final_files(folder: Path) -> dict[str, int]:
    """Every NeXus file at a final name in *folder* validated; empty pictures counted."""
    finals = list(folder.rglob("*.h5")) if folder.exists() else []
    corrupt = 0
    for f in finals:
        try:
            validate(f)
        except DataWriteError:
            corrupt += 1
    empty_png = sum(1 for p in folder.rglob("*.png") if p.stat().st_size == 0) \
        if folder.exists() else 0
    return {"final_files": len(finals), "corrupt_final_files": corrupt + empty_png}


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


# --------------------------------------------------------------------------- R9
_WRITER = """
import sys, time
from controllers.nexus import NexusWriter
w = NexusWriter(sys.argv[1], title="kill test", signal="s")
for k in range(int(sys.argv[2])):
    w.add_point({"s": float(k), "t": time.time()})
    print(k + 1, flush=True)
w.close()
print("closed", flush=True)
"""


def writer_kills(n: int, seed: int, out_dir: Path, *,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """*n* NeXus writers killed (SIGKILL) at a random moment; their files checked."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    lost, corrupt_final, unrecoverable, finished, points = [], 0, 0, 0, []
    for k in range(n):
        path = out_dir / f"w{k}.h5"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "100000"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=_root())
        time.sleep(rng.uniform(0.6, 2.5))  # the interpreter starts in about 0.5 s
        proc.send_signal(signal.SIGKILL)
        out_s, _ = proc.communicate()
        said = [ln for ln in out_s.split() if ln.isdigit()]
        flushed = int(said[-1]) if said else 0
        if "closed" in out_s:
            finished += 1
        partial = path.with_name(path.name + ".partial")
        if path.exists():
            try:
                validate(path)
            except DataWriteError:
                corrupt_final += 1
        elif partial.exists():
            try:
                got = validate(recover(partial))["points"]
                points.append(got)
                lost.append(max(0, flushed - got))
            except (DataWriteError, ConfigError, OSError):
                # killed while creating the file, before its first flush: nothing was
                # promised yet (no point had been written)
                unrecoverable += flushed > 0
        if progress is not None:
            progress(k + 1)
    return {"kills": n, "finished_before_kill": finished,
            "corrupt_final_files": corrupt_final,
            "partials_unrecoverable_after_a_point": unrecoverable,
            "max_points_lost": max(lost, default=0),
            "median_points_at_kill": _median([float(p) for p in points])}


def limit_file_size(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child's writes beyond *limit* bytes fail (EFBIG),
    as a full disk does, instead of killing it (SIGXFSZ ignored)."""
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def disk_faults(n: int, seed: int, out_dir: Path, *,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """*n* scans on the twin whose data folder fills up at a random size (3 of 4) or
    cannot be created (1 of 4)."""
    rng = random.Random(seed)
    runs = []
    blocker = out_dir / "a-file"
    out_dir.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where a folder is expected")
    for k in range(n):
        unwritable = k % 4 == 3
        out = blocker / f"scan-{k}" if unwritable else out_dir / f"scan-{k}"
        limit = rng.randint(150_000, 420_000)
        cmd = _beamtwin("scan", "ascan", "sample.x", "-20", "20", str(rng.randint(20, 200)),
                        "--backend", "fast", "--rays", "500", "--out", str(out), "--json",
                        "--no-progress")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=_root(),
                           preexec_fn=None if unwritable else limit_file_size(limit))
        try:
            doc = json.loads(r.stdout)
        except json.JSONDecodeError:
            doc = {}
        rec = {"unwritable": unwritable, "limit_bytes": None if unwritable else limit,
               "exit_code": r.returncode, "traceback": _traceback_in(r.stdout, r.stderr),
               "json": bool(doc), "exit_status": doc.get("exit_status"),
               "error": (doc.get("error") or "")[:160]}
        rec["consistent"] = (r.returncode == {"success": 0, "fail": 1, "abort": 130}.get(
            doc.get("exit_status"), 2)) and (doc.get("nexus_file") is not None) == (
            doc.get("exit_status") == "success") if "exit_status" in doc else \
            (r.returncode == 2 and "error" in doc)
        rec.update(_final_files(out if out.parent.is_dir() else out_dir / "none"))
        runs.append(rec)
        if progress is not None:
            progress(k + 1)
    return {"runs": n, "tracebacks": sum(r["traceback"] for r in runs),
            "no_json": sum(not r["json"] for r in runs),
            "inconsistent": sum(not r["consistent"] for r in runs),
            "corrupt_final_files": sum(r["corrupt_final_files"] for r in runs),
            "completed": sum(r["exit_status"] == "success" for r in runs),
            "failed_cleanly": sum(r["exit_status"] == "fail" for r in runs),
            "refused_before_start": sum(r["exit_code"] == 2 for r in runs),
            "failures": [r for r in runs if r["traceback"] or not r["consistent"]
                         or r["corrupt_final_files"]][:5]}


# --------------------------------------------------------------------------- R11
def _junk(rng: random.Random) -> Any:
    return rng.choice([None, True, -1, 0, 1, 2 ** 63, -(2 ** 63), 1e308, math.nan, math.inf,
                       "", "x" * 1000, "sample.x", "nosuch.motor", [], [1, 2, 3], {},
                       {"a": 1}, ["sample.x", "sample.y"], 1.5, "1", "🙂",
                       "".join(rng.choices(string.printable, k=rng.randint(0, 20)))])


def fuzz_scan_requests(desc: BeamlineDescription, n: int, seed: int, *,
                       progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """*n* random scan requests through the checks a request meets before any motion."""
    from controllers.scan_request import PLANS, ScanRequest, ScanRequestError
    from controllers.scan_run import movable_motors

    rng = random.Random(seed)
    keys = ["plan", "motors", "start", "stop", "intervals", "npoints", "interval_s",
            "exposure_s", "detector", "signal", "goto", "fit", "snake", "coarse_step",
            "fine_step", "seed", "bogus"]
    accepted = refused = crashed = unnamed = 0
    crashes: list[str] = []
    for k in range(n):
        d: dict[str, Any] = {"plan": rng.choice([*PLANS, *PLANS, "nosuch", 3, None])}
        if rng.random() < 0.7:
            d.update({"motors": ["sample.x"], "start": [0.0], "stop": [10.0],
                      "intervals": [10]})
        for key in rng.sample(keys, rng.randint(0, 5)):
            d[key] = _junk(rng) if rng.random() < 0.7 else {
                "start": [rng.uniform(-1e4, 1e4)], "stop": [rng.uniform(-1e4, 1e4)],
                "intervals": [rng.randint(-5, 200_000)], "npoints": rng.randint(-5, 10 ** 7),
            }.get(key, _junk(rng))
        if rng.random() < 0.1:
            d = _junk(rng)  # not even a mapping
        try:
            req = ScanRequest.from_dict(d)
            movable_motors(req, desc)
            accepted += 1
        except ScanRequestError as exc:
            refused += 1
            unnamed += not (isinstance(exc.field, str) and exc.field and str(exc))
        except Exception as exc:  # noqa: BLE001 - the campaign counts what escapes
            crashed += 1
            if len(crashes) < 5:
                crashes.append(f"{type(exc).__name__}: {exc} for {d!r}"[:300])
        if progress is not None and (k + 1) % 1000 == 0:
            progress(k + 1)
    return {"requests": n, "accepted": accepted, "refused_naming_the_field": refused - unnamed,
            "refused_without_a_field": unnamed, "crashed": crashed, "crashes": crashes}


def fuzz_cli(n: int, seed: int, out_dir: Path, *, timeout_s: float = 180.0,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """*n* random command lines against the twin, each in its own process with a time
    bound: one that runs past it is counted as hung (it was an unbounded input)."""
    rng = random.Random(seed)
    vals = ["-1", "0", "1", "nan", "inf", "-inf", "1e308", "abc", "", "999999999999",
            "3.5", "sample.x", "nosuch", str(out_dir / "x"), "/proc/nope/x.png", "--json"]
    templates = [
        ["twin", "info"],
        ["twin", "trace", "--backend", "fast", "--rays", "200"],
        ["scan", "ascan", "sample.x", "0", "10", "5", "--backend", "fast", "--rays", "200",
         "--no-progress", "--out", str(out_dir / "cli")],
        ["align", "--backend", "fast", "--rays", "200", "--budget", "3", "--stages", "m1"],
        ["bench", "twin", "--backend", "fast", "--rays", "200", "--batch", "2", "--repeats",
         "1"],
    ]
    valid = {"--seed": ["7", "123"], "--rays": ["300", "150"], "--misalign": ["0.5", "0"],
             "--set": ["sample.x=3", "kb_v.pitch=1"], "--budget": ["3", "2"],
             "--stages": ["m1", "mono"], "--backend": ["fast"],
             "--png": [str(out_dir / "p.png")], "--device": ["cpu"], "--batch": ["2"],
             "--exposure": ["0.1"], "--detector": ["sample", "detector"],
             "--goto": ["cen", "max"], "--fit": ["gaussian", "none"], "--agent": ["steer"],
             "--preset": [], "--nosuch": []}
    options = list(valid)
    codes: dict[str, int] = {}
    crashes: list[str] = []
    hung: list[str] = []
    crashed = 0
    for k in range(n):
        args = list(rng.choice(templates))
        for _ in range(rng.randint(1, 3)):
            opt = rng.choice(options)
            # half the values are valid, so that most command lines get past a first check
            value = rng.choice(valid[opt]) if valid[opt] and rng.random() < 0.5 else \
                rng.choice(vals)
            if opt in args:
                args[args.index(opt) + 1] = value
            else:
                args += [opt, value]
        args.append("--json")
        try:
            r = subprocess.run(_beamtwin(*args), capture_output=True, text=True,
                               timeout=timeout_s, cwd=_root())
        except subprocess.TimeoutExpired:
            codes["timeout"] = codes.get("timeout", 0) + 1
            hung.append(" ".join(args)[:300])
            continue
        codes[str(r.returncode)] = codes.get(str(r.returncode), 0) + 1
        if _traceback_in(r.stdout, r.stderr) or r.returncode not in (0, 1, 2):
            crashed += 1
            if len(crashes) < 5:
                tail = r.stderr.strip().splitlines()[-1:] or [""]
                crashes.append(f"{' '.join(args)}: {tail[0]}"[:300])
        if progress is not None:
            progress(k + 1)
    return {"invocations": n, "exit_codes": dict(sorted(codes.items())), "crashed": crashed,
            "crashes": crashes, "hung": len(hung), "hung_examples": hung[:5],
            "timeout_s": timeout_s}


# --------------------------------------------------------------------------- soak
def _proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    f = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(f["VmRSS"].split()[0]) / 1024, "threads": int(f["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def soak(desc: BeamlineDescription, prefix: str, pid: int, duration_s: float, clients: int,
         seed: int) -> dict[str, Any]:
    """*clients* threads, each with its own motor, read, move and acquire for *duration_s*."""
    import epics

    from controllers.pvnames import PvMap

    pvmap = PvMap(desc, prefix)
    motors = [m for m in ("sample.x", "sample.y", "sample.z", "kb_v.height", "kb_h.height",
                          "m1.height", "ss.hcen", "ss.vcen", "fe_slits.hcen", "fe_slits.vcen")
              if m in desc.motors][:clients]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    samples = [_proc_stats(pid)]

    def client(k: int, motor: str) -> None:
        rng = random.Random(seed + k)
        rec = pvmap.motor_field(motor, "VAL")
        rbv = pvmap.motor_field(motor, "RBV")
        spec = desc.motor(motor)
        here = epics.caget(rbv, timeout=5)
        step = 20 * spec.resolution
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                if rng.random() < 0.3:
                    target = float(np.clip(here + rng.choice((-step, step)), spec.low,
                                           spec.high))
                    if epics.caput(rec, target, wait=True, timeout=30) != 1:
                        raise RuntimeError(f"put to {rec} did not complete")
                elif k == 0 and rng.random() < 0.2:
                    if epics.caput(f"{prefix}det:cam1:Acquire", 1, wait=True,
                                   timeout=30) != 1:
                        raise RuntimeError("acquire did not complete")
                elif epics.caget(rbv, timeout=5, use_monitor=False) is None:
                    raise RuntimeError(f"get of {rbv} timed out")
            except Exception as exc:  # noqa: BLE001 - counted
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(k, m), daemon=True)
               for k, m in enumerate(motors)]
    for t in threads:
        t.start()
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        time.sleep(min(10.0, max(0.0, end - time.monotonic())))
        samples.append(_proc_stats(pid))
    stop.set()
    for t in threads:
        t.join(timeout=60)
    lat = np.array(latencies) * 1e3
    return {"duration_s": duration_s, "clients": len(motors), "operations": len(latencies),
            "errors": len(errors), "error_examples": errors[:5],
            "latency_ms": {q: (float(np.percentile(lat, p)) if lat.size else None)
                           for q, p in (("p50", 50), ("p90", 90), ("p99", 99),
                                        ("max", 100))},
            "ioc": {"rss_mb_start": samples[0]["rss_mb"], "rss_mb_end": samples[-1]["rss_mb"],
                    "rss_mb_max": max(s["rss_mb"] for s in samples),
                    "threads_start": samples[0]["threads"], "threads_end": samples[-1]["threads"],
                    "fds_start": samples[0]["fds"], "fds_end": samples[-1]["fds"]}}


# --------------------------------------------------------------------------- campaign
def run_campaign(desc: BeamlineDescription, counts: Counts, *, seed: int, ports: list[int],
                 out_dir: str | Path | None = None,
                 progress: Callable[[str], None] | None = None,
                 on_part: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every part of *counts*; returns the JSON document with the goals.

    Parameters
    ----------
    desc : BeamlineDescription
        The beamline the IOCs serve (the built-in one; the IOCs are started with it).
    counts : Counts
    seed : int
        Seeds every random choice (report it: the campaign is reproducible).
    ports : list of int
        Three loopback CA ports that the client environment (``EPICS_CA_ADDR_LIST``)
        already lists; pyepics reads it once, before its first use.
    out_dir : path, optional
        Where runs write their files (default: a temporary folder, removed).
    on_part : callable, optional
        Called with the document so far after each part (to keep partial results of a
        long campaign).
    """
    say = progress or (lambda m: None)

    def done(part: str) -> None:
        say(f"{part}: done")
        if on_part is not None:
            on_part(doc)

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="beamtwin-reliability-")
        out_dir = tmp.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"seed": seed, "counts": asdict(counts)}
    t_start = time.monotonic()
    # pyepics prints its warnings on stdout, which belongs to the campaign's JSON
    quiet = contextlib.redirect_stdout(sys.stderr)
    quiet.__enter__()
    try:
        if counts.fuzz_puts or counts.soak_s:
            ioc = IocProcess(random_prefix(), ports[0], IOC_ARGS).start()
            try:
                if counts.fuzz_puts:
                    say(f"fuzz: {counts.fuzz_puts} puts")
                    t0 = time.monotonic()
                    doc["fuzz"] = fuzz_puts(desc, ioc.prefix, counts.fuzz_puts, seed)
                    doc["fuzz"]["wall_s"] = round(time.monotonic() - t0, 1)
                    doc["fuzz"]["ioc_tracebacks"] = _traceback_in(ioc.stderr())
                    done("fuzz")
            finally:
                ioc.kill()
            if counts.soak_s:
                soak_ioc = IocProcess(random_prefix(), ports[0], IOC_ARGS).start()
                try:
                    say(f"soak: {counts.soak_clients} clients for {counts.soak_s:g} s")
                    doc["soak"] = soak(desc, soak_ioc.prefix, soak_ioc.proc.pid,
                                       counts.soak_s, counts.soak_clients, seed)
                    done("soak")
                finally:
                    soak_ioc.kill()
        for kind, n in (("align", counts.align_kills), ("scan", counts.scan_kills)):
            if n:
                say(f"{kind}: {n} IOC kills")
                doc[f"{kind}_kills"] = kill_runs(kind, n, seed, ports[1], out / f"{kind}-kills")
                done(f"{kind}_kills")
        if counts.writer_kills:
            say(f"writers: {counts.writer_kills} kills")
            doc["writer_kills"] = writer_kills(counts.writer_kills, seed, out / "writers")
            done("writer_kills")
        if counts.disk_faults:
            say(f"disk: {counts.disk_faults} full or unwritable")
            doc["disk_faults"] = disk_faults(counts.disk_faults, seed, out / "disk")
            done("disk_faults")
        if counts.scan_requests:
            say(f"requests: {counts.scan_requests} fuzzed")
            doc["scan_requests"] = fuzz_scan_requests(desc, counts.scan_requests, seed)
            done("scan_requests")
        if counts.cli:
            say(f"cli: {counts.cli} fuzzed command lines")
            doc["cli"] = fuzz_cli(counts.cli, seed, out / "cli")
    finally:
        quiet.__exit__(None, None, None)
        if tmp is not None:
            tmp.cleanup()
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    doc["goals"] = _goals(doc)
    doc["passed"] = all(v == 0 for v in doc["goals"].values())
    return doc


def _goals(doc: Mapping[str, Any]) -> dict[str, int]:
    fz = doc.get("fuzz", {})
    kills = [doc[k] for k in ("align_kills", "scan_kills") if k in doc]
    wk, dk = doc.get("writer_kills", {}), doc.get("disk_faults", {})
    return {
        "out_of_limit_positions": int(fz.get("limit_excursions_at_ioc") or 0)
        + int(fz.get("positions_outside_seen_by_client") or 0),
        "hung_runs": sum(k["hung"] for k in kills) + len(fz.get("motors_not_at_rest", []))
        + int(doc.get("cli", {}).get("hung", 0)),
        "corrupt_final_files": sum(k["corrupt_final_files"] for k in kills)
        + int(wk.get("corrupt_final_files", 0)) + int(dk.get("corrupt_final_files", 0))
        + int(wk.get("partials_unrecoverable_after_a_point", 0))
        + max(0, int(wk.get("max_points_lost", 0)) - 1),
        "tracebacks": sum(k["tracebacks"] for k in kills) + int(dk.get("tracebacks", 0))
        + int(bool(fz.get("ioc_tracebacks"))) + int(doc.get("cli", {}).get("crashed", 0)),
        "untyped_errors": sum(k["untyped_errors"] + k["no_json"] for k in kills)
        + int(dk.get("inconsistent", 0)) + int(dk.get("no_json", 0))
        + int(doc.get("scan_requests", {}).get("crashed", 0))
        + int(doc.get("scan_requests", {}).get("refused_without_a_field", 0))
        + int(fz.get("accepted_non_finite", 0)),
        "inconsistent_records": len(fz.get("inconsistent_records", [])),
        "puts_to_a_restarted_ioc": sum(k["puts_at_restarted_ioc"] + k.get("unread_counts", 0)
                                       for k in kills),
    }
