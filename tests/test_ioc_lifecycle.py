"""IOC life cycle: clean shutdown on signals, restart under the same prefix, clients that
come and go. Real caproto IOCs in subprocesses, real pyepics clients."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ioc_sim.process import IocError, IocProcess, random_prefix

pytestmark = pytest.mark.ioc

ARGS = ["--backend", "xrt", "--rays", "2000", "--no-disturbances", "--diag-rate", "5"]


@pytest.fixture(scope="module")
def epics(ca_ports):
    import epics as _epics

    return _epics


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_cleanly(ca_ports, epics, sig):
    ioc = IocProcess(random_prefix(), ca_ports[1], ARGS).start()
    try:
        assert epics.caget(f"{ioc.prefix}twin:Ready_RBV", timeout=5) == 1
        epics.caput(f"{ioc.prefix}det:cam1:ImageMode", "Continuous", wait=True)
        epics.caput(f"{ioc.prefix}det:cam1:Acquire", 1)  # stop it mid-acquisition
        time.sleep(0.5)
    finally:
        rc, stopped = ioc.stop(sig)
    assert rc == 0, ioc.stderr()
    assert stopped is not None and stopped["prefix"] == ioc.prefix
    assert stopped["frames"] >= 1
    assert "Traceback" not in ioc.stderr()


def test_restart_under_the_same_prefix_resumes_monitors(ca_ports, epics):
    prefix = random_prefix()
    events: list[tuple[str, object]] = []
    first = IocProcess(prefix, ca_ports[1], ARGS).start()
    try:
        rbv = epics.PV(f"{prefix}sample:x.RBV", auto_monitor=True,
                       connection_callback=lambda conn, **kw: events.append(("conn", conn)),
                       callback=lambda value, **kw: events.append(("value", value)))
        assert rbv.wait_for_connection(timeout=5)
        assert epics.caput(f"{prefix}sample:x", 1.0, wait=True, timeout=10) == 1
        time.sleep(0.2)
        assert ("value", 1.0) in events
    finally:
        first.kill()  # kill -9: no goodbye to the clients
    assert _wait(lambda: ("conn", False) in events, 40)
    second = IocProcess(prefix, ca_ports[1], ARGS).start()
    try:
        assert _wait(lambda: events[-1] == ("conn", True) or ("conn", True) in
                     events[events.index(("conn", False)):], 40)
        n = len(events)
        assert epics.caput(f"{prefix}sample:x", -2.0, wait=True, timeout=10) == 1
        assert _wait(lambda: ("value", -2.0) in events[n:], 5)  # the old monitor resumed
        assert rbv.get(use_monitor=False) == -2.0
    finally:
        rc, _ = second.stop()
    assert rc == 0


def test_a_client_killed_mid_monitor_does_not_hurt_the_ioc(ca_ports, epics):
    with IocProcess(random_prefix(), ca_ports[2], ARGS) as ioc:
        script = (
            "import epics, time\n"
            f"p = epics.PV('{ioc.prefix}sample:image:ArrayData', auto_monitor=True)\n"
            "p.wait_for_connection(5)\n"
            "print('subscribed', flush=True)\n"
            "time.sleep(60)\n")
        clients = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                    text=True) for _ in range(3)]
        for c in clients:
            assert c.stdout is not None and c.stdout.readline().startswith("subscribed")
        for c in clients:
            c.kill()
            c.wait(timeout=10)
        # a new client is served as before
        assert epics.caput(f"{ioc.prefix}sample:y", 0.5, wait=True, timeout=10) == 1
        assert epics.caget(f"{ioc.prefix}sample:y.RBV", use_monitor=False, timeout=5) == 0.5


def test_a_dead_ioc_fails_the_harness_with_its_error(ca_ports):
    with pytest.raises(IocError, match="(?is)exited with 2.*PV prefix .*not allow"):
        IocProcess("bad prefix!", ca_ports[2], ARGS).start(timeout=30)


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False
