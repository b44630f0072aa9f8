"""Is the focus reachable in one-click alignment? The stages' motors at their true ideal.

Run: ``python experiments/oneclick_reachable.py [--seed 1] [--rays 5000]``.
``beamtwin align`` misaligns all 28 motors, also those no stage moves. This puts
every stage motor at its true ideal position (the design minus its hidden error),
leaves the other motors' errors in place, traces with xrt, and compares the beam at
the sample with the ideal beamline's (same rays). It then adds the other motors'
errors one at a time. It prints one JSON document.
"""

from __future__ import annotations

import argparse
import json

from agents.stages import STAGE_ORDER, stages
from twin import default_preset
from twin.hidden import HiddenErrors
from twin.tracer import Twin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rays", type=int, default=5000)
    args = ap.parse_args()
    desc = default_preset()
    hidden = HiddenErrors.draw(desc, 1.0, args.seed)
    ideal_pos = hidden.ideal_positions(desc)
    st = stages(desc)
    staged = [m for n in STAGE_ORDER for m in st[n].motors]
    others = [m for m in desc.motors if m not in staged and hidden.offset(m) != 0]
    twin = Twin(desc, backend="xrt", rays=args.rays)
    ref = twin.trace({}, seed=args.seed).reading("sample").stats
    at = {m: ideal_pos[m] for m in staged}

    def ratios(h: HiddenErrors) -> dict[str, float]:
        s = twin.trace(at, hidden=h, seed=args.seed).reading("sample").stats
        return {"fwhm_x_ratio": s.fwhm_x_um / ref.fwhm_x_um,
                "fwhm_y_ratio": s.fwhm_y_um / ref.fwhm_y_um, "flux_ratio": s.flux / ref.flux}

    staged_only = {m: hidden.offset(m) for m in staged}
    doc = {"seed": args.seed, "rays": args.rays,
           "errors_no_stage_corrects": {m: hidden.offset(m) for m in others},
           "stages_ideal_others_misaligned": ratios(hidden),
           "one_error_at_a_time": {m: ratios(HiddenErrors({**staged_only, m: hidden.offset(m)}))
                                   for m in others}}
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
