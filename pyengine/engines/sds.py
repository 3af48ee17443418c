"""``pyengine sds "a red cube"``: text-to-3D by score distillation (DreamFusion, SJC, VSD).

A hash-grid NeRF (``pyengine.nn.NeRFField``: density blob at the start, analytic normals) is
rendered with pyengine's fused kernels (occupancy-grid ``ray_march``, ``composite``) from random
cameras around the origin, shaded, and pushed by a frozen text-to-image prior
(``pyengine.diffusion.prior``: the bundled ShapeWorld prior, or Stable Diffusion / DeepFloyd IF
from a local folder) towards images that the prior finds likely for the prompt.

Each iteration:

1. ``batch`` cameras from the prior's training distribution (``CAMERA`` of
   ``pyengine.data.shapeworld_images`` by default: azimuth 0-360, elevation -10 to 70 degrees);
2. render at ``render_size`` (default: the prior's resolution) with one of DreamFusion's shadings,
   drawn per iteration: ``albedo`` (flat colour), ``diffuse`` (albedo times ambient plus Lambert
   from a light near the camera, using the composited analytic normal) or ``textureless`` (white
   albedo, diffuse light), over the ``background`` colour;
3. the score-distillation gradient on the encoded render ``x`` (``prior.encode_images``), computed
   as threestudio does: ``t ~ U[t_min T, t_max T]``, ``x_t = sqrt(abar) x + sqrt(1 - abar) eps``,
   guided noise prediction ``eps_hat`` (classifier-free guidance with the view-dependent prompt
   against ``negative_prompt``), ``grad = w(t) (eps_hat - eps)`` with ``w = 1 - abar``
   (``weighting=sds``), NaNs zeroed, and the loss ``0.5 |x - sg(x - grad)|^2 / batch`` whose
   gradient in ``x`` is ``grad / batch``;
   - ``method=sjc`` (Score Jacobian Chaining, Wang et al. 2023): the perturb-and-average score
     ``(eps_hat - eps) / sigma(t)``, ``sigma = sqrt((1 - abar) / abar)``, averaged over
     ``sjc_samples`` noise draws (the score of the prior at the image, not a weighted residual);
   - ``method=vsd`` (Variational Score Distillation, ProlificDreamer): ``grad = w(t) (eps_hat -
     eps_lora)`` where ``eps_lora`` is a LoRA copy of the prior's denoiser conditioned on the
     camera, trained alongside the NeRF on its renders (``lora_*``), ``guidance=5``, with
     ``t_max`` annealed to 0.5 over the run and a cosine learning-rate decay (its defaults,
     ``T_MAX_END`` / ``LR_DECAY``);
4. regularisers: orientation (Ref-NeRF's ``max(0, n . d)^2`` along the ray, ``lambda_orient``),
   opacity sparsity (``lambda_sparsity``: mean opacity) and opaqueness (``lambda_opaque``: binary
   entropy of the opacity);
5. Adam (grid ``lr``, MLPs ``lr_mlp``), optional cosine decay; the occupancy grid is refreshed
   every ``occ_update_every`` iterations.

Outputs in the run folder: ``turntable.gif`` / ``.mp4``, ``views.png`` (the evaluation views:
colour, normals, opacity), ``mesh.obj`` / ``mesh.glb`` (marching cubes on the density, vertex
colours), ``checkpoint.safetensors`` (resume: run the same command again, or with a larger
``iterations=``), ``result.json``. Ctrl-C saves the checkpoint and still writes the outputs.

Many prompts: ``pyengine sds --prompts prompts.txt`` runs them one after another, one folder each,
and writes a summary table; under ``torchrun --nproc_per_node N`` the prompts are sharded across
the processes (gloo on CPU, NCCL on GPUs: one device per process).

Evaluation (``pyengine sds eval [--prompts FILE]``): for each prompt, run (or resume) SDS, render
``eval_views`` views around the object and report R-precision (the fraction of views the
ShapeWorld classifier names with the prompted shape and colour) and the silhouette IoU against the
true shape seen from the same cameras (the best over the shape's turn about the vertical axis,
which the prompt does not fix).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from pyengine.data import shapeworld_images as swi
from pyengine.engines import _runs, _trainer
from pyengine.engines.point_metrics import format_table
from pyengine.nn.nerf_field import NeRFField
from pyengine.nn.occupancy_grid import OccupancyGrid
from pyengine.render.camera import Cameras, generate_rays, orbit_cameras, orbit_params, random_orbit_cameras
from pyengine.render.volume import render_image, render_rays

JOB = "sds"
METHODS = ("sds", "sjc", "vsd")
WEIGHTINGS = ("sds", "uniform")
SHADINGS = ("albedo", "diffuse", "textureless")
#: The default guidance scale of each method (``guidance=0``). ProlificDreamer's VSD uses 7.5; on
#: the bundled prior 5 (with VSD's annealing below) gave the best silhouettes (bench/RESULTS.md).
GUIDANCE = {"sds": 3.0, "sjc": 3.0, "vsd": 5.0}
#: The default smallest step of each method (``t_min < 0``): threestudio's 0.02 for SDS and VSD;
#: 0.1 for SJC, whose 1 / sigma weight grows without bound at the smallest noise levels.
T_MIN = {"sds": 0.02, "sjc": 0.1, "vsd": 0.02}
#: The default end of t_max's annealing of each method (``t_max_end < 0``; 0: none) and the default
#: learning-rate decay (``lr_decay="auto"``): VSD anneals to 0.5 with a cosine decay, as
#: ProlificDreamer anneals its steps. On the five eval prompts, with guidance 5, that lifted VSD's
#: mean IoU from 0.754 to 0.861 (bench/RESULTS.md).
T_MAX_END = {"sds": 0.0, "sjc": 0.0, "vsd": 0.5}
LR_DECAY = {"sds": "none", "sjc": "none", "vsd": "cosine"}
DEFAULT_EVAL_PROMPTS = ("a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a purple torus")


@dataclass
class SDSConfig:
    prompt: str = "a red cube"
    prompts: list = field(default_factory=list)  # many prompts (--prompts FILE): one run each
    negative_prompt: str = ""  # the unconditional branch of guidance ("": the empty prompt)
    view_prompts: bool = True  # append ", front view" / "side" / "back" / "overhead" per camera
    prior: str = "shapeworld"  # see pyengine.diffusion.prior.load_prior: shapeworld, FILE, sd:FOLDER, if:FOLDER
    method: str = "sds"  # sds, sjc or vsd
    guidance: float = 0.0  # classifier-free guidance scale; 0: the method's (GUIDANCE: sds and sjc 3, vsd 5)
    t_min: float = -1.0  # diffusion steps drawn uniformly from [t_min T, t_max T]; < 0: the method's (T_MIN)
    t_max: float = 0.98
    # > 0: t_max falls linearly to this over the run (coarse shape first, then detail); 0: no
    # annealing; < 0: the method's (T_MAX_END: 0.5 for vsd, none for sds and sjc)
    t_max_end: float = -1.0
    weighting: str = "sds"  # w(t): "sds" (1 - abar_t, DreamFusion) or "uniform" (1)
    iterations: int = 600
    batch: int = 1  # cameras per iteration
    # cameras and rendering
    render_size: int = 0  # 0: the prior's resolution (a latent prior: 64, resized up for its encoder)
    radius_range: list = field(default_factory=lambda: list(swi.CAMERA["radius_range"]))
    elevation_range: list = field(default_factory=lambda: list(swi.CAMERA["elevation_range_deg"]))
    azimuth_range: list = field(default_factory=lambda: list(swi.CAMERA["azimuth_range_deg"]))
    fov_deg: float = swi.CAMERA["fov_deg"]
    samples_per_ray: int = 128  # marching step = box diagonal / this
    background: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    albedo_prob: float = 0.2  # shading drawn per iteration: albedo with this probability,
    textureless_prob: float = 0.0  # textureless with this one, diffuse otherwise
    ambient: float = swi.AMBIENT
    light_jitter: float = swi.LIGHT_JITTER
    # the field
    aabb_half: float = 1.0
    n_levels: int = 8
    log2_hashmap_size: int = 16
    base_resolution: float = 16.0
    finest_resolution: float = 256.0
    hidden: int = 32
    density_activation: str = "softplus"  # threestudio's; "trunc_exp" (Instant-NGP) makes the blob far denser
    blob_density: float = 10.0  # raw-density bias blob_density * (1 - |x| / blob_radius) (threestudio)
    blob_radius: float = 0.5
    grid_resolution: int = 32  # occupancy grid
    occ_update_every: int = 16
    occ_thre: float = 0.01
    occ_warmup: int = 64
    # optimisation
    lr: float = 1e-2  # hash grid
    lr_mlp: float = 1e-3
    lr_decay: str = "auto"  # "none", "cosine" (to 10% at the end) or "auto": the method's (LR_DECAY)
    lambda_orient: float = 1e-2
    lambda_sparsity: float = 0.0
    lambda_opaque: float = 0.0
    grad_clip: float = 0.0  # clip the score-distillation gradient per element (0: no clip)
    # SJC
    sjc_samples: int = 1  # noise draws averaged per iteration
    # VSD
    lora_rank: int = 4
    lora_lr: float = 1e-3
    lora_steps: int = 1  # LoRA updates per iteration
    camera_dropout: float = 0.1
    # outputs
    turntable_frames: int = 30
    turntable_size: int = 96
    eval_views: int = 8
    eval_size: int = 0  # 0: the prior's resolution (what the classifier judges)
    eval_elevation: float = 20.0
    mesh_resolution: int = 64
    mesh_threshold: float = 10.0  # density level of the mesh; a field that never reaches it: half its maximum
    mesh_formats: list = field(default_factory=lambda: ["obj", "glb"])
    video_formats: list = field(default_factory=lambda: ["gif", "mp4"])
    classifier: str = "bundled"  # the evaluation classifier (pyengine train-prior images train-classifier)
    checkpoint_every: int = 200
    progress: bool = True
    seed: int = 0
    device: str = "cpu"
    resume: bool = True
    out: str = ""  # one prompt: runs/sds/<prompt>-<hash>; several: this folder holds one folder per prompt


#: Fields that may change on resume (left out of the run's hash and of the resume check).
RESUME_FREE = frozenset({"prompts", "iterations", "turntable_frames", "turntable_size", "eval_views", "eval_size",
                         "eval_elevation", "mesh_resolution", "mesh_threshold", "mesh_formats", "video_formats",
                         "classifier", "checkpoint_every", "progress", "device", "resume", "out"})


def default_out(cfg: SDSConfig) -> str:
    return os.path.join("runs", JOB, f"{slug(cfg.prompt)}-{cfg.method}-{_runs.config_hash(cfg, RESUME_FREE)}")


def slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "prompt"


def check_config(cfg: SDSConfig) -> None:
    """Raise ValueError naming the first bad setting."""
    def bad(name, want):
        raise ValueError(f"sds: {name} must be {want}, got {getattr(cfg, name)!r}")

    if cfg.method not in METHODS:
        bad("method", f"one of {METHODS}")
    if cfg.weighting not in WEIGHTINGS:
        bad("weighting", f"one of {WEIGHTINGS}")
    t_min = t_min_of(cfg) if cfg.method in METHODS else 0.0
    if not 0.0 <= t_min < cfg.t_max <= 1.0:
        raise ValueError(f"sds: need 0 <= t_min < t_max <= 1 (t_min < 0: the method's), got t_min={cfg.t_min}, "
                         f"t_max={cfg.t_max}")
    t_end = t_max_end_of(cfg) if cfg.method in METHODS else 0.0
    if t_end and not t_min < t_end <= cfg.t_max:
        raise ValueError(f"sds: t_max_end must be 0 (no annealing), < 0 (the method's) or in (t_min, t_max], got "
                         f"{cfg.t_max_end}")
    for name in ("iterations", "batch", "samples_per_ray", "n_levels", "hidden", "grid_resolution",
                 "occ_update_every", "sjc_samples", "lora_rank", "lora_steps", "eval_views", "mesh_resolution"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            bad(name, "a positive int")
    for name in ("render_size", "turntable_frames", "turntable_size", "eval_size", "checkpoint_every"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 0:
            bad(name, "an int >= 0")
    if cfg.render_size and cfg.render_size < 8:
        bad("render_size", "0 (the prior's resolution) or >= 8")
    if float(cfg.guidance) < 0:
        bad("guidance", ">= 0 (0: the method's default)")
    for name in ("lr", "lr_mlp", "lora_lr", "aabb_half", "fov_deg", "blob_radius"):
        if not float(getattr(cfg, name)) > 0:
            bad(name, "positive")
    for name in ("lambda_orient", "lambda_sparsity", "lambda_opaque", "grad_clip", "blob_density", "light_jitter"):
        if float(getattr(cfg, name)) < 0:
            bad(name, ">= 0")
    for name in ("albedo_prob", "textureless_prob", "ambient", "camera_dropout"):
        if not 0.0 <= float(getattr(cfg, name)) <= 1.0:
            bad(name, "in [0, 1]")
    if cfg.albedo_prob + cfg.textureless_prob > 1.0:
        raise ValueError(f"sds: albedo_prob + textureless_prob must be <= 1, got {cfg.albedo_prob} + "
                         f"{cfg.textureless_prob}")
    for name in ("radius_range", "elevation_range", "azimuth_range"):
        v = getattr(cfg, name)
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not float(v[0]) <= float(v[1]):
            bad(name, "[low, high] with low <= high")
    if not 0 < cfg.radius_range[0]:
        bad("radius_range", "positive distances")
    if len(cfg.background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in cfg.background):
        bad("background", "an RGB colour [r, g, b] in [0, 1]")
    if cfg.density_activation not in ("softplus", "trunc_exp", "relu"):
        bad("density_activation", "'softplus', 'trunc_exp' or 'relu'")
    if cfg.lr_decay not in ("auto", "none", "cosine"):
        bad("lr_decay", "'auto', 'none' or 'cosine'")
    for f in cfg.mesh_formats:
        if f not in ("obj", "glb"):
            bad("mesh_formats", "a list of 'obj', 'glb'")
    for f in cfg.video_formats:
        if f not in ("gif", "mp4"):
            bad("video_formats", "a list of 'gif', 'mp4'")
    if not isinstance(cfg.prompt, str) or not cfg.prompt.strip():
        bad("prompt", "a non-empty string")


def t_min_of(cfg: SDSConfig) -> float:
    """``cfg.t_min``, or the method's default (``T_MIN``) when it is negative."""
    return T_MIN[cfg.method] if cfg.t_min < 0 else float(cfg.t_min)


def t_max_end_of(cfg: SDSConfig) -> float:
    """``cfg.t_max_end``, or the method's default (``T_MAX_END``) when it is negative (0: no annealing)."""
    return T_MAX_END[cfg.method] if cfg.t_max_end < 0 else float(cfg.t_max_end)


def lr_decay_of(cfg: SDSConfig) -> str:
    """``cfg.lr_decay``, or the method's default (``LR_DECAY``) when it is "auto"."""
    return LR_DECAY[cfg.method] if cfg.lr_decay == "auto" else cfg.lr_decay


def camera_features(cams: Cameras) -> torch.Tensor:
    """``[B, 16]``: each camera's 4x4 camera-to-world matrix, flattened (VSD's camera condition)."""
    c2w = cams.c2w
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device).expand(len(cams), 1, 4)
    return torch.cat([c2w, bottom], 1).reshape(len(cams), 16)


def sds_weight(abar: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(t) of the score-distillation gradient: ``1 - abar`` (DreamFusion) or 1."""
    return (1 - abar) if weighting == "sds" else torch.ones_like(abar)


def distillation_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """threestudio's formulation: ``0.5 * |x - sg(x - grad)|^2 / B`` (summed), whose gradient in x is ``grad / B``."""
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    target = (x - grad).detach()
    return 0.5 * torch.nn.functional.mse_loss(x, target, reduction="sum") / x.shape[0]


class SDSRun:
    """One prompt's score-distillation run: field, occupancy grid, prior, optimiser and checkpoint.

    ``run_dir`` defaults to ``cfg.out`` or :func:`default_out`. ``prior`` may be passed to share
    one loaded prior between runs.
    """

    def __init__(self, cfg: SDSConfig, run_dir: str | None = None, prior=None):
        from pyengine.diffusion.prior import load_prior

        check_config(cfg)
        self.cfg = cfg
        self.run_dir = run_dir or cfg.out or default_out(cfg)
        self.dev = dev = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.prior = prior if prior is not None else load_prior(cfg.prior, device=cfg.device)
        self.prior.check_prompt(cfg.prompt)
        if cfg.negative_prompt:
            self.prior.check_prompt(cfg.negative_prompt)
        self.size = cfg.render_size or (self.prior.resolution if not self.prior.latent else 64)
        h = cfg.aabb_half
        aabb = [-h, -h, -h, h, h, h]
        self.field = NeRFField(aabb, n_levels=cfg.n_levels, log2_hashmap_size=cfg.log2_hashmap_size,
                               base_resolution=cfg.base_resolution, finest_resolution=cfg.finest_resolution,
                               hidden=cfg.hidden, density_activation=cfg.density_activation,
                               density_bias="blob", blob_density=cfg.blob_density,
                               blob_radius=cfg.blob_radius).to(dev)
        self.estimator = OccupancyGrid(torch.tensor(aabb), resolution=cfg.grid_resolution).to(dev)
        self.step_size = 2 * h * math.sqrt(3) / cfg.samples_per_ray
        self.opt = torch.optim.Adam([
            {"params": list(self.field.grid.parameters()), "lr": cfg.lr, "eps": 1e-15},
            {"params": list(self.field.density_net.parameters()) + list(self.field.albedo_net.parameters()),
             "lr": cfg.lr_mlp},
        ], betas=(0.9, 0.99))
        self.lora = None
        if cfg.method == "vsd":
            self.lora = self.prior.lora_denoiser(cfg.lora_rank, 16).to(dev)
            self.lora_opt = torch.optim.AdamW([p for p in self.lora.parameters() if p.requires_grad],
                                              lr=cfg.lora_lr, weight_decay=0.0)
        self.step = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.ckpt_path = os.path.join(self.run_dir, _runs.CHECKPOINT)
        T = self.prior.schedule.T
        t_min = t_min_of(cfg)
        self.t_lo, self.t_hi = int(t_min * T), max(int(cfg.t_max * T), int(t_min * T) + 1) - 1
        self.abar = self.prior.alphas_cumprod(dev)
        with torch.no_grad():
            self.uncond = self.prior.encode_text([cfg.negative_prompt])
        self._text_cache: dict[str, torch.Tensor] = {}
        self.timing = {"render": 0.0, "prior": 0.0, "backward": 0.0}
        self.guidance = float(cfg.guidance) or GUIDANCE[cfg.method]

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self) -> None:
        opt_tensors, opt_rest = _runs.optimizer_to_flat(self.opt)
        tensors = {**_runs.prefixed("field", self.field.state_dict()),
                   **_runs.prefixed("estimator", self.estimator.state_dict()),
                   **_runs.prefixed("opt", opt_tensors), "rng.gen": self.gen.get_state(),
                   "rng.torch": torch.get_rng_state()}
        state = {"job": JOB, "config": asdict(self.cfg), "step": self.step, "opt": opt_rest}
        if self.lora is not None:
            lora_tensors, lora_rest = _runs.optimizer_to_flat(self.lora_opt)
            trainable = {k: v for k, v in self.lora.state_dict().items() if _is_lora_key(k)}
            tensors.update(_runs.prefixed("lora", trainable))
            tensors.update(_runs.prefixed("lora_opt", lora_tensors))
            state["lora_opt"] = lora_rest
        _runs.save_checkpoint(self.ckpt_path, tensors, state)

    def load(self) -> bool:
        """Restore the saved state; False when there is none; ValueError when it belongs to another run."""
        loaded = _runs.load_run(self.ckpt_path, JOB, asdict(self.cfg), RESUME_FREE)
        if loaded is None:
            return False
        tensors, state = loaded
        self.field.load_state_dict(_runs.unprefixed("field", tensors))
        self.estimator.load_state_dict(_runs.unprefixed("estimator", tensors))
        _runs.optimizer_from_flat(self.opt, _runs.unprefixed("opt", tensors), state["opt"])
        if self.lora is not None:
            self.lora.load_state_dict(_runs.unprefixed("lora", tensors), strict=False)
            _runs.optimizer_from_flat(self.lora_opt, _runs.unprefixed("lora_opt", tensors), state["lora_opt"])
        self.gen.set_state(tensors["rng.gen"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(state["step"])
        return True

    # -- one iteration ---------------------------------------------------------------------------------
    def text(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if p not in self._text_cache:
                with torch.no_grad():
                    self._text_cache[p] = self.prior.encode_text([p])
        return torch.cat([self._text_cache[p] for p in prompts])

    def sample_cameras(self, n: int, size: int | None = None) -> Cameras:
        """``n`` training cameras (the config's ranges) with ``size`` x ``size`` images (default: the render size)."""
        c = self.cfg
        size = size or self.size
        return random_orbit_cameras(n, self.gen, radius_range=tuple(c.radius_range),
                                    elevation_range_deg=tuple(c.elevation_range),
                                    azimuth_range_deg=tuple(c.azimuth_range), fov_deg=c.fov_deg, width=size,
                                    height=size, device=self.dev)

    def render_kwargs(self, train: bool) -> dict:
        return dict(render_step_size=self.step_size, background=tuple(self.cfg.background), stratified=train)

    def render(self, cams: Cameras, shading: str, train: bool, lights: torch.Tensor | None = None,
               orientation: bool = False) -> dict:
        """Render ``cams`` with a shading; returns rgb ``[B, H, W, 3]``, opacity ``[B, H, W]`` and,
        with normals, the normal map and the orientation penalty."""
        rays_o, rays_d = generate_rays(cams)
        B, H, W = rays_o.shape[:3]
        need_normals = shading != "albedo" or orientation
        out = render_rays(self.field, self.estimator, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3),
                          with_normals=need_normals, orientation=orientation, **self.render_kwargs(train))
        return self._shade(out, shading, lights, B, H, W)

    def _shade(self, out: dict, shading: str, lights, B: int, H: int, W: int) -> dict:
        opacity = out["opacity"].reshape(B, H, W)
        bg = torch.tensor(self.cfg.background, dtype=opacity.dtype, device=opacity.device)
        albedo = out["rgb"].reshape(B, H, W, 3) - (1 - opacity)[..., None] * bg  # the composited albedo
        res = {"opacity": opacity}
        if "normal" in out:
            n = out["normal"].reshape(B, H, W, 3)
            res["normal"] = torch.nn.functional.normalize(n, dim=-1, eps=1e-6)
        if shading == "albedo":
            fg = albedo
        else:
            amb = self.cfg.ambient
            lam = (res["normal"] * lights[:, None, None, :]).sum(-1, keepdim=True).clamp_min(0)
            shade = amb + (1 - amb) * lam
            base = albedo if shading == "diffuse" else opacity[..., None].expand_as(albedo)
            fg = base * shade
        res["rgb"] = fg + (1 - opacity)[..., None] * bg
        if "orientation" in out:
            res["orientation"] = out["orientation"].reshape(B, H, W)
        return res

    def _shading(self) -> str:
        u = float(torch.rand((), generator=self.gen))
        if u < self.cfg.albedo_prob:
            return "albedo"
        if u < self.cfg.albedo_prob + self.cfg.textureless_prob:
            return "textureless"
        return "diffuse"

    def _lights(self, cams: Cameras) -> torch.Tensor:
        d = cams.origins / cams.origins.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        noise = torch.randn(len(cams), 3, generator=self.gen).to(d)
        return torch.nn.functional.normalize(d + self.cfg.light_jitter * noise, dim=-1)

    def t_high(self) -> int:
        """The largest step drawn at this iteration (``t_max``, annealed to ``t_max_end`` when set)."""
        t_end = t_max_end_of(self.cfg)
        if not t_end:
            return self.t_hi
        frac = min(self.step / max(self.cfg.iterations - 1, 1), 1.0)
        t_max = self.cfg.t_max + (t_end - self.cfg.t_max) * frac
        return max(int(t_max * self.prior.schedule.T) - 1, self.t_lo)

    def distill_grad(self, x: torch.Tensor, cams: Cameras,
                     t_high: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The score-distillation gradient on encoded renders ``x`` ``[B, ...]`` seen from ``cams``
        (this run's method, guidance and weighting; steps up to ``t_high``, default :meth:`t_high`),
        and the text conditioning used. No gradient flows through it: apply it with
        :func:`distillation_loss`. Magic3D's fine stage calls it on its mesh renders."""
        cfg, prior = self.cfg, self.prior
        if cfg.view_prompts:
            p = orbit_params(cams)
            prompts = prior.view_prompts(cfg.prompt, p["elevation_deg"].cpu(), p["azimuth_deg"].cpu())
        else:
            prompts = [cfg.prompt] * x.shape[0]
        cond = self.text(prompts)
        B = x.shape[0]
        hi = self.t_high() if t_high is None else max(int(t_high), self.t_lo)
        t = torch.randint(self.t_lo, hi + 1, (B,), generator=self.gen).to(self.dev)
        abar = self.abar[t].view(B, 1, 1, 1).to(x.dtype)
        with torch.no_grad():
            xd = x.detach()
            if cfg.method == "sjc":
                grad = torch.zeros_like(xd)
                sigma = ((1 - abar) / abar).sqrt()
                for _ in range(cfg.sjc_samples):
                    noise = torch.randn(xd.shape, generator=self.gen).to(xd)
                    x_t = abar.sqrt() * xd + (1 - abar).sqrt() * noise
                    eps_hat, _, _ = prior.guided_noise(x_t, t, cond, self.uncond, self.guidance)
                    grad += (eps_hat - noise) / sigma
                grad /= cfg.sjc_samples
            else:
                noise = torch.randn(xd.shape, generator=self.gen).to(xd)
                x_t = abar.sqrt() * xd + (1 - abar).sqrt() * noise
                eps_hat, _, _ = prior.guided_noise(x_t, t, cond, self.uncond, self.guidance)
                if cfg.method == "vsd":
                    cam = camera_features(cams).to(xd)
                    eps_lora = prior.schedule.eps_from(x_t, t, self.lora(x_t, t, cond, cam), prior.prediction)
                    grad = sds_weight(abar, cfg.weighting) * (eps_hat - eps_lora)
                else:
                    grad = sds_weight(abar, cfg.weighting) * (eps_hat - noise)
            if cfg.grad_clip > 0:
                grad = grad.clamp(-cfg.grad_clip, cfg.grad_clip)
        return grad, cond

    def _lr_scale(self) -> float:
        if lr_decay_of(self.cfg) == "cosine":
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(self.step / max(self.cfg.iterations, 1), 1.0)))
        return 1.0

    def train_step(self) -> dict:
        """One iteration; returns floats for logging."""
        cfg, prior = self.cfg, self.prior
        self.field.train()
        self.estimator.train()
        t0 = time.perf_counter()
        self.estimator.update_every_n_steps(self.step, lambda x: self.field.density(x) * self.step_size,
                                            occ_thre=cfg.occ_thre, warmup_steps=cfg.occ_warmup,
                                            n=cfg.occ_update_every)
        cams = self.sample_cameras(cfg.batch)
        shading = self._shading()
        lights = self._lights(cams)
        orientation = cfg.lambda_orient > 0
        out = self.render(cams, shading, True, lights, orientation=orientation)
        rgb = out["rgb"].permute(0, 3, 1, 2)
        x = prior.encode_images(rgb)
        t1 = time.perf_counter()

        grad, cond = self.distill_grad(x, cams)
        t2 = time.perf_counter()
        loss_sd = distillation_loss(x, grad)
        loss = loss_sd
        logs = {"loss_sd": float(loss_sd.detach())}
        if orientation:
            loss_orient = out["orientation"].mean()
            loss = loss + cfg.lambda_orient * loss_orient
        if cfg.lambda_sparsity > 0:
            loss = loss + cfg.lambda_sparsity * out["opacity"].mean()
        if cfg.lambda_opaque > 0:
            o = out["opacity"].clamp(1e-5, 1 - 1e-5)
            loss = loss + cfg.lambda_opaque * (-(o * o.log() + (1 - o) * (1 - o).log())).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        scale = self._lr_scale()
        self.opt.param_groups[0]["lr"] = cfg.lr * scale
        self.opt.param_groups[1]["lr"] = cfg.lr_mlp * scale
        self.opt.step()
        if self.lora is not None:
            logs["loss_lora"] = self._lora_step(x.detach(), cond, cams)
        t3 = time.perf_counter()
        self.timing["render"] += t1 - t0
        self.timing["prior"] += t2 - t1
        self.timing["backward"] += t3 - t2
        self.step += 1
        logs["opacity"] = float(out["opacity"].detach().mean())
        return logs

    def _lora_step(self, x: torch.Tensor, cond: torch.Tensor, cams: Cameras) -> float:
        """VSD's LoRA update: the usual diffusion loss of the camera-conditioned copy on the renders."""
        prior, cfg = self.prior, self.cfg
        B = x.shape[0]
        cam = camera_features(cams).to(x)
        keep = (torch.rand(B, generator=self.gen) >= cfg.camera_dropout).to(x)[:, None]
        total = 0.0
        for _ in range(cfg.lora_steps):
            t = torch.randint(0, prior.schedule.T, (B,), generator=self.gen).to(self.dev)
            noise = torch.randn(x.shape, generator=self.gen).to(x)
            abar = self.abar[t].view(B, 1, 1, 1).to(x.dtype)
            x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
            target = prior.schedule.target(x, t, noise, prior.prediction)
            loss = torch.nn.functional.mse_loss(self.lora(x_t, t, cond, cam * keep), target)
            self.lora_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.lora_opt.step()
            total += float(loss.detach())
        return total / cfg.lora_steps

    # -- outputs -------------------------------------------------------------------------------------
    def eval_cameras(self, n: int | None = None, size: int | None = None) -> Cameras:
        c = self.cfg
        radius = sum(c.radius_range) / 2
        return orbit_cameras(n or c.eval_views, radius=radius, elevation_deg=c.eval_elevation, fov_deg=c.fov_deg,
                             width=size or self.size, height=size or self.size, start_azimuth_deg=15.0,
                             device=self.dev)

    def render_views(self, cams: Cameras, shading: str = "diffuse") -> dict:
        """Evaluation renders (no gradient) with the light at each camera: rgb, opacity, normal ``[B, H, W, ...]``."""
        self.field.eval()
        self.estimator.eval()
        with torch.no_grad():
            out = render_image(self.field, self.estimator, cams, with_normals=True, **self.render_kwargs(False))
        B, H, W = out["opacity"].shape
        flat = {"rgb": out["rgb"].reshape(-1, 3), "opacity": out["opacity"].reshape(-1),
                "normal": out["normal"].reshape(-1, 3)}
        lights = cams.origins / cams.origins.norm(dim=-1, keepdim=True)
        return {k: v.detach() for k, v in self._shade(flat, shading, lights, B, H, W).items()}


def _is_lora_key(key: str) -> bool:
    return ".down." in key or ".up." in key or key.startswith("camera.")


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def write_outputs(run: SDSRun) -> dict:
    """Turntable, evaluation views, mesh and ``result.json`` in the run folder; returns the file list."""
    from pyengine.render import mesh as meshio

    cfg, out = run.cfg, run.run_dir
    os.makedirs(out, exist_ok=True)
    files = []
    if cfg.turntable_frames:
        cams = orbit_cameras(cfg.turntable_frames, radius=sum(cfg.radius_range) / 2, elevation_deg=cfg.eval_elevation,
                             fov_deg=cfg.fov_deg, width=cfg.turntable_size, height=cfg.turntable_size,
                             device=run.dev)
        frames = _uint8(run.render_views(cams)["rgb"])
        files += meshio.write_turntable(frames, os.path.join(out, "turntable"), fps=12,
                                        formats=tuple(cfg.video_formats))
    views = run.render_views(run.eval_cameras(size=max(run.size, 64)))
    rows = [_uint8(views["rgb"]), _uint8((views["normal"] + 1) / 2 * views["opacity"][..., None]
                                         + (1 - views["opacity"][..., None])),
            _uint8(views["opacity"][..., None].expand(*views["opacity"].shape, 3))]
    import imageio.v3 as iio

    sheet = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
    iio.imwrite(os.path.join(out, "views.png"), sheet)
    files.append(os.path.join(out, "views.png"))
    if cfg.mesh_formats:
        try:
            h = cfg.aabb_half
            with torch.no_grad():
                mesh = meshio.extract_mesh(run.field.density, [-h, -h, -h, h, h, h], resolution=cfg.mesh_resolution,
                                           threshold=cfg.mesh_threshold, fallback=0.5,
                                           color_fn=lambda p: run.field(p)["albedo"], device=run.dev)
            files += meshio.write_mesh(mesh, os.path.join(out, "mesh"), formats=tuple(cfg.mesh_formats))
        except ValueError as exc:  # an empty field: say so, keep the other outputs
            print(f"sds: no mesh written ({exc})")
    return {"files": files}


def _earlier_seconds(run_dir: str, start: int) -> float:
    """The seconds the invocations before this one spent on the run, from the result.json of the
    last one when it ended where this one resumes (0 for a fresh run or a lost record)."""
    try:
        with open(os.path.join(run_dir, "result.json")) as f:
            prev = json.load(f)
    except (OSError, ValueError):
        return 0.0
    if start == 0 or prev.get("iterations") != start:
        return 0.0
    return float(prev.get("seconds", 0.0))


def run_one(cfg: SDSConfig, prior=None, run_dir: str | None = None) -> dict:
    """Run (or resume) one prompt to ``cfg.iterations`` and write its outputs. Ctrl-C saves the
    checkpoint, writes the outputs and re-raises. ``seconds`` in the result counts every
    invocation of the run (``seconds_this_run``: this one)."""
    from tqdm import tqdm

    check_config(cfg)
    run_dir, ckpt = _runs.choose_run_dir(JOB, run_dir or cfg.out or default_out(cfg), cfg, cfg.resume, RESUME_FREE)
    run = SDSRun(cfg, run_dir, prior)
    if ckpt is not None and run.load():
        print(f"sds: resumed {cfg.prompt!r} from {run.ckpt_path} at iteration {run.step}")
    start = run.step
    before = _earlier_seconds(run_dir, start)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.iterations, initial=run.step, desc=f"sds {cfg.prompt}"[:40], unit="it",
               disable=not cfg.progress)
    interrupted = False
    try:
        while run.step < cfg.iterations:
            logs = run.train_step()
            bar.update(1)
            if run.step % 10 == 0:
                bar.set_postfix(opacity=f"{logs['opacity']:.2f}", **({"lora": f"{logs['loss_lora']:.3f}"}
                                                                      if "loss_lora" in logs else {}))
            if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
                run.save()
    except KeyboardInterrupt:
        interrupted = True
        bar.write(f"sds: interrupted at iteration {run.step}: saving and writing the outputs")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    run.save()
    res = write_outputs(run)
    result = {"prompt": cfg.prompt, "method": cfg.method, "iterations": run.step, "start": start,
              "seconds": before + seconds, "seconds_this_run": seconds,
              "seconds_per_iteration": seconds / max(run.step - start, 1),
              "timing": {k: v / max(run.step - start, 1) for k, v in run.timing.items()}, "out": run_dir,
              "files": res["files"], "interrupted": interrupted}
    with open(os.path.join(run_dir, "result.json"), "w") as f:
        json.dump({**result, "config": asdict(cfg)}, f, indent=1)
    print(f"sds: {cfg.prompt!r} ({cfg.method}): {run.step - start} iterations in {seconds:.0f} s; wrote {run_dir}/")
    if interrupted:
        raise KeyboardInterrupt
    result["run"] = run
    return result


# -- evaluation ----------------------------------------------------------------------------------

def _prompt_labels(prompt: str) -> tuple[str, str]:
    shape, color, _ = swi.parse_caption(prompt)
    if shape is None or color is None:
        raise ValueError(f"sds eval: {prompt!r} must name a ShapeWorld shape ({', '.join(swi.SHAPES)}) and colour "
                         f"({', '.join(swi.COLORS)}) to be judged")
    return shape, color


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B] intersection over union of two batches of boolean masks ``[B, H, W]`` (0 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).float()
    return inter / (a | b).flatten(1).sum(1).float().clamp_min(1)


def silhouette_iou(opacity: torch.Tensor, shape: str, cams: Cameras, yaw_step: float = 10.0) -> float:
    """Mean IoU of the ``opacity > 0.5`` silhouettes ``[B, H, W]`` with the canonical ``shape``'s
    from the same cameras, at the shape's best turn about +z (a grid of ``yaw_step`` degrees)."""
    pred = opacity.cpu() > 0.5
    best = 0.0
    for yaw in np.arange(0.0, 360.0, yaw_step):
        ref = swi.reference_masks(shape, cams.to("cpu"), float(yaw)) > 0.5
        best = max(best, float(mask_iou(pred, ref).mean()))
        if shape == "sphere":
            break
    return best


def judge(run: SDSRun, classifier) -> dict:
    """R-precision and silhouette IoU of a finished run (see the module docstring)."""
    shape, color = _prompt_labels(run.cfg.prompt)
    size = run.cfg.eval_size or run.prior.resolution
    cams = run.eval_cameras(size=size)
    views = run.render_views(cams)
    x = views["rgb"] * 2 - 1
    pred = classifier.predict(x)
    hit = (pred[:, 0] == swi.SHAPES.index(shape)) & (pred[:, 1] == swi.COLORS.index(color))
    shape_hit, color_hit = pred[:, 0] == swi.SHAPES.index(shape), pred[:, 1] == swi.COLORS.index(color)
    return {"r_precision": float(hit.float().mean()), "shape_acc": float(shape_hit.float().mean()),
            "color_acc": float(color_hit.float().mean()),
            "iou": silhouette_iou(views["opacity"], shape, cams),
            "predicted": [f"{swi.COLORS[c]} {swi.SHAPES[s]}" for s, c in pred.tolist()]}


def load_prompts(path: str) -> list[str]:
    if not os.path.exists(path):
        raise ValueError(f"sds: prompts file {path!r} does not exist")
    with open(path) as f:
        prompts = [ln.strip() for ln in f if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise ValueError(f"sds: prompts file {path!r} has no prompts (one per line; # starts a comment)")
    return prompts


def _many(cfg: SDSConfig, prompts: list[str], evaluate: bool) -> dict:
    """Run ``prompts`` one after another (sharded across processes under torchrun); rank 0 writes a summary."""
    from pyengine.diffusion.prior import load_prior

    info = _trainer.init_distributed(cfg.device)
    try:
        dev = str(info.device)
        root = cfg.out or os.path.join("runs", JOB, f"{'eval' if evaluate else 'batch'}-{cfg.method}")
        mine = list(range(info.rank, len(prompts), info.world_size))
        base = replace(cfg, device=dev, prompts=[])
        prior = load_prior(cfg.prior, device=dev)
        for p in prompts:  # fail before any work on a prompt the prior cannot read
            prior.check_prompt(p)
            if evaluate:
                _prompt_labels(p)
        classifier = None
        if evaluate:
            from pyengine.engines.image_prior import load_classifier

            path = None if cfg.classifier == "bundled" else cfg.classifier
            classifier, _ = load_classifier(None, path)
            classifier = classifier.to(dev)
        rows = []
        for i in mine:
            pcfg = replace(base, prompt=prompts[i])
            res = run_one(pcfg, prior, os.path.join(root, f"{i:03d}-{slug(prompts[i])}-{cfg.method}"))
            row = {"prompt": prompts[i], "method": cfg.method, "seconds": res["seconds"], "out": res["out"]}
            if evaluate:
                row.update(judge(res["run"], classifier))
                print(f"sds eval: {prompts[i]!r} ({cfg.method}): R-precision {row['r_precision']:.3f}, IoU "
                      f"{row['iou']:.3f} ({', '.join(row['predicted'])})", flush=True)
            rows.append(row)
        if info.distributed:
            gathered = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        rows.sort(key=lambda r: prompts.index(r["prompt"]))
        result = {"rows": rows}
        if info.is_main:
            cols = [("prompt", "prompt", "s"), ("method", "method", "s")]
            if evaluate:
                cols += [("r_precision", "R-precision", ".3f"), ("iou", "IoU", ".3f")]
                mean = {"prompt": "mean", "method": cfg.method,
                        "r_precision": float(np.mean([r["r_precision"] for r in rows])),
                        "iou": float(np.mean([r["iou"] for r in rows]))}
                result["mean"] = mean
                table_rows = rows + [mean]
            else:
                table_rows = rows
            cols += [("seconds", "seconds", ".0f")]
            table = format_table([{**r, "seconds": r.get("seconds", float("nan"))} for r in table_rows], cols)
            os.makedirs(root, exist_ok=True)
            with open(os.path.join(root, "summary.json"), "w") as f:
                json.dump({**result, "config": asdict(cfg)}, f, indent=1)
            with open(os.path.join(root, "summary.md"), "w") as f:
                f.write(table + "\n")
            print(f"sds{' eval' if evaluate else ''}: {len(rows)} prompt(s), {cfg.method}; wrote {root}/summary.md\n"
                  f"{table}")
            result["table"] = table
        return result
    finally:
        _trainer.shutdown_distributed()


def run(cfg: SDSConfig, command: str = "", prompts_file: str = "") -> dict:
    """``command``: a prompt (or ``""``: ``cfg.prompt``), or ``"eval"``; ``prompts_file``: one prompt per line."""
    prompts = load_prompts(prompts_file) if prompts_file else [str(p) for p in cfg.prompts]
    if command == "eval":
        check_config(cfg)
        return _many(cfg, prompts or list(DEFAULT_EVAL_PROMPTS), evaluate=True)
    if command:
        cfg = replace(cfg, prompt=command)
    check_config(cfg)
    if prompts:
        return _many(cfg, prompts, evaluate=False)
    res = run_one(cfg)
    res.pop("run", None)
    return res
