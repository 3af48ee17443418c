"""``pyengine fit-nerf``: fit a NeRF to multi-view ShapeWorld renders with known cameras.

Hash-grid field (``NeRFField``), occupancy grid (``OccupancyGrid``), fused ray marching and
compositing. Reports held-out PSNR, writes a turntable (MP4 and GIF), held-out renders and a
checkpoint it resumes from.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pyengine.data import shapeworld
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
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 400
    resume: bool = True
    turntable_frames: int = 36
    backend: str = ""  # hash grid backend; empty: automatic
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/fit-nerf"


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
    def __init__(self, cfg: FitNeRFConfig):
        self.cfg = cfg
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
        self.sched = torch.optim.lr_scheduler.MultiStepLR(
            self.opt, milestones=[int(cfg.steps * f) for f in (0.5, 0.75, 0.9)], gamma=0.33)
        self.step = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.ckpt_path = os.path.join(cfg.out, "checkpoint.pt")

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self):
        os.makedirs(self.cfg.out, exist_ok=True)
        tmp = self.ckpt_path + ".tmp"
        torch.save({"config": asdict(self.cfg), "step": self.step, "field": self.field.state_dict(),
                    "estimator": self.estimator.state_dict(), "opt": self.opt.state_dict(),
                    "sched": self.sched.state_dict(), "gen": self.gen.get_state()}, tmp)
        os.replace(tmp, self.ckpt_path)

    def load(self) -> bool:
        if not os.path.exists(self.ckpt_path):
            return False
        ck = torch.load(self.ckpt_path, map_location=self.cfg.device, weights_only=False)
        self.field.load_state_dict(ck["field"])
        self.estimator.load_state_dict(ck["estimator"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.gen.set_state(ck["gen"])
        self.step = ck["step"]
        return True

    # -- training ----------------------------------------------------------------------------------
    def render_kwargs(self, train: bool) -> dict:
        return dict(render_step_size=self.step_size, background=(1.0, 1.0, 1.0), alpha_thre=self.cfg.alpha_thre,
                    early_stop_eps=self.cfg.early_stop_eps, stratified=train)

    def train_step(self) -> float:
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
        rays_o, rays_d = rays_for_pixels(cams, cam_idx, i, j)
        target = self.train["images"][cam_idx, i, j]
        out = render_rays(self.field, self.estimator, rays_o, rays_d, **self.render_kwargs(True))
        loss = torch.nn.functional.smooth_l1_loss(out["rgb"], target, beta=0.01)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        return torch.nn.functional.mse_loss(out["rgb"].detach(), target).item()

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

    trainer = NeRFTrainer(cfg)
    resumed = cfg.resume and trainer.load()
    if resumed:
        print(f"fit-nerf: resumed from {trainer.ckpt_path} at step {trainer.step}")
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=trainer.step, desc="fit-nerf", unit="step")
    while trainer.step < cfg.steps:
        mse = trainer.train_step()
        bar.update(1)
        if trainer.step % 10 == 0:
            bar.set_postfix(train_psnr=f"{-10 * math.log10(max(mse, 1e-12)):.2f}")
        if cfg.eval_every and trainer.step % cfg.eval_every == 0:
            bar.write(f"step {trainer.step}: held-out PSNR {trainer.evaluate():.2f} dB")
        if cfg.checkpoint_every and trainer.step % cfg.checkpoint_every == 0:
            trainer.save()
    bar.close()
    train_s = time.perf_counter() - t0
    trainer.save()
    test_psnr = trainer.evaluate()
    os.makedirs(cfg.out, exist_ok=True)
    pred = (trainer.last_eval["rgb"].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    gt = (trainer.test["images"].cpu().numpy() * 255).round().astype(np.uint8)
    iio.imwrite(os.path.join(cfg.out, "heldout.png"), np.concatenate(
        [np.concatenate(list(gt), 1), np.concatenate(list(pred), 1)], 0))
    result = {"psnr": test_psnr, "steps": trainer.step, "seconds": train_s,
              "caption": shapeworld.caption(trainer.scene),
              "out": cfg.out}
    if cfg.turntable_frames:
        frames = trainer.turntable(cfg.turntable_frames)
        iio.imwrite(os.path.join(cfg.out, "turntable.gif"), frames, duration=80, loop=0)
        try:
            iio.imwrite(os.path.join(cfg.out, "turntable.mp4"), frames, fps=12, codec="libx264")
        except Exception as exc:  # imageio-ffmpeg missing or broken: the GIF is still there
            print(f"fit-nerf: could not write MP4 ({exc}); wrote the GIF")
    print(f"fit-nerf: {result['caption']}: held-out PSNR {test_psnr:.2f} dB after {trainer.step} steps "
          f"({train_s:.0f} s); wrote {cfg.out}/")
    return result
