"""Benchmark triangle rasterization: ``rasterize`` forward, ``rasterize`` + ``interpolate`` forward
and backward, and ``rasterize`` + ``interpolate`` + ``antialias`` forward and backward (the
differentiable-rendering step of Magic3D's fine stage).

    python bench/bench_rasterize.py                     # CPU: cpu, and the reference as a sanity ratio
    python bench/bench_rasterize.py --device cuda       # GPU: cuda (and nvdiffrast when it imports)
    python bench/bench_rasterize.py --sanity-size 64 --sanity-batch 4    # a larger sanity check (minutes)

Scene: a UV sphere of 125 x 200 segments (50000 triangles, 25326 vertices; the pole rows are
degenerate triangles that cover nothing), seen by B = 4 perspective cameras around it at distance
3 (45 degree field of view, OpenGL projection), float32, at 256 x 256 and 512 x 512. The
"fwd+bwd" rows interpolate 3 colour channels shared by the images (and antialias them, in the
last rows, with the topology built once beforehand, as a training loop does), take a weighted sum
of the image and backpropagate to the clip-space positions and the colours. Every provider runs
with ``validate=False`` (no index checks; nvdiffrast makes none).

Providers: ``cpu`` / ``cuda`` (pyengine's kernels), ``reference`` (pure PyTorch, O(B H W T)
time, seconds per call even at 64 x 64 on a CPU: it runs only in the "sanity" rows, by default
one image of 32 x 32 of the same sphere, beside the kernel; that ratio is a sanity check, not a
comparison with a peer), and ``nvdiffrast`` (optional peer column:
it runs only where ``import nvdiffrast.torch`` works and the device is a GPU; it is never
installed by this script; its OpenGL-free CUDA rasterizer, ``RasterizeCudaContext``). The
"ids agree" column is the fraction of pixels whose triangle id equals the first provider's (edge
pixels may differ from nvdiffrast's, which follows the top-left fill rule).

On CPU the providers run in turn within every repeat (``bench_side_by_side``), so the ratios hold on a
shared machine; on a GPU each is timed with ``triton.testing.do_bench``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench, bench_side_by_side, commit, machine, print_table, save_json  # noqa: E402

from pyengine.ops.antialias import antialias, antialias_topology  # noqa: E402
from pyengine.ops.rasterize import interpolate, rasterize  # noqa: E402


def uv_sphere(n_lat: int = 100, n_lon: int = 100):
    """(vertices [(n_lat + 1) (n_lon + 1), 3], tri [2 n_lat n_lon, 3] int32) of the unit sphere."""
    theta = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=torch.float64)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    verts = torch.stack([t.sin() * p.cos(), t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3)
    i, j = torch.meshgrid(torch.arange(n_lat), torch.arange(n_lon), indexing="ij")
    a = (i * (n_lon + 1) + j).reshape(-1)
    b, c, d = a + 1, a + n_lon + 1, a + n_lon + 2
    tri = torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)])
    return verts, tri.int()


def clip_positions(verts: torch.Tensor, B: int, aspect: float = 1.0, distance: float = 3.0, fov_deg: float = 45.0):
    """[B, V, 4] float32 clip-space positions of verts seen by B cameras on a circle around the origin."""
    near, far = 0.1, 10.0
    f = 1.0 / math.tan(math.radians(fov_deg) / 2)
    proj = torch.tensor([[f / aspect, 0, 0, 0], [0, f, 0, 0],
                         [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)], [0, 0, -1, 0]],
                        dtype=torch.float64)
    out = []
    for k in range(B):
        ang = 2 * math.pi * k / B + 0.3
        eye = torch.tensor([distance * math.sin(ang), 0.7, distance * math.cos(ang)], dtype=torch.float64)
        fwd = -eye / eye.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
        right = right / right.norm()
        up = torch.linalg.cross(right, fwd)
        view = torch.eye(4, dtype=torch.float64)
        view[0, :3], view[1, :3], view[2, :3] = right, up, -fwd
        view[:3, 3] = -view[:3, :3] @ eye
        homo = torch.cat([verts, torch.ones(verts.shape[0], 1, dtype=torch.float64)], 1)
        out.append(homo @ (proj @ view).T)
    return torch.stack(out).float()


def import_nvdiffrast():
    """(nvdiffrast.torch, None) or (None, why not). Never installs anything."""
    try:
        import nvdiffrast.torch as dr
    except Exception as exc:
        return None, f"nvdiffrast: not importable here ({type(exc).__name__}: {exc})"
    return dr, None


def providers_for(names, gpu: bool, dr, tri):
    """{name: (rasterize_fn(pos, tri, res) -> rast, interpolate_fn(attr, rast, tri) -> out,
    antialias_fn(color, rast, pos, tri) -> out)} of the providers named (cpu, cuda, reference,
    nvdiffrast) that can run here; the antialiasing topology of ``tri`` is built here, once."""
    provs = {}
    for p in names:
        if p in ("cpu", "cuda", "reference"):
            topo = antialias_topology(tri)
            provs[p] = (lambda pos, tri, res, p=p: rasterize(pos, tri, res, backend=p, validate=False),
                        lambda attr, rast, tri, p=p: interpolate(attr, rast, tri, backend=p, validate=False),
                        lambda c, rast, pos, tri, p=p, topo=topo: antialias(c, rast, pos, tri, topo, backend=p,
                                                                            validate=False))
        elif p == "nvdiffrast" and dr is not None and gpu:
            ctx = dr.RasterizeCudaContext()
            topo = dr.antialias_construct_topology_hash(tri)
            provs["nvdiffrast (peer)"] = (lambda pos, tri, res: dr.rasterize(ctx, pos, tri, res)[0],
                                          lambda attr, rast, tri: dr.interpolate(attr[None], rast, tri)[0],
                                          lambda c, rast, pos, tri: dr.antialias(c, rast, pos, tri,
                                                                                 topology_hash=topo))
    return provs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--providers", nargs="+", default=None, help="cpu / cuda, reference, nvdiffrast")
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512], help="image sizes (square)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sanity-size", type=int, default=32, help="image size of the reference vs kernel rows (0: none)")
    ap.add_argument("--sanity-batch", type=int, default=1, help="images in the reference vs kernel rows")
    ap.add_argument("--segments", nargs=2, type=int, default=[125, 200], metavar=("LAT", "LON"),
                    help="latitude and longitude segments of the sphere (2 LAT LON triangles)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    gpu = dev.startswith("cuda")
    dr, why = import_nvdiffrast()
    skipped = [why] if why else []
    if dr is not None and not gpu:
        skipped.append("nvdiffrast: imports, but has no CPU rasterizer (GPU only)")

    verts, tri = uv_sphere(*args.segments)
    tri = tri.to(dev)
    colors = torch.rand(verts.shape[0], 3, generator=torch.Generator().manual_seed(0)).to(dev)
    T = tri.shape[0]
    mine = "cuda" if gpu else "cpu"
    configs = [(args.sanity_batch, args.sanity_size, [mine, "reference"])] if args.sanity_size > 0 else []
    configs += [(args.batch, size, args.providers or [mine, "nvdiffrast"]) for size in args.sizes]
    rows = []

    for B, size, names in configs:
        res = (size, size)
        pos = clip_positions(verts, B).to(dev)
        provs = providers_for(names, gpu, dr, tri)
        weights = torch.rand(B, size, size, 3, generator=torch.Generator().manual_seed(1)).to(dev)
        first_ids = None
        agree = {}
        for name, (rast_fn, _, _) in provs.items():
            with torch.no_grad():
                ids = rast_fn(pos, tri, res)[..., 3]
            first_ids = ids if first_ids is None else first_ids
            agree[name] = f"{(ids == first_ids).float().mean().item():.4f}"

        def fwd(rast_fn):
            with torch.no_grad():
                rast_fn(pos, tri, res)

        def full(rast_fn, interp_fn, aa_fn=None):
            p, c = pos.clone().requires_grad_(), colors.clone().requires_grad_()
            rast = rast_fn(p, tri, res)
            out = interp_fn(c, rast, tri)
            if aa_fn is not None:
                out = aa_fn(out, rast, p, tri)
            (out * weights).sum().backward()

        for what, make in (("rasterize fwd", lambda fns: (lambda: fwd(fns[0]))),
                           ("rasterize + interpolate fwd+bwd", lambda fns: (lambda: full(*fns[:2]))),
                           ("rasterize + interpolate + antialias fwd+bwd", lambda fns: (lambda: full(*fns)))):
            fns = {name: make(f) for name, f in provs.items()}
            if gpu:
                ms = {}
                for name, fn in fns.items():
                    try:
                        ms[name] = bench(fn, dev)
                    except Exception as exc:
                        skipped.append(f"{what} {name} {size}: {type(exc).__name__}: {exc}")
            else:
                reps = args.reps if "reference" not in fns else min(args.reps, 3)
                ms = bench_side_by_side(fns, warmup=1, reps=reps)
            base = ms.get("reference")
            peer = ms.get("nvdiffrast (peer)")
            for name, t in ms.items():
                rows.append({"benchmark": what, "size": f"{B} x {size}x{size}, {T} tris", "provider": name,
                             "ms": f"{t:.3f}",
                             "x reference (sanity)": f"{base / t:.1f}" if base and name != "reference" else "",
                             "x nvdiffrast (peer)": f"{peer / t:.2f}" if peer and name != "nvdiffrast (peer)" else "",
                             "ids agree": agree[name]})

    print(f"rasterize benchmark: {machine(dev)}; commit {commit()}; torch {torch.__version__}; float32")
    print_table(rows, ["benchmark", "size", "provider", "ms", "x reference (sanity)", "x nvdiffrast (peer)",
                       "ids agree"])
    for s in skipped:
        print(f"skipped: {s}")
    save_json(args.json, {"device": machine(dev), "commit": commit(), "rows": rows, "skipped": skipped})


if __name__ == "__main__":
    main()
