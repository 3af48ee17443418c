"""A smoke run of bench/bench_antialias.py at tiny sizes on the CPU: every row exists for both
providers with a positive time, and the scene it renders has silhouettes to antialias."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_antialias")


def test_rows_on_cpu(bench, tmp_path):
    path = tmp_path / "out.json"
    bench.main(["--device", "cpu", "--size", "2", "24", "20", "--sphere", "6", "8", "--tex-size", "16", "--reps",
                "2", "--json", str(path)])
    res = json.loads(path.read_text())
    rows = {(r["benchmark"], r["provider"]) for r in res["rows"]}
    names = ["antialias fwd", "antialias with topology", "antialias fwd + bwd", "texture linear fwd",
             "texture linear fwd + bwd", "texture nearest fwd", "texture nearest fwd + bwd"]
    assert rows == {(n, p) for n in names for p in ("reference", "cpu")}
    assert all(float(r["ms"]) > 0 for r in res["rows"])


def test_sphere_scene_has_silhouettes(bench):
    color, rast, pos, tri = bench.antialias_inputs(2, 32, 32, 8, 12, "cpu")
    covered = rast[..., 3] > 0
    assert 0.2 < float(covered.float().mean()) < 0.8  # the sphere fills part of the image
    out = bench.antialias(color, rast, pos, tri, backend="cpu")
    assert not torch.equal(out, color)
    # a closed mesh: no boundary edges, so only the outline (and no interior edge) is blended
    assert int((bench.antialias_topology(tri) < 0).sum()) == 0
    changed = (out != color).any(-1)
    edge = covered ^ torch.roll(covered, 1, 1) | covered ^ torch.roll(covered, 1, 2)
    edge = edge | torch.roll(edge, -1, 1) | torch.roll(edge, -1, 2)
    assert bool((changed & ~edge).sum() == 0)
