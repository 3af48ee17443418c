"""Small CUDA run of every hash_encode kernel and table type, for compute-sanitizer.

    compute-sanitizer --tool memcheck python bench/gpu_smoke.py

Includes positions exactly at 0 and 1 (the far face indexes one cell past a dense grid and
relies on the modulo), out-of-range and NaN positions, and an empty batch.
"""

import torch

from pyengine.ops.hash_encode import hash_encode
from pyengine.reference.hash_encode import HashGridConfig


def main(backend="cuda"):
    dev = "cuda"
    for D in (2, 3, 4):
        for F in (1, 2, 4, 8):
            for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                cfg = HashGridConfig(D, 6, F, 12, 3.0, 1.93, "smoothstep" if F % 2 else "linear")
                x = torch.rand(777, D, device=dev)
                x[:5] = 1.0
                x[5:10] = 0.0
                x[10, 0], x[11, -1], x[12, 0] = -3.0, 7.0, float("nan")
                if dtype == torch.float64:
                    x = x.double()
                p = ((torch.rand(cfg.n_params(), device=dev) - 0.5)).to(dtype).requires_grad_()
                x.requires_grad_()
                y = hash_encode(x, p, cfg, backend=backend)
                (dx,) = torch.autograd.grad(y, x, torch.randn_like(y), create_graph=True)
                dx.square().sum().backward()
                hash_encode(x[:0], p, cfg, backend=backend).sum().backward()
                torch.cuda.synchronize()
                assert torch.isfinite(y).all() and torch.isfinite(p.grad.float()).all()
    print(f"gpu_smoke: {backend} kernels ran clean")


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")
