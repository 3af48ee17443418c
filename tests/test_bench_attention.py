"""Smoke runs of bench/bench_attention.py at tiny sizes: every provider that runs is checked
against the reference before it is timed, and a wrong one is caught."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from pyengine.ops.st_attention import st_attention
from tests.helpers import load_bench

TINY = ["--device", "cpu", "--quick", "--batch", "1", "--heads", "2", "--head-dims", "5", "--frames", "3",
        "--latent", "3", "--spatial-frames", "2", "--spatial-latent", "3", "--reps", "1", "--budget", "1"]
PYENGINE = ("reference", "cpu", "triton", "cuda")


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_attention")


def run(bench, tmp_path, *extra):
    path = tmp_path / "out.json"
    code = 0
    try:
        bench.main(TINY + ["--json", str(path), *extra])
    except SystemExit as exc:
        code = exc.code
    return code, json.loads(path.read_text())


def test_every_provider_checked_then_timed(bench, tmp_path):
    providers = list(PYENGINE) + ["sdpa-rearrange", "sdpa", "flash-attn", "xformers"]
    code, res = run(bench, tmp_path, "--ops", "temporal", "spatial", "floor", "--providers", *providers)
    assert code == 0 and res["mismatches"] == []
    for what in ("temporal attention fwd", "temporal attention fwd+bwd", "spatial attention fwd",
                 "spatial attention fwd+bwd"):
        rows = {r["provider"].split()[0]: r for r in res["rows"] if r["benchmark"] == what}
        assert {"reference", "sdpa-rearrange", "sdpa"} <= set(rows), what
        for prov in providers:
            if prov in rows:
                assert float(rows[prov]["max err"]) <= 5e-3 and float(rows[prov]["ms"]) > 0
            else:  # not run: the reason is printed
                assert any(s.startswith(f"{prov}: ") for s in res["skipped"]), (prov, res["skipped"])
        if what.startswith("temporal"):
            assert all(float(r["GB/s"]) > 0 for r in rows.values())
    assert res["copy_GBps"] > 0


@pytest.mark.parametrize("wrong", ["forward", "backward"])
def test_wrong_provider_is_caught(bench, tmp_path, monkeypatch, wrong):
    right = bench.sdpa_rearrange

    def off(q, k, v, temporal, heads):
        out = right(q, k, v, temporal, heads)
        if wrong == "forward":
            return out * 1.05
        return out + 0.5 * (out - out.detach())  # same values, gradients 1.5x

    monkeypatch.setattr(bench, "sdpa_rearrange", off)
    code, res = run(bench, tmp_path, "--ops", "temporal", "--providers", "reference", "sdpa-rearrange")
    assert code == 1
    bad = {m.split(" B=")[0] for m in res["mismatches"] if "sdpa-rearrange" in m}
    # a wrong output shows in both rows (fwd+bwd checks the output too), wrong gradients in fwd+bwd only
    assert bad == ({"temporal attention fwd+bwd"} | ({"temporal attention fwd"} if wrong == "forward" else set()))
    timed = {(r["benchmark"], r["provider"]) for r in res["rows"]}
    assert ("temporal attention fwd+bwd", "sdpa-rearrange") not in timed
    assert (("temporal attention fwd", "sdpa-rearrange") in timed) == (wrong == "backward")


@pytest.mark.parametrize("mode", ["temporal", "spatial"])
def test_oracle_in_chunks_is_the_reference(bench, mode):
    g = torch.Generator().manual_seed(5)
    q, k, v, go = (torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64) for _ in range(4))
    out, grads = bench.oracle(q, k, v, go, mode == "temporal", 2, torch.float64, budget=1)  # one slice at a time
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    want = st_attention(*leaves, mode=mode, heads=2, backend="reference")
    torch.testing.assert_close(out, want.detach())
    for a, b in zip(grads, torch.autograd.grad(want, leaves, go)):
        torch.testing.assert_close(a, b)


class _Attention(torch.nn.Module):
    """Temporal self-attention with a residual, switchable between pyengine and SDPA."""

    def __init__(self, c, heads, sdpa):
        super().__init__()
        self.qkv, self.heads, self.impl, self.sdpa = torch.nn.Linear(c, 3 * c), heads, "pyengine", sdpa

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        if self.impl == "sdpa":
            return x + self.sdpa(q, k, v, True, self.heads)
        return x + st_attention(q, k, v, mode="temporal", heads=self.heads)


def test_model_rows_with_stand_ins(bench, tmp_path, monkeypatch):
    """The U-Net and diffusers rows, with stand-ins for pyengine.nn.video.UNet3D and
    pyengine.compat.diffusers (diffusers' classic AttnProcessor in place of pyengine's)."""
    pytest.importorskip("diffusers")
    from diffusers.models.attention_processor import AttnProcessor

    class UNet3D(torch.nn.Module):
        def __init__(self, in_channels, out_channels, model_channels, heads):
            super().__init__()
            self.inp = torch.nn.Linear(in_channels, model_channels)
            self.attn = _Attention(model_channels, heads, bench.sdpa_rearrange)
            self.out = torch.nn.Linear(model_channels, out_channels)

        def forward(self, x, t, context=None):
            return self.out(self.attn(self.inp(x) + t.float().view(-1, 1, 1, 1, 1) / 1000))

    video = types.ModuleType("pyengine.nn.video")
    video.UNet3D = UNet3D
    compat = types.ModuleType("pyengine.compat.diffusers")
    compat.set_pyengine_processors = lambda model, spatial="auto": model.set_attn_processor(AttnProcessor())
    monkeypatch.setitem(sys.modules, "pyengine.nn.video", video)
    monkeypatch.setitem(sys.modules, "pyengine.compat.diffusers", compat)
    code, res = run(bench, tmp_path, "--ops", "unet", "diffusers", "--unet-size", "1", "3", "4",
                    "--unet-channels", "8", "--unet-heads", "2", "--diffusers-size", "1", "2", "8")
    assert code == 0 and res["mismatches"] == [], res
    for what, n in (("3D U-Net sampling step (forward)", 2), ("diffusers UNet3DConditionModel forward", 3)):
        rows = [r for r in res["rows"] if r["benchmark"] == what]
        assert len(rows) == n and all(math.isfinite(float(r["ms"])) for r in rows), (what, res["skipped"])
