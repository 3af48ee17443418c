"""``pyengine <job>`` / ``python -m pyengine <job>``.

Jobs:
  doctor                 versions, devices, and which backends each op can use (and why not)
  fit-image [k=v ...]    fit a 2-D hash grid + MLP to an image (bundled procedural default)
  fit-nerf [k=v ...]     fit a NeRF to multi-view ShapeWorld renders (occupancy grid, fused ops)
  points train|sample|complete|eval|export [k=v ...]
                         point-voxel diffusion on ShapeWorld point clouds (PVD): train a DDPM prior,
                         sample clouds, complete partial clouds, evaluate (1-NNA, Chamfer, EMD)
  sds "PROMPT" | eval [--prompts FILE] [k=v ...]
                         text-to-3D: optimise a hash-grid NeRF with score distillation (method=sds, sjc or
                         vsd) from the bundled ShapeWorld prior or a local diffusers one; writes a turntable,
                         views and a mesh; `eval` reports R-precision and silhouette IoU per prompt
  magic3d "PROMPT" | eval [--prompts FILE] [k=v ...]
                         Magic3D coarse-to-fine text-to-3D: SDS on a NeRF, then a DMTet mesh and its texture
                         through pyengine's rasterizer at 4x the resolution; writes a textured mesh (OBJ+MTL+PNG,
                         GLB) and a turntable; `eval` tables R-precision and silhouette IoU of both stages
  inverse [eval] --task T --method M --sigma-y S [--image PATH | --shapeworld CAPTION] [--samples N] [k=v ...]
                         inverse problems with the diffusion prior (ScoreSDE, ILVR, SNIPS, DDRM, DPS, PiGDM,
                         MCG, RED-diff, CCDF starts); `eval` tables every task x noise x method on held-out images
  train-prior images [train|sample|eval|export|train-classifier] [k=v ...]
                         the ShapeWorld text-to-image prior of the SDS engine ("a red cube, side view")
                         and the shape/colour classifier that judges SDS renders
  video "PROMPT" | train|sample|eval|export|train-classifier [k=v ...]
                         text-to-video diffusion on ShapeWorld clips: sample a prompt such as
                         "a red cube moving left" (GIF/MP4), train the 3D U-Net prior, evaluate it
                         with a shape/colour/direction classifier, or sample a local diffusers pipeline
"""

from __future__ import annotations

import argparse
import platform
import sys


def doctor() -> int:
    import torch

    import pyengine
    from pyengine import _ext
    from pyengine.ops import _dispatch

    print(f"pyengine {pyengine.__version__}  python {platform.python_version()}  torch {torch.__version__}")
    try:
        import triton

        print(f"triton {triton.__version__}  (TRITON_INTERPRET={'1' if _dispatch.triton_interpret() else '0'})")
    except Exception as exc:
        print(f"triton: not importable ({exc})")
    mod = _ext.load()
    if mod is None:
        print(f"pyengine._C: missing — {_ext.error()}; ops fall back to Triton / PyTorch")
    else:
        print(f"pyengine._C: loaded from {mod.__file__} (CUDA kernels: {'yes' if _ext.has_cuda() else 'no'})")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append(torch.device("cuda", i))
            print(f"cuda:{i}: {torch.cuda.get_device_name(i)} (torch CUDA {torch.version.cuda})")
    else:
        print("CUDA: not available" + (f" (torch built with CUDA {torch.version.cuda})" if torch.version.cuda else
                                        " (CPU build of torch)"))
    for op in _dispatch.ops():
        for dev in devices:
            avail = _dispatch.availability(op, dev)
            try:
                chosen = _dispatch.select(op, dev).name
            except Exception as exc:
                chosen = f"none ({exc})"
            print(f"{op} on {dev}: default -> {chosen}")
            for name in _dispatch.BACKENDS:
                if name in avail:
                    reason = avail[name]
                    print(f"    {name:<9} {'ok' if reason is None else 'no: ' + reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyengine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="job", required=True)
    sub.add_parser("doctor", help="what is installed and which backends each op can use")
    p = sub.add_parser("fit-image", help="fit a hash grid + MLP to an image")
    p.add_argument("--config", help="YAML file with FitImageConfig keys")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=200 out=runs/x")
    p = sub.add_parser("fit-nerf", help="fit a NeRF to multi-view ShapeWorld renders")
    p.add_argument("--config", help="YAML file with FitNeRFConfig keys")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. shape=torus steps=2000")
    p = sub.add_parser("points", help="point-cloud diffusion (PVD) on ShapeWorld clouds")
    p.add_argument("command", choices=("train", "sample", "complete", "eval", "export"))
    p.add_argument("--config", help="YAML file with PointsConfig keys (e.g. configs/points_pvd.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=300 model.hidden=32 classes=[cube]")
    p = sub.add_parser("video", help="text-to-video diffusion on ShapeWorld clips (3D U-Net, DPM-Solver++, guidance)")
    p.add_argument("command", help="train, sample, eval, export, train-classifier, or a prompt in quotes to sample")
    p.add_argument("--config", help="YAML file with VideoConfig keys (e.g. configs/video_shapeworld.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. guidance=5 sampler=ddim n_samples=4")
    p = sub.add_parser("sds", help="text-to-3D by score distillation (DreamFusion, SJC, VSD)")
    p.add_argument("command", nargs="?", default="",
                   help="a prompt in quotes (default: the config's), or eval (R-precision and IoU per prompt)")
    p.add_argument("--prompts", default="", help="a text file with one prompt per line: one run each, and a summary")
    p.add_argument("--config", help="YAML file with SDSConfig keys")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method=vsd iterations=1000 guidance=7.5")
    p = sub.add_parser("magic3d", help="Magic3D coarse-to-fine text-to-3D (NeRF, then a DMTet mesh)")
    p.add_argument("command", nargs="?", default="",
                   help="a prompt in quotes (default: the config's), or eval (both stages' R-precision and IoU)")
    p.add_argument("--prompts", default="", help="a text file with one prompt per line: one run each, and a summary")
    p.add_argument("--config", help="YAML file with Magic3DConfig keys")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. fine_iterations=500 tet_resolution=64")
    p = sub.add_parser("inverse", help="inverse problems (SR, inpainting, deblurring, colorization, phase retrieval) "
                                       "with a diffusion prior: DPS, DDRM, PiGDM, RED-diff, ...")
    p.add_argument("command", nargs="?", default="", help="eval (every task x sigma_y x method), or nothing: one solve")
    p.add_argument("--task", help="sr2 sr4 sr4_bicubic inpaint_box inpaint_random deblur_gauss deblur_motion "
                                  "colorize phase")
    p.add_argument("--method", help="scoresde ilvr snips ddrm dps pigdm mcg reddiff, or baseline")
    p.add_argument("--sigma-y", type=float, help="measurement noise in [0, 1] image units")
    p.add_argument("--image", help="an image file to measure and recover")
    p.add_argument("--shapeworld", help='a ShapeWorld caption ("a red cube"): a view of it is the truth')
    p.add_argument("--samples", type=int, help="posterior samples (mean and std when > 1)")
    p.add_argument("--config", help="YAML file with InverseConfig keys")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 t0=0.3 options.zeta=1.0")
    p = sub.add_parser("train-prior", help="train the bundled ShapeWorld priors (images: the SDS engine's prior)")
    p.add_argument("kind", choices=("images",))
    p.add_argument("command", nargs="?", default="train",
                   help="train (default), sample, eval, export, train-classifier")
    p.add_argument("--config", help="YAML file with ImagePriorConfig keys (e.g. configs/prior_images.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=2000 guidance=5")
    # key=value overrides may come before or after --config: argparse hands those after it back
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if "=" not in e or e.startswith("-") or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if (args.job in ("sds", "magic3d") and "=" in args.command
            and args.command.split("=", 1)[0].replace(".", "_").isidentifier()):
        args.overrides = [args.command, *args.overrides]  # `pyengine sds iterations=10`: the config's prompt
        args.command = ""
    if args.job == "inverse":
        if "=" in args.command:  # `pyengine inverse steps=10`: one solve
            args.overrides = [args.command, *args.overrides]
            args.command = ""
        flags = {"task": args.task, "method": args.method, "sigma_y": args.sigma_y, "image": args.image,
                 "shapeworld": args.shapeworld, "samples": args.samples}
        args.overrides = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in flags.items()
                          if v is not None] + list(args.overrides)
    if args.job == "train-prior" and "=" in args.command:  # `train-prior images steps=10`: the default command
        args.overrides = [args.command, *args.overrides]
        args.command = "train"
    if args.job == "doctor":
        return doctor()
    jobs = {"fit-image": ("pyengine.engines.image", "FitImageConfig"),
            "fit-nerf": ("pyengine.engines.nerf", "FitNeRFConfig"),
            "points": ("pyengine.engines.points", "PointsConfig"),
            "video": ("pyengine.engines.video", "VideoConfig"),
            "train-prior": ("pyengine.engines.image_prior", "ImagePriorConfig"),
            "sds": ("pyengine.engines.sds", "SDSConfig"),
            "magic3d": ("pyengine.engines.magic3d", "Magic3DConfig"),
            "inverse": ("pyengine.engines.inverse", "InverseConfig")}
    if args.job in jobs:
        import importlib

        from pyengine.config import load_config

        mod = importlib.import_module(jobs[args.job][0])
        try:
            cfg = load_config(getattr(mod, jobs[args.job][1]), args.config, args.overrides)
        except ValueError as exc:
            parser.error(str(exc))
        if args.job in ("sds", "magic3d"):
            try:
                mod.run(cfg, args.command, args.prompts)
            except ValueError as exc:
                print(f"pyengine {args.job}: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                return 130
            return 0
        if args.job in ("points", "video", "train-prior", "inverse"):
            try:
                mod.run(cfg, args.command)
            except ValueError as exc:  # a bad setting or no trained run: say so, without a traceback
                print(f"pyengine {args.job} {args.command}: {exc}", file=sys.stderr)
                return 1
            return 0
        mod.run(cfg)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
