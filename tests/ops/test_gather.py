"""gather: semantics by hand, clamping, determinism, then every backend against the reference."""

import importlib

import pytest
import torch

from pyengine.ops.grouping import gather
from tests.ops._grouping_cases import make, suite

grp = importlib.import_module("pyengine.ops.grouping")
BACKENDS = ["reference", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_hand(backend):
    f = torch.tensor([[[10.0, 11.0, 12.0], [0.5, -1.0, 2.0]]], requires_grad=True)
    out = gather(f, torch.tensor([[2, 0, 2, 2]], dtype=torch.int32), backend=backend)
    assert out.tolist() == [[[12.0, 10.0, 12.0, 12.0], [2.0, 0.5, 2.0, 2.0]]]
    (g,) = torch.autograd.grad(out, f, torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, -1.0]]]))
    assert g.tolist() == [[[2.0, 0.0, 8.0], [1.0, 0.0, -1.0]]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_indices_clamped_without_validation(backend):
    f, i = make(2, 3, 6, (9,))
    far = i.clone()
    far[0, 0], far[1, 3], far[1, 4] = -7, 6, 2**40
    near = far.clamp(0, 5)
    assert torch.equal(gather(f, far, validate=False, backend=backend), gather(f, near, backend=backend))
    assert torch.equal(gather(f, far.clamp(-9, 9).int(), validate=False, backend=backend),
                       gather(f, near, backend=backend))
    with pytest.raises(ValueError, match=r"indices\[0, 0\] = -7"):
        gather(f, far, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_point_clouds(backend):
    f = torch.zeros(2, 3, 0, requires_grad=True)
    out = gather(f, torch.zeros(2, 4, dtype=torch.int32), validate=False, backend=backend)
    assert out.shape == (2, 3, 4) and not out.any()
    (g,) = torch.autograd.grad(out.sum(), f)
    assert g.shape == (2, 3, 0)
    f = torch.tensor([[[2.0], [-1.0]]], requires_grad=True)
    out = gather(f, torch.zeros(1, 3, dtype=torch.int64), backend=backend)
    assert out.tolist() == [[[2.0] * 3, [-1.0] * 3]]
    (g,) = torch.autograd.grad(out.sum(), f)
    assert g.tolist() == [[[3.0], [3.0]]]


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reruns_are_bit_identical(backend, deterministic):
    f, i = make(2, 5, 7, (3000,), seed=5)  # about 430 outputs per point
    f.requires_grad_()
    up = torch.randn(2, 5, 3000, generator=torch.Generator().manual_seed(1))
    runs = [torch.autograd.grad(gather(f, i, deterministic=deterministic, backend=backend), f, up)[0]
            for _ in range(3)]
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


def test_low_precision_features_keep_their_dtype():
    f, i = make(2, 3, 20, (11,))
    for dtype in (torch.float16, torch.bfloat16):
        out = gather(f.to(dtype), i, backend="cpu")
        assert out.dtype == dtype
        assert torch.equal(out, gather(f.to(dtype), i, backend="reference"))


SUITE = suite(grp.GATHER_OP, gather, [(31,), (200,), (9,)])
globals().update(SUITE.tests())
