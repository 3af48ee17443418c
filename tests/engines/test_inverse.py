"""`pyengine inverse`: one solve writes what it promises, the evaluation tables methods against each
other with paired intervals, the CLI flags reach the config, and bad settings are refused clearly.
Short schedules on the bundled ShapeWorld prior (the solvers' maths is tested in tests/inverse)."""

import json
import math
import os

import pytest
import torch

from pyengine import cli
from pyengine.engines import inverse as inv


def test_one_solve_writes_measurement_samples_mean_std_grid_and_metrics(tmp_path):
    cfg = inv.InverseConfig(task="sr4", method="ddrm", sigma_y=0.05, shapeworld="a green cylinder", samples=3,
                            steps=4, out=str(tmp_path / "run"))
    m = inv.run(cfg)
    for name in ("measurement.png", "mean.png", "std.png", "samples.png", "truth.png", "grid.png", "metrics.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["calls"] == 4 and saved["backward"] == 0  # DDRM: one denoiser call per step, no backprop
    assert len(saved["psnr_samples"]) == 3 and math.isfinite(saved["psnr_mean"])
    # the mean of the samples is at least as close to the truth as the average sample (Jensen)
    assert m["psnr_mean"] >= min(saved["psnr_samples"]) - 1e-6


def test_baseline_and_a_noiseless_inpainting_keep_the_known_pixels(tmp_path):
    cfg = inv.InverseConfig(task="inpaint_box", method="baseline", sigma_y=0.0, shapeworld="a red cube",
                            out=str(tmp_path / "b"))
    m = inv.run(cfg)
    # harmonic fill keeps the measured pixels exactly: the residual is ~0
    assert m["residual_mean"] < 1e-4 and m["psnr_masked_mean"] is not None


def test_metrics_against_independent_formulas():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(inv.psnr(a, b), (-10 * torch.log10(mse)).float())
    assert torch.all(inv.ssim(a, a) > 0.999) and torch.all(inv.ssim(a, b) < 0.5)
    d, lo, hi = inv.paired_bootstrap(torch.tensor([1.0, 2, 3, 4]), torch.tensor([0.0, 1, 2, 3]), 200)
    assert d == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    f1, f2 = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g) + 3
    assert abs(inv.kid(f1, torch.randn(64, 5, generator=g))) < 0.2 < inv.kid(f1, f2)
    # paired sets (a reconstruction of each truth) score about 0, not below the independent case
    assert abs(inv.kid(f1, f1 + 0.01 * torch.randn(64, 5, generator=g))) < 0.05


def test_eval_tables_methods_baselines_and_ccdf_rows_with_intervals(tmp_path):
    cfg = inv.InverseConfig(eval_images=4, eval_batch=2, eval_tasks=["sr4"], eval_sigmas=[0.05],
                            eval_methods=["ddrm", "pigdm"], eval_t0=[0.5], eval_reference="ddrm", eval_bootstrap=50,
                            steps=4, out=str(tmp_path / "eval"))
    s = inv.run(cfg, "eval")
    names = [r["method"] for r in s["rows"]]
    assert names == ["baseline", "ddrm", "pigdm", "ddrm@t0=0.5", "pigdm@t0=0.5"]
    by = {r["method"]: r for r in s["rows"]}
    assert by["ddrm"]["calls_per_image"] == 4 and by["ddrm@t0=0.5"]["calls_per_image"] == 2
    assert "psnr_vs_ddrm" not in by["ddrm"] and len(by["pigdm"]["psnr_vs_ddrm"]) == 3
    lo, hi = by["pigdm"]["psnr_vs_ddrm"][1:]
    assert lo <= by["pigdm"]["psnr_vs_ddrm"][0] <= hi
    assert os.path.getsize(tmp_path / "eval" / "summary.md") > 0
    assert all(math.isfinite(r["psnr"]) and 0 <= r["accuracy"] <= 1 for r in s["rows"])


def test_cli_flags_reach_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr(inv, "run", lambda cfg, command="": seen.update(cfg=cfg, command=command) or {})
    assert cli.main(["inverse", "--task", "inpaint_random", "--method", "dps", "--sigma-y", "0.025",
                     "--shapeworld", "a blue sphere", "--samples", "4", "steps=7"]) == 0
    cfg = seen["cfg"]
    assert (cfg.task, cfg.method, cfg.sigma_y, cfg.shapeworld, cfg.samples, cfg.steps) == (
        "inpaint_random", "dps", 0.025, "a blue sphere", 4, 7)
    assert seen["command"] == ""
    assert cli.main(["inverse", "eval", "eval_images=3"]) == 0 and seen["command"] == "eval"
    assert seen["cfg"].eval_images == 3


@pytest.mark.parametrize("change,match", [({"task": "sr3"}, "task must be one of"),
                                          ({"method": "magic"}, "method must be one of"),
                                          ({"sigma_y": -0.1}, "sigma_y must be"),
                                          ({"t0": 0.0}, "t0 must be in"),
                                          ({"image": "/no/such.png"}, "image must be an existing"),
                                          ({"shapeworld": "a shiny thing"}, "must name a shape")])
def test_bad_settings_raise_clear_errors(tmp_path, change, match):
    cfg = inv.InverseConfig(out=str(tmp_path), steps=2, **change)
    with pytest.raises(ValueError, match=match):
        inv.run(cfg)
