import os

import numpy as np
import pytest
import torch

from pyengine.cli import main
from pyengine.data import shapeworld
from pyengine.data.ply import read_ply
from pyengine.engines import _runs
from pyengine.engines import point_metrics as pm
from pyengine.engines import points as P

# small enough for seconds on 2 CPU cores
TINY = dict(n_points=128, n_partial=32, train_size=10, heldout_size=10, steps=6, batch=4, checkpoint_every=3,
            sample_steps=5, n_samples=1, eval_samples=3, emd_points=32, turntable_frames=2, gif_size=32)


@pytest.fixture(autouse=True)
def one_thread():
    """These models and clouds are tiny: one thread is faster than two, and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(tmp_path, **kw):
    cfg = P.PointsConfig(**{**TINY, **kw}, out=str(tmp_path / "run"))
    cfg.model.hidden, cfg.model.emb_dim = 16, 16
    return cfg


def test_data_is_fixed_per_seed_and_splits_differ():
    cfg = P.PointsConfig(n_points=64, train_size=10, heldout_size=5)
    x, y = P.dataset(cfg, "train")
    assert x.shape == (10, 3, 64) and y.tolist() == [0, 1, 2, 3, 4] * 2
    assert torch.equal(x[3], P.shape_cloud("cone", 3, 64).T)  # cloud i: class i % 5, seed data_seed + i
    h, _ = P.dataset(cfg, "heldout")
    assert not any(torch.allclose(a, b) for a in x for b in h)
    assert float(torch.linalg.vector_norm(x, dim=1).max()) <= 1.0 + 1e-5  # in the unit sphere
    cloud = P.shape_cloud("torus", 1, 256)  # on the shape's surface
    assert cloud.shape == (256, 3) and cloud.std(0).min() > 0.05


def test_partial_cloud_is_one_side_of_a_plane():
    x = P.shape_cloud("sphere", 0, 512).T[None]
    g = torch.Generator().manual_seed(0)
    part, rest = P.partial_cloud(x, 100, g)
    assert part.shape == (1, 3, 100) and rest.shape == (1, 3, 412)
    c = x.mean(-1, keepdim=True)
    assert (part - c).mean(-1).norm() > 0.3  # a hemisphere's centroid is 0.5 r off the centre
    assert (rest - c).mean(-1).norm() < 0.1  # the rest is drawn from the whole sphere


@pytest.mark.parametrize("conditional", [True, False])
def test_pointnet_shapes_and_labels(conditional):
    m = P.PointNetEps(hidden=16, emb_dim=8, num_classes=5 if conditional else 0)
    x, t = torch.randn(2, 3, 50), torch.tensor([0, 999])
    y = torch.tensor([1, 4]) if conditional else None
    assert m(x, t, y).shape == (2, 3, 50)
    if conditional:
        with pytest.raises(ValueError, match="pass y"):
            m(x, t)


def test_arch_by_name():
    assert P.resolve_arch("pointnet") is P.PointNetEps
    with pytest.raises(ValueError, match="unknown model.arch 'nope'"):
        P.resolve_arch("nope")
    try:
        cls = P.resolve_arch("pvd")
    except ValueError as exc:  # the PVCNN2 module is not merged yet
        assert "pyengine.nn.pvcnn.PVCNN2" in str(exc)
    else:
        assert cls.__name__ == "PVCNN2"


def test_training_reduces_the_loss(tmp_path):
    cfg = tiny(tmp_path, steps=40, lr=5e-3, ema_decay=0.0, warmup_steps=0, classes=["sphere"], conditional=False)
    tr = P.make_trainer(cfg, str(tmp_path / "run"))
    before = np.mean([float(tr.train_step()) for _ in range(5)])
    tr.fit(progress=False)
    after = np.mean([float(tr.train_step()) for _ in range(5)])
    assert after < 0.6 * before, (before, after)


def test_checkpoint_and_resume_continue_identically(tmp_path):
    a = P.make_trainer(tiny(tmp_path / "a"), str(tmp_path / "a"))
    a.fit(progress=False)
    b = P.make_trainer(tiny(tmp_path / "b", steps=3), str(tmp_path / "b"))
    b.fit(progress=False)
    resumed = P.make_trainer(tiny(tmp_path / "b"), str(tmp_path / "b"))
    assert resumed.load() and resumed.step == 3
    resumed.fit(progress=False)
    sa, sb = a.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ea, eb = a.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_train_job_resumes_and_writes_ply_and_gif(tmp_path, capsys):
    cfg = tiny(tmp_path, steps=3)
    res = P.run(cfg, "train")
    assert res["steps"] == 3 and os.path.exists(os.path.join(res["out"], _runs.CHECKPOINT))
    res = P.run(tiny(tmp_path, steps=5), "train")
    assert res["start_step"] == 3 and res["steps"] == 5
    assert "resumed from" in capsys.readouterr().out
    plys = res["ply"]
    assert len(plys) == 5 and all(os.path.basename(p).split("_")[0] in shapeworld.SHAPES for p in plys)
    pts = read_ply(plys[0])
    assert pts.shape == (128, 3) and np.isfinite(pts).all()
    import imageio.v3 as iio

    gif = iio.imread(os.path.join(res["out"], "samples", "turntable.gif"))
    assert gif.shape[0] == 2 and gif.shape[1:3] == (5 * 32, 32)  # a row per class


def test_completion_keeps_the_partial_points(tmp_path):
    for task in ("complete", "generate"):
        cfg = tiny(tmp_path / task, task=task, steps=2)
        P.run(cfg, "train")
        model, _ = P.load_model(cfg)
        full, labels = P._heldout_per_class(cfg, 1)
        partial, done = P.complete_clouds(model, cfg, full, labels)
        assert done.shape == full.shape and torch.equal(done[..., :32], partial)
    res = P.run(cfg, "complete")
    assert len(res["cd"]) == 5 and os.path.exists(os.path.join(res["out"], "turntable.gif"))
    assert read_ply(os.path.join(res["out"], "cube_001_completed.ply")).shape == (128, 3)


def test_sample_and_eval_need_a_trained_run_or_the_bundled_prior(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "BUNDLED", str(tmp_path / "no_bundled_prior.safetensors"))
    with pytest.raises(ValueError, match="no trained run"):
        P.run(tiny(tmp_path), "sample")


def test_export_then_sample_from_the_weights_file(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "BUNDLED", P.BUNDLED)
    cfg = tiny(tmp_path, steps=2, classes=["cube", "cone"])
    P.run(cfg, "train")
    model, _ = P.load_model(cfg)
    path = str(tmp_path / "prior.safetensors")
    assert P.run(P.replace(cfg, weights=path), "export")["step"] == 2
    # the file carries its settings: a default config with weights= rebuilds the same model
    other = P.PointsConfig(weights=path, out=str(tmp_path / "from_file"), sample_steps=3, n_samples=1,
                           turntable_frames=2, gif_size=32)
    got = P.weights_config(other)
    assert got.classes == ["cube", "cone"] and got.n_points == 128 and got.model.hidden == 16
    loaded, state, out = P.load_weights_file(got)
    assert state["step"] == 2 and out == str(tmp_path / "from_file")
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b.half().to(b.dtype))  # stored in float16
    res = P.run(other, "sample")
    assert len(res["ply"]) == 2 and read_ply(res["ply"][0]).shape == (128, 3)
    with pytest.raises(ValueError, match="does not exist"):
        P.run(P.replace(other, weights=str(tmp_path / "missing.safetensors")), "sample")
    with pytest.raises(ValueError, match="weights=PATH"):
        P.run(cfg, "export")
    with pytest.raises(ValueError, match="weights=PATH"):
        P.run(P.replace(cfg, weights="bundled"), "export")  # never overwrite the packaged prior
    # that file as the bundled prior: weights=bundled, and the fallback of a config with no run
    P.BUNDLED = path  # (monkeypatch restores it)
    got = P.run(P.replace(other, weights="bundled"), "sample")
    assert len(got["ply"]) == 2
    fallback = P.run(tiny(tmp_path / "never_trained", classes=["sphere"], sample_steps=3, n_samples=1), "sample")
    # the file's settings (its classes), not the config's
    assert {os.path.basename(f).split("_")[0] for f in fallback["ply"]} == {"cube", "cone"}


# -- metrics ----------------------------------------------------------------------------------------

def test_chamfer_and_emd_on_hand_made_clouds():
    a = torch.tensor([[0.0, 0, 0], [1, 0, 0]])
    b = torch.tensor([[0.0, 0, 1], [1, 0, 1]])
    assert pm.chamfer(a, a).item() == 0 and pm.chamfer(a, b).item() == pytest.approx(2.0)  # 1 + 1, squared
    assert pm.emd(a, b) == pytest.approx(1.0)
    c = torch.tensor([[1.0, 0, 0], [0, 0, 0]])  # the same set reordered: matching finds it
    assert pm.emd(a, c) == pytest.approx(0.0)
    d = torch.tensor([[0.0, 0, 0], [0, 0, 0]])  # Chamfer lets both points share a neighbour, EMD does not
    assert pm.chamfer(a, d).item() == pytest.approx(0.5) and pm.emd(a, d) == pytest.approx(0.5)


def test_chamfer_matrix_matches_brute_force():
    A, B = _clouds(3, 0), _clouds(4, 1)[:, :29]  # other sizes too
    want = torch.stack([torch.stack([pm.chamfer(a, b) for b in B]) for a in A])
    got = pm.chamfer_matrix(A, B)
    assert got.shape == (3, 4) and torch.allclose(got, want, rtol=1e-5, atol=1e-7), (got - want).abs().max()


def _clouds(n, seed, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 32, 3, generator=g) * 0.3 + offset


def test_1nna_same_distribution_is_about_half():
    res = pm.evaluate_generation(_clouds(40, 0), _clouds(40, 1), emd_points=16)
    assert 0.35 <= res["1nna_cd"] <= 0.65 and 0.35 <= res["1nna_emd"] <= 0.65, res


def test_1nna_separated_sets_is_100_percent_and_copies_0():
    gen, ref = _clouds(10, 0, offset=5.0), _clouds(10, 1)
    res = pm.evaluate_generation(gen, ref, emd_points=16)
    assert res["1nna_cd"] == 1.0 and res["1nna_emd"] == 1.0
    copies = pm.evaluate_generation(ref.clone(), ref, emd_points=0)
    assert copies["1nna_cd"] == 0.0  # memorised: every cloud's nearest neighbour is its copy


def test_eval_job_prints_a_table(tmp_path, capsys):
    cfg = tiny(tmp_path, steps=2, classes=["cube", "torus"])
    P.run(cfg, "train")
    res = P.run(cfg, "eval")
    out = capsys.readouterr().out
    assert "1-NNA-CD %" in out and "completion CD" in out and "torus" in out and "mean" in out
    assert [r["class"] for r in res["rows"]] == ["cube", "torus", "mean"]
    assert all(0 <= r["1nna_cd"] <= 100 for r in res["rows"])
    assert os.path.exists(os.path.join(res["out"], "eval.json"))
    quick = P.run(P.replace(cfg, eval_complete=False), "eval")  # generation only: no completion column
    assert all("completion_cd" not in r and 0 <= r["1nna_cd"] <= 100 for r in quick["rows"])
    assert [r["1nna_cd"] for r in quick["rows"]] == [r["1nna_cd"] for r in res["rows"]]  # same seeds, same clouds


def test_cli_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(P, "BUNDLED", str(tmp_path / "no_bundled_prior.safetensors"))
    args = [f"{k}={v}" for k, v in TINY.items()] + [f"out={tmp_path / 'cli'}", "steps=2", "model.hidden=16",
                                                      "classes=[sphere,cone]", "conditional=false", "timesteps=50"]
    assert main(["points", "train", *args]) == 0
    assert main(["points", "sample", *args, "sampler=ddpm"]) == 0
    assert "samples from step 2 (ddpm, 50 steps)" in capsys.readouterr().out
    assert main(["points", "sample", *args, "model.hidden=8"]) == 1  # another model, no run, no bundled prior
    assert "no trained run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["points", "fly", *args])


def test_the_bundled_prior_loads_and_samples(tmp_path):
    assert os.path.exists(P.BUNDLED), "pyengine/assets/points_prior.safetensors ships with the package"
    cfg = P.weights_config(P.PointsConfig(weights="bundled"))
    assert cfg.model.arch == "pvd" and cfg.classes == ["cube"] and not cfg.conditional and cfg.prediction == "v"
    model, state, _ = P.load_weights_file(P.replace(cfg, out=str(tmp_path)))
    assert state["step"] > 0
    cfg = P.replace(cfg, sample_steps=4, clip_x0=1.0)  # few steps: seconds
    x = P.generate(model, cfg, 2, None, seed=0)
    assert x.shape == (2, 3, 2048) and torch.isfinite(x).all() and x.abs().max() <= 1.5


def test_pvd_config_file_loads():
    from pyengine.config import load_config

    cfg = load_config(P.PointsConfig, os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                                   "points_pvd.yaml"), ["steps=10"])
    assert cfg.model.arch == "pvd" and cfg.model.kwargs["embed_dim"] == 64 and cfg.classes == ["cube"]
    assert (cfg.beta_start, cfg.beta_end, cfg.timesteps, cfg.steps) == (1e-4, 0.02, 1000, 10)


def test_train_under_torchrun_two_processes(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    args = [f"{k}={v}" for k, v in TINY.items()] + [f"out={tmp_path / 'ddp'}", "steps=3", "model.hidden=16",
                                                      "timesteps=20"]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pyengine", "points", "train", *args], env=env, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["ddp"]  # both ranks used rank 0's directory
    _, state = _runs.load_checkpoint(str(tmp_path / "ddp" / _runs.CHECKPOINT))
    assert state["step"] == 3 and state["world_size"] == 2
    assert len([f for f in os.listdir(tmp_path / "ddp" / "samples") if f.endswith(".ply")]) == 5
