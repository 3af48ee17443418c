"""st_attention: the reference against independent formulations (SDPA on rearranged copies, an
explicit loop), then every backend against the reference through the shared harness."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import pyengine
from pyengine.ops.st_attention import relative_position_bias, sinusoidal_table, st_attention, t5_buckets
from tests.op_harness import Bad, Case, OpSuite, change

st_mod = importlib.import_module("pyengine.ops.st_attention")


def rand(shape, g, dtype, device="cpu"):
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def sdpa_rearrange(q, k, v, heads, mode, bias=None):
    """What diffusers does: permute into (b h w) t c or (b t) (h w) c copies, split heads, SDPA."""
    B, T, H, W, C = q.shape
    D = C // heads
    if mode == "temporal":
        f = lambda x: x.permute(0, 2, 3, 1, 4).reshape(B * H * W, T, heads, D).transpose(1, 2)  # noqa: E731
    else:
        f = lambda x: x.reshape(B * T, H * W, heads, D).transpose(1, 2)  # noqa: E731
    o = F.scaled_dot_product_attention(f(q), f(k), f(v), attn_mask=bias)
    if mode == "temporal":
        return o.transpose(1, 2).reshape(B, H, W, T, C).permute(0, 3, 1, 2, 4)
    return o.transpose(1, 2).reshape(B, T, H, W, C)


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_reference_matches_sdpa_on_rearranged_copies(mode):
    g = torch.Generator().manual_seed(0)
    q, k, v = (rand((2, 5, 3, 4, 24), g, torch.float64) for _ in range(3))
    bias = rand((3, 5, 5) if mode == "temporal" else (3, 12, 12), g, torch.float64)
    got = st_attention(q, k, v, mode=mode, heads=3, bias=bias, backend="reference")
    assert torch.allclose(got, sdpa_rearrange(q, k, v, 3, mode, bias), atol=1e-12)


def test_reference_cross_frame_and_position_encoding_by_loop():
    """Spatial attention of frame t over frames (0, t-1), with sinusoidal positions, one (b, t,
    head, pixel) at a time."""
    g = torch.Generator().manual_seed(1)
    B, T, H, W, heads, D = 1, 4, 2, 3, 2, 5
    q, k, v = (rand((B, T, H, W, heads * D), g, torch.float64) for _ in range(3))
    got = st_attention(q, k, v, mode="spatial", heads=heads, cross_frame=("first", "previous"), pos_encoding=True,
                       backend="reference")
    pe = sinusoidal_table(H * W, D, torch.float64)
    want = torch.zeros_like(got)
    for t in range(T):
        for h in range(heads):
            sl = slice(h * D, (h + 1) * D)
            qs = q[0, t].reshape(H * W, heads * D)[:, sl] + pe
            ks = torch.cat([k[0, f].reshape(H * W, -1)[:, sl] + pe for f in (0, max(t - 1, 0))])
            vs = torch.cat([v[0, f].reshape(H * W, -1)[:, sl] for f in (0, max(t - 1, 0))])
            p = torch.softmax(qs @ ks.T / math.sqrt(D), -1)
            want[0, t].reshape(H * W, -1)[:, sl] = p @ vs
    assert torch.allclose(got, want, atol=1e-12)


def test_sinusoidal_table_and_t5_buckets_by_formula():
    pe = sinusoidal_table(7, 6, torch.float64)
    for p in range(7):
        for i in range(3):
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)), abs=1e-12)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)), abs=1e-12)
    b = t5_buckets(40, 40, num_buckets=32, max_distance=128)
    # 16 buckets per sign: distances below 8 exact, then logarithmic; positive j - i offset by 16
    assert b[0, 0] == 0 and b[5, 0] == 5 and b[0, 5] == 21 and b[7, 0] == 7
    assert b[20, 0] == 8 + int(math.log(20 / 8) / math.log(128 / 8) * 8)
    assert bool((b < 32).all()) and bool((b >= 0).all())
    assert torch.equal(b[3:, :-3].diagonal(), b[3:, :-3].diagonal()[:1].expand(37))  # depends on j - i only


def test_mask_and_fully_masked_rows():
    g = torch.Generator().manual_seed(2)
    q, k, v = (rand((1, 4, 2, 2, 6), g, torch.float64) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    mask[2] = False  # frame 2 may attend to nothing: output 0
    qq = q.clone().requires_grad_()
    out = st_attention(qq, k, v, mode="temporal", heads=2, mask=mask, backend="reference")
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    want = sdpa_rearrange(q, k, v, 2, "temporal", causal)
    keep = torch.tensor([0, 1, 3])
    assert torch.allclose(out[:, keep], want[:, keep], atol=1e-12) and not out[:, 2].any()
    out.sum().backward()
    assert torch.isfinite(qq.grad).all() and not qq.grad[:, 2].any()


def test_relative_position_bias_gradient_reaches_the_table():
    g = torch.Generator().manual_seed(3)
    q, k, v = (rand((1, 6, 2, 2, 8), g, torch.float64) for _ in range(3))
    table = rand((2, 32), g, torch.float64).requires_grad_()
    out = st_attention(q, k, v, mode="temporal", heads=2, bias=relative_position_bias(table, 6), backend="reference")
    out.square().sum().backward()
    used = t5_buckets(6, 6).unique()
    assert table.grad[:, used].abs().min() > 0 and not table.grad[:, [i for i in range(32) if i not in used]].any()


# --------------------------------------------------------------------------------- the harness


def _case(name, B, T, H, W, heads, D, mode, layout="bthwc", bias=False, mask=False, pos=False, cross=("self",),
          dtypes=(torch.float32, torch.float64), triton=True, cpu=True):
    def make(g, dtype, device):
        shape = (B, T, H, W, heads * D)
        q, k, v = (rand(shape, g, dtype, device) for _ in range(3))
        if layout == "bcthw":
            q, k, v = (x.permute(0, 4, 1, 2, 3).contiguous() for x in (q, k, v))
        L = T if mode == "temporal" else H * W
        Lk = L if mode == "temporal" else len(cross) * L
        kw = {"mode": mode, "heads": heads, "layout": layout}
        f = torch.float64 if dtype == torch.float64 else torch.float32
        if bias:
            kw["bias"] = rand((heads, L, Lk), g, f, device)
        if mask:
            m = torch.rand(L, Lk, generator=g) < 0.7
            m[:, 0] = True
            if L > 2:
                m[1] = False  # one fully masked row
            kw["mask"] = m.to(device)
        if pos:
            kw["pos_encoding"] = True
        if mode == "spatial":
            kw["cross_frame"] = cross
        return [q, k, v], kw
    return Case(name, make, dtypes=dtypes, triton=triton, cpu=cpu)


LOW = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CASES = [
    _case("temporal-T5-D8", 2, 5, 2, 3, 2, 8, "temporal", dtypes=LOW),
    _case("spatial-HW6-D5", 1, 3, 2, 3, 2, 5, "spatial", dtypes=LOW),
    _case("temporal-odd-D3-bias-mask-pos", 1, 7, 1, 3, 3, 3, "temporal", bias=True, mask=True, pos=True),
    _case("spatial-cross-first-previous", 1, 4, 2, 2, 1, 4, "spatial", cross=("first", "previous"), bias=True),
    _case("spatial-bcthw-pos", 2, 2, 2, 3, 2, 4, "spatial", layout="bcthw", pos=True),
    _case("temporal-bcthw", 1, 6, 2, 2, 2, 6, "temporal", layout="bcthw"),
    _case("temporal-T1", 2, 1, 2, 2, 1, 4, "temporal"),
    _case("empty-batch", 0, 4, 2, 2, 2, 4, "temporal"),
    _case("spatial-empty-frames", 1, 0, 2, 2, 2, 4, "spatial"),
    _case("temporal-T19-D40", 1, 19, 2, 2, 2, 40, "temporal", dtypes=LOW, triton=False),
    _case("spatial-HW80-D72", 1, 2, 8, 10, 1, 72, "spatial", dtypes=LOW, triton=False),
    _case("temporal-T24-D160-bias", 1, 24, 1, 2, 1, 160, "temporal", bias=True, triton=False),
    # D > 128 with a bias: the bias gradient's own block sizes (an H200 ran out of shared memory)
    _case("spatial-HW6-D136-bias", 1, 2, 2, 3, 1, 136, "spatial", bias=True, dtypes=(torch.float32,)),
]


def _base(g, device):
    q, k, v = (rand((2, 4, 2, 3, 6), g, torch.float32, device) for _ in range(3))
    return [q, k, v], {"mode": "temporal", "heads": 2}


BAD = [
    Bad("int-q", change(0, lambda t: t.long()), TypeError, "q must be float16"),
    Bad("4d-k", change(1, lambda t: t[0]), ValueError, r"k must be \[B, T, H, W, C\]"),
    Bad("shape-mismatch", change(2, lambda t: t[:, :3]), ValueError, r"v must be \[B, T, H, W, C\].*T = 4"),
    Bad("dtype-mismatch", change(1, lambda t: t.double()), TypeError, "one dtype"),
    Bad("heads", change("heads", lambda h: 4), ValueError, "heads must be a positive int dividing C = 6"),
    Bad("mode", change("mode", lambda m: "3d"), ValueError, "mode must be 'temporal' or 'spatial'"),
    Bad("layout", lambda a, k: (a, {**k, "layout": "bhwtc"}), ValueError, "layout must be"),
    Bad("bias-shape", lambda a, k: (a, {**k, "bias": torch.zeros(3, 4, 4)}), ValueError, r"bias must be \[Lq, Lk\]"),
    Bad("mask-dtype", lambda a, k: (a, {**k, "mask": torch.ones(4, 4)}), TypeError, "mask must be a bool tensor"),
    Bad("mask-shape", lambda a, k: (a, {**k, "mask": torch.ones(4, 5, dtype=torch.bool)}), ValueError,
        r"mask must be \[Lq, Lk\] = \[4, 4\]"),
    Bad("pos-shape", lambda a, k: (a, {**k, "pos_encoding": torch.zeros(4, 4)}), ValueError,
        r"pos_encoding must be .*\[4, 3\]"),
    Bad("cross-frame-temporal", lambda a, k: (a, {**k, "cross_frame": ("first",)}), ValueError,
        "cross_frame applies to mode='spatial' only"),
    Bad("cross-frame-name", lambda a, k: (a, {**k, "mode": "spatial", "cross_frame": ("next",)}), ValueError,
        "cross_frame must be"),
    Bad("device", change(2, lambda t: t.to("meta")), ValueError, "v is on meta"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "cuda"),
]

SUITE = OpSuite(st_mod.OP, st_attention, CASES, grads=(0, 1, 2, "bias"),
                tol={torch.float32: (2e-6, 1e-5), torch.float64: (1e-13, 1e-11), torch.float16: (2e-3, 0),
                     torch.bfloat16: (1e-2, 0)},
                base=_base, bad=BAD, gradcheck_case="temporal-odd-D3-bias-mask-pos")
globals().update(SUITE.tests())


@pytest.mark.parametrize("layout", ["bthwc", "bcthw"])
def test_plain_spatial_attention_runs_sdpa_when_no_backend_is_requested(monkeypatch, layout):
    """Automatic dispatch sends plain spatial self-attention on CUDA tensors to SDPA on views
    (here the route is switched on for CPU tensors to check it: forward and backward match the
    float64 reference); a bias, a mask, position encoding, cross-frame keys, temporal mode or a
    requested backend keep it on pyengine's kernels, and so do CPU tensors by default."""
    from pyengine.ops import st_attention as mod

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 5, 7, 12, generator=g, requires_grad=True) for _ in range(3))
    perm = (lambda x: x.permute(0, 4, 1, 2, 3)) if layout == "bcthw" else (lambda x: x)
    st_attention(perm(q), perm(k), perm(v), mode="spatial", heads=3, layout=layout)
    assert not calls, "CPU tensors took the SDPA route by default"
    monkeypatch.setattr(mod, "_SDPA_DEVICES", ("cuda", "cpu"))
    out = st_attention(perm(q), perm(k), perm(v), mode="spatial", heads=3, layout=layout)
    assert calls, "plain spatial attention did not run SDPA"
    go = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), go)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = st_attention(perm(qd), perm(kd), perm(vd), mode="spatial", heads=3, layout=layout, backend="reference")
    want_grads = torch.autograd.grad(want, (qd, kd, vd), go.double())
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-4)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-4)
    assert out.shape == perm(q).shape

    L = 5 * 7
    for kw in ({"bias": torch.zeros(L, L)}, {"mask": torch.ones(L, L, dtype=torch.bool)}, {"pos_encoding": True},
               {"cross_frame": ("first",)}, {"backend": "cpu"}, {"backend": "reference"}):
        calls.clear()
        st_attention(q, k, v, mode="spatial", heads=3, **kw)
        assert not calls, f"{kw} ran SDPA"
    calls.clear()
    st_attention(q, k, v, mode="temporal", heads=3)
    assert not calls
    with pyengine.use_backend("cpu"):
        st_attention(q, k, v, mode="spatial", heads=3)
    assert not calls
