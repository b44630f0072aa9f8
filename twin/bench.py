"""Benchmark of the twin's tracing speed (``beamtwin bench twin``).

Reports full traces per second (every cache cleared: source generation and the
whole chain) and cached re-traces per second for a single-motor move (only the
elements downstream of the moved one are traced again), plus the ray rates of
the source and of the optics chain alone, all measured in the same run.
"""

from __future__ import annotations

import time
from typing import Any

from twin.description import BeamlineDescription
from twin.tracer import Twin

__all__ = ["bench_twin", "bench_fast"]


def _rate(fn: Any, repeats: int) -> float:
    t0 = time.perf_counter()
    for i in range(repeats):
        fn(i)
    return repeats / (time.perf_counter() - t0)


def bench_twin(desc: BeamlineDescription, *, rays: int = 10_000, backend: str = "xrt",
               repeats: int = 5, motor: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Measure the twin's trace rates.

    Parameters
    ----------
    desc : BeamlineDescription
    rays : int
        Rays per trace.
    backend : str
    repeats : int
        Traces per measurement.
    motor : str, optional
        Motor moved for the cached re-trace (default: the last mirror's pitch).
    seed : int

    Returns
    -------
    dict
        ``rays``, ``full_traces_per_s``, ``cached_retraces_per_s`` and
        ``backend``, ``motor``, ``repeats``, ``source_rays_per_s``,
        ``chain_rays_per_s``, ``cached_speedup``.
    """
    twin = Twin(desc, backend=backend, rays=rays)
    if motor is None:
        pitches = [n for n in desc.motors if n.endswith(".pitch")]
        motor = pitches[-1] if pitches else next(iter(desc.motors))
    spec = desc.motor(motor)
    step = 0.01 * (spec.high - spec.low)
    a = min(spec.high, spec.position + step)
    b = max(spec.low, spec.position - step)
    twin.trace(seed=seed)  # warm up: imports, materials

    def full(i: int) -> None:
        twin.backend.clear_cache()
        twin.trace(seed=seed)

    def cached(i: int) -> None:
        twin.trace({motor: a if i % 2 else b}, seed=seed)

    # the optics chain alone: the source is cached, the first optic after it moves
    first_motor = next(n for n in desc.motors
                       if not n.startswith(desc.source.name + "."))
    fm = desc.motor(first_motor)
    fa = min(fm.high, fm.position + 0.001 * (fm.high - fm.low))

    def chain(i: int) -> None:
        twin.trace({first_motor: fa if i % 2 else fm.position}, seed=seed)

    full_rate = _rate(full, repeats)
    t0 = time.perf_counter()
    twin.backend.clear_cache()
    twin.trace(seed=seed + 1)  # a new seed forces new source rays
    t_full_new = time.perf_counter() - t0
    twin.trace(seed=seed)
    cached_rate = _rate(cached, max(repeats * 4, 10))
    chain_rate = _rate(chain, repeats)
    t_chain = 1.0 / chain_rate
    t_source = max(t_full_new - t_chain, 1e-9)
    return {
        "backend": backend,
        "rays": rays,
        "repeats": repeats,
        "motor": motor,
        "full_traces_per_s": full_rate,
        "cached_retraces_per_s": cached_rate,
        "cached_speedup": cached_rate / full_rate,
        "source_rays_per_s": rays / t_source,
        "chain_rays_per_s": rays / t_chain,
        "chain_motor": first_motor,
    }


def bench_fast(desc: BeamlineDescription, *, rays: int = 1000, batch: int = 1024,
               repeats: int = 3, seed: int = 0, xrt_states: int = 50,
               device: str | None = None, vary: list[str] | None = None,
               compile: bool = False, dtype: str = "float64") -> dict[str, Any]:
    """Beamline states per second of the fast twin against xrt, in the same run.

    Both trace the same random in-range states (every motor moved, hidden
    errors of scale 0-2; the undulator gap and Bragg angle are held at design,
    so the source rays are shared, as in an alignment run) at the same rays per
    state. xrt traces them one after another, re-tracing from the first element
    after its cached source. Two rates are measured for each:

    * **traced** (``states_per_s``, ``xrt_states_per_s``, ``speedup``): the rays
      at every observation point, what a ray tracer delivers;
    * **observed** (``observed_*``): plus every reading of every observation point
      (flux, centroids, rms and FWHM, the FWHM from weighted quantiles as
      :func:`twin.observation.fwhm`).

    With *vary* (element names), the workload is one alignment stage instead: a
    single misaligned beamline (hidden errors of scale 1) whose states differ only
    in the motors of those elements; upstream elements are then traced once for
    the whole batch, and xrt re-traces from the first varied element.

    Parameters
    ----------
    compile : bool
        Compile the fast twin's kernels (:class:`twin.fast.FastTwin`); the one-off
        compilation is timed apart, as ``first_call_s``.
    dtype : {"float64", "float32"}

    Returns
    -------
    dict
        ``backend``, ``batch``, ``rays``, ``states_per_s``, ``xrt_states_per_s``,
        ``speedup``, ``observed_states_per_s``, ``xrt_observed_states_per_s``,
        ``observed_speedup``, plus ``device``, ``dtype``, ``compile``,
        ``first_call_s``, ``threads``, ``repeats`` and ``vary``.
    """
    import numpy as np
    import torch

    from twin.crosscheck import random_states
    from twin.errors import ConfigError
    from twin.fast import FastTwin
    from twin.hidden import HiddenErrors
    from twin.settings import resolve

    dtypes = {"float64": torch.float64, "float32": torch.float32}
    if dtype not in dtypes:
        raise ConfigError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    if vary:
        for name in vary:
            desc.element(name)
        moving = [n for n in desc.motors if n.split(".")[0] in vary]
        rng = np.random.default_rng([0x56415259, seed])
        hidden = HiddenErrors.draw(desc, 1.0, seed)
        states = []
        for _ in range(batch):
            pos = {}
            for n in moving:
                m = desc.motor(n)
                sigma = m.misalign_sigma or 0.01 * (m.high - m.low)
                pos[n] = float(np.clip(m.position + 2 * sigma * rng.standard_normal(), m.low,
                                       m.high))
            states.append((pos, hidden))
    else:
        states = random_states(desc, batch, seed, source_fraction=0.0)
    ft = FastTwin(desc, rays=rays, device=device, compile=compile, dtype=dtypes[dtype])
    pos = ft.positions([p for p, _ in states])
    hid = ft.hidden([h for _, h in states])
    with torch.no_grad():
        t0 = time.perf_counter()
        ft.observe(pos[:2], hid[:2], seed=seed)  # warm up: source rays, tables, compilation
        ft.observe(pos, hid, seed=seed)
        first_call_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(repeats):
            ft.hits(pos, hid, seed=seed)
        fast_rate = batch * repeats / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(repeats):
            ft.observe(pos, hid, seed=seed)
        fast_obs_rate = batch * repeats / (time.perf_counter() - t0)
    twin = Twin(desc, backend="xrt", rays=rays)
    twin.trace(seed=seed)
    n = min(xrt_states, batch)
    resolved = [resolve(desc, p, h)[0] for p, h in states[:n]]
    t0 = time.perf_counter()
    for settings in resolved:  # the rays at every observation point, as the fast twin's hits
        twin.backend.trace(settings, rays, seed)
    xrt_rate = n / (time.perf_counter() - t0)
    twin.trace(seed=seed)
    t0 = time.perf_counter()
    for p, h in states[:n]:
        twin.trace(p, hidden=h, seed=seed)
    xrt_obs_rate = n / (time.perf_counter() - t0)
    return {"backend": "fast", "batch": batch, "rays": rays,
            "states_per_s": fast_rate, "xrt_states_per_s": xrt_rate,
            "speedup": fast_rate / xrt_rate,
            "observed_states_per_s": fast_obs_rate, "xrt_observed_states_per_s": xrt_obs_rate,
            "observed_speedup": fast_obs_rate / xrt_obs_rate,
            "device": str(ft.device), "dtype": dtype, "compile": bool(compile),
            "first_call_s": first_call_s, "threads": torch.get_num_threads(),
            "repeats": repeats, "vary": list(vary or [])}
