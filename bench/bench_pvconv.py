"""Benchmark the point-voxel ops of PVConv: avg_voxelize and trilinear_devoxelize, forward and backward,
and PVCNN's point ops (furthest_point_sample, gather, ball_query, grouping, nearest_neighbor_interpolate).

    python bench/bench_pvconv.py                     # CPU: reference vs cpu, interleaved in every repeat
    python bench/bench_pvconv.py --device cuda       # GPU: reference vs cuda (atomics and deterministic), PVCNN
    python bench/bench_pvconv.py --ops points        # only the point ops (voxel: only the voxel ops)

PVCNN's standard PVConv layer: B = 16 clouds of N = 2048 points, C = 64 channels, R = 32, float32,
coordinates from ``normalize_coords`` of Gaussian clouds. Rows: each op forward, each op forward +
backward (gradients of every differentiable input: features; grid and coordinates), and the PVConv
round trip ``devoxelize(voxelize(features))`` forward + backward. ``cuda-det`` is the cuda backend
with ``deterministic=True`` (sorted segments instead of atomics).

PVCNN's own ops are timed when importable as ``modules.functional`` (a PVCNN checkout on the path)
or ``pvcnn``; they run on CUDA only, and their devoxelize gives no coordinate gradient (ours is
then timed without one too, in the "no coords grad" rows). There is no Triton kernel for these ops.

The point ops run at PVCNN++'s set-abstraction size: B = 16 clouds of N = 2048 points in the unit
cube, M = 512 centres, K = 32 neighbours within radius 0.2, C = 64 channels (``--points-size``).
Rows: furthest_point_sample (PVCNN's returns the sampled coordinates, so its row is
``gather(coords, furthest_point_sample(coords, M))`` for both), ball_query, and gather / grouping /
nearest_neighbor_interpolate forward + backward (features gradient).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench, bench_side_by_side, commit, machine, print_table, save_json  # noqa: E402

from pyengine.ops.ball_query import ball_query  # noqa: E402
from pyengine.ops.furthest_point_sample import furthest_point_sample  # noqa: E402
from pyengine.ops.grouping import gather, grouping  # noqa: E402
from pyengine.ops.nearest_neighbor_interpolate import nearest_neighbor_interpolate  # noqa: E402
from pyengine.ops.voxelize import avg_voxelize, normalize_coords, trilinear_devoxelize  # noqa: E402

POINT_OPS = ("furthest_point_sample", "gather", "ball_query", "grouping", "nearest_neighbor_interpolate")
RADIUS = 0.2


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


def point_inputs(B, C, N, M, dev, gen):
    points = torch.rand(B, 3, N, generator=gen)
    features = torch.randn(B, C, N, generator=gen)
    centre_features = torch.randn(B, C, M, generator=gen)
    return points.to(dev), features.to(dev), centre_features.to(dev)


def point_workloads(prov, pvcnn, points, features, centre_features, M, K):
    """{row name: fn} of the point ops for one provider (PVCNN: the functions it has)."""
    B, C, N = features.shape
    sample = furthest_point_sample(points, M, backend="cpu" if points.device.type == "cpu" else None)
    centers = gather(points, sample)
    neighbours = ball_query(centers, points, RADIUS, K)
    f = features.clone().requires_grad_()
    cf = centre_features.clone().requires_grad_()
    size = f"M={M} K={K}"
    if prov == "pvcnn":
        ops = {name: getattr(pvcnn, name) for name in POINT_OPS if hasattr(pvcnn, name)}
        fps = ops.get("furthest_point_sample")
        fns = {
            "furthest_point_sample (+ gather of the coords)": fps and (lambda: fps(points, M)),
            "ball_query": "ball_query" in ops and (lambda: ops["ball_query"](centers, points, RADIUS, K)),
            "gather fwd+bwd": "gather" in ops and (lambda: ops["gather"](f, sample).sum().backward()),
            "grouping fwd+bwd": "grouping" in ops and (lambda: ops["grouping"](f, neighbours).sum().backward()),
            "nearest_neighbor_interpolate fwd+bwd": "nearest_neighbor_interpolate" in ops and (
                lambda: ops["nearest_neighbor_interpolate"](points, centers, cf).sum().backward()),
        }
        return {f"{k} {size}": fn for k, fn in fns.items() if fn}
    backend, det = ("cuda", True) if prov == "cuda-det" else (prov, None)
    kw = {"backend": backend}
    return {f"{k} {size}": fn for k, fn in {
        "furthest_point_sample (+ gather of the coords)": lambda: gather(
            points, furthest_point_sample(points, M, **kw), validate=False, **kw),
        "ball_query": lambda: ball_query(centers, points, RADIUS, K, **kw),
        "gather fwd+bwd": lambda: gather(f, sample, deterministic=det, validate=False, **kw).sum().backward(),
        "grouping fwd+bwd": lambda: grouping(f, neighbours, deterministic=det, validate=False, **kw).sum().backward(),
        "nearest_neighbor_interpolate fwd+bwd": lambda: nearest_neighbor_interpolate(
            points, centers, cf, deterministic=det, **kw).sum().backward(),
    }.items()}


def unet_step(prov, batch, dev, full):
    """One training step of PVD's generation U-Net (forward, backward, Adam) with every op on
    backend ``prov``: PVD's default configuration on a GPU, the quarter-width one
    (configs/points_pvd_cpu.yaml) on the CPU."""
    import pyengine
    from pyengine.nn.pvcnn import PVCNN2

    kw = {} if full else {"width_multiplier": 0.25, "voxel_resolution_multiplier": 0.5}
    torch.manual_seed(0)
    model = PVCNN2(num_classes=3, embed_dim=64 if full else 32, use_att=True, dropout=0.1,
                   extra_feature_channels=0, **kw).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 3, 2048, generator=g).to(dev)
    t = torch.randint(0, 1000, (batch,), generator=g).to(dev)
    noise = torch.randn(batch, 3, 2048, generator=g).to(dev)

    def step():
        with pyengine.use_backend(prov):
            loss = (model(x, t) - noise).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    return {"PVD U-Net training step": step}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--providers", nargs="+", default=None)
    ap.add_argument("--size", nargs=4, type=int, default=[16, 64, 2048, 32], metavar=("B", "C", "N", "R"))
    ap.add_argument("--points-size", nargs=5, type=int, default=[16, 64, 2048, 512, 32],
                    metavar=("B", "C", "N", "M", "K"))
    ap.add_argument("--ops", choices=["all", "voxel", "points", "step"], default="all")
    ap.add_argument("--step-batch", type=int, default=None, help="clouds per U-Net training step")
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
    pB, pC, pN, pM, pK = args.points_size
    sizes = {}
    point_args = point_inputs(pB, pC, pN, pM, dev, torch.Generator().manual_seed(1))
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
        groups = []
        if args.ops in ("all", "voxel"):
            groups.append((size, lambda: workloads(prov, pvcnn, features, coords, voxels, grid, R)))
        if args.ops in ("all", "points"):
            groups.append((f"B={pB} C={pC} N={pN}", lambda: point_workloads(prov, pvcnn, *point_args, pM, pK)))
        if args.ops in ("all", "step") and prov != "pvcnn":
            sb = args.step_batch or (16 if gpu else 2)
            groups.append((f"B={sb} N=2048, {'PVD default' if gpu else 'quarter-width CPU'} config",
                           lambda: unet_step(prov, sb, dev, gpu)))
        for group_size, make in groups:
            try:
                for name, fn in make().items():
                    fn()  # fails here, not inside the timing, when the provider cannot run
                    fns[(name, prov)] = fn
                    sizes[name] = group_size
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
            rows.append({"benchmark": name, "size": sizes[name], "provider": prov, "ms": f"{t:.3f}",
                         "speed-up": f"{base / t:.2f}" if base else "", "x pvcnn": f"{peer / t:.2f}" if peer else ""})
    print(f"pvconv benchmark: {machine(dev)}; float32; commit {commit()}; torch {torch.__version__}")
    print_table(rows, ["benchmark", "size", "provider", "ms", "speed-up", "x pvcnn"])
    for s in sorted(set(skipped)):
        print(f"skipped: {s}")
    save_json(args.json, {"device": machine(dev), "commit": commit(), "size": size,
                          "points_size": f"B={pB} C={pC} N={pN} M={pM} K={pK}", "rows": rows,
                          "skipped": sorted(set(skipped))})


if __name__ == "__main__":
    main()
