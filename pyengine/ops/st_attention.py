"""``st_attention``: spatial or temporal multi-head attention read straight from the video layout.

Video diffusion U-Nets factor 3D attention into attention inside each frame (spatial) and across
the frames at each pixel (temporal). The usual code permutes the activation into ``(b h w) t c``
and back as copies; here the kernels read queries, keys and values through their strides from
``[B, T, H, W, C]`` (channels last, frame-major: the native layout) or from ``[B, C, T, H, W]``
views, and write a channels-last output. Semantics: ``pyengine.reference.st_attention``.

Kernels (``pyengine.reference.st_attention``): ``st_attention_fwd(q, k, v, kv_frames, bias, pos,
heads, temporal, scale) -> (out, lse)`` and ``st_attention_bwd``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pyengine.ops import _dispatch
from pyengine.ops._define import FLOAT, T, check, define
from pyengine.reference import st_attention as _ref
from pyengine.reference.st_attention import sinusoidal_table, t5_buckets

__all__ = ["CROSS_FRAME_SOURCES", "relative_position_bias", "sinusoidal_table", "st_attention", "t5_buckets"]

#: Key/value sources of spatial attention's ``cross_frame``: the frame itself, the first frame of
#: the clip, the previous frame (the first frame's previous frame is itself).
CROSS_FRAME_SOURCES = ("self", "first", "previous")


def _fake(q, k, v, kv_frames, bias, pos, heads, temporal, scale):
    B, T_, H, W, C = q.shape
    f = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(B, T_, H, W, C), q.new_empty(B, T_, H, W, heads, dtype=f)


OP = define("st_attention",
            "(Tensor q, Tensor k, Tensor v, Tensor kv_frames, Tensor bias, Tensor pos, int heads, bool temporal, "
            "float scale) -> (Tensor, Tensor)",
            grads=("q", "k", "v", "bias"), save=(0, 1), fake=_fake, reference=_ref, cpu=True,
            triton="pyengine.kernels.st_attention", triton_dtypes=(torch.float16, torch.bfloat16, torch.float32))
# CPU tensors: the C++ kernel; CUDA tensors: Triton (the only GPU kernel), except plain spatial
# attention with no backend requested, which goes to torch's SDPA there (``_plain_spatial_sdpa``).

# Plain spatial attention (no bias, mask, position encoding or cross-frame keys) on CUDA tensors
# with no backend requested runs torch's scaled_dot_product_attention on strided views of the
# channels-last input: a spatial sequence is a frame's H W pixels, contiguous in [B, T, H, W, C],
# so the views cost no copy, and FlashAttention is tuned for exactly these sequence lengths.
# Measured side by side on the H200 (bench/RESULTS.md, commit 0f9b213, float16): our Triton
# kernel took 3-5x SDPA's time (T=16, 32x32 and 64x64, D 40 and 64). Not on the CPU: there the
# C++ kernel is 0.8x SDPA at D 40/64 but faster at small head dims (D = 8 in the bench's U-Net),
# within the noise of the shared 2 cores. Temporal attention stays on our kernels everywhere:
# they are 1.2-4x faster than SDPA there.
_SDPA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SDPA_DEVICES = ("cuda",)

_SPEC = {"q": T(FLOAT, "B T H W C"), "k": T(FLOAT, "B T H W C"), "v": T(FLOAT, "B T H W C")}


def _kv_frames(cross_frame, T_: int, device) -> torch.Tensor:
    if isinstance(cross_frame, str):
        cross_frame = (cross_frame,)
    cross_frame = tuple(cross_frame)
    bad = [s for s in cross_frame if s not in CROSS_FRAME_SOURCES]
    if not cross_frame or bad:
        raise ValueError(f"st_attention: cross_frame must be a non-empty sequence of {CROSS_FRAME_SOURCES}, "
                         f"got {cross_frame!r}")
    t = torch.arange(T_, dtype=torch.int32)
    cols = {"self": t, "first": torch.zeros_like(t), "previous": (t - 1).clamp_min(0)}
    return torch.stack([cols[s] for s in cross_frame], 1).to(device)


def st_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mode: str, heads: int,
                 layout: str = "bthwc", scale: float | None = None, bias: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, pos_encoding: bool | torch.Tensor = False,
                 cross_frame: str | Sequence[str] = ("self",), backend: str | None = None) -> torch.Tensor:
    """Multi-head attention inside each frame (``mode="spatial"``) or across frames at each pixel
    (``mode="temporal"``), with no layout copies.

    Args:
        q, k, v: ``[B, T, H, W, C]`` (``layout="bthwc"``) or ``[B, C, T, H, W]``
            (``layout="bcthw"``), all the same shape and dtype (float16, bfloat16, float32,
            float64), any strides. ``C = heads * D``; every D up to 256 works, none is padded.
        mode: ``"temporal"`` (sequences: the ``B H W`` pixels, length ``L = T``) or ``"spatial"``
            (sequences: the ``B T`` frames, length ``L = H W``, position ``h W + w``).
        heads: number of heads; must divide C.
        layout: ``"bthwc"`` or ``"bcthw"``; the output has the same layout as the inputs and is
            channels-last in memory (``[B, C, T, H, W]`` output is a ``channels_last_3d`` tensor).
        scale: score scale, default ``1 / sqrt(D)``.
        bias: additive score bias ``[Lq, Lk]`` or ``[heads or 1, Lq, Lk]`` (e.g.
            :func:`relative_position_bias`), broadcast over the sequences; differentiable.
        mask: bool ``[Lq, Lk]``: True where a query may attend to a key. A query with no allowed
            key gets an output of 0.
        pos_encoding: True adds the sinusoidal encoding (:func:`sinusoidal_table`) of each
            position (the frame index in temporal mode, the pixel index in spatial mode) to every
            head's queries and keys; a ``[L, D]`` tensor adds that table instead (constant: no
            gradient flows to it).
        cross_frame: spatial mode only: whose keys and values each frame attends to, in order, from
            :data:`CROSS_FRAME_SOURCES`: ``"self"`` (plain spatial attention), ``("first",)``
            (Pix2Video-style), ``("first", "previous")`` (Tune-A-Video's sparse-causal attention).
            ``Lk = len(cross_frame) H W``.
        backend: "cpu", "triton", "cuda" or "reference"; default: automatic (see ``_dispatch``),
            except that plain spatial self-attention on CUDA tensors (no bias, mask, position
            encoding or cross-frame keys; float16/bfloat16/float32) then runs torch's
            ``scaled_dot_product_attention`` on strided views, which is faster there.

    Returns:
        The attention output in the inputs' layout and dtype (computed in float32, float64 for
        float64 inputs). Differentiable w.r.t. q, k, v and bias.

    Example:
        >>> q = torch.randn(1, 8, 4, 4, 64)
        >>> st_attention(q, q, q, mode="temporal", heads=2).shape
        torch.Size([1, 8, 4, 4, 64])
    """
    if layout not in ("bthwc", "bcthw"):
        raise ValueError(f"st_attention: layout must be 'bthwc' or 'bcthw', got {layout!r}")
    if mode not in ("temporal", "spatial"):
        raise ValueError(f"st_attention: mode must be 'temporal' or 'spatial', got {mode!r}")
    if layout == "bcthw":
        for name, x in (("q", q), ("k", k), ("v", v)):
            if isinstance(x, torch.Tensor) and x.dim() != 5:
                raise ValueError(f"st_attention: {name} must be [B, C, T, H, W] (layout='bcthw'), got shape "
                                 f"{tuple(x.shape)}")
        q, k, v = (x.permute(0, 2, 3, 4, 1) if isinstance(x, torch.Tensor) else x for x in (q, k, v))
    check("st_attention", _SPEC, {"q": q, "k": k, "v": v})
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"st_attention: q, k and v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, T_, H, W, C = q.shape
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or C % heads:
        raise ValueError(f"st_attention: heads must be a positive int dividing C = {C}, got {heads!r}")
    D = C // heads
    if D > 256:
        raise ValueError(f"st_attention: head dim C / heads must be at most 256, got {D}")
    temporal = mode == "temporal"
    L = T_ if temporal else H * W
    if temporal:
        if tuple(cross_frame) != ("self",) and cross_frame != "self":
            raise ValueError("st_attention: cross_frame applies to mode='spatial' only")
        kv_frames = torch.zeros(0, 1, dtype=torch.int32, device=q.device)
        Lk = L
    else:
        kv_frames = _kv_frames(cross_frame, T_, q.device)
        Lk = kv_frames.shape[1] * L
    f = torch.float64 if q.dtype == torch.float64 else torch.float32
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            got = bias.dtype if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise TypeError(f"st_attention: bias must be a floating tensor, got {got}")
        if bias.device != q.device:
            raise ValueError(f"st_attention: bias is on {bias.device} but q is on {q.device}")
        if bias.dim() == 2:
            bias = bias[None]
        if bias.dim() != 3 or bias.shape[0] not in (1, heads) or tuple(bias.shape[1:]) != (L, Lk):
            raise ValueError(f"st_attention: bias must be [Lq, Lk] or [heads or 1, Lq, Lk] with heads = {heads}, "
                             f"Lq = {L}, Lk = {Lk}, got shape {tuple(bias.shape)}")
        bias = bias.to(f)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError("st_attention: mask must be a bool tensor (True: attend)")
        if tuple(mask.shape) != (L, Lk):
            raise ValueError(f"st_attention: mask must be [Lq, Lk] = [{L}, {Lk}], got shape {tuple(mask.shape)}")
        if mask.device != q.device:
            raise ValueError(f"st_attention: mask is on {mask.device} but q is on {q.device}")
        neg = torch.full((), float("-inf"), dtype=f, device=q.device)
        bias = (bias if bias is not None else torch.zeros(1, L, Lk, dtype=f, device=q.device)).masked_fill(~mask, neg)
    if isinstance(pos_encoding, torch.Tensor):
        pos = pos_encoding
        if not pos.is_floating_point() or tuple(pos.shape) != (L, D):
            raise ValueError(f"st_attention: pos_encoding must be True, False or a float [L, D] = [{L}, {D}] "
                             f"tensor, got {pos.dtype} {tuple(pos.shape)}")
        pos = pos.detach().to(device=q.device, dtype=f).contiguous()
    elif pos_encoding is True:
        pos = sinusoidal_table(L, D, f, q.device)
    elif pos_encoding is False or pos_encoding is None:
        pos = torch.zeros(0, D, dtype=f, device=q.device)
    else:
        raise ValueError(f"st_attention: pos_encoding must be True, False or a [L, D] tensor, got {pos_encoding!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    # decided from host-side facts only (no device sync)
    self_only = (cross_frame,) if isinstance(cross_frame, str) else tuple(cross_frame)
    if (not temporal and bias is None and pos.numel() == 0 and self_only == ("self",)
            and q.device.type in _SDPA_DEVICES and q.dtype in _SDPA_DTYPES and q.numel() > 0
            and _dispatch.requested(backend)[0] is None):
        out = _plain_spatial_sdpa(q, k, v, heads, float(scale))
        return out.permute(0, 4, 1, 2, 3) if layout == "bcthw" else out
    bias_t = bias.contiguous() if bias is not None else torch.zeros(0, L, Lk, dtype=f, device=q.device)
    out, _ = OP(q, k, v, kv_frames, bias_t, pos, heads, temporal, float(scale), backend=backend)
    return out.permute(0, 4, 1, 2, 3) if layout == "bcthw" else out


def _plain_spatial_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """Spatial self-attention of ``[B, T, H, W, C]`` inputs by SDPA on ``[B T, heads, H W, D]``
    views (no copy where the pixels of a frame are contiguous, as channels last); the output is
    ``[B, T, H, W, C]`` channels last, in the inputs' dtype."""
    B, T_, H, W, C = q.shape
    D = C // heads

    def seqs(x):  # [B, T, H, W, C] -> [B T, heads, H W, D]; a view for channels-last frames
        return x.reshape(B * T_, H * W, heads, D).transpose(1, 2)

    o = torch.nn.functional.scaled_dot_product_attention(seqs(q), seqs(k), seqs(v), scale=scale)
    return o.transpose(1, 2).reshape(B, T_, H, W, C)


def relative_position_bias(table: torch.Tensor, length: int, max_distance: int = 128,
                           bidirectional: bool = True) -> torch.Tensor:
    """``[heads, length, length]`` temporal attention bias from a learned ``[heads, num_buckets]``
    table indexed by T5's relative-position buckets (:func:`t5_buckets`); differentiable w.r.t.
    the table. Pass it as ``st_attention(..., mode="temporal", bias=...)``."""
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        raise ValueError("relative_position_bias: table must be a [heads, num_buckets] tensor")
    idx = t5_buckets(length, length, table.shape[1], max_distance, bidirectional, table.device)
    return table[:, idx]
