"""pyengine.compat.nerfacc: the nerfacc 0.5 drop-in, checked against nerfacc's documented examples
and against plain-PyTorch formulas of its maths."""

import importlib.util
import math
import sys
import types

import pytest
import torch

from pyengine.compat import nerfacc
from tests.helpers import assert_close

SHIM = nerfacc  # for tests where ``import nerfacc`` binds the local name

# nerfacc's docstring example for the volrend functions: three rays with 3, 2 and 2 samples
DOC_T_STARTS = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
DOC_T_ENDS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
DOC_VALUES = [0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9]  # sigmas in the density examples, alphas in the others
DOC_RAY_INDICES = [0, 0, 0, 1, 1, 2, 2]
DOC_PACKED_INFO = [[0, 3], [3, 2], [5, 2]]

# scan examples: nine values in chunks of 2, 3 and 4
SCAN_PACKED_INFO = [[0, 2], [2, 3], [5, 4]]

F32 = {"atol": 1e-6, "rtol": 1e-5}
F64 = {"atol": 1e-12, "rtol": 1e-10}


def assert_printed(actual: torch.Tensor, printed: list, what: str):
    """Each value rounds to the number as nerfacc's docs print it (to that number's decimals)."""
    assert actual.shape == (len(printed),), what
    for i, (a, p) in enumerate(zip(actual.tolist(), printed)):
        decimals = len(p.split(".")[1]) if "." in p else 0
        assert abs(a - float(p)) <= 0.5 * 10.0**-decimals + 1e-7, f"{what}[{i}]: {a} does not print as {p}"


def doc_inputs():
    return tuple(map(torch.tensor, (DOC_T_STARTS, DOC_T_ENDS, DOC_VALUES, DOC_RAY_INDICES, DOC_PACKED_INFO)))


def plain_density(t_starts, t_ends, sigmas):
    """Batched [R, N] reference written out from nerfacc's formulas (weights, trans, alphas)."""
    tau = sigmas * (t_ends - t_starts)
    alphas = 1 - torch.exp(-tau)
    trans = torch.exp(-(torch.cumsum(tau, -1) - tau))
    return trans * alphas, trans, alphas


def plain_alpha(alphas):
    ones = torch.ones_like(alphas[..., :1])
    trans = torch.cumprod(torch.cat([ones, 1 - alphas[..., :-1]], -1), -1)
    return trans * alphas, trans


def random_rays(R=7, N=13, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t_starts = torch.sort(torch.rand(R, N, generator=g, dtype=dtype) * 4, -1).values
    t_ends = t_starts + torch.rand(R, N, generator=g, dtype=dtype) * 0.3
    sigmas = torch.rand(R, N, generator=g, dtype=dtype) * 3
    alphas = torch.rand(R, N, generator=g, dtype=dtype) * 0.6
    rgbs = torch.rand(R, N, 3, generator=g, dtype=dtype)
    return t_starts, t_ends, sigmas, alphas, rgbs


def packed(R, N):
    ray_indices = torch.arange(R).repeat_interleave(N)
    return ray_indices, nerfacc.pack_info(ray_indices, R)


# nerfacc's documented examples -------------------------------------------------------------------

@pytest.mark.parametrize("how", ["ray_indices", "ray_indices+n_rays", "packed_info"])
def test_render_weight_from_density_doc_example(how):
    t_starts, t_ends, sigmas, ray_indices, packed_info = doc_inputs()
    kw = {"ray_indices": ray_indices, "packed_info": packed_info if how == "packed_info" else None}
    if how == "ray_indices+n_rays":
        kw["n_rays"] = 3
    weights, trans, alphas = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas, **kw)
    assert_printed(weights, ["0.33", "0.37", "0.03", "0.55", "0.04", "0.00", "0.59"], "weights")
    assert_printed(trans, ["1.00", "0.67", "0.30", "1.00", "0.45", "1.00", "1.00"], "transmittance")
    assert_printed(alphas, ["0.33", "0.55", "0.095", "0.55", "0.095", "0.00", "0.59"], "alphas")
    e = math.exp
    exact_trans = [1, e(-0.4), e(-1.2), 1, e(-0.8), 1, 1]
    assert_close(trans, torch.tensor(exact_trans), **F32, what="transmittance")
    assert_close(weights, trans * (1 - torch.exp(-sigmas)), **F32, what="weights")

    trans2, alphas2 = nerfacc.render_transmittance_from_density(t_starts, t_ends, sigmas, **kw)
    assert torch.equal(trans2, trans) and torch.equal(alphas2, alphas)
    vis = nerfacc.render_visibility_from_density(t_starts, t_ends, sigmas, **kw, early_stop_eps=0.3,
                                                 alpha_thre=0.2)
    assert vis.tolist() == [True, True, False, True, False, False, True]


@pytest.mark.parametrize("how", ["ray_indices", "packed_info"])
def test_render_weight_from_alpha_doc_example(how):
    _, _, alphas, ray_indices, packed_info = doc_inputs()
    kw = {"ray_indices": ray_indices} if how == "ray_indices" else {"packed_info": packed_info}
    weights, trans = nerfacc.render_weight_from_alpha(alphas, **kw)
    assert_close(weights, torch.tensor([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]), **F32, what="weights")
    assert_close(trans, torch.tensor([1.0, 0.6, 0.12, 1.0, 0.2, 1.0, 1.0]), **F32, what="transmittance")
    assert torch.equal(nerfacc.render_transmittance_from_alpha(alphas, **kw), trans)
    vis = nerfacc.render_visibility_from_alpha(alphas, **kw, early_stop_eps=0.3, alpha_thre=0.2)
    assert vis.tolist() == [True, True, False, True, False, False, True]


def test_scan_and_pack_info_doc_examples():
    x = torch.arange(1.0, 10.0)
    info = torch.tensor(SCAN_PACKED_INFO)
    assert nerfacc.inclusive_sum(x, info).tolist() == [1, 3, 3, 7, 12, 6, 13, 21, 30]
    assert nerfacc.exclusive_sum(x, info).tolist() == [0, 1, 0, 3, 7, 0, 6, 13, 21]
    assert nerfacc.inclusive_prod(x, info).tolist() == [1, 2, 3, 12, 60, 6, 42, 336, 3024]
    assert nerfacc.exclusive_prod(x, info).tolist() == [1, 1, 1, 3, 12, 1, 6, 42, 336]
    ray_indices = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    assert nerfacc.pack_info(ray_indices, n_rays=3).tolist() == SCAN_PACKED_INFO
    assert nerfacc.pack_info(ray_indices).tolist() == SCAN_PACKED_INFO  # n_rays inferred
    assert nerfacc.exclusive_sum(x, indices=ray_indices).tolist() == [0, 1, 0, 3, 7, 0, 6, 13, 21]
    # batched: along the last dim, as torch.cumsum / cumprod
    b = torch.rand(3, 5, 4)
    assert_close(nerfacc.inclusive_sum(b), torch.cumsum(b, -1), **F32, what="inclusive_sum")
    assert_close(nerfacc.exclusive_sum(b), torch.cumsum(b, -1) - b, **F32, what="exclusive_sum")
    assert_close(nerfacc.inclusive_prod(b), torch.cumprod(b, -1), **F32, what="inclusive_prod")
    assert_close(nerfacc.exclusive_prod(b) * b, torch.cumprod(b, -1), **F32, what="exclusive_prod")


def test_scan_gradients_match_torch():
    x = torch.rand(9, dtype=torch.float64, requires_grad=True)
    info = torch.tensor(SCAN_PACKED_INFO)
    g = torch.rand(9, dtype=torch.float64)
    for fn, ref in ((nerfacc.exclusive_prod, lambda c: torch.cumprod(torch.cat([c.new_ones(1), c[:-1]]), 0)),
                    (nerfacc.inclusive_sum, lambda c: torch.cumsum(c, 0))):
        (got,) = torch.autograd.grad((fn(x, info) * g).sum(), x)
        expected = torch.cat([ref(c) for c in torch.split(x, [2, 3, 4])])
        (want,) = torch.autograd.grad((expected * g).sum(), x)
        assert_close(got, want, **F64, what=fn.__name__)


def padded_scan(x, packed_info, prod, exclusive):
    """Scans within chunks by padding every chunk to the longest (the drop-in's former method)."""
    identity = 1.0 if prod else 0.0
    starts, counts = packed_info[:, 0], packed_info[:, 1]
    n_max = int(counts.max()) if counts.numel() else 0
    j = torch.arange(n_max)
    mask = j < counts[:, None]
    index = torch.where(mask, starts[:, None] + j, 0)
    padded = torch.where(mask, x[index], identity)
    if exclusive:
        padded = torch.cat([torch.full_like(padded[:, :1], identity), padded[:, :-1]], 1)
    scanned = (torch.cumprod if prod else torch.cumsum)(padded, 1)
    return torch.full_like(x, identity).index_put((index[mask],), scanned[mask])


SCANS = {"inclusive_sum": (False, False), "exclusive_sum": (False, True), "inclusive_prod": (True, False),
         "exclusive_prod": (True, True)}


@pytest.mark.parametrize("name", list(SCANS))
@pytest.mark.parametrize("chunks", ["tiled", "gaps and shuffled", "indices"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_scans_match_the_padded_formulation(name, chunks, dtype):
    prod, exclusive = SCANS[name]
    g = torch.Generator().manual_seed(len(name) + len(chunks))
    counts = torch.tensor([3, 0, 1, 70, 0, 2, 17, 5, 1, 0, 33, 8])  # empty rays, one sample, long ones
    S = int(counts.sum())
    info = torch.stack([torch.cumsum(counts, 0) - counts, counts], 1)
    if chunks == "gaps and shuffled":  # samples outside every chunk, chunks listed out of order
        S += 2 * len(counts) + 3
        info[:, 0] += torch.arange(len(counts)) * 2 - 1
        info[0, 0] = 0
        info = info[torch.randperm(len(counts), generator=g)]
    x = torch.rand(S, dtype=torch.float64, generator=g) * 1.5 + 0.25
    x[::9] = 0.0  # zeros: products and their gradients through them
    x[::7] *= -1
    x = x.to(dtype).requires_grad_()
    gout = torch.randn(S, dtype=dtype, generator=g)
    if chunks == "indices":
        ray_indices = torch.arange(len(counts)).repeat_interleave(counts)
        got = getattr(nerfacc, name)(x, indices=ray_indices)
    else:
        got = getattr(nerfacc, name)(x, info)
    want = padded_scan(x, info, prod, exclusive)
    tol = F32 if dtype == torch.float32 else F64
    assert_close(got, want, **tol, what=f"{name} {chunks}")
    (g_got,) = torch.autograd.grad((got * gout).sum(), x)
    (g_want,) = torch.autograd.grad((want * gout).sum(), x)
    assert_close(g_got, g_want, **tol, what=f"d {name} / d inputs, {chunks}")


def test_packed_scans_empty_and_bad_chunks():
    for name in SCANS:
        fn = getattr(nerfacc, name)
        assert fn(torch.rand(0), torch.zeros(0, 2, dtype=torch.long)).shape == (0,)
        assert fn(torch.rand(0), torch.tensor([[0, 0], [0, 0]])).shape == (0,)
        identity = 1.0 if SCANS[name][0] else 0.0
        assert fn(torch.rand(4), torch.tensor([[1, 0]])).tolist() == [identity] * 4
        with pytest.raises(ValueError, match="overlapping"):
            fn(torch.rand(6), torch.tensor([[0, 4], [3, 2]]))
        with pytest.raises(ValueError, match=r"in \[0, 6\)"):
            fn(torch.rand(6), torch.tensor([[4, 3]]))
        with pytest.raises(ValueError, match="sorted"):
            fn(torch.rand(3), indices=torch.tensor([1, 0, 0]))


def test_accumulate_along_rays_values_and_weights():
    weights = torch.tensor([0.5, 0.25, 0.2, 0.1])
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    ray_indices = torch.tensor([0, 0, 2, 2])
    acc = nerfacc.accumulate_along_rays(weights, values, ray_indices, n_rays=4)
    assert_close(acc, torch.tensor([[1.25, 2.0], [0, 0], [1.7, 2.0], [0, 0]]), **F32, what="values")
    opac = nerfacc.accumulate_along_rays(weights, None, ray_indices, n_rays=4)  # values None: weights, D = 1
    assert_close(opac, torch.tensor([[0.75], [0.0], [0.3], [0.0]]), **F32, what="opacity")
    # any sample order is fine here (a scatter-add, as nerfacc)
    perm = torch.tensor([3, 1, 0, 2])
    acc_perm = nerfacc.accumulate_along_rays(weights[perm], values[perm], ray_indices[perm], n_rays=4)
    assert_close(acc_perm, acc, **F32, what="permuted")
    # batched: [n_rays, n_samples] and [n_rays, n_samples, D]
    wb, vb = weights.reshape(2, 2), values.reshape(2, 2, 2)
    assert_close(nerfacc.accumulate_along_rays(wb, vb), acc[[0, 2]], **F32, what="batched values")
    assert_close(nerfacc.accumulate_along_rays(wb), opac[[0, 2]], **F32, what="batched weights")
    # in-place variant
    out = torch.zeros(4, 2)
    nerfacc.accumulate_along_rays_(weights, values, ray_indices, out)
    assert_close(out, acc, **F32, what="accumulate_along_rays_")


def plain_accumulate(weights, values, ray_indices, n_rays):
    """Per-ray sums written out with a scatter-add, the formula of nerfacc's accumulate_along_rays."""
    src = weights[:, None] * values
    return torch.zeros(n_rays, values.shape[1], dtype=src.dtype).index_add(0, ray_indices, src)


@pytest.mark.parametrize("layout", ["equal rays", "ragged sorted", "unsorted", "batched [2, 3, N]"])
def test_accumulate_along_rays_every_path_matches_scatter_add(layout):
    # equal rays go through a batched matrix product, ragged or unsorted ones through a scatter-add
    g = torch.Generator().manual_seed(11)
    counts = {"equal rays": [5] * 6, "ragged sorted": [0, 3, 7, 1, 0, 0], "unsorted": [2, 3, 0, 4, 1, 2],
              "batched [2, 3, N]": [5] * 6}[layout]
    R = len(counts)
    ray_indices = torch.arange(R).repeat_interleave(torch.tensor(counts))
    if layout == "unsorted":
        ray_indices = ray_indices[torch.randperm(len(ray_indices), generator=g)]
    S = len(ray_indices)
    w = torch.rand(S, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.rand(S, 2, dtype=torch.float64, generator=g, requires_grad=True)
    gout = torch.randn(R, 2, dtype=torch.float64, generator=g)
    if layout.startswith("batched"):
        out = nerfacc.accumulate_along_rays(w.reshape(2, 3, 5), v.reshape(2, 3, 5, 2)).reshape(R, 2)
        opac = nerfacc.accumulate_along_rays(w.reshape(2, 3, 5)).reshape(R, 1)
    else:
        out = nerfacc.accumulate_along_rays(w, v, ray_indices, n_rays=R)
        opac = nerfacc.accumulate_along_rays(w, None, ray_indices, n_rays=R)
    want = plain_accumulate(w, v, ray_indices, R)
    assert_close(out, want, **F64, what=f"{layout} values")
    assert_close(opac, plain_accumulate(w, torch.ones_like(v[:, :1]), ray_indices, R), **F64,
                 what=f"{layout} weights")
    got = torch.autograd.grad((out * gout).sum(), [w, v], create_graph=True)
    ref = torch.autograd.grad((want * gout).sum(), [w, v], create_graph=True)
    for a, b, name in zip(got, ref, ("weights", "values")):
        assert_close(a, b, **F64, what=f"{layout} d/d {name}")
    # second order (the backward is made of differentiable ops)
    h = torch.autograd.grad(got[0].sum() + got[1].square().sum(), [w, v], allow_unused=True)
    h_ref = torch.autograd.grad(ref[0].sum() + ref[1].square().sum(), [w, v], allow_unused=True)
    for a, b in zip(h, h_ref):
        if b is not None:
            assert_close(a, b, **F64, what=f"{layout} second order")
    out_ = torch.zeros(R, 2, dtype=torch.float64)
    if layout.startswith("batched"):
        nerfacc.accumulate_along_rays_(w.reshape(R, 5), v.reshape(R, 5, 2), None, out_)
    else:
        nerfacc.accumulate_along_rays_(w, v, ray_indices, out_)
    assert_close(out_, want, **F64, what=f"{layout} accumulate_along_rays_")


def test_accumulate_along_rays_promotes_dtypes_and_keeps_empty_rays():
    w = torch.rand(2, 4)
    v = torch.rand(2, 4, 3, dtype=torch.float64)
    out = nerfacc.accumulate_along_rays(w, v)
    assert out.dtype == torch.float64
    assert_close(out, (w.double()[..., None] * v).sum(-2), **F64, what="mixed dtypes")
    for layout in ((2, 4), (8,)):  # half precision: batched, and ragged packed rays
        wh, vh = torch.rand(layout).half(), torch.rand(layout + (3,)).half()
        ri = None if len(layout) == 2 else torch.tensor([0, 0, 0, 2, 2, 2, 2, 2])
        got = nerfacc.accumulate_along_rays(wh, vh, ri, None if ri is None else 3)
        want = (wh.float()[..., None] * vh.float()).sum(-2) if ri is None else plain_accumulate(
            wh.float(), vh.float(), ri, 3)
        assert got.dtype == torch.float16
        assert_close(got.float(), want, atol=2e-3, rtol=2e-3, what=f"float16 {layout}")
    empty = nerfacc.accumulate_along_rays(torch.rand(0), torch.rand(0, 3), torch.zeros(0, dtype=torch.long), n_rays=4)
    assert empty.shape == (4, 3) and not empty.any()
    assert nerfacc.accumulate_along_rays(torch.rand(3, 0), torch.rand(3, 0, 2)).shape == (3, 2)


def test_ray_indices_changed_in_place_are_packed_again():
    # the drop-in remembers the packing of the last ray_indices; an in-place write must not reuse it
    t_starts, t_ends, sigmas, _, _ = random_rays(4, 3)
    flat = [t.reshape(-1) for t in (t_starts, t_ends, sigmas)]
    ray_indices = torch.arange(4).repeat_interleave(3)
    nerfacc.render_weight_from_density(*flat, ray_indices=ray_indices, n_rays=4)
    ray_indices[:] = torch.tensor([0, 0, 0, 0, 0, 0, 2, 2, 2, 3, 3, 3])
    w, _, _ = nerfacc.render_weight_from_density(*flat, ray_indices=ray_indices, n_rays=4)
    ref, _, _ = plain_density(*(t.reshape(-1) for t in (t_starts, t_ends, sigmas)))
    want = torch.cat([plain_density(flat[0][:6], flat[1][:6], flat[2][:6])[0],
                      plain_density(flat[0][6:9], flat[1][6:9], flat[2][6:9])[0],
                      plain_density(flat[0][9:], flat[1][9:], flat[2][9:])[0]])
    assert_close(w, want, **F32, what="weights after an in-place change")
    acc = nerfacc.accumulate_along_rays(w, None, ray_indices, n_rays=4)
    assert_close(acc[:, 0], torch.stack([want[:6].sum(), torch.tensor(0.0), want[6:9].sum(), want[9:].sum()]),
                 **F32, what="accumulated after an in-place change")
    with torch.inference_mode():  # inference tensors have no version counter: packed every time
        ri = torch.arange(4).repeat_interleave(3)
        w_inf, _, _ = nerfacc.render_weight_from_density(*flat, ray_indices=ri, n_rays=4)
    assert_close(w_inf, plain_density(t_starts, t_ends, sigmas)[0].reshape(-1), **F32, what="inference mode")


def _kernel_errors():
    """max |float32 CPU kernel - float64 reference| / max(1, |reference|) over composite's outputs
    and gradients, and the same for the float32 reference (the error that float32 inputs alone
    cause), on rays of every length around the kernel's 64-sample blocks and its vector widths,
    with densities from 0 to 1e4 (transmittance underflows) and alphas up to exactly 1."""
    from pyengine.ops.composite import composite

    counts = torch.tensor([0, 1, 3, 4, 5, 7, 8, 9, 63, 64, 65, 128, 129, 300, 2])
    pi = torch.stack([counts.cumsum(0) - counts, counts], 1)
    S = int(counts.sum())
    g = torch.Generator().manual_seed(7)
    t0 = torch.rand(S, dtype=torch.float64, generator=g) * 4
    dt = torch.rand(S, dtype=torch.float64, generator=g) * 0.05
    worst = []
    for C in (0, 1, 2, 3, 4, 5, 9):
        for alpha_mode in (False, True):
            if alpha_mode:
                x = torch.rand(S, dtype=torch.float64, generator=g) * 0.5
                x[::9], x[::4] = 1.0, 0.0
            else:
                x = torch.rand(S, dtype=torch.float64, generator=g) * 10
                x[::5], x[::11], x[::13] = 1e-6, 1e4, 0.0
            v = torch.randn(S, C, dtype=torch.float64, generator=g)
            ups = None

            def run(dtype, backend):
                nonlocal ups
                xx, vv = x.to(dtype).requires_grad_(), v.to(dtype).requires_grad_()
                kw = {"alphas": xx} if alpha_mode else {"densities": xx}
                out = composite(pi, t0.to(dtype), (t0 + dt).to(dtype), values=vv, backend=backend, **kw)
                if ups is None:
                    ups = [torch.randn(o.shape, dtype=torch.float64, generator=g) for o in out]
                grads = torch.autograd.grad(out, [xx, vv], [u.to(dtype) for u in ups], allow_unused=True)
                return [t.double() for t in (*out, *grads) if t is not None]

            want, kernel, ref32 = run(torch.float64, "reference"), run(torch.float32, "cpu"), run(torch.float32,
                                                                                                 "reference")
            for a, r, b in zip(kernel, ref32, want):
                scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
                err = (a - b).abs().max().item() / scale if b.numel() else 0.0
                err32 = (r - b).abs().max().item() / scale if b.numel() else 0.0
                worst.append((err, err32, C, alpha_mode))
    return worst


@pytest.mark.parametrize("vector_path", ["native", "PYENGINE_NO_AVX2=1"])
def test_cpu_kernel_float32_error_is_that_of_float32_inputs(vector_path):
    """The float32 CPU kernel (blocked, vectorized, polynomial exp) errs no more than the float32
    reference; both of its vector paths (8 floats with AVX2, else 4) are checked."""
    from pyengine import _ext

    if _ext.load() is None:
        pytest.skip(_ext.error())
    if vector_path == "native":
        worst = _kernel_errors()
    else:  # the vector width is chosen once per process
        import json
        import os
        import subprocess

        code = "import json; from tests.compat.test_nerfacc import _kernel_errors; print(json.dumps(_kernel_errors()))"
        env = dict(os.environ, PYENGINE_NO_AVX2="1")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                             check=True)
        worst = json.loads(out.stdout.strip().splitlines()[-1])
    for err, err32, C, alpha_mode in worst:
        assert err <= 4 * err32 + 1e-6, f"C={C} alpha_mode={alpha_mode}: {err:.2e} vs float32 reference {err32:.2e}"


# packed vs batched, prefix_trans, gradients -------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_and_batched_agree_with_plain_torch(dtype):
    R, N = 7, 13
    t_starts, t_ends, sigmas, alphas, _ = random_rays(R, N, dtype)
    ray_indices, packed_info = packed(R, N)
    tol = F32 if dtype == torch.float32 else F64
    want = plain_density(t_starts, t_ends, sigmas)
    batched = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    flat = [t.reshape(-1) for t in (t_starts, t_ends, sigmas)]
    by_indices = nerfacc.render_weight_from_density(*flat, ray_indices=ray_indices, n_rays=R)
    by_info = nerfacc.render_weight_from_density(*flat, packed_info=packed_info)
    for name, b, i, p, w in zip(("weights", "trans", "alphas"), batched, by_indices, by_info, want):
        assert b.shape == (R, N) and b.dtype == dtype and i.shape == (R * N,)
        assert_close(b, w, **tol, what=f"batched {name}")
        assert_close(i, w.reshape(-1), **tol, what=f"ray_indices {name}")
        assert torch.equal(p, i), name

    want_w, want_t = plain_alpha(alphas)
    w_b, t_b = nerfacc.render_weight_from_alpha(alphas)
    w_i, t_i = nerfacc.render_weight_from_alpha(alphas.reshape(-1), ray_indices=ray_indices)
    assert_close(w_b, want_w, **tol, what="alpha weights")
    assert_close(t_b, want_t, **tol, what="alpha trans")
    assert_close(w_i, want_w.reshape(-1), **tol, what="packed alpha weights")
    assert_close(t_i, want_t.reshape(-1), **tol, what="packed alpha trans")


def test_batched_extra_leading_dims_and_single_ray():
    t_starts, t_ends, sigmas, _, _ = random_rays(6, 5)
    w, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    shaped = [t.reshape(2, 3, 5) for t in (t_starts, t_ends, sigmas)]
    assert_close(nerfacc.render_weight_from_density(*shaped)[0], w.reshape(2, 3, 5), **F32, what="[2, 3, N]")
    # 1-D without packed_info / ray_indices is one ray, as nerfacc's batched path
    assert_close(nerfacc.render_weight_from_density(t_starts[2], t_ends[2], sigmas[2])[0], w[2], **F32,
                 what="one ray")


def test_prefix_trans_multiplies_transmittance_and_weights():
    R, N = 5, 6
    t_starts, t_ends, sigmas, alphas, _ = random_rays(R, N)
    prefix = torch.rand(R, N) * 0.5 + 0.5
    w0, t0, a0 = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    w1, t1, a1 = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas, prefix_trans=prefix)
    assert_close(w1, w0 * prefix, **F32, what="weights")
    assert_close(t1, t0 * prefix, **F32, what="trans")
    assert torch.equal(a1, a0)
    ray_indices, _ = packed(R, N)
    wa, ta = nerfacc.render_weight_from_alpha(alphas.reshape(-1), ray_indices=ray_indices,
                                              prefix_trans=prefix.reshape(-1))
    want_w, want_t = plain_alpha(alphas)
    assert_close(wa, (want_w * prefix).reshape(-1), **F32, what="alpha weights")
    assert_close(ta, (want_t * prefix).reshape(-1), **F32, what="alpha trans")
    # with a per-ray prefix broadcast over the samples, and the gradient reaching it
    p = torch.rand(R, 1, requires_grad=True)
    w2, _ = nerfacc.render_weight_from_alpha(alphas, prefix_trans=p)
    (g,) = torch.autograd.grad(w2.sum(), p)
    assert_close(g, want_w.sum(-1, keepdim=True), **F32, what="d/d prefix_trans")


def test_gradients_match_plain_torch():
    R, N = 6, 9
    t_starts, t_ends, sigmas, alphas, _ = random_rays(R, N, torch.float64, seed=3)
    ray_indices, _ = packed(R, N)
    g = [torch.randn(R, N, dtype=torch.float64) for _ in range(3)]

    def grads(fn, inputs):
        inputs = [x.clone().requires_grad_() for x in inputs]
        outs = fn(*inputs)
        return torch.autograd.grad(sum((o.reshape(R, N) * gi).sum() for o, gi in zip(outs, g)), inputs)

    def shim_density(t0, t1, s):
        return nerfacc.render_weight_from_density(t0.reshape(-1), t1.reshape(-1), s.reshape(-1),
                                                  ray_indices=ray_indices, n_rays=R)

    # sigmas, t_starts and t_ends all get nerfacc's (autograd) gradients
    for got, want, name in zip(grads(shim_density, [t_starts, t_ends, sigmas]),
                               grads(plain_density, [t_starts, t_ends, sigmas]), ("t_starts", "t_ends", "sigmas")):
        assert_close(got, want, **F64, what=f"d/d {name}")

    got = grads(lambda a: nerfacc.render_weight_from_alpha(a.reshape(-1), ray_indices=ray_indices), [alphas])
    want = grads(plain_alpha, [alphas])
    assert_close(got[0], want[0], **F64, what="d/d alphas")

    # accumulate_along_rays: weights and values
    w = torch.rand(R * N, dtype=torch.float64, requires_grad=True)
    v = torch.rand(R * N, 3, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(R, 3, dtype=torch.float64)
    out = nerfacc.accumulate_along_rays(w, v, ray_indices, n_rays=R)
    gw, gv = torch.autograd.grad((out * gout).sum(), [w, v])
    assert_close(gw, (v * gout[ray_indices]).sum(-1), **F64, what="d/d weights")
    assert_close(gv, w[:, None] * gout[ray_indices], **F64, what="d/d values")


def test_gradcheck_float64():
    t_starts, t_ends, sigmas, alphas, _ = random_rays(3, 4, torch.float64, seed=5)
    ray_indices, _ = packed(3, 4)
    s = sigmas.reshape(-1).clone().requires_grad_()

    def fn(s):
        return nerfacc.render_weight_from_density(t_starts.reshape(-1), t_ends.reshape(-1), s,
                                                  ray_indices=ray_indices, n_rays=3)

    assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-8)
    a = alphas.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: nerfacc.render_weight_from_alpha(a), (a,), eps=1e-6, atol=1e-8)


# rendering ---------------------------------------------------------------------------------------

# three rays: 2 samples, none, 3 samples
R_T_STARTS = [0.0, 0.5, 1.0, 1.5, 2.0]
R_T_ENDS = [0.5, 1.0, 1.5, 2.0, 2.5]
R_RAY_INDICES = [0, 0, 2, 2, 2]
R_SIGMAS = [1.0, 3.0, 0.5, 2.0, 8.0]
R_RGBS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]]


def hand_render(expected_depths=True, bkgd=(0.0, 0.0, 0.0)):
    """Per-ray colours, opacity and depth with Python floats, straight from the definitions."""
    colors, opacities, depths, weights = [], [], [], []
    for ray in range(3):
        T, c, o, d = 1.0, [0.0, 0.0, 0.0], 0.0, 0.0
        for i in (i for i, r in enumerate(R_RAY_INDICES) if r == ray):
            tau = R_SIGMAS[i] * (R_T_ENDS[i] - R_T_STARTS[i])
            w = T * (1 - math.exp(-tau))
            weights.append(w)
            c = [ck + w * rk for ck, rk in zip(c, R_RGBS[i])]
            o += w
            d += w * (R_T_STARTS[i] + R_T_ENDS[i]) / 2
            T *= math.exp(-tau)
        if expected_depths:
            d /= max(o, torch.finfo(torch.float32).eps)
        colors.append([ck + bk * (1 - o) for ck, bk in zip(c, bkgd)])
        opacities.append([o])
        depths.append([d])
    return torch.tensor(colors), torch.tensor(opacities), torch.tensor(depths), torch.tensor(weights)


def rgb_sigma_fn(t_starts, t_ends, ray_indices):
    index = ((t_starts + t_ends) / 2 / 0.5).long()  # the samples tile [0, 2.5) by 0.5
    return torch.tensor(R_RGBS)[index], torch.tensor(R_SIGMAS)[index]


def test_rendering_matches_hand_computation():
    t_starts, t_ends, ray_indices = torch.tensor(R_T_STARTS), torch.tensor(R_T_ENDS), torch.tensor(R_RAY_INDICES)
    colors, opacities, depths, extras = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=3,
                                                          rgb_sigma_fn=rgb_sigma_fn)
    want_c, want_o, want_d, want_w = hand_render()
    assert colors.shape == (3, 3) and opacities.shape == (3, 1) and depths.shape == (3, 1)
    assert_close(colors, want_c, **F32, what="colors")
    assert_close(opacities, want_o, **F32, what="opacities")
    assert_close(depths, want_d, **F32, what="depths (expected: divided by the opacity, as nerfacc 0.5)")
    assert list(extras) == ["weights", "alphas", "trans", "sigmas", "rgbs"]
    assert_close(extras["weights"], want_w, **F32, what="weights")
    _, t, a = nerfacc.render_weight_from_density(t_starts, t_ends, torch.tensor(R_SIGMAS), ray_indices=ray_indices)
    assert_close(extras["trans"], t, **F32, what="trans")
    assert_close(extras["alphas"], a, **F32, what="alphas")
    assert torch.equal(extras["sigmas"], torch.tensor(R_SIGMAS)) and torch.equal(extras["rgbs"], torch.tensor(R_RGBS))

    _, _, depths_acc, _ = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=3, rgb_sigma_fn=rgb_sigma_fn,
                                            expected_depths=False)
    assert_close(depths_acc, hand_render(expected_depths=False)[2], **F32, what="accumulated depths")


def test_rendering_background_blend_and_alpha_fn():
    t_starts, t_ends, ray_indices = torch.tensor(R_T_STARTS), torch.tensor(R_T_ENDS), torch.tensor(R_RAY_INDICES)
    bkgd = torch.tensor([0.2, 0.4, 1.0])
    colors, _, _, _ = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=3, rgb_sigma_fn=rgb_sigma_fn,
                                        render_bkgd=bkgd)
    want_c, want_o, _, _ = hand_render(bkgd=bkgd.tolist())
    assert_close(colors, want_c, **F32, what="colors over the background")
    assert torch.equal(colors[1], bkgd)  # the ray without samples is the background

    def rgb_alpha_fn(t0, t1, ri):
        rgbs, sigmas = rgb_sigma_fn(t0, t1, ri)
        return rgbs, 1 - torch.exp(-sigmas * (t1 - t0))

    colors_a, opac_a, depths_a, extras = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=3,
                                                           rgb_alpha_fn=rgb_alpha_fn, render_bkgd=bkgd)
    assert list(extras) == ["weights", "trans", "rgbs", "alphas"]
    assert_close(colors_a, want_c, **F32, what="alpha-mode colors")
    assert_close(opac_a, want_o, **F32, what="alpha-mode opacities")
    assert_close(depths_a, hand_render()[2], **F32, what="alpha-mode depths")


@pytest.mark.parametrize("t_grad", [False, True], ids=["fused-depth", "t_starts-requires-grad"])
def test_rendering_batched_matches_packed_and_gradients(t_grad):
    R, N = 5, 8
    t_starts, t_ends, sigmas, _, rgbs = random_rays(R, N, torch.float64, seed=7)
    sig = sigmas.clone().requires_grad_()
    col = rgbs.clone().requires_grad_()
    ts = t_starts.clone().requires_grad_(t_grad)
    bkgd = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)

    out_b = nerfacc.rendering(ts, t_ends, rgb_sigma_fn=lambda *_: (col, sig), render_bkgd=bkgd)
    ray_indices, _ = packed(R, N)
    out_p = nerfacc.rendering(t_starts.reshape(-1), t_ends.reshape(-1), ray_indices, n_rays=R,
                              rgb_sigma_fn=lambda *_: (rgbs.reshape(-1, 3), sigmas.reshape(-1)),
                              render_bkgd=bkgd.detach())
    for name, b, p in zip(("colors", "opacities", "depths"), out_b[:3], out_p[:3]):
        assert b.shape == p.shape == ((R, 3) if name == "colors" else (R, 1)), name
        assert_close(b, p, **F64, what=name)
    assert out_b[3]["weights"].shape == (R, N)

    # gradients vs the plain formula, from all three outputs
    def plain(ts, s, c, bk):
        w, _, _ = plain_density(ts, t_ends, s)
        o = w.sum(-1, keepdim=True)
        d = (w * (ts + t_ends) / 2).sum(-1, keepdim=True) / o.clamp_min(torch.finfo(c.dtype).eps)
        return (w[..., None] * c).sum(-2) + bk * (1 - o), o, d

    gs = [torch.randn_like(t) for t in out_b[:3]]
    inputs = [ts, sig, col, bkgd]
    names = ["t_starts", "sigmas", "rgbs", "render_bkgd"]
    if not t_grad:
        inputs, names = inputs[1:], names[1:]
    got = torch.autograd.grad(sum((o * g).sum() for o, g in zip(out_b[:3], gs)), inputs)
    want = torch.autograd.grad(sum((o * g).sum() for o, g in zip(plain(ts, *inputs[-3:]), gs)), inputs)
    for name, a, b in zip(names, got, want):
        assert_close(a, b, **F64, what=f"d/d {name}")


def test_rendering_empty_samples():
    empty = torch.zeros(0)
    calls = []
    colors, opacities, depths, extras = nerfacc.rendering(
        empty, empty, torch.zeros(0, dtype=torch.long), n_rays=2,
        rgb_sigma_fn=lambda *a: calls.append(a), render_bkgd=torch.ones(3))
    assert not calls  # the field is not evaluated without samples, as in nerfacc
    assert torch.equal(colors, torch.ones(2, 3)) and torch.equal(opacities, torch.zeros(2, 1))
    assert torch.equal(depths, torch.zeros(2, 1)) and extras["weights"].shape == (0,)
    w, t, a = nerfacc.render_weight_from_density(empty, empty, empty, ray_indices=torch.zeros(0, dtype=torch.long))
    assert w.shape == t.shape == a.shape == (0,)


# bad input ---------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    t_starts, t_ends, sigmas, ray_indices, _ = doc_inputs()
    with pytest.raises(ValueError, match="sigmas must have the shape of t_starts"):
        nerfacc.render_weight_from_density(t_starts, t_ends, sigmas[:, None], ray_indices=ray_indices)
    with pytest.raises(ValueError, match="sorted"):
        nerfacc.render_weight_from_alpha(sigmas, ray_indices=ray_indices.flip(0))
    with pytest.raises(ValueError, match=r"n_rays\)"):
        nerfacc.render_weight_from_alpha(sigmas, ray_indices=ray_indices, n_rays=2)
    with pytest.raises(ValueError, match="packed_info must be"):
        nerfacc.render_weight_from_alpha(sigmas, packed_info=torch.tensor([0, 3, 5]))
    with pytest.raises(ValueError, match="overlap"):
        nerfacc.render_weight_from_alpha(sigmas, packed_info=torch.tensor([[0, 4], [3, 2]]))
    with pytest.raises(ValueError, match="flattened"):
        nerfacc.render_weight_from_alpha(sigmas.reshape(1, 7), packed_info=torch.tensor([[0, 7]]))
    with pytest.raises(TypeError, match="ray_indices must be an integer tensor"):
        nerfacc.render_weight_from_alpha(sigmas, ray_indices=ray_indices.float())
    with pytest.raises(TypeError, match="alphas must be a torch.Tensor"):
        nerfacc.render_weight_from_alpha([0.1, 0.2])
    with pytest.raises(ValueError, match="prefix_trans"):
        nerfacc.render_weight_from_alpha(sigmas, ray_indices=ray_indices, prefix_trans=torch.ones(3))
    with pytest.raises(ValueError, match="n_rays must be provided"):
        nerfacc.accumulate_along_rays(sigmas, None, ray_indices)
    with pytest.raises(ValueError, match="values must be"):
        nerfacc.accumulate_along_rays(sigmas, torch.ones(6, 3), ray_indices, n_rays=3)
    with pytest.raises(ValueError, match=r"\[0, n_rays\)"):
        nerfacc.accumulate_along_rays(sigmas, None, ray_indices, n_rays=2)
    with pytest.raises(ValueError, match="rgb_sigma_fn and rgb_alpha_fn"):
        nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=3)
    with pytest.raises(ValueError, match="n_rays must be provided"):
        nerfacc.rendering(t_starts, t_ends, ray_indices, rgb_sigma_fn=lambda *a: None)
    with pytest.raises(ValueError, match="sigmas"):
        nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=3,
                          rgb_sigma_fn=lambda t0, t1, ri: (torch.ones(7, 3), torch.ones(7, 1)))
    with pytest.raises(ValueError, match="rgbs"):
        nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=3,
                          rgb_sigma_fn=lambda t0, t1, ri: (torch.ones(3), torch.ones(7)))
    with pytest.raises(AttributeError, match="not implemented by pyengine"):
        nerfacc.PropNetEstimator  # noqa: B018
    with pytest.raises(ValueError, match="contraction_type"):
        nerfacc.OccGridEstimator([-1, -1, -1, 1, 1, 1], contraction_type="aabb")


# install_nerfacc and the estimator ---------------------------------------------------------------

@pytest.fixture
def clean_nerfacc_modules():
    names = [k for k in sys.modules if k == "nerfacc" or k.startswith("nerfacc.")]
    saved = {k: sys.modules.pop(k) for k in names}
    yield
    for key in [k for k in sys.modules if k == "nerfacc" or k.startswith("nerfacc.")]:
        sys.modules.pop(key, None)
    sys.modules.update(saved)


def test_install_nerfacc_registers_the_shim(clean_nerfacc_modules):
    import pyengine.compat

    module = pyengine.compat.install_nerfacc(force=True)
    import nerfacc as imported
    import nerfacc.estimators.occ_grid
    import nerfacc.volrend
    from nerfacc.estimators.occ_grid import OccGridEstimator
    from nerfacc.volrend import rendering

    assert imported is SHIM and module is SHIM and nerfacc is SHIM
    assert nerfacc.volrend.rendering is rendering is SHIM.rendering
    assert nerfacc.estimators.occ_grid.OccGridEstimator is OccGridEstimator is SHIM.OccGridEstimator
    assert imported.__version__.startswith("0.5")


def test_install_nerfacc_keeps_a_registered_module_unless_forced(clean_nerfacc_modules):
    import pyengine.compat

    other = types.ModuleType("nerfacc")
    sys.modules["nerfacc"] = other
    assert pyengine.compat.install_nerfacc() is other
    assert pyengine.compat.install_nerfacc(force=True) is SHIM
    sys.modules.pop("nerfacc")
    if importlib.util.find_spec("nerfacc") is None:  # no real nerfacc here: the shim, without force
        assert pyengine.compat.install_nerfacc() is SHIM


def test_occ_grid_estimator_update_sampling_and_rendering(clean_nerfacc_modules):
    import pyengine.compat

    pyengine.compat.install_nerfacc(force=True)
    from nerfacc import OccGridEstimator, rendering

    torch.manual_seed(0)
    est = OccGridEstimator(roi_aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=16, levels=1)
    assert set(est.state_dict()) == {"resolution", "aabbs", "occs", "binaries"}  # nerfacc's persistent buffers
    assert est.grid_coords.shape == (16**3, 3) and est.grid_indices.shape == (16**3,)

    def occ_eval_fn(x):  # a ball of radius 0.5, density 100, step 0.01
        return ((x.norm(dim=-1) < 0.5).float() * 100 * 0.01)[:, None]

    for step in range(3):
        est.update_every_n_steps(step, occ_eval_fn, occ_thre=0.01, n=1)
    assert 0 < int(est.binaries.sum()) < est.binaries.numel()

    rays_o = torch.tensor([[-2.0, 0.0, 0.0], [-2.0, 0.1, 0.0], [-2.0, 1.5, 0.0]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0]] * 3)

    def sigma_fn(t0, t1, ray_indices):
        x = rays_o[ray_indices] + rays_d[ray_indices] * ((t0 + t1) / 2)[:, None]
        return (x.norm(dim=-1) < 0.5).float() * 100

    ray_indices, t_starts, t_ends = est.sampling(rays_o, rays_d, sigma_fn=sigma_fn, render_step_size=0.01,
                                                 near_plane=0.0, far_plane=10.0)
    assert ray_indices.shape == t_starts.shape == t_ends.shape and ray_indices.numel() > 0
    assert set(ray_indices.tolist()) <= {0, 1}  # the third ray misses the ball
    mid = (t_starts + t_ends) / 2
    assert bool((mid > 1.3).all() and (mid < 2.7).all())

    def rgb_sigma_fn(t0, t1, ri):
        return torch.ones(t0.shape[0], 3), sigma_fn(t0, t1, ri)

    colors, opacities, depths, _ = rendering(t_starts, t_ends, ray_indices, n_rays=3, rgb_sigma_fn=rgb_sigma_fn)
    assert opacities[0, 0] > 0.99 and opacities[2, 0] == 0 and torch.equal(colors[2], torch.zeros(3))
    assert abs(float(depths[0, 0]) - 1.5) < 0.05  # the ball's surface along ray 0


def test_occ_grid_estimator_mark_invisible_cells():
    est = nerfacc.OccGridEstimator([-1, -1, -1, 1, 1, 1], resolution=8)
    K = torch.tensor([[[40.0, 0, 8], [0, 40.0, 8], [0, 0, 1]]])  # narrow field of view, 16 x 16 pixels
    c2w = torch.eye(4)[None, :3].clone()
    c2w[0, 2, 3] = -3.0  # at z = -3 looking down +z
    est.mark_invisible_cells(K, c2w, 16, 16)
    occs = est.occs.view(8, 8, 8)
    assert occs[3:5, 3:5, :].eq(0).all()  # the cells on the optical axis are seen
    assert occs[0, 0, :].eq(-1).all() and occs[7, 7, :].eq(-1).all()  # the corner columns are not
    est.train()
    est.update_every_n_steps(0, lambda x: torch.ones(x.shape[0], 1), n=1)
    assert occs.eq(-1).sum() == est.occs.eq(-1).sum()  # marked cells stay marked and empty
    assert not est.binaries.view(8, 8, 8)[0, 0].any() and est.binaries.view(8, 8, 8)[3, 3].all()
