"""pyengine.compat.tcnn: the tiny-cuda-nn drop-in, checked against tcnn's documented formulas."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyengine.compat import tcnn
from pyengine.reference.hash_encode import HashGridConfig
from pyengine.reference.hash_encode import hash_encode as ref_hash_encode
from tests.helpers import assert_close

SMALL_GRID = {"otype": "HashGrid", "n_levels": 6, "n_features_per_level": 2, "log2_hashmap_size": 12,
              "base_resolution": 8, "per_level_scale": 1.5}
SMALL_MLP = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None", "n_neurons": 32,
             "n_hidden_layers": 2}


# Grid encodings ----------------------------------------------------------------------------------

# tcnn's grid.h, level l of a grid over D dims:
#   scale_l = base_resolution * per_level_scale^l - 1,  res_l = ceil(scale_l) + 1,
#   entries_l = res_l^D rounded up to a multiple of 8, at most 2^log2_hashmap_size for hash grids,
#   n_params = n_features_per_level * sum_l entries_l.
# The counts below are worked out by hand from these rules (not by pyengine's layout code), so a
# change in that code that departs from tcnn makes these tests fail.
GRID_COUNTS = [
    # Instant-NGP's standard grid, per_level_scale 1.447269: per_level_scale^l = 1, 1.447, 2.095, 3.031,
    # 4.387, 6.350 -> scale_l = 15, 22.16, 32.51, 47.50, 69.20, 100.59 -> res_l = 16, 24, 34, 49, 71, 102.
    # 16^3 = 4096, 24^3 = 13824, 34^3 = 39304, 49^3 = 117649 -> 117656, 71^3 = 357911 -> 357912 (all under
    # 2^19 = 524288); 102^3 = 1061208 > 2^19, so levels 5..15 hold 2^19 each.
    (3, {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
         "base_resolution": 16, "per_level_scale": 1.447269},
     (16, 24, 34, 49, 71, 102), 2 * (4096 + 13824 + 39304 + 117656 + 357912 + 11 * 524288)),  # 12599920
    # res_l = 4 * 2^l: 4^3 = 64, 8^3 = 512, 16^3 = 4096, then 32^3 = 32768 > 2^13 = 8192 for levels 3..7
    (3, {"otype": "Grid", "type": "Hash", "n_levels": 8, "n_features_per_level": 4, "log2_hashmap_size": 13,
         "base_resolution": 4, "per_level_scale": 2.0},
     (4, 8, 16, 32, 64, 128, 256, 512), 4 * (64 + 512 + 4096 + 5 * 8192)),  # 182528
    # 2-D, 12 features of 1 = 12 levels: 5 * 1.3^l - 1 = 4, 5.5, 7.45, 9.99, 13.28, 17.56, 23.13, 30.37,
    # 39.79 -> res 5, 7, 9, 11, 15, 19, 25, 32, 41; res^2 = 25, 49, 81, 121, 225, 361, 625, 1024, 1681
    # -> 32, 56, 88, 128, 232, 368, 632, 1024 (fits 2^10 exactly), then 1024 for levels 8..11
    (2, {"otype": "HashGrid", "n_features": 12, "n_features_per_level": 1, "log2_hashmap_size": 10,
         "base_resolution": 5, "per_level_scale": 1.3},
     (5, 7, 9, 11, 15, 19, 25, 32, 41), 32 + 56 + 88 + 128 + 232 + 368 + 632 + 1024 + 4 * 1024),  # 6656
    # dense, 2 features by default: res 4, 8, 16 -> 64 + 512 + 4096 entries, no cap
    (3, {"otype": "Grid", "type": "Dense", "n_levels": 3, "base_resolution": 4, "per_level_scale": 2.0},
     (4, 8, 16), 2 * (64 + 512 + 4096)),  # 9344
]


@pytest.mark.parametrize("D,cfg,resolutions,n_params", GRID_COUNTS)
def test_grid_param_count_matches_tcnn(D, cfg, resolutions, n_params):
    enc = tcnn.Encoding(D, cfg)
    F_ = cfg.get("n_features_per_level", 2)
    n_levels = cfg["n_levels"] if "n_levels" in cfg else cfg["n_features"] // F_
    layout = enc._encoding.config.layout()
    assert enc.params.shape == (n_params,)
    assert layout.offsets[-1] * F_ == n_params
    assert layout.resolutions[:len(resolutions)] == resolutions
    assert enc.n_output_dims == n_levels * F_
    grid_type = "dense" if cfg.get("type") == "Dense" else "hash"
    assert HashGridConfig(D, n_levels, F_, cfg.get("log2_hashmap_size", 19), float(cfg["base_resolution"]),
                          cfg["per_level_scale"], grid_type=grid_type).n_params() == n_params


def test_dense_grid_default_per_level_scale_is_tcnns():
    enc = tcnn.Encoding(3, {"otype": "DenseGrid", "n_levels": 3, "base_resolution": 16})
    expected = math.exp(math.log(256 / 16) / 2)  # finest level reaches resolution 256
    assert enc._encoding.config.grid_type == "dense"
    assert enc._encoding.config.per_level_scale == pytest.approx(expected, rel=1e-6)
    # per_level_scale 4: res 16, 64, 256, dense: 2 features * (16^3 + 64^3 + 256^3)
    assert enc.params.numel() == 2 * (4096 + 262144 + 16777216)


@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep"])
def test_grid_forward_matches_reference(interpolation):
    enc = tcnn.Encoding(3, {**SMALL_GRID, "interpolation": interpolation}, seed=3)
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)  # tcnn's 1e-4 init would make every comparison trivially close
    x = torch.rand(301, 3, generator=torch.Generator().manual_seed(0))
    cfg = HashGridConfig(3, 6, 2, 12, 8.0, 1.5, interpolation.lower(), "hash")
    assert_close(enc(x), ref_hash_encode(x, enc.params.detach(), cfg), atol=1e-5, rtol=1e-5, what="grid fwd")


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float16, torch.bfloat16])
def test_grid_output_shape_and_dtype(dtype):
    enc = tcnn.Encoding(3, SMALL_GRID, dtype=dtype)
    expected = torch.float32 if dtype is None else dtype
    assert enc.dtype == expected
    assert enc.params.dtype == torch.float32  # float32 master copy, as tcnn's bindings keep
    y = enc(torch.rand(7, 3))
    assert y.shape == (7, 12) and y.dtype == expected
    assert enc(torch.rand(2, 5, 3, dtype=torch.float64)).shape == (2, 5, 12)
    assert enc(torch.rand(0, 3)).shape == (0, 12)


def test_grid_init_follows_tcnn_distribution_and_seed():
    a = tcnn.Encoding(3, SMALL_GRID, seed=7)
    b = tcnn.Encoding(3, SMALL_GRID, seed=7)
    c = tcnn.Encoding(3, SMALL_GRID, seed=8)
    p = a.params.detach()
    assert p.abs().max() <= 1e-4 and p.abs().max() > 0.9e-4
    assert abs(p.mean().item()) < 1e-5 and p.std().item() == pytest.approx(1e-4 / math.sqrt(3), rel=0.05)
    assert torch.equal(p, b.params.detach())
    assert not torch.equal(p, c.params.detach())


def test_grid_gradients_and_double_backward():
    enc = tcnn.Encoding(3, SMALL_GRID)
    with torch.no_grad():
        enc.params.uniform_(-0.5, 0.5)
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    y = enc(x)
    w = torch.randn_like(y)
    gx, gp = torch.autograd.grad((y * w).sum(), [x, enc.params], create_graph=True)
    assert gp.abs().sum() > 0 and gx.abs().sum() > 0
    # eikonal-style term: the input gradient is itself differentiable w.r.t. the table
    (ggp,) = torch.autograd.grad(gx.pow(2).sum(), enc.params)
    assert ggp.abs().sum() > 0
    # and agrees with autograd through the pure-PyTorch reference
    cfg = enc._encoding.config
    p = enc.params.detach().clone().requires_grad_()
    (rgx,) = torch.autograd.grad((ref_hash_encode(x, p, cfg) * w).sum(), x, create_graph=True)
    (rggp,) = torch.autograd.grad(rgx.pow(2).sum(), p)
    assert_close(gx, rgx, atol=1e-3, rtol=1e-4, what="d out / d x")
    assert_close(ggp, rggp, atol=1e-2, rtol=1e-3, what="double backward")


# Other encodings ---------------------------------------------------------------------------------

def test_frequency_values_and_layout():
    enc = tcnn.Encoding(1, {"otype": "Frequency", "n_frequencies": 2})
    y = enc(torch.tensor([[0.25]]))
    s = math.sqrt(0.5)  # sin(pi/4), cos(pi/4), sin(pi/2), cos(pi/2)
    assert_close(y, torch.tensor([[s, s, 1.0, 0.0]]), atol=1e-6, rtol=0, what="frequency x=0.25")
    # per input dim, per frequency: sin then cos
    enc2 = tcnn.Encoding(2, {"otype": "Frequency", "n_frequencies": 2})
    y2 = enc2(torch.tensor([[0.25, 0.5]]))
    expected = [s, s, 1.0, 0.0, 1.0, 0.0, 0.0, -1.0]
    assert enc2.n_output_dims == 8
    assert_close(y2, torch.tensor([expected]), atol=1e-6, rtol=0, what="frequency 2 dims")


def test_frequency_default_has_12_frequencies():
    assert tcnn.Encoding(3, {"otype": "Frequency"}).n_output_dims == 3 * 12 * 2


def _sh_input(direction):
    d = torch.tensor(direction, dtype=torch.float64)
    return ((d / d.norm() + 1) / 2).float()[None]  # tcnn expects (v + 1) / 2


def test_spherical_harmonics_degree2_known_directions():
    enc = tcnn.Encoding(3, {"otype": "SphericalHarmonics", "degree": 2})
    assert enc.n_output_dims == 4
    y = enc(_sh_input([0.6, 0.0, 0.8]))
    c0, c1 = 0.28209479177387814, 0.48860251190291987  # 1/(2 sqrt(pi)), sqrt(3)/(2 sqrt(pi))
    assert_close(y, torch.tensor([[c0, 0.0, c1 * 0.8, -c1 * 0.6]]), atol=2e-6, rtol=0, what="SH deg 2")

    enc3 = tcnn.Encoding(3, {"otype": "SphericalHarmonics", "degree": 3})
    x, y_, z = 1 / 3, 2 / 3, 2 / 3
    c2, c3, c4, c5 = 1.0925484305920792, 0.94617469575755997, 0.31539156525251999, 0.54627421529603959
    expected = [c0, -c1 * y_, c1 * z, -c1 * x, c2 * x * y_, -c2 * y_ * z, c3 * z * z - c4, -c2 * x * z,
                c5 * (x * x - y_ * y_)]
    assert_close(enc3(_sh_input([1.0, 2.0, 2.0])), torch.tensor([expected]), atol=2e-6, rtol=0, what="SH deg 3")


def test_spherical_harmonics_degree4_matches_tcnn_polynomials():
    u = torch.rand(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x, y, z = (u * 2 - 1).unbind(-1)  # tcnn does not normalise, so off-sphere points are fair game
    xy, xz, yz, x2, y2, z2 = x * y, x * z, y * z, x * x, y * y, z * z
    # tcnn's sh_enc (common_device.h), bands 0-3
    expected = torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * z2 - 0.31539156525251999,
        -1.0925484305920792 * xz, 0.54627421529603959 * x2 - 0.54627421529603959 * y2,
        0.59004358992664352 * y * (-3.0 * x2 + y2), 2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (1.0 - 5.0 * z2), 0.3731763325901154 * z * (5.0 * z2 - 3.0),
        0.45704579946446572 * x * (1.0 - 5.0 * z2), 1.4453057213202769 * z * (x2 - y2),
        0.59004358992664352 * x * (-x2 + 3.0 * y2),
    ], dim=-1)
    enc = tcnn.Encoding(3, {"otype": "SphericalHarmonics"})  # default degree 4
    assert_close(enc(u.float()), expected, atol=1e-5, rtol=1e-5, what="SH deg 4")


def test_spherical_harmonics_gradient_flows_to_directions():
    enc = tcnn.Encoding(3, {"otype": "SphericalHarmonics", "degree": 3})
    x = torch.rand(10, 3, requires_grad=True)
    enc(x).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0
    assert enc.params.numel() == 0


def test_identity_scale_offset():
    enc = tcnn.Encoding(2, {"otype": "Identity", "scale": 2.0, "offset": -1.0})
    assert_close(enc(torch.tensor([[0.25, 1.0]])), torch.tensor([[-0.5, 1.0]]), atol=0, rtol=0, what="identity")


def test_composite_consumes_dims_in_order_and_pads_like_tcnn():
    cfg = {"otype": "Composite", "nested": [
        {"otype": "Identity", "n_dims_to_encode": 1},
        {**SMALL_GRID, "n_dims_to_encode": 3, "n_features_per_level": 4},
        {"otype": "Frequency", "n_frequencies": 2},  # takes the remaining dim
    ]}
    enc = tcnn.Encoding(5, cfg)
    grid = tcnn.Encoding(3, {**SMALL_GRID, "n_features_per_level": 4})
    # the identity (1 wide) is padded with ones so that the grid starts at a multiple of its 4 features
    assert enc.n_output_dims == 4 + 24 + 4
    assert enc.params.numel() == grid.params.numel()
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
        grid.params.copy_(enc.params)
    x = torch.rand(50, 5, requires_grad=True)
    y = enc(x)
    assert_close(y[:, :1], x[:, :1], atol=0, rtol=0, what="identity part")
    assert torch.equal(y[:, 1:4], torch.ones(50, 3))
    assert_close(y[:, 4:28], grid(x[:, 1:4]), atol=1e-6, rtol=0, what="grid part")
    freq = tcnn.Encoding(1, {"otype": "Frequency", "n_frequencies": 2})
    assert_close(y[:, 28:], freq(x[:, 4:]), atol=1e-6, rtol=0, what="frequency part")
    y.sum().backward()
    assert enc.params.grad.abs().sum() > 0 and x.grad[:, 4].abs().sum() > 0


# Networks ----------------------------------------------------------------------------------------

def test_network_param_count_and_shape():
    net = tcnn.Network(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2})
    # input padded 3 -> 16, output 1 -> 16, no biases: 64x16 + 64x64 + 16x64
    assert net.params.numel() == 64 * 16 + 64 * 64 + 16 * 64
    y = net(torch.rand(11, 3))
    assert y.shape == (11, 1) and y.dtype == torch.float32
    cut = tcnn.Network(20, 5, {"otype": "CutlassMLP", "n_neurons": 24, "n_hidden_layers": 0})
    assert cut.params.numel() == 16 * 32  # one layer: padded output 16 x padded input 32
    # defaults: 128 neurons, 5 hidden layers
    default = tcnn.Network(16, 16, {"otype": "FullyFusedMLP"})
    assert default.params.numel() == 128 * 16 + 4 * 128 * 128 + 16 * 128


def test_network_init_bounds_are_xavier_on_padded_shapes():
    net = tcnn.Network(3, 1, {"otype": "CutlassMLP", "n_neurons": 48, "n_hidden_layers": 2}, seed=5)
    p, offset = net.params.detach(), 0
    for fan_out, fan_in in [(48, 16), (48, 48), (16, 48)]:
        w = p[offset:offset + fan_out * fan_in]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
        offset += fan_out * fan_in
    assert offset == p.numel()


def _manual_mlp(params, x_padded, shapes, act, out_act):
    h, p = x_padded, 0
    for i, (o, n) in enumerate(shapes):
        h = h @ params[p:p + o * n].view(o, n).T
        p += o * n
        h = out_act(h) if i == len(shapes) - 1 else act(h)
    return h


def test_network_matches_plain_mlp_with_ones_padding():
    net = tcnn.Network(3, 2, {**SMALL_MLP, "output_activation": "Sigmoid"}, seed=4)
    x = torch.rand(9, 3)
    padded = torch.cat([x, torch.ones(9, 13)], dim=-1)  # tcnn's Identity encoding pads with ones
    shapes = [(32, 16), (32, 32), (16, 32)]
    ref = _manual_mlp(net.params.detach(), padded, shapes, torch.relu, torch.sigmoid)[:, :2]
    assert_close(net(x), ref, atol=1e-6, rtol=1e-6, what="network vs manual MLP")


@pytest.mark.parametrize("name,fn", [
    ("None", lambda v: v),
    ("ReLU", torch.relu),
    ("LeakyReLU", lambda v: torch.where(v > 0, v, 0.01 * v)),
    ("SiLU", lambda v: v * torch.sigmoid(v)),
    ("Exponential", torch.exp),
    ("Sine", torch.sin),
    ("Sigmoid", torch.sigmoid),
    ("Squareplus", lambda v: 0.5 * (10 * v + torch.sqrt(100 * v * v + 4)) / 10),
    ("Softplus", lambda v: torch.log(torch.exp(10 * v) + 1) / 10),
    ("Tanh", torch.tanh),
])
def test_output_activations_follow_tcnn_definitions(name, fn):
    net = tcnn.Network(4, 3, {"otype": "CutlassMLP", "n_hidden_layers": 0, "output_activation": name})
    x = torch.rand(6, 4)
    pre = torch.cat([x, torch.ones(6, 12)], dim=-1) @ net.params.detach().view(16, 16).T
    assert_close(net(x), fn(pre[:, :3]), atol=1e-5, rtol=1e-5, what=name)


def test_network_with_input_encoding_layout_and_gradients():
    model = tcnn.NetworkWithInputEncoding(3, 4, SMALL_GRID, SMALL_MLP, seed=9)
    grid = tcnn.Encoding(3, SMALL_GRID)
    n_net = 32 * 16 + 32 * 32 + 16 * 32  # grid output 12 padded to 16
    assert model.params.numel() == n_net + grid.params.numel()
    # network first, then encoding (tcnn's order): the tail has the grid's init range
    assert model.params.detach()[n_net:].abs().max() <= 1e-4
    assert model.params.detach()[:n_net].abs().max() > 1e-2
    with torch.no_grad():
        model.params[n_net:].uniform_(-1, 1)
        grid.params.copy_(model.params[n_net:])
    x = torch.rand(40, 3, requires_grad=True)
    y = model(x)
    padded = torch.cat([grid(x), torch.zeros(40, 4)], dim=-1)  # grids pad with zeros
    ref = _manual_mlp(model.params.detach()[:n_net], padded, [(32, 16), (32, 32), (16, 32)], torch.relu,
                      lambda v: v)[:, :4]
    assert y.shape == (40, 4)
    assert_close(y, ref, atol=1e-5, rtol=1e-5, what="network with input encoding")
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gp,) = torch.autograd.grad(gx.pow(2).sum(), model.params)
    assert gp[:n_net].abs().sum() > 0 and gp[n_net:].abs().sum() > 0


def test_spherical_harmonics_padding_goes_first_inside_a_network():
    model = tcnn.NetworkWithInputEncoding(3, 3, {"otype": "SphericalHarmonics", "degree": 3},
                                          {"otype": "CutlassMLP", "n_hidden_layers": 0})
    x = torch.rand(5, 3)
    sh = tcnn.Encoding(3, {"otype": "SphericalHarmonics", "degree": 3})(x)
    padded = torch.cat([torch.ones(5, 7), sh], dim=-1)  # tcnn writes the 7 padding ones before the 9 SH values
    ref = padded @ model.params.detach().view(16, 16).T
    assert_close(model(x), ref[:, :3], atol=1e-6, rtol=1e-6, what="SH padding order")


def test_state_dict_has_tcnn_key():
    model = tcnn.NetworkWithInputEncoding(3, 1, SMALL_GRID, SMALL_MLP)
    assert list(model.state_dict()) == ["params"]
    copy = tcnn.NetworkWithInputEncoding(3, 1, SMALL_GRID, SMALL_MLP, seed=2)
    copy.load_state_dict(model.state_dict())
    x = torch.rand(8, 3)
    assert torch.equal(copy(x), model(x))


# Errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,match", [
    ({"otype": "Bogus"}, "unknown encoding otype 'Bogus'"),
    ({**SMALL_GRID, "n_level": 4}, "unknown key 'n_level'"),
    ({**SMALL_GRID, "interpolation": "Nearest"}, "interpolation='Nearest' is not supported by pyengine"),
    ({**SMALL_GRID, "type": "Tiled"}, "type='Tiled' is not supported by pyengine"),
    ({**SMALL_GRID, "hash": "Prime"}, "hash='Prime' is not supported by pyengine"),
    ({**SMALL_GRID, "stochastic_interpolation": True}, "stochastic_interpolation=true is not supported"),
    ({"otype": "OneBlob", "n_bins": 16}, "'OneBlob' is not supported by pyengine"),
    ({"otype": "TiledGrid"}, "'TiledGrid' is not supported by pyengine"),
    ({**SMALL_GRID, "n_features": 12}, "either 'n_levels' or 'n_features'"),
    ({"otype": "Frequency", "n_frequencies": "8"}, "'n_frequencies' must be an integer"),
    ({"otype": "Composite", "nested": [{"otype": "Identity", "n_dims_to_encode": 4}]}, "more than n_input_dims=3"),
    ({"otype": "Composite", "nested": [{"otype": "Identity", "dims_to_encode_begin": 1, "n_dims_to_encode": 1}]},
     "'dims_to_encode_begin' is not supported by pyengine"),
    ({"otype": "Composite", "nested": [{"otype": "Identity", "scal": 2.0}]}, r"nested\[0\].*unknown key 'scal'"),
])
def test_encoding_config_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        tcnn.Encoding(3, cfg)


def test_spherical_harmonics_config_errors():
    with pytest.raises(ValueError, match="3-D directions"):
        tcnn.Encoding(2, {"otype": "SphericalHarmonics"})
    with pytest.raises(ValueError, match="'degree' must be in 1..8"):
        tcnn.Encoding(3, {"otype": "SphericalHarmonics", "degree": 9})


@pytest.mark.parametrize("cfg,match", [
    ({"otype": "ResNet"}, "unknown network otype 'ResNet'"),
    ({**SMALL_MLP, "activation": "GELU"}, "'activation' must be one of"),
    ({**SMALL_MLP, "n_neurons": 48}, "FullyFusedMLP supports n_neurons"),
    ({**SMALL_MLP, "activation": "Sine"}, "no 'Sine' hidden activation"),
    ({**SMALL_MLP, "feedback_alignment": True}, "feedback_alignment=true is not supported"),
    ({**SMALL_MLP, "n_hidden_layer": 2}, "unknown key 'n_hidden_layer'"),
    ({**SMALL_MLP, "n_hidden_layers": 0}, "'n_hidden_layers' must be an integer >= 1"),
])
def test_network_config_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        tcnn.Network(3, 1, cfg)


def test_forward_input_errors_name_the_argument():
    enc = tcnn.Encoding(3, SMALL_GRID)
    with pytest.raises(ValueError, match=r"x must be \[batch, 3\]"):
        enc(torch.rand(4, 2))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        enc(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        enc([[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="dtype must be"):
        tcnn.Encoding(3, SMALL_GRID, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_input_dims must be a positive int"):
        tcnn.Network(0, 1, SMALL_MLP)


def test_non_strict_mode_warns_on_unknown_keys(monkeypatch):
    # threestudio's ProgressiveBandHashGrid passes its own keys through to tcnn.Encoding
    cfg = {**SMALL_GRID, "otype": "Grid", "type": "Hash", "start_level": 2, "start_step": 0, "update_steps": 10}
    with pytest.raises(ValueError, match="unknown keys 'start_level', 'start_step', 'update_steps'"):
        tcnn.Encoding(3, cfg)
    monkeypatch.setattr(tcnn, "STRICT", False)
    with pytest.warns(UserWarning, match="unknown keys 'start_level', 'start_step', 'update_steps'") as record:
        enc = tcnn.Encoding(3, cfg)
    assert len(record) == 1 and record[0].filename == __file__  # one warning, pointing at the caller
    assert enc.n_output_dims == 12
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="interpolation='Nearest'"):
        tcnn.Encoding(3, {**cfg, "interpolation": "Nearest"})  # unsupported values stay errors


def test_module_level_functions():
    assert tcnn.supports_jit_fusion() is False
    assert tcnn.free_temporary_memory() is None
    enc = tcnn.Encoding(3, SMALL_GRID)
    assert enc.jit_fusion is False
    assert set(tcnn.__all__) >= {"Encoding", "Network", "NetworkWithInputEncoding", "supports_jit_fusion",
                                 "free_temporary_memory"}


# install_tinycudann and a threestudio-style script -----------------------------------------------

@pytest.fixture
def clean_tinycudann_modules():
    saved = {k: sys.modules.pop(k) for k in ("tinycudann", "tinycudann.modules") if k in sys.modules}
    import pyengine.compat.tcnn as shim

    strict = shim.STRICT
    yield
    for key in ("tinycudann", "tinycudann.modules"):
        sys.modules.pop(key, None)
    sys.modules.update(saved)
    shim.STRICT = strict


def test_install_tinycudann_registers_the_shim(clean_tinycudann_modules):
    import pyengine.compat

    module = pyengine.compat.install_tinycudann(force=True)
    import tinycudann
    from tinycudann.modules import Encoding

    assert tinycudann is tcnn and module is tcnn and Encoding is tcnn.Encoding
    assert tinycudann.Encoding(3, SMALL_GRID).n_output_dims == 12


def test_install_tinycudann_keeps_a_registered_module_unless_forced(clean_tinycudann_modules):
    import types

    import pyengine.compat

    other = types.ModuleType("tinycudann")
    sys.modules["tinycudann"] = other
    assert pyengine.compat.install_tinycudann(strict=False) is other
    assert tcnn.STRICT is True  # strict= only touches the shim when the shim is what gets installed
    assert pyengine.compat.install_tinycudann(force=True, strict=False) is tcnn
    assert sys.modules["tinycudann"] is tcnn and tcnn.STRICT is False


def test_threestudio_style_script_trains():
    script = Path(__file__).with_name("threestudio_style.py")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny workloads; avoids OpenMP spin-waits on busy CI machines
    proc = subprocess.run([sys.executable, str(script), "--steps", "30"], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "tinycudann module: pyengine.compat.tcnn" in proc.stdout
    initial = float(re.search(r"^initial_loss (\S+)$", proc.stdout, re.MULTILINE).group(1))
    final = float(re.search(r"^final_loss (\S+)$", proc.stdout, re.MULTILINE).group(1))
    assert final < 0.5 * initial, proc.stdout
