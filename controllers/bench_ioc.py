"""``beamtwin bench ioc``: how fast the simulated IOCs answer, measured with pyepics.

Three measurements, each against a baseline taken in the same run:

* **online analysis**: statistics of one frame (``frame_stats``) for a 1024 x 1024
  frame on one core, against the goal of 2 ms (Eiger detectors deliver 2 kHz);
* **round trips**: pyepics put-with-completion followed by a get, on a motor
  record field (VELO, then RBV) and on a null move of VAL, against the beamline
  IOC served by beamtwin's CA server and by caproto's stock server;
* **detector**: frames per second of a continuous acquisition over CA (each
  frame traced by the twin, analysed and published);
* **monitor rates**: a scalar posted at 1 kHz and a 512 x 512 float32 image
  posted at 1 kHz, received by a pyepics monitor.

Servers: ``stock`` (caproto's), ``nodelay`` (stock plus TCP_NODELAY) and
``beamtwin`` (TCP_NODELAY plus monitors sent without caproto's 10 ms batching wait).

IOCs run in subprocesses on free loopback ports (:mod:`ioc_sim.process`).
pyepics reads its address list once, so the ports are chosen before it is imported.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ioc_sim.analysis import frame_stats
from ioc_sim.process import IocProcess, client_env, free_port, random_prefix

__all__ = ["bench_ioc", "bench_frame_stats"]

_BEAMLINE_ARGS = ["--backend", "xrt", "--rays", "1000", "--no-disturbances", "--no-noise",
                  "--diag-rate", "0"]


def _summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(1e3 * s for s in samples_s)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))],
            "min_ms": ms[0], "n": len(ms)}


def bench_frame_stats(size: int = 1024, repeats: int = 200, seed: int = 0) -> dict[str, Any]:
    """Time ``frame_stats`` on a *size* x *size* frame of a Gaussian spot with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.indices((size, size))
    spot = 5e3 * np.exp(-0.5 * (((x - 0.4 * size) / 12.0) ** 2 + ((y - 0.6 * size) / 7.0) ** 2))
    out: dict[str, Any] = {"size": size}
    for dtype in (np.float32, np.uint16, np.uint32):
        frame = rng.poisson(spot + 2.0).astype(dtype)
        frame_stats(frame)  # warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            frame_stats(frame)
            times.append(time.perf_counter() - t0)
        out[np.dtype(dtype).name] = _summary(times)
    return out


def _round_trips(epics: Any, prefix: str, n: int) -> dict[str, Any]:
    rec = f"{prefix}kb_v:pitch"
    # monitored, as ophyd's signals are: the server then also sends monitor updates
    velo, rbv, val = (epics.PV(f"{rec}.{f}", auto_monitor=True) for f in ("VELO", "RBV", "VAL"))
    for p in (velo, rbv, val):
        if not p.wait_for_connection(timeout=10):
            raise RuntimeError(f"{p.pvname} did not connect")
    speed = velo.get()
    here = val.get()

    def loop(fn: Callable[[], None]) -> list[float]:
        for _ in range(5):
            fn()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    def field() -> None:
        if velo.put(speed, wait=True, timeout=5) != 1:
            raise RuntimeError("put to VELO failed")
        rbv.get(use_monitor=False)

    def null_move() -> None:
        if val.put(here, wait=True, timeout=5) != 1:
            raise RuntimeError("put to VAL failed")
        rbv.get(use_monitor=False)

    def get_only() -> None:
        rbv.get(use_monitor=False)

    arrived = threading.Event()
    velo.add_callback(lambda **kw: arrived.set())
    flip = [speed, speed * 0.5]

    def put_to_monitor() -> None:
        arrived.clear()
        flip.reverse()
        velo.put(flip[0], wait=False)
        if not arrived.wait(timeout=5):
            raise RuntimeError("no monitor update within 5 s")

    out = {"put_wait_get_field": _summary(loop(field)),
           "put_wait_get_null_move": _summary(loop(null_move)),
           "get": _summary(loop(get_only)),
           "put_to_monitor": _summary(loop(put_to_monitor))}
    velo.put(speed, wait=True)
    velo.clear_callbacks()
    return out


def _detector_rate(epics: Any, prefix: str, duration_s: float) -> dict[str, Any]:
    """Frames per second of a continuous acquisition with a 1 ms exposure."""
    det = f"{prefix}det:cam1:"
    for field, value in (("AcquireTime", 0.001), ("AcquirePeriod", 0.0),
                         ("ImageMode", "Continuous")):
        if epics.caput(det + field, value, wait=True, timeout=5) != 1:
            raise RuntimeError(f"put to {det}{field} failed")
    counter = epics.PV(det + "ArrayCounter_RBV", auto_monitor=False)
    if not counter.wait_for_connection(timeout=10):
        raise RuntimeError(f"{counter.pvname} did not connect")
    epics.caput(det + "Acquire", 1, wait=False)
    time.sleep(0.5)
    n0, t0 = counter.get(), time.perf_counter()
    time.sleep(duration_s)
    n1, t1 = counter.get(), time.perf_counter()
    epics.caput(det + "Acquire", 0, wait=True, timeout=5)
    return {"frames_per_s": (n1 - n0) / (t1 - t0), "exposure_s": 0.001}


def _monitor_rates(epics: Any, prefix: str, duration_s: float) -> dict[str, Any]:
    counts = {"scalar": 0, "image": 0}
    last = {"scalar": 0}
    gaps = {"scalar": 0}
    lock = threading.Lock()

    def on_scalar(value: Any, **_: Any) -> None:
        with lock:
            counts["scalar"] += 1
            if last["scalar"] and value > last["scalar"] + 1:
                gaps["scalar"] += int(value - last["scalar"] - 1)
            last["scalar"] = value

    def on_image(**_: Any) -> None:
        with lock:
            counts["image"] += 1

    scalar = epics.PV(f"{prefix}Counter", auto_monitor=True)
    image = epics.PV(f"{prefix}Image", auto_monitor=True)
    posted = epics.PV(f"{prefix}Posted_RBV", auto_monitor=False)
    for p in (scalar, image, posted):
        if not p.wait_for_connection(timeout=10):
            raise RuntimeError(f"{p.pvname} did not connect")
    time.sleep(0.5)
    scalar.add_callback(on_scalar)
    image.add_callback(on_image)
    p0, c0 = posted.get(), scalar.get(use_monitor=False)
    t0 = time.perf_counter()
    time.sleep(duration_s)
    with lock:
        n_s, n_i = counts["scalar"], counts["image"]
    dt = time.perf_counter() - t0
    p1, c1 = posted.get(), scalar.get(use_monitor=False)
    scalar.clear_callbacks()
    image.clear_callbacks()
    scalar.disconnect()
    image.disconnect()
    return {"scalar_posted_hz": (c1 - c0) / dt, "scalar_received_hz": n_s / dt,
            "scalar_lost": gaps["scalar"], "image_posted_hz": (p1 - p0) / dt,
            "image_received_hz": n_i / dt,
            "image_MB_per_s": n_i * 512 * 512 * 4 / dt / 1e6}


def bench_ioc(*, round_trips: int = 300, monitor_s: float = 3.0,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every measurement; returns the ``beamtwin bench ioc --json`` document."""
    say = progress or (lambda msg: None)
    say("frame statistics")
    doc: dict[str, Any] = {"frame_stats": bench_frame_stats(), "goal_frame_stats_ms": 2.0,
                           "goal_round_trip_ms": 2.0}
    servers = ("stock", "nodelay", "beamtwin")
    ports = {s: (free_port(), free_port()) for s in servers}
    os.environ.update(client_env([p for pair in ports.values() for p in pair]))
    import epics  # after the address list is set

    doc["round_trip"], doc["monitor"] = {}, {}
    for server in servers:
        say(f"round trips, {server} server")
        with IocProcess(random_prefix(), ports[server][0],
                        [*_BEAMLINE_ARGS, "--ca-server", server]) as ioc:
            doc["round_trip"][server] = _round_trips(epics, ioc.prefix, round_trips)
            if server == "beamtwin":
                say("detector frame rate")
                doc["detector"] = {**_detector_rate(epics, ioc.prefix, monitor_s),
                                   "ioc_options": " ".join(_BEAMLINE_ARGS)}
        say(f"monitor rates, {server} server")
        with IocProcess(random_prefix(), ports[server][1], ["--ca-server", server],
                        module="ioc_sim.bench_server") as src:
            doc["monitor"][server] = _monitor_rates(epics, src.prefix, monitor_s)
    rt = doc["round_trip"]
    doc["round_trip_speedup"] = (rt["stock"]["put_wait_get_field"]["median_ms"]
                                 / rt["beamtwin"]["put_wait_get_field"]["median_ms"])
    doc["frame_stats_1024_ms"] = doc["frame_stats"]["float32"]["median_ms"]
    doc["round_trip_ms"] = rt["beamtwin"]["put_wait_get_field"]["median_ms"]
    return doc
