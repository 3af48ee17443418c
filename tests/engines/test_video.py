import importlib.util
import json
import os
import types

import numpy as np
import pytest
import torch

from pyengine.cli import main
from pyengine.data import shapeworld_video as swv
from pyengine.diffusion.text import EMPTY, PAD, BagOfWordsEncoder, Tokenizer, drop_captions
from pyengine.engines import _runs
from pyengine.engines import video as V


def _has_unet3d() -> bool:
    try:
        return importlib.util.find_spec("pyengine.nn.video") is not None and hasattr(
            importlib.import_module("pyengine.nn.video"), "UNet3D")
    except ImportError:
        return False


needs_unet = pytest.mark.skipif(not _has_unet3d(), reason="pyengine.nn.video.UNet3D (the video network) is not in "
                                "this checkout yet; these tests run once it is")

# small enough for seconds on 2 CPU cores
TINY = dict(size=8, frames=4, shapes=["cube", "sphere"], colors=["red", "blue"], directions=["left", "up"],
            train_size=8, heldout_size=8, timesteps=50, steps=4, batch=2, checkpoint_every=2, sample_steps=3,
            n_samples=1, sample_batch=4, gif_scale=2, eval_prompts=2, eval_per_prompt=2, classifier_steps=3,
            classifier_batch=4, classifier_width=4, warmup_steps=0)
TINY_UNET = dict(model_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], heads=2,
                 frame_embedding=True)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(tmp_path, **kw):
    cfg = V.VideoConfig(**{**TINY, **kw}, out=str(tmp_path / "run"))
    cfg.model.text_dim = 8
    cfg.model.kwargs = dict(TINY_UNET)
    return cfg


def _overrides(tmp_path, **kw):
    items = {**TINY, "out": tmp_path / "cli", "model.text_dim": 8, **{f"model.kwargs.{k}": v for k, v in
                                                                       TINY_UNET.items()}, **kw}
    fmt = lambda v: "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v)
    return [f"{k}={fmt(v)}" for k, v in items.items()]


# -- captions and the text encoder ---------------------------------------------------------------------

def test_tokenizer_pads_marks_the_empty_caption_and_names_unknown_words():
    tok = V.tokenizer()
    ids = tok(["a red cube moving left", "an orange torus", ""])
    assert ids.shape == (3, 5) and ids[2, 0] == EMPTY and (ids[2, 1:] == PAD).all()
    assert ids[1, 3:].eq(PAD).all() and tok.vocab[int(ids[0, 1]) - 2] == "red"
    assert torch.equal(tok("A Red CUBE, moving left!"), ids[:1])  # case and punctuation do not matter
    with pytest.raises(ValueError, match="'crimson'"):
        tok("a crimson cube")
    with pytest.raises(ValueError, match="unique"):
        Tokenizer(["a", "a"])


def test_bag_of_words_ignores_padding_and_order():
    tok = V.tokenizer()
    enc = BagOfWordsEncoder(len(tok), 8)
    both = enc(tok(["a red cube", "a red cube moving left"]))
    assert both.shape == (2, 8)
    assert torch.allclose(both[0], enc(tok("a red cube"))[0], atol=1e-6)  # padding is not a word
    assert torch.allclose(enc(tok("cube red a")), enc(tok("a red cube")), atol=1e-6)
    assert not torch.allclose(enc(tok("")), enc(tok("a red cube")))  # the empty caption has its own embedding
    with pytest.raises(TypeError, match="int64"):
        enc(torch.zeros(2, 3))


def test_caption_dropout_replaces_whole_captions_at_the_given_rate():
    ids = V.tokenizer()(["a red cube moving left"] * 4000)
    out = drop_captions(ids, 0.1, torch.Generator().manual_seed(0))
    dropped = out[:, 0] == EMPTY
    assert abs(dropped.float().mean().item() - 0.1) < 0.02
    assert (out[dropped, 1:] == PAD).all() and torch.equal(out[~dropped], ids[~dropped])
    assert drop_captions(ids, 0.0) is ids
    with pytest.raises(ValueError, match="p must be"):
        drop_captions(ids, 1.5)


# -- config -------------------------------------------------------------------------------------------

def test_bad_settings_are_refused(tmp_path):
    for kw, msg in ((dict(shapes=["cube", "pyramid"]), "shapes"), (dict(size=9), "divisible"),
                    (dict(sampler="euler"), "sampler"), (dict(prediction="score"), "prediction"),
                    (dict(formats=["avi"]), "formats"), (dict(n_samples=0), "n_samples")):
        with pytest.raises(ValueError, match=msg):
            V._check(tiny(tmp_path, **kw))
    with pytest.raises(ValueError, match="unknown model.arch 'nope'"):
        V.resolve_arch("nope")


def test_eval_prompts_balance_every_attribute():
    cfg = V.VideoConfig()
    combos = V.eval_combinations(cfg, 140)
    assert len(set(combos)) == 140  # 5, 7 and 4 are pairwise coprime: all distinct
    first = V.eval_combinations(cfg, 28)
    for k, names in enumerate((cfg.shapes, cfg.colors, cfg.directions)):
        counts = [sum(c[k] == n for c in first) for n in names]
        assert max(counts) - min(counts) <= 1, counts
    assert V.default_prompts(V.VideoConfig(prompt="a red cube")) == ["a red cube"]
    assert len(V.default_prompts(cfg)) == 5


def test_config_file_loads():
    from pyengine.config import load_config

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "video_shapeworld.yaml")
    cfg = load_config(V.VideoConfig, path, ["steps=10"])
    assert cfg.model.arch == "unet3d" and cfg.model.kwargs["channel_mult"] == [1, 2, 2] and cfg.steps == 10
    assert (cfg.size, cfg.frames, cfg.prediction, cfg.sampler) == (24, 16, "v", "dpm")
    V._check(cfg)
    assert cfg.model.kwargs["frame_embedding"] is True, "without the frame index the caption cannot steer the motion"


@needs_unet
def test_default_prior_gives_equal_frames_different_outputs():
    # the direction word steers the motion only if the network knows which frame is which (UNet3D's docstring)
    torch.manual_seed(0)
    model = V.build_model(V.VideoConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(1, 1, 8, 8, 3).expand(1, 4, 8, 8, 3).contiguous()
        y = model(x, torch.tensor([900]), V.tokenizer()(["a red cube moving left"]))
    assert (y - y[:, :1]).abs().amax() > 1e-3


def test_arch_by_name():
    try:
        cls = V.resolve_arch("unet3d")
    except ValueError as exc:  # the network is not merged yet
        assert "pyengine.nn.video.UNet3D" in str(exc)
    else:
        assert cls.__name__ == "UNet3D"


# -- writing videos --------------------------------------------------------------------------------------

def test_gif_and_mp4_hold_the_frames(tmp_path, monkeypatch, capsys):
    import imageio.v3 as iio

    frames = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    for t in range(6):
        frames[t, :, 2 * t:2 * t + 4] = (220, 40, 30)  # a red bar moving right
    files = V.write_video(str(tmp_path / "bar"), frames, fps=5)
    gif = iio.imread(files[0])
    assert files[0].endswith(".gif") and gif.shape[:3] == (6, 16, 16)
    assert np.abs(gif[..., :3].astype(int) - frames).max() <= 8  # GIF palette rounding
    if V.mp4_available():
        assert files[1].endswith(".mp4")
        mp4 = iio.imread(files[1])
        assert mp4.shape == (6, 16, 16, 3)
        assert np.abs(mp4.astype(float) - frames).mean() < 12  # lossy
    monkeypatch.setattr(V, "mp4_available", lambda: False)
    assert V.write_video(str(tmp_path / "gif_only"), frames) == [str(tmp_path / "gif_only.gif")]
    grid = V._grid(np.stack([frames] * 6), 2, 3)
    assert grid.shape == (6, 2 * 18 - 2, 3 * 18 - 2, 3) and (grid[:, 16:18] == 128).all()


# -- the evaluation classifier ---------------------------------------------------------------------

def test_classifier_learns_real_clips(tmp_path):
    cfg = V.VideoConfig(size=16, frames=4, shapes=["sphere", "cone"], colors=["red", "blue"],
                        directions=["left", "right"], train_size=32, heldout_size=16, classifier_steps=60,
                        classifier_batch=16, classifier_width=8,
                        classifier=str(tmp_path / "clf.safetensors"))
    res = V.train_classifier(cfg)
    assert os.path.exists(res["path"])
    acc = res["heldout"]
    assert acc["n"] == 16 and min(acc["shape"], acc["color"], acc["direction"]) >= 0.75, acc
    clf, meta = V.load_classifier(cfg)
    held, labels = V.dataset(cfg, "heldout")
    assert V.accuracy(clf.predict(held), labels) == acc == meta["heldout"]
    # the direction is read from the motion: a clip played backwards moves the other way
    back = clf.predict(held.flip(1))
    swap = {swv.DIRECTIONS.index("left"): swv.DIRECTIONS.index("right"),
            swv.DIRECTIONS.index("right"): swv.DIRECTIONS.index("left")}
    want = torch.tensor([swap[int(d)] for d in labels[:, 2]])
    assert (back[:, 2] == want).float().mean() >= 0.75
    with pytest.raises(ValueError, match="trained on size=16"):
        V.load_classifier(V.VideoConfig(size=32, classifier=cfg.classifier))
    with pytest.raises(ValueError, match="does not exist"):
        V.load_classifier(V.VideoConfig(classifier=str(tmp_path / "none.safetensors")))


def test_augmentation_maps_the_direction_as_the_pixels_move():
    clips, labels = swv.dataset("heldout", 16, size=16, frames=4)
    x, y = V.augment(swv.from_uint8(clips), labels, torch.Generator().manual_seed(0))
    assert torch.equal(y[:, :2], labels[:, :2])
    assert not torch.equal(y[:, 2], labels[:, 2])  # some were mirrored or reversed
    for clip, d in zip(x, y[:, 2].tolist()):
        m = ((1 - (clip + 1) / 2).amax(-1) > 0.3).float()  # the object's pixels, frame by frame
        cols = torch.arange(16.0)
        cx = (m * cols[None, None, :]).sum((1, 2)) / m.sum((1, 2))
        cy = -(m * cols[None, :, None]).sum((1, 2)) / m.sum((1, 2))  # image y points up
        moved = torch.stack([cx[-1] - cx[0], cy[-1] - cy[0]])
        assert moved @ torch.tensor(swv.DIRECTION_VECTORS[swv.DIRECTIONS[d]]) > 2, (swv.DIRECTIONS[d], moved)


def test_accuracy_counts_joint_hits():
    labels = torch.tensor([[0, 1, 2], [1, 1, 1], [4, 6, 3], [0, 0, 0]])
    pred = torch.tensor([[0, 1, 2], [1, 0, 1], [4, 6, 0], [2, 0, 0]])
    acc = V.accuracy(pred, labels)
    assert acc == {"shape": 0.75, "color": 0.75, "direction": 0.75, "joint": 0.25, "n": 4}


# -- the prior -------------------------------------------------------------------------------------------

def test_no_prior_says_how_to_train_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(V, "BUNDLED", str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match="pyengine video train --config configs/video_shapeworld.yaml"):
        V.run(tiny(tmp_path), "a red cube moving left")
    assert main(["video", "a red cube moving left", f"out={tmp_path / 'x'}"]) == 1
    assert "no bundled prior" in capsys.readouterr().err


@needs_unet
def test_training_reduces_the_loss(tmp_path):
    cfg = tiny(tmp_path, steps=30, lr=3e-3, ema_decay=0.0, caption_dropout=0.0)
    tr = V.make_trainer(cfg, str(tmp_path / "run"))
    before = np.mean([float(tr.train_step()) for _ in range(4)])
    tr.fit(progress=False)
    after = np.mean([float(tr.train_step()) for _ in range(4)])
    assert after < 0.8 * before, (before, after)


def test_training_timesteps_visit_the_noisiest_tenth_more_often():
    g = torch.Generator().manual_seed(0)
    T, n = 200, 40000
    for f in (0.0, 0.3, 1.0):
        t = V.training_timesteps(n, T, f, g)
        assert t.dtype == torch.long and t.shape == (n,) and int(t.min()) >= 0 and int(t.max()) < T
        top = t >= T - T // 10
        assert float(top.float().mean()) == pytest.approx(f + (1 - f) / 10, abs=0.01), f
        if f < 1:  # below the top tenth the steps stay uniform
            counts = torch.bincount(t[~top] // 20, minlength=9).float()
            assert counts.std() / counts.mean() < 0.05, counts
    with pytest.raises(ValueError, match="high_noise_fraction"):
        V._check(V.VideoConfig(high_noise_fraction=1.5))


@needs_unet
def test_training_draws_its_steps_with_the_high_noise_fraction(tmp_path, monkeypatch):
    seen = []
    real = V.training_loss

    def spy(*args, **kw):
        seen.append(kw.get("t"))
        return real(*args, **kw)
    monkeypatch.setattr(V, "training_loss", spy)
    for f in (0.0, 1.0):
        seen.clear()
        cfg = tiny(tmp_path / str(f), timesteps=50, batch=4, high_noise_fraction=f)
        V.make_trainer(cfg, str(tmp_path / str(f))).train_step()
        if f == 0:
            assert seen == [None], "uniform steps: training_loss draws them itself"
        else:
            assert int(seen[0].min()) >= 45 and seen[0].shape == (4,)


@needs_unet
def test_checkpoint_and_resume_continue_identically(tmp_path):
    a = V.make_trainer(tiny(tmp_path / "a"), str(tmp_path / "a"))
    a.fit(progress=False)
    b = V.make_trainer(tiny(tmp_path / "b", steps=2), str(tmp_path / "b"))
    b.fit(progress=False)
    resumed = V.make_trainer(tiny(tmp_path / "b"), str(tmp_path / "b"))
    assert resumed.load() and resumed.step == 2
    resumed.fit(progress=False)
    for x, y in ((a.model, resumed.model), (a.ema, resumed.ema)):
        sx, sy = x.state_dict(), y.state_dict()
        assert all(torch.equal(sx[k], sy[k]) for k in sx)


@needs_unet
@pytest.mark.parametrize("sampler", ["dpm", "ddim"])
def test_generation_is_seeded_per_clip_and_guided(tmp_path, sampler):
    cfg = tiny(tmp_path, sampler=sampler, sample_batch=1)
    torch.manual_seed(0)
    model = V.build_model(cfg).eval()
    prompts = ["a red cube moving left", "a blue sphere moving up", "a red sphere moving up"]
    one = V.generate(model, cfg, prompts, seed=3)
    assert one.shape == (3, 4, 8, 8, 3) and one.abs().max() <= 1
    batched = V.generate(model, V.replace(cfg, sample_batch=3), prompts, seed=3)
    assert torch.allclose(one, batched, atol=1e-5)  # clip k depends on seed + k, not on the batching
    assert torch.allclose(V.generate(model, cfg, prompts[1:2], seed=4), one[1:2], atol=1e-5)
    with torch.no_grad():  # the zero-initialised U-Net output is not informative: perturb it
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g1 = V.generate(model, V.replace(cfg, guidance=1.0), prompts[:1], seed=3)
    g5 = V.generate(model, V.replace(cfg, guidance=5.0), prompts[:1], seed=3)
    neg = V.generate(model, V.replace(cfg, guidance=5.0, negative_prompt="a blue cube"), prompts[:1], seed=3)
    assert not torch.allclose(g1, g5) and not torch.allclose(g5, neg)
    with pytest.raises(ValueError, match="unknown word"):
        V.generate(model, cfg, ["a crimson cube"])


@needs_unet
def test_train_sample_export_and_eval_jobs(tmp_path, capsys, monkeypatch):
    cfg = tiny(tmp_path, steps=2)
    res = V.run(cfg, "train")
    assert res["steps"] == 2 and os.path.exists(os.path.join(res["out"], _runs.CHECKPOINT))
    res = V.run(tiny(tmp_path, steps=3), "train")
    assert res["start_step"] == 2 and res["steps"] == 3 and "resumed from" in capsys.readouterr().out
    gifs = [f for f in res["files"] if f.endswith(".gif")]
    assert len(gifs) == 3  # one prompt per shape (2) and the grid
    import imageio.v3 as iio

    assert iio.imread(gifs[0]).shape[:3] == (4, 16, 16)  # frames, size * gif_scale
    cfg = tiny(tmp_path, steps=3)
    out = V.run(cfg, "a blue cube moving up")
    assert [os.path.basename(f) for f in out["files"]][0] == "a_blue_cube_moving_up_0.gif"
    # export, then sample and evaluate from the file, which carries its settings
    path = str(tmp_path / "prior.safetensors")
    assert V.run(V.replace(cfg, weights=path), "export")["step"] == 3
    other = V.VideoConfig(weights=path, out=str(tmp_path / "from_file"), sample_steps=2, gif_scale=1,
                          eval_prompts=2, eval_per_prompt=1, heldout_size=4, train_size=8, classifier_steps=2,
                          classifier_batch=4, classifier_width=4, formats=["gif"])
    got = V.weights_config(other)
    assert got.size == 8 and got.frames == 4 and got.shapes == ["cube", "sphere"] and got.model.text_dim == 8
    model, _ = V.load_model(cfg, out["out"])
    loaded, state, _ = V.load_weights_file(got)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b.half().to(b.dtype))  # stored in float16
    res = V.run(V.replace(other, prompt="a red sphere moving left"), "sample")
    assert res["step"] == 3 and res["files"][0].endswith("a_red_sphere_moving_left_0.gif")
    ev = V.run(other, "eval")
    text = capsys.readouterr().out
    assert "generated" in text and "real (held-out)" in text and "joint" in text
    assert ev["generated"]["n"] == 2 and 0 <= ev["generated"]["joint"] <= 1
    with open(os.path.join(ev["out"], "eval.json")) as f:
        saved = json.load(f)
    assert saved["generated"] == ev["generated"] and len(saved["per_prompt"]) == 2
    with pytest.raises(ValueError, match="weights=PATH"):
        V.run(cfg, "export")
    # a prompt with no trained run for the config samples the bundled prior
    monkeypatch.setattr(V, "BUNDLED", path)
    res = V.run(V.VideoConfig(out=str(tmp_path / "bundled"), sample_steps=2, formats=["gif"]), "a red cube moving up")
    assert "sampling the bundled prior" in capsys.readouterr().out
    assert res["files"] == [str(tmp_path / "bundled" / "samples" / "a_red_cube_moving_up_0.gif")]


@needs_unet
def test_cli_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(V, "BUNDLED", str(tmp_path / "none.safetensors"))  # as if none shipped
    args = _overrides(tmp_path, steps=2)
    assert main(["video", "train", *args]) == 0
    assert main(["video", "a red cube moving left", *args, "sampler=ddim", "guidance=2"]) == 0
    assert "ddim, 3 steps, guidance 2.0" in capsys.readouterr().out
    assert main(["video", "a crimson cube", *args]) == 1
    assert "unknown word(s) 'crimson'" in capsys.readouterr().err
    assert main(["video", "sample", *args, "model.text_dim=16"]) == 1  # another model: no run, and no bundled one
    assert os.path.exists(tmp_path / "cli" / "samples" / "a_red_cube_moving_left_0.gif")


@needs_unet
def test_train_under_torchrun_two_processes(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    args = _overrides(tmp_path, steps=2, out=tmp_path / "ddp", formats=["gif"])
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pyengine", "video", "train", *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["ddp"]  # both ranks used rank 0's directory
    _, state = _runs.load_checkpoint(str(tmp_path / "ddp" / _runs.CHECKPOINT))
    assert state["step"] == 2 and state["world_size"] == 2


# -- diffusers pipelines ------------------------------------------------------------------------------

def test_diffusers_loader_checks_the_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        V.load_diffusers_pipeline(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no model_index.json"):
        V.load_diffusers_pipeline(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="TextToVideoSDPipeline"):
        V.load_diffusers_pipeline(str(tmp_path))
    with pytest.raises(ValueError, match="sampler"):
        V.load_diffusers_pipeline(str(tmp_path), sampler="euler")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline"}))
    if importlib.util.find_spec("transformers") is None:
        with pytest.raises(ValueError, match="transformers"):
            V.load_diffusers_pipeline(str(tmp_path))
    with pytest.raises(ValueError, match="prompt="):
        V.run(V.VideoConfig(diffusers=str(tmp_path)), "sample")


def _tiny_diffusers_unet():
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1,
                                cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4)


def test_configure_pipeline_swaps_the_scheduler_and_processors(capsys):
    from diffusers import DDPMScheduler

    pipe = types.SimpleNamespace(unet=_tiny_diffusers_unet(),
                                 scheduler=DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon"))
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = pipe.unet(x, 10, ctx).sample
    info = V.configure_pipeline(pipe, "dpm")
    assert info["scheduler"] == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++" and pipe.scheduler.config.solver_order == 2
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"  # built from the pipeline's own config
    assert V.configure_pipeline(pipe, "ddim", processors=False)["scheduler"] == "DDIMScheduler"
    if importlib.util.find_spec("pyengine.compat.diffusers") is None:
        assert info["processors"] == 0 and "keeping diffusers' attention processors" in capsys.readouterr().out
    else:
        assert info["processors"] > 0
        names = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
        assert all(n.startswith("Pyengine") for n in names), names
        with torch.no_grad():
            after = pipe.unet(x, 10, ctx).sample
        assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()


def test_the_bundled_prior_moves_the_way_the_prompt_says():
    """pyengine/assets/video_prior.safetensors ships: it loads with its own settings and, sampled
    with few steps, draws a red object whose centre moves the way the direction word says."""
    assert os.path.exists(V.BUNDLED), "pyengine/assets/video_prior.safetensors ships with the package"
    cfg = V.weights_config(V.VideoConfig(weights="bundled"))
    assert cfg.size == 24 and cfg.frames == 16 and cfg.model.kwargs["frame_context"]
    model, state, _ = V.load_weights_file(V.replace(cfg, out=os.path.join("runs", "video", "weights-video_prior")))
    assert state["step"] > 0
    prompts = [f"a red cube moving {d}" for d in ("left", "right", "up", "down")]
    clips = V.generate(model, V.replace(cfg, sample_steps=10), prompts, seed=0)  # [4, T, S, S, 3] in [-1, 1]
    assert clips.shape == (4, 16, 24, 24, 3) and torch.isfinite(clips).all()
    red = ((clips[..., 0] - clips[..., 1:].mean(-1)) > 0.5).float()  # [4, T, S, S]: red pixels
    assert (red.sum((2, 3)) > 3).all(), "every frame shows the red object"
    coords = torch.arange(24.0)
    mass = red.sum((2, 3))
    x = (red.sum(2) * coords).sum(-1) / mass  # column of the centre, per frame
    y = (red.sum(3) * coords).sum(-1) / mass  # row
    dx, dy = x[:, -4:].mean(1) - x[:, :4].mean(1), y[:, -4:].mean(1) - y[:, :4].mean(1)
    assert dx[0] < -3 and dx[1] > 3 and dy[2] < -3 and dy[3] > 3, (dx, dy)  # about 5 pixels each
    assert dy[:2].abs().max() < 1 and dx[2:].abs().max() < 1, (dx, dy)  # and not across
