"""``beamtwin ioc`` and ``python -m ioc_sim``: serve the simulated beamline over Channel Access.

The command runs in the foreground until SIGINT or SIGTERM, then shuts down
cleanly (acquisitions aborted, sockets closed) and exits with status 0. With
``--json`` it prints one JSON line when it serves (``"event": "ready"``, with
the TCP port and the number of PVs) and one when it stops (``"event": "stopped"``).
"""

from __future__ import annotations

import json
import logging
import os
import time

import click

from ioc_sim.names import SERVER_NAMES
from twin.cliutil import emit, jsonable, run_command
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
@click.option("--seed", type=int, default=0, show_default=True,
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
        if isinstance(seed, int) and seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {seed}")
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
        _serve(ioc, desc.name, preset, interfaces, ca_server, as_json)

    run_command(as_json, body)


def _serve(ioc, beamline: str, preset: str | None, interfaces: tuple[str, ...], server: str,
           as_json: bool) -> None:
    from ioc_sim.server import run_forever

    logging.getLogger("caproto").setLevel(logging.ERROR)
    started = time.monotonic()
    cfg = ioc.machine.config

    def ready(port: int) -> None:
        doc = {"event": "ready", "prefix": ioc.prefix, "port": port, "pvs": len(ioc.pvdb),
               "motors": len(ioc.motors), "beamline": beamline, "preset": preset,
               "backend": cfg.backend, "rays": cfg.rays, "misalign": cfg.misalign,
               "seed": cfg.seed, "ca_server": server, "pid": os.getpid()}
        if as_json:
            click.echo(json.dumps(doc), nl=True)
        else:
            click.echo(f"beamtwin IOC serving {doc['pvs']} PVs of {beamline!r} under "
                       f"{ioc.prefix!r} on port {port} (backend {cfg.backend}, "
                       f"{cfg.rays} rays); Ctrl-C stops it")

    run_forever(ioc, interfaces=list(interfaces) or None, on_ready=ready, server=server)
    doc = {"event": "stopped", "prefix": ioc.prefix,
           "uptime_s": round(time.monotonic() - started, 3),
           "frames": int(ioc.detector.array_counter_rbv.value),
           "traces": int(ioc.status.traces.value)}
    emit(as_json, doc, lambda: f"beamtwin IOC {ioc.prefix!r} stopped", indent=None)
