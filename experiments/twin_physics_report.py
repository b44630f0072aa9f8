"""Physics figures of the xrt twin of the default beamline (docs/twin.md).

Run: ``python experiments/twin_physics_report.py [--rays N] [--out DIR]``. It prints one
JSON document with every figure and writes ``twin_physics.png`` (the sweeps as plots).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np

from twin import Twin, default_preset, physics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rays", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    desc = default_preset()
    tw = Twin(desc, rays=args.rays)
    seed = args.seed

    def sample(**sets):
        return tw.trace(sets, seed=seed).diagnostics["sample"].stats

    out: dict = {"rays": args.rays, "seed": seed}
    ideal = tw.trace(seed=seed)
    out["ideal"] = ideal.to_dict()

    pitches = np.array([-20, -10, -5, -2, 0, 2, 5, 10, 20], dtype=float)
    kb = {}
    for mirror, axis in (("kb_v", "y"), ("kb_h", "x")):
        st = [sample(**{f"{mirror}.pitch": p}) for p in pitches]
        cen = [getattr(s, f"centroid_{axis}_um") for s in st]
        fw = [getattr(s, f"fwhm_{axis}_um") for s in st]
        q = desc.design_positions()[f"{mirror}.bend"]
        kb[mirror] = {"pitch_urad": pitches.tolist(), "centroid_um": cen, "fwhm_um": fw,
                      "slope_um_per_urad": float(np.polyfit(pitches, cen, 1)[0]),
                      "expected_2q_um_per_urad": 2 * q * 1e-3}
    out["kb_pitch_sweep"] = kb

    p2 = np.array([-60, -40, -24, -16, -8, 0, 8, 16, 24, 40, 60], dtype=float)
    f0 = ideal.diagnostics["dcm_bpm"].stats.flux
    rel = [tw.trace({"dcm.pitch2": p}, seed=seed).diagnostics["dcm_bpm"].stats.flux / f0
           for p in p2]
    out["dcm_detuning"] = {"pitch2_urad": p2.tolist(), "relative_flux": rel}

    gaps = [0.4, 0.3, 0.2, 0.1, 0.05]
    out["fe_slit_hgap"] = {"hgap_mm": gaps, "detector_flux": [
        tw.trace({"fe_slits.hgap": g}, seed=seed).detector.stats.flux for g in gaps]}

    dcm, und = desc.element("dcm"), desc.element("undulator")
    d_sp = physics.crystal_d_spacing_A(dcm.crystal, dcm.temperature_K)

    def formula(e):
        return physics.gap_for_energy_mm(e, und.period_mm, und.field_coeffs,
                                         und.electron_energy_GeV, 1, (6.0, 30.0))

    offset = desc.design_positions()["undulator.gap"] - formula(desc.energy_eV)
    energies = [9900.0, 9950.0, 10000.0, 10050.0, 10100.0, 10150.0]
    stale, follow = [], []
    for e in energies:
        th = physics.bragg_angle_rad(e, d_sp)
        sets = {"dcm.bragg": math.degrees(th), "dcm.perp": 20.0 / (2 * math.cos(th))}
        stale.append(tw.trace(sets, seed=seed).detector.stats.flux)
        follow.append(tw.trace({**sets, "undulator.gap": formula(e) + offset},
                               seed=seed).detector.stats.flux)
    out["energy_scan"] = {"energy_eV": energies, "flux_gap_fixed": stale,
                          "flux_gap_following": follow}

    s = ideal.diagnostics["sample"].stats
    fr = tw.backend.frames
    out["focus"] = {
        "rms_x_um": s.rms_x_um, "rms_y_um": s.rms_y_um, "fwhm_x_um": s.fwhm_x_um,
        "fwhm_y_um": s.fwhm_y_um,
        "source_over_demag_x_um": und.sigma_x_um * 750.0 / fr["kb_h"].path_mm,
        "source_over_demag_y_um": und.sigma_y_um * 350.0 / fr["kb_v"].path_mm,
    }

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for mirror, c in (("kb_v", "C0"), ("kb_h", "C1")):
        ax[0].plot(pitches, kb[mirror]["fwhm_um"], "o-", color=c, label=f"{mirror} FWHM")
    ax[0].set(xlabel="KB pitch offset (urad)", ylabel="focus FWHM at sample (um)",
              yscale="log", title="KB focus curves")
    ax[0].legend()
    ax[1].plot(p2, rel, "o-")
    ax[1].set(xlabel="dcm.pitch2 (urad)", ylabel="flux / aligned", title="DCM detuning")
    ax[2].plot(energies, stale, "o-", label="gap fixed")
    ax[2].plot(energies, follow, "s-", label="gap follows")
    ax[2].set(xlabel="mono energy (eV)", ylabel="flux at detector (ph/s)",
              title="energy change and the undulator gap")
    ax[2].legend()
    fig.tight_layout()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(args.out) / "twin_physics.png", dpi=110)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
