"""The beam watchdog: no acquisition counts without beam, and a dead PV is no beam.

bluesky suspenders react to values, not to disconnects (shared/RELIABILITY.md).
:class:`BeamWatchdog` watches the ring current, the front-end shutter and, where
the machine publishes it, the beam-available flag, through CA monitors; each
change reaches it within milliseconds. The beam is *not* OK when the current
is below a threshold, the shutter is closed, the machine says no beam, or any
of those PVs is disconnected.

:meth:`BeamWatchdog.wait_for_beam` suspends the caller until the beam is back
(or raises :class:`BeamLostError` after a limit). :attr:`BeamWatchdog.losses`
counts losses, so an acquisition can tell whether the beam went away while it
exposed, and then discard the frame.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from agents.safety import SafetyError
from controllers.ca import Channels
from twin.errors import ConfigError

__all__ = ["BeamLostError", "BeamWatchdog"]

log = logging.getLogger(__name__)


class BeamLostError(SafetyError, RuntimeError):
    """The beam did not come back within the suspension limit."""


class BeamWatchdog:
    """Watch the beam; suspend acquisitions without it.

    Parameters
    ----------
    channels : Channels
    machine : str
        Base name of the machine device (``{P}machine:``).
    min_current_mA : float
        Below this ring current there is no beam, mA.
    """

    def __init__(self, channels: Channels, machine: str, *, min_current_mA: float = 1.0) -> None:
        if not (math.isfinite(min_current_mA) and min_current_mA >= 0):
            raise ConfigError(f"min_current_mA must be a finite number >= 0, "
                              f"got {min_current_mA!r}")
        self.channels = channels
        self.min_current_mA = float(min_current_mA)
        self.current_pv = f"{machine}RingCurrent_RBV"
        self.shutter_pv = f"{machine}Shutter_RBV"
        self.available_pv = f"{machine}BeamAvailable_RBV"
        self.pvs = [self.current_pv, self.shutter_pv, self.available_pv]
        self._cond = threading.Condition()
        self._values: dict[str, Any] = {}
        self._ok = False
        self.reason = "not started"
        self.losses = 0
        self.events: list[dict[str, Any]] = []
        self.suspended_s = 0.0

    def start(self, timeout: float | None = None) -> None:
        """Connect and subscribe (raises PvNotFoundError naming a missing PV)."""
        self.channels.connect(self.pvs, timeout)
        self.channels.on_disconnect.append(self._disconnected)
        for name in self.pvs:
            p = self.channels.pv(name)
            p.add_callback(self._changed)
            self._values[name] = self.channels.get(name, as_string=name != self.current_pv)
        self._update()

    # ------------------------------------------------------------------ state
    @property
    def beam_ok(self) -> bool:
        """Whether there is beam now."""
        with self._cond:
            return self._ok

    def _changed(self, pvname: str | None = None, value: Any = None, char_value: Any = None,
                 **_: Any) -> None:
        if pvname is None:
            return
        with self._cond:
            self._values[pvname] = value if pvname == self.current_pv else char_value
        self._update()

    def _disconnected(self, pvname: str) -> None:
        if pvname in self.pvs:
            self._update()

    def _update(self) -> None:
        reason = ""
        for name in self.pvs:
            if not self.channels.connected(name):
                reason = f"PV {name} disconnected"
                break
        if not reason:
            cur = self._values.get(self.current_pv)
            try:
                cur_f = float(cur)
            except (TypeError, ValueError):
                cur_f = math.nan
            if not cur_f >= self.min_current_mA:
                reason = f"ring current {cur_f:.3g} mA < {self.min_current_mA:g} mA"
            elif self._values.get(self.shutter_pv) != "Open":
                reason = f"shutter {self._values.get(self.shutter_pv)!r}"
            elif self._values.get(self.available_pv) not in ("Yes", None):
                reason = "machine reports no beam"
        with self._cond:
            ok = not reason
            if self._ok and not ok:
                self.losses += 1
                self.events.append({"t": time.time(), "event": "beam lost", "reason": reason})
                log.warning("beam lost: %s", reason)
            elif ok and not self._ok and self.events:
                self.events.append({"t": time.time(), "event": "beam back"})
                log.warning("beam back")
            self._ok, self.reason = ok, reason or "beam"
            self._cond.notify_all()

    def wait_for_beam(self, max_wait_s: float, *, poll_s: float = 0.25) -> float:
        """Block until there is beam; return the seconds spent waiting.

        Raises
        ------
        BeamLostError
            If the beam is not back within *max_wait_s*.
        """
        t0 = time.monotonic()
        with self._cond:
            while not self._ok:
                left = max_wait_s - (time.monotonic() - t0)
                if left <= 0:
                    raise BeamLostError(f"no beam for {max_wait_s:g} s ({self.reason}); "
                                        f"the run is aborted")
                self._cond.wait(timeout=min(poll_s, left))
                if not self._ok:  # a reconnect posts no value: look again
                    self._cond.release()
                    try:
                        self._update()
                    finally:
                        self._cond.acquire()
        waited = time.monotonic() - t0
        self.suspended_s += waited
        return waited
