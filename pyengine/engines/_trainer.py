"""The training loop shared by the diffusion priors (points, image and video).

A :class:`Trainer` owns a model, its AdamW optimizer, an EMA copy of the weights and a checkpoint
file, and runs ``loss = loss_fn(net, batch_fn(step, generator), generator)`` steps with gradient
clipping, a linear learning-rate warm-up and optionally a cosine decay after it (``lr_decay``),
under a tqdm bar with rate and ETA.

Determinism: every step draws its batch and noise from a generator seeded by
``(seed, step, rank)`` alone, so a run resumed from a checkpoint (weights, EMA, optimizer state,
step) continues exactly as the uninterrupted run would, with no RNG state to save.

Distributed: under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) the process group is
started with gloo on CPUs and nccl on GPUs (one GPU per process, ``LOCAL_RANK``), the model is
wrapped in DistributedDataParallel, each rank draws its own batches (``batch`` is per process),
and only rank 0 writes checkpoints and shows the bar.

Checkpoints are ``_runs`` safetensors files: tensors ``model.*``, ``ema.*``, ``opt.*`` and a JSON
state (job, config, step, optimizer hyper-parameters); loading runs no code.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, is_dataclass

import torch
import torch.distributed as dist

from pyengine.engines import _runs


@dataclass
class TrainOptions:
    steps: int = 1000
    lr: float = 2e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    warmup_steps: int = 0  # linear learning-rate warm-up
    lr_decay: str = "none"  # after the warm-up: "none" (constant) or "cosine" (to lr * lr_final at ``steps``)
    lr_final: float = 0.1  # cosine: the last step's learning rate as a fraction of lr
    ema_decay: float = 0.999  # 0: no EMA copy
    checkpoint_every: int = 0  # 0: only at the end
    log_every: int = 10
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> TrainOptions:
        """The options a job's config dataclass holds under the same names (the rest: defaults)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)})


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "cpu") -> DistInfo:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1); else a 1-process info.

    On CUDA each process takes ``cuda:<LOCAL_RANK>`` and nccl; otherwise gloo on ``device``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world <= 1:
        return DistInfo(device=dev)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=dev)


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (no-op in a single process)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def step_generator(seed: int, step: int, rank: int = 0, device="cpu") -> torch.Generator:
    """The generator of one step on one rank: a function of ``(seed, step, rank)`` only."""
    mixed = (seed * 0x9E3779B1 + step * 0x85EBCA77 + rank * 0xC2B2AE3D + 0x27D4EB2F) % (1 << 63)
    return torch.Generator(device=device).manual_seed(mixed)


class Trainer:
    """One training run of a model.

    Args:
        model: the network (moved to ``dist_info.device``).
        loss_fn: ``loss_fn(net, batch, generator) -> 0-d loss``; ``net`` is the model, wrapped in
            DDP when distributed (call it, not ``model``, so gradients are averaged).
        batch_fn: ``batch_fn(step, generator) -> batch`` for this rank.
        opts: optimisation settings.
        job: job name stored in the checkpoint (``"points"``).
        config: the engine's config (dataclass or dict), stored in the checkpoint and compared
            on :meth:`load` outside ``resume_free``.
        ckpt_path: checkpoint file.
        dist_info: from :func:`init_distributed` (default: a single CPU process).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> tr = Trainer(net, lambda n, b, g: n(b).square().mean(), lambda s, g: torch.randn(4, 2, generator=g),
        ...              TrainOptions(steps=3), "demo", {}, "/tmp/demo/checkpoint.safetensors")
        >>> tr.fit(progress=False)["steps"]
        3
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, batch_fn: Callable, opts: TrainOptions, job: str,
                 config, ckpt_path: str, dist_info: DistInfo | None = None, resume_free: frozenset = frozenset()):
        self.info = dist_info or DistInfo()
        if opts.lr_decay not in ("none", "cosine"):
            raise ValueError(f"{job}: lr_decay must be 'none' or 'cosine', got {opts.lr_decay!r}")
        if not 0 <= opts.lr_final <= 1:
            raise ValueError(f"{job}: lr_final must be in [0, 1] (a fraction of lr), got {opts.lr_final}")
        self.opts, self.job, self.ckpt_path, self.resume_free = opts, job, ckpt_path, resume_free
        self.config = asdict(config) if is_dataclass(config) else dict(config)
        self.loss_fn, self.batch_fn = loss_fn, batch_fn
        self.model = model.to(self.info.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if opts.ema_decay > 0 else None
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)  # broadcasts rank 0's weights
            if self.ema is not None:
                self.ema.load_state_dict(self.model.state_dict())
        else:
            self.net = self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=opts.lr, betas=(opts.beta1, opts.beta2),
                                     weight_decay=opts.weight_decay)
        self.step = 0
        self.last_loss = float("nan")

    # -- one step ----------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based). A cosine decay runs over the steps after the
        warm-up up to ``opts.steps``, so resuming with more steps stretches the rest of it."""
        o = self.opts
        if o.warmup_steps and step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        if o.lr_decay == "cosine":
            span = max(o.steps - 1 - o.warmup_steps, 1)
            frac = min(max(step - o.warmup_steps, 0) / span, 1.0)
            return o.lr * (o.lr_final + (1 - o.lr_final) * 0.5 * (1 + math.cos(math.pi * frac)))
        return o.lr

    def train_step(self) -> torch.Tensor:
        """One optimisation step; returns the loss as a detached 0-d tensor."""
        self.model.train()
        g = step_generator(self.opts.seed, self.step, self.info.rank, self.info.device)
        loss = self.loss_fn(self.net, self.batch_fn(self.step, g), g)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opts.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.step()
        self.step += 1
        self._update_ema()
        return loss.detach()

    @torch.no_grad()
    def _update_ema(self):
        if self.ema is None:
            return
        # short runs: the decay ramps up as (1 + n) / (10 + n), so early weights do not dominate
        decay = min(self.opts.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def sampling_model(self) -> torch.nn.Module:
        """The EMA weights if kept, else the model, in eval mode."""
        return (self.ema if self.ema is not None else self.model).eval()

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, extra_state: dict | None = None) -> None:
        """Write the checkpoint (rank 0 only; other ranks return at once)."""
        if not self.info.is_main:
            return
        opt_tensors, opt_rest = _runs.optimizer_to_flat(self.opt)
        tensors = {**_runs.prefixed("model", self.model.state_dict()), **_runs.prefixed("opt", opt_tensors)}
        if self.ema is not None:
            tensors.update(_runs.prefixed("ema", self.ema.state_dict()))
        state = {"job": self.job, "config": self.config, "step": self.step, "opt": opt_rest,
                 "loss": self.last_loss, "world_size": self.info.world_size, **(extra_state or {})}
        _runs.save_checkpoint(self.ckpt_path, tensors, state)

    def load(self) -> bool:
        """Restore ``ckpt_path`` (every rank reads it); False if there is none.

        Raises ValueError when it is another job's, or its config differs outside ``resume_free``.
        """
        loaded = _runs.load_run(self.ckpt_path, self.job, self.config, self.resume_free)
        if loaded is None:
            return False
        tensors, state = loaded
        self.model.load_state_dict(_runs.unprefixed("model", tensors))
        if self.ema is not None:
            ema = _runs.unprefixed("ema", tensors)
            self.ema.load_state_dict(ema if ema else self.model.state_dict())
        _runs.optimizer_from_flat(self.opt, _runs.unprefixed("opt", tensors), state["opt"])
        self.step = int(state["step"])
        self.last_loss = float(state.get("loss", float("nan")))
        return True

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, progress: bool = True, desc: str | None = None) -> dict:
        """Train until ``opts.steps``; checkpoint every ``checkpoint_every`` steps and at the end.

        Returns ``{"steps", "start_step", "seconds", "loss"}`` (``loss``: the last step's, this rank).
        """
        from tqdm import tqdm

        start, t0 = self.step, time.perf_counter()
        bar = tqdm(total=self.opts.steps, initial=self.step, desc=desc or self.job, unit="step",
                   disable=not (progress and self.info.is_main))
        while self.step < self.opts.steps:
            loss = self.train_step()
            bar.update(1)
            if self.step % max(self.opts.log_every, 1) == 0 or self.step == self.opts.steps:
                self.last_loss = float(loss)
                bar.set_postfix(loss=f"{self.last_loss:.4f}")
            if self.opts.checkpoint_every and self.step % self.opts.checkpoint_every == 0:
                self.save()
        bar.close()
        if self.step > start:
            self.last_loss = float(loss)
        self.save()
        return {"steps": self.step, "start_step": start, "seconds": time.perf_counter() - t0, "loss": self.last_loss}


def load_weights(path: str, model: torch.nn.Module, prefer_ema: bool = True) -> dict:
    """Load a :class:`Trainer` checkpoint's EMA (else model) weights into ``model``; returns its state."""
    tensors, state = _runs.load_checkpoint(path)
    weights = _runs.unprefixed("ema", tensors) if prefer_ema else {}
    model.load_state_dict(weights or _runs.unprefixed("model", tensors))
    return state
