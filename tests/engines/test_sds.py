"""The SDS engine on tiny priors: the distillation gradient, the methods, resume, outputs, errors, CLI, torchrun."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from pyengine.cli import main
from pyengine.data import shapeworld_images as swi
from pyengine.diffusion.prior import Prior, load_prior, view_of
from pyengine.diffusion.schedule import NoiseSchedule
from pyengine.diffusion.shapeworld_prior import ShapeWorldPrior, build_network
from pyengine.engines import _runs
from pyengine.engines import image_prior as ip
from pyengine.engines import sds as S

TINY_PRIOR = dict(size=16, timesteps=50, schedule="cosine", prediction="v",
                  model={"arch": "unet", "text_dim": 8, "kwargs": {"model_channels": 8, "channel_mult": [1, 2],
                                                                  "num_res_blocks": 1, "attention_levels": [1],
                                                                  "heads": 2}})
TINY = dict(render_size=16, n_levels=4, log2_hashmap_size=10, finest_resolution=64.0, hidden=16, grid_resolution=16,
            samples_per_ray=32, iterations=3, turntable_frames=3, turntable_size=16, eval_views=2, mesh_resolution=16,
            checkpoint_every=0, progress=False, occ_warmup=2, occ_update_every=2)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_prior(seed: int = 0) -> ShapeWorldPrior:
    """A random-weight ShapeWorld prior, its output layer randomised too (a fresh U-Net outputs zeros)."""
    torch.manual_seed(seed)
    net = build_network(TINY_PRIOR)
    torch.nn.init.normal_(net.unet.conv_out.conv.weight, std=0.1)
    return ShapeWorldPrior(net, TINY_PRIOR)


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("prior") / "prior.safetensors")
    ip.save_prior_file(tiny_prior(), path)
    return path


def tiny_cfg(tmp_path, prior_file, **kw):
    return S.SDSConfig(**{**TINY, "prior": prior_file, "out": str(tmp_path / "run"), **kw})


class ToyPrior(Prior):
    """eps(x_t, t, text) = 0.5 x_t + text's mean: simple enough to compute the SDS gradient by hand."""

    resolution, latent, channels, prediction, name = 16, False, 3, "eps", "toy prior"

    def __init__(self):
        super().__init__()
        self.schedule = NoiseSchedule.linear(100)
        self.calls = []

    def encode_text(self, prompts):
        return torch.tensor([[float(len(p) % 7) / 7] for p in prompts])

    def encode_images(self, rgb):
        x = rgb * 2 - 1
        x.retain_grad()
        self.last_x = x
        return x

    def decode(self, x):
        return (x + 1) / 2

    def _denoise(self, x_t, t, text):
        self.calls.append((x_t.clone(), t.clone(), text.clone()))
        return 0.5 * x_t + text.mean(-1).view(-1, 1, 1, 1)


# -- the gradient -------------------------------------------------------------------------------------

def test_distillation_loss_has_the_given_gradient_and_zeroes_nans():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    g = torch.randn(2, 3, 4, 4)
    g[0, 0, 0, 0] = float("nan")
    S.distillation_loss(x, g).backward()
    want = torch.nan_to_num(g, nan=0.0) / 2
    torch.testing.assert_close(x.grad, want)


@pytest.mark.parametrize("method, weighting", [("sds", "sds"), ("sds", "uniform"), ("sjc", "sds")])
def test_the_gradient_on_the_render_is_the_analytic_formula(tmp_path, method, weighting):
    prior = ToyPrior()
    cfg = S.SDSConfig(**{**TINY, "out": str(tmp_path / "r"), "method": method, "weighting": weighting,
                         "guidance": 3.0, "lambda_orient": 0.0, "batch": 2, "sjc_samples": 2 if method == "sjc" else 1})
    run = S.SDSRun(cfg, cfg.out, prior)
    assert run.guidance == 3.0 and S.SDSRun(replace(cfg, guidance=0.0), cfg.out, prior).guidance == \
        S.GUIDANCE[method]
    assert run.t_lo == int(S.T_MIN[method] * 100) and run.t_hi == 97  # the method's smallest step, T = 100
    run.train_step()
    x = prior.last_x.detach()
    B = x.shape[0]
    abar = prior.schedule.alphas_cumprod.float()
    grads = []
    for x_t, t, text in prior.calls:  # one guided call per noise draw: [cond; uncond] batched
        x_t, t = x_t[:B], t[:B]
        a = abar[t].view(B, 1, 1, 1)
        noise = (x_t - a.sqrt() * x) / (1 - a).sqrt()
        e_c = 0.5 * x_t + text[:B].mean(-1).view(B, 1, 1, 1)
        e_u = 0.5 * x_t + text[B:].mean(-1).view(B, 1, 1, 1)
        eps_hat = e_u + cfg.guidance * (e_c - e_u)
        if method == "sjc":
            grads.append((eps_hat - noise) / ((1 - a) / a).sqrt())
        else:
            grads.append(((1 - a) if weighting == "sds" else 1.0) * (eps_hat - noise))
        assert ((t >= run.t_lo) & (t <= run.t_hi)).all()
    if method == "sds":  # annealing: the top of the range falls linearly to t_max_end
        ann = S.SDSRun(replace(cfg, t_max_end=0.5, iterations=11), cfg.out, prior)
        tops = []
        for step in (0, 5, 10):
            ann.step = step
            tops.append(ann.t_high())
        assert tops == [int(0.98 * 100) - 1, int(0.74 * 100) - 1, int(0.5 * 100) - 1]
    want = torch.stack(grads).mean(0) / B
    torch.testing.assert_close(prior.last_x.grad, want, rtol=1e-4, atol=1e-5)


def test_each_method_has_its_own_annealing_and_decay_by_default(tmp_path):
    prior = tiny_prior()  # VSD needs a prior that makes a LoRA copy
    T = prior.schedule.T
    base = S.SDSConfig(**{**TINY, "out": str(tmp_path / "r"), "iterations": 11})
    for method in S.METHODS:
        run = S.SDSRun(replace(base, method=method), base.out, prior)
        run.step = 11  # the end of the run
        end = S.T_MAX_END[method]
        assert run.t_high() == (max(int(end * T) - 1, run.t_lo) if end else run.t_hi), method
        assert run._lr_scale() == pytest.approx(0.1 if S.LR_DECAY[method] == "cosine" else 1.0), method
    assert S.T_MAX_END["vsd"] > 0 and S.LR_DECAY["vsd"] == "cosine"
    # explicit settings win over the method's: none for VSD, annealing and decay for SDS
    vsd = S.SDSRun(replace(base, method="vsd", t_max_end=0.0, lr_decay="none"), base.out, prior)
    vsd.step = 11  # the end of the run
    assert vsd.t_high() == vsd.t_hi and vsd._lr_scale() == 1.0
    sds = S.SDSRun(replace(base, t_max_end=0.5, lr_decay="cosine"), base.out, prior)
    sds.step = 11  # the end of the run
    assert sds.t_high() == max(int(0.5 * T) - 1, sds.t_lo) < sds.t_hi and sds._lr_scale() == pytest.approx(0.1)


def test_view_dependent_prompts_follow_dreamfusions_rule():
    assert view_of(torch.tensor([10.0, 10.0, 10.0, 10.0, 70.0]), torch.tensor([10.0, 90.0, 180.0, 300.0, 0.0])) == \
        ["front", "side", "back", "side", "overhead"]
    prior = tiny_prior()
    assert prior.view_prompts("a red cube", [20.0], [170.0]) == ["a red cube, back view"]
    assert swi.view_of(60.0, 0.0) == "overhead"  # the ShapeWorld prior's threshold is 50 degrees


# -- the methods ---------------------------------------------------------------------------------------

def test_vsd_lora_copy_starts_as_the_prior_and_learns(tmp_path, prior_file):
    prior = tiny_prior()
    lora = prior.lora_denoiser(rank=2)
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5, 40])
    ctx = prior.encode_text(["a red cube", ""])
    cam = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(lora(x, t, ctx, cam), prior._denoise(x, t, ctx))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all(".down." in n or ".up." in n or n.startswith("camera.") for n in trainable)
    cfg = tiny_cfg(tmp_path, prior_file, method="vsd", iterations=4)
    run = S.SDSRun(cfg, cfg.out, prior)
    before = {n: p.detach().clone() for n, p in run.lora.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in run.lora.named_parameters() if not p.requires_grad}
    for _ in range(4):
        logs = run.train_step()
    assert "loss_lora" in logs and torch.isfinite(torch.tensor(logs["loss_lora"]))
    after = dict(run.lora.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)


@pytest.mark.parametrize("method", ["sds", "sjc", "vsd"])
def test_every_method_changes_the_field_and_stays_finite(tmp_path, prior_file, method):
    cfg = tiny_cfg(tmp_path, prior_file, method=method, iterations=2)
    run = S.SDSRun(cfg, cfg.out)
    before = [p.detach().clone() for p in run.field.parameters()]
    for _ in range(2):
        run.train_step()
    after = list(run.field.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_shadings_albedo_diffuse_textureless(tmp_path, prior_file):
    cfg = tiny_cfg(tmp_path, prior_file)
    run = S.SDSRun(cfg, cfg.out)
    cams = run.sample_cameras(2)
    lights = run._lights(cams)
    a = run.render(cams, "albedo", False, lights)
    d = run.render(cams, "diffuse", False, lights)
    tl = run.render(cams, "textureless", False, lights)
    bg = torch.ones(3)
    albedo = a["rgb"] - (1 - a["opacity"])[..., None] * bg
    shade = cfg.ambient + (1 - cfg.ambient) * (d["normal"] * lights[:, None, None]).sum(-1, keepdim=True).clamp_min(0)
    torch.testing.assert_close(d["rgb"], albedo * shade + (1 - d["opacity"])[..., None] * bg, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tl["rgb"], a["opacity"][..., None] * shade + (1 - tl["opacity"])[..., None] * bg,
                               rtol=1e-4, atol=1e-5)


# -- runs: resume, outputs, Ctrl-C ------------------------------------------------------------------------

def test_resume_continues_from_the_saved_iteration(tmp_path, prior_file):
    straight = S.run_one(tiny_cfg(tmp_path / "a", prior_file, iterations=4, turntable_frames=0, mesh_formats=[]))
    first = S.run_one(tiny_cfg(tmp_path / "b", prior_file, iterations=2, turntable_frames=0, mesh_formats=[]))
    resumed = S.run_one(tiny_cfg(tmp_path / "b", prior_file, iterations=4, turntable_frames=0, mesh_formats=[]))
    assert resumed["start"] == 2 and resumed["iterations"] == 4
    # the run's seconds count both invocations
    assert resumed["seconds"] == pytest.approx(first["seconds"] + resumed["seconds_this_run"])
    again = S.run_one(tiny_cfg(tmp_path / "b", prior_file, iterations=4, turntable_frames=0, mesh_formats=[]))
    assert again["start"] == 4 and again["seconds"] == pytest.approx(resumed["seconds"] + again["seconds_this_run"])
    for (n, p), q in zip(straight["run"].field.named_parameters(), resumed["run"].field.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_a_run_writes_turntable_views_mesh_and_result(tmp_path, prior_file):
    res = S.run_one(tiny_cfg(tmp_path, prior_file, iterations=2, mesh_threshold=1.0, video_formats=["gif"]))
    out = res["out"]
    for name in ("turntable.gif", "views.png", "result.json", _runs.CHECKPOINT):
        assert os.path.exists(os.path.join(out, name)), name
    import imageio.v3 as iio
    import trimesh

    assert iio.imread(os.path.join(out, "turntable.gif")).shape[0] == 3
    mesh = trimesh.load(os.path.join(out, "mesh.glb"), force="mesh")
    assert len(mesh.faces) > 0
    with open(os.path.join(out, "result.json")) as f:
        assert json.load(f)["iterations"] == 2


def test_ctrl_c_saves_and_still_writes_outputs(tmp_path, prior_file, monkeypatch):
    cfg = tiny_cfg(tmp_path, prior_file, iterations=50, turntable_frames=0, mesh_formats=[])
    calls = {"n": 0}
    real = S.SDSRun.train_step

    def interrupt_on_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(S.SDSRun, "train_step", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        S.run_one(cfg)
    _, state = _runs.load_checkpoint(os.path.join(cfg.out, _runs.CHECKPOINT))
    assert state["step"] == 2
    assert os.path.exists(os.path.join(cfg.out, "views.png"))
    with open(os.path.join(cfg.out, "result.json")) as f:
        assert json.load(f)["interrupted"] is True


# -- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [({"method": "dreamfusion"}, "method"), ({"t_min": 0.9, "t_max": 0.5}, "t_min"),
                                        ({"iterations": 0}, "iterations"), ({"albedo_prob": 1.5}, "albedo_prob"),
                                        ({"background": [1, 1]}, "background"), ({"prompt": " "}, "prompt"),
                                        ({"elevation_range": [30, 10]}, "elevation_range"),
                                        ({"t_max_end": 0.99}, "t_max_end"), ({"lr_decay": "step"}, "lr_decay")])
def test_bad_configs_name_the_setting(kw, match):
    with pytest.raises(ValueError, match=match):
        S.check_config(S.SDSConfig(**kw))


def test_bad_prompts_and_paths_give_clear_errors(tmp_path, prior_file):
    with pytest.raises(ValueError, match="unknown word.*'dragon'"):
        S.SDSRun(tiny_cfg(tmp_path, prior_file, prompt="a red dragon"))
    with pytest.raises(ValueError, match="does not exist"):
        load_prior(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="not a folder"):
        load_prior("sd:" + str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="prompts file"):
        S.run(tiny_cfg(tmp_path, prior_file), "", str(tmp_path / "none.txt"))
    with pytest.raises(ValueError, match="must name a ShapeWorld shape"):
        S._prompt_labels("a red thing")


# -- the CLI, many prompts, eval, torchrun -------------------------------------------------------------------

def _args(tmp_path, prior_file, **kw):
    items = {**TINY, "prior": prior_file, "out": str(tmp_path / "cli"), "mesh_formats": "[]",
             "video_formats": "[gif]", **kw}
    return [f"{k}={v}" for k, v in items.items()]


def test_cli_runs_a_prompt_and_reports_bad_input(tmp_path, prior_file, capsys):
    assert main(["sds", "a blue sphere", *_args(tmp_path, prior_file, iterations=2)]) == 0
    assert os.path.exists(tmp_path / "cli" / "turntable.gif")
    assert main(["sds", "a blue dragon", *_args(tmp_path, prior_file, out=str(tmp_path / "bad"))]) == 1
    assert "dragon" in capsys.readouterr().err


def test_eval_table_on_a_prompts_file(tmp_path, prior_file, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na red cube\n\na green torus\n")
    clf = ip.ImageClassifier(4)
    path = str(tmp_path / "clf.safetensors")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, path,
              metadata={"settings": json.dumps({"classifier_width": 4, "size": 16}),
                        "heldout": json.dumps({"joint": 0.0})})
    cfg = tiny_cfg(tmp_path, prior_file, iterations=1, turntable_frames=0, mesh_formats=[], classifier=path,
                   out=str(tmp_path / "eval"))
    res = S.run(cfg, "eval", str(prompts))
    assert [r["prompt"] for r in res["rows"]] == ["a red cube", "a green torus"]
    for r in res["rows"]:
        assert 0.0 <= r["r_precision"] <= 1.0 and 0.0 <= r["iou"] <= 1.0
    assert "R-precision" in res["table"] and os.path.exists(tmp_path / "eval" / "summary.md")


def test_silhouette_iou_of_the_true_shape_is_one_and_of_nothing_zero():
    cams = swi.ViewSpec("cube", "red").camera(24)
    cams = type(cams).cat([cams, swi.ViewSpec("cube", "red", azimuth_deg=90.0).camera(24)])
    ref = swi.reference_masks("cube", cams, yaw_deg=30.0)
    assert S.silhouette_iou(ref, "cube", cams) > 0.99
    assert S.silhouette_iou(torch.zeros_like(ref), "cube", cams) == 0.0


def test_prompts_are_sharded_across_two_torchrun_processes(tmp_path, prior_file):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\na green cone\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    args = _args(tmp_path, prior_file, iterations=1, turntable_frames=0, out=str(tmp_path / "many"))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pyengine", "sds", "--prompts", str(prompts), *args], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    with open(tmp_path / "many" / "summary.json") as f:
        rows = json.load(f)["rows"]
    assert [r["prompt"] for r in rows] == ["a red cube", "a blue sphere", "a green cone"]
    assert len({os.path.basename(r["out"]) for r in rows}) == 3
    for r in rows:
        assert os.path.exists(os.path.join(r["out"], "views.png"))


def test_prior_file_round_trip_keeps_the_network(tmp_path):
    prior = tiny_prior(3)
    path = str(tmp_path / "p.safetensors")
    ip.save_prior_file(prior, path)
    loaded = load_prior(path)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 30])
    text = prior.encode_text(["a red cube, side view", ""])
    torch.testing.assert_close(loaded.predict_noise(x, t, loaded.encode_text(["a red cube, side view", ""])),
                               prior.predict_noise(x, t, text), rtol=2e-2, atol=2e-2)  # float16 weights
    assert replace(S.SDSConfig(), prior=path).prior == path
