"""Benchmark antialias and texture, forward and forward + backward.

    python bench/bench_antialias.py                 # CPU: reference vs cpu, interleaved in every repeat
    python bench/bench_antialias.py --device cuda   # GPU: reference vs cuda, and nvdiffrast if importable
    python bench/bench_antialias.py --ops antialias # one op only (texture: the other)

antialias: a sphere of ``--sphere`` (latitude x longitude) segments, perspective-projected so that
it fills about half of a ``B x H x W`` image (default 4 x 512 x 512), rasterized once outside the
timing (pyengine's rasterize), colour = the interpolated vertex normals (C = 3, float32). The
silhouette and the mesh's interior edges are both there, as in a real render. "fwd + bwd" takes
the gradients of color and pos. Topology is precomputed (``antialias_topology``) for every provider,
as one would for a mesh that does not change; the "with topology" row adds its construction.

texture: a ``B x h x w`` image (default 4 x 512 x 512) sampling a 1024 x 1024 x 3 texture shared by
every image at random coordinates in [0, 1]^2 (magnification and minification mixed), linear and
nearest filtering, wrap boundary; "fwd + bwd" takes the gradients of tex and uv.

nvdiffrast (``nvdiffrast.torch``) runs on CUDA only; its rows use the same inputs (int32 tri,
contiguous float32 tensors) and, for antialias, its own precomputed topology hash.
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
from pyengine.ops.texture import texture  # noqa: E402


def sphere(n_lat: int, n_lon: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit sphere with shared vertices: pos [V, 3], tri [T, 3] int64 (outward winding)."""
    lat = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)[1:-1]
    lon = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=torch.float64)[:-1]
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    ring = torch.stack([la.sin() * lo.cos(), la.cos(), la.sin() * lo.sin()], -1).reshape(-1, 3)
    pos = torch.cat([torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), ring,
                     torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)])
    R, L = n_lat - 1, n_lon
    idx = torch.arange(R * L).reshape(R, L) + 1
    nxt = torch.roll(idx, -1, 1)
    tris = [torch.stack([torch.zeros(L, dtype=torch.int64), nxt[0], idx[0]], 1)]
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    tris += [torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)]
    tris.append(torch.stack([torch.full((L,), R * L + 1), idx[-1], nxt[-1]], 1))
    return pos.to(device), torch.cat(tris).to(device)


def antialias_inputs(B: int, H: int, W: int, n_lat: int, n_lon: int, device):
    """(color, rast, pos [B, V, 4], tri) of a sphere seen by B slightly different cameras."""
    try:
        from pyengine.ops.rasterize import interpolate, rasterize
    except ImportError:  # before the rasterizer is in the package
        from pyengine.reference.rasterize import interpolate, rasterize
    p, tri = sphere(n_lat, n_lon, device)
    clips = []
    for b in range(B):
        a = 0.3 * b
        rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                           dtype=torch.float64, device=device)
        q = p @ rot.T
        z = q[:, 2] + 3.0  # camera at the origin looking down +z, the sphere 3 units away
        # focal length 1.6; depth range [1, 5] to NDC [-1, 1]: z_clip = 1.5 z - 2.5, w = z
        clips.append(torch.stack([q[:, 0] * 1.6, q[:, 1] * 1.6, 1.5 * z - 2.5, z], -1))
    pos = torch.stack(clips).float().contiguous()
    rast = rasterize(pos, tri, (H, W))
    color = interpolate(p.float()[None].expand(B, -1, -1).contiguous(), rast, tri).contiguous()
    return color, rast.contiguous(), pos, tri


def import_nvdiffrast():
    try:
        import nvdiffrast.torch as dr

        return dr, None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ops", choices=["all", "antialias", "texture"], default="all")
    ap.add_argument("--size", nargs=3, type=int, default=[4, 512, 512], metavar=("B", "H", "W"))
    ap.add_argument("--sphere", nargs=2, type=int, default=[64, 128], metavar=("LAT", "LON"))
    ap.add_argument("--tex-size", type=int, default=1024)
    ap.add_argument("--providers", nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    B, H, W = args.size
    gpu = dev.startswith("cuda")
    providers = args.providers or (["reference", "cuda", "nvdiffrast"] if gpu else ["reference", "cpu"])
    dr, why = import_nvdiffrast() if "nvdiffrast" in providers and gpu else (None, "CPU run")
    if dr is None:
        providers = [p for p in providers if p != "nvdiffrast"]
        if gpu:
            print(f"nvdiffrast not timed: {why}")

    fns = {}  # (benchmark, provider) -> fn
    sizes = {}
    if args.ops in ("all", "antialias"):
        color, rast, pos, tri = antialias_inputs(B, H, W, *args.sphere, dev)
        topo = antialias_topology(tri)
        name = "antialias"
        sizes[name] = f"{B}x{H}x{W}x3, T={tri.shape[0]}"
        for prov in providers:
            if prov == "nvdiffrast":
                tri32 = tri.int().contiguous()
                hsh = dr.antialias_construct_topology_hash(tri32)
                fwd = (lambda: dr.antialias(color, rast, pos, tri32, topology_hash=hsh))
                fns[(name + " fwd", prov)] = fwd
                fns[(name + " with topology", prov)] = lambda: dr.antialias(color, rast, pos, tri32)
            else:
                fns[(name + " fwd", prov)] = (lambda prov=prov: antialias(color, rast, pos, tri, topo, backend=prov,
                                                                           validate=False))
                fns[(name + " with topology", prov)] = (lambda prov=prov: antialias(color, rast, pos, tri,
                                                                                     backend=prov, validate=False))

            def full(prov=prov):
                c, p = color.detach().requires_grad_(), pos.detach().requires_grad_()
                if prov == "nvdiffrast":
                    out = dr.antialias(c, rast, p, tri.int(), topology_hash=hsh)
                else:
                    out = antialias(c, rast, p, tri, topo, backend=prov, validate=False)
                torch.autograd.grad(out, (c, p), torch.ones_like(out))

            fns[(name + " fwd + bwd", prov)] = full
    if args.ops in ("all", "texture"):
        g = torch.Generator(device="cpu").manual_seed(0)
        tex = torch.rand(1, args.tex_size, args.tex_size, 3, generator=g).to(dev)
        uv = torch.rand(B, H, W, 2, generator=g).to(dev)
        for mode in ("linear", "nearest"):
            name = f"texture {mode}"
            sizes[name + " fwd"] = sizes[name + " fwd + bwd"] = f"{B}x{H}x{W}, tex {args.tex_size}^2x3"
            for prov in providers:
                if prov == "nvdiffrast":
                    fns[(name + " fwd", prov)] = lambda mode=mode: dr.texture(tex, uv, filter_mode=mode)
                else:
                    fns[(name + " fwd", prov)] = (lambda mode=mode, prov=prov: texture(tex, uv, mode, backend=prov))

                def full(mode=mode, prov=prov):
                    t, u = tex.detach().requires_grad_(), uv.detach().requires_grad_()
                    out = (dr.texture(t, u, filter_mode=mode) if prov == "nvdiffrast"
                           else texture(t, u, mode, backend=prov))
                    torch.autograd.grad(out, (t, u) if mode == "linear" else (t,), torch.ones_like(out))

                fns[(name + " fwd + bwd", prov)] = full

    rows = []
    benchmarks = list(dict.fromkeys(k[0] for k in fns))
    for bname in benchmarks:
        group = {p: fn for (b, p), fn in fns.items() if b == bname}
        if gpu:
            times = {p: bench(fn, dev) for p, fn in group.items()}
        else:
            times = bench_side_by_side(group, reps=args.reps)
        ref = times.get("reference")
        for prov, t in times.items():
            size = sizes.get(bname) or sizes.get(bname.split(" fwd")[0].split(" with")[0], "")
            rows.append({"benchmark": bname, "size": size, "provider": prov, "ms": f"{t:.3f}",
                         "x reference": f"{ref / t:.1f}" if ref else ""})
    print(f"device: {machine(dev)}, commit {commit()}, float32")
    print_table(rows, ["benchmark", "size", "provider", "ms", "x reference"])
    save_json(args.json, {"device": machine(dev), "commit": commit(), "size": [B, H, W], "rows": rows})
    return rows


if __name__ == "__main__":
    main()
