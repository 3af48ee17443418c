"""Video modules: shapes, identity at init, gradients, and equivalence with explicit formulations."""

import math

import pytest
import torch
import torch.nn.functional as F

from pyengine.nn import Pseudo3DConv, SpaceConv3d, SpatialAttention, TemporalAttention, TemporalMix, UNet3D
from tests.helpers import assert_close

TOL64 = {"atol": 1e-10, "rtol": 1e-9}
TOL32 = {"atol": 1e-5, "rtol": 1e-4}


def _randomize_(module, std=0.2, seed=0):
    """Replaces every parameter by random values (so zero-initialised layers do something); norm
    scales stay near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std + centre)
    return module


# --- independent formulations -------------------------------------------------------------------

def _group_norm(x, norm):
    """Per-frame GroupNorm of [B, T, H, W, C] via F.group_norm on a contiguous [B T, C, H, W] copy."""
    B, T, H, W, C = x.shape
    y = F.group_norm(x.permute(0, 1, 4, 2, 3).reshape(B * T, C, H, W).contiguous(), norm.num_groups, norm.weight,
                     norm.bias, norm.eps)
    return y.reshape(B, T, C, H, W).permute(0, 1, 3, 4, 2)


def _t5_bucket(rel, num_buckets, max_distance, bidirectional):
    """T5's relative position bucket of one distance rel = key - query (Python scalars)."""
    ret = 0
    if bidirectional:
        num_buckets //= 2
        ret = num_buckets if rel > 0 else 0
        n = abs(rel)
    else:
        n = max(-rel, 0)
    exact = num_buckets // 2
    if n < exact:
        return ret + n
    val = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return ret + min(val, num_buckets - 1)


def _sinusoid(L, D, dtype):
    tab = torch.zeros(L, D, dtype=torch.float64)
    for p in range(L):
        for c in range(D):
            ang = p / 10000 ** (2 * (c // 2) / D)
            tab[p, c] = math.sin(ang) if c % 2 == 0 else math.cos(ang)
    return tab.to(dtype)


def _explicit_temporal(m, x):
    B, T, H, W, C = x.shape
    n = m.heads
    d = C // n
    q, k, v = (F.linear(_group_norm(x, m.norm), m.qkv.weight, m.qkv.bias)).split(C, dim=-1)
    q, k, v = (t.reshape(B, T, H, W, n, d) for t in (q, k, v))
    if m.pos_encoding:
        tab = _sinusoid(T, d, x.dtype)[None, :, None, None, None, :]
        q, k = q + tab, k + tab
    s = torch.einsum("bthwnd,bshwnd->bhwnts", q, k) / math.sqrt(d)
    if m.rel_table is not None:
        idx = torch.tensor([[_t5_bucket(j - i, m.rel_table.shape[1], m.max_distance, not m.causal) for j in range(T)]
                            for i in range(T)])
        s = s + m.rel_table[:, idx].to(x.dtype)
    if m.causal:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    o = torch.einsum("bhwnts,bshwnd->bthwnd", s.softmax(-1), v).reshape(B, T, H, W, C)
    return x + F.linear(o, m.proj.weight, m.proj.bias)


def _explicit_spatial(m, x, context=None):
    B, T, H, W, C = x.shape
    n = m.heads
    d = C // n
    q, k, v = (F.linear(_group_norm(x, m.norm), m.qkv.weight, m.qkv.bias)).split(C, dim=-1)
    q, k, v = (t.reshape(B, T, H * W, n, d) for t in (q, k, v))
    src = {"self": lambda t: t, "first": lambda t: 0, "previous": lambda t: max(t - 1, 0)}
    idx = torch.tensor([[src[s](t) for s in m.cross_frame] for t in range(T)])  # [T, S]
    ks = k[:, idx].reshape(B, T, -1, n, d)
    vs = v[:, idx].reshape(B, T, -1, n, d)
    a = (torch.einsum("btpnd,btqnd->btnpq", q, ks) / math.sqrt(d)).softmax(-1)
    o = torch.einsum("btnpq,btqnd->btpnd", a, vs).reshape(B, T, H, W, C)
    y = x + F.linear(o, m.proj.weight, m.proj.bias)
    if context is None:
        return y
    ctx = context[:, None] if context.dim() == 2 else context
    xn = F.layer_norm(y, (C,), m.cross_norm.weight, m.cross_norm.bias, m.cross_norm.eps)
    qc = F.linear(xn, m.cross_q.weight, m.cross_q.bias).reshape(B, T * H * W, n, d)
    kc, vc = F.linear(ctx, m.cross_kv.weight, m.cross_kv.bias).split(C, dim=-1)
    kc, vc = kc.reshape(B, -1, n, d), vc.reshape(B, -1, n, d)
    a = (torch.einsum("bpnd,bqnd->bnpq", qc, kc) / math.sqrt(d)).softmax(-1)
    oc = torch.einsum("bnpq,bqnd->bpnd", a, vc).reshape(B, T, H, W, C)
    return y + F.linear(oc, m.cross_proj.weight, m.cross_proj.bias)


# --- attention layers -----------------------------------------------------------------------------

@pytest.mark.parametrize("rel_pos_bias,causal,pos_encoding", [
    (True, False, False), (True, True, False), (False, False, True), (True, True, True), (False, False, False)])
def test_temporal_attention_matches_einsum(rel_pos_bias, causal, pos_encoding):
    torch.manual_seed(1)
    m = TemporalAttention(16, heads=2, rel_pos_bias=rel_pos_bias, num_buckets=8, max_distance=6,
                          pos_encoding=pos_encoding, causal=causal).double()
    _randomize_(m)
    x = torch.randn(2, 11, 3, 2, 16, dtype=torch.float64)
    assert_close(m(x), _explicit_temporal(m, x), **TOL64, what="TemporalAttention vs einsum")


def test_temporal_attention_layernorm_and_float32():
    torch.manual_seed(2)
    m = _randomize_(TemporalAttention(24, heads=3, norm="layer", num_buckets=16))
    x = torch.randn(1, 5, 3, 3, 24)
    ref = m.double()(x.double())
    out = m.float()(x)
    assert out.dtype == torch.float32
    assert_close(out, ref, **TOL32, what="TemporalAttention float32 vs float64")
    # LayerNorm variant against the explicit formula with LayerNorm in place of GroupNorm
    n = m.norm
    xn = F.layer_norm(x, (24,), n.weight, n.bias, n.eps)
    q, k, v = F.linear(xn, m.qkv.weight, m.qkv.bias).reshape(1, 5, 3, 3, 3, 3, 8).unbind(4)
    s = torch.einsum("bthwnd,bshwnd->bhwnts", q, k) / math.sqrt(8) + m.bias(5)
    o = torch.einsum("bhwnts,bshwnd->bthwnd", s.softmax(-1), v).reshape(1, 5, 3, 3, 24)
    assert_close(out, x + F.linear(o, m.proj.weight, m.proj.bias), **TOL32, what="LayerNorm variant")


def test_temporal_attention_identity_at_init_and_gradients():
    torch.manual_seed(3)
    m = TemporalAttention(16, heads=4)
    x = torch.randn(2, 6, 4, 4, 16, requires_grad=True)
    y = m(x)
    assert torch.equal(y, x), "a fresh temporal layer must be the identity"
    y.square().sum().backward()
    assert_close(x.grad, 2 * x.detach(), 0, 0, what="identity gradient")
    # once the output projection is non-zero, every parameter (the bias table included) learns
    with torch.no_grad():
        m.proj.weight.normal_(0, 0.2)
        m.rel_table.normal_(0, 0.5)
    m.zero_grad()
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_temporal_attention_mixes_frames_causally():
    torch.manual_seed(4)
    m = _randomize_(TemporalAttention(8, heads=2, causal=True, num_buckets=4))
    x = torch.randn(1, 5, 2, 2, 8)
    x2 = x.clone()
    x2[:, 3] += 1.0
    d = (m(x2) - m(x)).abs().amax(dim=(0, 2, 3, 4))
    assert torch.all(d[:3] == 0) and torch.all(d[3:] > 0), f"causal change pattern per frame: {d}"
    # one frame: attention to itself only (bias of distance 0)
    y = m(x[:, :1])
    assert y.shape == (1, 1, 2, 2, 8)


@pytest.mark.parametrize("cross_frame", [("self",), ("first", "previous"), "first"])
def test_spatial_attention_matches_einsum(cross_frame):
    torch.manual_seed(5)
    m = _randomize_(SpatialAttention(12, heads=3, cross_frame=cross_frame).double())
    x = torch.randn(2, 4, 3, 5, 12, dtype=torch.float64)
    assert_close(m(x), _explicit_spatial(m, x), **TOL64, what=f"SpatialAttention {cross_frame}")


@pytest.mark.parametrize("ctx_shape", [(2, 7, 10), (2, 10)])
def test_spatial_attention_context(ctx_shape):
    torch.manual_seed(6)
    m = _randomize_(SpatialAttention(8, heads=2, context_dim=10).double())
    x = torch.randn(2, 3, 4, 4, 8, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(*ctx_shape, dtype=torch.float64, requires_grad=True)
    y = m(x, ctx)
    assert_close(y, _explicit_spatial(m, x, ctx), **TOL64, what="SpatialAttention with context")
    y.backward(torch.randn_like(y))
    assert ctx.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    # one context token: the softmax is 1 whatever the query, so the query side gets no gradient
    skip = ("cross_q", "cross_norm") if len(ctx_shape) == 2 else ()
    for name, p in m.named_parameters():
        if not name.startswith(skip):
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_spatial_attention_strided_input():
    torch.manual_seed(7)
    m = _randomize_(SpatialAttention(8, heads=2))
    x = torch.randn(2, 8, 3, 4, 4)  # [B, C, T, H, W]
    xv = x.permute(0, 2, 3, 4, 1)   # [B, T, H, W, C] view, not contiguous
    out = m(xv)
    assert out.shape == (2, 3, 4, 4, 8)
    assert_close(out, m(xv.contiguous()), **TOL32, what="strided vs contiguous input")


# --- convolutions and mixing ----------------------------------------------------------------------

@pytest.mark.parametrize("stride,H,W", [(1, 5, 7), (2, 8, 6), (2, 5, 5)])
def test_space_conv3d_matches_per_frame_conv2d(stride, H, W):
    torch.manual_seed(8)
    conv = SpaceConv3d(3, 5, stride=stride)
    x = torch.randn(2, 4, H, W, 3)
    out = conv(x)
    frames = x.permute(0, 1, 4, 2, 3).reshape(8, 3, H, W).contiguous()
    ref = F.conv2d(frames, conv.conv.weight[:, :, 0], conv.conv.bias, stride=stride, padding=1)
    ref = ref.reshape(2, 4, 5, *ref.shape[-2:]).permute(0, 1, 3, 4, 2)
    assert out.is_contiguous()
    assert_close(out, ref, **TOL32, what="SpaceConv3d vs conv2d per frame")


def test_pseudo3d_conv_identity_init_and_taps():
    torch.manual_seed(9)
    conv = Pseudo3DConv(4, 6)
    x = torch.randn(2, 5, 4, 4, 4)
    h = conv.spatial(x)
    assert_close(conv(x), h, 1e-6, 1e-6, what="Pseudo3DConv at init")
    with torch.no_grad():
        conv.temporal.weight.normal_(0, 0.3)
        conv.temporal.bias.normal_()
    w = conv.temporal.weight[:, :, :, 0, 0]  # [cout, cout, 3]
    ref = torch.einsum("bthwc,oc->bthwo", h, w[:, :, 1]) + conv.temporal.bias
    ref[:, 1:] += torch.einsum("bthwc,oc->bthwo", h[:, :-1], w[:, :, 0])
    ref[:, :-1] += torch.einsum("bthwc,oc->bthwo", h[:, 1:], w[:, :, 2])
    out = conv(x)
    assert out.shape == (2, 5, 4, 4, 6) and out.is_contiguous()
    assert_close(out, ref, **TOL32, what="Pseudo3DConv temporal taps")
    out.sum().backward()
    assert conv.spatial.conv.weight.grad.abs().sum() > 0 and conv.temporal.weight.grad.abs().sum() > 0


def test_temporal_mix_formula_and_freezing():
    torch.manual_seed(10)
    spatial = SpaceConv3d(4, 4)
    temporal = Pseudo3DConv(4, 4)  # with an identity spatial conv: a purely temporal layer, identity at init
    with torch.no_grad():
        temporal.spatial.conv.weight.zero_()
        temporal.spatial.conv.weight[:, :, 0, 1, 1] = torch.eye(4)
        temporal.spatial.conv.bias.zero_()
    mix = TemporalMix(spatial, temporal, alpha_init=0.3)
    assert abs(mix.alpha.item() - 0.3) < 1e-6
    x = torch.randn(1, 3, 4, 4, 4)
    assert_close(mix(x), spatial(x), 1e-6, 1e-6, what="identity temporal layer")
    with torch.no_grad():
        temporal.temporal.weight.normal_(0, 0.3)
        mix.logit.fill_(0.7)
    hs = spatial(x)
    a = torch.sigmoid(torch.tensor(0.7))
    y = mix(x)
    assert_close(y, a * hs + (1 - a) * temporal(hs), **TOL32, what="alpha blend")
    y.square().sum().backward()
    assert all(p.grad is None for p in spatial.parameters()), "the spatial layer is frozen"
    assert mix.logit.grad is not None and temporal.temporal.weight.grad is not None
    # keyword arguments reach the spatial layer
    att = TemporalMix(SpatialAttention(8, 2, context_dim=5), TemporalAttention(8, 2), freeze_spatial=False)
    assert att(torch.randn(1, 2, 2, 2, 8), context=torch.randn(1, 5)).shape == (1, 2, 2, 2, 8)


# --- UNet3D -------------------------------------------------------------------------------------

def _tiny_unet(**kw):
    args = dict(in_channels=3, out_channels=2, model_channels=8, channel_mult=(1, 2), heads=2)
    args.update(kw)
    return UNet3D(**args)


def test_unet3d_defaults_small_and_forward():
    torch.manual_seed(11)
    net = UNet3D()
    n = sum(p.numel() for p in net.parameters())
    assert 2e5 < n < 3e6, n
    x = torch.randn(1, 3, 8, 8, 3)
    y = net(x, torch.tensor([7]))
    assert y.shape == x.shape and y.is_contiguous()
    assert torch.count_nonzero(y) == 0, "conv_out starts at zero"


def test_unet3d_forward_backward_context():
    torch.manual_seed(12)
    net = _randomize_(_tiny_unet(context_dim=6, num_res_blocks=2, attention_levels=(0, 1)), std=0.1)
    x = torch.randn(2, 3, 8, 4, 3, requires_grad=True)
    ctx = torch.randn(2, 6)
    y = net(x, torch.tensor([3.5, 800.0]), ctx)
    assert y.shape == (2, 3, 8, 4, 2)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad():  # the context and the timestep change the output
        assert (net(x, torch.tensor([3.5, 800.0]), ctx) - net(x, torch.tensor([3.5, 800.0]), ctx * 2)).abs().max() > 0
        assert (net(x, torch.tensor([3.5, 800.0]), ctx) - net(x, torch.tensor([4.5, 800.0]), ctx)).abs().max() > 0


def test_unet3d_frames_interact_only_through_temporal_layers():
    torch.manual_seed(13)
    net = _randomize_(_tiny_unet(), std=0.1).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, TemporalAttention):
                m.proj.weight.zero_()
                m.proj.bias.zero_()
        x = torch.randn(1, 4, 8, 8, 3)
        t = torch.tensor([100])
        y = net(x, t)
        # without temporal mixing the U-Net is an image model applied to every frame
        assert_close(y[:, 2:3], net(x[:, 2:3], t), **TOL32, what="per-frame image model")
        for m in net.modules():
            if isinstance(m, TemporalAttention):
                m.proj.weight.normal_(0, 0.1)
        x2 = x.clone()
        x2[:, 0] += 1
        assert (net(x2, t) - net(x, t))[:, 3].abs().max() > 1e-4, "temporal attention must mix frames"


def _equal_frames(B=2, T=5, H=8, W=8, C=3, seed=0):
    """[B, T, H, W, C] clip whose T frames are one and the same random frame."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, H, W, C, generator=g).expand(B, T, H, W, C).contiguous()


def _temporal_pos_encoding_(net):
    for m in net.modules():
        if isinstance(m, TemporalAttention):
            m.pos_encoding = True
    return net


def test_unet3d_without_frame_embedding_keeps_equal_frames_equal():
    # why a plain video U-Net cannot tie a caption to a motion direction: the relative bias and q/k
    # position encodings move the attention weights, but the values of equal frames are equal, so the
    # output frames are too, for any weights
    torch.manual_seed(16)
    net = _temporal_pos_encoding_(_randomize_(_tiny_unet(context_dim=4), std=0.3)).eval()
    assert all(m.rel_table.abs().min() > 0 for m in net.modules() if isinstance(m, TemporalAttention))
    x, t, ctx = _equal_frames(), torch.tensor([999, 10]), torch.randn(2, 4)
    with torch.no_grad():
        y = net(x, t, ctx)
        assert_close(y, y[:, :1].expand_as(y), **TOL32, what="equal frames in, equal frames out")
        x2 = x.clone()
        x2[:, 0] += 0.5  # not vacuous: a different frame does change the others
        assert (net(x2, t, ctx) - y)[:, 3].abs().max() > 1e-4


def test_unet3d_frame_embedding_adds_the_frame_index_to_the_conditioning():
    torch.manual_seed(17)
    plain = _randomize_(_tiny_unet(context_dim=4), std=0.1)
    net = _tiny_unet(context_dim=4, frame_embedding=True)
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("frame_embed.") for k in missing)
    x, t, ctx = _equal_frames(T=4), torch.tensor([999, 10]), torch.randn(2, 4)
    net(x, t, ctx).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.frame_embed.parameters())
    with torch.no_grad():
        last = net.frame_embed[2]
        w, b = last.weight.clone(), last.bias.clone()
        last.weight.zero_()
        last.bias.zero_()
        assert_close(net(x, t, ctx), plain(x, t, ctx), **TOL32, what="zeroed frame embedding: the plain U-Net")
        last.weight.copy_(w)
        last.bias.copy_(b)
        for m in (*net.modules(), *plain.modules()):  # frames then do not interact
            if isinstance(m, TemporalAttention):
                m.proj.weight.zero_()
                m.proj.bias.zero_()
        y = net(x, t, ctx)
        assert (y - y[:, :1]).abs().amax() > 1e-3, "equal frames must come out different"
        # frame f is the plain U-Net on that frame with frame f's embedding added to the context's term
        from pyengine.nn.video import timestep_embedding

        bias = plain.context_embed.bias.clone()
        for f in range(x.shape[1]):
            emb = net.frame_embed(timestep_embedding(torch.tensor([f]), net.model_channels))[0]
            plain.context_embed.bias.copy_(bias + emb)
            assert_close(y[:, f:f + 1], plain(x[:, f:f + 1], t, ctx), **TOL32, what=f"frame {f}")
    with pytest.raises(TypeError, match="frame_embedding"):
        _tiny_unet(frame_embedding=1)


@pytest.mark.parametrize("frame_embedding", [False, True])
def test_unet3d_learns_a_captioned_motion_from_noise_only_with_frame_embedding(frame_embedding):
    # the best prediction at pure noise is the caption's mean clip, which moves; a bar sweeps left to
    # right under caption 0 and back under caption 1. The frame-constant prediction's error is `floor`.
    torch.manual_seed(18)
    T, S = 4, 4
    net = _temporal_pos_encoding_(UNet3D(model_channels=8, channel_mult=(1,), attention_levels=(0,), heads=2,
                                         context_dim=2, frame_embedding=frame_embedding))
    clip = torch.full((T, S, S, 3), -1.0)
    for f in range(T):
        clip[f, :, f] = 1.0
    targets, ctx, k = torch.stack([clip, clip.flip(0)]), torch.eye(2), torch.arange(8) % 2
    floor = float((targets - targets.mean(1, keepdim=True)).square().mean())
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    t = torch.full((8,), 999)
    for _ in range(60):
        loss = (net(torch.randn(8, T, S, S, 3, generator=g), t, ctx[k]) - targets[k]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ratio = float((net(torch.randn(8, T, S, S, 3, generator=g), t, ctx[k]) - targets[k]).square().mean()) / floor
    if frame_embedding:
        assert ratio < 0.5, f"error {ratio:.3f} x the frame-constant floor"
    else:
        assert ratio > 0.8, f"error {ratio:.3f} x the frame-constant floor"


def test_unet3d_timestep_forms_and_strided_input():
    torch.manual_seed(14)
    net = _randomize_(_tiny_unet(), std=0.1).eval()
    x5 = torch.randn(2, 3, 2, 4, 4)  # [B, C, T, H, W]
    x = x5.permute(0, 2, 3, 4, 1)
    with torch.no_grad():
        a = net(x, torch.tensor([5, 5]))
        assert_close(net(x.contiguous(), 5), a, **TOL32, what="int scalar t")
        assert_close(net(x, torch.tensor(5.0)), a, **TOL32, what="0-d t")
        assert_close(net(x, torch.tensor([5.0, 5.0], dtype=torch.float64)), a, **TOL32, what="float t")


def test_bad_inputs():
    with pytest.raises(ValueError, match="heads"):
        TemporalAttention(10, heads=3)
    with pytest.raises(ValueError, match="cross_frame"):
        SpatialAttention(8, heads=2, cross_frame=("next",))
    with pytest.raises(ValueError, match="norm"):
        SpatialAttention(8, heads=2, norm="batch")
    with pytest.raises(ValueError, match="alpha_init"):
        TemporalMix(SpaceConv3d(2, 2), Pseudo3DConv(2, 2), alpha_init=1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        SpaceConv3d(2, 2, kernel_size=2)
    with pytest.raises(ValueError, match="heads"):
        UNet3D(model_channels=6, heads=5)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet3D(attention_levels=(2,))
    m = TemporalAttention(8, heads=2)
    with pytest.raises(ValueError, match=r"x must be \[B, T, H, W, C\]"):
        m(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="C = 8"):
        m(torch.randn(1, 2, 4, 4, 6))
    with pytest.raises(TypeError, match="floating"):
        SpaceConv3d(2, 2)(torch.ones(1, 1, 3, 3, 2, dtype=torch.long))
    s = SpatialAttention(8, heads=2)
    with pytest.raises(ValueError, match="context_dim=None"):
        s(torch.randn(1, 2, 2, 2, 8), torch.randn(1, 3))
    net = _tiny_unet()
    x = torch.randn(1, 2, 4, 4, 3)
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 2, 5, 4, 3), 1)
    with pytest.raises(ValueError, match="context_dim=0"):
        net(x, 1, torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"t must be \[B\]"):
        net(x, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="t must be"):
        net(x, "1")
    with pytest.raises(ValueError, match="context must be"):
        _tiny_unet(context_dim=4)(x, 1, torch.randn(1, 5))


@pytest.mark.parametrize("layer", ["spatial", "spatial-cross", "temporal", "temporal-causal-pos"])
def test_sdpa_switch_gives_the_same_layer(layer):
    """impl="sdpa" (permute copies + SDPA, the benchmarks' baseline) computes what the op does."""
    torch.manual_seed(0)
    if layer.startswith("spatial"):
        m = SpatialAttention(16, 2, cross_frame=("first", "previous") if layer == "spatial-cross" else ("self",))
    else:
        m = TemporalAttention(16, 2, causal=layer.endswith("pos"), pos_encoding=layer.endswith("pos"))
        with torch.no_grad():
            m.rel_table.normal_()
            m.proj.weight.normal_()
    x = torch.randn(2, 5, 3, 4, 16, dtype=torch.float64)
    m = m.double()
    want = m(x)
    m.impl = "sdpa"
    assert torch.allclose(m(x), want, atol=1e-10)
    m.impl = "flash"
    with pytest.raises(ValueError, match="impl must be one of"):
        m(x)


def test_unet3d_temporal_conv_starts_as_the_plain_unet_and_mixes_neighbouring_frames():
    torch.manual_seed(19)
    plain = _randomize_(_tiny_unet(context_dim=4), std=0.1).eval()
    net = _tiny_unet(context_dim=4, temporal_conv=True).eval()
    # the same weights, the first conv of each residual block now under .spatial, the temporal taps new
    mapped = {k.replace("conv1.conv.", "conv1.spatial.conv."): v for k, v in plain.state_dict().items()}
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    assert not unexpected and missing and all(".conv1.temporal." in k for k in missing)
    for m in (*net.modules(), *plain.modules()):  # no temporal attention: only the convs may mix frames
        if isinstance(m, TemporalAttention):
            m.proj.weight.data.zero_()
            m.proj.bias.data.zero_()
    x, t, ctx = torch.randn(2, 5, 8, 8, 3), torch.tensor([999, 10]), torch.randn(2, 4)
    with torch.no_grad():
        assert_close(net(x, t, ctx), plain(x, t, ctx), **TOL32, what="identity temporal taps")
        for m in net.modules():
            if isinstance(m, Pseudo3DConv):
                m.temporal.weight.normal_(0, 0.1)
        y = net(x, t, ctx)
        x2 = x.clone()
        x2[:, 0] += 1
        d = (net(x2, t, ctx) - y).abs().flatten(2).amax(-1)  # [B, T]
        assert d[:, 1].min() > 1e-4, "the temporal taps must carry frame 0 to frame 1"
    with pytest.raises(ValueError, match="temporal_conv"):
        _tiny_unet(temporal=False, temporal_conv=True)
    with pytest.raises(TypeError, match="temporal_conv"):
        _tiny_unet(temporal_conv=1)


def test_unet3d_scale_shift_conditions_by_adm_scale_shift_norm():
    from pyengine.nn.video import _ResBlock

    torch.manual_seed(20)
    blk = _randomize_(_ResBlock(8, 16, 12, 0.0, scale_shift=True), std=0.2).eval()
    x, temb = torch.randn(2, 3, 4, 4, 8), torch.randn(2, 3, 12)  # a per-frame embedding
    with torch.no_grad():
        h = blk.conv1(F.silu(blk.norm1(x)))
        scale, shift = blk.temb(F.silu(temb))[:, :, None, None, :].chunk(2, -1)
        want = blk.skip(x) + blk.conv2(F.silu(blk.norm2(h) * (1 + scale) + shift))
        assert_close(blk(x, temb), want, **TOL32, what="norm(h) * (1 + scale) + shift")
        # zero scale and shift: the additive block with a zero embedding, i.e. no conditioning at all
        plain = _ResBlock(8, 16, 12, 0.0)
        plain.load_state_dict({k: v for k, v in blk.state_dict().items() if not k.startswith("temb.")}, strict=False)
        blk.temb.weight.zero_()
        blk.temb.bias.zero_()
        plain.temb.weight.zero_()
        plain.temb.bias.zero_()
        assert_close(blk(x, temb), plain(x, temb), **TOL32, what="no scale, no shift")
    net = _randomize_(_tiny_unet(context_dim=4, frame_embedding=True, scale_shift=True), std=0.1).eval()
    assert net.mid_res.temb.out_features == 2 * net.mid_res.norm2.num_channels
    with torch.no_grad():
        x, t = torch.randn(1, 4, 8, 8, 3), torch.tensor([500])
        a, b = net(x, t, torch.zeros(1, 4)), net(x, t, torch.ones(1, 4))
        assert a.shape == (1, 4, 8, 8, 2) and (a - b).abs().max() > 1e-4
    with pytest.raises(TypeError, match="scale_shift"):
        _tiny_unet(scale_shift="yes")


def test_unet3d_coord_channels_give_absolute_position():
    torch.manual_seed(21)
    plain = _randomize_(_tiny_unet(), std=0.1).eval()
    net = _tiny_unet(coord_channels=True).eval()
    sd = plain.state_dict()
    w = sd["conv_in.conv.weight"]
    sd["conv_in.conv.weight"] = torch.cat([w, torch.zeros(w.shape[0], 2, *w.shape[2:])], 1)
    net.load_state_dict(sd)
    x, t = torch.randn(1, 3, 8, 8, 3), torch.tensor([10])
    with torch.no_grad():
        assert_close(net(x, t), plain(x, t), **TOL32, what="zero weights on the coordinates: the plain U-Net")
        seen = []
        net.conv_in.conv.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        net(torch.zeros(2, 3, 8, 6, 3), torch.tensor([10, 20]))
        grid = seen[0][:, 3:]  # [B, 2, T, H, W]: x along W, y along H, in [-1, 1], every frame alike
        assert_close(grid[:, 0], torch.linspace(-1, 1, 6).expand(2, 3, 8, 6), **TOL32, what="x channel")
        assert_close(grid[:, 1], torch.linspace(-1, 1, 8)[:, None].expand(2, 3, 8, 6), **TOL32, what="y channel")
        assert torch.equal(seen[0][:, :3], torch.zeros(2, 3, 3, 8, 6))
    with pytest.raises(TypeError, match="coord_channels"):
        _tiny_unet(coord_channels=0)


def test_unet3d_cond_mlp_starts_as_the_identity_and_mixes_caption_and_frame():
    torch.manual_seed(22)
    plain = _randomize_(_tiny_unet(context_dim=4, frame_embedding=True), std=0.1).eval()
    net = _tiny_unet(context_dim=4, frame_embedding=True, cond_mlp=True).eval()
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["cond_mlp.1.bias", "cond_mlp.1.weight", "cond_mlp.3.bias",
                                                  "cond_mlp.3.weight"]
    x, t, ctx = torch.randn(2, 4, 8, 8, 3), torch.tensor([999, 10]), torch.randn(2, 4)
    with torch.no_grad():
        assert_close(net(x, t, ctx), plain(x, t, ctx), **TOL32, what="zero last layer: the plain U-Net")
    net(x, t, ctx).square().mean().backward()
    assert net.cond_mlp[3].weight.grad.abs().sum() > 0  # it learns from the start
    with pytest.raises(TypeError, match="cond_mlp"):
        _tiny_unet(cond_mlp=None)


def test_unet3d_frame_context_is_bilinear_in_caption_and_frame():
    torch.manual_seed(23)
    net = _randomize_(_tiny_unet(context_dim=4, frame_embedding=True, frame_context=True), std=0.1).eval()
    plain = _tiny_unet(context_dim=4, frame_embedding=True).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("frame_context.")})
    x, t, ctx = torch.randn(2, 4, 8, 8, 3), torch.tensor([999, 10]), torch.randn(2, 4)
    with torch.no_grad():
        # frame f's conditioning gains ctx^T W_k frame_f + b_k: bias the plain U-Net's context term by it
        from pyengine.nn.video import timestep_embedding

        for m in (*net.modules(), *plain.modules()):  # frames then do not interact
            if isinstance(m, TemporalAttention):
                m.proj.weight.zero_()
                m.proj.bias.zero_()
        fr = timestep_embedding(torch.arange(4), net.model_channels)
        extra = torch.einsum("bi,kij,fj->bfk", ctx, net.frame_context.weight, fr) + net.frame_context.bias
        emb = net.frame_embed(fr)
        extra = extra + (emb - emb[:1])[None]  # a one-frame clip gets frame 0's embedding
        y = net(x, t, ctx)
        bias = plain.context_embed.bias.clone()
        for b in range(2):
            for f in range(4):
                plain.context_embed.bias.copy_(bias + extra[b, f])
                assert_close(y[b:b + 1, f:f + 1], plain(x[b:b + 1, f:f + 1], t[b:b + 1], ctx[b:b + 1]), **TOL32,
                             what=f"sample {b} frame {f}")
        net.frame_context.weight.zero_()
        net.frame_context.bias.zero_()
        plain.context_embed.bias.copy_(bias)
        assert_close(net(x, t, ctx), plain(x, t, ctx), **TOL32, what="zero bilinear: the plain U-Net")
    with pytest.raises(ValueError, match="frame_context"):
        _tiny_unet(context_dim=4, frame_context=True)  # no frame embedding
    with pytest.raises(ValueError, match="frame_context"):
        _tiny_unet(frame_embedding=True, frame_context=True)  # no context
