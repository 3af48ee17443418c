"""Benchmark one SDS iteration (``pyengine sds``), split into render, prior and backward.

    python bench/bench_sds.py                              # CPU: pyengine vs its reference, SDSConfig() sizes
    python bench/bench_sds.py --device cuda                # GPU: also tiny-cuda-nn + nerfacc when they import
    python bench/bench_sds.py --render-size 0 128 --method vsd --set batch=4
    python bench/bench_sds.py --quick                      # tiny sizes: a smoke run of every code path

Every provider runs the engine's own ``SDSRun.train_step`` (``pyengine.engines.sds``) and reads
its ``timing`` split, per iteration:

* render: occupancy-grid refresh (every ``occ_update_every`` steps), camera sampling, ray
  marching, field evaluation with analytic normals, compositing, shading and ``encode_images``;
* prior: the guided noise prediction (classifier-free guidance, two U-Net passes in one batch;
  SJC's extra draws, VSD's LoRA prediction) and the score-distillation gradient;
* backward: the loss, its backward through the render (the hash grid's double backward for the
  normals) and the Adam step (VSD: and the LoRA update).

On a GPU the engine's clock is swapped, for the benchmark only, for one that synchronizes the
device before each reading, so that each phase holds the device time of its own kernels.

Providers (``--providers``), all from the same initial weights (the same seed; the tiny-cuda-nn
table is a copy of pyengine's where the layouts have the same length) and the same per-iteration
draws (cameras, shading, timesteps, noise):

* ``pyengine``: the engine as it ships, every op on its default backend (``PYENGINE_BACKEND``,
  when set, applies and is named in the row);
* ``reference``: the same loop with every op (the prior's attention included) on its pure-PyTorch
  reference, ``pyengine.use_backend("reference")``: a sanity check, not a peer;
* ``tcnn+nerfacc``: the anchors, when both ``tinycudann`` and ``nerfacc`` (0.5.3) import and the
  device is a GPU: the field's hash grid is ``tinycudann.Encoding`` (``HashGrid``, the field's
  levels, table size, base resolution and per-level scale; float32) under the same torch MLPs, and
  sampling and compositing go through ``nerfacc.OccGridEstimator.sampling`` (with the same
  ``sigma_fn`` early stop) and ``nerfacc.rendering`` (albedo; the normals and the orientation
  penalty by ``nerfacc.accumulate_along_rays`` on its weights), as threestudio does;
* ``tcnn-fp16+nerfacc``: the same with tiny-cuda-nn computing in float16 (its default on a GPU);
* ``tcnn``, ``nerfacc``: one anchor at a time (the other part pyengine's), to attribute a gap.

The prior is identical for every provider: a random-weight ShapeWorld prior with the architecture
of ``configs/prior_images.yaml`` (``--prior-set KEY=VALUE`` edits that config), or the prior that
``--prior`` names (``shapeworld``, a ``.safetensors`` file, ``sd:FOLDER``...), so the column to read
is "render+bwd / pyengine": the issue's GPU goal is pyengine's render + backward at least 3x faster
than tcnn+nerfacc's.

Before timing, each provider renders one fixed view (no jitter) from the same occupancy grid, and
"max diff" is the largest difference of its rgb / opacity / normal images from pyengine's (nerfacc's
step lattice starts at the near plane, pyengine's where the ray enters the box, so the nerfacc rows
differ by up to a step's discretisation).

Timing: ``--warmup`` iterations, then ``--iters`` iterations with the providers in turn within
every repeat (``bench_side_by_side``); each phase is the median over the timed iterations, so the
occupancy-grid refresh (one iteration in ``occ_update_every``) does not show in the medians. The
CPU defaults (32x32, 20 + 3 iterations of pyengine and the reference) take about a minute on one
thread of a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench_side_by_side, commit, machine, print_table, save_json  # noqa: E402

from pyengine.config import load_config  # noqa: E402
from pyengine.engines import sds as sds_engine  # noqa: E402
from pyengine.engines.image_prior import ImagePriorConfig, settings_of  # noqa: E402
from pyengine.ops import _dispatch  # noqa: E402
from pyengine.render.camera import generate_rays, orbit_cameras  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIOR_YAML = os.path.join(ROOT, "configs", "prior_images.yaml")
#: provider -> (hash grid, sampling + compositing, forced backend, tiny-cuda-nn dtype)
PROVIDERS = {
    "pyengine": ("pyengine", "pyengine", None, None),
    "reference": ("pyengine", "pyengine", "reference", None),
    "tcnn+nerfacc": ("tcnn", "nerfacc", None, torch.float32),
    "tcnn-fp16+nerfacc": ("tcnn", "nerfacc", None, torch.float16),
    "tcnn": ("tcnn", "pyengine", None, torch.float32),
    "nerfacc": ("pyengine", "nerfacc", None, None),
}
DEFAULT_PROVIDERS = {"cpu": ["pyengine", "reference", "tcnn+nerfacc"], "cuda": list(PROVIDERS)}
#: --quick: a smoke run (the engine's settings, then the prior's)
QUICK_SDS = ["n_levels=2", "log2_hashmap_size=8", "finest_resolution=32", "hidden=8", "grid_resolution=8",
             "samples_per_ray=16"]
QUICK_PRIOR = ["size=8", "model.text_dim=8", "model.kwargs.model_channels=8", "model.kwargs.channel_mult=[1,2]",
               "model.kwargs.attention_levels=[1]", "model.kwargs.heads=2"]
PHASES = ("render", "prior", "backward")
COLUMNS = ["size", "provider", "render ms", "prior ms", "backward ms", "total ms", "render+bwd ms",
           "total / pyengine", "render+bwd / pyengine", "samples", "max diff"]


# Peers -------------------------------------------------------------------------------------------

def import_peer(name: str):
    """(module, None) or (None, why not): the real ``tinycudann`` / ``nerfacc``, not a pyengine
    drop-in registered under that name (``pyengine.compat.install_*``)."""
    try:
        mod = __import__(name)
    except Exception as exc:
        return None, f"{name} is not importable ({type(exc).__name__}: {exc})"
    if mod.__name__.startswith("pyengine."):  # e.g. pyengine.compat.nerfacc under sys.modules["nerfacc"]
        return None, f"{name} is pyengine's own drop-in here, not the real package"
    return mod, None


def peer_modules(device: torch.device) -> dict:
    """``{"tcnn": module or why not, "nerfacc": ...}``; both need CUDA tensors (nerfacc's grid
    traversal and packed compositing are CUDA kernels, tiny-cuda-nn is CUDA only)."""
    out = {}
    for key, name in (("tcnn", "tinycudann"), ("nerfacc", "nerfacc")):
        mod, why = import_peer(name)
        if mod is not None and device.type != "cuda":
            mod, why = None, f"{name} needs a CUDA device (the benchmark runs on {device})"
        out[key] = mod if mod is not None else why
    return out


class TcnnGrid(torch.nn.Module):
    """tiny-cuda-nn's ``HashGrid`` encoding with the settings of a pyengine ``HashGrid``, in its
    place inside ``NeRFField``: ``x [..., 3]`` in the grid's bounds -> ``[..., L * F]`` float32.

    The table starts as a copy of ``grid``'s when the two have the same length (tcnn's layout is
    pyengine's), so that both fields are the same function; ``copied`` says whether it did.
    """

    def __init__(self, tcnn, grid, dtype: torch.dtype):
        super().__init__()
        c = grid.config
        if c.n_input_dims != 3 or c.interpolation != "linear":
            raise ValueError(f"TcnnGrid: a 3-D linear hash grid is expected, got {grid.extra_repr()}")
        self.enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": c.n_levels,
                                     "n_features_per_level": c.n_features_per_level,
                                     "log2_hashmap_size": c.log2_hashmap_size,
                                     "base_resolution": int(c.base_resolution),
                                     "per_level_scale": c.per_level_scale}, dtype=dtype)
        self.register_buffer("bounds", grid.bounds.detach().clone())
        self.copied = self.enc.params.numel() == grid.params.numel()
        if self.copied:
            with torch.no_grad():
                self.enc.params.copy_(grid.params.detach().reshape(-1).to(self.enc.params))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.bounds[0]) / (self.bounds[1] - self.bounds[0])
        return self.enc(u.reshape(-1, 3)).float().reshape(*x.shape[:-1], -1)


def nerfacc_render(run, nerfacc, cams, shading: str, train: bool, lights=None, orientation: bool = False) -> dict:
    """``SDSRun.render`` with nerfacc's sampling and compositing: same field, same outputs
    (rgb ``[B, H, W, 3]``, opacity ``[B, H, W]``, normal, orientation)."""
    rays_o, rays_d = generate_rays(cams)
    B, H, W = rays_o.shape[:3]
    o, d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    R = o.shape[0]
    field, kw = run.field, run.render_kwargs(train)
    with_normals = shading != "albedo" or orientation

    def sigma_fn(t_starts, t_ends, ray_indices):
        return field.density(o[ray_indices] + d[ray_indices] * ((t_starts + t_ends)[:, None] * 0.5))

    ray_indices, t_starts, t_ends = run.estimator.sampling(o, d, sigma_fn=sigma_fn,
                                                           render_step_size=kw["render_step_size"],
                                                           stratified=kw["stratified"])
    fields = {}

    def rgb_sigma_fn(t_starts, t_ends, ray_indices):
        x = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends)[:, None] * 0.5)
        fields.update(field(x, with_normals=with_normals))
        return fields["albedo"], fields["density"]

    bg = torch.tensor(kw["background"], dtype=o.dtype, device=o.device)
    rgb, opacity, _, extras = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=R, rgb_sigma_fn=rgb_sigma_fn,
                                                render_bkgd=bg)
    out = {"rgb": rgb, "opacity": opacity[:, 0]}
    if with_normals:
        normal = fields.get("normal", torch.zeros(0, 3, device=o.device))  # absent when no sample
        out["normal"] = nerfacc.accumulate_along_rays(extras["weights"], normal, ray_indices, R)
        if orientation:
            facing = torch.relu((normal * d[ray_indices]).sum(-1, keepdim=True)) ** 2
            out["orientation"] = nerfacc.accumulate_along_rays(extras["weights"], facing, ray_indices, R)[:, 0]
    return run._shade(out, shading, lights, B, H, W)


# Runs --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def forced_backend(name: str | None):
    """Every pyengine op on ``name`` inside the block (``PYENGINE_BACKEND`` included, which would
    otherwise win over ``use_backend``); ``None``: as configured."""
    if name is None:
        yield
        return
    env = os.environ.get("PYENGINE_BACKEND")
    os.environ["PYENGINE_BACKEND"] = name
    try:
        with _dispatch.use_backend(name):
            yield
    finally:
        if env is None:
            del os.environ["PYENGINE_BACKEND"]
        else:
            os.environ["PYENGINE_BACKEND"] = env


class _DeviceClock:
    """Stands in for the ``time`` module of ``pyengine.engines.sds``: ``perf_counter`` waits for
    the device first, so that the engine's phase split holds device time."""

    def __init__(self, device: torch.device):
        self.device = device

    def perf_counter(self) -> float:
        torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __getattr__(self, name):
        return getattr(time, name)


@contextlib.contextmanager
def engine_clock(device: torch.device):
    if device.type != "cuda":
        yield
        return
    saved = sds_engine.time
    sds_engine.time = _DeviceClock(device)
    try:
        yield
    finally:
        sds_engine.time = saved


def build_prior(spec: str | None, overrides: list[str], device: torch.device):
    """(prior, description): ``spec`` through ``load_prior``, or a random-weight ShapeWorld prior
    with the architecture of ``configs/prior_images.yaml`` (edited by ``overrides``)."""
    from pyengine.diffusion.prior import load_prior
    from pyengine.diffusion.shapeworld_prior import ShapeWorldPrior, build_network

    if spec:
        return load_prior(spec, device=str(device)), f"prior {spec}"
    settings = settings_of(load_config(ImagePriorConfig, PRIOR_YAML, overrides))
    torch.manual_seed(0)
    net = build_network(settings)
    n = sum(p.numel() for p in net.parameters())
    edits = f", {' '.join(overrides)}" if overrides else ""
    prior = ShapeWorldPrior(net, settings).to(device)
    return prior, f"random-weight ShapeWorld prior (configs/prior_images.yaml{edits}; {n} parameters)"


def make_run(prov: str, cfg, prior, peers: dict):
    """An ``SDSRun`` set up as ``prov``, or raise RuntimeError saying why it cannot run here."""
    grid, render, _, dtype = PROVIDERS[prov]
    missing = [peers[part] for part in ("tcnn", "nerfacc") if part in (grid, render) and isinstance(peers[part], str)]
    if missing:
        raise RuntimeError("; ".join(missing))
    run = sds_engine.SDSRun(cfg, os.path.join(tempfile.gettempdir(), "bench_sds_unused"), prior)
    notes = []
    if grid == "tcnn":
        new = TcnnGrid(peers["tcnn"], run.field.grid, dtype).to(run.dev)
        run.field.grid = new
        run.opt.param_groups[0]["params"] = list(new.parameters())  # no optimizer state yet
        if not new.copied:
            notes.append("tcnn table: its own initial values (length differs from pyengine's)")
    if render == "nerfacc":
        h = cfg.aabb_half
        run.estimator = peers["nerfacc"].OccGridEstimator(torch.tensor([-h, -h, -h, h, h, h]),
                                                          resolution=cfg.grid_resolution).to(run.dev)
        run.render = functools.partial(nerfacc_render, run, peers["nerfacc"])
    run.samples = []
    sampling = run.estimator.sampling

    def counted(*args, **kwargs):
        out = sampling(*args, **kwargs)
        run.samples.append(out[1].shape[0])
        return out

    run.estimator.sampling = counted
    run.notes = notes
    return run


def check_images(runs: dict, backends: dict, skipped: list, what: str) -> dict:
    """Largest |difference| of each run's rgb / opacity / normal images of one fixed view from
    pyengine's, all from pyengine's occupancy grid after one refresh; the grids are reset afterwards.
    A run that cannot render is left out with a note in ``skipped``."""
    first = runs["pyengine"]
    saved = {k: copy.deepcopy(r.estimator.state_dict()) for k, r in runs.items()}
    with forced_backend(backends["pyengine"]):
        first.estimator.train()
        first.estimator._update(0, lambda x: first.field.density(x) * first.step_size, occ_thre=first.cfg.occ_thre)
    cams = orbit_cameras(1, radius=sum(first.cfg.radius_range) / 2, elevation_deg=20.0, fov_deg=first.cfg.fov_deg,
                         width=first.size, height=first.size, device=first.dev)
    lights = cams.origins / cams.origins.norm(dim=-1, keepdim=True)
    images = {}
    try:
        for k, r in runs.items():
            r.estimator.occs.copy_(first.estimator.occs)
            r.estimator.binaries.copy_(first.estimator.binaries)
            try:
                with forced_backend(backends[k]), torch.no_grad():
                    out = r.render(cams, "diffuse", False, lights, orientation=True)
            except Exception as exc:
                skipped.append(f"{k}: image check at {what}: {type(exc).__name__}: {exc}")
                continue
            images[k] = torch.cat([out["rgb"], out["opacity"][..., None], out["normal"]], -1)
    finally:
        for k, r in runs.items():
            r.estimator.load_state_dict(saved[k])
    return {k: float((img - images["pyengine"]).abs().max()) for k, img in images.items()}


def time_runs(runs: dict, backends: dict, device: torch.device, warmup: int, iters: int, budget: float,
              failed: dict) -> dict:
    """Per provider: median ms of each phase, of render + backward and of the whole iteration over
    the timed iterations, the providers in turn within every repeat. A provider whose iteration
    raises is recorded in ``failed`` (provider -> message), skipped from then on and left out."""
    split = {k: [] for k in runs}
    for r in runs.values():
        r.samples.clear()

    def step(k):
        if k in failed:
            return
        r = runs[k]
        before = dict(r.timing)
        torch.manual_seed(r.step)  # the same jitter (stratified samples, grid refresh) for every provider
        try:
            with forced_backend(backends[k]):
                r.train_step()
        except Exception as exc:
            if k == "pyengine":
                raise
            failed[k] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        split[k].append({p: (r.timing[p] - before[p]) * 1e3 for p in PHASES})

    with engine_clock(device):
        total = bench_side_by_side({k: functools.partial(step, k) for k in runs}, warmup=warmup, reps=iters,
                                   budget_s=budget)
    out = {}
    for k, r in runs.items():
        if k in failed:
            continue
        timed = split[k][warmup:]  # bench_side_by_side calls each fn `warmup` times first
        med = {p: statistics.median(s[p] for s in timed) for p in PHASES}
        med["render+bwd"] = statistics.median(s["render"] + s["backward"] for s in timed)
        med["total"] = total[k]
        med["samples"] = statistics.mean(r.samples[warmup:])
        med["iterations"] = len(timed)
        out[k] = med
    return out


# Main --------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=None)
    ap.add_argument("--method", choices=sds_engine.METHODS, default="sds")
    ap.add_argument("--render-size", nargs="+", type=int, default=None,
                    help="render sides, one set of rows each (0: the engine's default, the prior's resolution)")
    ap.add_argument("--prior", default=None, help="shapeworld, a .safetensors file, sd:FOLDER, if:FOLDER "
                    "(default: a random-weight prior with the architecture of configs/prior_images.yaml)")
    ap.add_argument("--prior-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="edits of configs/prior_images.yaml for the random-weight prior")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SDSConfig settings (batch=4, ...)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default: 20 on CPU, 50 on a GPU)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for the timed iterations of one size")
    ap.add_argument("--quick", action="store_true", help="tiny field, prior and render, 1 + 1 iterations")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    if args.quick:
        args.set = QUICK_SDS + args.set
        args.prior_set = QUICK_PRIOR + args.prior_set
        args.render_size = args.render_size or [8]
        args.iters = args.iters or 1
        args.warmup = min(args.warmup, 1)
    iters = args.iters or (50 if gpu else 20)
    if iters < 1 or args.warmup < 0:
        raise ValueError(f"bench_sds: --iters must be >= 1 and --warmup >= 0, got {iters} and {args.warmup}")
    provs = args.providers or DEFAULT_PROVIDERS["cuda" if gpu else "cpu"]
    if "pyengine" not in provs:
        provs = ["pyengine", *provs]  # the ratios' base
    base_cfg = load_config(sds_engine.SDSConfig, None, args.set)
    base_cfg = replace(base_cfg, method=args.method, device=str(dev), progress=False,
                       iterations=max(base_cfg.iterations, args.warmup + iters))
    prior, prior_desc = build_prior(args.prior, args.prior_set, dev)
    peers = peer_modules(dev)
    env = os.environ.get("PYENGINE_BACKEND", "").strip()
    backends = {p: PROVIDERS[p][2] for p in provs}
    label = {p: p for p in provs}
    label["pyengine"] = f"pyengine (PYENGINE_BACKEND={env})" if env and env != "auto" else "pyengine"
    label["reference"] = "reference (sanity check)"
    rows, skipped, results = [], [], []

    for size in args.render_size or [0]:
        cfg = replace(base_cfg, render_size=size)
        sds_engine.check_config(cfg)
        runs = {}
        for p in provs:
            try:
                runs[p] = make_run(p, cfg, prior, peers)
            except Exception as exc:
                skipped.append(f"{p}: {exc}" if isinstance(exc, RuntimeError) else f"{p}: {type(exc).__name__}: {exc}")
        if "pyengine" not in runs:
            raise SystemExit(f"bench_sds: pyengine's own run could not be set up: {skipped}")
        for p, r in runs.items():
            skipped += [f"{p}: {n}" for n in r.notes]
        side = runs["pyengine"].size
        what = f"{side}x{side}, batch {cfg.batch}"
        diffs = check_images(runs, backends, skipped, what)
        failed = {}
        ms = time_runs(runs, backends, dev, args.warmup, iters, args.budget, failed)
        skipped += [f"{p} at {what}: {why}" for p, why in failed.items()]
        base = ms["pyengine"]
        for p, m in ms.items():
            row = {"size": what, "provider": label[p]}
            for ph in PHASES:
                row[f"{ph} ms"] = f"{m[ph]:.3f}"
            row.update({"total ms": f"{m['total']:.3f}", "render+bwd ms": f"{m['render+bwd']:.3f}",
                        "total / pyengine": f"{m['total'] / base['total']:.2f}",
                        "render+bwd / pyengine": f"{m['render+bwd'] / base['render+bwd']:.2f}",
                        "samples": f"{m['samples']:.0f}",
                        "max diff": f"{diffs[p]:.2e}" if p in diffs else ""})
            rows.append(row)
            results.append({"size": what, "render_size": side, "provider": p, "iterations": m["iterations"],
                            **{f"{k}_ms": m[k] for k in (*PHASES, "render+bwd", "total")},
                            "samples": m["samples"], "max_diff": diffs.get(p)})

    print(f"sds benchmark: {machine(str(dev))}; commit {commit()}; torch {torch.__version__}")
    print(f"method {args.method}, {prior_desc}; {iters} timed iterations after {args.warmup} warm-up; "
          f"medians per phase; field: {base_cfg.n_levels} levels, 2^{base_cfg.log2_hashmap_size} table, "
          f"{base_cfg.samples_per_ray} samples per ray")
    print_table(rows, COLUMNS)
    for p in ("tcnn+nerfacc", "tcnn-fp16+nerfacc"):
        for r in results:
            if r["provider"] == p:
                pe = next(x for x in results if x["provider"] == "pyengine" and x["size"] == r["size"])
                print(f"render+backward at {r['size']}: {p} takes {r['render+bwd_ms'] / pe['render+bwd_ms']:.2f}x "
                      f"pyengine's time (goal: >= 3x)")
    for s in dict.fromkeys(skipped):
        print(f"skipped: {s}")
    save_json(args.json, {"device": machine(str(dev)), "commit": commit(), "torch": torch.__version__,
                          "method": args.method, "prior": prior_desc, "iters": iters, "warmup": args.warmup,
                          "config": asdict(base_cfg), "rows": rows, "results": results,
                          "skipped": list(dict.fromkeys(skipped)), "command": " ".join(sys.argv)})
    return results


if __name__ == "__main__":
    main()
