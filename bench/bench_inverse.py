"""Seconds per image of every inverse-problem solver, split into the denoiser and everything else
(operators, SVD steps, guidance arithmetic), on the bundled ShapeWorld prior (or --prior).

    python bench/bench_inverse.py                        # sr4 at sigma_y 0.05, every method, 8 images
    python bench/bench_inverse.py --task inpaint_box --methods ddrm dps --images 16 --steps-scale 0.1

``--steps-scale`` shortens every method's default schedule by that factor, ``--steps dps=100`` sets one
method's (the split between the denoiser and the rest is what this measures; the rows say the steps
they ran).

The peer: deepinv's DPS and DDRM (``deepinv.sampling``, tested with 0.5.0; not a dependency) run beside
ours when deepinv is importable, as rows ``deepinv dps`` / ``deepinv ddrm``, on the same prior (through
:class:`PriorDenoiser`, deepinv's ``denoiser(x, sigma)`` convention), images, measurement, operator
(:func:`deepinv_physics`) and noise levels: deepinv's DDRM gets our grid's levels, its DPS (VP SDE,
DDPM solver) the times whose levels are our grid's, so both make the same denoiser calls as ours.
Each is timed ``--repeats`` times interleaved with ours (ours, deepinv, ours, deepinv), fastest kept.

    PYTHONPATH=/path/to/deepinv/site python bench/bench_inverse.py --methods ddrm dps --steps dps=100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
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
    ap.add_argument("--steps", nargs="+", default=[], metavar="METHOD=N",
                    help="steps of these methods, overriding --steps-scale (e.g. dps=100)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed runs of each method that has a peer, interleaved with the peer's (fastest kept)")
    ap.add_argument("--deepinv-dps-weight", nargs="+", default=["matched"],
                    help="deepinv DPS's weight: 'matched' (its guidance summed over the grid equals ours) or numbers "
                         "(deepinv's default is 1.0); one row each")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    fixed = {}
    for item in args.steps:
        method, _, n = item.partition("=")
        if method not in METHODS or not n.isdigit() or int(n) < 1:
            ap.error(f"--steps: each item must be METHOD=N with METHOD one of {', '.join(METHODS)} and N >= 1, "
                     f"got {item!r}")
        fixed[method] = int(n)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    for w in args.deepinv_dps_weight:
        try:
            ok = w == "matched" or float(w) >= 0
        except ValueError:
            ok = False
        if not ok:
            ap.error(f"--deepinv-dps-weight: each value must be 'matched' or a number >= 0, got {w!r}")
    dev = torch.device(args.device)
    prior = load_prior(args.prior, device=str(dev))
    truth, _ = heldout_images(args.images, prior.resolution)
    truth = truth.to(dev)
    _, problem = _problem(args.task, truth, args.sigma_y, 0)
    rows, skipped = [], []
    for method in args.methods:
        steps = fixed.get(method, max(1, round(DEFAULT_STEPS.get(method, 100) * args.steps_scale)))
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
    notes = peer_rows(args, prior, problem, truth, rows, skipped)
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
    for s in notes:
        print(f"note: {s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "skipped": skipped, "notes": notes, "args": vars(args)}, f, indent=1)
    return 0


# -- the peer: deepinv 0.5.0's DPS and DDRM on the same prior -----------------------------------------------

class PriorDenoiser(torch.nn.Module):
    """A pyengine pixel prior as the denoiser deepinv's samplers call: ``forward(x, sigma) -> x0_hat``.

    deepinv's convention (its ``Denoiser``, ``DDRM``, and ``DPS`` through ``MinusOneOneDenoiserWrapper``):
    ``x`` ``[B, C, H, W]`` is a noisy image in [0, 1] units, ``x = x0 + sigma n`` with ``n ~ N(0, I)``,
    ``sigma`` in the same [0, 1] units (a number, or a ``[B]`` / ``[B, 1, 1, 1]`` tensor of one value),
    and the result is the estimate of ``x0`` in [0, 1] units (not clamped).

    The prior works on ``x' = 2 x - 1`` in [-1, 1], so ``v = 2 x - 1 = x0' + sigma' n`` with
    ``sigma' = 2 sigma``: the variance-exploding variable of the prior's schedule at
    ``sigma_t = sqrt((1 - abar_t) / abar_t)``. The step ``t`` is the one whose ``sigma_t`` is nearest
    to ``sigma'`` in log scale (exact on the grids the benchmark gives deepinv); the network sees the
    VP state ``x_t = v / sqrt(1 + sigma'^2)`` and Tweedie's formula at the requested level gives
    ``x0' = v - sigma' eps(x_t, t)``, returned as ``(x0' + 1) / 2``. ``sigma <= 0`` returns ``x`` (no call).

    Calls, backward passes and their time are counted by pyengine's own counter (``counter``), as in
    :class:`~pyengine.inverse.solvers.SolverResult`. The graph is kept when ``x`` requires grad (DPS).
    """

    def __init__(self, prior, text: str = ""):
        super().__init__()
        from pyengine.diffusion.prior import Prior
        from pyengine.inverse.solvers import _Denoiser

        if not isinstance(prior, Prior) or prior.latent:
            raise TypeError(f"PriorDenoiser: prior must be a pixel pyengine Prior (latent = False), got "
                            f"{type(prior).__name__}")
        self.prior = prior
        with torch.no_grad():
            emb = prior.encode_text([text])
        self.counter = _Denoiser(prior, emb)
        abar = prior.schedule.alphas_cumprod.double().cpu()
        self.log_sigmas = 0.5 * torch.log((1 - abar) / abar)  # [T], increasing

    def step(self, sigma: float) -> int:
        """The prior's step for a deepinv noise level ``sigma`` > 0 ([0, 1] units)."""
        return int((self.log_sigmas - math.log(2 * sigma)).abs().argmin())

    @staticmethod
    def level(sigma, batch: int) -> float:
        """``sigma`` (number, or tensor of one value) as a float; ValueError for per-sample levels."""
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if s.numel() not in (1, batch) or s.numel() == 0:
            raise ValueError(f"PriorDenoiser: sigma must be a number or hold one value per image ({batch}), "
                             f"got shape {tuple(torch.as_tensor(sigma).shape)}")
        if bool((s != s[0]).any()):
            raise ValueError("PriorDenoiser: per-image noise levels are not supported (one step t per call)")
        return float(s[0])

    def forward(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        s = self.level(sigma, x.shape[0])
        if s <= 0:
            return x
        t = self.step(s)
        v = 2 * x - 1
        x_t = v / math.sqrt(1 + (2 * s) ** 2)
        eps = self.counter(x_t, t, grad=torch.is_grad_enabled() and x.requires_grad)
        return (v - 2 * s * eps + 1) / 2


def deepinv_physics(dinv, op, sigma_y: float, device):
    """deepinv's physics for the pyengine operator ``op`` ([0, 1] units, ``GaussianNoise(sigma_y)``):
    ``Inpainting`` with the same mask for inpainting, else a ``DecomposablePhysics`` built from
    ``op.spectral`` (``U``, ``U^T``, ``V``, ``V^T`` and the singular values as ``mask`` ``[1, n]``: the
    exact operator, coefficients ``[B, n]``); a plain ``LinearPhysics`` / ``Physics`` (DPS only) for
    operators without a spectral view. Returns ``(physics, decomposable)``."""
    noise = dinv.physics.GaussianNoise(sigma=float(sigma_y))
    C, H, W = op.in_shape
    if op.linear and getattr(op, "mask", None) is not None:
        mask = op.mask.to(device=device, dtype=torch.float32).expand(C, H, W).contiguous()
        return dinv.physics.Inpainting(img_size=(C, H, W), mask=mask, noise_model=noise, device=device), True
    view = op.spectral if op.linear else None
    if view is not None:
        s = view.singulars(device, torch.float32)[None]
        return dinv.physics.DecomposablePhysics(U=view.U, U_adjoint=view.Ut, V=view.V, V_adjoint=view.Vt, mask=s,
                                                noise_model=noise, device=device), True
    if op.linear:
        return dinv.physics.LinearPhysics(A=op.forward, A_adjoint=op.adjoint, noise_model=noise, device=device), False
    return dinv.physics.Physics(A=op.forward, noise_model=noise), False


def vp_times(sde, sigmas: list[float]) -> torch.Tensor:
    """Times ``tau`` of deepinv's SDE with ``sde.sigma_t(tau) = sigma`` for each (prior-space) level, by
    bisection (``sigma_t`` increases with ``tau``); 0 for ``sigma = 0``."""
    target = torch.tensor(sigmas, dtype=torch.float64, device=sde.device)
    lo, hi = torch.zeros_like(target), torch.ones_like(target)
    while bool((sde.sigma_t(hi) < target).any()):
        hi = torch.where(sde.sigma_t(hi) < target, 2 * hi, hi)
    for _ in range(80):
        mid = (lo + hi) / 2
        below = sde.sigma_t(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return torch.where(target > 0, (lo + hi) / 2, torch.zeros_like(target))


def _grid(prior, steps: int) -> list[int]:
    """The solvers' time grid, descending: ``floor(i T / steps)``, ``i = steps-1 .. 0``."""
    T = prior.schedule.alphas_cumprod.numel()
    return [(i * T) // steps for i in range(steps)][::-1]


def _sigma(prior, t: int) -> float:
    """``sqrt((1 - abar_t) / abar_t)`` (prior space), 0 for ``t = -1``."""
    if t < 0:
        return 0.0
    a = float(prior.schedule.alphas_cumprod[t])
    return math.sqrt((1 - a) / a)


def matched_dps_weight(prior, steps: int, zeta: float) -> float:
    """The constant deepinv DPS ``weight`` whose guidance, summed over the grid, equals ours.

    Ours subtracts ``zeta grad ||y' - A x0'||`` per step (prior space: ``y' = 2 y - A(1)``, so
    ``2 zeta grad ||y - A x0||`` in [0, 1] units); deepinv's ancestral step subtracts
    ``c_k weight grad ||y - A x0||`` with ``c_k = s_t s_s (sigma_t^2 - sigma_s^2) = (abar_s - abar_t) /
    sqrt(abar_t abar_s)``. No constant matches every step; this one matches the sum:
    ``weight = 2 zeta steps / sum_k c_k``."""
    grid = _grid(prior, steps)
    total = 0.0
    for i, t in enumerate(grid):
        s = grid[i + 1] if i + 1 < len(grid) else -1
        a_t = float(prior.schedule.alphas_cumprod[t])
        a_s = 1.0 if s < 0 else float(prior.schedule.alphas_cumprod[s])
        total += (a_s - a_t) / math.sqrt(a_t * a_s)
    return 2 * zeta * steps / total


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, fn):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def peer_rows(args, prior, problem, truth, rows, skipped) -> list[str]:
    """deepinv's DPS and DDRM on the same prior, images, measurement and denoiser calls, when deepinv
    is importable: rows ``deepinv ddrm`` / ``deepinv dps``, timed interleaved with ours (ours, deepinv,
    ours, deepinv, ...: ``--repeats`` runs each, the fastest kept, for ours too). Returns notes on the
    peer's settings."""
    try:
        import deepinv as dinv
    except Exception as exc:
        skipped.append(f"deepinv: not importable ({type(exc).__name__}); no peer comparison")
        return []
    from pyengine.inverse.solvers import DPS_ZETA, DPS_ZETA_DEFAULT

    dev = truth.device
    op, y, n = problem.operator, problem.y, truth.shape[0]
    ours = {r["method"]: r for r in rows}
    version = getattr(dinv, "__version__", "?")
    notes = []
    for method in ("ddrm", "dps"):
        if method not in args.methods or method not in ours:
            continue
        physics, decomposable = deepinv_physics(dinv, op, problem.sigma_y, dev)
        if method == "ddrm" and not decomposable:
            skipped.append(f"deepinv ddrm: {op.name!r} has no SVD (spectral view) to build deepinv's physics from")
            continue
        steps = ours[method]["steps"]
        grid = _grid(prior, steps)
        runs = []  # (label, make) per peer row
        if method == "ddrm":
            # deepinv's DDRM calls the denoiser once per level: our grid's levels, in [0, 1] units
            sigmas = np.array([_sigma(prior, t) / 2 for t in grid])

            def make(den):
                sampler = dinv.sampling.DDRM(den, sigmas=sigmas, eta=0.85, etab=1.0)
                return lambda: sampler(y, physics)

            runs.append(("deepinv ddrm", {"sigmas": "ours / 2", "eta": 0.85, "etab": 1.0}, make))
        else:
            zeta = DPS_ZETA.get(op.name, DPS_ZETA_DEFAULT)
            weights = args.deepinv_dps_weight
            for w in weights:
                weight = matched_dps_weight(prior, steps, zeta) if w == "matched" else float(w)
                label = "deepinv dps" if len(weights) == 1 else f"deepinv dps (weight {w})"

                def make(den, weight=weight):
                    gen = torch.Generator(device=dev).manual_seed(0)
                    sampler = dinv.sampling.DPS(den, num_steps=steps + 1, weight=weight, device=dev, rng=gen)
                    # the ancestral DDPM steps of our grid, then to the clean image (sigma 0): `steps` calls
                    taus = vp_times(sampler.sde, [_sigma(prior, t) for t in grid] + [0.0])
                    return lambda: sampler(y, physics, x_init=tuple(truth.shape), timesteps=taus)

                runs.append((label, {"weight": weight, "weight_from": w, "zeta": zeta, "solver": "ddpm"}, make))
        best = {}
        for r in range(args.repeats):
            if r > 0:  # ours again, between deepinv's runs
                res = solve(method, prior, problem, steps=steps, generator=torch.Generator(device=dev).manual_seed(0))
                if res.seconds / n < ours[method]["s/image"]:
                    _set_times(ours[method], res.seconds, res.denoiser_seconds, n)
                ours[method]["runs"] = ours[method].get("runs", 1) + 1
            for label, _, make in runs:
                den = PriorDenoiser(prior)
                torch.manual_seed(0)  # DDRM draws from torch's global generator
                x, seconds = _timed(dev, make(den))
                c = den.counter
                if label not in best or seconds < best[label]["seconds"]:
                    best[label] = {"seconds": seconds, "den": c.seconds, "calls": c.calls, "backward": c.backward,
                                   "psnr": float(psnr(x.float(), truth).mean())}
        for label, options, _ in runs:
            b = best[label]
            row = {"method": label, "steps": steps, "calls": b["calls"], "backward": b["backward"], "psnr": b["psnr"],
                   "runs": args.repeats, "options": options}
            _set_times(row, b["seconds"], b["den"], n)
            rows.append(row)
            notes.append(f"{label}: deepinv {version}, " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                                     else f"{k} {v}" for k, v in options.items()))
    return notes


def _set_times(row: dict, seconds: float, denoiser_seconds: float, n: int) -> None:
    other = seconds - denoiser_seconds
    row.update({"s/image": seconds / n, "denoiser s/image": denoiser_seconds / n, "other s/image": other / n,
                "other share": other / seconds if seconds > 0 else 0.0})


if __name__ == "__main__":
    sys.exit(main())
