"""Calibrate the fast twin's hidden errors to observations made by the xrt twin.

The "real" beamline is the xrt twin with hidden errors the calibration never sees
(seeded, 1x). Calibration observes it at known motor positions (scans of a few
motors, as beamline staff would make), then fits the fast twin's hidden errors
by gradient descent, in two stages as beamline staff align: upstream first
(front end, M1, DCM; screens and BPM), then the KB, sample and detector with
the upstream result held fixed.

It reports (one JSON document on stdout, and ``calibration.png``):

* per motor, the true and fitted offsets in units of its misalign_sigma;
* the prediction error on held-out motor settings (random moves not used in
  the fit) for the calibrated twin and for the uncalibrated (ideal) twin.

Run: ``python experiments/calibrate_demo.py [--seed S] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from twin import HiddenErrors, Twin, default_preset
from twin.calibrate import calibrate

UPSTREAM = ["fe_slits.hgap", "fe_slits.vgap", "fe_slits.hcen", "fe_slits.vcen", "m1.pitch",
            "m1.height", "m1.roll", "m1.bend", "dcm.pitch2", "dcm.roll2", "dcm.perp"]
DOWNSTREAM = ["kb_h.pitch", "kb_h.height", "kb_h.bend", "kb_v.pitch", "kb_v.height",
              "kb_v.bend", "sample.x", "sample.y", "sample.z", "detector.x", "detector.y"]


def scans(desc, motors, k=3.0):
    """Design, then each motor at +-k sigma: the calibration scans."""
    out = [{}]
    for m in motors:
        spec = desc.motor(m)
        out += [{m: spec.position + k * spec.misalign_sigma},
                {m: spec.position - k * spec.misalign_sigma}]
    return out


def held_out(desc, n, seed):
    """Random moves of every scanned motor (never seen by the fit)."""
    rng = np.random.default_rng(seed)
    motors = [m for m in UPSTREAM + DOWNSTREAM if not m.startswith(("detector", "fe_slits.h",
                                                                   "fe_slits.v"))]
    return [{m: desc.motor(m).position + 2 * desc.motor(m).misalign_sigma * rng.standard_normal()
             for m in rng.choice(motors, 3, replace=False)} for _ in range(n)]


def prediction_error(desc, truth_obs, hidden, configs, names, rays, seed):
    twin = Twin(desc, backend="fast", rays=rays)
    errs = {n: [] for n in names}
    for c, obs in zip(configs, truth_obs, strict=True):
        pred = twin.trace(c, hidden=hidden, seed=seed)
        for n in names:
            a, b = obs.reading(n).stats, pred.reading(n).stats
            errs[n].append(np.hypot(a.centroid_x_um - b.centroid_x_um,
                                    a.centroid_y_um - b.centroid_y_um))
    return {n: float(np.nanmedian(v)) for n, v in errs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--rays", type=int, default=3000)
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    desc = default_preset()
    truth = HiddenErrors.draw(desc, 1.0, args.seed)
    real = Twin(desc, rays=5000)  # the "real" beamline: xrt, its own rays (seed 3)
    t0 = time.perf_counter()
    obs_a = [(c, real.trace(c, hidden=truth, seed=3)) for c in
             scans(desc, ["fe_slits.hcen", "fe_slits.vcen", "m1.pitch", "m1.bend", "dcm.pitch2",
                          "dcm.roll2"])]
    stage_a = calibrate(desc, obs_a, motors=UPSTREAM,
                        diagnostics=["m1_screen", "dcm_bpm", "dcm_screen", "i0"],
                        rays=args.rays, seed=8)
    obs_b = [(c, real.trace(c, hidden=truth, seed=3)) for c in
             scans(desc, ["kb_h.pitch", "kb_v.pitch", "kb_h.bend", "kb_v.bend", "sample.z",
                          "kb_h.height", "kb_v.height"])]
    stage_b = calibrate(desc, obs_b, motors=DOWNSTREAM, diagnostics=["sample", "detector"],
                        rays=args.rays, seed=8, fixed=stage_a.hidden)
    fit_s = time.perf_counter() - t0
    recovery = {**stage_a.recovery(truth, desc), **stage_b.recovery(truth, desc)}
    configs = held_out(desc, 20, args.seed + 1)
    truth_obs = [real.trace(c, hidden=truth, seed=3) for c in configs]
    names = ["dcm_bpm", "sample", "detector"]
    calibrated = prediction_error(desc, truth_obs, stage_b.hidden, configs, names, args.rays, 8)
    ideal = prediction_error(desc, truth_obs, HiddenErrors.none(), configs, names, args.rays, 8)
    doc = {
        "seed": args.seed, "rays": args.rays, "fit_seconds": fit_s,
        "observations": len(obs_a) + len(obs_b),
        "evaluations": len(stage_a.loss_history) + len(stage_b.loss_history),
        "residual_rms": {"upstream": stage_a.residual_rms, "downstream": stage_b.residual_rms},
        "recovery": recovery,
        "held_out_centroid_error_um": {"calibrated": calibrated, "uncalibrated": ideal},
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names_m = list(recovery)
    sig = [desc.motor(n).misalign_sigma for n in names_m]
    fig, ax = plt.subplots(figsize=(12, 4))
    x = np.arange(len(names_m))
    ax.bar(x - 0.2, [recovery[n]["true"] / s for n, s in zip(names_m, sig, strict=True)], 0.4,
           label="true offset")
    ax.bar(x + 0.2, [recovery[n]["fitted"] / s for n, s in zip(names_m, sig, strict=True)], 0.4,
           label="fitted offset")
    ax.set_xticks(x, names_m, rotation=70, fontsize=8)
    ax.set_ylabel("offset / misalign_sigma")
    ax.set_title(f"calibration of the fast twin on xrt observations (seed {args.seed})")
    ax.legend()
    fig.tight_layout()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.out) / "calibration.png", dpi=110)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
