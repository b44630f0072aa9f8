"""How soon after a scan's end its analysis is published (goal: within 100 ms).

Runs scans of growing size on the fast twin in-process through ``run_scan`` and
reports the time from the RunEngine's stop document to the published result
(peak statistics, and the fit where one is asked for), as ``run_scan`` records it.

    python experiments/scan_latency.py [--json]
"""

from __future__ import annotations

import json
import sys
import tempfile

from controllers.scan_request import ScanRequest, parse_args
from controllers.scan_run import run_scan
from twin.presets import load_preset
from twin.simulator import TwinBeamline
from twin.specimen import Specimen

CASES = [("ascan", ["ss.hcen", "-1", "1", "20"], {"detector": "i0", "fit": "gaussian"}),
         ("ascan", ["ss.hcen", "-1", "1", "200"], {"detector": "i0", "fit": "gaussian"}),
         ("ascan", ["sample.x", "-20", "20", "200"], {"detector": "xrf", "fit": "erf"}),
         ("amesh", ["sample.x", "-20", "20", "40", "sample.y", "-20", "20", "40"],
          {"detector": "xrf"})]


def main() -> None:
    desc = load_preset(None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for plan, args, extra in CASES:
            bl = TwinBeamline(desc, backend="fast", rays=500, seed=0)
            d = parse_args(plan, args)
            d.update(extra)
            doc = run_scan(ScanRequest.from_dict(d), bl, desc, out_dir=tmp,
                           specimen=Specimen.default(0), progress_bar=False, live_plot=False)
            rows.append({"plan": plan, "points": doc["points"], "fit": extra.get("fit", "none"),
                         "latency_ms": doc["analysis_latency_ms"]})
    out = {"rows": rows, "max_latency_ms": max(r["latency_ms"] for r in rows), "goal_ms": 100}
    if "--json" in sys.argv:
        print(json.dumps(out, indent=2))
    else:
        for r in rows:
            print(f"{r['plan']:>6} {r['points']:>5} points, fit {r['fit']:<8} "
                  f"{r['latency_ms']:8.2f} ms")


if __name__ == "__main__":
    main()
