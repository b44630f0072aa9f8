"""``beamtwin ioc`` and ``python -m ioc_sim``: serve the simulated beamline over Channel Access.

The command runs in the foreground until SIGINT or SIGTERM, then shuts down
cleanly (acquisitions aborted, sockets closed) and exits with status 0. With
``--json`` it prints one JSON line when it serves (``"event": "ready"``, with
the TCP port and the number of PVs) and one when it stops (``"event": "stopped"``).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time

import click

from ioc_sim.names import SERVER_NAMES
from twin.cliutil import SEED, emit, jsonable, run_command
from twin.errors import ConfigError
from twin.presets import load_preset

__all__ = ["ioc_command"]


@click.command("ioc")
@click.option("--preset", type=click.Path(dir_okay=False), default=None,
              help="Beamline TOML [default: the built-in default beamline].")
@click.option("--prefix", default="BT:", show_default=True, help="PV prefix P.")
@click.option("--backend", type=click.Choice(["fast", "xrt"]), default="fast",
              show_default=True, help="Tracing fidelity (fast: validated against xrt).")
@click.option("--rays", type=int, default=20_000, show_default=True, help="Rays per trace.")
@click.option("--misalign", type=float, default=0.0, show_default=True,
              help="Scale of the hidden errors (0: ideal, 1: day one), as in twin trace.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds rays, hidden errors, disturbances and noise.")
@click.option("--disturbances/--no-disturbances", default=True, show_default=True,
              help="Drift, vibration, gap-dependent source, ring decay and top-up.")
@click.option("--noise/--no-noise", default=True, show_default=True,
              help="Photon and readout noise on frames and diagnostics.")
@click.option("--specimen", type=int, default=None, metavar="SEED",
              help="Mount the test specimen SEED at the sample: {P}sample:Xrf_RBV serves "
                   "its fluorescence under the focus.")
@click.option("--diag-rate", type=float, default=2.0, show_default=True,
              help="Diagnostics update rate while the detector is idle, Hz (0-20).")
@click.option("--port", type=int, default=None,
              help="CA server port [default: EPICS_CA_SERVER_PORT or 5064].")
@click.option("--interface", "interfaces", multiple=True,
              help="Interface to bind; repeatable [default: all].")
@click.option("--ca-server", type=click.Choice(list(SERVER_NAMES)),
              default="beamtwin",
              show_default=True,
              help="beamtwin: TCP_NODELAY and low-latency monitors; stock: caproto's own "
                   "server; nodelay: stock plus TCP_NODELAY (the last two to benchmark "
                   "against).")
@click.option("--list-pvs", is_flag=True, help="Print the PV table and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def ioc_command(preset: str | None, prefix: str, backend: str, rays: int, misalign: float,
                seed: int, disturbances: bool, noise: bool, specimen: int | None,
                diag_rate: float, port: int | None,
                interfaces: tuple[str, ...], ca_server: str, list_pvs: bool,
                as_json: bool) -> None:
    """Serve the beamline twin as EPICS IOCs: motor records, undulator, machine,
    diagnostics and an area detector with online analysis."""

    def body() -> None:
        from ioc_sim.beamline import BeamlineIOC, check_prefix
        from ioc_sim.machine import MachineConfig

        check_prefix(prefix)
        if port is not None:
            if not 1024 <= port <= 65535:
                raise ConfigError(f"--port must be within [1024, 65535], got {port}")
            os.environ["EPICS_CA_SERVER_PORT"] = str(port)
        check_interfaces(interfaces, port)
        desc = load_preset(preset)
        config = MachineConfig(backend=backend, rays=rays, misalign=misalign, seed=seed,
                               disturbances=disturbances, noise=noise)
        from twin.specimen import Specimen

        if specimen is not None and specimen < 0:
            raise ConfigError(f"--specimen must be a seed >= 0, got {specimen}")
        mounted = Specimen.default(specimen) if specimen is not None else None
        ioc = BeamlineIOC(desc, prefix, config=config, diag_rate_hz=diag_rate,
                          specimen=mounted)
        if list_pvs:
            import asyncio

            asyncio.run(ioc.initialise())
            rows = ioc.pv_table()
            emit(as_json, {"prefix": prefix, "pvs": [jsonable(r) for r in rows]},
                 lambda: "\n".join(f"{r.name:<45} {r.access:<2} {r.dtype:<7} {r.units:<6} "
                                   f"{r.doc}" for r in rows))
            return
        _serve(ioc, desc.name, preset, interfaces, ca_server, as_json, port)

    run_command(as_json, body)


def check_interfaces(interfaces: tuple[str, ...], port: int | None) -> None:
    """Refuse, before anything starts, an interface that is not an IPv4 address of
    this machine, and a --port that another server holds on it.

    Raises
    ------
    ConfigError
        Naming the interface or port, and why.
    """
    for interface in interfaces:
        try:
            ipaddress.IPv4Address(interface)
        except ValueError:
            raise ConfigError(f"--interface {interface!r} is not an IPv4 address "
                              f"(e.g. 127.0.0.1, or 0.0.0.0 for all)") from None
    for interface in interfaces or ("0.0.0.0",):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as a server binds: a port held only by closed connections is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((interface, port or 0))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and port is not None:
                    raise ConfigError(f"--port {port} is taken on {interface}: another server "
                                      f"(an IOC?) listens there. Stop it, or choose another "
                                      f"--port") from None
                raise ConfigError(f"--interface {interface!r} cannot be served: "
                                  f"{exc.strerror or exc} (not an address of this machine?)"
                                  ) from None


def _serve(ioc, beamline: str, preset: str | None, interfaces: tuple[str, ...], server: str,
           as_json: bool, port: int | None = None) -> None:
    from ioc_sim.server import run_forever

    logging.getLogger("caproto").setLevel(logging.ERROR)
    started = time.monotonic()

    def say(line: str) -> None:
        # the process's own stdout: xrt's tracer swallows sys.stdout while a trace runs
        # in a worker thread, and a line printed then would be lost
        click.echo(line, file=sys.__stdout__)
    cfg = ioc.machine.config

    def ready(port: int) -> None:
        doc = {"event": "ready", "prefix": ioc.prefix, "port": port, "pvs": len(ioc.pvdb),
               "motors": len(ioc.motors), "beamline": beamline, "preset": preset,
               "backend": cfg.backend, "rays": cfg.rays, "misalign": cfg.misalign,
               "seed": cfg.seed, "ca_server": server, "pid": os.getpid()}
        if as_json:
            say(json.dumps(doc))
        else:
            say(f"beamtwin IOC serving {doc['pvs']} PVs of {beamline!r} under "
                f"{ioc.prefix!r} on port {port} (backend {cfg.backend}, {cfg.rays} rays); "
                f"Ctrl-C stops it")

    run_forever(ioc, interfaces=list(interfaces) or None, on_ready=ready, server=server,
                port=port)
    doc = {"event": "stopped", "prefix": ioc.prefix,
           "uptime_s": round(time.monotonic() - started, 3),
           "frames": int(ioc.detector.array_counter_rbv.value),
           "traces": int(ioc.status.traces.value)}
    say(json.dumps(doc) if as_json else f"beamtwin IOC {ioc.prefix!r} stopped")
    if any(t.name.startswith("beamtwin-trace") and t.is_alive() for t in threading.enumerate()):
        # a trace still runs in a worker thread that Python cannot interrupt:
        # its result is not needed, and the IOC has stopped serving
        sys.__stdout__.flush()
        sys.stderr.flush()
        os._exit(0)
