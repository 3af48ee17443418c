"""bench/bench_inverse.py at tiny sizes on the CPU: the rows of our solvers against an independent
solve, the skip line without deepinv, and, where deepinv is importable, the adapter that turns a
pyengine prior into deepinv's denoiser, the physics built from pyengine's operators and the peer rows."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from tests.helpers import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_inverse")


@pytest.fixture(scope="module")
def prior():
    from pyengine.diffusion.prior import load_prior

    return load_prior("shapeworld")


def run(bench, tmp_path, *extra):
    path = tmp_path / "out.json"
    assert bench.main(["--device", "cpu", "--images", "2", "--json", str(path), *extra]) == 0
    return json.loads(path.read_text())


def test_rows_match_an_independent_solve(bench, prior, tmp_path, monkeypatch, capsys):
    from pyengine.engines.inverse import _problem, heldout_images, psnr
    from pyengine.inverse.solvers import DEFAULT_STEPS, solve

    monkeypatch.setitem(sys.modules, "deepinv", None)  # not importable, whatever is installed
    res = run(bench, tmp_path, "--steps-scale", "0.01", "--methods", "ddrm", "dps", "--steps", "dps=3")
    out = capsys.readouterr().out
    assert "| method | steps | calls |" in out and "| ddrm | 1 | 1 | 0 |" in out
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["ddrm", "dps"]
    assert any(s.startswith("deepinv: not importable") for s in res["skipped"]), res["skipped"]
    assert res["notes"] == [] and res["args"]["images"] == 2
    truth, _ = heldout_images(2, prior.resolution)
    _, problem = _problem("sr4", truth, 0.05, 0)
    for method, r in rows.items():
        steps = 3 if method == "dps" else max(1, round(DEFAULT_STEPS[method] * 0.01))  # --steps dps=3
        assert r["steps"] == steps and r["calls"] == steps
        assert r["backward"] == (steps if method == "dps" else 0)
        assert r["s/image"] > 0 and 0 < r["denoiser s/image"] <= r["s/image"]
        assert math.isclose(r["denoiser s/image"] + r["other s/image"], r["s/image"], rel_tol=1e-9)
        again = solve(method, prior, problem, steps=steps, generator=torch.Generator().manual_seed(0))
        assert abs(r["psnr"] - float(psnr(again.x, truth).mean())) < 1e-4, (method, r["psnr"])


def test_bad_arguments(bench):
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0"])
    with pytest.raises(SystemExit):
        bench.main(["--deepinv-dps-weight", "strong"])
    with pytest.raises(SystemExit):
        bench.main(["--steps", "dps"])


# -- with deepinv ------------------------------------------------------------------------------------------

def _deepinv():
    try:
        import deepinv
    except Exception:  # not installed, or installed against another torch
        return None
    return deepinv


needs_deepinv = pytest.mark.skipif(_deepinv() is None, reason="deepinv is not importable")


@needs_deepinv
@pytest.mark.parametrize("t", [0, 137, 500, 990])
def test_adapter_is_tweedie_on_predict_noise(bench, prior, t):
    """At the noise level of step t, the adapter's estimate is Tweedie's x0 from prior.predict_noise,
    in [0, 1] units; through deepinv's [-1, 1] wrapper (its DPS path) as well."""
    from deepinv.models.wrapper import MinusOneOneDenoiserWrapper

    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(2, 3, prior.resolution, prior.resolution, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = float(prior.schedule.alphas_cumprod[t])
    x_t = math.sqrt(a) * (2 * x0 - 1) + math.sqrt(1 - a) * noise
    with torch.no_grad():
        eps = prior.predict_noise(x_t, torch.full((2,), t), prior.encode_text([""]))
    want = ((x_t - math.sqrt(1 - a) * eps) / math.sqrt(a) + 1) / 2
    sigma = torch.tensor(math.sqrt((1 - a) / a) / 2, dtype=torch.float32)  # deepinv passes float32 levels
    den = bench.PriorDenoiser(prior)
    assert den.step(float(sigma)) == t
    with torch.no_grad():
        got = den((x_t / math.sqrt(a) + 1) / 2, sigma)
        wrapped = MinusOneOneDenoiserWrapper(den)(x_t / math.sqrt(a), 2 * sigma)
    tol = 1e-4 * max(1.0, math.sqrt((1 - a) / a))
    assert (got - want).abs().max() < tol, float((got - want).abs().max())
    assert (wrapped - (2 * want - 1)).abs().max() < 2 * tol
    assert den.counter.calls == 2 and den.counter.backward == 0


@needs_deepinv
def test_adapter_counts_and_differentiates(bench, prior):
    den = bench.PriorDenoiser(prior)
    x = torch.rand(2, 3, prior.resolution, prior.resolution, requires_grad=True)
    (g,) = torch.autograd.grad(den(x, 0.3).square().sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert den.counter.calls == 1 and den.counter.backward == 1
    assert den(x.detach(), 0.0) is not None and den.counter.calls == 1  # sigma 0: the image itself, no call
    with pytest.raises(ValueError, match="per-image"):
        den(x.detach(), torch.tensor([0.1, 0.2]))


@needs_deepinv
@pytest.mark.parametrize("task", ["sr4", "inpaint_box", "deblur_gauss"])
def test_physics_is_the_operator(bench, task):
    import deepinv as dinv

    from pyengine.inverse.operators import make_operator

    op = make_operator(task, (3, 16, 16))
    physics, decomposable = bench.deepinv_physics(dinv, op, 0.05, torch.device("cpu"))
    assert decomposable and abs(float(physics.noise_model.sigma) - 0.05) < 1e-7
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, *op.in_shape, generator=g)
    y = op.forward(torch.rand(3, *op.in_shape, generator=g))
    torch.testing.assert_close(physics.A(x), op.forward(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(physics.A_adjoint(y), op.adjoint(y), atol=1e-5, rtol=1e-5)
    if task != "deblur_gauss":  # the blur's pinv is regularised (rcond); deepinv's cuts at 1e-5
        torch.testing.assert_close(physics.A_dagger(y), op.pinv(y), atol=1e-4, rtol=1e-4)


@needs_deepinv
def test_vp_times_hit_the_levels(bench, prior):
    import deepinv as dinv

    sampler = dinv.sampling.DPS(bench.PriorDenoiser(prior), num_steps=11)
    levels = [bench._sigma(prior, t) for t in bench._grid(prior, 10)] + [0.0]
    taus = bench.vp_times(sampler.sde, levels)
    assert bool((taus[1:] < taus[:-1]).all()) and float(taus[-1]) == 0.0
    got = sampler.sde.sigma_t(taus)
    torch.testing.assert_close(got, torch.tensor(levels, dtype=got.dtype), rtol=1e-9, atol=1e-12)


@needs_deepinv
def test_peer_rows(bench, tmp_path):
    res = run(bench, tmp_path, "--steps-scale", "0.02", "--methods", "ddrm", "dps", "--repeats", "2",
              "--deepinv-dps-weight", "matched", "1")
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["ddrm", "dps", "deepinv ddrm", "deepinv dps (weight matched)", "deepinv dps (weight 1)"]
    assert rows["deepinv ddrm"]["calls"] == rows["ddrm"]["calls"] == 1
    for name in ("deepinv dps (weight matched)", "deepinv dps (weight 1)"):
        r = rows[name]
        assert r["calls"] == r["backward"] == rows["dps"]["calls"] == 20
        assert math.isfinite(r["psnr"]) and r["psnr"] > 5 and r["s/image"] > r["denoiser s/image"] > 0
        assert r["runs"] == 2
    assert rows["ddrm"]["runs"] == rows["dps"]["runs"] == 2
    assert rows["deepinv dps (weight 1)"]["options"]["weight"] == 1.0
    assert rows["deepinv dps (weight matched)"]["options"]["weight"] > 0
    assert len(res["notes"]) == 3
