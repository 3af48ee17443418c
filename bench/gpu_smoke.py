"""Small CUDA run of every kernel (hash_encode with every table type, composite, ray marching, scans,
the point-voxel ops, rasterize / interpolate / antialias / texture; st_attention on Triton), for compute-sanitizer.

    compute-sanitizer --tool memcheck python bench/gpu_smoke.py [cuda|triton|cpu]

Includes positions exactly at 0 and 1 (the far face indexes one cell past a dense grid and
relies on the modulo), out-of-range and NaN positions, and an empty batch.
"""

import torch

from pyengine.ops.hash_encode import hash_encode
from pyengine.reference.hash_encode import HashGridConfig


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def point_voxel(backend, dev):
    """The point-voxel ops with atomics and deterministic, float32 / float16 / float64, odd sizes,
    coordinates on and beyond the grid's faces, one point, empty clouds and no centres."""
    from pyengine.ops.ball_query import ball_query
    from pyengine.ops.furthest_point_sample import furthest_point_sample
    from pyengine.ops.grouping import gather, grouping
    from pyengine.ops.nearest_neighbor_interpolate import nearest_neighbor_interpolate
    from pyengine.ops.voxelize import avg_voxelize, normalize_coords, trilinear_devoxelize

    for B, C, N, R in ((3, 5, 777, 7), (1, 2, 1, 4), (2, 3, 0, 5)):
        for dtype in (torch.float32, torch.float16, torch.float64):
            for det in (False, True):
                pts = torch.randn(B, 3, N, device=dev)
                feats = torch.randn(B, C, N, device=dev, dtype=dtype, requires_grad=True)
                fcoords, icoords = normalize_coords(pts, R)
                grid = avg_voxelize(feats, icoords, R, deterministic=det, backend=backend)
                far = fcoords * 1.5 - 1.0  # beyond both faces: clamped
                out = trilinear_devoxelize(grid, far, R, deterministic=det, backend=backend)
                out.float().square().sum().backward()
                M = min(N, 33)
                idx = furthest_point_sample(pts, M, backend=backend)
                centers = gather(pts, idx, deterministic=det, backend=backend)
                nb = ball_query(centers, pts, 0.7, 9, backend=backend)
                g = grouping(feats, nb, deterministic=det, backend=backend)
                c_feats = torch.randn(B, C, M, device=dev, dtype=dtype, requires_grad=True)
                up = nearest_neighbor_interpolate(pts, centers, c_feats, deterministic=det, backend=backend)
                (g.float().sum() + up.float().sum()).backward()
                sync(dev)


def raster(backend, dev):
    """rasterize + interpolate forward and backward, float32 / float64: small triangles (one thread
    each in the CUDA depth test) and large ones (the block-per-triangle list), one crossing w = 0,
    one behind the camera, NaN positions, out-of-range indices unchecked, empty meshes and images."""
    from pyengine.ops.rasterize import interpolate, rasterize

    g = torch.Generator(device=dev).manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        V, T = 300, 500
        pos = torch.rand(3, V, 4, device=dev, generator=g, dtype=dtype) * 2 - 1
        pos[..., 3] = pos[..., 3].abs() + 0.5
        pos[0, :3, 3] = -0.2  # vertices behind the camera
        pos[1, 5, 0] = float("nan")
        tri = torch.randint(0, V, (T, 3), device=dev, generator=g)
        tri[:10] = torch.arange(30, device=dev).reshape(10, 3)  # a few big triangles
        pos.requires_grad_()
        attr = torch.rand(V, 5, device=dev, generator=g, dtype=dtype, requires_grad=True)
        for res in ((37, 61), (128, 96)):
            rast = rasterize(pos, tri, res, backend=backend)
            out = interpolate(attr, rast, tri, backend=backend)
            (out.sum() + rast[..., :3].sum()).backward()
            assert torch.isfinite(pos.grad[1:2, 6:]).all() and torch.isfinite(attr.grad).all()
        bad = torch.cat([tri, torch.tensor([[0, 1, V + 7]], device=dev)])
        rasterize(pos, bad, (17, 9), backend=backend, validate=False)
        rasterize(pos, tri[:0], (5, 5), backend=backend)
        rasterize(pos, tri, (0, 5), backend=backend)
        interpolate(attr, rasterize(pos[:0], tri, (4, 4), backend=backend), tri, backend=backend)
        antialias_texture(backend, dev, pos, tri, dtype)


def antialias_texture(backend, dev, pos, tri, dtype):
    """antialias (with and without precomputed topology, a gradient boost, an empty image) and
    texture (both filters, every boundary mode, uv far outside [0, 1] and NaN, odd texture sizes,
    an empty batch), forward and backward."""
    from pyengine.ops.antialias import antialias, antialias_topology
    from pyengine.ops.rasterize import rasterize
    from pyengine.ops.texture import texture

    g = torch.Generator(device=dev).manual_seed(1)
    pos = pos.detach().clone()
    pos[1, 5, 0] = 0.3  # antialias needs finite positions where triangles are drawn
    pos.requires_grad_()
    rast = rasterize(pos.detach(), tri, (41, 67), backend=backend)
    color = torch.rand(3, 41, 67, 4, device=dev, generator=g, dtype=dtype, requires_grad=True)
    topo = antialias_topology(tri)
    for t, boost in ((None, 1.0), (topo, 3.0)):
        out = antialias(color, rast, pos, tri, t, pos_gradient_boost=boost, backend=backend)
        out.square().sum().backward()
    antialias(color[:, :0], rast[:, :0], pos, tri, backend=backend)
    tex = torch.rand(2, 13, 29, 3, device=dev, generator=g, dtype=dtype, requires_grad=True)
    uv = torch.rand(2, 17, 23, 2, device=dev, generator=g, dtype=dtype) * 3 - 1
    uv[0, 0, 0, 0] = float("nan")
    uv.requires_grad_()
    for filt in ("nearest", "linear"):
        for bound in ("wrap", "clamp", "zero"):
            texture(tex, uv, filt, bound, backend=backend).sum().backward()
    texture(tex[:0], uv[:0], backend=backend)
    sync(dev)


def attention(backend, dev):
    """st_attention both modes, both layouts, odd sizes, a mask with a fully masked query, a bias,
    cross-frame keys, float32 / bfloat16, forward and backward, and an empty batch."""
    from pyengine.ops.st_attention import st_attention

    for dtype in (torch.float32, torch.bfloat16):
        for mode, (T, H, W) in (("temporal", (7, 3, 5)), ("spatial", (3, 5, 7))):
            C, heads = 2 * 24, 2
            q, k, v = (torch.randn(2, T, H, W, C, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
            L = T if mode == "temporal" else H * W
            mask = torch.rand(L, L, device=dev) > 0.3
            mask[0] = False  # a query with no key: output 0, no NaN
            bias = torch.randn(heads, L, L, device=dev, dtype=dtype, requires_grad=True)
            y = st_attention(q, k, v, mode=mode, heads=heads, bias=bias, mask=mask, backend=backend)
            y.float().square().sum().backward()
            if mode == "spatial":
                y = st_attention(q, k, v, mode=mode, heads=heads, cross_frame=("first", "previous"),
                                 backend=backend)
                y.float().sum().backward()
            p = [t.detach().permute(0, 4, 1, 2, 3) for t in (q, k, v)]  # [B, C, T, H, W] views
            st_attention(*p, mode=mode, heads=heads, layout="bcthw", pos_encoding=True, backend=backend)
            st_attention(q[:0], k[:0], v[:0], mode=mode, heads=heads, backend=backend)
            sync(dev)


def main(backend="cuda"):
    dev = "cpu" if backend == "cpu" else "cuda"  # cpu: the dry run of bench/gpu_check.sh
    # Triton compiles each configuration at first use (about a second each): fewer of them
    Ds, Fs = ((3,), (1, 2, 8)) if backend == "triton" else ((2, 3, 4), (1, 2, 4, 8))
    for D in Ds:
        for F in Fs:
            for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                if backend == "triton" and dtype == torch.float64:
                    continue  # Triton's hash_encode computes in float32 and narrower
                cfg = HashGridConfig(D, 6, F, 12, 3.0, 1.93, "smoothstep" if F % 2 else "linear")
                x = torch.rand(777, D, device=dev)
                x[:5] = 1.0
                x[5:10] = 0.0
                x[10, 0], x[11, -1], x[12, 0] = -3.0, 7.0, float("nan")
                if dtype == torch.float64:
                    x = x.double()
                p = (torch.rand(cfg.n_params(), device=dev) - 0.5).to(dtype).requires_grad_()
                x.requires_grad_()
                y = hash_encode(x, p, cfg, backend=backend)
                (dx,) = torch.autograd.grad(y, x, torch.randn_like(y), create_graph=True)
                # scaled so that fp16 parameter gradients (summed over the batch) stay finite
                (dx.square().sum() * 1e-3).backward()
                hash_encode(x[:0], p, cfg, backend=backend).sum().backward()
                sync(dev)
                assert torch.isfinite(y).all() and torch.isfinite(p.grad.float()).all()
    # the largest tile (32 levels x 8 features) and a table 4 bytes past an aligned start (no vector loads)
    cfg = HashGridConfig(3, 32, 8, 10, 2.0, 1.3)
    x = torch.rand(333, 3, device=dev)
    for offset in (0, 1):
        whole = (torch.rand(cfg.n_params() + offset, device=dev) - 0.5).requires_grad_()
        hash_encode(x, whole[offset:], cfg, backend=backend).square().sum().backward()
        sync(dev)
        assert torch.isfinite(whole.grad).all()
    from pyengine.ops.composite import composite
    from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect
    from pyengine.ops.ray_march import ray_march

    g = torch.Generator(device=dev).manual_seed(0)
    # long rays (32 lanes a ray), then mostly single-sample rays (one lane a ray), C = 3 and 40
    for counts, C in (([0, 1, 5, 300, 0, 7], 3), ([1] * 500 + [0, 2, 33], 40)):
        counts = torch.tensor(counts, device=dev)
        packed = torch.stack([torch.cumsum(counts, 0) - counts, counts], -1)
        S = int(counts.sum())
        ts = torch.rand(S, device=dev, generator=g)
        te = ts + 0.01
        for kw in ({"densities": torch.rand(S, device=dev) * 50}, {"alphas": torch.rand(S, device=dev) * 0.99}):
            for values in (None, torch.rand(S, C, device=dev)):
                key = next(iter(kw))
                kw[key].requires_grad_()
                r = composite(packed, ts, te, values=values, backend=backend, **kw)
                (r.weights.sum() + r.transmittance.sum() + r.opacity.sum() + r.depth.sum()
                 + r.accumulated.sum()).backward()
                composite(packed[:0], ts[:0], te[:0], values=None if values is None else values[:0],
                          backend=backend, **{key: kw[key].detach()[:0]})
    if backend in ("cuda", "cpu"):
        o = torch.randn(999, 3, device=dev) * 2
        d = torch.nn.functional.normalize(torch.randn(999, 3, device=dev), dim=-1)
        aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1], device=dev)
        tmin, tmax, hit = ray_aabb_intersect(o, d, aabb[None], near_plane=0.0, backend=backend)
        binaries = torch.rand(2, 16, 8, 12, device=dev) > 0.5
        for cone in (0.0, 0.01):
            ray_march(o, d, tmin[:, 0], tmax[:, 0], binaries, aabb, 0.01, cone,
                      torch.rand(999, device=dev), backend=backend)
        ray_march(o[:0], d[:0], tmin[:0, 0], tmax[:0, 0], binaries, aabb, 0.01, max_steps=3, backend=backend)
        from pyengine.ops.segment_scan import segment_scan

        x = torch.rand(S, device=dev, requires_grad=True)
        for prod in (False, True):
            for exclusive in (False, True):
                segment_scan(x, packed, prod=prod, exclusive=exclusive, backend=backend).sum().backward()
        segment_scan(x[:0], packed[:0], backend=backend)
    if backend in ("cuda", "cpu"):
        point_voxel(backend, dev)
        raster(backend, dev)
    if backend in ("triton", "cpu"):
        attention(backend, dev)
    sync(dev)
    print(f"gpu_smoke: {backend} kernels ran clean")


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")
