"""The fast (torch) twin: cross-check against xrt, batching, gradients, refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from twin import BackendError, ConfigError, HiddenErrors, Twin
from twin.crosscheck import crosscheck, random_states
from twin.fast import FastTwin, batch_fwhm
from twin.observation import fwhm
from twin.presets import load_preset

from .conftest import PRESETS


def test_fast_agrees_with_xrt_on_100_random_states_of_the_default_preset(desc):
    res = crosscheck(desc, random_states(desc, 100, seed=1), rays=3000)
    assert res.states == 100 and res.comparisons == 700  # 6 diagnostics and the detector
    assert res.failures == []
    # and by a wide margin: the two trace the very same source rays
    assert res.max_flux_rel < 0.005 and res.max_fwhm_rel < 0.02


def test_source_perturbation_agrees_with_xrt(desc, xrt_twin):
    """Another orbit at the source (position, pointing, size), traced by both twins."""
    from twin.disturbances import DisturbanceState, SourcePerturbation

    p = SourcePerturbation(dx_um=5.0, dy_um=2.0, dxp_urad=1.0, dyp_urad=0.5,
                           size_x_scale=1.05, size_y_scale=1.1)
    ft = FastTwin(desc, rays=5000)
    fast = ft.to_numpy(ft.observe(ft.positions([{}, {}]),
                                  source=FastTwin.source_tensor([SourcePerturbation(), p])))
    moved = xrt_twin.trace({}, disturbance=DisturbanceState(source=p))
    still = xrt_twin.trace({})
    for d in ("dcm_bpm", "sample"):
        a, b = moved.reading(d).stats, still.reading(d).stats
        for k in ("centroid_x_um", "centroid_y_um", "rms_x_um", "rms_y_um"):
            want = getattr(a, k) - getattr(b, k)
            got = fast[d][k][1] - fast[d][k][0]
            assert got == pytest.approx(want, abs=max(0.05 * abs(want), 0.05)), (d, k)
    with pytest.raises(ConfigError, match="source must be"):
        ft.observe(ft.positions([{}]), source=torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="size multipliers"):
        ft.observe(ft.positions([{}]), source=torch.zeros(1, 6, dtype=torch.float64))


def test_fast_in_float32_agrees_with_xrt(desc):
    """float32 is the faster mode. Positions relative to each element's centre and
    cancellation-free surfaces resolve a 30 nm focus 60 m from the source, and the DCM
    never rotates a ray through its large Bragg angles (see the next test)."""
    res = crosscheck(desc, random_states(desc, 50, seed=1), rays=3000,
                     fast_options={"dtype": torch.float32})
    assert res.failures == []
    assert res.max_fwhm_rel < 0.10 and res.max_flux_rel < 0.05


@pytest.mark.parametrize("preset", ["default", "mixed"])
def test_float32_matches_float64_through_the_dcm(desc, preset):
    """The DCM in float32 keeps float64's precision: its large parts (the two
    reflections' map, the axis ray's incidence and Bragg deviation) are per-state
    constants from float64, and every per-ray quantity is small. A DCM that rotates
    float32 rays into the crystal frames instead leaves ~1e-7 rad on every direction:
    swapped in, it reads fluxes 0.6 % (default) and 0.9 % (mixed) off float64 here, and
    fails the float32 cross-check against xrt above."""
    d = desc if preset == "default" else load_preset(PRESETS / f"{preset}.toml")
    d = dataclasses.replace(d, elements=tuple(e for e in d.elements if e.kind != "crl"))
    states = random_states(d, 30, seed=4, source_fraction=0.0)
    out = {}
    for dtype in (torch.float64, torch.float32):
        ft = FastTwin(d, rays=2000, dtype=dtype)
        out[dtype] = ft.to_numpy(ft.observe(ft.positions([p for p, _ in states]),
                                            ft.hidden([h for _, h in states])))
    ideal = FastTwin(d, rays=2000)
    ideal = ideal.to_numpy(ideal.observe(ideal.positions([{}])))
    for name, ref in out[torch.float64].items():
        got = out[torch.float32][name]
        lit = ref["flux"] > 0.05 * ideal[name]["flux"][0]
        assert lit.sum() >= 5, name
        np.testing.assert_allclose(got["flux"][lit], ref["flux"][lit], rtol=3e-3, err_msg=name)
        if np.isnan(ref["centroid_x_um"]).all():  # an intensity monitor
            continue
        for ax in ("x", "y"):
            size = ref[f"fwhm_{ax}_um"][lit]
            np.testing.assert_allclose(got[f"rms_{ax}_um"][lit], ref[f"rms_{ax}_um"][lit],
                                       rtol=1e-2, err_msg=name)
            # the FWHM of a ragged profile is ill-conditioned: the cross-check's tolerance
            np.testing.assert_allclose(got[f"fwhm_{ax}_um"][lit], size, rtol=0.10,
                                       err_msg=name)
            off = np.abs(got[f"centroid_{ax}_um"][lit] - ref[f"centroid_{ax}_um"][lit])
            assert (off <= 1e-3 * size + 0.005).all(), (name, ax, off.max())


def test_bad_bench_dtype_is_refused(desc):
    from twin.bench import bench_fast

    with pytest.raises(ConfigError, match="float64, float32"):
        bench_fast(desc, batch=2, dtype="float16")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_kernels_give_the_eager_result(desc, dtype):
    """torch.compile fuses each kernel into a few loops: same physics, same numbers to
    rounding (a minute or two of compilation on a 2-core CPU, hence the slow tier)."""
    hidden = [HiddenErrors.draw(desc, 1.0, s) for s in (3, 4, 5)]
    sets = [{}, {"kb_v.pitch": 6.0}, {"m1.pitch": -2.0, "kb_h.bend": 752.0}]
    outs = []
    for comp in (False, True):
        ft = FastTwin(desc, rays=2000, dtype=dtype, compile=comp)
        with torch.no_grad():
            outs.append(ft.observe(ft.positions(sets), ft.hidden(hidden), seed=7))
    rel = 1e-9 if dtype == torch.float64 else 1e-4
    for name in outs[0]:
        for k, v in outs[0][name].items():
            np.testing.assert_allclose(outs[1][name][k].numpy(), v.numpy(), rtol=rel,
                                       atol=rel, err_msg=f"{name} {k}")


@pytest.mark.parametrize("preset", ["dmm", "mixed"])
def test_fast_agrees_with_xrt_on_the_other_element_types(preset):
    desc = load_preset(PRESETS / f"{preset}.toml")
    # the fast backend traces no CRL: the mixed preset is checked without its lens
    desc = dataclasses.replace(desc, elements=tuple(e for e in desc.elements if e.kind != "crl"))
    res = crosscheck(desc, random_states(desc, 100, seed=2), rays=3000)
    assert res.states == 100 and res.failures == []


def test_fast_refuses_what_it_cannot_trace(mixed_desc, desc):
    with pytest.raises(BackendError, match="compound refractive lenses"):
        Twin(mixed_desc, backend="fast")
    with pytest.raises(BackendError, match="float64 or torch.float32"):
        FastTwin(desc, dtype=torch.float16)


def test_the_batch_equals_single_traces(desc):
    ft = FastTwin(desc, rays=2000)
    tw = Twin(desc, backend="fast", rays=2000)
    hidden = [HiddenErrors.draw(desc, 1.0, s) for s in (3, 4, 5)]
    sets = [{}, {"kb_v.pitch": 6.0}, {"m1.pitch": -2.0, "kb_h.bend": 752.0}]
    out = ft.observe(ft.positions(sets), ft.hidden(hidden), seed=7)
    for i, (pos, h) in enumerate(zip(sets, hidden, strict=True)):
        single = tw.trace(pos, hidden=h, seed=7)
        for name in ("sample", "dcm_bpm", "m1_screen", "detector"):
            s = single.reading(name).stats
            for k in ("flux", "centroid_x_um", "centroid_y_um", "fwhm_x_um", "fwhm_y_um",
                      "rms_x_um", "rms_y_um"):
                assert float(out[name][k][i]) == pytest.approx(getattr(s, k), rel=1e-9,
                                                                abs=1e-9), (name, k)


def test_batched_fwhm_is_the_reference_estimator():
    rng = np.random.default_rng(0)
    rows = [rng.normal(0, 1 + b, 3000) for b in range(3)]
    rows.append(np.concatenate([rng.normal(0, 1, 2000), rng.normal(5, 0.5, 1000)]))
    w = rng.uniform(0.2, 1.0, (4, 3000))
    got = batch_fwhm(torch.tensor(np.array(rows)), torch.tensor(w)).numpy()
    want = [fwhm(x, wi) for x, wi in zip(rows, w, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("n", [0, 1, 2, 9])
def test_batched_fwhm_of_a_batch_left_with_a_few_rays_is_nan(n):
    # a batch compacted down to a few surviving rays (a beam lost in every state)
    rng = np.random.default_rng(1)
    v, w = torch.tensor(rng.normal(0, 1, (3, n))), torch.ones(3, n, dtype=torch.float64)
    got = batch_fwhm(v, w)
    assert got.shape == (3,) and torch.isnan(got).all()
    assert all(np.isnan(fwhm(v[i].numpy(), w[i].numpy())) for i in range(3))


@pytest.mark.parametrize(
    ("motor", "reading", "stat"),
    [("kb_v.pitch", "sample", "centroid_y_um"), ("kb_h.bend", "sample", "rms_x_um"),
     ("m1.pitch", "dcm_bpm", "centroid_x_um"), ("dcm.pitch2", "dcm_bpm", "flux"),
     ("sample.x", "sample", "centroid_x_um"), ("kb_v.height", "detector", "centroid_y_um"),
     ("dcm.roll2", "dcm_bpm", "centroid_x_um"), ("dcm.perp", "sample", "flux")],
)
def test_gradients_match_finite_differences(desc, motor, reading, stat):
    ft = FastTwin(desc, rays=2000)
    hidden = ft.hidden([HiddenErrors.draw(desc, 0.5, 11)])
    i = ft.motor_names.index(motor)
    pos = ft.positions([{}]).requires_grad_(True)
    ft.observe(pos, hidden, fwhm=False, seed=5)[reading][stat].sum().backward()
    grad = float(pos.grad[0, i])
    m = desc.motor(motor)
    eps = 1e-3 * (m.misalign_sigma or m.resolution * 100)
    with torch.no_grad():
        vals = []
        for sgn in (1, -1):
            p = ft.positions([{}])
            p[0, i] += sgn * eps
            vals.append(float(ft.observe(p, hidden, fwhm=False, seed=5)[reading][stat][0]))
    fd = (vals[0] - vals[1]) / (2 * eps)
    # geometry is smooth: tight; flux goes through piecewise-linear reflectivity tables
    # (0.25 urad steps), where rays within eps of a kink make the difference quotient
    # average two slopes
    rel = 1e-2 if stat == "flux" else 1e-4
    assert grad == pytest.approx(fd, rel=rel, abs=1e-9 * max(1.0, abs(fd)))
    assert grad != 0.0


def test_gradient_with_respect_to_hidden_errors(desc):
    ft = FastTwin(desc, rays=1000)
    hidden = ft.hidden([HiddenErrors.draw(desc, 1.0, 2)]).requires_grad_(True)
    pos = ft.positions([{}]).requires_grad_(True)
    ft.observe(pos, hidden, fwhm=False)["sample"]["centroid_y_um"].sum().backward()
    assert torch.allclose(hidden.grad, pos.grad)  # physics sees position + offset
    assert hidden.grad.abs().sum() > 0


def test_bad_batch_input_is_refused(desc):
    ft = FastTwin(desc, rays=500)
    p = ft.positions([{}])
    p[0, 3] = float("nan")
    from twin import ConfigError

    with pytest.raises(ConfigError, match="NaN"):
        ft.observe(p)
    with pytest.raises(ConfigError, match=rf"\(B, {len(desc.motors)}\)"):
        ft.observe(p[:, :5])


def test_a_stage_batch_shares_the_upstream_trace_and_equals_single_traces(desc):
    """States that differ only downstream trace the shared upstream once; same results."""
    ft = FastTwin(desc, rays=1500)
    h = HiddenErrors.draw(desc, 1.0, 9)
    sets = [{"kb_v.pitch": p, "kb_h.bend": 750.0 + p} for p in (-4.0, 0.0, 3.0, 8.0)]
    out = ft.observe(ft.positions(sets), ft.hidden([h] * 4), seed=2)
    for i, pos in enumerate(sets):
        one = ft.observe(ft.positions([pos]), ft.hidden([h]), seed=2)
        for name in ("dcm_bpm", "sample", "detector"):
            for k in ("flux", "centroid_x_um", "centroid_y_um", "fwhm_y_um"):
                assert float(out[name][k][i]) == pytest.approx(float(one[name][k][0]),
                                                                rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("preset", ["default", "mixed", "dmm"])
def test_the_differentiable_resolution_equals_the_reference_one(desc, preset):
    """FastTwin turns positions into element parameters in torch; twin.settings does it in
    floats for every backend. Both must give the same parameters, element by element."""
    from twin._fast_backend import params_from_settings
    from twin.settings import resolve

    d = desc if preset == "default" else load_preset(PRESETS / f"{preset}.toml")
    d = dataclasses.replace(d, elements=tuple(e for e in d.elements if e.kind != "crl"))
    ft = FastTwin(d, rays=200)
    for pos, hidden in random_states(d, 5, seed=4, source_fraction=1.0):
        ref, _ = resolve(d, pos, hidden)
        want = params_from_settings(d, [ref])
        got = ft._params((ft.positions([pos]) + ft.hidden([hidden])) * ft._factor)
        for e in d.elements:
            if e.kind in ("undulator", "gaussian_source"):  # perturbation-free here
                np.testing.assert_allclose(got[e.name][:, :2].numpy(),
                                           want[e.name][:, :2].numpy(), rtol=1e-12)
                continue
            np.testing.assert_allclose(got[e.name].numpy(), want[e.name].numpy(), rtol=1e-12,
                                       atol=1e-15, err_msg=e.name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result(desc):
    h = HiddenErrors.draw(desc, 1.0, 4)
    sets = [{}, {"kb_v.pitch": 5.0}]
    cpu = FastTwin(desc, rays=2000, device="cpu")
    gpu = FastTwin(desc, rays=2000, device="cuda")
    a = cpu.observe(cpu.positions(sets), cpu.hidden([h, h]))
    b = gpu.observe(gpu.positions(sets), gpu.hidden([h, h]))
    for name in ("sample", "dcm_bpm"):
        for k in ("flux", "centroid_x_um", "centroid_y_um", "rms_y_um"):
            np.testing.assert_allclose(b[name][k].cpu().numpy(), a[name][k].numpy(), rtol=1e-9)


def test_a_batch_of_several_sources_traces_each_state_as_alone(desc):
    """States that move the gap need sources of their own: the batch builds one per
    distinct (gap, energy), not one per state, and each state reads what it reads alone."""
    ft = FastTwin(desc, rays=500)
    rows = [{"undulator.gap": 7.2}, {}, {"undulator.gap": 7.3},
            {"undulator.gap": 7.2, "kb_v.pitch": 3.0}]
    batch = ft.to_numpy(ft.observe(ft.positions(rows)))
    assert ft.backend.stats["source_builds"] == 3
    for i, row in enumerate(rows):
        alone = ft.to_numpy(ft.observe(ft.positions([row])))
        for name, stats in alone.items():
            for k, v in stats.items():
                np.testing.assert_allclose(batch[name][k][i], v[0], rtol=1e-9, atol=1e-9,
                                           err_msg=f"state {i} {name} {k}")
    assert ft.backend.stats["source_builds"] == 3
