"""Benchmark hash_encode: providers x modes x sizes, ratios against the reference in one run.

Standard configuration (Instant-NGP / tcnn): 3-D, 16 levels x 2 features, 2^19 table, base 16,
per-level scale 1.447269, float32 table.

    python bench/bench_hash_encode.py                       # CPU: reference vs cpu at 2^18
    python bench/bench_hash_encode.py --device cuda --sizes 18 20 --providers cuda triton tcnn reference
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench, commit, machine, print_table, save_json  # noqa: E402

from pyengine.ops.hash_encode import hash_encode  # noqa: E402
from pyengine.reference.hash_encode import HashGridConfig  # noqa: E402

STANDARD = dict(n_input_dims=3, n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                base_resolution=16.0, per_level_scale=1.447269)
MODES = ("forward", "backward", "forward+backward")


def tcnn_module(cfg: HashGridConfig, dtype):
    """tiny-cuda-nn's encoding with the same hyper-parameters, or None when it is not installed."""
    try:
        import tinycudann as tcnn
    except Exception:
        return None
    if "pyengine" in (getattr(tcnn, "__file__", "") or ""):
        return None  # our own shim, not the real thing
    enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": cfg.n_levels,
                            "n_features_per_level": cfg.n_features_per_level,
                            "log2_hashmap_size": cfg.log2_hashmap_size,
                            "base_resolution": int(cfg.base_resolution),
                            "per_level_scale": cfg.per_level_scale}, dtype=dtype)
    return enc


def make_fn(provider, cfg, x, params, mode, tcnn_enc=None):
    if provider == "tcnn":
        def run(inp):
            return tcnn_enc(inp)
    else:
        def run(inp):
            return hash_encode(inp, params, cfg, backend=provider)

    if mode == "forward":
        def fn():
            with torch.no_grad():
                run(x)
        return fn
    out = run(x)
    g = torch.randn_like(out)
    if mode == "backward":
        def fn():
            out.backward(g, retain_graph=True)
        return fn

    def fn():
        run(x).backward(g)
    return fn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--providers", nargs="+", default=None)
    ap.add_argument("--sizes", nargs="+", type=int, default=[18], help="log2 of the number of points")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    dev = args.device
    if args.providers is None:
        args.providers = ["reference", "cpu"] if dev == "cpu" else ["reference", "cuda", "triton", "tcnn"]
    cfg = HashGridConfig(**STANDARD)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    params = ((torch.rand(cfg.n_params(), generator=gen) * 2 - 1) * 1e-1).to(dev, dtype).requires_grad_()
    tcnn_enc = tcnn_module(cfg, dtype) if "tcnn" in args.providers and dev.startswith("cuda") else None
    rows, skipped = [], []
    for log2n in args.sizes:
        # uniform random points: the cache-unfriendly case (renderers' points are more coherent)
        n = 1 << log2n
        x = torch.rand(n, 3, generator=gen).to(dev)
        for mode in args.modes:
            base_ms = None
            for prov in args.providers:
                if prov == "tcnn" and tcnn_enc is None:
                    skipped.append("tcnn: tiny-cuda-nn is not installed here")
                    continue
                if prov == "triton" and not dev.startswith("cuda"):
                    skipped.append("triton: on CPU it only runs under the (slow) interpreter")
                    continue
                try:
                    ms = bench(make_fn(prov, cfg, x, params, mode, tcnn_enc), dev, reps=args.reps)
                except Exception as exc:  # report and go on: one provider failing is a result too
                    skipped.append(f"{prov} {mode} 2^{log2n}: {type(exc).__name__}: {exc}")
                    continue
                if prov == "reference":
                    base_ms = ms
                rows.append({"points": f"2^{log2n}", "mode": mode, "provider": prov, "ms": f"{ms:.3f}",
                             "Mpts/s": f"{n / ms / 1e3:.1f}",
                             "x vs reference": f"{base_ms / ms:.1f}" if base_ms else ""})
    print(f"hash_encode benchmark: {machine(dev)}; dtype {args.dtype}; commit {commit()}; torch {torch.__version__}")
    print(f"config: {STANDARD}")
    print_table(rows, ["points", "mode", "provider", "ms", "Mpts/s", "x vs reference"])
    for s in sorted(set(skipped)):
        print(f"skipped: {s}")
    save_json(args.json, {"device": machine(dev), "commit": commit(), "dtype": args.dtype, "rows": rows,
                          "skipped": sorted(set(skipped))})
    return rows


if __name__ == "__main__":
    main()
