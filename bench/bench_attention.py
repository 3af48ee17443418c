"""Benchmark st_attention: temporal and spatial multi-head attention on [B, T, H, W, C] video
activations, forward and forward + backward, against SDPA with the rearranges diffusers does.

    python bench/bench_attention.py                    # CPU: reduced sizes (below), providers interleaved
    python bench/bench_attention.py --device cuda      # GPU: full sizes, float16, GB/s against a copy
    python bench/bench_attention.py --ops temporal     # only some rows (temporal spatial floor unet diffusers)
    python bench/bench_attention.py --quick            # tiny sizes: a smoke run of every code path

Sizes (8 heads, head dim D = 40 and 64, C = 320 / 512; channels-last [B, T, H, W, C] inputs, q, k, v
three separate tensors):

* temporal (one sequence per pixel, length T): B = 2, 64x64 latent, T = 16 and 24 on a GPU; 32x32
  latent, T = 16 on the CPU (``--latent``, ``--frames``);
* spatial (one sequence per frame, length H W): B = 2 x T = 16 frames, 32x32 and 64x64 latent on a
  GPU, 16x16 on the CPU (``--spatial-latent``, ``--spatial-frames``).

The CPU defaults took 6 minutes (2.5 CPU-minutes) on 2 cores with a load average of 6, a third of
it in the diffusers rows and most of the rest in the reference's forward + backward. A CPU times
each group of providers in turn within every repeat (``bench_side_by_side``, 3 repeats).
Model rows: pyengine's UNet3D (model_channels 320, 8 heads, B = 2, 16 frames, 32x32 latent on a
GPU; 32 channels, 4 heads, B = 1, 8 frames, 16x16 on the CPU; ``--unet-*``) and diffusers' (B = 2
on a GPU, 1 on the CPU; ``--diffusers-size``).

Providers (``--providers``): ``reference``, ``cpu``, ``triton``, ``cuda`` (``pyengine.st_attention``
with ``backend=``; one that pyengine does not have, or that cannot run here, is listed as skipped
with the dispatcher's reason); ``sdpa-rearrange``, what diffusers does: permute to ``(b h w) t c``
(temporal; a copy) or view as ``(b t) (h w) c`` (spatial, free from channels-last), split heads,
``F.scaled_dot_product_attention``, merge heads (a copy), permute back to a contiguous
``[B, T, H, W, C]`` (temporal; a copy), the copies being part of its time; ``sdpa``, the attention
call alone on inputs already laid out as ``[N, heads, L, D]`` (a floor: no copies); ``flash-attn``
(``flash_attn_func``) and ``xformers`` (``memory_efficient_attention``) with sdpa-rearrange's
copies, when importable.

Before anything is timed, every provider's output (and, for forward + backward, its gradients of
q, k and v under one random upstream gradient) is compared with the reference computed in float64
(float32 on a GPU) chunk by chunk over independent sequences; a provider off by more than the
dtype's tolerance (relative to the largest reference value) is reported as a mismatch, not timed,
and the script exits with status 1. The "max err" column is that error.

Bandwidth (``floor``): temporal rows get GB/s = bytes the attention must move / time: forward
reads q, k, v and writes out (4 tensors), the backward reads q, k, v, out and the output gradient
and writes dq, dk, dv (8 tensors); lse is not counted. "% copy" compares with a large tensor copy
(1 GiB on a GPU) timed in the same run, 2 x its size / time.

Model rows: ``unet`` times one sampling step (a no-grad forward) of ``pyengine.nn.video.UNet3D``
as built (pyengine attention, automatic backend) and with its attention modules switched to SDPA
with rearranges (``impl = "sdpa"``, where the modules have that switch); ``diffusers`` times
diffusers' ``UNet3DConditionModel`` (small random config: block_out_channels (32, 64),
attention_head_dim 8, cross_attention_dim 32, 4 channels, 16 frames, 32x32 latent) with its default
processors and after ``pyengine.compat.diffusers.set_pyengine_processors``. Both check that the
two variants agree before timing them.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench, bench_side_by_side, commit, machine, print_table, save_json  # noqa: E402

from pyengine.ops import _dispatch  # noqa: E402
from pyengine.ops.st_attention import st_attention  # noqa: E402
from pyengine.reference import st_attention as ref  # noqa: E402

PYENGINE = ("reference", "cpu", "triton", "cuda")
PEERS = ("sdpa-rearrange", "sdpa", "flash-attn", "xformers")
OPS = ("temporal", "spatial", "floor", "unet", "diffusers")
MODES = ("fwd", "fwd+bwd")
#: sizes left unset on the command line: (--quick, CPU, GPU)
DEFAULTS = {
    "batch": (1, 2, 2),
    "head_dims": ([40], [40, 64], [40, 64]),
    "frames": ([8], [16], [16, 24]),
    "latent": ([8], [32], [64]),
    "spatial_frames": (4, 16, 16),
    "spatial_latent": ([8], [16], [32, 64]),
    "unet_size": ([1, 4, 8], [1, 8, 16], [2, 16, 32]),
    "unet_channels": (32, 32, 320),
    "unet_heads": (4, 4, 8),
    "diffusers_size": ([1, 4, 16], [1, 16, 32], [2, 16, 32]),
    "copy_mib": (4, 256, 1024),
}
#: largest |provider - reference| / largest |reference| accepted; float32 allows TF32 dot products on a GPU
TOL = {torch.float32: 5e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}
#: the same for whole networks (pyengine attention against SDPA inside one model)
MODEL_TOL = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}
T0 = time.perf_counter()
COLUMNS = ["benchmark", "size", "provider", "ms", "speed-up", "x sdpa-rearrange", "GB/s", "% copy", "max err"]


# Layouts -----------------------------------------------------------------------------------------

def to_seq(x: torch.Tensor, temporal: bool, heads: int) -> torch.Tensor:
    """[B, T, H, W, C] -> [N, L, heads, D]: ``(b h w) t`` (a copy) or ``(b t) (h w)`` (a view)."""
    B, T, H, W, C = x.shape
    if temporal:
        return x.permute(0, 2, 3, 1, 4).reshape(B * H * W, T, heads, C // heads)
    return x.reshape(B * T, H * W, heads, C // heads)


def from_seq(o: torch.Tensor, shape, temporal: bool) -> torch.Tensor:
    """[N, L, heads, D] (any strides) -> contiguous [B, T, H, W, C]: merge heads, permute back."""
    B, T, H, W, C = shape
    if temporal:
        return o.reshape(B, H, W, T, C).permute(0, 3, 1, 2, 4).contiguous()
    return o.reshape(B, T, H, W, C)


def sdpa_rearrange(q, k, v, temporal: bool, heads: int) -> torch.Tensor:
    """diffusers' way: rearrange, split heads ([N, heads, L, D] views), SDPA, merge heads, rearrange back."""
    o = F.scaled_dot_product_attention(*(to_seq(x, temporal, heads).transpose(1, 2) for x in (q, k, v)))
    return from_seq(o.transpose(1, 2), q.shape, temporal)


# The oracle --------------------------------------------------------------------------------------

def oracle(q, k, v, g, temporal: bool, heads: int, f: torch.dtype, budget: float = 2**28):
    """The reference's output and, when g is given, (dq, dk, dv), computed in dtype f on slices of
    independent sequences (rows of pixels in temporal mode, frames in spatial mode) so that no
    slice holds more than about ``budget`` bytes of scores."""
    B, T, H, W, C = q.shape
    D = C // heads
    dim, per = (2, B * W * heads * T * T) if temporal else (1, B * heads * (H * W) ** 2)
    step = max(1, int(budget // (per * torch.finfo(f).bits // 8)))
    outs, grads = [], ([], [], [])
    for s in range(0, q.shape[dim], step):
        index = [slice(None)] * 5
        index[dim] = slice(s, s + step)
        index = tuple(index)
        xs = [x[index].to(f).requires_grad_(g is not None) for x in (q, k, v)]
        n = xs[0].shape[1]
        kv = (torch.zeros(0, 1, dtype=torch.int32) if temporal else torch.arange(n, dtype=torch.int32)[:, None])
        with torch.set_grad_enabled(g is not None):
            out, _ = ref.st_attention_fwd(*xs, kv.to(q.device), torch.zeros(0, dtype=f, device=q.device),
                                          torch.zeros(0, D, dtype=f, device=q.device), heads, temporal,
                                          1.0 / math.sqrt(D))
            if g is not None:
                for acc, d in zip(grads, torch.autograd.grad(out, xs, g[index].to(f))):
                    acc.append(d)
        outs.append(out.detach())
    return torch.cat(outs, dim), (tuple(torch.cat(d, dim) for d in grads) if g is not None else None)


def progress(what: str, size: str, ms: dict) -> None:
    """One line per timed group on stderr, so that a run cut short by a time limit leaves its figures."""
    times = ", ".join(f"{k} {t:.3f}" for k, t in ms.items())
    print(f"[{time.perf_counter() - T0:.0f} s] {what} {size}: {times} ms", file=sys.stderr, flush=True)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        raise ValueError(f"shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    return float((got.detach().to(want.dtype) - want).abs().max() / want.abs().max().clamp_min(1e-12))


# Providers ---------------------------------------------------------------------------------------

def import_peer(name: str):
    """(attention function on [N, L, heads, D] tensors, None) or (None, why not)."""
    try:
        if name == "flash-attn":
            from flash_attn import flash_attn_func
            return flash_attn_func, None
        import xformers.ops
        return xformers.ops.memory_efficient_attention, None
    except Exception as exc:
        return None, f"not importable ({type(exc).__name__}: {exc})"


def unavailable(prov: str, dev: torch.device, dtype: torch.dtype) -> str | None:
    """Why a provider cannot run on this device and dtype (None if it should)."""
    if prov in PYENGINE:
        avail = _dispatch.availability("st_attention", dev, dtypes=(dtype,))
        if prov not in avail:
            return f"pyengine has no {prov!r} backend for st_attention yet (it has {', '.join(sorted(avail))})"
        return avail[prov]
    if prov in ("flash-attn", "xformers"):
        fn, why = import_peer(prov)
        if fn is None:
            return why
        if dev.type != "cuda":
            return "runs on CUDA tensors only"
        if prov == "flash-attn" and dtype not in (torch.float16, torch.bfloat16):
            return f"takes float16 / bfloat16 only, got {dtype}"
        return None
    if prov in ("sdpa-rearrange", "sdpa"):
        return None
    return f"unknown provider; expected one of {PYENGINE + PEERS}"


def provider_fns(prov, q, k, v, g, temporal: bool, heads: int):
    """(fwd, fwdbwd, canon): fwd() -> out and fwdbwd() -> (out, (dq, dk, dv)) in the provider's
    layout, canon(x) -> that tensor as [B, T, H, W, C] (for the check, outside the timing)."""
    mode = "temporal" if temporal else "spatial"
    shape = q.shape
    same = lambda x: x  # noqa: E731
    if prov == "sdpa":
        # the floor: inputs already in SDPA's [N, heads, L, D] layout, no copies in the timing
        q, k, v, g = (to_seq(x, temporal, heads).transpose(1, 2).contiguous() for x in (q, k, v, g))
        run = F.scaled_dot_product_attention
        canon = lambda x: from_seq(x.transpose(1, 2), shape, temporal)  # noqa: E731
    elif prov == "sdpa-rearrange":
        run, canon = (lambda a, b, c: sdpa_rearrange(a, b, c, temporal, heads)), same
    elif prov in ("flash-attn", "xformers"):
        attn, _ = import_peer(prov)

        def run(a, b, c):
            o = attn(*(to_seq(x, temporal, heads) for x in (a, b, c)))
            return from_seq(o, shape, temporal)
        canon = same
    else:
        run, canon = (lambda a, b, c: st_attention(a, b, c, mode=mode, heads=heads, backend=prov)), same
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]

    def fwd():
        with torch.no_grad():
            return run(q, k, v)

    def fwdbwd():
        out = run(*leaves)
        return out, torch.autograd.grad(out, leaves, g)

    return fwd, fwdbwd, canon


def attention_bytes(shape, dtype, mode: str) -> int:
    """Bytes the attention must move: fwd reads q, k, v and writes out; the backward reads q, k, v,
    out, d_out and writes dq, dk, dv."""
    n = math.prod(shape) * torch.finfo(dtype).bits // 8
    return n * (4 if mode == "fwd" else 12)


def reference_too_big(shape, heads: int, temporal: bool, mode: str, dev: torch.device) -> str | None:
    """The reference materializes every score matrix: skip it where that would not fit."""
    B, T, H, W, C = shape
    scores = 4 * (B * H * W * heads * T * T if temporal else B * T * heads * (H * W) ** 2)
    need = scores * (3 if mode == "fwd" else 8)
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        free = 8 * 2**30
        try:
            with open("/proc/meminfo") as fh:
                free = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("MemAvailable"))
        except (OSError, StopIteration):
            pass
    if need > 0.5 * free:
        return f"would hold about {need / 2**30:.0f} GiB of score matrices (free: {free / 2**30:.0f} GiB)"
    return None


# Rows --------------------------------------------------------------------------------------------

def attention_rows(args, dev, dtype, provs, reasons, rows, skipped, mismatches, copy_gbs):
    gpu = dev.type == "cuda"
    gen = torch.Generator(dev).manual_seed(0)  # on the device: the GPU inputs are 10^8 values each
    oracle_dtype = torch.float32 if gpu else torch.float64
    groups = []  # (temporal, shape)
    if "temporal" in args.ops:
        for S in args.latent:
            for T in args.frames:
                for D in args.head_dims:
                    groups.append((True, (args.batch, T, S, S, args.heads * D)))
    if "spatial" in args.ops:
        for S in args.spatial_latent:
            for D in args.head_dims:
                groups.append((False, (args.batch, args.spatial_frames, S, S, args.heads * D)))
    for temporal, shape in groups:
        B, T, H, W, C = shape
        kind = "temporal" if temporal else "spatial"
        size = f"B={B} T={T} {H}x{W} heads={args.heads} D={C // args.heads} (C={C})"
        q, k, v, g = (torch.randn(shape, generator=gen, device=dev, dtype=dtype) for _ in range(4))
        want_out, want_grads = oracle(q, k, v, g if "fwd+bwd" in args.modes else None, temporal, args.heads,
                                      oracle_dtype)
        for mode in args.modes:
            what = f"{kind} attention {mode}"
            fns, errs = {}, {}
            for prov in provs:
                if reasons[prov] is not None:
                    continue
                label = f"{prov} (interpreted)" if prov == "triton" and not gpu else prov
                why = reference_too_big(shape, args.heads, temporal, mode, dev) if prov == "reference" else None
                if why:
                    skipped.append(f"{what} {size} reference: {why}")
                    continue
                try:
                    fwd, fwdbwd, canon = provider_fns(prov, q, k, v, g, temporal, args.heads)
                    if mode == "fwd":
                        err = rel_err(canon(fwd()), want_out)
                        fn = fwd
                    else:
                        out, grads = fwdbwd()
                        err = max(rel_err(canon(x), w) for x, w in zip((out, *grads), (want_out, *want_grads)))
                        fn = fwdbwd
                except Exception as exc:
                    skipped.append(f"{what} {size} {prov}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                    if gpu:
                        torch.cuda.empty_cache()
                    continue
                if not err <= TOL[dtype]:
                    mismatches.append(f"{what} {size} {prov}: max err {err:.2e} > {TOL[dtype]:.0e}")
                    continue
                fns[label], errs[label] = fn, err
            if not fns:
                continue
            if gpu:
                ms = {p: bench(fn, str(dev), reps=args.reps) for p, fn in fns.items()}
            else:
                ms = bench_side_by_side(fns, warmup=0, reps=args.reps, budget_s=args.budget)  # the check warmed up
            progress(what, size, ms)
            base, peer = ms.get("reference"), ms.get("sdpa-rearrange")
            nbytes = attention_bytes(shape, dtype, mode)
            for p, t in ms.items():
                r = {"benchmark": what, "size": size, "provider": p, "ms": f"{t:.3f}",
                     "speed-up": f"{base / t:.2f}" if base else "",
                     "x sdpa-rearrange": f"{peer / t:.2f}" if peer else "", "max err": f"{errs[p]:.1e}"}
                if temporal and "floor" in args.ops:
                    gbs = nbytes / t / 1e6
                    r["GB/s"] = f"{gbs:.3g}"
                    r["% copy"] = f"{100 * gbs / copy_gbs:.3g}" if copy_gbs else ""
                rows.append(r)
        del q, k, v, g, want_out, want_grads
        if gpu:
            torch.cuda.empty_cache()


def copy_row(args, dev, rows) -> float:
    """GB/s of one large tensor copy (2 x its size / time): the device's copy bandwidth."""
    n = args.copy_mib << 18  # float32 elements
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), str(dev), reps=max(args.reps, 5))
    gbs = 2 * n * 4 / ms / 1e6
    rows.append({"benchmark": "copy bandwidth (torch copy_)", "size": f"{n * 4 / 2**20:.0f} MiB float32",
                 "provider": "torch", "ms": f"{ms:.3f}", "GB/s": f"{gbs:.3g}",
                 "% copy": "100"})
    return gbs


def time_pair(fns: dict, dev, args) -> dict:
    if dev.type == "cuda":
        return {k: bench(fn, str(dev), reps=args.reps) for k, fn in fns.items()}
    return bench_side_by_side(fns, warmup=0, reps=args.reps, budget_s=args.budget)  # the check warmed up


def model_rows(what, size, fns, dev, dtype, args, rows, mismatches, peer=None):
    """Checks that the variants of one model agree (max err: against the first), then times them side
    by side; "x sdpa-rearrange" is the time of variant ``peer`` over each one's."""
    outs = {k: fn() for k, fn in fns.items()}
    first = next(iter(outs.values()))
    errs = {k: rel_err(o.float(), first.float()) for k, o in outs.items()}
    bad = {k: e for k, e in errs.items() if not e <= MODEL_TOL[dtype]}
    for k, e in bad.items():
        mismatches.append(f"{what} {size} {k}: max err {e:.2e} against {next(iter(fns))} > {MODEL_TOL[dtype]:.0e}")
    fns = {k: fn for k, fn in fns.items() if k not in bad}
    ms = time_pair(fns, dev, args)
    progress(what, size, ms)
    base = ms.get(peer)
    for k, t in ms.items():
        rows.append({"benchmark": what, "size": size, "provider": k, "ms": f"{t:.3f}",
                     "x sdpa-rearrange": f"{base / t:.2f}" if base else "",
                     "max err": f"{errs[k]:.1e}" if k != next(iter(outs)) else ""})


def wake(model: torch.nn.Module) -> torch.nn.Module:
    """Gives zero-initialised parameters (identity-at-init layers, zero output convolutions) small
    random values, so that the check of two variants of a model compares a non-zero output that
    depends on every attention layer."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def auto_backend(dev, dtype) -> str:
    try:
        return _dispatch.select("st_attention", dev, None, dtypes=(dtype,)).name
    except Exception as exc:
        return f"none: {exc}"


def unet_rows(args, dev, dtype, rows, skipped, mismatches):
    """One sampling step (no-grad forward) of pyengine's UNet3D: its own attention vs SDPA + rearranges."""
    what = "3D U-Net sampling step (forward)"
    try:
        from pyengine.nn.video import UNet3D
    except Exception as exc:
        skipped.append(f"{what}: pyengine.nn.video.UNet3D not available yet ({type(exc).__name__}: {exc})")
        return
    B, T, S = args.unet_size
    size = f"B={B} T={T} {S}x{S} latent, model_channels={args.unet_channels} heads={args.unet_heads}"
    try:
        torch.manual_seed(0)
        model = wake(UNet3D(in_channels=4, out_channels=4, model_channels=args.unet_channels,
                            heads=args.unet_heads)).to(dev, dtype).eval()
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(B, T, S, S, 4, generator=gen).to(dev, dtype)
        t = torch.randint(0, 1000, (B,), generator=gen).to(dev)
        switches = [m for m in model.modules() if hasattr(m, "impl")]

        def step():
            with torch.no_grad():
                return model(x, t)

        def sdpa_step():
            before = [m.impl for m in switches]
            for m in switches:
                m.impl = "sdpa"
            try:
                return step()
            finally:
                for m, b in zip(switches, before):
                    m.impl = b

        peer = "sdpa + rearranges (impl='sdpa')"
        fns = {peer: sdpa_step} if switches else {}
        fns[f"pyengine attention (auto: {auto_backend(dev, dtype)})"] = step
        if not switches:
            skipped.append(f"{what}: no sdpa switch in UNet3D (no module has an `impl` attribute); "
                           "only pyengine's attention is timed")
        model_rows(what, size, fns, dev, dtype, args, rows, mismatches, peer)
    except Exception as exc:
        skipped.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def diffusers_rows(args, dev, dtype, rows, skipped, mismatches):
    """diffusers' UNet3DConditionModel forward with its default processors vs pyengine's."""
    what = "diffusers UNet3DConditionModel forward"
    try:
        from diffusers import UNet3DConditionModel
    except Exception as exc:
        skipped.append(f"{what}: diffusers not importable ({type(exc).__name__}: {exc})")
        return
    try:
        from pyengine.compat.diffusers import set_pyengine_processors
    except Exception as exc:
        skipped.append(f"{what}: pyengine.compat.diffusers.set_pyengine_processors not available yet "
                       f"({type(exc).__name__}: {exc})")
        return
    B, Fr, S = args.diffusers_size
    size = f"B={B} {Fr} frames {S}x{S} latent, blocks (32, 64), attention_head_dim=8 (8 heads), cross-attn 32"
    try:
        torch.manual_seed(0)
        model = UNet3DConditionModel(
            sample_size=S, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(32, 64), layers_per_block=1,
            norm_num_groups=32, cross_attention_dim=32, attention_head_dim=8)
        model = wake(model).to(dev).eval()
        if dtype != torch.float32:
            model = model.to(dtype)
        ours = copy.deepcopy(model)
        set_pyengine_processors(ours)
        ours_other = copy.deepcopy(model)  # the other choice for spatial self-attention
        other = "sdpa" if torch.device(dev).type == "cpu" else "st_attention"
        set_pyengine_processors(ours_other, spatial=other)
        gen = torch.Generator().manual_seed(3)
        sample = torch.randn(B, 4, Fr, S, S, generator=gen).to(dev, dtype)
        context = torch.randn(B, 8, 32, generator=gen).to(dev, dtype)
        timestep = torch.tensor([10] * B, device=dev)

        def run(m):
            with torch.no_grad():
                return m(sample, timestep, encoder_hidden_states=context).sample

        peer = "diffusers default processors"
        fns = {peer: lambda: run(model),
               f"set_pyengine_processors (auto: {auto_backend(dev, dtype)})": lambda: run(ours),
               f"set_pyengine_processors(spatial='{other}')": lambda: run(ours_other)}
        model_rows(what, size, fns, dev, dtype, args, rows, mismatches, peer)
    except Exception as exc:
        skipped.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


# Main --------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="default: float16 on a GPU, float32 on the CPU")
    ap.add_argument("--providers", nargs="+", default=None)
    ap.add_argument("--ops", nargs="+", choices=("all",) + OPS, default=["all"])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--quick", action="store_true", help="tiny sizes everywhere (a smoke run)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dims", nargs="+", type=int, default=None)
    ap.add_argument("--frames", nargs="+", type=int, default=None, help="temporal: sequence lengths T")
    ap.add_argument("--latent", nargs="+", type=int, default=None, help="temporal: latent sides")
    ap.add_argument("--spatial-frames", type=int, default=None)
    ap.add_argument("--spatial-latent", nargs="+", type=int, default=None, help="spatial: latent sides")
    ap.add_argument("--unet-size", nargs=3, type=int, default=None, metavar=("B", "T", "S"))
    ap.add_argument("--unet-channels", type=int, default=None)
    ap.add_argument("--unet-heads", type=int, default=None)
    ap.add_argument("--diffusers-size", nargs=3, type=int, default=None, metavar=("B", "F", "S"))
    ap.add_argument("--copy-mib", type=int, default=None, help="size of the copy that measures the bandwidth")
    ap.add_argument("--reps", type=int, default=3, help="CPU: repeats (a GPU uses do_bench's)")
    ap.add_argument("--budget", type=float, default=30.0, help="CPU: seconds per group of interleaved repeats")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if gpu else "float32"))
    args.ops = set(OPS) if "all" in args.ops else set(args.ops)
    for name, (quick, cpu, cuda) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else cuda if gpu else cpu)
    provs = args.providers or list(PYENGINE + PEERS)
    reasons = {p: unavailable(p, dev, dtype) for p in provs}
    skipped = [f"{p}: {why}" for p, why in reasons.items() if why is not None]
    rows, mismatches = [], []

    copy_gbs = copy_row(args, dev, rows) if "floor" in args.ops else None
    if args.ops & {"temporal", "spatial"}:
        attention_rows(args, dev, dtype, provs, reasons, rows, skipped, mismatches, copy_gbs)
    if "unet" in args.ops:
        unet_rows(args, dev, dtype, rows, skipped, mismatches)
    if "diffusers" in args.ops:
        diffusers_rows(args, dev, dtype, rows, skipped, mismatches)

    print(f"attention benchmark: {machine(str(dev))}; {str(dtype)[6:]}; commit {commit()}; torch {torch.__version__}")
    print_table(rows, COLUMNS)
    if copy_gbs:
        print(f"copy bandwidth: {copy_gbs:.0f} GB/s ({args.copy_mib} MiB copy_); the temporal rows' GB/s count "
              "q, k, v, out (+ d_out, dq, dk, dv for fwd+bwd) once each")
    for s in dict.fromkeys(skipped):
        print(f"skipped: {s}")
    for m in mismatches:
        print(f"MISMATCH: {m}")
    save_json(args.json, {"device": machine(str(dev)), "commit": commit(), "dtype": str(dtype)[6:],
                          "copy_GBps": copy_gbs, "rows": rows, "skipped": list(dict.fromkeys(skipped)),
                          "mismatches": mismatches,
                          "sizes": {k: getattr(args, k) for k in ("heads", *DEFAULTS)}})
    if mismatches:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
