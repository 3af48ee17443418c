"""pyengine's diffusers attention processors against diffusers' default ones, on tiny random models."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0  # noqa: E402

import pyengine.compat.diffusers as pd  # noqa: E402
from pyengine.compat.diffusers import (  # noqa: E402
    PyengineAttnProcessor,
    PyengineTemporalAttnProcessor,
    set_pyengine_processors,
)
from tests.helpers import assert_close  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4  # float32 model outputs
GTOL = 2e-4


def _unet3d():
    torch.manual_seed(0)
    return diffusers.UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        norm_num_groups=4, cross_attention_dim=12, attention_head_dim=4)


def _unet_motion():
    torch.manual_seed(0)
    return diffusers.UNetMotionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), norm_num_groups=4, cross_attention_dim=12,
        num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=8)


def _randomize_(model, std=0.1):
    """Random weights everywhere (diffusers zero-initialises some layers, e.g. the temporal convs'
    last one), so that every attention output reaches the model output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * std + centre)
    return model


class _Counter:
    """Counts st_attention calls by mode while the processors run."""

    def __init__(self, monkeypatch):
        self.calls = {"spatial": 0, "temporal": 0}
        real = pd.st_attention

        def counted(*args, **kw):
            self.calls[kw["mode"]] += 1
            return real(*args, **kw)

        monkeypatch.setattr(pd, "st_attention", counted)


def _self_attention_layers(model, temporal: bool):
    ids = pd._temporal_attention_ids(model)
    return sum(1 for m in model.modules() if isinstance(m, Attention) and not m.is_cross_attention
               and (id(m) in ids) == temporal)


def _run_both(model, inputs, monkeypatch, n_expected):
    model.eval()  # UNet3DConditionModel's temporal convs have dropout 0.1
    model.set_attn_processor(AttnProcessor2_0())
    x = inputs["sample"].clone().requires_grad_(True)
    ref = model(**{**inputs, "sample": x}).sample
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, *model.parameters()], g)

    counter = _Counter(monkeypatch)
    assert set_pyengine_processors(model) == n_expected
    x2 = inputs["sample"].clone().requires_grad_(True)
    out = model(**{**inputs, "sample": x2}).sample
    grads = torch.autograd.grad(out, [x2, *model.parameters()], g)
    assert_close(out, ref, ATOL, RTOL, what="model output")
    names = ["sample"] + [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, grads, ref_grads, strict=True):
        assert_close(a, b, GTOL, GTOL, what=f"grad {name}")
    # every self-attention layer went through the op, in the mode of its layer
    assert counter.calls == {"spatial": _self_attention_layers(model, False),
                             "temporal": _self_attention_layers(model, True)}, counter.calls
    return model


def test_unet3d_condition_model(monkeypatch):
    model = _randomize_(_unet3d())
    inputs = {"sample": torch.randn(2, 4, 4, 8, 8), "timestep": torch.tensor([10, 500]),
              "encoder_hidden_states": torch.randn(2, 5, 12)}
    _run_both(model, inputs, monkeypatch, n_expected=len(model.attn_processors))
    procs = model.attn_processors
    assert isinstance(procs["transformer_in.transformer_blocks.0.attn1.processor"], PyengineTemporalAttnProcessor)
    assert isinstance(procs["down_blocks.0.temp_attentions.0.transformer_blocks.0.attn2.processor"],
                      PyengineTemporalAttnProcessor)
    assert type(procs["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"]) is PyengineAttnProcessor


def test_unet_motion_model(monkeypatch):
    model = _randomize_(_unet_motion())
    B, T = 1, 4
    # AnimateDiff's pipeline repeats the text embedding per frame before the U-Net
    inputs = {"sample": torch.randn(B, 4, T, 8, 8), "timestep": torch.tensor([42]),
              "encoder_hidden_states": torch.randn(B, 5, 12).repeat_interleave(T, 0)}
    _run_both(model, inputs, monkeypatch, n_expected=len(model.attn_processors))
    procs = model.attn_processors
    assert isinstance(procs["mid_block.motion_modules.0.transformer_blocks.0.attn1.processor"],
                      PyengineTemporalAttnProcessor)
    assert type(procs["mid_block.attentions.0.transformer_blocks.0.attn1.processor"]) is PyengineAttnProcessor


def test_motion_adapter_and_temporal_transformer():
    torch.manual_seed(3)
    adapter = diffusers.MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=4,
                                      motion_num_attention_heads=2, motion_max_seq_length=8)
    n = set_pyengine_processors(adapter)
    layers = [m for m in adapter.modules() if isinstance(m, Attention)]
    assert n == len(layers) > 0
    assert all(isinstance(m.processor, PyengineTemporalAttnProcessor) for m in layers)
    # one motion module, called as diffusers calls it: [B T, C, H, W] and num_frames
    mm = _randomize_(adapter.down_blocks[1].motion_modules[0])
    x = torch.randn(2 * 5, 16, 3, 3)
    out = mm(x, num_frames=5)
    for m in mm.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor2_0())
    assert_close(out, mm(x, num_frames=5), ATOL, RTOL, what="motion module")


def test_svd_spatio_temporal_transformer():
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    torch.manual_seed(5)
    model = _randomize_(TransformerSpatioTemporalModel(num_attention_heads=2, attention_head_dim=16, in_channels=32,
                                                       cross_attention_dim=12))
    B, T = 2, 3
    args = (torch.randn(B * T, 32, 3, 4), torch.randn(B * T, 5, 12), torch.zeros(B, T))
    ref = model(*args).sample
    assert set_pyengine_processors(model) == 4
    blk = model.temporal_transformer_blocks[0]
    assert isinstance(blk.attn1.processor, PyengineTemporalAttnProcessor)
    assert type(model.transformer_blocks[0].attn1.processor) is PyengineAttnProcessor
    assert_close(model(*args).sample, ref, ATOL, RTOL, what="TransformerSpatioTemporalModel")


def _layer(**kw):
    torch.manual_seed(4)
    args = dict(query_dim=16, heads=2, dim_head=8)
    args.update(kw)
    return _randomize_(Attention(**args), std=0.3)


@pytest.mark.parametrize("proc_cls", [PyengineAttnProcessor, PyengineTemporalAttnProcessor])
@pytest.mark.parametrize("case", ["self", "cross", "mask", "group_norm", "qk_norm", "image", "no_scale_qk", "fp64"])
def test_processor_matches_default_per_layer(proc_cls, case):
    x = torch.randn(6, 5, 16)
    kw, call = {}, {}
    if case == "cross":
        kw["cross_attention_dim"] = 12
        call["encoder_hidden_states"] = torch.randn(6, 7, 12)
    elif case == "mask":
        call["attention_mask"] = torch.where(torch.rand(6, 1, 5) < 0.3, -1e4, 0.0)
    elif case == "group_norm":
        kw.update(norm_num_groups=4, residual_connection=True, rescale_output_factor=2.0)
    elif case == "qk_norm":
        kw.update(qk_norm="layer_norm")
    elif case == "image":
        kw.update(norm_num_groups=4, residual_connection=True)
        x = torch.randn(2, 16, 3, 4)
    elif case == "no_scale_qk":
        kw.update(scale_qk=False)
    attn = _layer(**kw)
    if case == "fp64":
        attn, x = attn.double(), x.double()
    default = AttnProcessor() if case == "no_scale_qk" else AttnProcessor2_0()
    attn.set_processor(default)
    x1 = x.clone().requires_grad_(True)
    ref = attn(x1, **call)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x1, *attn.parameters()], g)
    attn.set_processor(proc_cls())
    x2 = x.clone().requires_grad_(True)
    out = attn(x2, **call)
    grads = torch.autograd.grad(out, [x2, *attn.parameters()], g)
    tol = 1e-10 if case == "fp64" else 2e-5
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close(out, ref, tol, tol, what=f"{case} output")
    for a, b in zip(grads, ref_grads, strict=True):
        assert_close(a, b, tol, tol, what=f"{case} gradient")


def test_op_used_only_where_it_applies(monkeypatch):
    counter = _Counter(monkeypatch)
    attn = _layer(cross_attention_dim=12)
    attn.set_processor(PyengineAttnProcessor())
    attn(torch.randn(3, 5, 16), encoder_hidden_states=torch.randn(3, 7, 12))  # text cross-attention: SDPA
    assert counter.calls == {"spatial": 0, "temporal": 0}
    attn(torch.randn(3, 5, 16), encoder_hidden_states=torch.randn(3, 5, 12))  # keys shaped like the queries
    assert counter.calls == {"spatial": 1, "temporal": 0}
    attn = _layer()
    attn.set_processor(PyengineTemporalAttnProcessor())
    attn(torch.randn(3, 5, 16))
    assert counter.calls == {"spatial": 1, "temporal": 1}


def test_spatial_choice_routes_spatial_self_attention(monkeypatch):
    """spatial="auto" runs st_attention on the CPU (SDPA on GPUs), "sdpa" runs SDPA, with the
    same outputs; temporal layers take the op whatever the choice; other values are refused."""
    counter = _Counter(monkeypatch)
    attn = _layer()
    x = torch.randn(3, 5, 16)
    attn.set_processor(AttnProcessor2_0())
    ref = attn(x)
    outs = {}
    for spatial, want in (("auto", 1), ("st_attention", 1), ("sdpa", 0)):
        counter.calls["spatial"] = 0
        attn.set_processor(PyengineAttnProcessor(spatial=spatial))
        outs[spatial] = attn(x)
        assert counter.calls["spatial"] == want, spatial
        assert_close(outs[spatial], ref, 2e-5, 2e-5, what=spatial)
    attn.set_processor(PyengineTemporalAttnProcessor(spatial="sdpa"))
    attn(x)
    assert counter.calls["temporal"] == 1
    assert pd._spatial_impl("auto", torch.empty(1)) == "st_attention"
    assert pd._spatial_impl("auto", torch.empty(1, device="meta")) == "sdpa"
    assert pd._spatial_impl("auto", torch.empty(1, device="meta"), backend="triton") == "st_attention"
    with pytest.raises(ValueError, match="spatial must be 'auto', 'sdpa' or 'st_attention'"):
        PyengineAttnProcessor(spatial="flash")
    model = _unet3d()
    set_pyengine_processors(model, spatial="sdpa")
    assert all(p.spatial == "sdpa" for p in model.attn_processors.values())


def test_wrong_processor_is_detected():
    """The comparison can fail: a processor that attends over the wrong axis gives other outputs."""

    class Wrong(PyengineTemporalAttnProcessor):
        def __call__(self, attn, hidden_states, *args, **kwargs):
            return super().__call__(attn, hidden_states.flip(1), *args, **kwargs).flip(1).roll(1, dims=1)

    attn = _layer()
    x = torch.randn(4, 5, 16)
    attn.set_processor(AttnProcessor2_0())
    ref = attn(x)
    attn.set_processor(Wrong())
    with pytest.raises(AssertionError):
        assert_close(attn(x), ref, ATOL, RTOL)


def test_set_processors_keeps_custom_ones_and_checks_input():
    model = _unet3d()
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"

    class Custom(AttnProcessor2_0):
        pass

    model.set_attn_processor({k: (Custom() if k == key else AttnProcessor2_0()) for k in model.attn_processors})
    n = set_pyengine_processors(model, backend="reference")
    assert n == len(model.attn_processors) - 1
    assert type(model.attn_processors[key]) is Custom
    assert all(p.backend == "reference" for k, p in model.attn_processors.items() if k != key)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        set_pyengine_processors("unet")
    with pytest.raises(TypeError, match="backend"):
        PyengineAttnProcessor(backend=3)
    with pytest.raises(ValueError, match="hidden_states"):
        PyengineAttnProcessor()(_layer(), torch.randn(16))
