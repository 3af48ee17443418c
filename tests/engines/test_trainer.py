import os
import subprocess
import sys

import pytest
import torch

from pyengine.engines import _runs
from pyengine.engines._trainer import Trainer, TrainOptions, load_weights, step_generator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def one_thread():
    """These models and clouds are tiny: one thread is faster than two, and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_trainer(path, steps, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))
    batch_fn = lambda step, g: torch.rand(16, 2, generator=g) * 4 - 2
    loss_fn = lambda net, x, g: (net(x).squeeze(-1) - (x[:, 0] * x[:, 1]).sin()
                                 + 0.01 * torch.randn(len(x), generator=g)).square().mean()
    opts = TrainOptions(steps=steps, lr=1e-2, ema_decay=0.95, grad_clip=0.5, warmup_steps=3, **kw)
    return Trainer(model, loss_fn, batch_fn, opts, "toy", {"lr": 1e-2, "steps": steps}, str(path),
                   resume_free=frozenset({"steps"}))


def test_training_reduces_the_loss(tmp_path):
    tr = make_trainer(tmp_path / "c.safetensors", 80)
    first = float(tr.train_step())
    res = tr.fit(progress=False)
    assert res["steps"] == 80 and res["loss"] < 0.5 * first, (first, res)


def test_resume_continues_exactly(tmp_path):
    straight = make_trainer(tmp_path / "a.safetensors", 12)
    straight.fit(progress=False)
    half = make_trainer(tmp_path / "b.safetensors", 5)
    half.fit(progress=False)
    resumed = make_trainer(tmp_path / "b.safetensors", 12)
    assert resumed.load() and resumed.step == 5
    resumed.fit(progress=False)
    for name in ("model", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = straight.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # and the checkpoint's EMA weights are what a sampler loads
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))
    assert load_weights(str(tmp_path / "b.safetensors"), net)["step"] == 12
    assert torch.equal(net[0].weight, resumed.ema[0].weight)
    assert not torch.equal(net[0].weight, resumed.model[0].weight)


def test_resume_refuses_another_config(tmp_path):
    make_trainer(tmp_path / "c.safetensors", 2).fit(progress=False)
    other = make_trainer(tmp_path / "c.safetensors", 4)
    other.config["lr"] = 5e-3
    with pytest.raises(ValueError, match="lr: 0.01 -> 0.005"):
        other.load()
    tensors, state = _runs.load_checkpoint(str(tmp_path / "c.safetensors"))
    assert state["job"] == "toy" and {k.split(".")[0] for k in tensors} == {"model", "ema", "opt"}


def test_step_generators_differ_by_step_and_rank():
    draw = lambda *a: torch.rand(4, generator=step_generator(*a))
    assert torch.equal(draw(0, 3, 0), draw(0, 3, 0))
    assert not torch.equal(draw(0, 3, 0), draw(0, 4, 0)) and not torch.equal(draw(0, 3, 0), draw(0, 3, 1))


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "tests", "engines", "ddp_worker.py"), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from safetensors.torch import load_file

    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    ddp = [k for k in r0 if k.startswith("ddp.")]
    assert len(ddp) == 8 and all(torch.equal(r0[k], r1[k]) for k in ddp)
    # control: the same two processes without gradient averaging (other data per rank) drift apart
    assert not torch.equal(r0["solo.model.0.weight"], r1["solo.model.0.weight"])
    assert not torch.equal(r0["solo.model.0.weight"], r0["ddp.model.0.weight"])


def test_cosine_decay_follows_the_warm_up(tmp_path):
    tr = make_trainer(tmp_path / "c.safetensors", 24, lr_decay="cosine", lr_final=0.2)
    lrs = [tr.lr_at(s) for s in range(24)]
    assert lrs[:3] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])  # the warm-up, then the peak
    assert lrs[-1] == pytest.approx(0.2e-2) and lrs[13] == pytest.approx(0.6e-2)  # end, halfway
    assert lrs[3] == pytest.approx(1e-2) and all(a > b for a, b in zip(lrs[3:], lrs[4:]))  # then down
    tr.fit(progress=False)
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(0.2e-2)  # the last step ran at the final rate
    constant = make_trainer(tmp_path / "d.safetensors", 24)
    assert {constant.lr_at(s) for s in range(3, 24)} == {1e-2}


@pytest.mark.parametrize("kw, match", [({"lr_decay": "linear"}, "lr_decay"), ({"lr_final": 1.5}, "lr_final")])
def test_bad_schedules_are_clear_errors(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path / "c.safetensors", 5, **kw)
