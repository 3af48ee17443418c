"""Run by tests/engines/test_trainer.py under ``torchrun --nproc_per_node 2``: a few DDP steps of a
tiny model on per-rank data; each rank writes its final weights to ``<out>/rank<r>.safetensors``."""

import dataclasses
import os
import sys

import torch
from safetensors.torch import save_file

from pyengine.engines._trainer import Trainer, TrainOptions, init_distributed, shutdown_distributed


def train(out: str, info, ddp: bool) -> dict:
    torch.manual_seed(1234 + info.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    batch_fn = lambda step, g: torch.randn(8, 3, generator=g)  # differs per rank: (seed, step, rank)
    loss_fn = lambda net, x, g: (net(x).squeeze(-1) - x.sum(-1).sin()).square().mean()
    opts = TrainOptions(steps=5, lr=1e-2, ema_decay=0.9, log_every=1)
    if not ddp:  # control: the same processes without gradient averaging
        info = dataclasses.replace(info, world_size=1)
    tr = Trainer(model, loss_fn, batch_fn, opts, "ddp-test", {}, os.path.join(out, f"{ddp}.safetensors"), info)
    tr.fit(progress=False)
    prefix = "ddp" if ddp else "solo"
    weights = {f"{prefix}.model.{k}": v.contiguous() for k, v in tr.model.state_dict().items()}
    weights.update({f"{prefix}.ema.{k}": v.contiguous() for k, v in tr.ema.state_dict().items()})
    return weights


def main(out: str):
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    weights = {**train(out, info, True), **train(out, info, False)}
    save_file(weights, os.path.join(out, f"rank{info.rank}.safetensors"))
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
