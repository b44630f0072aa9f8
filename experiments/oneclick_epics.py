"""Sim-to-real check of one-click alignment over EPICS (issue 6).

Run: ``python experiments/oneclick_epics.py [--seeds 1,2,3] [--backend xrt] [--agent separable]``
(the agent defaults to ``auto``, as in ``beamtwin align``).

For each seed it starts ``beamtwin ioc`` with the **xrt** twin behind it (by
default), day-one hidden errors and the disturbance model on (drift, vibration,
gap-dependent source, ring decay and top-up), none of which the agents were
tuned on (they were tuned and trained on the fast twin, without disturbances).
It then runs ``beamtwin align --epics`` against it: motors move at their real
speeds, so the run's wall time is beamline time. It writes
``docs/oneclick_epics.json`` (or ``--doc``: every run's document, less the per-move
detail) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ioc_sim.process import IocProcess, client_env, free_port, random_prefix

DOCS = Path(__file__).resolve().parent.parent / "docs"


def run_one(seed: int, backend: str, rays: int, agent: str, budget: int, out: Path) -> dict:
    port = free_port()
    env = dict(os.environ, **client_env([port]))
    prefix = random_prefix()
    args = ["--backend", backend, "--rays", str(rays), "--misalign", "1", "--seed", str(seed),
            "--disturbances"]
    os.environ.update(client_env([port]))
    with IocProcess(prefix, port, args):
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "controllers.cli", "align", "--epics",
                            "--prefix", prefix, "--agent", agent, "--budget", str(budget),
                            "--seed", str(seed), "--out", str(out / f"seed{seed}"),
                            "--no-progress", "--json"], capture_output=True, text=True, env=env,
                           timeout=3600)
        wall = time.monotonic() - t0
    doc = json.loads(r.stdout)
    doc["command_wall_s"] = wall
    doc["returncode"] = r.returncode
    doc.pop("dry_run", None)
    for s in doc.get("stages", []):
        s.pop("refusals", None)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--backend", default="xrt", choices=["xrt", "fast"])
    ap.add_argument("--rays", type=int, default=5000)
    ap.add_argument("--agent", default="auto")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--out", default=None, help="Folder for the runs' files [temporary].")
    ap.add_argument("--doc", default="oneclick_epics.json",
                    help="File in docs/ for the results [oneclick_epics.json].")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="beamtwin-oneclick-"))
    runs = []
    for seed in (int(s) for s in a.seeds.split(",")):
        doc = run_one(seed, a.backend, a.rays, a.agent, a.budget, out)
        runs.append(doc)
        print(f"seed {seed}: {'aligned' if doc.get('success') else 'NOT aligned'}, stages "
              f"{doc.get('stages_aligned')}/{len(doc.get('stages', []))}, "
              f"{doc.get('evaluations')} evaluations, {doc.get('beamline_time_s', 0):.0f} s",
              file=sys.stderr, flush=True)
    summary = {
        "backend": a.backend, "rays": a.rays, "agent": a.agent, "budget": a.budget,
        "disturbances": True, "misalign": 1.0, "runs": len(runs),
        "success_rate": sum(bool(r.get("success")) for r in runs) / len(runs),
        "stage_success": {st: sum(bool(s["success"]) for r in runs for s in r["stages"]
                                  if s["stage"] == st) / len(runs)
                          for st in ("m1", "mono", "slits", "kb", "sample")},
        "median_evaluations": sorted(r["evaluations"] for r in runs)[len(runs) // 2],
        "median_beamline_time_s": sorted(r["beamline_time_s"] for r in runs)[len(runs) // 2],
        "command": f"python experiments/oneclick_epics.py --seeds {a.seeds} --backend "
                   f"{a.backend} --rays {a.rays} --agent {a.agent} --budget {a.budget} "
                   f"--doc {a.doc}",
    }
    DOCS.mkdir(exist_ok=True)
    (DOCS / a.doc).write_text(json.dumps({"summary": summary, "runs": runs},
                                                         indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
