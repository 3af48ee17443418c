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
    # an exact reconstruction scores the PSNR of 8-bit quantisation noise, 58.9 dB, not 120 or inf
    assert inv.psnr(a, a).tolist() == pytest.approx([10 * math.log10(12 * 255**2)] * 3)
    assert inv.psnr(0.9 * a + 0.3 / 255, 0.9 * a).tolist() == pytest.approx([20 * math.log10(255 / 0.3)] * 3, abs=1e-3)
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


def _eval_cfg(tmp_path, **kw):
    base = dict(eval_images=3, eval_batch=2, eval_tasks=["sr4"], eval_sigmas=[0.05], eval_methods=["ddrm"],
                eval_reference="ddrm", eval_bootstrap=20, steps=3, out=str(tmp_path / "eval"))
    base.update(kw)
    return inv.InverseConfig(**base)


def test_eval_psnr_is_of_the_posterior_mean_of_eval_samples(tmp_path):
    """With ``eval_samples=K`` each image is solved K times in one batch and PSNR is the mean's; an
    independent solve of the first chunk, seeded as the evaluation seeds it, gives the same numbers."""
    cfg = _eval_cfg(tmp_path, eval_samples=3)
    row = next(r for r in inv.run(cfg, "eval")["rows"] if r["method"] == "ddrm")
    from pyengine.diffusion.prior import load_prior
    from pyengine.inverse.base import Problem

    prior = load_prior("shapeworld", device="cpu")
    truth, _ = inv.heldout_images(3, prior.resolution)
    psnrs, sample_psnrs = [], []
    for s in (0, 2):
        t = truth[s:s + 2]
        op, problem = inv._problem("sr4", t, 0.05, cfg.seed + s)
        problem = Problem(op, problem.y.repeat_interleave(3, 0), problem.sigma_y)
        res = inv.solve_batch("ddrm", prior, problem, cfg, torch.Generator().manual_seed(cfg.seed + s))
        x = res.x.reshape(t.shape[0], 3, *t.shape[1:])
        psnrs.append(inv.psnr(x.mean(1), t))
        sample_psnrs.append(inv.psnr(res.x, t.repeat_interleave(3, 0)).reshape(-1, 3).mean(1))
    assert row["samples"] == 3
    assert row["psnr"] == pytest.approx(float(torch.cat(psnrs).mean()), abs=1e-4)
    assert row["psnr_sample"] == pytest.approx(float(torch.cat(sample_psnrs).mean()), abs=1e-4)
    assert row["psnr"] != pytest.approx(row["psnr_sample"], abs=1e-3)  # three different samples, not one


def test_eval_resumes_from_its_chunks_and_solves_again_under_other_settings(tmp_path, monkeypatch):
    first = inv.run(_eval_cfg(tmp_path), "eval")
    assert len(os.listdir(tmp_path / "eval" / "chunks")) == 4  # baseline and ddrm, two chunks each

    def refuse(*a, **k):
        raise AssertionError("solved a chunk that was already there")

    monkeypatch.setattr(inv, "solve_batch", refuse)
    again = inv.run(_eval_cfg(tmp_path), "eval")
    assert [r["psnr"] for r in again["rows"]] == [r["psnr"] for r in first["rows"]]
    with pytest.raises(AssertionError, match="already there"):  # another seed: its chunks are not reused
        inv.run(_eval_cfg(tmp_path, seed=1), "eval")
    with pytest.raises(AssertionError, match="already there"):  # nor when resuming is off
        inv.run(_eval_cfg(tmp_path, eval_resume=False), "eval")
    # assembling only: the chunks that are there make rows, the cells without chunks are named
    only = inv.run(_eval_cfg(tmp_path, eval_methods=["ddrm", "pigdm"], eval_solve=False), "eval")
    assert [r["psnr"] for r in only["rows"]] == [r["psnr"] for r in first["rows"]]
    assert only["incomplete"] == ["sr4 sigma_y 0.05 pigdm (2/2 chunks)"]


def test_eval_budget_stops_starting_chunks_and_a_rerun_goes_on(tmp_path):
    part = inv.run(_eval_cfg(tmp_path, eval_budget_s=1e-9), "eval")  # spent before the second chunk
    assert len(os.listdir(tmp_path / "eval" / "chunks")) == 1 and len(part["incomplete"]) == 2
    whole = inv.run(_eval_cfg(tmp_path), "eval")
    assert not whole["incomplete"] and len(whole["rows"]) == 2


def test_eval_shards_split_the_chunks_and_assemble_the_unsplit_table(tmp_path):
    whole = inv.run(_eval_cfg(tmp_path / "whole", eval_methods=["ddrm", "pigdm"]), "eval")
    part = inv.run(_eval_cfg(tmp_path / "split", eval_methods=["ddrm", "pigdm"], eval_shard="0/2"), "eval")
    assert part["incomplete"] and len(part["rows"]) < len(whole["rows"])
    assert "Incomplete" in (tmp_path / "split" / "eval" / "summary.md").read_text()
    n0 = len(os.listdir(tmp_path / "split" / "eval" / "chunks"))
    assert 0 < n0 < 6  # a share of the six chunks
    rest = inv.run(_eval_cfg(tmp_path / "split", eval_methods=["ddrm", "pigdm"], eval_shard="1/2"), "eval")
    assert not rest["incomplete"] and len(os.listdir(tmp_path / "split" / "eval" / "chunks")) == 6
    for a, b in zip(rest["rows"], whole["rows"]):
        assert (a["method"], a["psnr"], a["kid"], a["accuracy"]) == (b["method"], b["psnr"], b["kid"], b["accuracy"])
        assert a.get("psnr_vs_ddrm") == b.get("psnr_vs_ddrm")


def test_shards_partition_the_chunks_and_balance_their_cost():
    costs = [100.0, 1.0, 50.0, 50.0, 3.0, 0.5, 20.0, 20.0, 7.0]
    for n in (1, 2, 3, 5):
        shares = [inv._shard(list(range(len(costs))), costs, i, n) for i in range(n)]
        assert sorted(k for share in shares for k in share) == list(range(len(costs)))  # each chunk once
        loads = [sum(costs[k] for k in share) for share in shares]
        assert max(loads) - min(loads) <= max(costs)  # greedy, costliest first: within one chunk
    assert inv._chunk_cost("dps", None, inv.InverseConfig(), 8) > inv._chunk_cost("ddrm", None, inv.InverseConfig(), 8)


@pytest.mark.parametrize("change,match", [({"eval_shard": "2/2"}, "eval_shard must be"),
                                          ({"eval_shard": "half"}, "eval_shard must be"),
                                          ({"eval_samples": 0}, "eval_samples must be"),
                                          ({"eval_budget_s": -1}, "eval_budget_s must be")])
def test_bad_eval_settings_raise_clear_errors(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        inv.run(_eval_cfg(tmp_path, **change), "eval")


def test_eval_skips_the_methods_a_task_refuses_and_names_them(tmp_path):
    s = inv.run(_eval_cfg(tmp_path, eval_images=2, eval_tasks=["phase"], eval_methods=["ddrm", "dps"], steps=2),
                "eval")
    assert [r["method"] for r in s["rows"]] == ["baseline", "dps"]
    assert s["not_applicable"] == ["phase ddrm (needs an operator with a spectral view)"]
    assert "Not run" in (tmp_path / "eval" / "summary.md").read_text()


def test_verdicts_read_the_interval_against_the_threshold():
    assert inv._verdict(1.0, 0.2, 1.8, 0.0) == "holds"
    assert inv._verdict(-1.0, -1.8, -0.2, 0.0) == "fails"
    assert inv._verdict(0.3, -0.1, 0.7, 0.0) == "holds (n.s.)"
    assert inv._verdict(-0.7, -1.2, -0.4, -0.5) == "fails (n.s.)"


def test_orderings_check_each_published_claim_on_the_cells_there():
    g = torch.Generator().manual_seed(0)
    base = 20 + torch.rand(40, generator=g)
    noise = lambda: 0.1 * torch.randn(40, generator=g)
    per_image = {("sr4", 0.0, "dps"): base + 5 + noise(), ("sr4", 0.05, "dps"): base + 3 + noise(),
                 ("sr4", 0.0, "ddrm"): base + 5.2 + noise(), ("sr4", 0.05, "ddrm"): base + 3.4 + noise(),
                 ("sr4", 0.0, "scoresde"): base + 5 + noise(), ("sr4", 0.05, "scoresde"): base + 1 + noise(),
                 ("sr4", 0.05, "baseline"): base + noise(), ("sr4", 0.05, "ddrm@t0=0.3"): base + 2 + noise(),
                 ("inpaint_box", 0.05, "mcg"): base + noise(), ("inpaint_box", 0.05, "scoresde"): base + 1 + noise(),
                 ("phase", 0.05, "dps"): base + 4 + noise(), ("phase", 0.05, "baseline"): base + noise()}
    rows = [{"task": t, "sigma_y": s, "method": m, "seconds_per_image": {"dps": 40.0, "ddrm": 2.0}.get(m, 1.0),
             "calls_per_image": {"dps": 1000, "ddrm": 20, "ddrm@t0=0.3": 6}.get(m, 100)} for t, s, m in per_image]
    checks = inv.orderings(per_image, rows, n=200)
    got = {(c["claim"], c["where"]): c for c in checks}
    ddrm = got[("DDRM-20 within 0.5 dB of DPS-1000", "sr4, sigma_y 0.05")]
    assert ddrm["verdict"] == "holds" and abs(ddrm["diff"] - 0.4) < 0.1 and ddrm["time_ratio"] == 0.05
    assert got[("scoresde loses more than dps from sigma_y 0 to 0.05", "sr4")]["verdict"] == "holds"
    assert got[("scoresde loses more than ddrm from sigma_y 0 to 0.05", "sr4")]["diff"] > 2
    assert got[("MCG beats ScoreSDE on inpainting", "inpaint_box, sigma_y 0.05")]["verdict"] == "fails"
    ccdf = got[("CCDF t0 = 0.3 within 0.5 dB of the full ddrm", "sr4, sigma_y 0.05")]
    assert ccdf["verdict"] == "fails" and ccdf["calls_ratio"] == 0.3
    assert got[("dps beats HIO on phase retrieval", "sigma_y 0.05")]["verdict"] == "holds"
    for m in ("dps", "ddrm", "scoresde"):
        assert got[(f"{m} beats the classical baseline", "sr4, sigma_y 0.05")]["verdict"] == "holds"
    assert not any("reddiff" in c["claim"] or "deblur" in c["where"] for c in checks)  # cells not there: no claim
    assert "| DDRM-20 within 0.5 dB of DPS-1000 | sr4, sigma_y 0.05 |" in inv.orderings_table(checks)


def test_psnr_grid_has_a_row_per_place_and_bolds_the_best():
    rows = [{"task": "sr4", "sigma_y": 0.05, "method": m, "psnr": p} for m, p in
            (("baseline", 20.0), ("ddrm", 26.1), ("dps", 24.9), ("ddrm@t0=0.3", 30.0))]
    rows.append({"task": "phase", "sigma_y": 0.0, "method": "dps", "psnr": 30.4})
    lines = inv.psnr_grid(rows).splitlines()
    assert lines[0] == "| task | sigma_y | baseline | ddrm | dps |"
    assert lines[2] == "| sr4 | 0.05 | 20.00 | **26.10** | 24.90 |"  # CCDF rows are not columns
    assert lines[3] == "| phase | 0 |  |  | **30.40** |"


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
