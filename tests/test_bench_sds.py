"""Smoke runs of bench/bench_sds.py at tiny sizes on the CPU: the rows exist with positive
timings, the phases add up to the iteration, the peers' code path runs on pyengine's drop-ins for
tiny-cuda-nn and nerfacc (the real ones need a GPU), and a provider that fails is reported."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import load_bench

TINY = ["--device", "cpu", "--quick", "--iters", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_sds")


def run(bench, tmp_path, *extra):
    path = tmp_path / "out.json"
    bench.main(TINY + ["--json", str(path), *extra])
    return json.loads(path.read_text())


def by_provider(res):
    return {r["provider"]: r for r in res["results"]}


def test_pyengine_and_reference_rows(bench, tmp_path):
    res = run(bench, tmp_path, "--providers", "pyengine", "reference", "tcnn+nerfacc")
    got = by_provider(res)
    assert set(got) == {"pyengine", "reference"}
    for r in got.values():
        assert r["iterations"] == 2 and r["render_size"] == 8 and r["samples"] > 0
        for phase in ("render", "prior", "backward", "total"):
            assert r[f"{phase}_ms"] > 0, (phase, r)
        # medians of the phases need not add up exactly, but an iteration is at least its largest phase
        assert r["total_ms"] >= 0.5 * max(r["render_ms"], r["prior_ms"], r["backward_ms"])
        # the same field, grid and view: the fused ops render what the reference renders
        assert r["max_diff"] < 1e-4
    assert {r["provider"] for r in res["rows"]} == {"pyengine", "reference (sanity check)"}
    assert [float(r["total / pyengine"]) for r in res["rows"]][0] == 1.0
    # tiny-cuda-nn is not installed here and nerfacc runs on CUDA only: skipped with the reason
    assert any(s.startswith("tcnn+nerfacc: ") for s in res["skipped"]), res["skipped"]
    assert res["config"]["n_levels"] == 2 and res["config"]["render_size"] == 0


def test_peer_code_path_on_drop_ins(bench, tmp_path, monkeypatch):
    """The tcnn / nerfacc providers' code (TcnnGrid, nerfacc_render) against pyengine's drop-ins,
    which follow tiny-cuda-nn's and nerfacc 0.5.3's APIs on the CPU: same images as pyengine's."""
    from pyengine.compat import nerfacc, tcnn

    monkeypatch.setattr(bench, "peer_modules", lambda device: {"tcnn": tcnn, "nerfacc": nerfacc})
    res = run(bench, tmp_path, "--providers", "pyengine", "tcnn+nerfacc", "tcnn", "nerfacc", "--method", "sjc")
    got = by_provider(res)
    assert set(got) == {"pyengine", "tcnn+nerfacc", "tcnn", "nerfacc"}, res["skipped"]
    for name, r in got.items():
        assert r["total_ms"] > 0 and r["render_ms"] > 0 and r["backward_ms"] > 0, name
        assert r["max_diff"] < 1e-4, (name, r["max_diff"])
    # the same draws and the same occupancy grid: the same number of samples
    assert len({r["samples"] for r in got.values()}) == 1


def test_tcnn_grid_matches_the_hash_grid(bench):
    """TcnnGrid (here on the tcnn drop-in) copies the table and maps the bounds as HashGrid does."""
    from pyengine.compat import tcnn
    from pyengine.nn.hash_grid import HashGrid

    torch.manual_seed(0)
    grid = HashGrid(n_input_dims=3, n_levels=3, log2_hashmap_size=9, base_resolution=4.0, per_level_scale=1.5,
                    bounds=[[-1.0, -2.0, -1.0], [1.0, 1.0, 2.0]], init_scale=0.5)
    tg = bench.TcnnGrid(tcnn, grid, torch.float32)
    assert tg.copied
    x = torch.rand(2, 37, 3) * torch.tensor([2.0, 3.0, 3.0]) + torch.tensor([-1.0, -2.0, -1.0])
    torch.testing.assert_close(tg(x), grid(x))


def test_failing_provider_is_reported(bench, tmp_path, monkeypatch):
    from pyengine.compat import nerfacc, tcnn

    def broken(*args, **kwargs):
        raise RuntimeError("no double backward here")

    monkeypatch.setattr(bench, "peer_modules", lambda device: {"tcnn": tcnn, "nerfacc": nerfacc})
    monkeypatch.setattr(bench, "nerfacc_render", broken)
    res = run(bench, tmp_path, "--providers", "pyengine", "nerfacc")
    assert set(by_provider(res)) == {"pyengine"}
    assert any(s.startswith("nerfacc") and "no double backward here" in s for s in res["skipped"]), res["skipped"]
