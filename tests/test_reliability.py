"""The reliability campaign at reduced counts (``beamtwin bench reliability --quick``).

The full campaign (``beamtwin bench reliability``: 100,000 fuzzed puts, 50 + 50 IOC
kills, 1,000 writer kills, ...) is a nightly script; its figures are in
docs/controllers.md. This runs every part of it, for real, and holds the same goals.
"""

from __future__ import annotations

import random

import pytest

from controllers.reliability import GOALS, QUICK, run_campaign


# IOCs die on purpose: gets in flight inside pyepics time out, and pyepics says so
@pytest.mark.filterwarnings(r"ignore:ca.get\(.*\) timed out:UserWarning")
def test_the_reliability_campaign_holds_every_goal(ca_ports, desc, tmp_path):
    seed = random.SystemRandom().randrange(2 ** 31)  # fresh each run; printed on failure
    doc = run_campaign(desc, QUICK, seed=seed, ports=ca_ports, out_dir=tmp_path)
    assert set(doc["goals"]) == set(GOALS)
    assert doc["passed"], (seed, doc["goals"], {k: doc[k].get("failures") or doc[k]
                                                for k in doc if isinstance(doc[k], dict)})
    # every part ran, with its counts
    assert doc["fuzz"]["puts"] == QUICK.fuzz_puts
    assert doc["align_kills"]["runs"] == QUICK.align_kills
    assert doc["scan_kills"]["runs"] == QUICK.scan_kills
    assert doc["writer_kills"]["kills"] == QUICK.writer_kills
    assert doc["disk_faults"]["runs"] == QUICK.disk_faults
    assert doc["scan_requests"]["requests"] == QUICK.scan_requests
    assert doc["cli"]["invocations"] == QUICK.cli
    assert doc["soak"]["operations"] > 0 and doc["soak"]["errors"] == 0
