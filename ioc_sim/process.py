"""Start beamtwin IOCs in subprocesses (tests, benchmarks, scripts) and clean them up.

Each IOC gets its own CA port (two servers on one host must not share one),
a random prefix, and is waited for until it prints its ``ready`` line; one
that dies or stays silent fails the test with its stderr, never a hang.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twin.errors import BeamtwinError

__all__ = ["IocError", "IocProcess", "free_port", "random_prefix", "client_env"]


class IocError(BeamtwinError, RuntimeError):
    """An IOC that did not start, or did not stop cleanly."""


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (CA uses both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise IocError("no free port for a CA server")


def random_prefix() -> str:
    """``BTT<hex>:``, unique per test run."""
    return f"BTT{secrets.token_hex(3).upper()}:"


def client_env(ports: list[int]) -> dict[str, str]:
    """Environment for CA clients that find servers on these loopback ports only."""
    return {"EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in ports),
            "EPICS_CA_MAX_ARRAY_BYTES": str(64 * 1024 * 1024),
            "EPICS_CA_CONN_TMO": "5"}


class IocProcess:
    """``python -m ioc_sim`` in a subprocess.

    Parameters
    ----------
    prefix : str
    port : int
    args : list of str
        More ``beamtwin ioc`` options.
    module : str
        What to run: ``ioc_sim`` (the beamline), or ``ioc_sim.bench_server``.
    """

    def __init__(self, prefix: str, port: int, args: list[str] | None = None, *,
                 module: str = "ioc_sim") -> None:
        self.prefix, self.port = prefix, port
        self.args = list(args or [])
        self.module = module
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] | None = None
        fd, name = tempfile.mkstemp(prefix="beamtwin-ioc-", suffix=".err")
        os.close(fd)
        self._stderr_path = Path(name)

    def start(self, timeout: float = 90.0) -> IocProcess:
        """Start and wait for the ready line; raise :class:`IocError` with stderr if none."""
        env = dict(os.environ)
        env["EPICS_CA_SERVER_PORT"] = str(self.port)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", self.module, "--prefix", self.prefix, "--port",
               str(self.port), "--interface", "127.0.0.1", "--json", *self.args]
        self._err = open(self._stderr_path, "w")  # noqa: SIM115 - closed in stop()
        # a session of its own: a Ctrl-C meant for the client does not kill the IOC
        # before the client has stopped its motors
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        said: list[str] = []
        if self.proc.stdout is None:  # pragma: no cover - stdout=PIPE above
            raise IocError("no stdout pipe")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = "".join(said) + self.proc.stdout.read()
                raise IocError(f"IOC {self.prefix!r} exited with {self.proc.returncode} before "
                               f"it was ready:\n{out}{self.stderr()}")
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                said.append(line)
                if line.strip().startswith("{"):
                    doc = json.loads(line)
                    if doc.get("event") == "ready":
                        self.ready = doc
                        return self
        self.kill()
        raise IocError(f"IOC {self.prefix!r} on port {self.port} was not ready within "
                       f"{timeout:.0f} s:\n{self.stderr()}")

    def stderr(self) -> str:
        """What the IOC printed on stderr so far (the last 4000 characters)."""
        try:
            return self._stderr_path.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, dict | None]:
        """Send *sig*; return (exit status, the ``stopped`` document)."""
        if self.proc is None:
            return 0, None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise IocError(f"IOC {self.prefix!r} did not stop within {timeout} s after "
                           f"signal {sig}:\n{self.stderr()}") from None
        finally:
            self._err.close()
        stopped = None
        for line in out.splitlines():
            if line.strip().startswith("{"):
                doc = json.loads(line)
                if doc.get("event") == "stopped":
                    stopped = doc
        return self.proc.returncode, stopped

    def kill(self) -> None:
        """Kill at once (SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> IocProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except IocError:
                self.kill()
