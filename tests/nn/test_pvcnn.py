"""pyengine.nn.pvcnn: PVD's layers and generation U-Net, layout checked against PVD's code by hand."""

import math

import pytest
import torch

from pyengine.nn.pvcnn import (
    PVCNN2,
    Attention,
    PointNetFPModule,
    PointNetSAModule,
    PVCNN2Base,
    PVConv,
    SE3d,
    SharedMLP,
    Voxelization,
)
from tests.helpers import assert_close

# PVD's layout, per module, as its modules/*.py define it -----------------------------------------

def conv(p, o, i, *k):
    return {f"{p}.weight": (o, i, *k), f"{p}.bias": (o,)}


def group_norm(p, c):
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def shared_mlp(p, i, widths, dim=1):
    """modules/shared_mlp.py: layers = [Conv{dim}d(i, w, 1), GroupNorm(8, w), Swish] per width."""
    out = {}
    for n, w in enumerate(widths):
        out |= conv(f"{p}.layers.{3 * n}", w, i, *(1,) * dim) | group_norm(f"{p}.layers.{3 * n + 1}", w)
        i = w
    return out


def attention(p, c, dims=3):
    """modules/pvconv.py Attention: q, k, v, out = Conv{D}d(c, c, 1); norm = GroupNorm(8, c)."""
    out = group_norm(f"{p}.norm", c)
    for name in ("q", "k", "v", "out"):
        out |= conv(f"{p}.{name}", c, c, *(1,) * dims)
    return out


def pvconv(p, i, o, att=False):
    """modules/pvconv.py PVConv with dropout and with_se=True (as PVCNN2Base builds it): voxel_layers
    0 Conv3d(i, o, 3), 1 GroupNorm, 2 Swish, 3 Dropout, 4 Conv3d(o, o, 3), 5 GroupNorm,
    6 Attention or Swish, 7 SE3d (fc.0 Linear(o, o/8), fc.2 Linear(o/8, o), no bias);
    point_features = SharedMLP(i, o)."""
    v = f"{p}.voxel_layers"
    out = conv(f"{v}.0", o, i, 3, 3, 3) | group_norm(f"{v}.1", o) | conv(f"{v}.4", o, o, 3, 3, 3)
    out |= group_norm(f"{v}.5", o) | (attention(f"{v}.6", o) if att else {})
    out |= {f"{v}.7.fc.0.weight": (o // 8, o), f"{v}.7.fc.2.weight": (o, o // 8)}
    return out | shared_mlp(f"{p}.point_features", i, [o])


def sa(p, i, widths):
    """modules/pointnet.py PointNetSAModule, one scale: mlps.0 = SharedMLP(i + 3, widths, dim=2)."""
    return shared_mlp(f"{p}.mlps.0", i + 3, widths, dim=2)


def fp(p, i, widths):
    """modules/pointnet.py PointNetFPModule: mlp = SharedMLP(i, widths, dim=1)."""
    return shared_mlp(f"{p}.mlp", i, widths)


# PVD's PVCNN2 (train_generation.py: num_classes=3, embed_dim=E=64, use_att=True, dropout=0.1,
# extra_feature_channels=0), channel counts worked out by hand from model/pvcnn_generation.py:
# * SA stage c gets 3 + 0 channels (c = 0), else the previous stage's output plus E (the features
#   are concatenated with temb), and builds only the first of its num_blocks convolutions when
#   c > 0 (its loop appends a block only for c == 0 or k == 0); attention on odd stages' first
#   convolution; stage 3 has no convolution, so its SA module takes the + E instead.
# * FP stage i takes 512 (then its predecessor's output) + E + the input channels of SA stage
#   3 - i, with stage 0's replaced by extra_feature_channels = 0; no attention (PVD's condition
#   `c < len(fp_blocks) - 1` reads the list being built, of length 1 then).
# * global_att = Attention(512, 8, D=1); classifier = SharedMLP(64, 128), Dropout, Conv1d(128, 3);
#   embedf = Linear(E, E), LeakyReLU, Linear(E, E).
E = 64
PVD_LAYOUT = (
    pvconv("sa_layers.0.0", 3, 32) | pvconv("sa_layers.0.1", 32, 32) | sa("sa_layers.0.2", 32, [32, 64])
    | pvconv("sa_layers.1.0", 64 + E, 64, att=True) | sa("sa_layers.1.1", 64, [64, 128])
    | pvconv("sa_layers.2.0", 128 + E, 128) | sa("sa_layers.2.1", 128, [128, 256])
    | sa("sa_layers.3", 256 + E, [256, 256, 512])
    | attention("global_att", 512, dims=1)
    | fp("fp_layers.0.0", 512 + E + 256, [256, 256])
    | pvconv("fp_layers.0.1", 256, 256) | pvconv("fp_layers.0.2", 256, 256) | pvconv("fp_layers.0.3", 256, 256)
    | fp("fp_layers.1.0", 256 + E + 128, [256, 256])
    | pvconv("fp_layers.1.1", 256, 256) | pvconv("fp_layers.1.2", 256, 256) | pvconv("fp_layers.1.3", 256, 256)
    | fp("fp_layers.2.0", 256 + E + 64, [256, 128])
    | pvconv("fp_layers.2.1", 128, 128) | pvconv("fp_layers.2.2", 128, 128)
    | fp("fp_layers.3.0", 128 + E + 0, [128, 128, 64])
    | pvconv("fp_layers.3.1", 64, 64) | pvconv("fp_layers.3.2", 64, 64)
    | shared_mlp("classifier.0", 64, [128]) | conv("classifier.2", 3, 128, 1)
    | {"embedf.0.weight": (E, E), "embedf.0.bias": (E,), "embedf.2.weight": (E, E), "embedf.2.bias": (E,)}
)
PVD_PARAMS = 27_649_987  # sum of the table's shapes


def pvd_default():
    return PVCNN2(num_classes=3, embed_dim=64, use_att=True, dropout=0.1, extra_feature_channels=0)


def test_state_dict_layout_matches_pvd():
    model = pvd_default()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(PVD_LAYOUT)) == [] and sorted(set(PVD_LAYOUT) - set(got)) == []
    assert {k: s for k, s in got.items() if PVD_LAYOUT[k] != s} == {}
    assert list(got) == [k for k in got if k in PVD_LAYOUT]
    assert sum(math.prod(s) for s in PVD_LAYOUT.values()) == PVD_PARAMS
    assert sum(p.numel() for p in model.parameters()) == PVD_PARAMS


def test_loads_a_pvd_state_dict():
    torch.manual_seed(0)
    state = {k: torch.randn(s) for k, s in PVD_LAYOUT.items()}
    model = pvd_default()
    result = model.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    wrapped = {f"model.{k}": v for k, v in state.items()}  # PVD's checkpoints: Model.model
    assert set(wrapped) == {f"model.{k}" for k in model.state_dict()}


class Tiny(PVCNN2Base):
    sa_blocks = [((16, 2, 8), (32, 0.4, 8, (16, 32))), ((32, 2, 4), (8, 0.8, 8, (32, 32))),
                 (None, (4, 1.2, 8, (32, 64)))]
    fp_blocks = [((32, 32), (32, 1, 4)), ((32, 16), (16, 1, 8)), ((16, 16), None)]


def test_forward_backward_tiny():
    torch.manual_seed(0)
    model = Tiny(num_classes=3, embed_dim=16, use_att=True, dropout=0.1, extra_feature_channels=2)
    x = torch.randn(2, 5, 128, requires_grad=True)
    t = torch.tensor([0, 999])
    out = model(x, t)
    assert out.shape == (2, 3, 128) and out.isfinite().all()
    out.square().mean().backward()
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    model.eval()
    with torch.no_grad():
        assert_close(model(x, t), model(x, t), atol=0, rtol=0)


def test_timestep_embedding():
    model = Tiny(num_classes=3, embed_dim=7, use_att=False, dropout=0.1, extra_feature_channels=0)
    t = torch.tensor([0, 5, 999])
    emb = model.get_timestep_embedding(t)
    f = torch.tensor([10000 ** (-i / 2) for i in range(3)])
    want = torch.cat([(t[:, None] * f).sin(), (t[:, None] * f).cos(), torch.zeros(3, 1)], 1)
    assert_close(emb, want, atol=1e-5, rtol=1e-5)


def test_voxelization_pvd_formula():
    torch.manual_seed(1)
    coords = torch.randn(2, 3, 50) * 3
    features = torch.randn(2, 4, 50)
    grid, norm = Voxelization(6)(features, coords)
    c = coords - coords.mean(2, keepdim=True)
    want = (c / (c.norm(dim=1, keepdim=True).amax(2, keepdim=True) * 2) + 0.5).mul(6).clamp(0, 5)
    assert_close(norm, want, atol=1e-5, rtol=1e-5)
    assert grid.shape == (2, 4, 6, 6, 6)
    _, norm = Voxelization(6, normalize=False)(features, coords)
    assert_close(norm, ((c + 1) / 2 * 6).clamp(0, 5), atol=1e-5, rtol=1e-5)


def test_attention_matches_pvd_formula():
    torch.manual_seed(2)
    att = Attention(16, 8)
    x = torch.randn(2, 16, 3, 3, 3) * 0.3
    q, k, v = (f(x).reshape(2, 16, -1) for f in (att.q, att.k, att.v))
    w = torch.softmax(q.transpose(1, 2) @ k, -1)  # no 1/sqrt(C), as PVD
    h = att.out((v @ w.transpose(1, 2)).reshape(x.shape))
    want = torch.nn.functional.silu(att.norm(x + h))
    assert_close(att(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of num_groups"):
        Attention(12, 8)


def test_se3d_and_shared_mlp():
    torch.manual_seed(3)
    se = SE3d(16, use_relu=True)
    x = torch.randn(2, 16, 2, 2, 2)
    scale = torch.sigmoid(se.fc[2](torch.relu(se.fc[0](x.mean((2, 3, 4))))))
    assert_close(se(x), x * scale[:, :, None, None, None], atol=1e-6, rtol=1e-6)
    mlp = SharedMLP(3, [8, 16], dim=2)
    out, extra = mlp((torch.randn(2, 3, 5, 4), "passed"))
    assert out.shape == (2, 16, 5, 4) and extra == "passed"


def test_pvconv_sa_fp_shapes_with_and_without_temb():
    torch.manual_seed(4)
    coords, feats, temb = torch.randn(2, 3, 64), torch.randn(2, 8, 64), torch.randn(2, 4, 64)
    conv = PVConv(8, 16, 3, 4, attention=True, with_se=True)
    out, c, t = conv((feats, coords, temb))
    assert out.shape == (2, 16, 64) and c is coords and t is temb
    assert len(conv((feats, coords))) == 2
    sa = PointNetSAModule(16, 0.8, 8, 8, [16, 32])
    out, centers, t = sa((feats, coords, temb))
    assert out.shape == (2, 32, 16) and centers.shape == (2, 3, 16) and t.shape == (2, 4, 16)
    out, centers = sa((feats, coords))
    fp = PointNetFPModule(32 + 8, [16])
    out, pc, t = fp((coords, centers, out, feats, t))
    assert out.shape == (2, 16, 64) and pc is coords and t.shape == (2, 4, 64)
    assert fp((coords, centers, torch.randn(2, 32, 16), feats))[0].shape == (2, 16, 64)
