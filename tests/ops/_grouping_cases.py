"""Shared by test_gather.py and test_grouping.py: inputs, bad inputs and the suite of one of the two ops."""

import torch

import pyengine
from tests.op_harness import Bad, Case, OpSuite, change


def make(B, C, N, shape, dtype=torch.float32, seed=0, device="cpu"):
    """(features [B, C, N], indices [B, *shape] int64 in [0, N), repeats likely)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, C, N, generator=g, dtype=torch.float64).to(dtype).to(device)
    indices = torch.randint(0, max(N, 1), (B, *shape), generator=g).to(device)
    return features, indices


def suite(op, fn, shapes):
    """OpSuite of gather (shapes of [M]) or grouping (shapes of [M, K])."""
    def case(B, C, N, shape, dtypes=(torch.float32, torch.float64)):
        def make_(g, dtype, device):
            f, i = make(B, C, N, shape, dtype, int(torch.randint(0, 2**31, (1,), generator=g)), device)
            return (f, i.int() if N % 2 else i), {}

        return Case(f"B{B}-C{C}-N{N}-{'x'.join(map(str, shape))}", make_, dtypes=dtypes)

    s1, s2, s3 = shapes
    cases = [case(2, 5, 97, s1, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)),
             case(1, 3, 123, s2), case(3, 2, 4, s3), case(1, 1, 1, (1,) * len(s1)), case(2, 3, 5, (0,) * len(s1)),
             case(2, 0, 7, s3), case(0, 2, 3, s3)]
    base_shape = (4,) * len(s1)

    def base(g, device):
        f, i = make(2, 3, 5, base_shape, device=device)
        return (f, i), {}

    idx_shape = "[B, M]" if len(s1) == 1 else r"[B, M, K]"
    bad = [
        Bad("float-indices", change(1, lambda t: t.float()), TypeError, "indices must be int32 or int64"),
        Bad("int-features", change(0, lambda t: t.long()), TypeError, "features must be float16"),
        Bad("batch-mismatch", change(1, lambda t: t[:1]), ValueError,
            rf"indices must be {idx_shape.replace('[', chr(92) + '[').replace(']', chr(92) + ']')} with B = 2"),
        Bad("flat-features", change(0, lambda t: t[0]), ValueError, r"features must be \[B, C, N\]"),
        Bad("out-of-range", change(1, lambda t: t + 5), ValueError, r"indices must lie in \[0, N\) = \[0, 5\)"),
        Bad("negative", change(1, lambda t: t - 9), ValueError, r"indices must lie in \[0, N\) = \[0, 5\)"),
        Bad("meta-indices", change(1, lambda t: t.to("meta")), ValueError, "indices is on meta but features is on cpu"),
        Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
        Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
    ]
    return OpSuite(op, fn, cases, grads=(0,),
                   tol={torch.float32: (1e-6, 1e-5), torch.float64: (1e-14, 1e-12), torch.float16: (1e-3, 0),
                        torch.bfloat16: (1e-2, 0)},
                   base=base, bad=bad, gradcheck_case=f"B3-C2-N4-{'x'.join(map(str, s3))}",
                   compile_kwargs={"validate": False, "deterministic": False})
