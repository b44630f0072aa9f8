"""Shared fixtures. xrt is real in every test that traces."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from twin import Twin, default_preset
from twin.presets import load_preset

PRESETS = Path(__file__).parent / "presets"

# xrt's bundled pyTTE emits a scipy deprecation warning at import; import it once, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import twin._xrt_backend  # noqa: F401


def pytest_report_header(config: pytest.Config) -> str:
    return f"beamtwin tests: PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED', 'random')}"


@pytest.fixture(scope="session")
def desc():
    return default_preset()


@pytest.fixture(scope="session")
def xrt_twin(desc):
    """One xrt twin of the default beamline, shared (its caches make tests fast)."""
    return Twin(desc, backend="xrt", rays=5000)


@pytest.fixture(scope="session")
def mixed_desc():
    """A user's beamline with every deflection direction, a Gaussian source,
    a toroidal mirror, a CRL and a round aperture."""
    return load_preset(PRESETS / "mixed.toml")


@pytest.fixture(scope="session")
def ca_ports():
    """Loopback CA ports for the IOC tests, and a client environment that finds only them.

    Set before pyepics or ophyd first talk CA (libca reads it once).
    """
    from ioc_sim.process import client_env, free_port

    ports = []
    while len(ports) < 3:
        p = free_port()
        if p not in ports:
            ports.append(p)
    os.environ.update(client_env(ports))
    return ports


@pytest.fixture(scope="session")
def epics(ca_ports):
    """pyepics, imported after the CA client environment is set."""
    import epics as _epics

    return _epics
