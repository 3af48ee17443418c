"""texture: every backend against the reference (tests/op_harness.py) in every filter and boundary
mode, hand-computed samples of nvdiffrast's texel-centre convention, and the modes' edge rules."""

from __future__ import annotations

import pytest
import torch

import pyengine
from pyengine.ops import texture as texture_mod
from pyengine.ops.texture import texture
from pyengine.reference import texture as ref_mod
from tests.helpers import assert_close
from tests.op_harness import Bad, Case, OpSuite, change

CPU_BACKENDS = ["reference", "cpu"]
MODES = [(f, b) for f in ("nearest", "linear") for b in ("wrap", "clamp", "zero")]


def make(g, dtype, device, B=2, Bt=None, Ht=5, Wt=7, C=3, h=6, w=9, spread=1.6, filter_mode="linear",
         boundary_mode="wrap", special=False):
    """Random textures and coordinates over [-spread / 2 + 1/2, spread / 2 + 1/2]^2 (outside the
    unit square too), plus, with ``special``, coordinates on texel centres, texel edges, the
    borders, and non-finite ones."""
    Bt = B if Bt is None else Bt
    tex = torch.randn(Bt, Ht, Wt, C, generator=g, dtype=torch.float64)
    uv = (torch.rand(B, h, w, 2, generator=g, dtype=torch.float64) - 0.5) * spread + 0.5
    if special and B * h * w >= 12:
        flat = uv.view(-1, 2)
        flat[0] = torch.tensor([0.5 / Wt, 0.5 / Ht])  # the first texel's centre
        flat[1] = torch.tensor([1 - 0.5 / Wt, 1 - 0.5 / Ht])  # the last texel's centre
        flat[2] = torch.tensor([0.0, 0.0])
        flat[3] = torch.tensor([1.0, 1.0])
        flat[4] = torch.tensor([2.0 / Wt, 3.0 / Ht])  # texel edges
        flat[5] = torch.tensor([-1e-9, 1 + 1e-9])
        flat[6] = torch.tensor([float("nan"), 0.5])
        flat[7] = torch.tensor([0.5, float("inf")])
        flat[8] = torch.tensor([-3.25, 7.75])
        flat[9] = torch.tensor([1e6, -1e6])
    args = (tex.to(dtype).to(device), uv.to(dtype).to(device))
    return args, {"filter_mode": filter_mode, "boundary_mode": boundary_mode}


def _case(name, **kw):
    case_kw = {k: kw.pop(k) for k in ("cpu", "triton", "dtypes") if k in kw}
    return Case(name, lambda g, dtype, device: make(g, dtype, device, **kw), **case_kw)


CASES = ([_case(f"{f}-{b}", filter_mode=f, boundary_mode=b, special=True) for f, b in MODES]
         + [_case(f"shared-{f}-{b}", Bt=1, B=3, filter_mode=f, boundary_mode=b) for f, b in MODES]
         + [_case("odd-C1", B=1, Ht=1, Wt=13, C=1, h=17, w=3, boundary_mode="clamp"),
            _case("one-texel", B=2, Ht=1, Wt=1, C=2, h=4, w=5),
            _case("C5-zero", B=1, C=5, boundary_mode="zero", spread=3.0),
            _case("auto", filter_mode="auto"),
            _case("empty-batch", B=0),
            _case("empty-image", h=0),
            _case("zero-channels", C=0),
            _case("empty-texture", Ht=0),
            _case("gradcheck", B=1, Ht=3, Wt=4, C=2, h=3, w=4, boundary_mode="zero", dtypes=(torch.float64,)),
            _case("large", B=2, Ht=64, Wt=48, C=4, h=120, w=100, spread=1.2, cpu=False)])


def _base(g, device):
    return make(g, torch.float32, device, B=2, h=3, w=4)


BAD = [
    Bad("int-tex", change(0, lambda t: t.long()), TypeError, "tex must be float16"),
    Bad("2d-tex", change(0, lambda t: t[0, 0]), ValueError, r"tex must be \[P, Ht, Wt, C\]"),
    Bad("uv-3", change(1, lambda t: torch.cat([t, t[..., :1]], -1)), ValueError, r"uv must be \[B, H, W, 2\]"),
    Bad("tex-batch", change(0, lambda t: torch.cat([t, t, t])), ValueError,
        r"tex must be \[Ht, Wt, C\], \[1, Ht, Wt, C\] or \[B, Ht, Wt, C\] with B = 2"),
    Bad("filter", change("filter_mode", lambda _: "cubic"), ValueError, "filter_mode must be one of"),
    Bad("mipmap", change("filter_mode", lambda _: "linear-mipmap-linear"), ValueError,
        "mipmaps and cube maps are not provided"),
    Bad("cube", change("boundary_mode", lambda _: "cube"), ValueError, "boundary_mode must be one of"),
    Bad("meta-uv", change(1, lambda t: t.to("meta")), ValueError, "uv is on meta but tex is on cpu"),
    Bad("unknown-backend", lambda a, k: (a, {**k, "backend": "fast"}), ValueError, "unknown backend 'fast'"),
    Bad("cuda-on-cpu", lambda a, k: (a, {**k, "backend": "cuda"}), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(texture_mod.OP, texture, CASES, grads=(0, 1),
                tol={torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-10)}, base=_base, bad=BAD,
                gradcheck_case="gradcheck")
globals().update(SUITE.tests())


# --------------------------------------------------------------------------------- hand-computed


def _tex():
    return torch.arange(6.0, dtype=torch.float64).reshape(1, 2, 3, 1)  # rows (0 1 2) and (3 4 5)


def _sample(u, v, backend, **kw):
    uv = torch.tensor([[[[u, v]]]], dtype=torch.float64)
    return float(texture(_tex(), uv, backend=backend, **kw)[0, 0, 0, 0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_texel_centres_and_bilinear_weights(backend):
    """Texel (row j, column i) is centred at ((i + 0.5) / Wt, (j + 0.5) / Ht); u picks columns."""
    for j in range(2):
        for i in range(3):
            for mode in ("wrap", "clamp", "zero"):
                assert _sample((i + 0.5) / 3, (j + 0.5) / 2, backend, boundary_mode=mode) == 3 * j + i
    # between the centres of (0, 0), (0, 1), (1, 0), (1, 1): 30 % of the way along u, 75 % along v
    u, v = (0.5 + 0.3) / 3, (0.5 + 0.75) / 2
    want = (1 - 0.75) * ((1 - 0.3) * 0 + 0.3 * 1) + 0.75 * ((1 - 0.3) * 3 + 0.3 * 4)
    assert abs(_sample(u, v, backend) - want) < 1e-12
    # nearest: the texel that contains uv
    assert _sample(0.34, 0.49, backend, filter_mode="nearest") == 1
    assert _sample(0.99, 0.51, backend, filter_mode="nearest") == 5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_boundary_modes(backend):
    # wrap: u = 1/6 - 1/6 = 0 sits between the last column's centre and the first's
    assert abs(_sample(0.0, 0.25, backend) - (2 + 0) / 2) < 1e-12
    assert abs(_sample(1.0 + 0.5 / 3, 0.25 + 3, backend) - 0) < 1e-12  # whole periods away
    # clamp: held at the edge texels' values
    assert _sample(-5.0, 0.25, backend, boundary_mode="clamp") == 0
    assert _sample(0.0, 0.25, backend, boundary_mode="clamp") == 0
    assert _sample(7.0, 9.0, backend, boundary_mode="clamp") == 5
    # zero: halfway between the first column's centre and the zeros outside
    assert abs(_sample(0.0, 0.25, backend, boundary_mode="zero") - 0.5 * 0) < 1e-12
    assert abs(_sample(0.0, 0.75, backend, boundary_mode="zero") - 0.5 * 3) < 1e-12
    assert _sample(-0.5, 0.75, backend, boundary_mode="zero") == 0
    assert _sample(1.2, 0.75, backend, boundary_mode="zero", filter_mode="nearest") == 0
    assert _sample(-0.2, 0.75, backend, boundary_mode="wrap", filter_mode="nearest") == 5
    assert _sample(float("nan"), 0.75, backend) == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_uv_gradient_is_texture_slope(backend):
    """Between texel centres, d out / du = Wt (right texel - left texel), blended along v; clamped
    and nearest lookups have none."""
    uv = torch.tensor([[[[(0.5 + 0.3) / 3, (0.5 + 0.75) / 2]]]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(texture(_tex(), uv, backend=backend).sum(), uv)
    assert_close(g[0, 0, 0], torch.tensor([3 * 1.0, 2 * 3.0], dtype=torch.float64), atol=1e-12, rtol=0, what="duv")
    uv2 = torch.tensor([[[[-0.4, 0.25], [0.4, 0.6]]]], dtype=torch.float64, requires_grad=True)
    (g2,) = torch.autograd.grad(texture(_tex(), uv2, boundary_mode="clamp", backend=backend).sum(), uv2)
    assert g2[0, 0, 0, 0] == 0 and g2[0, 0, 0, 1] == 0  # clamped on u, on the first row's centre on v
    (g3,) = torch.autograd.grad(texture(_tex(), uv2, filter_mode="nearest", backend=backend).sum(), uv2)
    assert g3.abs().sum() == 0


def test_shared_texture_gradient_sums_over_images():
    g = torch.Generator().manual_seed(2)
    (tex, uv), kw = make(g, torch.float64, "cpu", B=3, Bt=1)
    for backend in CPU_BACKENDS:
        t = tex.clone().requires_grad_()
        (gt,) = torch.autograd.grad(texture(t, uv, backend=backend, **kw).sum(), t)
        want = sum(torch.autograd.grad(ref_mod.texture(t, uv[i:i + 1], **kw).sum(), t)[0] for i in range(3))
        assert_close(gt, want, atol=1e-12, rtol=1e-12, what=backend)


def test_three_dimensional_tex_is_shared_and_dtypes_promote():
    g = torch.Generator().manual_seed(3)
    (tex, uv), kw = make(g, torch.float32, "cpu", B=2, Bt=1)
    out = texture(tex[0].half(), uv, backend="cpu", **kw)
    assert out.dtype == torch.float32
    assert_close(out, ref_mod.texture(tex.half().float(), uv, **kw), atol=1e-6, rtol=1e-5, what="half tex")
    assert texture(tex, uv.double(), backend="cpu").dtype == torch.float64
