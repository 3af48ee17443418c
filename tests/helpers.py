"""Test helpers shared by every test file."""

import torch


def assert_close(actual, expected, atol, rtol, what=""):
    """torch.testing-style check that reports max and mean differences."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    diff = (a - e).abs()
    # equal values (infinities included) and NaN against NaN agree; any other NaN does not
    same = (a == e) | (a.isnan() & e.isnan())
    bad = ~same & ~(diff <= atol + rtol * e.abs())
    diff = torch.where(same, torch.zeros_like(diff), diff)
    if bad.any():
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{diff.numel()} elements differ; max abs diff {diff.max().item():.3e}, "
            f"mean {diff.mean().item():.3e} (atol {atol}, rtol {rtol})"
        )


def load_bench(name: str):
    """The module of ``bench/<name>.py`` (bench/ is scripts, not a package)."""
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
