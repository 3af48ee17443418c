"""bench/compare_sds.py on hand-made `sds eval` summaries: per-shape means, the paired difference
and the prompts under the targets."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_bench


def write(path, method, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": [{"prompt": p, "method": method, "r_precision": r, "iou": i}
                                         for p, r, i in rows]}))
    return str(path)


def test_paired_difference_and_misses(tmp_path, capsys):
    bench = load_bench("compare_sds")
    a = write(tmp_path / "a" / "summary.json", "sds",
              [("a red cube", 1.0, 0.80), ("a blue cube", 1.0, 0.90), ("a red sphere", 0.75, 0.60)])
    b = write(tmp_path / "b" / "summary.json", "vsd",
              [("a red cube", 1.0, 0.90), ("a blue cube", 1.0, 0.95), ("a red sphere", 1.0, 0.70),
               ("a green torus", 1.0, 0.9)])  # not in the reference: left out of the pairing
    assert bench.main([a, b, "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "| sds | 3 | 0.917 | 0.767 |" in out
    assert "| cube | 1.000 | 0.850 | 1.000 | 0.925 |" in out  # per shape: sds then vsd
    assert "paired over 3 prompts" in out
    assert "iou: +0.083" in out and "better on 3, worse on 0" in out
    assert "sds: 1 of 3 prompts under R-precision 0.8 or IoU 0.7: a red sphere (0.75, 0.60)" in out
    assert "vsd: 0 of 4 prompts" in out


def test_same_method_twice_names_the_folders(tmp_path, capsys):
    bench = load_bench("compare_sds")
    a = write(tmp_path / "seed0" / "summary.json", "sds", [("a red cube", 1.0, 0.8)])
    b = write(tmp_path / "seed1" / "summary.json", "sds", [("a red cube", 1.0, 0.7)])
    bench.main([a, b])
    assert "sds (seed1) minus sds (seed0)" in capsys.readouterr().out


def test_not_a_summary_is_a_clear_error(tmp_path):
    bench = load_bench("compare_sds")
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"rows": [{"prompt": "a red cube"}]}))
    with pytest.raises(ValueError, match="not a `pyengine sds eval` summary.json"):
        bench.main([str(bad)])
