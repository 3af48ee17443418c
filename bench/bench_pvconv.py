"""Benchmark the point-voxel ops of PVConv: avg_voxelize and trilinear_devoxelize, forward and backward.

    python bench/bench_pvconv.py                     # CPU: reference vs cpu, interleaved in every repeat
    python bench/bench_pvconv.py --device cuda       # GPU: reference vs cuda (atomics and deterministic), PVCNN

PVCNN's standard PVConv layer: B = 16 clouds of N = 2048 points, C = 64 channels, R = 32, float32,
coordinates from ``normalize_coords`` of Gaussian clouds. Rows: each op forward, each op forward +
backward (gradients of every differentiable input: features; grid and coordinates), and the PVConv
round trip ``devoxelize(voxelize(features))`` forward + backward. ``cuda-det`` is the cuda backend
with ``deterministic=True`` (sorted segments instead of atomics).

PVCNN's own ops are timed when importable as ``modules.functional`` (a PVCNN checkout on the path)
or ``pvcnn``; they run on CUDA only, and their devoxelize gives no coordinate gradient (ours is
then timed without one too, in the "no coords grad" rows). There is no Triton kernel for these ops.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench, bench_side_by_side, commit, machine, print_table, save_json  # noqa: E402

from pyengine.ops.voxelize import avg_voxelize, normalize_coords, trilinear_devoxelize  # noqa: E402


def import_pvcnn():
    """(PVCNN's functional module, None) or (None, why not)."""
    reasons = []
    for name in ("modules.functional", "pvcnn"):
        try:
            mod = importlib.import_module(name)
        except Exception as exc:
            reasons.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if hasattr(mod, "avg_voxelize") and hasattr(mod, "trilinear_devoxelize"):
            return mod, None
        reasons.append(f"{name}: has no avg_voxelize / trilinear_devoxelize")
    return None, "; ".join(reasons)


def inputs(B, C, N, R, dev, gen):
    points = torch.randn(B, 3, N, generator=gen)
    coords, voxels = normalize_coords(points, R)
    features = torch.randn(B, C, N, generator=gen)
    grid = torch.randn(B, C, R, R, R, generator=gen)
    return features.to(dev), coords.to(dev), voxels.to(dev), grid.to(dev)


def workloads(prov, pvcnn, features, coords, voxels, grid, R):
    """{row name: fn} for one provider."""
    if prov == "pvcnn":
        vox = lambda f: pvcnn.avg_voxelize(f, voxels, R)  # noqa: E731
        devox = lambda g, c: pvcnn.trilinear_devoxelize(g, c, R, True)  # noqa: E731
        coords_grad = False
    else:
        backend, det = ("cuda", True) if prov == "cuda-det" else (prov, None)
        vox = lambda f: avg_voxelize(f, voxels, R, backend=backend, deterministic=det, validate=False)  # noqa: E731
        devox = lambda g, c: trilinear_devoxelize(g, c, R, backend=backend, deterministic=det)  # noqa: E731
        coords_grad = True
    f = features.clone().requires_grad_()
    g = grid.clone().requires_grad_()
    c = coords.clone().requires_grad_(coords_grad)
    out = {
        "avg_voxelize fwd": lambda: vox(features),
        "avg_voxelize fwd+bwd": lambda: vox(f).sum().backward(),
        "trilinear_devoxelize fwd": lambda: devox(grid, coords),
        "trilinear_devoxelize fwd+bwd (no coords grad)": lambda: devox(g, coords).sum().backward(),
        "voxelize+devoxelize fwd+bwd (no coords grad)": lambda: devox(vox(f), coords).square().sum().backward(),
    }
    if coords_grad:
        out["trilinear_devoxelize fwd+bwd"] = lambda: devox(g, c).sum().backward()
        out["voxelize+devoxelize fwd+bwd"] = lambda: devox(vox(f), c).square().sum().backward()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--providers", nargs="+", default=None)
    ap.add_argument("--size", nargs=4, type=int, default=[16, 64, 2048, 32], metavar=("B", "C", "N", "R"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    gpu = dev.startswith("cuda")
    provs = args.providers or (["reference", "cuda", "cuda-det", "triton", "pvcnn"] if gpu
                               else ["reference", "cpu", "triton", "pvcnn"])
    B, C, N, R = args.size
    size = f"B={B} C={C} N={N} R={R}"
    features, coords, voxels, grid = inputs(B, C, N, R, dev, torch.Generator().manual_seed(0))
    skipped, fns = [], {}
    pvcnn, why = import_pvcnn()
    for prov in provs:
        if prov == "triton":
            skipped.append("triton: these ops have no Triton kernel")
            continue
        if prov == "pvcnn" and pvcnn is None:
            skipped.append(f"pvcnn: not importable ({why})")
            continue
        if prov == "pvcnn" and not gpu:
            skipped.append("pvcnn: its ops run on CUDA only")
            continue
        try:
            for name, fn in workloads(prov, pvcnn, features, coords, voxels, grid, R).items():
                fn()  # fails here, not inside the timing, when the provider cannot run
                fns[(name, prov)] = fn
        except Exception as exc:
            skipped.append(f"{prov}: {type(exc).__name__}: {exc}")

    if gpu:
        ms = {k: bench(fn, dev, reps=args.reps) for k, fn in fns.items()}
    else:
        ms = bench_side_by_side(fns, warmup=1, reps=args.reps, budget_s=240.0)
    rows = []
    names = list(dict.fromkeys(name for name, _ in fns))
    for name in names:
        base = ms.get((name, "reference"))
        peer = ms.get((name, "pvcnn"))
        for prov in [p for n, p in fns if n == name]:
            t = ms[(name, prov)]
            rows.append({"benchmark": name, "size": size, "provider": prov, "ms": f"{t:.3f}",
                         "speed-up": f"{base / t:.2f}" if base else "", "x pvcnn": f"{peer / t:.2f}" if peer else ""})
    print(f"pvconv benchmark: {machine(dev)}; float32; commit {commit()}; torch {torch.__version__}")
    print_table(rows, ["benchmark", "size", "provider", "ms", "speed-up", "x pvcnn"])
    for s in sorted(set(skipped)):
        print(f"skipped: {s}")
    save_json(args.json, {"device": machine(dev), "commit": commit(), "size": size, "rows": rows,
                          "skipped": sorted(set(skipped))})


if __name__ == "__main__":
    main()
