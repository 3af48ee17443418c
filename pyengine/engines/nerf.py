"""``pyengine fit-nerf``: fit a NeRF to multi-view ShapeWorld renders with known cameras.

Hash-grid field (``NeRFField``), occupancy grid (``OccupancyGrid``), fused ray marching and
compositing. Reports held-out PSNR, writes a turntable (MP4 and GIF), held-out renders and a
checkpoint it resumes from.

Each setting gets its own run directory (``runs/fit-nerf/<shape>-<color>-<hash>``, the hash over
every field but those in ``RESUME_FREE``), and a checkpoint is resumed only when its saved config
matches; otherwise the run starts fresh in a new directory. The learning rate is a function of
the step and the current ``steps``, so a run resumed with a larger ``steps=`` follows the schedule
that a fresh run of that length would.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pyengine.data import shapeworld
from pyengine.engines import _runs
from pyengine.nn.nerf_field import NeRFField
from pyengine.nn.occupancy_grid import OccupancyGrid
from pyengine.render.camera import orbit_cameras, rays_for_pixels
from pyengine.render.volume import render_image, render_rays


@dataclass
class FitNeRFConfig:
    shape: str = "cube"  # one of shapeworld.SHAPES, or "random" (scene from scene_seed)
    color: str = "red"
    scene_seed: int = 0
    n_views: int = 32
    n_test_views: int = 8
    width: int = 64
    height: int = 64
    camera_radius: float = 4.0
    fov_deg: float = 40.0
    steps: int = 1200
    batch_rays: int = 1024
    lr: float = 1e-2
    n_levels: int = 12
    log2_hashmap_size: int = 17
    finest_resolution: float = 512.0
    hidden: int = 64
    aabb_half: float = 1.1
    grid_resolution: int = 64
    samples_per_ray: int = 512  # marching step = aabb diagonal / samples_per_ray (before pruning)
    occ_update_every: int = 16
    occ_warmup_steps: int = 256
    occ_thre: float = 0.01
    alpha_thre: float = 0.0
    early_stop_eps: float = 1e-4
    # 0: the field runs on as many samples as the batch has (two device syncs a step: the marcher's
    # count and the early stop's). > 0: on exactly this many sample slots and with no sync (static
    # shapes, for CUDA graphs / torch.compile); rays past the budget are cut, and the run says so.
    sample_budget: int = 0
    march_budget: int = 0  # with sample_budget: the marcher's slots (0: sample_budget); the early stop packs into those
    # "": eager. "default" or "reduce-overhead" (CUDA graphs on a GPU): torch.compile of the
    # rendering and the loss as one graph (fullgraph), which needs sample_budget > 0
    compile: str = ""
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 400
    resume: bool = True
    turntable_frames: int = 36
    backend: str = ""  # hash grid backend; empty: automatic
    seed: int = 0
    device: str = "cpu"
    out: str = ""  # empty: runs/fit-nerf/<shape>-<color>-<hash of the fields that define the run>


#: Fields that may change when a run is resumed: they are left out of the run's hash and of the
#: comparison with the saved config. Everything else defines the run.
RESUME_FREE = frozenset({"steps", "eval_every", "checkpoint_every", "out", "resume", "turntable_frames",
                         "device", "backend", "sample_budget", "march_budget", "compile"})
#: Learning-rate decay: times GAMMA at these fractions of ``steps``.
LR_MILESTONES = (0.5, 0.75, 0.9)
LR_GAMMA = 0.33


def default_out(cfg: FitNeRFConfig) -> str:
    """``runs/fit-nerf/<shape>-<color>-<hash>``: one directory per setting."""
    label = f"random{cfg.scene_seed}" if cfg.shape == "random" else f"{cfg.shape}-{cfg.color}"
    return os.path.join("runs", "fit-nerf", f"{label}-{_runs.config_hash(cfg, RESUME_FREE)}")


def lr_at(cfg: FitNeRFConfig, step: int) -> float:
    """Learning rate of step ``step`` (0-based) in a run of ``cfg.steps`` steps."""
    milestones = sorted(int(cfg.steps * f) for f in LR_MILESTONES)
    return cfg.lr * LR_GAMMA ** bisect.bisect_right(milestones, step)


def _scene(cfg: FitNeRFConfig):
    if cfg.shape == "random":
        return shapeworld.sample_scene(cfg.scene_seed)
    if cfg.shape not in shapeworld.SHAPES:
        raise ValueError(f"fit-nerf: shape must be one of {shapeworld.SHAPES} or 'random', got {cfg.shape!r}")
    return shapeworld.Scene.single(cfg.shape, cfg.color)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b) ** 2).item()
    return -10.0 * math.log10(max(mse, 1e-12))


class NeRFTrainer:
    """One fit-nerf run: data, field, occupancy grid, optimizer, and its checkpoint in ``run_dir``.

    ``run_dir`` defaults to ``cfg.out``, or :func:`default_out` when that is empty.
    """

    def __init__(self, cfg: FitNeRFConfig, run_dir: str | None = None):
        self.cfg = cfg
        self.run_dir = run_dir or cfg.out or default_out(cfg)
        dev = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.scene = _scene(cfg)
        self.train = shapeworld.make_multiview_dataset(
            self.scene, cfg.n_views, cfg.width, cfg.height, seed=cfg.seed, radius=cfg.camera_radius,
            fov_deg=cfg.fov_deg, device=dev)
        self.test = shapeworld.make_heldout_views(
            self.scene, cfg.n_test_views, cfg.width, cfg.height, radius=cfg.camera_radius,
            elevation_deg=25.0, fov_deg=cfg.fov_deg, start_azimuth_deg=17.0, device=dev)
        h = cfg.aabb_half
        aabb = [-h, -h, -h, h, h, h]
        self.field = NeRFField(aabb, n_levels=cfg.n_levels, log2_hashmap_size=cfg.log2_hashmap_size,
                               finest_resolution=cfg.finest_resolution, hidden=cfg.hidden,
                               backend=cfg.backend or None).to(dev)
        self.estimator = OccupancyGrid(torch.tensor(aabb), resolution=cfg.grid_resolution).to(dev)
        self.step_size = 2 * h * math.sqrt(3) / cfg.samples_per_ray
        self.opt = torch.optim.Adam([
            {"params": self.field.grid.parameters(), "eps": 1e-15},
            {"params": list(self.field.density_net.parameters()) + list(self.field.albedo_net.parameters()),
             "weight_decay": 1e-6},
        ], lr=cfg.lr, betas=(0.9, 0.99))
        self.step = 0
        self.last_wanted = None
        for name in ("sample_budget", "march_budget"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"fit-nerf: {name} must be an int >= 0 (0: sized by the data), got {v!r}")
        if cfg.march_budget and not cfg.sample_budget:
            raise ValueError("fit-nerf: march_budget needs sample_budget > 0")
        self.render_loss = self._render_loss
        if cfg.compile:
            if cfg.compile not in ("default", "reduce-overhead"):
                raise ValueError(f"fit-nerf: compile must be '', 'default' or 'reduce-overhead', got {cfg.compile!r}")
            if cfg.sample_budget <= 0:
                raise ValueError("fit-nerf: compile needs sample_budget > 0 (static shapes: one graph, no "
                                 "device sync); set e.g. sample_budget=" + str(cfg.batch_rays * 64))
            self.render_loss = torch.compile(self._render_loss, fullgraph=True, mode=cfg.compile)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.ckpt_path = os.path.join(self.run_dir, _runs.CHECKPOINT)

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self):
        """Write the run's state to ``ckpt_path`` (safetensors + JSON metadata, atomically)."""
        opt_tensors, opt_rest = _runs.optimizer_to_flat(self.opt)
        tensors = {**_runs.prefixed("field", self.field.state_dict()),
                   **_runs.prefixed("estimator", self.estimator.state_dict()),
                   **_runs.prefixed("opt", opt_tensors),
                   "rng.batch": self.gen.get_state(), "rng.torch": torch.get_rng_state()}
        if torch.device(self.cfg.device).type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(torch.device(self.cfg.device))
        state = {"job": "fit-nerf", "config": asdict(self.cfg), "step": self.step, "opt": opt_rest}
        _runs.save_checkpoint(self.ckpt_path, tensors, state)

    def load(self) -> bool:
        """Restore the state saved in ``ckpt_path``; False if there is none.

        Raises ValueError when the file is not a pyengine checkpoint or its config differs from
        ``self.cfg`` in a field outside ``RESUME_FREE``. Loading runs no code from the file.
        """
        loaded = _runs.load_run(self.ckpt_path, "fit-nerf", asdict(self.cfg), RESUME_FREE)
        if loaded is None:
            return False
        tensors, state = loaded
        self.field.load_state_dict(_runs.unprefixed("field", tensors))
        self.estimator.load_state_dict(_runs.unprefixed("estimator", tensors))
        _runs.optimizer_from_flat(self.opt, _runs.unprefixed("opt", tensors), state["opt"])
        self.gen.set_state(tensors["rng.batch"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.device(self.cfg.device).type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], torch.device(self.cfg.device))
        self.step = int(state["step"])
        return True

    # -- training ----------------------------------------------------------------------------------
    def render_kwargs(self, train: bool) -> dict:
        kw = dict(render_step_size=self.step_size, background=(1.0, 1.0, 1.0), alpha_thre=self.cfg.alpha_thre,
                  early_stop_eps=self.cfg.early_stop_eps, stratified=train)
        if train and self.cfg.sample_budget > 0:
            kw["sample_budget"] = self.cfg.sample_budget
            kw["march_budget"] = self.cfg.march_budget or None
        return kw

    def train_step(self) -> torch.Tensor:
        """One optimisation step; returns the batch's colour MSE as a 0-d tensor (reading it, e.g.
        with ``float()``, waits for the device: the loop reads it only when it logs)."""
        cfg, cams = self.cfg, self.train["cameras"]
        self.field.train()
        self.estimator.train()
        self.estimator.update_every_n_steps(
            self.step, lambda x: self.field.density(x) * self.step_size, occ_thre=cfg.occ_thre,
            warmup_steps=cfg.occ_warmup_steps, n=cfg.occ_update_every)
        n = cfg.batch_rays
        cam_idx = torch.randint(0, len(cams), (n,), generator=self.gen)
        i = torch.randint(0, cfg.height, (n,), generator=self.gen)
        j = torch.randint(0, cfg.width, (n,), generator=self.gen)
        dev = cams.device
        cam_idx, i, j = cam_idx.to(dev), i.to(dev), j.to(dev)
        rays_o, rays_d = rays_for_pixels(cams, cam_idx, i, j, validate=False)  # drawn in range
        target = self.train["images"][cam_idx, i, j]
        loss, rgb, self.last_wanted = self.render_loss(rays_o, rays_d, target)  # wanted: read when logging
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = lr_at(cfg, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.step += 1
        return torch.nn.functional.mse_loss(rgb.detach(), target)

    def _render_loss(self, rays_o, rays_d, target):
        """(training loss, rgb, wanted samples or None): the part of a step that ``compile`` traces."""
        out = render_rays(self.field, self.estimator, rays_o, rays_d, **self.render_kwargs(True))
        loss = torch.nn.functional.smooth_l1_loss(out["rgb"], target, beta=0.01)
        return loss, out["rgb"], out.get("wanted_samples")

    @torch.no_grad()
    def evaluate(self) -> float:
        self.field.eval()
        self.estimator.eval()
        out = render_image(self.field, self.estimator, self.test["cameras"], **self.render_kwargs(False))
        self.last_eval = out
        return psnr(out["rgb"], self.test["images"])

    @torch.no_grad()
    def turntable(self, frames: int) -> np.ndarray:
        self.field.eval()
        self.estimator.eval()
        cams = orbit_cameras(frames, radius=self.cfg.camera_radius, elevation_deg=20.0, fov_deg=self.cfg.fov_deg,
                             width=self.cfg.width * 2, height=self.cfg.height * 2, device=self.cfg.device)
        rgb = render_image(self.field, self.estimator, cams, **self.render_kwargs(False))["rgb"]
        return (rgb.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def run(cfg: FitNeRFConfig) -> dict:
    import imageio.v3 as iio
    from tqdm import tqdm

    run_dir, ckpt = _runs.choose_run_dir("fit-nerf", cfg.out or default_out(cfg), cfg, cfg.resume, RESUME_FREE)
    trainer = NeRFTrainer(cfg, run_dir)
    if ckpt is not None and trainer.load():
        print(f"fit-nerf: resumed from {trainer.ckpt_path} at step {trainer.step}")
    start_step = trainer.step
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=trainer.step, desc="fit-nerf", unit="step")
    warned, cut_max = False, 0
    while trainer.step < cfg.steps:
        mse = trainer.train_step()
        bar.update(1)
        if trainer.step % 10 == 0:
            bar.set_postfix(train_psnr=f"{-10 * math.log10(max(float(mse), 1e-12)):.2f}")
            if trainer.last_wanted is not None:
                marched, kept = trainer.last_wanted.tolist()
                march = cfg.march_budget or cfg.sample_budget
                cut = max(marched - march, kept - cfg.sample_budget, 0)
                cut_max = max(cut_max, cut)
                if cut > 0 and not warned:
                    bar.write(f"fit-nerf: step {trainer.step}: the rays wanted {marched} marched and {kept} kept "
                              f"samples, over march_budget={march} / sample_budget={cfg.sample_budget}; the last "
                              f"rays of the batch were cut (raise the budgets, or lower batch_rays)")
                    warned = True
        if cfg.eval_every and trainer.step % cfg.eval_every == 0:
            bar.write(f"step {trainer.step}: held-out PSNR {trainer.evaluate():.2f} dB")
        if cfg.checkpoint_every and trainer.step % cfg.checkpoint_every == 0:
            trainer.save()
    bar.close()
    train_s = time.perf_counter() - t0
    trainer.save()
    test_psnr = trainer.evaluate()
    out = trainer.run_dir
    pred = (trainer.last_eval["rgb"].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    gt = (trainer.test["images"].cpu().numpy() * 255).round().astype(np.uint8)
    iio.imwrite(os.path.join(out, "heldout.png"), np.concatenate(
        [np.concatenate(list(gt), 1), np.concatenate(list(pred), 1)], 0))
    result = {"psnr": test_psnr, "steps": trainer.step, "start_step": start_step, "seconds": train_s,
              "caption": shapeworld.caption(trainer.scene), "out": out}
    if cfg.sample_budget > 0:
        result["samples_cut_max"] = cut_max  # the most samples cut in a logged step (0: none)
    if cfg.turntable_frames:
        frames = trainer.turntable(cfg.turntable_frames)
        iio.imwrite(os.path.join(out, "turntable.gif"), frames, duration=80, loop=0)
        try:
            iio.imwrite(os.path.join(out, "turntable.mp4"), frames, fps=12, codec="libx264")
        except Exception as exc:  # imageio-ffmpeg missing or broken: the GIF is still there
            print(f"fit-nerf: could not write MP4 ({exc}); wrote the GIF")
    print(f"fit-nerf: {result['caption']}: held-out PSNR {test_psnr:.2f} dB after {trainer.step} steps "
          f"({train_s:.0f} s); wrote {out}/")
    return result
