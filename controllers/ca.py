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
  the client* (:class:`WriteRefusedError`), and raises on ``None`` or ``-1``.

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
        self.allow: set[str] = set(allow)
        self.timeout = float(timeout)
        self._pvs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.puts: list[dict[str, Any]] = []
        self.on_disconnect: list[Callable[[str], None]] = []

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

    def connect(self, names: Iterable[str], timeout: float | None = None) -> None:
        """Connect every PV in *names*, waiting at most *timeout* s in all.

        Raises
        ------
        PvNotFoundError
            Naming every PV that did not connect.
        """
        names = list(dict.fromkeys(names))
        pvs = [self.pv(n) for n in names]
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        missing: list[str] = []
        for n, p in zip(names, pvs, strict=True):
            if not p.wait_for_connection(timeout=max(deadline - time.monotonic(), 0.01)):
                missing.append(n)
        if missing:
            # a motor record's fields share its name: name the record once
            records = list(dict.fromkeys(n.split(".", 1)[0] for n in missing))
            shown = ", ".join(records[:12]) + (f" and {len(records) - 12} more"
                                               if len(records) > 12 else "")
            hint = (" Is an IOC serving this prefix, and is EPICS_CA_ADDR_LIST right?"
                    if len(missing) == len(names) else "")
            raise PvNotFoundError(f"{len(missing)} of {len(names)} PV(s) did not connect "
                                  f"within {self.timeout if timeout is None else timeout:g} s "
                                  f"(misspelled, or no IOC serves them): {shown}.{hint}")

    def connected(self, name: str) -> bool:
        """Whether *name* is connected now."""
        return bool(self.pv(name).connected)

    def _connection_changed(self, pvname: str | None = None, conn: bool = True,
                            **_: Any) -> None:
        if not conn and pvname:
            log.debug("PV %s disconnected", pvname)
            for cb in list(self.on_disconnect):
                cb(pvname)

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
        value = p.get(timeout=t, as_string=as_string, use_monitor=not fresh)
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
        t = max(self.timeout if timeout is None else timeout, MIN_TIMEOUT_S)
        if not p.connected and not p.wait_for_connection(timeout=min(t, self.timeout)):
            raise DisconnectedError(f"write to PV {name} failed: it is not connected")
        rc = p.put(value, wait=wait, timeout=t, use_complete=use_complete)
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
