"""nearest_neighbor_interpolate: PVCNN's formula by hand, ties, few centres, determinism, then every
backend against the reference."""

import importlib

import pytest
import torch

import pyengine
from pyengine.ops.nearest_neighbor_interpolate import nearest_neighbor_interpolate
from tests.op_harness import Bad, Case, OpSuite, change

nni_mod = importlib.import_module("pyengine.ops.nearest_neighbor_interpolate")
BACKENDS = ["reference", "cpu"]


def make(B, C, N, M, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(B, 3, N, generator=g, dtype=torch.float64).to(dtype).to(device)
    centers = torch.rand(B, 3, M, generator=g, dtype=torch.float64).to(dtype).to(device)
    features = torch.randn(B, C, M, generator=g, dtype=torch.float64).to(dtype).to(device)
    return points, centers, features


def line(xs, dtype=torch.float64):
    xs = torch.tensor(xs, dtype=dtype)
    return torch.stack([xs, torch.zeros_like(xs), torch.zeros_like(xs)])[None]


def run(points, centers, features, backend, up=None, **kw):
    features = features.detach().clone().requires_grad_()
    out, idx, w = nearest_neighbor_interpolate(points, centers, features, return_indices=True, backend=backend, **kw)
    (g,) = torch.autograd.grad(out, features, torch.ones_like(out) if up is None else up)
    return out, idx, w, g


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_hand(backend):
    """Point at 0 between centres at 1 (d2 1), -2 (d2 4), 4 (d2 16) and 10: weights 1/d2
    normalised, i.e. 16/21, 4/21, 1/21."""
    feats = torch.tensor([[[1.0, 2.0, 4.0, 8.0], [0.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)
    out, idx, w, g = run(line([0.0]), line([1.0, -2.0, 10.0, 4.0]), feats, backend)
    assert idx[0, :, 0].tolist() == [0, 1, 3]
    assert torch.allclose(w[0, :, 0], torch.tensor([16.0, 4.0, 1.0], dtype=torch.float64) / 21, rtol=1e-14)
    assert torch.allclose(out[0, :, 0], torch.tensor([(16 + 8 + 8) / 21, 4 / 21], dtype=torch.float64))
    assert torch.allclose(g[0], torch.tensor([16 / 21, 4 / 21, 0.0, 1 / 21], dtype=torch.float64).expand(2, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_coincident_and_few_centres(backend):
    feats = torch.tensor([[[1.0, 2.0, 3.0, 5.0]]], dtype=torch.float64)
    # centres at -1, 1, 1, 3 around 0: the tie between 1 (index 1) and 2 (index 2) in index order
    _, idx, w, _ = run(line([0.0]), line([3.0, 1.0, -1.0, 1.0]), feats, backend)
    assert idx[0, :, 0].tolist() == [1, 2, 3] and torch.allclose(w[0, :, 0], torch.full((3,), 1 / 3, dtype=w.dtype))
    # a point on a centre: d2 clamped to 1e-10, weight about 1
    out, idx, w, _ = run(line([2.0]), line([0.0, 2.0, 5.0]), feats[..., :3], backend)
    assert idx[0, 0, 0] == 1 and abs(w[0, 0, 0].item() - 1) < 1e-9 and abs(out.item() - 2.0) < 1e-8
    # one centre: indices 0, the missing ones at 1e10 (weight about 0), out = its feature
    out, idx, w, g = run(line([0.0, 7.0]), line([3.0]), feats[..., :1], backend)
    assert idx.tolist() == [[[0, 0]] * 3] and torch.allclose(out, torch.ones(1, 1, 2, dtype=out.dtype))
    assert torch.allclose(w.sum(1), torch.ones(1, 2, dtype=w.dtype)) and torch.allclose(g, torch.full_like(g, 2.0))
    # two centres: the third is centre 0 at 1e10
    _, idx, w, _ = run(line([0.0]), line([2.0, 1.0]), feats[..., :2], backend)
    assert idx[0, :, 0].tolist() == [1, 0, 0] and w[0, 2, 0] < 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_point_clouds(backend):
    p, c, f = make(2, 3, 0, 4)
    out, idx, w, g = run(p, c, f, backend)
    assert out.shape == (2, 3, 0) and idx.shape == w.shape == (2, 3, 0) and not g.any()
    p, c, f = make(2, 3, 5, 0)
    out, idx, w, g = run(p, c, f, backend)
    assert out.shape == (2, 3, 5) and not out.any() and not idx.any() and not w.any() and g.shape == (2, 3, 0)
    p, c, f = make(1, 2, 1, 1)
    out, idx, w, g = run(p, c, f, backend)
    assert torch.allclose(out[..., 0], f[..., 0]) and torch.allclose(g, torch.ones_like(g))


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reruns_are_bit_identical(backend, deterministic):
    p, c, f = make(2, 5, 3000, 6, seed=4)  # about 1500 contributions per centre
    up = torch.randn(2, 5, 3000, generator=torch.Generator().manual_seed(2))
    runs = [run(p, c, f, backend, up, deterministic=deterministic) for _ in range(3)]
    assert all(torch.equal(a, b) for r in runs[1:] for a, b in zip(r, runs[0]))


def test_pvcnn_recipe_interpolates_back_exactly_at_the_centres():
    """Centres sampled from the points: interpolating their features back gives them at the
    centres (weight about 1 on the coincident centre)."""
    p, _, _ = make(2, 0, 60, 0, seed=9)
    idx = pyengine.furthest_point_sample(p, 12, backend="cpu")
    centers = pyengine.gather(p, idx, backend="cpu")
    feats = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(0))
    out = nearest_neighbor_interpolate(p, centers, feats, backend="cpu")
    assert torch.allclose(pyengine.gather(out, idx), feats, atol=1e-5)


# --------------------------------------------------------------------------------- the harness


def _case(B, C, N, M, dtypes=(torch.float32, torch.float64)):
    def make_(g, dtype, device):
        return make(B, C, N, M, dtype, int(torch.randint(0, 2**31, (1,), generator=g)), device), {
            "return_indices": True}

    return Case(f"B{B}-C{C}-N{N}-M{M}", make_, dtypes=dtypes)


CASES = [_case(2, 5, 97, 31, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)),
         _case(1, 3, 123, 40), _case(3, 2, 40, 2), _case(1, 1, 1, 1), _case(2, 3, 0, 5), _case(2, 3, 6, 0),
         _case(2, 0, 7, 4), _case(1, 4, 10, 6)]


def _base(g, device):
    return make(2, 3, 7, 5, device=device), {}


BAD = [
    Bad("int-points", change(0, lambda t: t.long()), TypeError, "points_coords must be float16"),
    Bad("int-features", change(2, lambda t: t.long()), TypeError, "centers_features must be float16"),
    Bad("2d-centers", change(1, lambda t: t[:, :2]), ValueError, r"centers_coords must be \[B, 3, M\] with B = 2"),
    Bad("feature-count", change(2, lambda t: t[..., :4]), ValueError, r"centers_features must be \[B, C, M\].*M = 5"),
    Bad("batch-mismatch", change(1, lambda t: t[:1]), ValueError, r"centers_coords must be \[B, 3, M\] with B = 2"),
    Bad("meta-features", change(2, lambda t: t.to("meta")), ValueError, "centers_features is on meta"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(nni_mod.OP, nearest_neighbor_interpolate, CASES, grads=(2,),
                tol={torch.float32: (1e-6, 1e-5), torch.float64: (1e-14, 1e-12), torch.float16: (1e-3, 0),
                     torch.bfloat16: (1e-2, 0)},
                base=_base, bad=BAD, gradcheck_case="B1-C4-N10-M6", compile_kwargs={"deterministic": False})
globals().update(SUITE.tests())
