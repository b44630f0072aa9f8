"""The stabiliser's loop over EPICS: achieved rate against asked rate (issue 8).

Run: ``python experiments/stabilize_epics.py [--rates 50,100,200,500] [--seconds 10]``.

It calibrates a stabiliser on the twin (``beamtwin stabilize calibrate``), starts
``beamtwin ioc`` (fast twin, diagnostics at 20 Hz, the disturbances on), moves the
undulator gap and the neighbour's gap during each run, and runs
``beamtwin stabilize run --epics`` with ``ff_fb`` at each rate. It writes
``docs/stabilize_epics.json``: per rate the achieved rate, the period's median and
99th percentile, the corrector's own time, the setpoints written and the refusals.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ioc_sim.process import IocProcess, client_env, free_port, random_prefix

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="50,100,200,500")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--doc", type=Path, default=DOCS / "stabilize_epics.json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model = tmp / "stabilizer.json"
    subprocess.run([sys.executable, "-m", "controllers.cli", "stabilize", "calibrate",
                    "--out", str(model), "--json"], check=True, capture_output=True, text=True)
    port = free_port()
    env = dict(os.environ, **client_env([port]))
    os.environ.update(client_env([port]))
    prefix = random_prefix()
    import epics

    out = []
    with IocProcess(prefix, port, ["--backend", "fast", "--rays", "5000", "--diag-rate", "20",
                                   "--disturbances"]):
        for rate in [float(r) for r in a.rates.split(",")]:
            def move() -> None:  # the gaps move while the loop runs
                time.sleep(1.0)
                epics.caput(f"{prefix}undulator:gap", 8.5, wait=False)
                epics.caput(f"{prefix}machine:NeighbourGap", 18.0, wait=True)

            mover = threading.Thread(target=move, daemon=True)
            mover.start()
            r = subprocess.run([sys.executable, "-m", "controllers.cli", "stabilize", "run",
                                "--epics", "--prefix", prefix, "--model", str(model),
                                "--rate", str(rate), "--duration", str(a.seconds), "--json"],
                               capture_output=True, text=True, env=env, timeout=600)
            mover.join()
            doc = json.loads(r.stdout)
            doc["returncode"] = r.returncode
            out.append(doc)
            print(json.dumps({k: doc.get(k) for k in ("target_rate_hz", "rate_hz", "period_ms",
                                                      "compute_us", "writes", "refused")}),
                  flush=True)
            epics.caput(f"{prefix}undulator:gap", 7.242, wait=True, timeout=60)
            epics.caput(f"{prefix}machine:NeighbourGap", 12.0, wait=True)
    a.doc.write_text(json.dumps({"seconds": a.seconds, "runs": out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
