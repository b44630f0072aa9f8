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
