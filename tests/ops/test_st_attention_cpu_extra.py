"""st_attention's CPU kernel beyond the shared harness: strided inputs, key tiling, masked rows,
cross-frame gradients, determinism across thread counts, many sequences, the 16-byte vector path.

Every check compares ``backend="cpu"`` with ``backend="reference"`` through the public function.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pyengine import _ext
from pyengine.ops.st_attention import st_attention
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(_ext.load() is None or not hasattr(_ext.load(), "st_attention_fwd"),
                                reason="pyengine._C with st_attention is not built")

TOL = {torch.float32: (2e-5, 2e-5), torch.float64: (1e-10, 1e-10)}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _leaves(g, shapes, dtype, make=None):
    """Random leaf tensors; ``make(t)`` may turn each into a non-contiguous view of the same shape."""
    out = []
    for s in shapes:
        t = torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
        out.append(make(t) if make else t)
    return out


def _run(backend, q, k, v, grad_out, bias=None, **kw):
    """Output and gradients w.r.t. q, k, v (and bias) of one backend, on fresh leaves."""
    leaves = [x.detach().clone().requires_grad_() if x.is_contiguous() else x.detach().requires_grad_()
              for x in (q, k, v)]
    b = bias.detach().clone().requires_grad_() if bias is not None else None
    out = st_attention(*leaves, bias=b, backend=backend, **kw)
    wrt = leaves + ([b] if b is not None else [])
    grads = torch.autograd.grad(out, wrt, grad_out)
    return out.detach(), [gr.detach() for gr in grads]


def _compare(q, k, v, bias=None, dtype=None, what="", **kw):
    dtype = dtype or q.dtype
    g = torch.Generator().manual_seed(123)
    out_shape = q.shape
    grad_out = torch.randn(*out_shape, generator=g, dtype=torch.float64).to(dtype)
    ref_out, ref_grads = _run("reference", q, k, v, grad_out, bias, **kw)
    out, grads = _run("cpu", q, k, v, grad_out, bias, **kw)
    atol, rtol = TOL[dtype]
    assert_close(out, ref_out, atol, rtol, f"{what} out")
    for name, a, e in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        assert_close(a, e, atol * 10, rtol * 10, f"{what} {name}")
    return out, grads


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bcthw_views(mode, dtype):
    """[B, C, T, H, W] tensors: the kernel reads the permuted views (channel stride T H W)."""
    g = torch.Generator().manual_seed(1)
    B, C, T, H, W = 2, 12, 5, 3, 7
    q, k, v = _leaves(g, [(B, C, T, H, W)] * 3, dtype)
    kw = {"cross_frame": ("self", "previous")} if mode == "spatial" else {}
    _compare(q, k, v, mode=mode, heads=3, layout="bcthw", pos_encoding=True, what=f"bcthw {mode}", **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bcthw_views_whole_pixel_blocks(dtype):
    """Temporal attention on [B, C, T, H, W] views with rows of 40 pixels: blocks of 32 and 8
    pixels, whose float32 loads and stores go through 8 x 8 register transposes."""
    g = torch.Generator().manual_seed(11)
    B, C, T, H, W = 1, 16, 5, 2, 40
    q, k, v = _leaves(g, [(B, C, T, H, W)] * 3, dtype)
    bias = torch.randn(2, T, T, generator=g)
    if dtype == torch.float32:
        _compare(q, k, v, bias=bias, mode="temporal", heads=2, layout="bcthw", pos_encoding=True, what="bcthw blocks")
        return
    ref = st_attention(q.float(), k.float(), v.float(), mode="temporal", heads=2, layout="bcthw", bias=bias)
    out = st_attention(q, k, v, mode="temporal", heads=2, layout="bcthw", bias=bias, backend="cpu")
    assert_close(out, ref.to(dtype), 1e-5, 2.0 ** -10, "bcthw blocks float16")


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_random_noncontiguous_slices(mode):
    """Views with odd strides: H and W swapped, every other channel, a frame offset."""
    g = torch.Generator().manual_seed(2)
    B, T, H, W, C = 2, 6, 4, 5, 8

    def view(t):  # t: [B, T + 1, W, H, 2 C] -> [B, T, H, W, C] with strides of a slice
        return t[:, 1:].transpose(2, 3)[..., ::2]

    q, k, v = _leaves(g, [(B, T + 1, W, H, 2 * C)] * 3, torch.float64, view)
    assert not q.is_contiguous() and q.shape == (B, T, H, W, C)
    bias = torch.randn(2, *((T, T) if mode == "temporal" else (H * W, H * W)), generator=g, dtype=torch.float64)
    _compare(q, k, v, bias=bias, mode=mode, heads=2, what=f"slices {mode}")


def test_long_spatial_sequence_tiles_keys():
    """H W = 600 queries and keys: several key tiles and query blocks, with a partial last tile."""
    g = torch.Generator().manual_seed(3)
    B, T, H, W, C = 1, 2, 20, 30, 8
    q, k, v = _leaves(g, [(B, T, H, W, C)] * 3, torch.float32)
    q = q * 2  # peaked softmax rows: the online max changes between tiles
    bias = torch.randn(2, H * W, H * W, generator=g) * 0.5
    _compare(q, k, v, bias=bias, mode="spatial", heads=2, pos_encoding=True, what="spatial 600")


def test_long_temporal_sequence_takes_the_tiled_path():
    """T = 70 frames (above the short path's limit of 64)."""
    g = torch.Generator().manual_seed(4)
    B, T, H, W, C = 1, 70, 2, 3, 6
    q, k, v = _leaves(g, [(B, T, H, W, C)] * 3, torch.float64)
    bias = torch.randn(1, T, T, generator=g, dtype=torch.float64)
    _compare(q, k, v, bias=bias, mode="temporal", heads=2, pos_encoding=True, what="temporal 70")


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_fully_masked_rows(mode):
    """Rows with no allowed key: output 0 and no gradient anywhere from them (whatever their upstream
    gradient), the other rows as the reference.

    The reference's own backward is NaN through such rows (0 * inf from log of a zero sum), so the
    expected gradients come from the reference with those rows unmasked and their upstream gradient
    zeroed: then they contribute exactly nothing, as they must."""
    g = torch.Generator().manual_seed(5)
    B, T, H, W, C = 2, 6, 3, 4, 8
    L = T if mode == "temporal" else H * W
    Lk = L if mode == "temporal" else 2 * L
    q, k, v = _leaves(g, [(B, T, H, W, C)] * 3, torch.float64)
    mask = torch.rand(L, Lk, generator=g) < 0.6
    mask[:, 0] = True
    dead = [1, L - 1]
    mask[dead] = False
    kw = {"cross_frame": ("first", "self")} if mode == "spatial" else {}
    kw.update(mode=mode, heads=2, pos_encoding=True)
    bias = torch.randn(1, L, Lk, generator=g, dtype=torch.float64)

    def rows(x):  # [B, T, H, W, C] -> [B, ..., L, ...] with the positions on dim 1 or 2
        return x if mode == "temporal" else x.reshape(B, T, L, -1)

    def dead_rows(x):
        return rows(x)[:, dead] if mode == "temporal" else rows(x)[:, :, dead]

    grad_out = torch.randn(B, T, H, W, C, generator=g, dtype=torch.float64)
    out, grads = _run("cpu", q, k, v, grad_out, bias, mask=mask, **kw)
    ref_out = st_attention(q, k, v, bias=bias, mask=mask, backend="reference", **kw)
    assert_close(out, ref_out, 1e-10, 1e-10, f"masked {mode} out")
    assert dead_rows(out).abs().max() == 0

    alive = mask.clone()
    alive[dead] = True
    g_alive = grad_out.clone()
    if mode == "temporal":
        g_alive[:, dead] = 0
    else:
        rows(g_alive)[:, :, dead] = 0
    _, ref_grads = _run("reference", q, k, v, g_alive, bias, mask=alive, **kw)
    for name, a, e in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        assert_close(a, e, 1e-9, 1e-9, f"masked {mode} {name}")
    assert dead_rows(grads[0]).abs().max() == 0
    assert grads[3][:, dead].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_frame_gradients(dtype):
    """Tune-A-Video's ("first", "previous"): frame 0 serves every frame, each frame its successor;
    the key frames' gradients sum over the query frames."""
    g = torch.Generator().manual_seed(6)
    B, T, H, W, C = 2, 5, 3, 5, 12
    q, k, v = _leaves(g, [(B, T, H, W, C)] * 3, dtype)
    bias = torch.randn(3, H * W, 2 * H * W, generator=g, dtype=torch.float64).to(
        torch.float64 if dtype == torch.float64 else torch.float32)
    _compare(q, k, v, bias=bias, mode="spatial", heads=3, cross_frame=("first", "previous"), pos_encoding=True,
             what="first+previous")


@pytest.mark.parametrize("case", ["temporal", "temporal-bcthw", "spatial"])
def test_bit_identical_across_thread_counts(case):
    """The same output and gradients (dbias included) with 1 and 2 threads, and on a rerun."""
    g = torch.Generator().manual_seed(7)
    if case.startswith("temporal"):
        B, T, H, W, C, L, Lk, kw = 2, 8, 5, 16, 16, 8, 8, {}
    else:
        B, T, H, W, C, kw = 1, 3, 9, 10, 16, {"cross_frame": ("first", "self")}
        L, Lk = H * W, 2 * H * W
    q, k, v = _leaves(g, [(B, T, H, W, C)] * 3, torch.float32)
    if case == "temporal-bcthw":  # [B, T, H, W, C] views of [B, C, T, H, W] tensors
        q, k, v = (x.permute(0, 4, 1, 2, 3).contiguous().permute(0, 2, 3, 4, 1) for x in (q, k, v))
    bias = torch.randn(1, L, Lk, generator=g)
    grad_out = torch.randn(B, T, H, W, C, generator=g)
    before = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            out, grads = _run("cpu", q, k, v, grad_out, bias, mode=case.split("-")[0], heads=2, pos_encoding=True, **kw)
            runs.append([out, *grads])
    finally:
        torch.set_num_threads(before)
    for run in runs[1:]:
        for a, b, name in zip(run, runs[0], ("out", "dq", "dk", "dv", "dbias")):
            assert torch.equal(a, b), f"{case} {name} differs between runs"


def test_more_than_65535_sequences():
    """B H W = 66049 temporal sequences at a tiny size."""
    g = torch.Generator().manual_seed(8)
    q, k, v = _leaves(g, [(1, 2, 257, 257, 2)] * 3, torch.float32)
    _compare(q, k, v, mode="temporal", heads=1, what="66049 sequences")


def test_low_precision_rounds_like_the_reference():
    """float16 / bfloat16 storage: computed in float32, each output rounded once, like the
    reference (which computes in float32 too)."""
    g = torch.Generator().manual_seed(9)
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = _leaves(g, [(1, 6, 3, 4, 16)] * 3, dtype)
        for mode in ("temporal", "spatial"):
            ref = st_attention(q, k, v, mode=mode, heads=2, backend="reference")
            out = st_attention(q, k, v, mode=mode, heads=2, backend="cpu")
            ulp = 2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7
            assert_close(out, ref, 1e-5, ulp, f"{dtype} {mode}")


def test_16_byte_vector_path():
    """PYENGINE_NO_AVX2=1: the baseline vector width (float and double) against the reference."""
    code = """
import torch
from pyengine.ops.st_attention import st_attention
g = torch.Generator().manual_seed(10)
for dtype in (torch.float32, torch.float64):
    for mode, kw in (("temporal", {}), ("spatial", {"cross_frame": ("first", "self")})):
        q, k, v = (torch.randn(1, 5, 9, 10, 12, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
        outs = []
        for backend in ("cpu", "reference"):
            o = st_attention(q, k, v, mode=mode, heads=3, pos_encoding=True, backend=backend, **kw)
            outs.append([o, *torch.autograd.grad(o, (q, k, v), torch.ones_like(o))])
        for a, b in zip(*outs):
            err = (a - b).abs().max().item()
            assert err < (1e-4 if dtype == torch.float32 else 1e-10), (dtype, mode, err)
print("ok")
"""
    env = {**os.environ, "PYENGINE_NO_AVX2": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-2000:] + res.stderr[-2000:]
