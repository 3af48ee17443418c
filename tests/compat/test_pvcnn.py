"""pyengine.compat.pvcnn: PVCNN's ``modules.functional`` API on pyengine's ops, and install_pvcnn."""

import importlib
import sys

import pytest
import torch

import pyengine.compat
from pyengine.compat.pvcnn import functional as F
from pyengine.ops.voxelize import avg_voxelize, trilinear_devoxelize
from pyengine.reference import furthest_point_sample as ref_fps
from tests.helpers import assert_close


@pytest.fixture
def clean_modules():
    """Removes what a test registers under ``modules`` / ``third_party`` from sys.modules."""
    yield
    for name in list(sys.modules):
        if name.split(".")[0] in ("modules", "third_party"):
            del sys.modules[name]
    sys.modules.pop("tests.compat.pvd_style", None)


def test_voxel_ops_pvcnn_signatures():
    torch.manual_seed(0)
    feats = torch.randn(2, 4, 30, requires_grad=True)
    vox = torch.randint(0, 5, (2, 3, 30), dtype=torch.int32)
    grid = F.avg_voxelize(feats, vox, 5)  # PVCNN returns the grid only
    assert isinstance(grid, torch.Tensor) and torch.equal(grid, avg_voxelize(feats, vox, 5))
    assert torch.equal(F.avg_voxelize(feats, vox.float() + 0.7, 5), grid)  # coords.int() truncates
    coords = (torch.rand(2, 3, 30) * 4).requires_grad_()
    out = F.trilinear_devoxelize(grid, coords, 5, True)  # PVCNN returns outs only, in both modes
    assert torch.equal(out, F.trilinear_devoxelize(grid, coords, 5, False))
    assert_close(out, trilinear_devoxelize(grid, coords, 5), atol=0, rtol=0)
    out.sum().backward()
    assert coords.grad is None and feats.grad is not None  # no coordinate gradient, as PVCNN


def test_point_ops_pvcnn_semantics():
    torch.manual_seed(1)
    coords = torch.randn(2, 3, 40, requires_grad=True)
    centers = F.furthest_point_sample(coords, 8)  # coordinates, not indices
    assert centers.shape == (2, 3, 8) and centers.dtype == coords.dtype
    idx = ref_fps.furthest_point_sample(coords.detach(), 8)  # the specification's indices
    assert torch.equal(centers, F.gather(coords, idx))
    nbr = F.ball_query(centers, coords, 0.7, 5)
    assert nbr.shape == (2, 8, 5) and not nbr.is_floating_point()
    feats = torch.randn(2, 6, 40, requires_grad=True)
    assert F.grouping(feats, nbr).shape == (2, 6, 8, 5)
    interp = F.nearest_neighbor_interpolate(coords, centers, F.gather(feats, idx))
    assert interp.shape == (2, 6, 40)
    interp.sum().backward()
    assert coords.grad is None and feats.grad is not None


def test_losses_and_logits_mask():
    torch.manual_seed(2)
    x, y = torch.randn(4, 5), torch.randn(4, 5, requires_grad=True)
    p = torch.softmax(x, 1)
    assert_close(F.kl_loss(x, y), (p * (p.log() - torch.log_softmax(y, 1))).sum(1).mean(), atol=1e-6, rtol=1e-6)
    e = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0])
    want = torch.nn.functional.huber_loss(e, torch.zeros(5), delta=1.0)
    assert_close(F.huber_loss(e, 1.0), want, atol=1e-6, rtol=1e-6)
    coords = torch.randn(3, 3, 20)
    logits = torch.randn(3, 2, 20)
    logits[1, 1] = -10  # no foreground in cloud 1
    logits[2, 1, 3:] = -10
    logits[2, 0, :3] = -10  # exactly 3 candidates in cloud 2
    sel, mean, mask = F.logits_mask(coords, logits, 6)
    assert sel.shape == (3, 3, 6) and mean.shape == (3, 3) and mask.dtype == torch.bool
    assert_close(mean[2], coords[2, :, :3].mean(1), atol=1e-6, rtol=1e-6)
    got = {tuple(v) for v in (sel[2] + mean[2][:, None]).T.tolist()}
    assert len(got) == 3  # every candidate, twice
    assert_close(sel[1], torch.zeros(3, 6), atol=0, rtol=0)


def test_install_registers_names(clean_modules):
    module = pyengine.compat.install_pvcnn()
    assert module is F
    import modules.functional as G
    from modules.functional.sampling import furthest_point_sample

    assert G is F and furthest_point_sample is F.furthest_point_sample
    assert sys.modules["modules"] is pyengine.compat.pvcnn and sys.modules["modules"].functional is F
    from modules import PVConv, SharedMLP

    assert PVConv is pyengine.nn.PVConv and SharedMLP is pyengine.nn.SharedMLP
    other = object()
    sys.modules["third_party.pvcnn.functional"] = other
    assert pyengine.compat.install_pvcnn("third_party.pvcnn.functional") is other
    assert pyengine.compat.install_pvcnn("third_party.pvcnn.functional", force=True) is F
    import third_party.pvcnn.functional

    assert third_party.pvcnn.functional is F


def test_install_keeps_an_importable_parent(tmp_path, monkeypatch, clean_modules):
    pkg = tmp_path / "modules"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from modules.layer import ops\n")
    (pkg / "layer.py").write_text("import modules.functional as F\nops = F\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pyengine.compat.install_pvcnn()
    import modules

    assert modules.__file__ == str(pkg / "__init__.py") and modules.ops is F and modules.functional is F


def test_pvd_style_model_runs_unchanged(clean_modules):
    pyengine.compat.install_pvcnn()
    pvd_style = importlib.import_module("tests.compat.pvd_style")
    torch.manual_seed(3)
    model = pvd_style.TinyDenoiser()
    x = torch.randn(2, 3, 128)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(5):
        loss = (model(x, torch.tensor([10.0, 500.0])) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters())
