"""``pyengine fit-image``: fit a 2-D hash grid + MLP to an image (Instant-NGP's image task).

The bundled default target is procedural (rings, discs, a checkerboard and a gradient), so the
job runs anywhere without data; ``image=path.png`` fits a file instead. Writes the target, the
reconstruction and a checkpoint (safetensors), and reports PSNR.

Each setting gets its own directory (``runs/fit-image/<image>-<hash of the config>``); a run never
writes over a directory that holds a run with another config.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pyengine.engines import _runs
from pyengine.nn import HashGrid
from pyengine.ops.hash_encode import HashGridConfig


@dataclass
class FitImageConfig:
    image: str = ""  # path to an image; empty: the procedural default
    size: int = 256  # side of the procedural image
    steps: int = 400
    batch: int = 1 << 14
    lr: float = 1e-2
    n_levels: int = 12
    n_features_per_level: int = 2
    log2_hashmap_size: int = 15
    base_resolution: float = 8.0
    per_level_scale: float = 1.5
    hidden: int = 64
    backend: str = ""  # empty: automatic
    seed: int = 0
    out: str = ""  # empty: runs/fit-image/<image name or "procedural">-<hash of the other fields>


#: fit-image does not resume, so every field but ``out`` defines a run.
RUN_FREE = frozenset({"out"})


def default_out(cfg: FitImageConfig) -> str:
    label = os.path.splitext(os.path.basename(cfg.image))[0] if cfg.image else f"procedural{cfg.size}"
    return os.path.join("runs", "fit-image", f"{label}-{_runs.config_hash(cfg, RUN_FREE)}")


def _run_dir(cfg: FitImageConfig) -> str:
    """``cfg.out`` (or the default), or ``<it>-2``, ``-3``, ... if it holds a run with another config.

    A run with the same config is replaced: fit-image does not resume.
    """
    out, _ = _runs.choose_run_dir("fit-image", cfg.out or default_out(cfg), cfg, True, RUN_FREE, verb="reusing")
    return out


def procedural_image(size: int) -> np.ndarray:
    """[size, size, 3] float32 in [0, 1] with edges and detail at many scales."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.8 - 0.5 * x * y], -1)
    r = np.hypot(x - 0.3, y - 0.35)
    rings = 0.5 + 0.5 * np.sin(2 * math.pi * 24 * r ** 1.3)
    img[r < 0.25] = (rings[r < 0.25, None] * np.array([0.95, 0.35, 0.2], np.float32))
    checker = ((np.floor(x * 32) + np.floor(y * 32)) % 2).astype(np.float32)
    box = (x > 0.6) & (x < 0.95) & (y > 0.55) & (y < 0.9)
    img[box] = checker[box, None] * np.array([0.1, 0.8, 0.3], np.float32) + 0.1
    disc = np.hypot(x - 0.75, y - 0.25) < 0.12
    img[disc] = np.array([0.95, 0.9, 0.2], np.float32)
    return np.clip(img, 0, 1)


class ImageField(torch.nn.Module):
    def __init__(self, cfg: FitImageConfig):
        super().__init__()
        grid_cfg = HashGridConfig(2, cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size,
                                  cfg.base_resolution, cfg.per_level_scale)
        self.grid = HashGrid(grid_cfg, backend=cfg.backend or None)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(grid_cfg.n_output_dims, cfg.hidden), torch.nn.ReLU(),
            torch.nn.Linear(cfg.hidden, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, 3))

    def forward(self, uv):
        return torch.sigmoid(self.mlp(self.grid(uv)))


def run(cfg: FitImageConfig) -> dict:
    import imageio.v3 as iio
    from tqdm import tqdm

    out = _run_dir(cfg)
    torch.manual_seed(cfg.seed)
    if cfg.image:
        target = iio.imread(cfg.image)[..., :3].astype(np.float32) / 255.0
    else:
        target = procedural_image(cfg.size)
    H, W = target.shape[:2]
    tgt = torch.from_numpy(target).reshape(-1, 3)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    uv_all = torch.stack([(xs + 0.5) / W, (ys + 0.5) / H], -1).reshape(-1, 2)

    model = ImageField(cfg)
    opt = torch.optim.Adam([{"params": model.grid.parameters(), "eps": 1e-15},
                            {"params": model.mlp.parameters(), "weight_decay": 1e-6}], lr=cfg.lr,
                           betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="fit-image", unit="step")
    for step in bar:
        idx = torch.randint(0, H * W, (cfg.batch,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(uv_all[idx]), tgt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(psnr=f"{-10 * math.log10(max(loss.item(), 1e-12)):.2f}")
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        pred = torch.cat([model(c) for c in uv_all.split(1 << 16)]).clamp(0, 1)
    mse = torch.mean((pred - tgt) ** 2).item()
    psnr = -10 * math.log10(max(mse, 1e-12))
    os.makedirs(out, exist_ok=True)
    iio.imwrite(os.path.join(out, "target.png"), (target * 255).round().astype(np.uint8))
    iio.imwrite(os.path.join(out, "reconstruction.png"),
                (pred.reshape(H, W, 3).numpy() * 255).round().astype(np.uint8))
    _runs.save_checkpoint(os.path.join(out, _runs.CHECKPOINT), _runs.prefixed("model", model.state_dict()),
                          {"job": "fit-image", "config": asdict(cfg), "step": cfg.steps, "psnr": psnr})
    result = {"psnr": psnr, "steps": cfg.steps, "seconds": train_s, "backend": model.grid.backend or "auto",
              "out": out}
    print(f"fit-image: PSNR {psnr:.2f} dB after {cfg.steps} steps in {train_s:.1f} s; wrote {out}/")
    return result
