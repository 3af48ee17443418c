"""fit-nerf end to end on a small budget: it learns, resumes, and writes what users look at."""

import dataclasses
import os
import pickle
import traceback

import pytest
import torch

from pyengine.engines.nerf import FitNeRFConfig, NeRFTrainer, run
from pyengine.render.mesh import mp4_available

# A few seconds per run on a CPU core: enough to exercise every path of the job, not to learn.
TINY = dict(n_views=4, n_test_views=1, width=16, height=16, batch_rays=128, n_levels=4, log2_hashmap_size=12,
            hidden=16, grid_resolution=16, samples_per_ray=64, occ_warmup_steps=4, occ_update_every=2,
            turntable_frames=0, checkpoint_every=0)

# The full job (steps=1200) reaches >= 25 dB held-out (see bench/RESULTS.md); CI runs a short fit.
SHORT_STEPS = 300
# smaller batches and fewer samples than the job's defaults, pruning from step 32, two held-out views:
# measured 20.3 dB in 138 s on a loaded core (the defaults: 21.2 dB in 2.4x the time); untrained ~12 dB
SHORT = dict(batch_rays=512, samples_per_ray=128, occ_warmup_steps=32, n_test_views=2)
SHORT_PSNR = 19.5


def test_short_fit_learns_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    res = run(FitNeRFConfig(steps=SHORT_STEPS, out=str(out), turntable_frames=4, checkpoint_every=0, **SHORT))
    assert res["psnr"] >= SHORT_PSNR, f"held-out PSNR {res['psnr']:.2f} dB after {SHORT_STEPS} steps"
    names = ["checkpoint.safetensors", "heldout.png", "turntable.gif"]
    if mp4_available():  # imageio's ffmpeg plugin writes the MP4 where it is installed
        names.append("turntable.mp4")
    for name in names:
        assert (out / name).stat().st_size > 0, name


def test_resume_continues_from_checkpoint(tmp_path):
    cfg = FitNeRFConfig(steps=20, out=str(tmp_path), checkpoint_every=10, turntable_frames=0, n_test_views=1)
    a = NeRFTrainer(cfg)
    for _ in range(10):
        a.train_step()
    a.save()
    b = NeRFTrainer(FitNeRFConfig(**{**cfg.__dict__, "steps": 30}))
    assert b.load() and b.step == 10
    for k, v in a.field.state_dict().items():
        assert (b.field.state_dict()[k] == v).all(), k
    assert (b.estimator.binaries == a.estimator.binaries).all()
    b.train_step()
    assert b.step == 11


def test_bad_shape_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="shape must be one of"):
        NeRFTrainer(FitNeRFConfig(shape="dodecahedron", out=str(tmp_path)))


def test_cli_overrides_and_unknown_key(tmp_path, capsys):
    from pyengine.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit-nerf", "no_such_key=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "FitNeRFConfig" in err and "no_such_key" in err and "known keys: shape, color" in err, err
    assert main(["fit-nerf", "steps=5", "n_test_views=1", "turntable_frames=0", f"out={tmp_path}"]) == 0
    assert os.path.exists(tmp_path / "checkpoint.safetensors")


# Run directories and resuming ----------------------------------------------------------------------

def test_other_settings_get_their_own_default_directory(tmp_path, monkeypatch):
    # The issue: `fit-nerf` then `fit-nerf shape=torus` resumed the cube and reported its PSNR.
    monkeypatch.chdir(tmp_path)
    cube = run(FitNeRFConfig(steps=3, **TINY))
    torus = run(FitNeRFConfig(steps=3, shape="torus", **TINY))
    assert cube["out"] != torus["out"]
    assert os.path.basename(cube["out"]).startswith("cube-red-")
    assert os.path.basename(torus["out"]).startswith("torus-red-")
    assert torus["start_step"] == 0 and torus["steps"] == 3 and "torus" in torus["caption"]
    # the fields that may change on resume do not change the directory; the others do
    more = dict(TINY, checkpoint_every=2, turntable_frames=2)
    longer = run(FitNeRFConfig(steps=5, eval_every=5, **more))
    assert longer["out"] == cube["out"] and longer["start_step"] == 3 and longer["steps"] == 5
    assert run(FitNeRFConfig(steps=3, lr=0.02, **TINY))["out"] != cube["out"]


def test_mismatched_run_is_not_resumed_or_overwritten(tmp_path, capsys):
    out = tmp_path / "shared"
    run(FitNeRFConfig(steps=3, out=str(out), **TINY))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    res = run(FitNeRFConfig(steps=3, shape="torus", color="blue", out=str(out), **TINY))
    printed = capsys.readouterr().out
    assert "shape: 'cube' -> 'torus'" in printed and "color: 'red' -> 'blue'" in printed, printed
    assert res["out"] == f"{out}-2" and res["start_step"] == 0 and res["steps"] == 3
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    # the same command again finds the torus run next to the cube's
    again = run(FitNeRFConfig(steps=4, shape="torus", color="blue", out=str(out), **TINY))
    assert again["out"] == f"{out}-2" and again["start_step"] == 3 and again["steps"] == 4
    # and the loader itself refuses a checkpoint of another run
    with pytest.raises(ValueError, match="shape: 'cube' -> 'torus'"):
        NeRFTrainer(FitNeRFConfig(steps=3, shape="torus", out=str(out), **TINY)).load()


def _lrs_used(trainer, n):
    """The learning rate of each group at each optimizer step, for n training steps."""
    seen, step = [], trainer.opt.step

    def recording_step(*args, **kwargs):
        seen.append([g["lr"] for g in trainer.opt.param_groups])
        return step(*args, **kwargs)

    trainer.opt.step = recording_step
    for _ in range(n):
        trainer.train_step()
    return seen


def test_resume_with_more_steps_follows_the_longer_schedule(tmp_path):
    short = FitNeRFConfig(steps=8, out=str(tmp_path / "a"), **TINY)
    long = dataclasses.replace(short, steps=16)
    fresh = _lrs_used(NeRFTrainer(dataclasses.replace(long, out=str(tmp_path / "fresh"))), 16)
    assert len({lr[0] for lr in fresh}) == 4  # the schedule decays three times in 16 steps
    a = NeRFTrainer(short)
    assert _lrs_used(a, 4) == fresh[:4]
    a.save()
    b = NeRFTrainer(long)
    assert b.load() and b.step == 4
    assert _lrs_used(b, 12) == fresh[4:]


def test_checkpoint_round_trip_restores_every_state(tmp_path):
    cfg = FitNeRFConfig(steps=20, out=str(tmp_path), **TINY)
    a = NeRFTrainer(cfg)
    for _ in range(3):
        a.train_step()
    a.save()
    rng_a = torch.get_rng_state()
    torch.manual_seed(123)
    b = NeRFTrainer(dataclasses.replace(cfg, steps=30))
    assert b.load() and b.step == 3
    assert torch.equal(torch.get_rng_state(), rng_a)
    assert torch.equal(b.gen.get_state(), a.gen.get_state())
    for name, value in a.estimator.state_dict().items():
        assert torch.equal(b.estimator.state_dict()[name], value), name
    sa, sb = a.opt.state_dict(), b.opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for idx, st in sa["state"].items():
        for key, value in st.items():
            assert torch.equal(sb["state"][idx][key], value), (idx, key)
    b.train_step()
    assert b.step == 4


class _RunsCodeOnUnpickle:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["checkpoint.safetensors", "checkpoint.pt"])
def test_loading_a_crafted_checkpoint_runs_no_code(tmp_path, name):
    out, marker = tmp_path / "run", tmp_path / "code_ran"
    out.mkdir()
    payload = pickle.dumps({"step": 0, "field": _RunsCodeOnUnpickle(marker)})
    for filename in ("checkpoint.safetensors", "checkpoint.pt"):
        (out / filename).write_bytes(payload)
    if name == "checkpoint.pt":
        (out / "checkpoint.safetensors").unlink()
    cfg = FitNeRFConfig(steps=2, out=str(out), **TINY)
    trainer = NeRFTrainer(cfg)
    try:
        trainer.load()
    except Exception:
        pass  # refusing the file is fine; running it is not
    assert not marker.exists()
    res = run(cfg)  # the job neither runs the file nor writes over it
    assert not marker.exists()
    assert res["out"] == f"{out}-2" and res["start_step"] == 0
    assert (out / name).read_bytes() == payload


# Operators that make the host wait for the device on a GPU: reading a value back, and outputs
# whose size depends on the data. pyengine::ray_march reads its total sample count back to size
# its outputs (inside the op, so it is counted here by name) unless it is given a capacity.
_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::bincount",
             "aten::_unique2", "aten::unique_consecutive", "aten::repeat_interleave", "aten::item",
             "pyengine::ray_march"}


class _SyncCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name == "aten::_local_scalar_dense" and any("torch/optim" in f.filename for f in traceback.extract_stack()):
            # Adam reads its step counters, which stay on the CPU when training on a GPU: no wait
            return func(*args, **(kwargs or {}))
        bool_index = name == "aten::index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or [])
        sized = name == "pyengine::ray_march" and args[10] >= 0  # a fixed capacity: no read-back
        if (name in _SYNC_OPS and not sized) or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_training_step_syncs_only_to_size_samples(tmp_path):
    """A training step (no grid update) waits for the device twice: the marcher sizing its output
    and the early-stop compaction sizing the kept samples; without early stopping, once."""
    for eps, want in ((1e-4, ["pyengine::ray_march", "aten::nonzero"]), (0.0, ["pyengine::ray_march"])):
        cfg = FitNeRFConfig(steps=40, out=str(tmp_path / f"eps{eps}"), early_stop_eps=eps, **TINY)
        trainer = NeRFTrainer(cfg)
        for _ in range(cfg.occ_warmup_steps + 1):
            trainer.train_step()
        trainer.step = 1  # an odd step: the grid is not updated (occ_update_every = 2)
        with _SyncCounter() as counter:
            trainer.train_step()
        assert counter.seen == want, counter.seen


def test_compiled_render_step_breaks_only_at_data_dependent_sizes(tmp_path):
    """torch.compile of the renderer's training forward: with dynamic-shape operators captured it is
    one graph; without, it breaks only at the operators whose output size depends on the data
    (the marcher and the early-stop compaction)."""
    import torch._dynamo

    from pyengine.render.volume import render_rays

    trainer = NeRFTrainer(FitNeRFConfig(steps=10, out=str(tmp_path), **TINY))
    g = torch.Generator().manual_seed(0)
    rays_o = torch.rand(64, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0])
    rays_d = torch.tensor([0.0, 0.0, -1.0]) + 0.05 * torch.randn(64, 3, generator=g)
    rays_d = torch.nn.functional.normalize(rays_d, dim=-1)

    def step(o, d):
        return render_rays(trainer.field, trainer.estimator, o, d, **trainer.render_kwargs(True))["rgb"].sum()

    for capture in (True, False):
        torch._dynamo.reset()
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=capture, capture_scalar_outputs=capture):
            ex = torch._dynamo.explain(step)(rays_o, rays_d)
        if capture:
            assert ex.graph_break_count == 0, [b.reason for b in ex.break_reasons]
        else:
            reasons = [b.reason for b in ex.break_reasons]
            assert reasons and all("pyengine.ray_march" in r or "aten.nonzero" in r for r in reasons), reasons


def test_training_step_with_a_sample_budget_never_syncs(tmp_path):
    """With sample_budget the step has static shapes: no read-back at all, early stop or not, with
    the early stop packing into a smaller budget (march_budget) or masking in place."""
    for eps, march in ((1e-4, 0), (0.0, 0), (1e-4, 8192)):
        cfg = FitNeRFConfig(steps=40, out=str(tmp_path / f"eps{eps}-{march}"), early_stop_eps=eps,
                            sample_budget=4096, march_budget=march, **TINY)
        trainer = NeRFTrainer(cfg)
        for _ in range(cfg.occ_warmup_steps + 1):
            trainer.train_step()
        trainer.step = 1
        with _SyncCounter() as counter:
            trainer.train_step()
        assert counter.seen == [], counter.seen
        marched, kept = trainer.last_wanted.tolist()
        assert 0 < kept <= marched <= (march or 4096) and kept <= 4096


def _warm_trainer(tmp_path, steps=30):
    trainer = NeRFTrainer(FitNeRFConfig(steps=steps, out=str(tmp_path), **TINY))
    for _ in range(steps):
        trainer.train_step()
    g = torch.Generator().manual_seed(5)
    cams = trainer.train["cameras"]
    from pyengine.render.camera import rays_for_pixels

    n = 96
    idx = [torch.randint(0, s, (n,), generator=g) for s in (len(cams), 16, 16)]
    rays_o, rays_d = rays_for_pixels(cams, *idx)
    return trainer, rays_o, rays_d


def test_sample_budget_renders_what_the_data_sized_path_renders(tmp_path):
    """Budget above the need: colours, opacity, depth, normals and every parameter gradient equal
    the data-sized rendering (padding and early-stopped samples are zero-length). Budget below it:
    the first rays are still exact, the rest are cut, and wanted_samples says how many there were."""
    from pyengine.render.volume import render_rays

    trainer, rays_o, rays_d = _warm_trainer(tmp_path)
    # a high early-stop threshold, so that this barely trained field has samples to drop
    kw = dict(trainer.render_kwargs(False), with_normals=True, early_stop_eps=0.5)

    def run(**extra):
        trainer.field.zero_grad(set_to_none=True)
        out = render_rays(trainer.field, trainer.estimator, rays_o, rays_d, **kw, **extra)
        (out["rgb"].square().sum() + out["normal"].sum() + out["depth"].sum()).backward()
        return out, [p.grad.clone() for p in trainer.field.parameters()]

    want, want_grads = run()
    S = want["n_samples"]
    assert S > 200
    marched = int(run(sample_budget=20 * S)[0]["wanted_samples"][0])
    assert marched > S, "the early stop dropped samples"
    # masked in place (the budget covers the march), or packed from the march into S + 7 slots
    for budget in ({"sample_budget": marched + 100}, {"sample_budget": S + 7, "march_budget": marched + 50}):
        got, grads = run(**budget)
        assert got["wanted_samples"].tolist() == [marched, S] and got["n_samples"] == budget["sample_budget"]
        for k in ("rgb", "opacity", "depth", "normal"):
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=f"{k} {budget}")
        for a, b in zip(grads, want_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

    cut, _ = run(sample_budget=S // 2)
    assert cut["n_samples"] == S // 2 and cut["wanted_samples"][0] > S // 2
    same = (cut["rgb"] - want["rgb"]).abs().amax(-1) < 1e-5
    first_bad = int(torch.nonzero(~same)[0, 0]) if not same.all() else len(same)
    assert 0 < first_bad < len(same), "the first rays render exactly, a later one is cut"
    assert same[:first_bad].all()


def test_compiled_render_step_with_a_sample_budget_is_one_graph(tmp_path):
    """With a sample budget the renderer's training forward traces to one graph with no graph
    break and no dynamic-shape capture switched on (what CUDA graphs need)."""
    import torch._dynamo

    from pyengine.render.volume import render_rays

    trainer, rays_o, rays_d = _warm_trainer(tmp_path, steps=8)

    for march in (None, 8192):  # masked in place, or packed from a larger march
        def step(o, d, march=march):
            return render_rays(trainer.field, trainer.estimator, o, d, sample_budget=2048, march_budget=march,
                               **trainer.render_kwargs(True))["rgb"].sum()

        torch._dynamo.reset()
        ex = torch._dynamo.explain(step)(rays_o, rays_d)
        assert ex.graph_break_count == 0 and ex.graph_count == 1, [b.reason for b in ex.break_reasons]


def test_sample_budget_is_checked_and_a_cut_is_reported(tmp_path, capsys):
    with pytest.raises(ValueError, match="sample_budget must be an int >= 0"):
        NeRFTrainer(FitNeRFConfig(out=str(tmp_path / "bad"), sample_budget=-1, **TINY))
    with pytest.raises(ValueError, match="march_budget needs sample_budget"):
        NeRFTrainer(FitNeRFConfig(out=str(tmp_path / "bad2"), march_budget=100, **TINY))
    res = run(FitNeRFConfig(steps=10, out=str(tmp_path / "cut"), sample_budget=64, **TINY))
    assert res["samples_cut_max"] > 0
    assert "over march_budget=64 / sample_budget=64" in capsys.readouterr().out


def test_compiled_training_step_with_a_budget_learns(tmp_path):
    """compile="default": the rendering and loss run as one inductor graph, and twelve steps follow
    the eager steps' losses (up to the stratified jitter, drawn by inductor's generator)."""
    with pytest.raises(ValueError, match="compile needs sample_budget > 0"):
        NeRFTrainer(FitNeRFConfig(out=str(tmp_path / "a"), compile="default", **TINY))
    with pytest.raises(ValueError, match="compile must be"):
        NeRFTrainer(FitNeRFConfig(out=str(tmp_path / "b"), compile="max", sample_budget=4096, **TINY))
    import torch._dynamo

    torch._dynamo.reset()
    losses = {}
    for mode in ("", "default"):
        trainer = NeRFTrainer(FitNeRFConfig(steps=20, out=str(tmp_path / f"m{mode}"), sample_budget=8192,
                                            compile=mode, **TINY))
        losses[mode] = [float(trainer.train_step()) for _ in range(12)]
        assert trainer.last_wanted is not None
    eager, compiled = losses[""], losses["default"]
    # step by step the compiled training follows the eager one (same batches, same updates)
    assert all(abs(c - e) < 0.03 * e for c, e in zip(compiled, eager)), losses
    assert compiled[-1] < 0.95 * compiled[0], losses
