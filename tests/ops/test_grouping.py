"""grouping: semantics by hand, with ball_query, determinism, then every backend against the reference."""

import importlib

import pytest
import torch

from pyengine.ops.ball_query import ball_query
from pyengine.ops.grouping import gather, grouping
from tests.ops._grouping_cases import make, suite

grp = importlib.import_module("pyengine.ops.grouping")
BACKENDS = ["reference", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_hand(backend):
    f = torch.tensor([[[10.0, 11.0, 12.0]]], requires_grad=True)
    out = grouping(f, torch.tensor([[[2, 0], [1, 1]]]), backend=backend)
    assert out.tolist() == [[[[12.0, 10.0], [11.0, 11.0]]]] and out.shape == (1, 1, 2, 2)
    (g,) = torch.autograd.grad(out, f, torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert g.tolist() == [[[2.0, 7.0, 1.0]]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_is_gather_of_the_flat_indices_and_groups_ball_query(backend):
    g = torch.Generator().manual_seed(3)
    points = torch.rand(2, 3, 40, generator=g)
    features = torch.randn(2, 4, 40, generator=g)
    idx = ball_query(points[:, :, :6], points, 0.3, 5, backend=backend)
    out = grouping(features, idx, backend=backend)
    assert torch.equal(out, gather(features, idx.reshape(2, 30), backend=backend).reshape(2, 4, 6, 5))
    assert (idx[:, :, 0] <= torch.arange(6)).all()  # centre m is point m: a neighbour, so the first is at most m


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_point_clouds(backend):
    f = torch.zeros(2, 3, 0, requires_grad=True)
    out = grouping(f, torch.zeros(2, 4, 2, dtype=torch.int32), validate=False, backend=backend)
    assert out.shape == (2, 3, 4, 2) and not out.any()
    f = torch.tensor([[[2.0], [-1.0]]], requires_grad=True)
    out = grouping(f, torch.zeros(1, 1, 3, dtype=torch.int64), backend=backend)
    assert out.tolist() == [[[[2.0] * 3], [[-1.0] * 3]]]
    (g,) = torch.autograd.grad(out.sum(), f)
    assert g.tolist() == [[[3.0], [3.0]]]
    assert grouping(f, torch.zeros(1, 0, 3, dtype=torch.int64), backend=backend).shape == (1, 2, 0, 3)


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reruns_are_bit_identical(backend, deterministic):
    f, i = make(2, 5, 7, (100, 32), seed=5)
    f.requires_grad_()
    up = torch.randn(2, 5, 100, 32, generator=torch.Generator().manual_seed(1))
    runs = [torch.autograd.grad(grouping(f, i, deterministic=deterministic, backend=backend), f, up)[0]
            for _ in range(3)]
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


SUITE = suite(grp.GROUPING_OP, grouping, [(9, 4), (20, 16), (3, 5)])
globals().update(SUITE.tests())
