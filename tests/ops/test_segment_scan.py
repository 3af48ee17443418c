"""segment_scan: sums and products over packed segments by hand, then the harness."""

import pytest
import torch

import pyengine
from pyengine.ops import segment_scan as op_mod
from pyengine.ops.segment_scan import segment_scan
from tests.op_harness import Bad, Case, OpSuite

BACKENDS = ["reference", "cpu"]
MODES = [(False, False), (False, True), (True, False), (True, True)]  # (prod, exclusive)


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_hand_with_a_zero_and_uncovered_elements(backend):
    # segments [0, 2) and [3, 6); element 2 belongs to none; x[3] = 0
    x = torch.tensor([1.0, 2.0, 7.0, 0.0, 4.0, 5.0], dtype=torch.float64, requires_grad=True)
    pi = torch.tensor([[0, 2], [3, 3], [6, 0]])
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    want = {  # (y, dx) worked out by hand; uncovered element 2: identity and no gradient
        (False, False): ([1, 3, 0, 0, 4, 9], [3, 2, 0, 15, 11, 6]),
        (False, True): ([0, 1, 0, 0, 0, 4], [2, 0, 0, 11, 6, 0]),
        (True, False): ([1, 2, 1, 0, 0, 0], [5, 2, 0, 4 + 5 * 4 + 6 * 20, 0, 0]),
        (True, True): ([1, 1, 1, 1, 0, 0], [2, 0, 0, 5 + 6 * 4, 0, 0]),
    }
    for (prod, exclusive), (y_want, dx_want) in want.items():
        y = segment_scan(x, pi, prod=prod, exclusive=exclusive, backend=backend)
        (dx,) = torch.autograd.grad(y, x, g)
        assert y.tolist() == y_want, (prod, exclusive)
        assert dx.tolist() == dx_want, (prod, exclusive)


@pytest.mark.parametrize("backend", ["cpu"])
def test_kernels_clamp_bad_ranges(backend):
    """Called directly (no checks), a malformed packed_info must not touch memory out of bounds."""
    x = torch.arange(1.0, 6.0)
    bad = torch.tensor([[3, 100], [-5, 2], [7, 1], [0, -4]])
    good = torch.tensor([[3, 2], [0, 2], [5, 0], [0, 0]])
    for prod, exclusive in MODES:
        a = torch.ops.pyengine.segment_scan_fwd(x, bad, prod, exclusive, backend)
        b = torch.ops.pyengine.segment_scan_fwd(x, good, prod, exclusive, backend)
        assert torch.equal(a, b), (prod, exclusive)


def _case(counts, prod, exclusive, dtypes=(torch.float32, torch.float64), **kw):
    def make(g, dtype, device):
        c = torch.as_tensor(counts, dtype=torch.int64)
        pi = torch.stack([torch.cumsum(c, 0) - c, c], 1)
        S = int(c.sum())
        # products: values around 1 (and some zeros), so long segments neither vanish nor explode
        x = (torch.rand(S, generator=g, dtype=torch.float64) * 0.4 + 0.8) if prod else torch.randn(
            S, generator=g, dtype=torch.float64)
        if prod and S > 3:
            x[S // 3] = 0.0
        return (x.to(dtype).to(device), pi.to(device)), {"prod": prod, "exclusive": exclusive}

    return Case(f"{'prod' if prod else 'sum'}-{'ex' if exclusive else 'in'}-R{len(counts)}", make, dtypes=dtypes, **kw)


COUNTS = [3, 0, 1, 300, 0, 2, 17, 5, 1, 0, 9]
CASES = ([_case(COUNTS, p, e) for p, e in MODES] + [_case([], False, False), _case([0, 0], True, True)]
         + [_case([3, 0, 5], p, e) for p, e in MODES]
         + [_case([2, 3, 1, 7], p, e, dtypes=(torch.float16, torch.bfloat16)) for p, e in MODES[::3]]
         + [_case([40] * 2000, p, e, cpu=False) for p, e in MODES])


def _base(g, device):
    return (torch.randn(5, generator=g), torch.tensor([[0, 2], [2, 3]])), {}


BAD = [
    Bad("int-x", lambda a, k: ([a[0].long(), a[1]], k), TypeError, "x must be float16, bfloat16, float32 or float64"),
    Bad("float-packed-info", lambda a, k: ([a[0], a[1].float()], k), TypeError, "packed_info must be int32 or int64"),
    Bad("2d-x", lambda a, k: ([a[0][:, None], a[1]], k), ValueError, r"x must be \[S\], got shape \(5, 1\)"),
    Bad("meta", lambda a, k: ([a[0], a[1].to("meta")], k), ValueError, "packed_info is on meta but x is on cpu"),
    Bad("triton", lambda a, k: (a, {"backend": "triton"}), pyengine.BackendError, "not implemented for this op"),
]

SUITE = OpSuite(op_mod.OP, segment_scan, CASES, grads=(0,),
                tol={torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12), torch.float16: (1e-3, 0),
                     torch.bfloat16: (1e-2, 0)}, base=_base, bad=BAD, gradcheck_case="prod-ex-R3")
globals().update(SUITE.tests())
