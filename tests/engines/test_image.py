import os

from pyengine.engines import _runs
from pyengine.engines.image import FitImageConfig, run

TINY = dict(size=32, steps=5, batch=256, n_levels=4, log2_hashmap_size=10, hidden=16)


def test_fit_image_learns(tmp_path):
    res = run(FitImageConfig(size=64, steps=60, batch=4096, out=str(tmp_path)))
    assert res["psnr"] > 22.0, res
    assert (tmp_path / "reconstruction.png").exists() and (tmp_path / "target.png").exists()
    tensors, state = _runs.load_checkpoint(str(tmp_path / "checkpoint.safetensors"))
    assert state["job"] == "fit-image" and state["config"]["steps"] == 60
    assert any(k.startswith("model.grid.") for k in tensors) and any(k.startswith("model.mlp.") for k in tensors)


def test_settings_never_share_or_overwrite_a_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a = run(FitImageConfig(**TINY))
    b = run(FitImageConfig(**{**TINY, "lr": 0.02}))
    assert a["out"] != b["out"] and os.path.basename(a["out"]).startswith("procedural32-")
    assert run(FitImageConfig(**TINY))["out"] == a["out"]  # the same setting again: same directory
    shared = tmp_path / "shared"
    run(FitImageConfig(**TINY, out=str(shared)))
    before = {f.name: f.read_bytes() for f in shared.iterdir()}
    c = run(FitImageConfig(**{**TINY, "steps": 6}, out=str(shared)))
    assert "steps: 5 -> 6" in capsys.readouterr().out
    assert c["out"] == f"{shared}-2"
    assert {f.name: f.read_bytes() for f in shared.iterdir()} == before
