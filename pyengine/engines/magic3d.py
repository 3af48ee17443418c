"""``pyengine magic3d "a red cube"``: Magic3D's coarse-to-fine text-to-3D (Lin et al., CVPR 2023).

Stage 1 (coarse) is the SDS engine (``pyengine.engines.sds``) on a hash-grid NeRF at the prior's
resolution, run as it is with its own folder (``<run>/coarse``), checkpoints and outputs.

Stage 2 (fine) turns that NeRF into a deformable tetrahedral grid (DMTet, ``pyengine.render.tets``):
an SDF on the grid vertices, initialised from the coarse density as ``(threshold - density) /
threshold`` clamped to [-1, 1], and a per-vertex offset of at most ``deform_scale`` grid cells
(``tanh`` of a free parameter). Marching tetrahedra extracts the surface at every iteration; the
mesh is rasterized with pyengine's ``rasterize`` / ``interpolate`` / ``antialias`` ops
(``pyengine.render.surface``) at ``fine_render_size`` (default 4x the coarse resolution), coloured
by the coarse NeRF's albedo field (a copy, fine-tuned: the texture), shaded as in stage 1, resized to
the prior's resolution by its encoder, and pushed by the same score-distillation gradient
(``SDSRun.distill_grad``, steps capped at ``fine_t_max``: the fine stage refines, it does not
re-decide the shape). Regularisers: normal consistency of the mesh (``lambda_normal``), uniform
Laplacian smoothness (``lambda_laplacian``) and DMTet's SDF sign loss (``lambda_sdf``).

Stage 3 (optional, ``texture_iterations``): the geometry is frozen and only the texture trains.

Outputs in the run folder: ``mesh.obj`` + ``mesh.mtl`` + ``mesh.png`` (UVs from xatlas, the texture
baked by rasterizing the atlas), ``mesh.glb`` (the same, one file), ``turntable.gif`` / ``.mp4``,
``views.png`` (colour, normals, opacity), ``checkpoint.safetensors`` (resume: run the same command
again, or with larger ``fine_iterations``), ``result.json``; stage 1's outputs in ``coarse/``.

Evaluation (``pyengine magic3d eval [--prompts FILE]``): per prompt, the coarse and the fine result
judged as the SDS engine judges (R-precision under the ShapeWorld classifier on ``eval_views``
views, silhouette IoU against the true shape), each at its own render resolution, in one table.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch

from pyengine.engines import _runs, sds
from pyengine.engines.point_metrics import format_table
from pyengine.render.camera import Cameras, orbit_cameras

JOB = "magic3d"
DEFAULT_EVAL_PROMPTS = sds.DEFAULT_EVAL_PROMPTS


@dataclass
class Magic3DConfig:
    prompt: str = "a red cube"
    prompts: list = field(default_factory=list)  # many prompts (--prompts FILE): one run each
    negative_prompt: str = ""
    view_prompts: bool = True
    prior: str = "shapeworld"  # see pyengine.diffusion.prior.load_prior
    method: str = "sds"  # the score distillation of both stages: sds, sjc or vsd (pyengine.engines.sds)
    guidance: float = 0.0  # 0: the method's default
    # stage 1: the SDS engine on a NeRF at the prior's resolution
    coarse_iterations: int = 600
    coarse: dict = field(default_factory=dict)  # further SDSConfig overrides of stage 1, e.g. {lr: 0.02}
    # stage 2: DMTet mesh + texture field through the rasterizer
    fine_iterations: int = 300
    fine_render_size: int = 0  # 0: 4x stage 1's render size
    fine_t_max: float = 0.5  # diffusion steps of stage 2 drawn from [t_min T, fine_t_max T]
    tet_resolution: int = 32  # grid cells per axis (Magic3D: 128 on a GPU)
    # the coarse NeRF's surface: density == this. 0: automatic, the level whose mesh silhouettes best
    # match the coarse NeRF's own (opacity > 0.5) from a few cameras (FineStage.auto_threshold)
    density_threshold: float = 0.0
    deform_scale: float = 0.25  # largest vertex offset, in grid cells
    lr_sdf: float = 5e-3
    lr_deform: float = 5e-3
    lr_texture: float = 1e-2  # the texture field's hash grid
    lr_texture_mlp: float = 1e-3
    lambda_normal: float = 100.0
    lambda_laplacian: float = 0.0
    lambda_sdf: float = 0.1
    antialias: bool = True  # antialiased silhouettes (their gradients move the outline; off: only shading does)
    # stage 3: texture only
    texture_iterations: int = 0
    # outputs
    texture_size: int = 512
    turntable_frames: int = 30
    turntable_size: int = 128
    eval_views: int = 8
    mesh_formats: list = field(default_factory=lambda: ["obj", "glb"])
    video_formats: list = field(default_factory=lambda: ["gif", "mp4"])
    classifier: str = "bundled"
    checkpoint_every: int = 100
    progress: bool = True
    seed: int = 0
    device: str = "cpu"
    resume: bool = True
    out: str = ""  # empty: runs/magic3d/<prompt>-<hash of the fields that define the run>


#: Fields that may change when a run is resumed (left out of the run's hash and config check).
RESUME_FREE = frozenset({"prompts", "fine_iterations", "texture_iterations", "texture_size", "turntable_frames",
                         "turntable_size", "eval_views", "mesh_formats", "video_formats", "classifier",
                         "checkpoint_every", "progress", "device", "resume", "out", "coarse_iterations"})
MESH_FORMATS = ("obj", "glb")


def default_out(cfg: Magic3DConfig) -> str:
    return os.path.join("runs", JOB, f"{sds.slug(cfg.prompt)}-{_runs.config_hash(cfg, RESUME_FREE)}")


def check_config(cfg: Magic3DConfig) -> None:
    def bad(name, want):
        raise ValueError(f"magic3d: {name} must be {want}, got {getattr(cfg, name)!r}")

    for name in ("coarse_iterations", "fine_iterations", "texture_iterations", "turntable_frames", "checkpoint_every",
                 "fine_render_size"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 0:
            bad(name, "an integer >= 0")
    for name in ("tet_resolution", "texture_size", "turntable_size", "eval_views"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            bad(name, "an integer >= 1")
    if not 0 < cfg.fine_t_max <= 1:
        bad("fine_t_max", "in (0, 1]")
    if not cfg.density_threshold >= 0:
        bad("density_threshold", ">= 0 (0: automatic)")
    if not 0 <= cfg.deform_scale <= 0.5:
        bad("deform_scale", "in [0, 0.5] grid cells (more lets tetrahedra invert)")
    for name in ("lr_sdf", "lr_deform", "lr_texture", "lr_texture_mlp", "lambda_normal", "lambda_laplacian",
                 "lambda_sdf"):
        if not getattr(cfg, name) >= 0:
            bad(name, ">= 0")
    if not isinstance(cfg.coarse, dict):
        bad("coarse", "a mapping of SDSConfig fields")
    known = {f.name for f in fields(sds.SDSConfig)}
    unknown = sorted(set(cfg.coarse) - known)
    if unknown:
        raise ValueError(f"magic3d: coarse has unknown SDSConfig field(s) {unknown}")
    clash = sorted(set(cfg.coarse) & {"prompt", "prompts", "out", "iterations"})
    if clash:
        raise ValueError(f"magic3d: set {clash} through magic3d's own fields, not coarse")
    for f in cfg.mesh_formats:
        if f not in MESH_FORMATS:
            raise ValueError(f"magic3d: mesh_formats must be among {MESH_FORMATS}, got {f!r}")
    sds.check_config(coarse_config(cfg, ""))


def coarse_config(cfg: Magic3DConfig, run_dir: str) -> sds.SDSConfig:
    """Stage 1's SDSConfig: magic3d's shared fields, ``coarse_iterations`` and the ``coarse`` overrides."""
    return replace(sds.SDSConfig(), prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
                   view_prompts=cfg.view_prompts, prior=cfg.prior, method=cfg.method, guidance=cfg.guidance,
                   iterations=cfg.coarse_iterations, seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                   resume=cfg.resume, checkpoint_every=cfg.checkpoint_every or 200,
                   out=os.path.join(run_dir, "coarse") if run_dir else "", **cfg.coarse)


class FineStage:
    """Stage 2 and 3 on top of a finished coarse :class:`~pyengine.engines.sds.SDSRun`: the DMTet
    grid (``sdf``, ``deform``), the texture field, the optimiser and the checkpoint."""

    def __init__(self, cfg: Magic3DConfig, coarse: sds.SDSRun, run_dir: str):
        from pyengine.render.tets import grid_edges, sdf_from_density, tet_grid

        self.cfg, self.coarse, self.run_dir = cfg, coarse, run_dir
        self.dev = coarse.dev
        h = coarse.cfg.aabb_half
        self.grid_verts, self.tets = tet_grid(cfg.tet_resolution, (-h, -h, -h, h, h, h), device=self.dev)
        self.edges = grid_edges(self.tets)
        self.cell = 2 * h / cfg.tet_resolution
        self.field = copy.deepcopy(coarse.field)  # the texture: the coarse albedo field, fine-tuned
        with torch.no_grad():
            density = -sdf_from_density(self.grid_verts, coarse.field.density, 0.0)
        self.threshold = cfg.density_threshold or self.auto_threshold(density)
        self.sdf = torch.nn.Parameter(((self.threshold - density) / self.threshold).clamp(-1, 1))
        self.deform = torch.nn.Parameter(torch.zeros_like(self.grid_verts))
        self.size = cfg.fine_render_size or 4 * coarse.size
        T = coarse.prior.schedule.T
        self.t_hi = max(int(cfg.fine_t_max * T) - 1, coarse.t_lo)
        self.opt = torch.optim.Adam([
            {"params": [self.sdf], "lr": cfg.lr_sdf},
            {"params": [self.deform], "lr": cfg.lr_deform},
            {"params": list(self.field.grid.parameters()), "lr": cfg.lr_texture, "eps": 1e-15},
            {"params": list(self.field.density_net.parameters()) + list(self.field.albedo_net.parameters()),
             "lr": cfg.lr_texture_mlp},
        ], betas=(0.9, 0.99))
        self.step = 0
        self.ckpt_path = os.path.join(run_dir, _runs.CHECKPOINT)
        self.timing = {"mesh": 0.0, "render": 0.0, "prior": 0.0, "backward": 0.0}
        self._frozen = None

    # -- the mesh ------------------------------------------------------------------------------------
    #: density levels that ``auto_threshold`` tries (those below the grid's largest density)
    LEVELS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)

    @torch.no_grad()
    def auto_threshold(self, density: torch.Tensor, views: int = 4) -> float:
        """The density level (of ``LEVELS``) whose marching-tets mesh has silhouettes closest (mean
        IoU) to the coarse NeRF's ``opacity > 0.5`` from ``views`` eval cameras at twice the coarse
        resolution. A fixed level does not carry over between runs: the densities a coarse run
        reaches vary with its prompt, prior and length (a cube's mesh at level 10 kept 0.71 IoU of
        the true silhouette where level 5 kept 0.89, and level 20 gave no surface at all)."""
        from pyengine.render.tets import marching_tets

        cams = self.coarse.eval_cameras(n=views, size=2 * self.coarse.size)
        target = self.coarse.render_views(cams)["opacity"] > 0.5
        best, best_iou = None, -1.0
        top = float(density.max()) if density.numel() else 0.0
        for level in (lv for lv in self.LEVELS if lv < top):
            verts, faces = marching_tets(self.grid_verts, self.tets, level - density)
            if faces.shape[0] == 0:
                continue
            mask = self.render(cams, "albedo", None, mesh=(verts, faces))["opacity"] > 0.5
            iou = float(sds.mask_iou(mask, target).mean())
            if iou > best_iou:
                best, best_iou = level, iou
        if best is None:
            raise ValueError(f"magic3d: the coarse NeRF of {self.cfg.prompt!r} has no surface at any density level "
                             f"(largest density on the grid {top:.3g}); train the coarse stage longer")
        return best

    def grid_positions(self) -> torch.Tensor:
        return self.grid_verts + self.cfg.deform_scale * self.cell * torch.tanh(self.deform)

    def mesh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(verts [M, 3], faces [F, 3])`` of the current surface, differentiable w.r.t. sdf and deform."""
        from pyengine.render.tets import marching_tets

        return marching_tets(self.grid_positions(), self.tets, self.sdf)

    def color(self, points: torch.Tensor) -> torch.Tensor:
        return self.field(points)["albedo"]

    def render(self, cams: Cameras, shading: str, lights: torch.Tensor | None, mesh=None) -> dict:
        from pyengine.render.surface import render_mesh

        verts, faces = mesh if mesh is not None else self.mesh()
        c = self.coarse.cfg
        return render_mesh(verts, faces, cams, self.color, shading=shading, lights=lights, ambient=c.ambient,
                           background=tuple(c.background), antialias=self.cfg.antialias)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> None:
        opt_tensors, opt_rest = _runs.optimizer_to_flat(self.opt)
        tensors = {"sdf": self.sdf.detach(), "deform": self.deform.detach(),
                   **_runs.prefixed("field", self.field.state_dict()), **_runs.prefixed("opt", opt_tensors),
                   "rng.gen": self.coarse.gen.get_state(), "rng.torch": torch.get_rng_state()}
        state = {"job": JOB, "config": asdict(self.cfg), "step": self.step, "opt": opt_rest}
        _runs.save_checkpoint(self.ckpt_path, tensors, state)

    def load(self) -> bool:
        """Restore the saved state; False when there is none; ValueError when it belongs to another run."""
        loaded = _runs.load_run(self.ckpt_path, JOB, asdict(self.cfg), RESUME_FREE)
        if loaded is None:
            return False
        tensors, state = loaded
        with torch.no_grad():
            self.sdf.copy_(tensors["sdf"])
            self.deform.copy_(tensors["deform"])
        self.field.load_state_dict(_runs.unprefixed("field", tensors))
        _runs.optimizer_from_flat(self.opt, _runs.unprefixed("opt", tensors), state["opt"])
        self.coarse.gen.set_state(tensors["rng.gen"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(state["step"])
        return True

    # -- one iteration -------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One iteration of stage 2 (or of stage 3 once ``step >= fine_iterations``)."""
        from pyengine.render.tets import laplacian_loss, normal_consistency, sdf_sign_loss

        cfg, run = self.cfg, self.coarse
        texture_only = self.step >= cfg.fine_iterations
        t0 = time.perf_counter()
        if texture_only:
            if self._frozen is None:
                with torch.no_grad():
                    self._frozen = tuple(t.detach() for t in self.mesh())
            verts, faces = self._frozen
        else:
            verts, faces = self.mesh()
        logs = {"faces": int(faces.shape[0])}
        if faces.shape[0] == 0:
            raise RuntimeError("magic3d: the surface vanished (no face crosses the SDF's zero level); lower "
                               "density_threshold, or train the coarse stage longer")
        t1 = time.perf_counter()
        cams = run.sample_cameras(run.cfg.batch, size=self.size)
        shading = run._shading()
        lights = run._lights(cams)
        out = self.render(cams, shading, lights, (verts, faces))
        x = run.prior.encode_images(out["rgb"].permute(0, 3, 1, 2))
        t2 = time.perf_counter()
        grad, _ = run.distill_grad(x, cams, t_high=self.t_hi)
        t3 = time.perf_counter()
        loss = sds.distillation_loss(x, grad)
        logs["loss_sd"] = float(loss.detach())
        if not texture_only:
            if cfg.lambda_normal > 0:
                loss = loss + cfg.lambda_normal * normal_consistency(verts, faces)
            if cfg.lambda_laplacian > 0:
                loss = loss + cfg.lambda_laplacian * laplacian_loss(verts, faces)
            if cfg.lambda_sdf > 0:
                loss = loss + cfg.lambda_sdf * sdf_sign_loss(self.sdf, self.tets, edges=self.edges)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        t4 = time.perf_counter()
        for k, dt in zip(self.timing, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            self.timing[k] += dt
        self.step += 1
        logs["opacity"] = float(out["opacity"].detach().mean())
        return logs

    # -- outputs -------------------------------------------------------------------------------------
    def final_mesh(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return tuple(t.detach() for t in self.mesh())

    def render_views(self, cams: Cameras, shading: str = "diffuse") -> dict:
        """Renders without gradient, the light at each camera: rgb, opacity, normal ``[B, H, W, ...]``."""
        lights = cams.origins / cams.origins.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            out = self.render(cams, shading, lights, self.final_mesh())
        return {k: out[k].detach() for k in ("rgb", "opacity", "normal")}


# -- the textured mesh -------------------------------------------------------------------------------

def bake_texture(verts: torch.Tensor, faces: torch.Tensor, color_fn, size: int) -> dict:
    """UV-unwrap a mesh with xatlas and bake ``color_fn`` into a ``size`` x ``size`` texture.

    The atlas is rasterized with pyengine's ``rasterize`` (UV ``(u, v)`` at clip ``(2u - 1, 2v - 1)``)
    and ``interpolate`` gives each texel's surface point, where ``color_fn`` is evaluated; texels
    outside every chart take the mean of their filled neighbours, grown 8 texels out, so bilinear
    lookups at chart borders do not bleed background in.

    Returns:
        dict with ``verts`` [Va, 3] (xatlas splits vertices along seams), ``faces`` [F, 3],
        ``uv`` [Va, 2] in [0, 1] (v up, OBJ's convention) and ``image`` [size, size, 3] uint8 (row 0
        at the top, v = 1).
    """
    import xatlas

    from pyengine.ops.rasterize import interpolate, rasterize

    v_np = verts.detach().cpu().numpy().astype(np.float32)
    f_np = faces.detach().cpu().numpy().astype(np.uint32)
    vmap, idx, uv = xatlas.parametrize(v_np, f_np)
    dev = verts.device
    uv_t = torch.from_numpy(uv.astype(np.float32)).to(dev)
    idx_t = torch.from_numpy(idx.astype(np.int64)).to(dev)
    va = verts.detach()[torch.from_numpy(vmap.astype(np.int64)).to(dev)]
    pos = torch.cat([uv_t * 2 - 1, torch.zeros_like(uv_t[:, :1]), torch.ones_like(uv_t[:, :1])], -1)[None]
    with torch.no_grad():
        rast = rasterize(pos.contiguous(), idx_t.to(torch.int32), (size, size))
        world = interpolate(va[None].contiguous(), rast, idx_t.to(torch.int32))[0]
        hit = rast[0, ..., 3] > 0
        tex = torch.zeros(size, size, 3, device=dev)
        if hit.any():
            tex[hit] = color_fn(world[hit]).float().clamp(0, 1)
        filled = hit.float()
        for _ in range(8):  # grow the charts outwards
            img = tex.permute(2, 0, 1)[None] * filled
            s = torch.nn.functional.avg_pool2d(img, 3, 1, 1, count_include_pad=False)
            n = torch.nn.functional.avg_pool2d(filled[None, None], 3, 1, 1, count_include_pad=False)
            grow = (n[0, 0] > 0) & (filled == 0)
            tex[grow] = (s[0] / n[0].clamp_min(1e-9)).permute(1, 2, 0)[grow]
            filled = torch.where(grow, torch.ones_like(filled), filled)
    image = (tex.flip(0).cpu().numpy() * 255).round().astype(np.uint8)  # rasterized row 0 is v = 0: the bottom
    return {"verts": va.cpu(), "faces": idx_t.cpu(), "uv": uv_t.cpu(), "image": image}


def write_textured_mesh(baked: dict, stem: str, formats=MESH_FORMATS) -> list[str]:
    """``<stem>.obj`` + ``.mtl`` + ``.png`` and/or ``<stem>.glb`` (trimesh, the texture embedded)."""
    import imageio.v3 as iio

    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    v, f, uv, image = baked["verts"].numpy(), baked["faces"].numpy(), baked["uv"].numpy(), baked["image"]
    files = []
    name = os.path.basename(stem)
    if "obj" in formats:
        iio.imwrite(stem + ".png", image)
        with open(stem + ".mtl", "w") as fh:
            fh.write(f"newmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {name}.png\n")
        with open(stem + ".obj", "w") as fh:
            fh.write(f"# pyengine magic3d: {len(v)} vertices, {len(f)} faces\nmtllib {name}.mtl\nusemtl material0\n")
            fh.write("".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in v))
            fh.write("".join(f"vt {a:.6f} {b:.6f}\n" for a, b in uv))
            fh.write("".join(f"f {a}/{a} {b}/{b} {c}/{c}\n" for a, b, c in (f + 1)))
        files += [stem + ".obj", stem + ".mtl", stem + ".png"]
    if "glb" in formats:
        import trimesh
        from PIL import Image

        visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(image))
        trimesh.Trimesh(vertices=v, faces=f, visual=visual, process=False).export(stem + ".glb")
        files.append(stem + ".glb")
    return files


def write_outputs(fine: FineStage) -> dict:
    """Textured mesh, turntable, views and the per-stage timing; returns the file list."""
    from pyengine.render import mesh as meshio

    cfg, out = fine.cfg, fine.run_dir
    c = fine.coarse.cfg
    os.makedirs(out, exist_ok=True)
    files = []
    verts, faces = fine.final_mesh()
    if cfg.mesh_formats and faces.shape[0]:
        with torch.no_grad():
            baked = bake_texture(verts, faces, fine.color, cfg.texture_size)
        files += write_textured_mesh(baked, os.path.join(out, "mesh"), tuple(cfg.mesh_formats))
    radius = sum(c.radius_range) / 2
    if cfg.turntable_frames:
        cams = orbit_cameras(cfg.turntable_frames, radius=radius, elevation_deg=c.eval_elevation, fov_deg=c.fov_deg,
                             width=cfg.turntable_size, height=cfg.turntable_size, device=fine.dev)
        frames = sds._uint8(fine.render_views(cams)["rgb"])
        files += meshio.write_turntable(frames, os.path.join(out, "turntable"), fps=12,
                                        formats=tuple(cfg.video_formats))
    views = fine.render_views(eval_cameras(fine))
    op = views["opacity"][..., None]
    rows = [sds._uint8(views["rgb"]), sds._uint8((views["normal"] + 1) / 2 * op + (1 - op)),
            sds._uint8(op.expand(*op.shape[:-1], 3))]
    import imageio.v3 as iio

    iio.imwrite(os.path.join(out, "views.png"), np.concatenate([np.concatenate(list(r), 1) for r in rows], 0))
    files.append(os.path.join(out, "views.png"))
    return {"files": files}


def eval_cameras(fine: FineStage, size: int | None = None) -> Cameras:
    return fine.coarse.eval_cameras(n=fine.cfg.eval_views, size=size or fine.size)


def run_one(cfg: Magic3DConfig, prior=None, run_dir: str | None = None) -> dict:
    """Run (or resume) both stages (and stage 3) and write the outputs. Ctrl-C saves the checkpoint,
    writes the outputs and re-raises."""
    from tqdm import tqdm

    check_config(cfg)
    run_dir, ckpt = _runs.choose_run_dir(JOB, run_dir or cfg.out or default_out(cfg), cfg, cfg.resume, RESUME_FREE)
    t0 = time.perf_counter()
    coarse_res = sds.run_one(coarse_config(cfg, run_dir), prior, os.path.join(run_dir, "coarse"))
    coarse_seconds = time.perf_counter() - t0
    fine = FineStage(cfg, coarse_res["run"], run_dir)
    if ckpt is not None and fine.load():
        print(f"magic3d: resumed {cfg.prompt!r} from {fine.ckpt_path} at fine iteration {fine.step}")
    total = cfg.fine_iterations + cfg.texture_iterations
    start = fine.step
    t1 = time.perf_counter()
    bar = tqdm(total=total, initial=fine.step, desc=f"magic3d {cfg.prompt}"[:40], unit="it", disable=not cfg.progress)
    interrupted = False
    try:
        while fine.step < total:
            logs = fine.train_step()
            bar.update(1)
            if fine.step % 10 == 0:
                bar.set_postfix(faces=logs["faces"], opacity=f"{logs['opacity']:.2f}")
            if cfg.checkpoint_every and fine.step % cfg.checkpoint_every == 0:
                fine.save()
    except KeyboardInterrupt:
        interrupted = True
        bar.write(f"magic3d: interrupted at fine iteration {fine.step}: saving and writing the outputs")
    finally:
        bar.close()
    fine_seconds = time.perf_counter() - t1
    fine.save()
    res = write_outputs(fine)
    n = max(fine.step - start, 1)
    verts, faces = fine.final_mesh()
    result = {"prompt": cfg.prompt, "out": run_dir, "coarse_size": coarse_res["run"].size, "fine_size": fine.size,
              "coarse_seconds": coarse_seconds, "fine_seconds": fine_seconds, "fine_iterations": fine.step,
              "fine_start": start, "seconds_per_fine_iteration": fine_seconds / n,
              "timing": {k: v / n for k, v in fine.timing.items()}, "mesh_vertices": int(verts.shape[0]),
              "mesh_faces": int(faces.shape[0]), "density_threshold": fine.threshold, "files": res["files"],
              "interrupted": interrupted}
    with open(os.path.join(run_dir, "result.json"), "w") as f:
        json.dump({**result, "config": asdict(cfg)}, f, indent=1)
    print(f"magic3d: {cfg.prompt!r}: coarse {result['coarse_size']} px in {coarse_seconds:.0f} s, fine "
          f"{fine.size} px {fine.step - start} iterations in {fine_seconds:.0f} s ({faces.shape[0]} faces, surface "
          f"at density {fine.threshold:g}); "
          f"wrote {run_dir}/")
    if interrupted:
        raise KeyboardInterrupt
    result["fine"] = fine
    result["coarse"] = coarse_res["run"]
    return result


# -- evaluation ----------------------------------------------------------------------------------

def judge_fine(fine: FineStage, classifier) -> dict:
    """R-precision and silhouette IoU of the fine stage's mesh, rendered at its own resolution; the
    classifier sees the renders resized to the prior's resolution, as the prior does."""
    shape, color = sds._prompt_labels(fine.cfg.prompt)
    cams = eval_cameras(fine)
    views = fine.render_views(cams)
    rgb = views["rgb"].permute(0, 3, 1, 2)
    size = fine.coarse.prior.resolution
    small = torch.nn.functional.interpolate(rgb, (size, size), mode="bilinear", align_corners=False, antialias=True)
    pred = classifier.predict(small.permute(0, 2, 3, 1) * 2 - 1)
    from pyengine.data import shapeworld_images as swi

    s_hit, c_hit = pred[:, 0] == swi.SHAPES.index(shape), pred[:, 1] == swi.COLORS.index(color)
    return {"r_precision": float((s_hit & c_hit).float().mean()), "shape_acc": float(s_hit.float().mean()),
            "color_acc": float(c_hit.float().mean()), "iou": sds.silhouette_iou(views["opacity"], shape, cams),
            "predicted": [f"{swi.COLORS[c]} {swi.SHAPES[s]}" for s, c in pred.tolist()]}


def _many(cfg: Magic3DConfig, prompts: list[str], evaluate: bool) -> dict:
    from pyengine.diffusion.prior import load_prior

    root = cfg.out or os.path.join("runs", JOB, "eval" if evaluate else "batch")
    prior = load_prior(cfg.prior, device=cfg.device)
    for p in prompts:
        prior.check_prompt(p)
        if evaluate:
            sds._prompt_labels(p)
    classifier = None
    if evaluate:
        from pyengine.engines.image_prior import load_classifier

        classifier, _ = load_classifier(None, None if cfg.classifier == "bundled" else cfg.classifier)
        classifier = classifier.to(cfg.device)
    rows = []
    for i, p in enumerate(prompts):
        res = run_one(replace(cfg, prompt=p, prompts=[]), prior, os.path.join(root, f"{i:03d}-{sds.slug(p)}"))
        row = {"prompt": p, "coarse_size": res["coarse_size"], "fine_size": res["fine_size"],
               "seconds": res["coarse_seconds"] + res["fine_seconds"], "faces": res["mesh_faces"], "out": res["out"]}
        if evaluate:
            coarse = sds.judge(res["coarse"], classifier)
            fine = judge_fine(res["fine"], classifier)
            row.update({"coarse_r": coarse["r_precision"], "coarse_iou": coarse["iou"], "fine_r": fine["r_precision"],
                        "fine_iou": fine["iou"], "fine_predicted": fine["predicted"]})
            print(f"magic3d eval: {p!r}: coarse {row['coarse_size']} px R {coarse['r_precision']:.3f} IoU "
                  f"{coarse['iou']:.3f}; fine {row['fine_size']} px R {fine['r_precision']:.3f} IoU {fine['iou']:.3f} "
                  f"({', '.join(fine['predicted'])})", flush=True)
        rows.append(row)
    cols = [("prompt", "prompt", "s"), ("coarse_size", "coarse px", "d"), ("fine_size", "fine px", "d")]
    result = {"rows": rows}
    table_rows = rows
    if evaluate:
        cols += [("coarse_r", "coarse R-prec", ".3f"), ("coarse_iou", "coarse IoU", ".3f"),
                 ("fine_r", "fine R-prec", ".3f"), ("fine_iou", "fine IoU", ".3f")]
        mean = {"prompt": "mean", "coarse_size": rows[0]["coarse_size"], "fine_size": rows[0]["fine_size"],
                **{k: float(np.mean([r[k] for r in rows])) for k in ("coarse_r", "coarse_iou", "fine_r", "fine_iou",
                                                                      "seconds", "faces")}}
        result["mean"] = mean
        table_rows = rows + [mean]
    cols += [("faces", "faces", ".0f"), ("seconds", "seconds", ".0f")]
    table = format_table(table_rows, cols)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump({**result, "config": asdict(cfg)}, f, indent=1)
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write(table + "\n")
    print(f"magic3d{' eval' if evaluate else ''}: {len(rows)} prompt(s); wrote {root}/summary.md\n{table}")
    result["table"] = table
    return result


def run(cfg: Magic3DConfig, command: str = "", prompts_file: str = "") -> dict:
    """``command``: a prompt (or ``""``: ``cfg.prompt``), or ``"eval"``; ``prompts_file``: one prompt per line."""
    prompts = sds.load_prompts(prompts_file) if prompts_file else [str(p) for p in cfg.prompts]
    if command == "eval":
        check_config(cfg)
        return _many(cfg, prompts or list(DEFAULT_EVAL_PROMPTS), evaluate=True)
    if command:
        cfg = replace(cfg, prompt=command)
    check_config(cfg)
    if prompts:
        return _many(cfg, prompts, evaluate=False)
    res = run_one(cfg)
    res.pop("fine", None)
    res.pop("coarse", None)
    return res
