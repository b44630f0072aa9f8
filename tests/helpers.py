"""Small helpers shared by the IOC tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, period: float = 0.01) -> bool:
    """Poll *cond* until it holds (True) or *timeout* s pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(period)
    return False


def get(epics, name: str, **kw):
    """A fresh value of PV *name* from the server (not the monitor cache); fails if none."""
    value = epics.caget(name, timeout=5.0, use_monitor=False, **kw)
    if value is None:
        raise AssertionError(f"caget {name} timed out")
    return value
