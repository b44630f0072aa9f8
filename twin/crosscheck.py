"""Cross-check of the fast twin against xrt on random beamline states.

Both backends trace the very same source rays, so the comparison is free of
Monte-Carlo noise between them; what differs is the tracing itself.

Tolerances (the fast twin passes when, at every diagnostic and the detector):

* flux within 5 % (or within 1e-4 of the ideal flux there, for nearly dark points);
* centroid within max(0.5 um, 5 % of the FWHM);
* FWHM within 10 %.

Position and size are compared only where the beam carries at least 5 % of the
ideal flux at that point: below that, at 3,000 rays, fewer than about 50 rays
arrive, and one ray crossing a mirror edge differently (as rounding in float32
can make it) moves an FWHM by 10 % or more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from twin.description import BeamlineDescription
from twin.hidden import HiddenErrors
from twin.tracer import Twin

__all__ = ["random_states", "CrossCheck", "crosscheck"]

_SOURCE_AXES = ("gap", "bragg")


def random_states(desc: BeamlineDescription, n: int, seed: int, *, spread: float = 2.0,
                  source_fraction: float = 0.1) -> list[tuple[dict[str, float], HiddenErrors]]:
    """*n* random in-range states: motors at design + spread * sigma * N(0, 1), clipped to
    the limits, with hidden errors of scale 0, 1 or 2 (cycled). Only a fraction
    *source_fraction* of the states move the undulator gap and the Bragg angle or
    carry hidden errors on them (each such state needs new source rays); the others
    share the design source, as the states of one alignment run do."""
    rng = np.random.default_rng([0x58434B, seed])
    # the ring's knobs at the source from a stream of their own (the beamline's
    # motors draw what they drew before the knobs existed)
    knob_rng = np.random.default_rng([0x4B4E4F42, seed])
    knobs = desc.knob_motors()
    out = []
    for i in range(n):
        move_source = rng.random() < source_fraction
        pos = {}
        for name in sorted(knobs):
            m = desc.motor(name)
            pos[name] = float(np.clip(m.position + spread * 0.01 * (m.high - m.low)
                                      * knob_rng.standard_normal(), m.low, m.high))
        for name, m in desc.motors.items():
            if name in knobs:
                continue
            if name.split(".")[1] in _SOURCE_AXES and not move_source:
                continue
            sigma = m.misalign_sigma or 0.01 * (m.high - m.low)
            pos[name] = float(np.clip(m.position + spread * sigma * rng.standard_normal(),
                                      m.low, m.high))
        hidden = HiddenErrors.draw(desc, float(i % 3), int(rng.integers(1 << 30)))
        if not move_source:
            hidden = HiddenErrors({k: v for k, v in hidden.offsets.items()
                                   if k.split(".")[1] not in _SOURCE_AXES}, hidden.scale,
                                  hidden.seed)
        out.append((pos, hidden))
    return out


@dataclass
class CrossCheck:
    """Worst deviations found, and the failures (empty when the fast twin passes)."""

    states: int = 0
    comparisons: int = 0
    max_flux_rel: float = 0.0
    max_centroid_um: float = 0.0
    max_centroid_rel_fwhm: float = 0.0
    max_fwhm_rel: float = 0.0
    failures: list[str] = field(default_factory=list)


def crosscheck(desc: BeamlineDescription, states: list[tuple[dict[str, float], HiddenErrors]],
               *, rays: int = 3000, seed: int = 0,
               fast_options: dict | None = None) -> CrossCheck:
    """Trace every state with both backends and compare every reading.

    *fast_options* go to the fast backend (e.g. ``{"dtype": torch.float32}``).
    """
    ref = Twin(desc, backend="xrt", rays=rays)
    fast = Twin(desc, backend="fast", rays=rays, **(fast_options or {}))
    ideal = ref.trace(seed=seed)
    res = CrossCheck()
    for k, (pos, hidden) in enumerate(states):
        a = ref.trace(pos, hidden=hidden, seed=seed)
        b = fast.trace(pos, hidden=hidden, seed=seed)
        res.states += 1
        for name in [*a.diagnostics, a.detector.name]:
            sa, sb = a.reading(name).stats, b.reading(name).stats
            f_ideal = ideal.reading(name).stats.flux
            res.comparisons += 1
            dflux = abs(sb.flux - sa.flux)
            rel = dflux / sa.flux if sa.flux > 0 else (0.0 if sb.flux == 0 else math.inf)
            if not (rel <= 0.05 or dflux <= 1e-4 * f_ideal):
                res.failures.append(f"state {k} {name}: flux {sa.flux:.4e} vs {sb.flux:.4e}")
            if sa.flux > 0 and dflux > 1e-4 * f_ideal:
                res.max_flux_rel = max(res.max_flux_rel, rel)
            if sa.flux < 0.05 * f_ideal or not math.isfinite(sa.centroid_x_um):
                continue
            for ax in ("x", "y"):
                ca, cb = getattr(sa, f"centroid_{ax}_um"), getattr(sb, f"centroid_{ax}_um")
                wa, wb = getattr(sa, f"fwhm_{ax}_um"), getattr(sb, f"fwhm_{ax}_um")
                dc = abs(ca - cb)
                res.max_centroid_um = max(res.max_centroid_um, dc)
                if wa > 0:
                    res.max_centroid_rel_fwhm = max(res.max_centroid_rel_fwhm, dc / wa)
                if dc > max(0.5, 0.05 * wa):
                    res.failures.append(f"state {k} {name}: centroid_{ax} {ca:.3f} vs {cb:.3f} um")
                drel = abs(wb - wa) / wa if wa > 0 else 0.0
                res.max_fwhm_rel = max(res.max_fwhm_rel, drel)
                if drel > 0.10:
                    res.failures.append(f"state {k} {name}: fwhm_{ax} {wa:.4f} vs {wb:.4f} um")
    return res
