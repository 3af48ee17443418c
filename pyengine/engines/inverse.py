"""``pyengine inverse``: recover an image from a measurement ``y = A(x) + sigma_y n`` with a diffusion prior.

One solve::

    pyengine inverse --task sr4 --method dps --sigma-y 0.05 --shapeworld "a red cube"
    pyengine inverse --task inpaint_box --method ddrm --image photo.png --samples 8

writes, in the run folder: ``measurement.png`` (what the operator lets through, shown as an image:
the pseudo-inverse for linear operators, the log Fourier magnitude for phase retrieval), the samples
(``samples.png``), with ``--samples N`` their mean and per-pixel standard deviation, the truth when it
is known, a side-by-side ``grid.png`` and ``metrics.json``. The batch of samples runs in one call.

Evaluation (``pyengine inverse eval``): held-out ShapeWorld images (disjoint from the prior's training
seeds) at the prior's resolution, every task x sigma_y x method of the config, plus each task's
classical baseline. Per method: PSNR and SSIM of the posterior mean, masked-region PSNR for
inpainting, the residual ``||y - A(x)|| / (sigma_y sqrt(m))``, the ShapeWorld classifier's accuracy on
the results, KID on that classifier's features, denoiser calls and seconds per image. Paired bootstrap
confidence intervals for the PSNR difference of every method against the task's reference method
(``eval_reference``, default DPS). Tables in ``summary.md`` / ``summary.json``.

Everything is in [0, 1] image units; sigma_y too (see ``pyengine.inverse.base``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

JOB = "inverse"
DEFAULT_TASKS = ["sr4", "inpaint_box", "inpaint_random", "deblur_gauss", "colorize", "phase"]
DEFAULT_SIGMAS = [0.0, 0.025, 0.05, 0.1]
DEFAULT_METHODS = ["scoresde", "ilvr", "snips", "ddrm", "dps", "pigdm", "mcg", "reddiff"]


@dataclass
class InverseConfig:
    task: str = "sr4"
    method: str = "dps"
    sigma_y: float = 0.05  # measurement noise, [0, 1] image units
    image: str = ""  # a PNG/JPEG path; or
    shapeworld: str = "a red cube"  # a ShapeWorld caption: a held-out view of it (used when image is "")
    image_seed: int = 0  # which view of the caption
    samples: int = 1  # posterior samples of the one image (mean and std when > 1)
    steps: int = 0  # 0: the method's default
    t0: float = 1.0  # CCDF start time (1: the full run)
    ccdf_init: str = "baseline"  # what a CCDF start (t0 < 1) diffuses: the task's classical baseline, or pinv (A^+ y)
    options: dict = field(default_factory=dict)  # method options (zeta=..., eta=...)
    prior: str = "shapeworld"
    text: str = ""  # the prompt the prior is conditioned on ("": unconditional)
    seed: int = 0
    device: str = "auto"  # auto: cuda when available
    out: str = ""  # default runs/inverse/<task>-<method>-<sigma>
    # evaluation
    eval_images: int = 200
    eval_batch: int = 50
    eval_tasks: list = field(default_factory=lambda: list(DEFAULT_TASKS))
    eval_sigmas: list = field(default_factory=lambda: list(DEFAULT_SIGMAS))
    eval_methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    eval_t0: list = field(default_factory=list)  # extra CCDF rows: each method again at these t0
    eval_reference: str = "dps"
    eval_bootstrap: int = 1000
    eval_data_seed: int = 0
    eval_samples: int = 1  # posterior samples per image: PSNR, SSIM and masked PSNR are of their mean
    eval_shard: str = ""  # "i/n": solve a 1/n share of the chunks (n processes or machines split one evaluation)
    eval_resume: bool = True  # reuse the chunks already in out/chunks written under the same settings
    eval_solve: bool = True  # false: solve nothing, only assemble the summary from the chunks there
    eval_budget_s: float = 0.0  # > 0: after this many seconds (and one chunk) start no new chunk; a rerun goes on


def _device(cfg: InverseConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def check_config(cfg: InverseConfig) -> None:
    from pyengine.inverse.operators import TASKS
    from pyengine.inverse.solvers import METHODS

    def bad(name, want):
        raise ValueError(f"inverse: {name} must be {want}, got {getattr(cfg, name)!r}")

    if cfg.task not in TASKS:
        bad("task", f"one of {TASKS}")
    if cfg.method not in METHODS + ("baseline",):
        bad("method", f"one of {METHODS + ('baseline',)}")
    if not (isinstance(cfg.sigma_y, (int, float)) and 0 <= cfg.sigma_y < math.inf):
        bad("sigma_y", "a number >= 0 in [0, 1] image units")
    if not isinstance(cfg.samples, int) or cfg.samples < 1:
        bad("samples", "an int >= 1")
    if not isinstance(cfg.steps, int) or cfg.steps < 0:
        bad("steps", "an int >= 0 (0: the method's default)")
    if not (0 < cfg.t0 <= 1):
        bad("t0", "in (0, 1]")
    if cfg.ccdf_init not in ("baseline", "pinv"):
        bad("ccdf_init", "'baseline' or 'pinv'")
    if cfg.image and not os.path.isfile(cfg.image):
        bad("image", "an existing image file")
    for name in ("eval_tasks", "eval_methods", "eval_sigmas", "eval_t0"):
        if not isinstance(getattr(cfg, name), (list, tuple)):
            bad(name, "a list")
    unknown = [t for t in cfg.eval_tasks if t not in TASKS]
    if unknown:
        bad("eval_tasks", f"a list of {TASKS}")
    unknown = [m for m in cfg.eval_methods if m not in METHODS]
    if unknown:
        bad("eval_methods", f"a list of {METHODS}")
    if any(not (0 <= float(s) < math.inf) for s in cfg.eval_sigmas):
        bad("eval_sigmas", "a list of numbers >= 0")
    if any(not (0 < float(t) <= 1) for t in cfg.eval_t0):
        bad("eval_t0", "a list of numbers in (0, 1]")
    if cfg.eval_images < 1 or cfg.eval_batch < 1:
        raise ValueError("inverse: eval_images and eval_batch must be >= 1")
    if not isinstance(cfg.eval_samples, int) or cfg.eval_samples < 1:
        bad("eval_samples", "an int >= 1")
    _parse_shard(cfg.eval_shard)
    if not (isinstance(cfg.eval_budget_s, (int, float)) and cfg.eval_budget_s >= 0):
        bad("eval_budget_s", "a number of seconds >= 0 (0: no limit)")


# -- images ----------------------------------------------------------------------------------------


def load_image(path: str, size: int) -> torch.Tensor:
    """``[1, 3, size, size]`` RGB in [0, 1] from an image file (alpha dropped, grey replicated; resized
    with antialiasing when its side differs)."""
    import imageio.v3 as iio

    a = np.asarray(iio.imread(path))
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    a = a[..., :3]
    scale = 65535.0 if a.dtype == np.uint16 else 255.0 if a.dtype == np.uint8 else 1.0
    x = torch.from_numpy(a.astype(np.float32) / scale).permute(2, 0, 1)[None]
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1)


def shapeworld_image(caption: str, size: int, seed: int = 0) -> torch.Tensor:
    """``[1, 3, size, size]``: a held-out-style view of ``caption`` (``"a red cube"``) drawn from ``seed``."""
    from pyengine.data import shapeworld_images as swi

    shape, color, _ = swi.parse_caption(caption)
    if shape is None or color is None:
        raise ValueError(f"inverse: shapeworld must name a shape ({', '.join(swi.SHAPES)}) and a colour "
                         f"({', '.join(swi.COLORS)}), got {caption!r}")
    # seeds far past both splits' (training: data_seed + i; held-out: data_seed + 1e6 + i)
    spec = swi.ViewSpec.random(2 * swi.HELDOUT_OFFSET + int(seed), shape, color)
    image, _ = swi.make_view(spec, size)  # [size, size, 3] in [-1, 1]
    return ((image.permute(2, 0, 1)[None].float() + 1) / 2).clamp(0, 1)


def heldout_images(n: int, size: int, data_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, 3, size, size]`` in [0, 1], ``[n, 3]`` labels): the held-out split of ShapeWorld views,
    whose seeds the prior's training never draws."""
    from pyengine.data import shapeworld_images as swi

    images, labels = swi.dataset("heldout", n, size=size, data_seed=data_seed)
    return images.permute(0, 3, 1, 2).float() / 255.0, labels


def show_measurement(problem) -> torch.Tensor:
    """An image of what the measurement holds, ``[B, 3, H, W]`` in [0, 1]: the pseudo-inverse for linear
    operators (the missing pixels of inpainting black), the centred log Fourier magnitude for phase
    retrieval (grey)."""
    op, y = problem.operator, problem.y
    if op.linear:
        return op.pinv(y).clamp(0, 1)
    C, H, W = op.in_shape
    mag = torch.log1p(y.abs())
    mag = torch.fft.fftshift(mag, dim=(-2, -1))
    mag = torch.nn.functional.interpolate(mag.mean(1, keepdim=True) if mag.dim() == 4 else mag[:, None],
                                          (H, W), mode="area")
    mag = (mag - mag.amin((2, 3), keepdim=True)) / (mag.amax((2, 3), keepdim=True)
                                                    - mag.amin((2, 3), keepdim=True)).clamp_min(1e-8)
    return mag.expand(-1, 3, -1, -1)


# -- metrics ---------------------------------------------------------------------------------------


# The PSNR of uniform 8-bit quantisation noise, 10 log10(12 * 255^2) = 58.9 dB: the most a PSNR says
# about images that are 8-bit (the held-out views are). An exact reconstruction (a grey shape
# recoloured grey, a noiseless invertible blur) scores this, not 120 dB or infinity, so that one
# exact image does not outweigh the others in a mean over images.
PSNR_CAP = 10 * math.log10(12 * 255**2)


def psnr(x: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` PSNR in dB of ``x`` against ``ref`` (``[B, C, H, W]`` in [0, 1]); over the pixels where
    ``mask`` ``[B or 1, 1 or C, H, W]`` is true when given. At most :data:`PSNR_CAP`."""
    err = (x.double().clamp(0, 1) - ref.double()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.to(err.device).expand_as(err).double()
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_CAP / 10)))).float()


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``[B]`` SSIM (scikit-image's, 7x7 window, data range 1, over the colour channels)."""
    from skimage.metrics import structural_similarity

    a = x.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().double().numpy()
    b = ref.detach().permute(0, 2, 3, 1).cpu().double().numpy()
    win = min(7, a.shape[1], a.shape[2])
    win -= 1 - win % 2
    return torch.tensor([structural_similarity(p, q, data_range=1.0, channel_axis=-1, win_size=win)
                         for p, q in zip(a, b)], dtype=torch.float32)


def residual(problem, x: torch.Tensor) -> torch.Tensor:
    """``[B]`` ``||y - A(x)|| / (sigma_y sqrt(m))`` (about 1 for a solution as consistent as the truth;
    ``||y - A(x)|| / sqrt(m)`` when sigma_y is 0)."""
    r = (problem.y - problem.operator.forward(x.to(problem.y.dtype))).flatten(1)
    rms = r.norm(dim=1) / math.sqrt(r.shape[1])
    return (rms / problem.sigma_y if problem.sigma_y > 0 else rms).float()


def kid(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018) on given features: the unbiased MMD^2 with
    the cubic polynomial kernel ``(a . b / d + 1)^3``. With equal sizes the cross term leaves out the
    pairs ``(a_i, b_i)`` too (Gretton's U-statistic), so that paired sets (reconstruction ``i`` of
    truth ``i``) are not scored closer than independent draws would be."""
    a, b = feat_a.double(), feat_b.double()
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    if m < 2 or n < 2:
        return float("nan")
    k = lambda u, v: (u @ v.T / d + 1) ** 3
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    cross = (kab.sum() - kab.diag().sum()) / (m * (m - 1)) if m == n else kab.mean()
    return float((kaa.sum() - kaa.diag().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diag().sum()) / (n * (n - 1))
                 - 2 * cross)


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean(a - b), low, high)``: the 95% paired-bootstrap interval of the mean difference."""
    d = (a.double() - b.double()).cpu()
    if d.numel() == 0:
        return float("nan"), float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, d.numel(), (n, d.numel()), generator=g)
    means = d[idx].mean(1)
    return float(d.mean()), float(means.quantile(0.025)), float(means.quantile(0.975))


class Judge:
    """The bundled ShapeWorld classifier: predictions and features of ``[B, 3, H, W]`` images in [0, 1]."""

    def __init__(self, device):
        from pyengine.engines.image_prior import load_classifier

        self.model, self.info = load_classifier()
        self.model.to(device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp = (x.clamp(0, 1) * 2 - 1).permute(0, 2, 3, 1).float()
        feats = self.model.features(inp.permute(0, 3, 1, 2)).mean((2, 3))
        pred = torch.stack([head(feats).argmax(-1) for head in self.model.heads], -1)
        return pred.cpu(), feats.cpu()


# -- one solve -------------------------------------------------------------------------------------


def _problem(task: str, x: torch.Tensor, sigma_y: float, seed: int):
    """``(operator, Problem)`` for ``x`` [B, 3, H, W]: the task's operator (its random parts from
    ``seed``) and ``y = A(x) + sigma_y n`` (the noise from ``seed + 1``)."""
    from pyengine.inverse.base import Problem
    from pyengine.inverse.operators import make_operator

    op = make_operator(task, tuple(x.shape[1:]), generator=torch.Generator().manual_seed(seed))
    y = op.forward(x)
    g = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)
    return op, Problem(op, y + sigma_y * noise, float(sigma_y))


def _mask(op) -> torch.Tensor | None:
    """The missing pixels of an inpainting operator (``[1 or B, 1 or C, H, W]`` bool), else None."""
    keep = getattr(op, "mask", None)  # [1 or C, H, W], 1 = kept
    if keep is None:
        return None
    return ~keep.bool()[None]


def solve_batch(method: str, prior, problem, cfg: InverseConfig, generator: torch.Generator, t0: float | None = None):
    """Samples ``[B, C, H, W]`` in [0, 1] and the solver's counts for a batched problem (``baseline``:
    the task's classical method, no denoiser)."""
    from pyengine.inverse.solvers import SolverResult, solve

    if method == "baseline":
        from pyengine.inverse.baselines import baseline

        start = time.perf_counter()
        x = baseline(problem, generator=generator)
        return SolverResult(x=x.clamp(0, 1), calls=0, backward=0, seconds=time.perf_counter() - start,
                            denoiser_seconds=0.0, method="baseline", options={})
    t0 = cfg.t0 if t0 is None else t0
    init = None
    if t0 < 1 and cfg.ccdf_init == "baseline":  # CCDF diffuses a good first guess, not A^+ y (blocky for SR)
        from pyengine.inverse.baselines import baseline

        init = baseline(problem, generator=torch.Generator().manual_seed(0)).clamp(0, 1)
    res = solve(method, prior, problem, steps=cfg.steps or None, t0=t0, generator=generator, text=cfg.text,
                init=init, **dict(cfg.options))
    res.x = res.x.clamp(0, 1)
    return res


def _grid(rows: list[torch.Tensor]) -> np.ndarray:
    """Rows of ``[n_i, 3, H, W]`` images in [0, 1] -> one uint8 picture (rows padded with white)."""
    from pyengine.render.mesh import image_grid

    width = max(r.shape[0] for r in rows)
    cells = []
    for r in rows:
        r = r.cpu().float().expand(-1, 3, -1, -1) if r.shape[1] == 1 else r.cpu().float()
        cells.append(torch.cat([r, torch.ones(width - r.shape[0], *r.shape[1:])]))
    frames = torch.cat(cells).permute(0, 2, 3, 1)
    return image_grid((frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), cols=width)


def run_one(cfg: InverseConfig) -> dict:
    """One image, ``cfg.samples`` posterior samples of it in one batched solve; writes the run folder and
    returns its metrics."""
    import imageio.v3 as iio

    from pyengine.diffusion.prior import load_prior

    check_config(cfg)
    dev = _device(cfg)
    prior = load_prior(cfg.prior, device=str(dev))
    size = prior.resolution
    truth = load_image(cfg.image, size) if cfg.image else shapeworld_image(cfg.shapeworld, size, cfg.image_seed)
    truth = truth.to(dev)
    op, problem = _problem(cfg.task, truth, cfg.sigma_y, cfg.seed)
    from pyengine.inverse.base import Problem

    batched = Problem(op, problem.y.expand(cfg.samples, *problem.y.shape[1:]).contiguous(), problem.sigma_y)
    res = solve_batch(cfg.method, prior, batched, cfg, torch.Generator(device=dev).manual_seed(cfg.seed))
    x = res.x
    mean = x.mean(0, keepdim=True)
    std = x.std(0, keepdim=True) if cfg.samples > 1 else torch.zeros_like(mean)
    out = cfg.out or os.path.join("runs", JOB, f"{cfg.task}-{cfg.method}-sigma{cfg.sigma_y:g}")
    os.makedirs(out, exist_ok=True)
    to8 = lambda t: (t[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    meas = show_measurement(problem)
    iio.imwrite(os.path.join(out, "measurement.png"), to8(meas))
    iio.imwrite(os.path.join(out, "mean.png"), to8(mean))
    iio.imwrite(os.path.join(out, "truth.png"), to8(truth))
    files = ["measurement.png", "mean.png", "truth.png"]
    if cfg.samples > 1:
        iio.imwrite(os.path.join(out, "std.png"), to8((std / std.max().clamp_min(1e-8)).expand(-1, 3, -1, -1)
                                                      if std.shape[1] == 1 else std / std.max().clamp_min(1e-8)))
        iio.imwrite(os.path.join(out, "samples.png"), _grid([x]))
        files += ["std.png", "samples.png"]
    rows = [torch.cat([truth, meas, mean] + ([std / std.max().clamp_min(1e-8)] if cfg.samples > 1 else []))]
    if cfg.samples > 1:
        rows.append(x[:8])
    iio.imwrite(os.path.join(out, "grid.png"), _grid(rows))
    files.append("grid.png")
    mask = _mask(op)
    metrics = {
        "task": cfg.task, "method": cfg.method, "sigma_y": cfg.sigma_y, "samples": cfg.samples, "t0": cfg.t0,
        "psnr_mean": float(psnr(mean, truth)[0]), "ssim_mean": float(ssim(mean, truth)[0]),
        "psnr_samples": [float(v) for v in psnr(x, truth.expand_as(x))],
        "residual_mean": float(residual(problem, mean)[0]),
        "psnr_masked_mean": float(psnr(mean, truth, mask)[0]) if mask is not None else None,
        "calls": res.calls, "backward": res.backward, "seconds": res.seconds,
        "denoiser_seconds": res.denoiser_seconds, "options": res.options,
        "image": cfg.image or f"shapeworld: {cfg.shapeworld} (seed {cfg.image_seed})", "prior": cfg.prior,
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    files.append("metrics.json")
    print(f"inverse: {cfg.task}, {cfg.method}, sigma_y {cfg.sigma_y:g}: PSNR of the mean "
          f"{metrics['psnr_mean']:.2f} dB, SSIM {metrics['ssim_mean']:.3f}, residual {metrics['residual_mean']:.2f}, "
          f"{res.calls} denoiser calls, {res.seconds:.1f} s; wrote {out}/ ({', '.join(files)})")
    metrics["out"] = out
    return metrics


# -- evaluation ------------------------------------------------------------------------------------


def _fingerprint(cfg: InverseConfig) -> dict:
    """The settings a chunk's numbers depend on besides its cell and its images (a chunk written under
    other ones is solved again, not reused). Its images (first index and count) are in its file name,
    and its seeds follow from the first index, so a larger evaluation with the same ``eval_batch``
    reuses a smaller one's chunks: 200 images at batch 8 start with the chunks of 8, 16, ..."""
    return {"prior": cfg.prior, "text": cfg.text, "seed": cfg.seed, "steps": cfg.steps, "t0": cfg.t0,
            "ccdf_init": cfg.ccdf_init, "options": dict(cfg.options), "samples": cfg.eval_samples,
            "data_seed": cfg.eval_data_seed}


def _parse_shard(shard: str) -> tuple[int, int]:
    if not shard:
        return 0, 1
    try:
        i, n = (int(v) for v in str(shard).split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"inverse: eval_shard must be 'i/n' with 0 <= i < n, got {shard!r}")
    return i, n


def _write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (shards of one evaluation may finish together)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _chunk_cost(method: str, t0: float | None, cfg: InverseConfig, images: int) -> float:
    """A chunk's expected cost in denoiser forward passes (a backward pass counted as two; SNIPS at
    its default 5 Langevin steps a level, ScoreSDE at one corrector step): what :func:`_shard` balances."""
    from pyengine.inverse.solvers import DEFAULT_STEPS

    if method == "baseline":
        return 0.01 * images
    per_step = {"scoresde": 2, "snips": 5, "dps": 3, "mcg": 3, "pigdm": 3}.get(method, 1)
    steps = cfg.steps or DEFAULT_STEPS[method]
    return per_step * steps * (cfg.t0 if t0 is None else t0) * images * cfg.eval_samples


def _shard(chunks: list, costs: list[float], i: int, n: int) -> set[int]:
    """The indices of ``chunks`` that shard ``i`` of ``n`` solves: the costliest first, each to the
    shard with the least so far (the same answer in every process, so the shards partition the work)."""
    if n == 1:
        return set(range(len(chunks)))
    load, mine = [0.0] * n, set()
    for k in sorted(range(len(chunks)), key=lambda k: (-costs[k], k)):
        j = min(range(n), key=lambda j: (load[j], j))
        load[j] += costs[k]
        if j == i:
            mine.add(k)
    return mine


def _solve_chunk(method, t0, task, sigma, truth, labels, s, prior, judge, cfg) -> dict:
    """One chunk of a cell: ``eval_samples`` posterior samples of each of ``truth``'s images in one
    batched solve, reduced to per-image numbers (PSNR / SSIM / masked PSNR of the posterior mean, the
    mean PSNR of single samples, the samples' residual and classifier hits, the first sample's
    classifier features for KID) and the solver's cost."""
    from pyengine.inverse.base import Problem

    K, B = cfg.eval_samples, truth.shape[0]
    op, problem = _problem(task, truth, float(sigma), cfg.seed + s)
    if K > 1:
        problem = Problem(op, problem.y.repeat_interleave(K, 0), problem.sigma_y)
    g = torch.Generator(device=truth.device).manual_seed(cfg.seed + s)
    res = solve_batch(method, prior, problem, cfg, g, t0=t0)
    x = res.x.reshape(B, K, *res.x.shape[1:])
    mean = x.mean(1)
    m = _mask(op)
    mask = None if m is None else m.expand(B, *m.shape[1:])
    pred, feats = judge(res.x)
    hits = (pred[:, :2] == labels.repeat_interleave(K, 0)[:, :2]).all(1).float().reshape(B, K).mean(1)
    rep = truth.repeat_interleave(K, 0)
    return {"psnr": psnr(mean, truth), "psnr_sample": psnr(res.x, rep).reshape(B, K).mean(1),
            "ssim": ssim(mean, truth), "psnr_masked": psnr(mean, truth, mask) if mask is not None else None,
            "residual": residual(problem, res.x).reshape(B, K).mean(1).cpu(), "accuracy": hits,
            "features": feats.reshape(B, K, -1)[:, 0], "calls": res.calls, "backward": res.backward,
            "seconds": res.seconds, "denoiser_seconds": res.denoiser_seconds}


def evaluate(cfg: InverseConfig) -> dict:
    """Every task x sigma_y x method (and baseline, and the CCDF rows) on ``eval_images`` held-out images;
    writes ``summary.md`` / ``summary.json`` under ``out`` (default ``runs/inverse/eval``).

    The work is cut into chunks (one cell: task, sigma_y, method; ``eval_batch`` images), each saved
    to ``out/chunks/`` as it finishes. A chunk already there under the same settings is reused
    (``eval_resume``), so an interrupted evaluation continues where it stopped. ``eval_shard="i/n"``
    has this process solve its share of the chunks only (balanced by expected denoiser passes): n
    processes (or machines, their ``chunks/`` folders copied into one) split an evaluation, and a
    last run with the same lists (``eval_solve=false``: solving nothing) assembles the summary from
    their chunks. ``eval_budget_s`` stops starting chunks after that long. The summary holds the
    cells whose chunks are all there, and names the others. A chunk's key covers the settings, not
    the code: clear ``out/chunks`` after changing a solver or an operator."""
    from pyengine.diffusion.prior import load_prior
    from pyengine.inverse.operators import make_operator
    from pyengine.inverse.solvers import NEEDS, supports

    check_config(cfg)
    shard_i, shard_n = _parse_shard(cfg.eval_shard)
    dev = _device(cfg)
    prior = load_prior(cfg.prior, device=str(dev))
    size = prior.resolution
    truth_all, labels = heldout_images(cfg.eval_images, size, cfg.eval_data_seed)
    truth_all = truth_all.to(dev)
    judge = Judge(dev)
    _, real_feats = judge(truth_all)
    out = cfg.out or os.path.join("runs", JOB, "eval")
    chunk_dir = os.path.join(out, "chunks")
    os.makedirs(chunk_dir, exist_ok=True)
    key = json.loads(json.dumps(_fingerprint(cfg)))  # as it reads back: lists, not tuples
    variants = [(m, None) for m in cfg.eval_methods] + [(m, float(t)) for t in cfg.eval_t0 for m in cfg.eval_methods]
    shape = tuple(truth_all.shape[1:])
    takes = {task: make_operator(task, shape, generator=torch.Generator().manual_seed(0)) for task in cfg.eval_tasks}
    wants = {"linear": "a linear operator", "spectral": "an operator with a spectral view"}
    skipped = sorted({f"{task} {method} (needs {wants[NEEDS[method]]})" for task in cfg.eval_tasks
                      for method, _ in variants if not supports(method, takes[task])})
    cells = [(task, float(sigma), method, t0) for task in cfg.eval_tasks for sigma in cfg.eval_sigmas
             for method, t0 in [("baseline", None)] + variants
             if method == "baseline" or supports(method, takes[task])]
    starts = list(range(0, cfg.eval_images, cfg.eval_batch))
    name_of = lambda method, t0: method if t0 is None else f"{method}@t0={t0:g}"

    def chunk_path(task, sigma, name, s):
        count = min(cfg.eval_batch, cfg.eval_images - s)
        return os.path.join(chunk_dir, f"{task}_sigma{sigma:g}_{name}_{s:05d}+{count}.pt")

    def load_chunk(path):
        if not (cfg.eval_resume and os.path.isfile(path)):
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["values"] if saved.get("key") == key else None

    # 1. solve this shard's chunks that are not there yet
    chunks = [(c, s) for c in cells for s in starts]
    mine = _shard(chunks, [_chunk_cost(c[2], c[3], cfg, min(cfg.eval_batch, cfg.eval_images - s)) for c, s in chunks],
                  shard_i, shard_n)
    began, solved = time.perf_counter(), 0
    for k, ((task, sigma, method, t0), s) in enumerate(chunks):
        if not cfg.eval_solve or k not in mine:
            continue
        if solved and cfg.eval_budget_s > 0 and time.perf_counter() - began > cfg.eval_budget_s:
            print(f"inverse eval: eval_budget_s={cfg.eval_budget_s:g} spent; the chunks left wait for a rerun",
                  flush=True)
            break
        name = name_of(method, t0)
        path = chunk_path(task, sigma, name, s)
        if load_chunk(path) is not None:
            continue
        truth, lab = truth_all[s:s + cfg.eval_batch], labels[s:s + cfg.eval_batch]
        values = _solve_chunk(method, t0, task, sigma, truth, lab, s, prior, judge, cfg)
        values = {k2: (v.detach().cpu() if torch.is_tensor(v) else v) for k2, v in values.items()}
        torch.save({"key": key, "values": values}, f"{path}.{os.getpid()}.tmp")
        os.replace(f"{path}.{os.getpid()}.tmp", path)
        solved += 1
        print(f"inverse eval: {task} sigma_y {sigma:g} {name} images {s}..{s + truth.shape[0] - 1}: PSNR "
              f"{float(values['psnr'].mean()):.2f} dB, {values['calls']} calls, "
              f"{values['seconds'] / truth.shape[0]:.2f} s/image", flush=True)

    # 2. assemble every cell whose chunks are all there
    rows, per_image, missing = [], {}, []
    for task, sigma, method, t0 in cells:
        name = name_of(method, t0)
        parts = [load_chunk(chunk_path(task, sigma, name, s)) for s in starts]
        if any(p is None for p in parts):
            missing.append(f"{task} sigma_y {sigma:g} {name} ({sum(p is None for p in parts)}/{len(parts)} chunks)")
            continue
        cat = lambda k: torch.cat([p[k] for p in parts])
        capped = lambda k: cat(k).clamp(max=PSNR_CAP)  # chunks solved before the cap held up to 120 dB
        seconds = sum(p["seconds"] for p in parts)
        den_s = sum(p["denoiser_seconds"] for p in parts)
        row = {"task": task, "sigma_y": sigma, "method": name, "samples": cfg.eval_samples,
               "psnr": float(capped("psnr").mean()), "psnr_sample": float(capped("psnr_sample").mean()),
               "ssim": float(cat("ssim").mean()),
               "psnr_masked": float(capped("psnr_masked").mean()) if parts[0]["psnr_masked"] is not None else None,
               "residual": float(cat("residual").mean()), "accuracy": float(cat("accuracy").mean()),
               "kid": kid(cat("features"), real_feats), "calls_per_image": parts[0]["calls"],
               "backward_per_image": parts[0]["backward"], "seconds_per_image": seconds / cfg.eval_images,
               "denoiser_share": den_s / seconds if seconds > 0 else 0.0}
        rows.append(row)
        per_image[(task, sigma, name)] = capped("psnr")
        print(f"inverse eval: {task} sigma_y {sigma:g} {name}: PSNR {row['psnr']:.2f} dB, SSIM "
              f"{row['ssim']:.3f}, residual {row['residual']:.2f}, accuracy {row['accuracy']:.2f}, "
              f"{row['calls_per_image']} calls, {row['seconds_per_image']:.2f} s/image", flush=True)
    ref = cfg.eval_reference
    for row in rows:
        ref_key = (row["task"], row["sigma_y"], ref)
        if ref_key in per_image and row["method"] != ref:
            d, lo, hi = paired_bootstrap(per_image[(row["task"], row["sigma_y"], row["method"])], per_image[ref_key],
                                         cfg.eval_bootstrap, cfg.seed)
            row[f"psnr_vs_{ref}"] = [d, lo, hi]
    checks = orderings(per_image, rows, cfg.eval_bootstrap, cfg.seed)
    summary = {"config": dataclasses.asdict(cfg), "rows": rows, "images": cfg.eval_images,
               "samples": cfg.eval_samples, "orderings": checks, "incomplete": missing, "not_applicable": skipped,
               "per_image_psnr": [{"task": k[0], "sigma_y": k[1], "method": k[2],
                                   "psnr": [round(float(v), 4) for v in p]} for k, p in per_image.items()],
               "classifier": judge.info.get("path")}
    _write(os.path.join(out, "summary.json"), json.dumps(summary, indent=1))
    table = summary_table(rows, ref)
    if rows:
        table += "\nPSNR (dB) of each method:\n\n" + psnr_grid(rows)
    if checks:
        table += "\nThe published orderings (paired bootstrap over images):\n\n" + orderings_table(checks)
    if skipped:
        table += "\nNot run (the method refuses the task's operator): " + "; ".join(skipped) + "\n"
    if missing:
        table += "\nIncomplete (chunks not yet solved, e.g. by another shard): " + "; ".join(missing) + "\n"
    _write(os.path.join(out, "summary.md"), table)
    print(table)
    print(f"inverse eval: wrote {out}/summary.md")
    return summary


# -- the published orderings ------------------------------------------------------------------------

REPLACEMENT = ("scoresde", "ilvr", "mcg")


def _verdict(d: float, lo: float, hi: float, threshold: float) -> str:
    """Whether ``d > threshold`` holds: ``holds`` when the whole 95% interval is above it, ``fails``
    when it is all below, and ``holds (n.s.)`` / ``fails (n.s.)`` by the estimate when the interval
    straddles it."""
    if lo > threshold:
        return "holds"
    if hi < threshold:
        return "fails"
    return "holds (n.s.)" if d > threshold else "fails (n.s.)"


def orderings(per_image: dict, rows: list[dict], n: int = 1000, seed: int = 0) -> list[dict]:
    """The issue's published orderings, checked on whatever cells the evaluation has: one entry per
    claim and place, with the paired-bootstrap estimate and 95% interval of the difference (in dB,
    per image; the images are the same in every cell) and a verdict (:func:`_verdict`).

    - DDRM-20 within 0.5 dB of DPS-1000 (``ddrm - dps > -0.5``), with the ratio of their times;
    - at sigma_y 0.05 the replacement methods (ScoreSDE, ILVR, MCG) lose more PSNR from sigma_y 0
      than DPS and DDRM do (the difference of the two losses, per image, > 0);
    - MCG beats ScoreSDE on inpainting (``mcg - scoresde > 0``);
    - CCDF at t0 = 0.3 within 0.5 dB of the full run (``m@t0=0.3 - m > -0.5``), with the calls' ratio;
    - on phase retrieval, DPS and RED-diff beat HIO (``m - baseline > 0``);
    - every method beats the classical baseline on SR x4 and Gaussian deblur at sigma_y 0.05.
    """
    by = {(r["task"], r["sigma_y"], r["method"]): r for r in rows}
    out = []

    def add(claim, where, diff, threshold, **extra):
        d, lo, hi = paired_bootstrap(diff, torch.zeros_like(diff), n, seed)
        out.append({"claim": claim, "where": where, "diff": d, "low": lo, "high": hi, "threshold": threshold,
                    "verdict": _verdict(d, lo, hi, threshold), **extra})

    tasks = sorted({k[0] for k in per_image}, key=lambda t: list(DEFAULT_TASKS).index(t) if t in DEFAULT_TASKS else 99)
    sigmas = sorted({k[1] for k in per_image})
    for task in tasks:
        for sigma in sigmas:
            a, b = per_image.get((task, sigma, "ddrm")), per_image.get((task, sigma, "dps"))
            if a is not None and b is not None:
                seconds = [by[(task, sigma, m)]["seconds_per_image"] for m in ("ddrm", "dps")]
                ratio = seconds[0] / max(seconds[1], 1e-12)
                add("DDRM-20 within 0.5 dB of DPS-1000", f"{task}, sigma_y {sigma:g}", a - b, -0.5, time_ratio=ratio)
    for task in tasks:
        for rep in REPLACEMENT:
            for other in ("dps", "ddrm"):
                keys = [(task, 0.0, rep), (task, 0.05, rep), (task, 0.0, other), (task, 0.05, other)]
                if all(k in per_image for k in keys):
                    loss = lambda m: per_image[(task, 0.0, m)] - per_image[(task, 0.05, m)]
                    add(f"{rep} loses more than {other} from sigma_y 0 to 0.05", task, loss(rep) - loss(other), 0.0)
    for task in ("inpaint_box", "inpaint_random"):
        for sigma in sigmas:
            a, b = per_image.get((task, sigma, "mcg")), per_image.get((task, sigma, "scoresde"))
            if a is not None and b is not None:
                add("MCG beats ScoreSDE on inpainting", f"{task}, sigma_y {sigma:g}", a - b, 0.0)
    for (task, sigma, name), v in sorted(per_image.items(), key=lambda kv: (tasks.index(kv[0][0]), kv[0][1], kv[0][2])):
        if name.endswith("@t0=0.3") and (task, sigma, name.split("@")[0]) in per_image:
            full = name.split("@")[0]
            calls = by[(task, sigma, name)]["calls_per_image"] / max(by[(task, sigma, full)]["calls_per_image"], 1)
            add(f"CCDF t0 = 0.3 within 0.5 dB of the full {full}", f"{task}, sigma_y {sigma:g}",
                v - per_image[(task, sigma, full)], -0.5, calls_ratio=calls)
    for sigma in sigmas:
        for m in ("dps", "reddiff"):
            a, b = per_image.get(("phase", sigma, m)), per_image.get(("phase", sigma, "baseline"))
            if a is not None and b is not None:
                add(f"{m} beats HIO on phase retrieval", f"sigma_y {sigma:g}", a - b, 0.0)
    for task in ("sr4", "deblur_gauss"):
        base = per_image.get((task, 0.05, "baseline"))
        for (t, sigma, name), v in per_image.items():
            if base is not None and t == task and sigma == 0.05 and name != "baseline" and "@" not in name:
                add(f"{name} beats the classical baseline", f"{task}, sigma_y 0.05", v - base, 0.0)
    return out


def orderings_table(checks: list[dict]) -> str:
    lines = ["| claim | where | difference, dB [95% CI] | verdict | note |", "|---|---|---|---|---|"]
    for c in checks:
        note = (f"time ratio {c['time_ratio']:.3f}" if "time_ratio" in c else
                f"calls ratio {c['calls_ratio']:.2f}" if "calls_ratio" in c else "")
        lines.append(f"| {c['claim']} | {c['where']} | {c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}] | "
                     f"{c['verdict']} | {note} |")
    return "\n".join(lines) + "\n"


def summary_table(rows: list[dict], ref: str = "dps") -> str:
    head = ["task", "sigma_y", "method", "PSNR", f"dPSNR vs {ref} [95% CI]", "1-sample PSNR", "SSIM", "masked PSNR",
            "residual", "accuracy", "KID", "calls", "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ci = r.get(f"psnr_vs_{ref}")
        lines.append("| " + " | ".join([
            r["task"], f"{r['sigma_y']:g}", r["method"], f"{r['psnr']:.2f}",
            f"{ci[0]:+.2f} [{ci[1]:+.2f}, {ci[2]:+.2f}]" if ci else "",
            f"{r['psnr_sample']:.2f}" if "psnr_sample" in r else "", f"{r['ssim']:.3f}",
            f"{r['psnr_masked']:.2f}" if r["psnr_masked"] is not None else "",
            f"{r['residual']:.2f}", f"{r['accuracy']:.2f}", f"{r['kid']:.4f}", str(r["calls_per_image"]),
            f"{r['seconds_per_image']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def psnr_grid(rows: list[dict]) -> str:
    """PSNR (dB) at a glance: a row per task and sigma_y, a column per method (the baseline first; CCDF
    rows left out), the best of each row in bold; blank where a cell was not run."""
    methods = list(dict.fromkeys(r["method"] for r in rows if "@" not in r["method"]))
    places = list(dict.fromkeys((r["task"], r["sigma_y"]) for r in rows))
    by = {(r["task"], r["sigma_y"], r["method"]): r["psnr"] for r in rows}
    lines = ["| task | sigma_y | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for task, sigma in places:
        vals = [by.get((task, sigma, m)) for m in methods]
        best = max((v for v in vals if v is not None), default=None)
        cells = ["" if v is None else (f"**{v:.2f}**" if v == best else f"{v:.2f}") for v in vals]
        lines.append(f"| {task} | {sigma:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(cfg: InverseConfig, command: str = "") -> dict:
    if command in ("", "solve"):
        return run_one(cfg)
    if command == "eval":
        return evaluate(cfg)
    raise ValueError(f"unknown command {command!r}: use eval, or no command for one solve")
