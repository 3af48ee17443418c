"""st_attention's Triton kernels against the reference: both modes, cross-frame keys, bias and
masks, position encodings, strided layouts, odd head dims, several key/query blocks, dbias
partials, g_lse, determinism and low precision. Tiny sizes: on CPU the kernels run under
Triton's interpreter."""

import importlib

import pytest
import torch

import pyengine
from pyengine.ops import _dispatch
from pyengine.reference import st_attention as ref_mod
from tests.helpers import assert_close

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
pytestmark = pytest.mark.skipif(not (HAS_CUDA or _dispatch.triton_interpret()),
                                reason="Triton needs a CUDA device or TRITON_INTERPRET=1")

FP32_TOL = {"atol": 2e-5, "rtol": 2e-4}
# low precision: error vs a float64 reference at most twice the reference's own error in that dtype, plus a floor
LOWP_FLOOR = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture
def kmod():
    return importlib.import_module("pyengine.kernels.st_attention")


def _inputs(shape, dtype=torch.float32, seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device=DEVICE, dtype=dtype) for _ in range(n)]


def run(backend, q, k, v, g_out, bias=None, dtype=None, **kw):
    """(out, dq, dk, dv[, dbias]) of pyengine.st_attention with upstream gradient g_out; dtype
    recasts the inputs (the float64 reference)."""
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    q, k, v = (cast(x).detach().clone().requires_grad_() for x in (q, k, v))
    inputs = [q, k, v]
    if bias is not None:
        bias = bias.detach().clone().to(torch.float64 if dtype == torch.float64 else torch.float32)
        bias.requires_grad_()
        inputs.append(bias)
    out = pyengine.st_attention(q, k, v, bias=bias, backend=backend, **kw)
    grads = torch.autograd.grad(out, inputs, cast(g_out).to(out.dtype))
    return [out, *grads]


def check_fp32(got, want, what):
    names = ["out", "dq", "dk", "dv", "dbias"]
    for name, a, e in zip(names, got, want):
        assert torch.isfinite(a).all(), f"{what}: {name} has non-finite values"
        assert_close(a.double(), e.double(), what=f"{what}: {name}", **FP32_TOL)


def compare(q, k, v, g_out, bias=None, what="", **kw):
    got = run("triton", q, k, v, g_out, bias=bias, **kw)
    want = run("reference", q, k, v, g_out, bias=bias, dtype=torch.float64, **kw)
    check_fp32(got, want, what)
    return got


@pytest.mark.parametrize("shape,heads,D", [((1, 5, 3, 4), 1, 8), ((1, 4, 2, 3), 2, 3), ((2, 3, 1, 5), 2, 5)])
def test_temporal(shape, heads, D):
    q, k, v, go = _inputs((*shape, heads * D), seed=sum(shape) + D)
    compare(q, k, v, go, mode="temporal", heads=heads, what=f"temporal {shape} heads={heads} D={D}")


@pytest.mark.parametrize("cross_frame,shape,heads,D", [
    ("self", (1, 4, 3, 4), 2, 3),
    (("first",), (2, 3, 2, 3), 1, 5),
    (("previous",), (1, 4, 3, 4), 2, 3),
    (("first", "previous"), (2, 3, 2, 3), 1, 5),
    (("self", "first", "previous"), (1, 4, 3, 4), 2, 3),
])
def test_spatial(cross_frame, shape, heads, D):
    q, k, v, go = _inputs((*shape, heads * D), seed=7)
    compare(q, k, v, go, mode="spatial", heads=heads, cross_frame=cross_frame,
            what=f"spatial {cross_frame} {shape} heads={heads} D={D}")


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
@pytest.mark.parametrize("bias_heads", [1, 2])
def test_bias_and_mask_with_a_fully_masked_row(mode, bias_heads):
    B, T, H, W, heads, D = 1, 4, 2, 3, 2, 3
    q, k, v, go = _inputs((B, T, H, W, heads * D), seed=11)
    L = T if mode == "temporal" else H * W
    Lk = L if mode == "temporal" else 2 * L
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(bias_heads, L, Lk, generator=g).to(DEVICE)
    mask = torch.rand(L, Lk, generator=g) > 0.3
    mask[:, 0] = True
    mask[1] = False  # query 1 sees no key
    mask = mask.to(DEVICE)
    kw = {"mode": mode, "heads": heads, "mask": mask}
    if mode == "spatial":
        kw["cross_frame"] = ("self", "previous")
    got = compare(q, k, v, go, bias=bias, what=f"{mode} bias[{bias_heads}] + mask", **kw)
    out = got[0]
    row = out[:, 1] if mode == "temporal" else out.reshape(B, T, H * W, -1)[:, :, 1]
    assert torch.equal(row, torch.zeros_like(row)), "a fully masked query must give 0"
    dbias = got[4]
    assert torch.equal(dbias[:, ~mask], torch.zeros_like(dbias[:, ~mask])), "masked entries get no bias gradient"


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_mask_only_every_row_masked(mode):
    q, k, v, go = _inputs((1, 3, 2, 2, 4), seed=5)
    L = 3 if mode == "temporal" else 4
    mask = torch.zeros(L, L, dtype=torch.bool, device=DEVICE)
    got = compare(q, k, v, go, mode=mode, heads=2, mask=mask, what=f"{mode} all masked")
    for g in got:
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
@pytest.mark.parametrize("table", [False, True])
def test_pos_encoding(mode, table):
    B, T, H, W, heads, D = 1, 4, 3, 3, 2, 5
    q, k, v, go = _inputs((B, T, H, W, heads * D), seed=13)
    L = T if mode == "temporal" else H * W
    pe = torch.randn(L, D, generator=torch.Generator().manual_seed(1)).to(DEVICE) if table else True
    kw = {"cross_frame": ("first", "self")} if mode == "spatial" else {}
    compare(q, k, v, go, mode=mode, heads=heads, pos_encoding=pe, what=f"{mode} pos table={table}", **kw)


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_bcthw_strided_views(mode):
    B, C, T, H, W = 1, 6, 4, 3, 3
    q, k, v, go = _inputs((B, C, T, H, W), seed=17)
    # k: a channel slice of a wider tensor, v: a permuted channels-last copy seen as [B, C, T, H, W]
    k = torch.cat([k, torch.randn_like(k)], 1)[:, :C]
    v = v.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
    kw = {"mode": mode, "heads": 2, "layout": "bcthw", "pos_encoding": True}
    if mode == "spatial":
        kw["cross_frame"] = ("self", "first")
    got = compare(q, k, v, go, what=f"{mode} bcthw", **kw)
    assert got[0].shape == (B, C, T, H, W)


def test_any_strides_bthwc():
    """Channels-last inputs that are slices (non-unit pixel strides, offset storage)."""
    base = _inputs((1, 4, 4, 4, 12), seed=19)
    q, k, v = (x[:, 1:, ::2, 1:, 2:8] for x in base[:3])
    go = _inputs(q.shape, seed=20, n=1)[0]
    compare(q, k, v, go, mode="temporal", heads=2, what="temporal sliced")
    compare(q, k, v, go, mode="spatial", heads=3, cross_frame=("previous",), what="spatial sliced")


@pytest.mark.parametrize("mode,blocks", [("temporal", (1, 4, 8)), ("temporal", (1, 8, 4)), ("spatial", (1, 4, 8)),
                                         ("temporal", (2, 8, 8)), ("temporal", (4, 16, 16))])
def test_several_blocks(kmod, monkeypatch, mode, blocks):
    """Small tiles force several query and key blocks per sequence (online-softmax rescaling,
    partial last blocks) and, with SEQ > 1, packed temporal sequences (SEQ sequences of
    BLOCK / SEQ slots, the last group partial). Under the interpreter the tiles go below 16 and
    BLOCK_D = next power of two of D exactly (it allows such dots); compiled on a GPU, where dots
    need M, N, K >= 16, the tiles are 4x larger (at least 16) and the sequences with them."""
    several_blocks(kmod, monkeypatch, mode, blocks, compiled=HAS_CUDA)


def several_blocks(kmod, monkeypatch, mode, blocks, compiled):
    seq, bm, bn = blocks
    scale = 4 if compiled else 1
    bm, bn = max(16, bm * scale) if compiled else bm, max(16, bn * scale) if compiled else bn
    if not compiled:
        monkeypatch.setattr(kmod, "_MIN_BLOCK", 1)
    monkeypatch.setattr(kmod, "_config", lambda kind, temporal, L, block_d: (1 if kind == "dbias" else seq, bm, bn, 4))
    side = 3 * (1 + compiled)
    B, T, H, W, heads, D = (1, 5 * scale, 2, 2, 2, 5) if mode == "temporal" else (1, 2, side, side, 2, 5)
    if seq > 1:
        slots = bm // seq
        T = slots - 1 if seq == 2 else slots  # seq == 2: padded slots
    q, k, v, go = _inputs((B, T, H, W, heads * D), seed=23)
    L = T if mode == "temporal" else H * W
    Lk = L if mode == "temporal" else 2 * L
    assert max(L, Lk) > min(bm, bn) or seq > 1, "the sizes must span several blocks"
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(heads, L, Lk, generator=g).to(DEVICE)
    mask = (torch.rand(L, Lk, generator=g) > 0.25).to(DEVICE)
    mask[-1] = False
    kw = {"mode": mode, "heads": heads, "mask": mask, "pos_encoding": True}
    if mode == "spatial":
        kw["cross_frame"] = ("previous", "self")
    compare(q, k, v, go, bias=bias, what=f"{mode} blocks {blocks}{' (compiled sizes)' if compiled else ''}", **kw)


def test_several_blocks_at_compiled_sizes_under_the_interpreter(kmod, monkeypatch):
    """The GPU variant's sizes, checked here too (one case: the interpreter is slow)."""
    if HAS_CUDA:
        pytest.skip("runs compiled in test_several_blocks")
    several_blocks(kmod, monkeypatch, "spatial", (1, 4, 8), compiled=True)


@pytest.mark.parametrize("programs", [1, 3])
def test_dbias_shares(kmod, monkeypatch, programs):
    """dbias with fewer shares than sequences: each program loops over several sequences."""
    monkeypatch.setattr(kmod, "_DBIAS_PROGRAMS", programs)
    q, k, v, go = _inputs((2, 3, 2, 2, 4), seed=29)
    bias = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    compare(q, k, v, go, bias=bias, mode="temporal", heads=2, what=f"temporal dbias programs={programs}")
    bias = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    compare(q, k, v, go, bias=bias, mode="spatial", heads=2, cross_frame=("self", "first"),
            what=f"spatial dbias programs={programs}")


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_g_lse_and_kernel_level_backward(kmod, mode):
    """The backward kernel honours g_lse (dS = P (dP - Delta + g_lse)) and the need_* flags."""
    B, T, H, W, heads, D = 1, 3, 2, 3, 2, 3
    q, k, v, go = _inputs((B, T, H, W, heads * D), seed=31)
    temporal = mode == "temporal"
    L = T if temporal else H * W
    kvf = (torch.zeros(0, 1, dtype=torch.int32) if temporal
           else torch.tensor([[0, 0], [1, 0], [2, 1]], dtype=torch.int32)).to(DEVICE)
    n_src = 1 if temporal else 2
    g = torch.Generator().manual_seed(6)
    bias = torch.randn(heads, L, n_src * L, generator=g).to(DEVICE)
    bias[0, 0, :2] = float("-inf")  # masked pairs (a fully masked row: test_bias_and_mask_...)
    pos = torch.randn(L, D, generator=g).to(DEVICE)
    g_lse = torch.randn(B, T, H, W, heads, generator=g).to(DEVICE)
    args = (kvf, bias, pos, heads, temporal, 0.7)
    out, lse = kmod.st_attention_fwd(q, k, v, *args)
    r64 = [x.double() for x in (q, k, v)]

    def f(q_, k_, v_, b_):
        return ref_mod.st_attention_fwd(q_, k_, v_, kvf, b_, pos.double(), heads, temporal, 0.7)

    (out_r, lse_r), vjp = torch.func.vjp(f, *r64, bias.double())
    assert_close(out.double(), out_r, what="out", **FP32_TOL)
    assert_close(lse.double(), lse_r, what="lse", **FP32_TOL)
    want = vjp((go.double(), g_lse.double()))
    got = kmod.st_attention_bwd(go, g_lse, q, k, v, *args[:3], out, lse, *args[3:], True, True, True, True)
    for name, a, e in zip(["dq", "dk", "dv", "dbias"], got, want):
        assert torch.isfinite(a).all(), name
        assert_close(a.double(), e, what=name, **FP32_TOL)
    some = kmod.st_attention_bwd(go, g_lse, q, k, v, *args[:3], out, lse, *args[3:], False, False, True, False)
    assert some[0] is None and some[1] is None and some[3] is None
    assert torch.equal(some[2], got[2]), "dv alone must equal dv computed with the others"


def test_backward_is_deterministic():
    q, k, v, go = _inputs((1, 3, 2, 2, 6), seed=37)
    bias = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    kw = {"mode": "spatial", "heads": 2, "cross_frame": ("first", "previous")}
    a = run("triton", q, k, v, go, bias=bias, **kw)
    b = run("triton", q, k, v, go, bias=bias, **kw)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_low_precision(dtype, mode):
    B, T, H, W, heads, D = 1, 4, 3, 3, 2, 8
    q, k, v, go = _inputs((B, T, H, W, heads * D), seed=41)
    q, k, v, go = (x.to(dtype) for x in (q, k, v, go))
    L = T if mode == "temporal" else H * W
    Lk = L if mode == "temporal" else 2 * L
    bias = torch.randn(1, L, Lk, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    kw = {"mode": mode, "heads": heads, "pos_encoding": True}
    if mode == "spatial":
        kw["cross_frame"] = ("self", "previous")
    got = run("triton", q, k, v, go, bias=bias, **kw)
    low = run("reference", q, k, v, go, bias=bias, **kw)
    exact = run("reference", q, k, v, go, bias=bias, dtype=torch.float64, **kw)
    for name, a, lo, e in zip(["out", "dq", "dk", "dv", "dbias"], got, low, exact):
        assert a.dtype == (dtype if name != "dbias" else torch.float32), name
        assert torch.isfinite(a).all(), name
        err = (a.double() - e).abs().max().item()
        ref_err = (lo.double() - e).abs().max().item()
        scale = e.abs().max().item()
        bound = 2 * ref_err + LOWP_FLOOR[dtype] * max(scale, 1.0)
        assert err <= bound, f"{dtype} {mode} {name}: max error {err:.3e} > {bound:.3e} (reference's {ref_err:.3e})"


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_empty(mode):
    q = torch.zeros(0, 3, 2, 2, 4, device=DEVICE, requires_grad=True)
    out = pyengine.st_attention(q, q, q, mode=mode, heads=2, backend="triton")
    assert out.shape == q.shape
    (g,) = torch.autograd.grad(out.sum(), q)
    assert g.shape == q.shape


def test_bad_inputs(kmod):
    q = torch.zeros(1, 2, 2, 2, 4, dtype=torch.float64, device=DEVICE)
    none = torch.zeros(0, device=DEVICE)
    kvf = torch.zeros(0, 1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(TypeError, match="q must be float16, bfloat16 or float32"):
        kmod.st_attention_fwd(q, q, q, kvf, none, none, 2, True, 1.0)
    with pytest.raises(_dispatch.BackendError, match="float64 inputs need"):
        pyengine.st_attention(q, q, q, mode="temporal", heads=2, backend="triton")
    q = q.float()
    with pytest.raises(ValueError, match="bias must be float32"):
        kmod.st_attention_fwd(q, q, q, kvf, torch.zeros(1, 3, 2, device=DEVICE), none, 2, True, 1.0)
    with pytest.raises(ValueError, match="kv_frames must be int32"):
        kmod.st_attention_fwd(q, q, q, kvf, none, none, 2, False, 1.0)
    with pytest.raises(ValueError, match="heads must be"):
        kmod.st_attention_fwd(q, q, q, kvf, none, none, 3, True, 1.0)
