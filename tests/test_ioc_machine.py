"""The simulated machine behind the IOCs, without Channel Access: the twin sees motors
where they are, photons scale with the ring current, the shutter stops them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ioc_sim.beamline import BeamlineIOC, check_prefix
from ioc_sim.machine import MachineConfig, SimulatedMachine
from twin.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def machine(desc):
    clock = Clock()
    m = SimulatedMachine(desc, MachineConfig(backend="xrt", rays=2000, noise=False),
                         clock=clock)
    m.test_clock = clock  # type: ignore[attr-defined]
    return m


def test_the_twin_sees_the_motor_mid_move(machine, desc):
    axis = machine.axes["sample.x"]
    start = axis.state(machine.now())[0]
    axis.move_to(start + 100.0, machine.now())
    machine.test_clock.t += 0.5 * (axis.end_time() - machine.now())
    mid = machine.load_positions()["sample.x"]
    assert start < mid < start + 100.0
    assert mid == pytest.approx(axis.state(machine.now())[0])
    positions, _, _ = machine.snapshot()
    assert positions["sample.x"] == mid
    machine.test_clock.t += 100.0
    assert machine.load_positions()["sample.x"] == pytest.approx(start + 100.0)
    axis.move_to(start, machine.now())
    machine.test_clock.t += 100.0


def test_flux_scales_with_ring_current_and_the_shutter_stops_it(machine, desc):
    current0, _ = machine.ring()
    # half an hour later (before the hourly top-up) the current has decayed
    machine.test_clock.t += 1800.0
    current1, available = machine.ring()
    assert available and current1 < current0
    positions, state, n = machine.snapshot()
    decayed = machine.observe((positions, state, n), 0.1)
    # the same instant (same drift) at the earlier current
    full = machine.observe((positions, replace(state, ring_current_mA=current0), n), 0.1)
    assert decayed.detector.stats.flux / full.detector.stats.flux == pytest.approx(
        current1 / current0, rel=1e-9)
    machine.shutter_open = False
    try:
        dark = machine.observe(machine.snapshot(), 0.1)
    finally:
        machine.shutter_open = True
    assert dark.detector.stats.flux == 0.0
    assert all(r.stats.flux == 0.0 for r in dark.diagnostics.values())
    machine.beam_lost = True
    try:
        assert machine.ring() == (0.0, False)
    finally:
        machine.beam_lost = False


def test_undulator_energy_readback(machine, desc):
    e = machine.undulator_energy_eV()
    assert 9_000 < e < 11_000  # the default beamline works at 10 keV on its 3rd harmonic
    assert machine.undulator_energy_eV(harmonic=1) == pytest.approx(e / desc.source.harmonic)


@pytest.mark.parametrize("prefix", ["", "has space:", "x" * 41, "bad!"])
def test_bad_prefixes_are_refused(prefix):
    with pytest.raises(ConfigError, match="prefix"):
        check_prefix(prefix)


def test_every_motor_gets_a_record_and_every_diagnostic_its_pvs(desc, machine):
    ioc = BeamlineIOC(desc, "T:", machine=machine)
    db = ioc.pvdb
    for name in desc.motors:
        element, axis = name.split(".")
        for field in ("", ".VAL", ".RBV", ".DMOV", ".HLM", ".LVIO", ".STOP", ".RTYP"):
            assert f"T:{element}:{axis}{field}" in db
        assert db[f"T:{element}:{axis}"] is db[f"T:{element}:{axis}.VAL"]
    for d in desc.diagnostics:
        if d.kind != "detector":
            assert f"T:{d.name}:Intensity_RBV" in db
    assert "T:det:image1:ArrayData" in db and "T:det:Stats1:CentroidX_RBV" in db
    rows = ioc.pv_table()
    assert len(rows) == len(db)
    assert {r.access for r in rows} == {"r", "rw"}
    ro = {r.name for r in rows if r.access == "r"}
    assert "T:kb_v:pitch.RBV" in ro and "T:det:Stats1:Total_RBV" in ro
    assert "T:kb_v:pitch.VAL" not in ro
    with pytest.raises(ConfigError, match="rate"):
        BeamlineIOC(desc, "T:", machine=machine, diag_rate_hz=50)
