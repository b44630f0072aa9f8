"""Channel Access with every return value checked and every write on an allowlist.

pyepics fails quietly: a ``get`` that times out returns ``None``, a ``put`` that
times out returns ``-1``, and a ``put`` to a disconnected PV returns ``None``
(shared/RELIABILITY.md). An unknown PV name gets no "not found" from EPICS, only
a connection timeout. :class:`Channels` is the one place in beamtwin that talks
to pyepics; it turns each of those into a typed error that names the PV:

* :meth:`Channels.connect` connects a list of PVs with a bounded wait, before a
  run starts, and names every PV that did not connect (:class:`PvNotFoundError`);
* :meth:`Channels.get` raises :class:`DisconnectedError` instead of returning None;
* :meth:`Channels.put` refuses a PV outside the allowlist *before anything leaves
  the client* (:class:`WriteRefusedError`), and raises on ``None`` or ``-1``;
* pyepics' own exceptions (``ChannelAccessGetFailure`` when a server dies between
  the request and its answer) become :class:`DisconnectedError` naming the PV;
* **a lost server stays lost for this client**: once a PV disconnects, every
  later write to a PV of the same server (host and port) is refused before it
  is sent, even after the server comes back. A restarted IOC has restarted
  motors; a run that wrote to it would carry on from positions it never read.
  :meth:`Channels.lost` says which server went and when.

Every write is also counted and logged in :attr:`Channels.puts`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agents.safety import SafetyError
from twin.errors import BeamtwinError, UnknownNameError

__all__ = ["CaError", "DisconnectedError", "PutTimeoutError", "PvNotFoundError",
           "WriteRefusedError", "Channels"]

log = logging.getLogger(__name__)

#: shortest timeout of a get or put, s: a caller's deadline that has just passed still gets
#: one brief try (and pyepics no timeout <= 0, which it only warns about)
MIN_TIMEOUT_S = 0.05


class CaError(BeamtwinError, RuntimeError):
    """A Channel Access operation that failed (root of the CA errors)."""


class DisconnectedError(CaError):
    """A PV that is not connected, or did not answer in time."""


class PutTimeoutError(CaError):
    """A put whose completion did not come in time."""


class PvNotFoundError(UnknownNameError, CaError):
    """PVs that did not connect: a wrong name, or a server that is not there."""


class WriteRefusedError(SafetyError, PermissionError):
    """A write to a PV outside the allowlist (nothing was sent)."""


def _host(p: Any) -> str | None:
    """The "host:port" that last served pyepics PV *p* (kept after a disconnect;
    read without the PV's ``host`` property, which would ask the server)."""
    args = getattr(p, "_args", None) if p is not None else None
    return args.get("host") if isinstance(args, dict) else None


class Channels:
    """Checked access to a set of PVs.

    Parameters
    ----------
    allow : iterable of str
        PVs that may be written; every other write is refused in the client.
    timeout : float
        Default connection and get timeout, s.
    """

    def __init__(self, allow: Iterable[str] = (), *, timeout: float = 2.0) -> None:
        import epics  # imported here: libca reads its environment at first use

        self._epics = epics
        #: pyepics' exceptions: a failed get does not derive from the others
        self._ca_errors: tuple[type[BaseException], ...] = tuple(
            getattr(epics.ca, n) for n in ("ChannelAccessException", "ChannelAccessGetFailure",
                                           "CASeverityException") if hasattr(epics.ca, n))
        self.allow: set[str] = set(allow)
        self.timeout = float(timeout)
        self._pvs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.puts: list[dict[str, Any]] = []
        self.on_disconnect: list[Callable[[str], None]] = []
        #: servers ("host:port") that lost a connection while this client ran,
        #: with the first PV lost and when (time.time())
        self.lost_servers: dict[str, tuple[str, float]] = {}

    # ------------------------------------------------------------------ connection
    def pv(self, name: str) -> Any:
        """The (cached, monitored) pyepics PV object of *name*."""
        p = self._pvs.get(name)  # no lock on a hit: CA callbacks call this
        if p is not None:
            return p
        with self._lock:
            p = self._pvs.get(name)
            if p is None:
                # a PV object of its own, not pyepics' shared cache: ophyd keeps
                # PVs of its own class there, and the two must not meet
                p = self._epics.PV(name, connection_callback=self._connection_changed,
                                   auto_monitor=True)
                self._pvs[name] = p
            return p

    def connect(self, names: Iterable[str], timeout: float | None = None, *,
                max_wait_s: float | None = None) -> None:
        """Connect every PV in *names*; give up after *timeout* s without progress.

        The bound adapts to the server's load: each PV that connects gives the
        rest another *timeout* s, up to *max_wait_s* in all (default: 6 x
        *timeout*). A loaded IOC that answers slowly is waited for; a name that
        no server answers still fails within *timeout* of the last progress.

        Raises
        ------
        PvNotFoundError
            Naming every PV that did not connect, and telling a slow server
            (other fields of the same record, or of the same server, connected)
            from a name that nothing serves.
        """
        names = list(dict.fromkeys(names))
        pvs = [self.pv(n) for n in names]
        stall = self.timeout if timeout is None else float(timeout)
        cap = 6 * stall if max_wait_s is None else float(max_wait_s)
        start = time.monotonic()
        pending = dict(zip(names, pvs, strict=True))
        last_progress = start
        while pending:
            now = time.monotonic()
            if now - last_progress > stall or now - start > cap:
                break
            for n in [n for n, p in pending.items() if p.connected]:
                del pending[n]
                last_progress = time.monotonic()
            if pending:
                first = next(iter(pending.values()))
                first.wait_for_connection(timeout=0.05)
        missing = list(pending)
        if missing:
            waited = time.monotonic() - start
            connected = set(names) - set(missing)
            bases = {n.split(".", 1)[0] for n in connected}
            # a motor record's fields share its name: name the record once
            records = list(dict.fromkeys(n.split(".", 1)[0] for n in missing))
            slow = [r for r in records if r in bases]
            shown = ", ".join(records[:12]) + (f" and {len(records) - 12} more"
                                               if len(records) > 12 else "")
            if not connected:
                why = ("no IOC answered any of them. Is an IOC serving this prefix, and is "
                       "EPICS_CA_ADDR_LIST right?")
            elif slow:
                why = (f"{len(slow)} of these records answer on other fields, so their "
                       f"server is up: it is slow (loaded?), then raise the connect bound "
                       f"(BEAMTWIN_CONNECT_TIMEOUT_S), or it lacks these fields")
            else:
                why = ("other PVs connected, so these names are misspelled or their IOC is "
                       "not running")
            raise PvNotFoundError(f"{len(missing)} of {len(names)} PV(s) did not connect "
                                  f"({waited:.1f} s waited, {stall:g} s without progress "
                                  f"allowed): {shown}. {why}")

    def connected(self, name: str) -> bool:
        """Whether *name* is connected now."""
        return bool(self.pv(name).connected)

    def _connection_changed(self, pvname: str | None = None, conn: bool = True,
                            **_: Any) -> None:
        if not conn and pvname:
            host = _host(self._pvs.get(pvname))
            if host and host not in self.lost_servers:
                self.lost_servers[host] = (pvname, time.time())
                log.warning("lost the server %s (PV %s disconnected); no more writes go "
                            "to it from this client", host, pvname)
            for cb in list(self.on_disconnect):
                cb(pvname)

    def lost(self, name: str) -> str | None:
        """Why writes to *name* are refused (its server was lost), or None."""
        if not self.lost_servers:
            return None
        p = self._pvs.get(name)
        host = _host(p)
        if host in self.lost_servers:
            first, when = self.lost_servers[host]
        elif p is not None and not p.connected and len(self.lost_servers) == 1:
            first, when = next(iter(self.lost_servers.values()))
        else:
            return None
        ago = time.time() - when
        return (f"its server {host or '?'} was lost {ago:.1f} s ago (PV {first} "
                f"disconnected); nothing more is written to it in this run")

    # ------------------------------------------------------------------ reading
    def get(self, name: str, *, as_string: bool = False, fresh: bool = False,
            timeout: float | None = None) -> Any:
        """Value of *name*; *fresh* asks the server instead of the monitor cache.

        Raises
        ------
        DisconnectedError
            If the PV is not connected or does not answer within *timeout*.
        """
        p = self.pv(name)
        # a caller's deadline may already have passed: still ask once, briefly
        t = max(self.timeout if timeout is None else timeout, MIN_TIMEOUT_S)
        if not p.connected and not p.wait_for_connection(timeout=t):
            raise DisconnectedError(f"PV {name} is not connected")
        try:
            value = p.get(timeout=t, as_string=as_string, use_monitor=not fresh)
        except self._ca_errors as exc:
            raise DisconnectedError(f"PV {name}: the read failed ({exc}); its server "
                                    f"went away or refused it") from exc
        if value is None:
            raise DisconnectedError(f"PV {name} did not answer within {t:g} s")
        return value

    def get_float(self, name: str, **kw: Any) -> float:
        """A scalar *name* as a float (NaN stays NaN)."""
        return float(self.get(name, **kw))

    # ------------------------------------------------------------------ writing
    def check_allowed(self, name: str) -> None:
        """Raise :class:`WriteRefusedError` unless *name* is on the allowlist."""
        if name not in self.allow:
            raise WriteRefusedError(f"write to PV {name} refused: it is not on this run's "
                                    f"allowlist ({len(self.allow)} PVs)")

    def put(self, name: str, value: Any, *, wait: bool = False, timeout: float | None = None,
            use_complete: bool = False) -> None:
        """Write *value* to *name*; refused before sending unless *name* is allowed.

        Parameters
        ----------
        wait : bool
            Block until the server reports completion (put-callback).
        use_complete : bool
            Ask for completion without blocking; poll :meth:`put_complete`.

        Raises
        ------
        WriteRefusedError
            *name* is not on the allowlist (nothing was sent).
        DisconnectedError
            The PV is not connected (pyepics returned None).
        PutTimeoutError
            Completion did not come within *timeout* (pyepics returned -1).
        """
        self.check_allowed(name)
        if isinstance(value, float) and not math.isfinite(value):
            raise SafetyError(f"write of {value!r} to PV {name} refused: not a finite number")
        p = self.pv(name)
        lost = self.lost(name)
        if lost is not None:
            raise DisconnectedError(f"write of {value!r} to PV {name} refused: {lost}")
        t = max(self.timeout if timeout is None else timeout, MIN_TIMEOUT_S)
        if not p.connected:
            # never wait for a reconnection here: it may be a restarted server
            raise DisconnectedError(f"write of {value!r} to PV {name} refused: it is not "
                                    f"connected")
        try:
            rc = p.put(value, wait=wait, timeout=t, use_complete=use_complete)
        except self._ca_errors as exc:
            raise DisconnectedError(f"write of {value!r} to PV {name} failed: {exc}") from exc
        self.puts.append({"pv": name, "value": value if not hasattr(value, "tolist")
                          else value.tolist(), "t": time.time(), "rc": rc})
        if rc is None:
            raise DisconnectedError(f"write of {value!r} to PV {name} failed: not connected")
        if rc == -1 or (isinstance(rc, int) and rc < 0):
            raise PutTimeoutError(f"write of {value!r} to PV {name}: no completion within "
                                  f"{t:g} s")

    def put_complete(self, name: str) -> bool:
        """Whether the last ``use_complete`` put to *name* has completed."""
        return bool(self.pv(name).put_complete)

    def close(self) -> None:
        """Drop every PV's callbacks and monitors.

        The lock is not held while disconnecting: a CA callback in flight may need
        :meth:`pv`, and libca waits for it to finish.
        """
        self.on_disconnect.clear()
        with self._lock:
            pvs = list(self._pvs.values())
        for p in pvs:
            try:
                p.clear_callbacks()
            except Exception:  # pragma: no cover - best effort at teardown
                pass
        for p in pvs:
            # drop this PV's own monitor only: pyepics shares the channel itself with
            # every other PV object of that name (ophyd's too), so it stays open
            try:
                p.clear_auto_monitor()
            except Exception:  # pragma: no cover - best effort at teardown
                pass
