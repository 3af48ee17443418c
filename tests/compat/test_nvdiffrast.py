"""pyengine.compat.nvdiffrast: nvdiffrast.torch's call signatures over pyengine's ops, a
threestudio-style render through it, and clear errors for what it does not provide."""

import pytest
import torch

import pyengine.compat.nvdiffrast as dr
from pyengine.ops.antialias import antialias
from pyengine.ops.rasterize import interpolate, rasterize
from pyengine.ops.texture import texture


def _mesh(seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.cat([torch.rand(2, 9, 2, generator=g) * 1.6 - 0.8, torch.rand(2, 9, 1, generator=g) * 0.5,
                     torch.ones(2, 9, 1)], -1)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [1, 4, 7]], dtype=torch.int32)
    return pos, tri


def test_calls_match_the_ops():
    pos, tri = _mesh()
    ctx = dr.RasterizeCudaContext()
    rast, rast_db = dr.rasterize(ctx, pos, tri, resolution=[12, 10])
    assert torch.equal(rast, rasterize(pos, tri, (12, 10))) and torch.equal(rast_db, torch.zeros_like(rast))
    col = torch.rand(2, 9, 3, generator=torch.Generator().manual_seed(1))
    out, da = dr.interpolate(col, rast, tri)
    assert torch.equal(out, interpolate(col, rast, tri)) and da.shape == (2, 12, 10, 0)
    topo = dr.antialias_construct_topology_hash(tri)
    assert torch.equal(dr.antialias(out, rast, pos, tri, topology_hash=topo), antialias(out, rast, pos, tri))
    tex = torch.rand(1, 5, 7, 3, generator=torch.Generator().manual_seed(2))
    uv = torch.rand(2, 4, 4, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(dr.texture(tex, uv), texture(tex, uv, "linear", "wrap"))
    assert torch.equal(dr.texture(tex, uv, filter_mode="nearest", boundary_mode="clamp"),
                       texture(tex, uv, "nearest", "clamp"))


def test_a_threestudio_style_render_has_gradients():
    pos, tri = _mesh(4)
    pos = pos.requires_grad_()
    col = torch.rand(9, 3, generator=torch.Generator().manual_seed(5)).requires_grad_()
    ctx = dr.RasterizeGLContext()
    rast, _ = dr.rasterize(ctx, pos, tri, (16, 16))
    img, _ = dr.interpolate(col, rast, tri)
    img = dr.antialias(img, rast, pos, tri)
    img.square().sum().backward()
    assert pos.grad.abs().sum() > 0 and col.grad.abs().sum() > 0


def test_what_is_not_provided_says_so():
    pos, tri = _mesh()
    ctx = dr.RasterizeCudaContext()
    with pytest.raises(NotImplementedError, match="range mode"):
        dr.rasterize(ctx, pos[0], tri, (4, 4), ranges=torch.tensor([[0, 2], [2, 2]], dtype=torch.int32))
    rast, _ = dr.rasterize(ctx, pos, tri, (4, 4))
    with pytest.raises(NotImplementedError, match="diff_attrs"):
        dr.interpolate(torch.rand(9, 2), rast, tri, diff_attrs="all")
    tex, uv = torch.rand(1, 4, 4, 3), torch.rand(1, 2, 2, 2)
    with pytest.raises(NotImplementedError, match="mipmaps"):
        dr.texture(tex, uv, filter_mode="linear-mipmap-linear")
    with pytest.raises(NotImplementedError, match="cube"):
        dr.texture(tex, uv, boundary_mode="cube")
    with pytest.raises(TypeError, match="glctx"):
        dr.rasterize("gl", pos, tri, (4, 4))


def test_install_makes_import_nvdiffrast_torch_the_shim(monkeypatch):
    import sys

    import pyengine.compat

    for name in ("nvdiffrast", "nvdiffrast.torch"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    shim = pyengine.compat.install_nvdiffrast(force=True)
    import nvdiffrast
    import nvdiffrast.torch as dr2

    assert dr2 is shim is dr and nvdiffrast.torch is shim
    assert pyengine.compat.install_nvdiffrast() is shim  # already installed: kept
    for name in ("nvdiffrast", "nvdiffrast.torch"):
        sys.modules.pop(name, None)
