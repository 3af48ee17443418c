"""Benchmark the volume-rendering path: compositing, ray marching, and one NeRF training step.

    python bench/bench_render.py                      # CPU: reference vs cpu, nerfacc if installed
    python bench/bench_render.py --device cuda        # GPU: reference vs cuda / triton (nerfacc if installed)
    python bench/bench_render.py --skip march step    # only compositing, the nerfacc comparison and the floor

Compositing: R rays with 1..2*spr samples each (mean spr), density mode, C = 3 values, forward and
backward of every output. Ray marching: rays from a 64x64 camera ring against a 128^3 grid
holding a sphere (fixed step, about 512 steps across the box; --march-steps, --march-radius).
Training step: a 64x64 image (4096 rays), 512 samples per ray before pruning, hash grid + MLP
with analytic normals (double backward through the grid), fused ops vs the same step with every
op on its reference.

nerfacc (optional ``bench`` extra, ``pip install nerfacc==0.5.3``; skipped with a note when it is
not importable), CPU: nerfacc's own CPU path is its batched functions, so the drop-in
``pyengine.compat.nerfacc`` is timed against it on the same tensors, forward and backward of
``render_weight_from_density`` + ``accumulate_along_rays`` on [8192, 128] samples with 3 colour
channels: (a) both batched, (b) the drop-in on the same samples packed (``ray_indices``) against
nerfacc batched. The providers run in turn within every repeat (``bench_side_by_side``).

Bandwidth floor: the fused ``composite`` forward (no grad, C = 3) against ``torch`` copies measured
beside it: "copy in+out" copies a buffer as large as everything the op reads and writes (the
issue's "copy of its inputs and outputs"); "copy same traffic" reads and writes together as many
bytes as the op does (half that buffer each way), the stricter floor.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench, bench_side_by_side, commit, machine, print_table, save_json  # noqa: E402

import pyengine  # noqa: E402
from pyengine.compat import nerfacc as dropin  # noqa: E402
from pyengine.nn import NeRFField, OccupancyGrid  # noqa: E402
from pyengine.ops.composite import composite, pack_info  # noqa: E402
from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect  # noqa: E402
from pyengine.ops.ray_march import ray_march  # noqa: E402
from pyengine.render.camera import generate_rays, orbit_cameras  # noqa: E402
from pyengine.render.volume import render_rays  # noqa: E402


def composite_inputs(log2_samples: int, spr: int, dev, gen):
    S_target = 1 << log2_samples
    R = S_target // spr
    counts = torch.randint(1, 2 * spr, (R,), generator=gen)
    S = int(counts.sum())
    starts = torch.cumsum(counts, 0) - counts
    packed = torch.stack([starts, counts], -1).to(dev)
    t0 = torch.rand(S, generator=gen) * 4
    dt = torch.rand(S, generator=gen) * 0.02 + 1e-3
    sig = torch.rand(S, generator=gen) * 5
    vals = torch.rand(S, 3, generator=gen)
    return packed, t0.to(dev), (t0 + dt).to(dev), sig.to(dev), vals.to(dev), S


def nerfacc_composite(packed, ts, te, sig, vals, ray_indices, mod=None):
    """nerfacc's packed path (or the drop-in's, mod=dropin) on ray_indices, as its estimators return them."""
    import nerfacc

    nerfacc = mod or nerfacc
    w, trans, alphas = nerfacc.render_weight_from_density(ts, te, sig, ray_indices=ray_indices,
                                                          n_rays=packed.shape[0])
    acc = nerfacc.accumulate_along_rays(w, vals, ray_indices=ray_indices, n_rays=packed.shape[0])
    return w, acc


def kernels_only(backend, packed, ts, te, sig, vals):
    """The backend's forward and backward kernels called directly (no op layer, no autograd),
    upstream gradients as the benchmark's sums give them (ones): the time the kernels take."""
    import importlib

    mod = importlib.import_module("pyengine.kernels.composite") if backend == "triton" else pyengine._ext.load()
    ones_s, ones_r = torch.ones_like(ts), torch.ones(packed.shape[0], device=ts.device)
    zeros_s, g_acc = torch.zeros_like(ts), torch.ones_like(vals[: packed.shape[0]])

    def fn():
        w, trans, a, acc, op, dep = mod.composite_fwd(packed, ts, te, sig, vals, False)
        mod.composite_bwd(ones_s, zeros_s, zeros_s, g_acc, ones_r, ones_r, packed, ts, te, sig, vals,
                          trans, False, True, True)
    return fn


def peer_rows(rows, what, size, peer="nerfacc"):
    """Fill the 'x peer' column (peer's time over each provider's) of the rows of one benchmark and size."""
    mine = [r for r in rows if r["benchmark"] == what and r["size"] == size]
    peer_ms = next((float(r["ms"]) for r in mine if r["provider"] == peer), None)
    for r in mine:
        if peer_ms is not None and r["provider"] != peer:
            r["x peer"] = f"{peer_ms / float(r['ms']):.2f} ({peer})"


def import_nerfacc():
    """nerfacc 0.5.3 (the ``bench`` extra) or None; pyengine.compat.nerfacc may have registered
    itself as ``nerfacc`` in sys.modules (install_nerfacc), which is not the real package."""
    try:
        import nerfacc
    except Exception:
        return None
    return None if nerfacc is dropin else nerfacc


def batched_inputs(R: int, N: int, gen):
    """Sorted intervals [R, N], densities [R, N], colours [R, N, 3], upstream gradient [R, 3]."""
    t0 = torch.sort(torch.rand(R, N, generator=gen) * 4, -1).values
    t1 = t0 + torch.rand(R, N, generator=gen) * 0.02 + 1e-3
    sig = torch.rand(R, N, generator=gen) * 5
    rgb = torch.rand(R, N, 3, generator=gen)
    return t0, t1, sig, rgb, torch.randn(R, 3, generator=gen)


def render_step(mod, t0, t1, sig, rgb, g_colors, ray_indices=None, n_rays=None):
    """Forward and backward of weights + accumulated colours through a nerfacc-like module."""
    sig, rgb = sig.detach().requires_grad_(), rgb.detach().requires_grad_()
    w, _, _ = mod.render_weight_from_density(t0, t1, sig, ray_indices=ray_indices, n_rays=n_rays)
    colors = mod.accumulate_along_rays(w, rgb, ray_indices=ray_indices, n_rays=n_rays)
    colors.backward(g_colors)
    return sig.grad, rgb.grad


def nerfacc_rows(args, gen, row, skipped):
    peer = import_nerfacc()
    if peer is None:
        skipped.append("nerfacc: not installed here (pip install nerfacc==0.5.3, the `bench` extra)")
        return
    R, N = 8192, 128
    t0, t1, sig, rgb, g = batched_inputs(R, N, gen)
    # a fresh ray_indices tensor every step, as an estimator returns (the drop-in remembers the
    # packing of the last one it saw)
    ri = itertools.cycle([torch.arange(R).repeat_interleave(N) for _ in range(2)])
    flat = [t.reshape(-1) for t in (t0, t1, sig)] + [rgb.reshape(-1, 3)]

    def ref_dropin():
        with pyengine.use_backend("reference"):
            return render_step(dropin, t0, t1, sig, rgb, g)

    fns = {
        "nerfacc (batched, its CPU path)": lambda: render_step(peer, t0, t1, sig, rgb, g),
        "pyengine.compat.nerfacc batched": lambda: render_step(dropin, t0, t1, sig, rgb, g),
        "pyengine.compat.nerfacc packed (ray_indices)": lambda: render_step(dropin, *flat, g, next(ri), R),
        "pyengine.compat.nerfacc batched, reference backend": ref_dropin,
    }
    # same answers before timing anything
    want = fns["nerfacc (batched, its CPU path)"]()
    for name in list(fns)[1:3]:
        got = fns[name]()
        for a, b in zip(got, want):
            torch.testing.assert_close(a.reshape(b.shape), b, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    ms = bench_side_by_side(fns, reps=max(args.reps, 7))
    base = ms["nerfacc (batched, its CPU path)"]
    for name, t in ms.items():
        row("weights + accumulate, fwd+bwd", f"{R} x {N} samples, C = 3", name, t, base, "nerfacc")


def floor_rows(args, gen, row, rows, dev="cpu"):
    gpu = dev.startswith("cuda")
    R, N = (32768, 128) if gpu else (8192, 128)
    t0, t1, sig, rgb, _ = batched_inputs(R, N, gen)
    ri = torch.arange(R).repeat_interleave(N)
    packed = pack_info(ri, R).to(dev)
    t0, t1, sig = (t.reshape(-1).to(dev) for t in (t0, t1, sig))
    rgb = rgb.reshape(-1, 3).to(dev)
    inputs = (packed, t0, t1, sig, rgb)
    with torch.no_grad():
        outputs = composite(packed, t0, t1, densities=sig, values=rgb, validate=False)
    nbytes = sum(t.numel() * t.element_size() for t in inputs + tuple(outputs))
    big_src, big_dst = torch.rand(nbytes // 4, device=dev), torch.empty(nbytes // 4, device=dev)
    half_src, half_dst = torch.rand(nbytes // 8, device=dev), torch.empty(nbytes // 8, device=dev)

    def fwd():
        with torch.no_grad():
            composite(packed, t0, t1, densities=sig, values=rgb, validate=False)

    fns = {"composite fwd (auto backend)": fwd,
           "copy in+out": lambda: big_dst.copy_(big_src),
           "copy same traffic": lambda: half_dst.copy_(half_src)}
    if gpu:  # device events per function; the GPU is not shared, so interleaving buys nothing
        ms = {k: bench(fn, dev) for k, fn in fns.items()}
    else:
        ms = bench_side_by_side(fns, reps=max(args.reps, 15))
    size = f"{R * N} samples, C = 3, {nbytes / 2**20:.1f} MiB in+out"
    for name in ("copy in+out", "copy same traffic"):
        row("composite fwd vs bandwidth floor", size, name, ms[name], ms["composite fwd (auto backend)"],
            "composite fwd")
    row("composite fwd vs bandwidth floor", size, "composite fwd (auto backend)",
        ms["composite fwd (auto backend)"], None, "")
    # bytes read + written over time: the op's minimum traffic, and the copies' (2x their buffer)
    gbs = {"composite fwd (auto backend)": nbytes / ms["composite fwd (auto backend)"] / 1e6,
           "copy in+out": 2 * big_src.numel() * 4 / ms["copy in+out"] / 1e6,
           "copy same traffic": 2 * half_src.numel() * 4 / ms["copy same traffic"] / 1e6}
    for r in rows:
        if r["benchmark"] == "composite fwd vs bandwidth floor" and r["size"] == size:
            r["GB/s"] = f"{gbs[r['provider']]:.0f}"
    return {k: ms["composite fwd (auto backend)"] / ms[k] for k in ("copy in+out", "copy same traffic")}


def occgrid_rows(peer, o, d, binaries, aabb, step, provs, row, rows, skipped, args):
    """nerfacc's OccGridEstimator.sampling (no sigma_fn: every step in an occupied cell) against
    ray_aabb_intersect + ray_march on the same grid, rays and step. Both lattices start at the
    ray's entry into the box, so the sample counts should agree up to steps that straddle t_max."""
    dev = o.device
    est = peer.OccGridEstimator(aabb, resolution=binaries.shape[-1], levels=binaries.shape[0]).to(dev)
    est.binaries.copy_(binaries)
    what = "occupancy-grid sampling"

    def nerfacc_fn():
        return est.sampling(o, d, render_step_size=step, near_plane=0.0)

    def ours(p):
        tmin, tmax, _ = ray_aabb_intersect(o, d, aabb[None], backend=p)
        return ray_march(o, d, tmin[:, 0], tmax[:, 0], binaries, aabb, step, backend=p)

    n_peer = nerfacc_fn()[0].numel()
    size = f"{o.shape[0]} rays, nerfacc {n_peer} samples"
    ms = bench(nerfacc_fn, str(dev), reps=args.reps)
    row(what, size, "nerfacc", ms, None)
    for p in provs:
        if p in ("reference", "triton", "nerfacc", "compat"):
            continue
        try:
            n = ours(p)[1].numel()
            ms = bench(lambda p=p: ours(p), str(dev), reps=args.reps)
        except Exception as exc:
            skipped.append(f"{what} {p}: {type(exc).__name__}: {exc}")
            continue
        row(what, size, f"{p} ({n} samples)", ms, None)
    peer_rows(rows, what, size)


def sphere_grid(res: int, dev, radius=0.8, half=1.1):
    c = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 * half - half
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    return ((x * x + y * y + z * z).sqrt() < radius)[None].to(dev)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--providers", nargs="+", default=None)
    ap.add_argument("--sizes", nargs="+", type=int, default=None, help="log2 of the number of samples")
    ap.add_argument("--skip", nargs="*", default=[], choices=["composite", "nerfacc", "floor", "march", "step"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--march-steps", type=int, default=512, help="ray_march: steps across the box's diagonal")
    ap.add_argument("--march-radius", type=float, default=0.8, help="ray_march: radius of the occupied sphere")
    ap.add_argument("--compile-step", action="store_true",
                    help="also time the sample-budget step compiled (torch.compile; on CUDA mode "
                         "'reduce-overhead', i.e. CUDA graphs); compiling takes tens of seconds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    gpu = dev.startswith("cuda")
    # on CPU nerfacc's packed functions need CUDA: it is compared batched in its own section
    # "<b>": default validation, the same packed_info every call (checked on the first call only);
    # "<b> checked": a new packed_info every call, each checked (one sync each); "<b> novalidate": none
    provs = args.providers or (["reference", "cuda", "triton", "cuda checked", "triton checked", "cuda novalidate",
                                "triton novalidate", "cuda kernels", "triton kernels", "compat", "nerfacc"]
                               if gpu else ["reference", "cpu", "cpu checked"])
    if args.compile_step:  # the compiled composite beside the eager one (CUDA graphs on a GPU)
        provs = provs + [f"{p} compiled" for p in provs if p in ("cuda", "triton", "cpu")]
    sizes = args.sizes or ([20, 22] if gpu else [20])
    gen = torch.Generator().manual_seed(0)
    rows, skipped = [], []

    def row(what, size, prov, ms, base, base_name="reference"):
        rows.append({"benchmark": what, "size": size, "provider": prov, "ms": f"{ms:.3f}",
                     "speed-up": f"{base / ms:.2f}" if base else "", "vs": base_name if base else ""})

    if "composite" not in args.skip:
        for log2s in sizes:
            packed, ts, te, sig, vals, S = composite_inputs(log2s, 64, dev, gen)
            ray_indices = torch.repeat_interleave(torch.arange(packed.shape[0], device=dev), packed[:, 1])
            base = None
            for prov in provs:
                if prov == "triton" and not gpu:
                    continue
                sg, vg = sig.clone().requires_grad_(), vals.clone().requires_grad_()
                if prov == "nerfacc":
                    try:
                        import nerfacc  # noqa: F401
                    except Exception:
                        skipped.append("nerfacc: not installed here")
                        continue

                    def fn():
                        w, acc = nerfacc_composite(packed, ts, te, sg, vg, ray_indices)
                        (acc.sum() + w.sum()).backward()
                elif prov.endswith(" novalidate"):
                    b = prov.split()[0]

                    def fn(b=b):
                        r = composite(packed, ts, te, densities=sg, values=vg, backend=b, validate=False)
                        (r.accumulated.sum() + r.weights.sum() + r.opacity.sum() + r.depth.sum()).backward()
                elif prov.endswith(" checked"):
                    b = prov.split()[0]

                    def fn(b=b):
                        r = composite(packed.clone(), ts, te, densities=sg, values=vg, backend=b)
                        (r.accumulated.sum() + r.weights.sum() + r.opacity.sum() + r.depth.sum()).backward()
                elif prov.endswith(" kernels"):
                    fn = kernels_only(prov.split()[0], packed, ts, te, sig, vals)
                elif prov.endswith(" compiled"):
                    b = prov.split()[0]

                    def loss(sg, vg, b=b):
                        r = composite(packed, ts, te, densities=sg, values=vg, backend=b, validate=False)
                        return r.accumulated.sum() + r.weights.sum() + r.opacity.sum() + r.depth.sum()

                    compiled = torch.compile(loss, fullgraph=True, mode="reduce-overhead" if gpu else "default")

                    def fn(compiled=compiled):
                        compiled(sg, vg).backward()
                elif prov == "compat":
                    def fn():
                        w, acc = nerfacc_composite(packed, ts, te, sg, vg, ray_indices, mod=dropin)
                        (acc.sum() + w.sum()).backward()
                else:
                    def fn(prov=prov):
                        r = composite(packed, ts, te, densities=sg, values=vg, backend=prov)
                        (r.accumulated.sum() + r.weights.sum() + r.opacity.sum() + r.depth.sum()).backward()
                try:
                    ms = bench(fn, dev, reps=args.reps)
                except Exception as exc:
                    skipped.append(f"composite {prov} 2^{log2s}: {type(exc).__name__}: {exc}")
                    continue
                base = ms if prov == "reference" else base
                row("composite fwd+bwd", f"2^{log2s} samples ({S})", prov, ms, base)
            peer_rows(rows, "composite fwd+bwd", f"2^{log2s} samples ({S})")

    if "nerfacc" not in args.skip and not gpu:
        nerfacc_rows(args, gen, row, skipped)

    floor = {}
    if "floor" not in args.skip:
        floor = floor_rows(args, gen, row, rows, dev)

    if "march" not in args.skip:
        res, half = 128, 1.1
        binaries = sphere_grid(res, dev, radius=args.march_radius, half=half)
        aabb = torch.tensor([-half] * 3 + [half] * 3, device=dev)
        n_cams = 16 if gpu else 4
        cams = orbit_cameras(n_cams, radius=4.0, width=64, height=64, device=dev)
        o, d = (t.reshape(-1, 3) for t in generate_rays(cams))
        tmin, tmax, hit = ray_aabb_intersect(o, d, aabb[None])
        step = 2 * half * math.sqrt(3) / args.march_steps
        base = None
        march_provs = [p for p in provs if p in ("reference", "cuda", "cpu")]  # ray_march's backends
        for prov in march_provs:
            try:
                ms = bench(lambda p=prov: ray_march(o, d, tmin[:, 0], tmax[:, 0], binaries, aabb, step, backend=p),
                           dev, reps=args.reps)
            except Exception as exc:
                skipped.append(f"ray_march {prov}: {type(exc).__name__}: {exc}")
                continue
            base = ms if prov == "reference" else base
            S = ray_march(o, d, tmin[:, 0], tmax[:, 0], binaries, aabb, step)[1].numel()
            row("ray_march", f"{o.shape[0]} rays, {S} samples", prov, ms, base)
        peer = import_nerfacc()
        if peer is None or not gpu:
            skipped.append("occupancy-grid sampling vs nerfacc: needs nerfacc and a GPU")
        else:
            occgrid_rows(peer, o, d, binaries, aabb, step, march_provs, row, rows, skipped, args)

    if "step" not in args.skip:
        torch.manual_seed(0)
        half = 1.1
        field = NeRFField([-half] * 3 + [half] * 3, n_levels=16, log2_hashmap_size=19, finest_resolution=1024).to(dev)
        est = OccupancyGrid(torch.tensor([-half] * 3 + [half] * 3), resolution=128).to(dev)
        est.binaries.copy_(sphere_grid(128, dev, half=half))
        cams = orbit_cameras(1, radius=4.0, width=64, height=64, device=dev)
        o, d = (t.reshape(-1, 3) for t in generate_rays(cams))
        target = torch.rand(o.shape[0], 3, device=dev)
        opt = torch.optim.Adam(field.parameters(), lr=1e-3)
        step = 2 * half * math.sqrt(3) / args.march_steps

        def step_loss(budget=None, normals=True):
            out = render_rays(field, est, o, d, render_step_size=step, with_normals=normals, stratified=True,
                              **({} if budget is None else {"sample_budget": budget[0], "march_budget": budget[1]}))
            loss = ((out["rgb"] - target) ** 2).mean()
            if normals:
                loss = loss + 1e-3 * (out["normal"].norm(dim=-1) - out["opacity"]).square().mean()
            return loss

        def train_step(budget=None, loss_fn=step_loss, normals=True):
            loss = loss_fn(budget, normals)
            opt.zero_grad()
            loss.backward()
            opt.step()

        # the static-shape step (no device sync): budgets 25% above what the rays want (marched, and
        # kept by the early stop), rounded up to a multiple of 4096 samples
        def probe(march):
            return render_rays(field, est, o, d, render_step_size=step, stratified=True, sample_budget=1,
                               march_budget=march)["wanted_samples"].tolist()

        marched = probe(None)[0]
        kept = probe(marched)[1]
        up = lambda n: -(-int(n * 1.25) // 4096) * 4096  # noqa: E731
        budget = (up(kept), up(marched))
        title = "NeRF train step (64x64, 512 spp, analytic normals)"
        variants = [(title, "reference", train_step), (title, "fused", train_step),
                    (title, f"fused, sample_budget={budget[0]} march_budget={budget[1]}", lambda: train_step(budget))]
        if args.compile_step:
            # analytic normals call autograd.grad inside the forward, which torch.compile does not
            # trace in one graph: the compiled step is timed without them, beside its eager twin
            mode = "reduce-overhead" if torch.device(dev).type == "cuda" else "default"
            compiled = torch.compile(step_loss, fullgraph=True, mode=mode)
            plain = "NeRF train step (64x64, 512 spp, no normals)"
            variants += [(plain, f"fused, budgets {budget[0]}/{budget[1]}", lambda: train_step(budget, normals=False)),
                         (plain, f"fused, budgets {budget[0]}/{budget[1]}, compiled ({mode})",
                          lambda: train_step(budget, compiled, normals=False))]
        base = None
        for what, name, fn in variants:
            with pyengine.use_backend("reference" if name == "reference" else None):
                try:
                    ms = bench(fn, dev, reps=args.reps, warmup=1)
                except Exception as exc:
                    skipped.append(f"train step {name}: {type(exc).__name__}: {exc}")
                    continue
            base = ms if name == "reference" or (what != title and "compiled" not in name) else base
            row(what, "4096 rays", name, ms, base,
                base_name="reference" if what == title else f"fused, budgets {budget[0]}/{budget[1]}")

    print(f"render benchmark: {machine(dev)}; commit {commit()}; torch {torch.__version__}")
    print_table(rows, ["benchmark", "size", "provider", "ms", "speed-up", "vs", "x peer", "GB/s"])
    for name, ratio in floor.items():
        print(f"composite fwd takes {ratio:.2f}x the time of '{name}'")
    for s in sorted(set(skipped)):
        print(f"skipped: {s}")
    save_json(args.json, {"device": machine(dev), "commit": commit(), "rows": rows, "skipped": sorted(set(skipped)),
                          "composite_fwd_over_floor": floor})


if __name__ == "__main__":
    main()
