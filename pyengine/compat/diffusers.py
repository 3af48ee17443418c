"""diffusers attention processors that run ``pyengine.st_attention``.

Plug into any diffusers model with ``Attention`` layers through ``set_attn_processor`` — text-to-video
``UNet3DConditionModel`` (ModelScope, Zeroscope), its ``TransformerTemporalModel`` layers,
AnimateDiff's ``UNetMotionModel`` and ``MotionAdapter`` (``AnimateDiffTransformer3D`` motion
modules), SVD's temporal blocks — or let :func:`set_pyengine_processors` pick per layer.

What each layer receives, and what runs:

* Spatial layers (``Transformer2DModel`` blocks): ``hidden_states`` ``[B T, H W, C]``, one
  sequence per frame. Self-attention runs ``st_attention(mode="spatial")`` on the
  ``[B T, 1, 1, H W, C]`` view of q, k, v (:class:`PyengineAttnProcessor`) on the CPU, and SDPA
  on GPUs, where FlashAttention is faster (``spatial=`` chooses).
* Text cross-attention (``attn2`` of the spatial blocks, keys from ``encoder_hidden_states``
  ``[B T, N_text, C_text]``): the keys have another length than the queries, which
  ``st_attention`` does not cover (its keys are frames of the video), so these layers run
  ``torch.nn.functional.scaled_dot_product_attention``, exactly as diffusers'
  ``AttnProcessor2_0`` does. So do layers called with an ``attention_mask`` (a per-sequence mask
  is not a bias shared by all sequences), grouped-query layers and head dims above 256.
* Temporal layers (``TransformerTemporalModel``, ``AnimateDiffTransformer3D``,
  ``TemporalBasicTransformerBlock``): ``hidden_states`` ``[B H W, T, C]``, one sequence per pixel;
  ``num_frames`` is not passed to the processor, and is not needed: it is ``hidden_states.shape[1]``.
  Self-attention runs ``st_attention(mode="temporal")`` on the ``[B H W, T, 1, 1, C]`` view
  (:class:`PyengineTemporalAttnProcessor`).

Copies, honestly: inside the processors q, k and v are ``to_q``/``to_k``/``to_v`` outputs handed
to the op as views, and the op's channels-last output goes to ``to_out`` as a view, so no layout
copy is made (diffusers' processor transposes to ``[N, heads, L, D]`` and copies back with
``transpose(1, 2).reshape``). The ``(b h w) t c`` copies of temporal layers are made *before* the
processor is called, by the diffusers models themselves: ``TransformerTemporalModel.forward`` and
``AnimateDiffTransformer3D.forward`` permute ``[B T, C, H, W]`` to ``[B H W, T, C]`` with a
``reshape`` (a copy) before ``proj_in`` and back with ``.contiguous()`` after ``proj_out``;
``Transformer2DModel`` likewise copies ``[B T, C, H, W]`` to ``[B T, H W, C]`` and back. A processor
cannot remove those two copies per transformer; :mod:`pyengine.nn.video`'s modules avoid them by
keeping ``[B, T, H, W, C]`` throughout.

Outputs equal diffusers' default processors (``AttnProcessor2_0``, or ``AttnProcessor`` when
``scale_qk=False``) up to float rounding; gradients flow through ``st_attention``'s backward.

Example:
    >>> from pyengine.compat.diffusers import set_pyengine_processors
    >>> n = set_pyengine_processors(unet)          # a UNet3DConditionModel or UNetMotionModel
    >>> video = unet(sample, t, encoder_hidden_states=text).sample
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyengine.ops.st_attention import st_attention

__all__ = ["PyengineAttnProcessor", "PyengineTemporalAttnProcessor", "TEMPORAL_CONTAINERS", "set_pyengine_processors"]

#: Class names of diffusers modules whose ``Attention`` layers attend across frames.
TEMPORAL_CONTAINERS = ("TransformerTemporalModel", "AnimateDiffTransformer3D", "TemporalBasicTransformerBlock")

#: Processors that :func:`set_pyengine_processors` replaces: the plain ones, same maths as ours.
_REPLACEABLE = ("AttnProcessor", "AttnProcessor2_0", "XFormersAttnProcessor", "AttnProcessorNPU",
                "SlicedAttnProcessor", "PyengineAttnProcessor", "PyengineTemporalAttnProcessor")

_OP_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _spatial_impl(spatial: str, q: torch.Tensor, backend: str | None = None) -> str:
    """What runs spatial self-attention. "auto": ``st_attention`` on the CPU, where its kernel beat
    SDPA in diffusers' UNet3DConditionModel (1.17x against 1.00-1.03x the default processors,
    bench/RESULTS.md, 2026-11-28), or when a backend was named; SDPA elsewhere, since on an H200
    FlashAttention was 2-5x faster than the Triton kernel on spatial attention (bench/RESULTS.md,
    2026-11-27)."""
    if spatial != "auto":
        return spatial
    return "st_attention" if q.device.type == "cpu" or backend is not None else "sdpa"


def _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, mode: str, backend,
               spatial: str = "auto"):
    """Shared body of both processors; ``mode`` is the ``st_attention`` mode for self-attention,
    ``spatial`` what runs spatial self-attention ("auto", "sdpa" or "st_attention")."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    image = hidden_states.dim() == 4
    if image:  # [B, C, H, W] (VAE-style attention): GroupNorm on it, then its [B, H W, C] view
        _, _, height, width = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states)
        x = hidden_states.flatten(2).transpose(1, 2)
    else:
        x = hidden_states
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    batch = x.shape[0]

    ctx = x if encoder_hidden_states is None else encoder_hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        ctx = attn.norm_encoder_hidden_states(ctx)
    q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)  # [N, Lq, C], [N, Lk, Ck]
    heads = attn.heads
    d = k.shape[-1] // heads
    if attn.norm_q is not None:
        q = attn.norm_q(q.unflatten(-1, (heads, -1))).flatten(-2)
    if attn.norm_k is not None:
        k = attn.norm_k(k.unflatten(-1, (heads, -1))).flatten(-2)

    use_op = (attention_mask is None and q.shape == k.shape == v.shape and q.dtype in _OP_DTYPES
              and q.dtype == k.dtype == v.dtype and q.shape[-1] % heads == 0 and d <= 256 and q.shape[0] > 0
              and (mode == "temporal" or _spatial_impl(spatial, q, backend) == "st_attention"))
    if use_op:
        if mode == "temporal":  # sequences: the B H W pixels, positions: frames
            view = lambda t: t[:, :, None, None]  # noqa: E731  [N, T, 1, 1, C]
        else:  # sequences: the B T frames, positions: pixels
            view = lambda t: t[:, None, None]  # noqa: E731  [N, 1, 1, L, C]
        o = st_attention(view(q), view(k), view(v), mode=mode, heads=heads, scale=attn.scale, backend=backend)
        o = o.reshape(q.shape)  # contiguous [N, L, C]: a view
    else:
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, ctx.shape[1], batch)
            attention_mask = attention_mask.view(batch, heads, -1, attention_mask.shape[-1])
        split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731  [N, heads, L, D]
        o = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attention_mask,
                                           scale=attn.scale)
        o = o.transpose(1, 2).flatten(2).to(q.dtype)

    o = attn.to_out[0](o)
    o = attn.to_out[1](o)
    if image:
        o = o.transpose(1, 2).unflatten(2, (height, width))  # [B, C, H, W] view, channels-last strides
    if attn.residual_connection:
        o = o + residual
    return o / attn.rescale_output_factor


class PyengineAttnProcessor:
    """diffusers attention processor for spatial (per-frame) attention and cross-attention.

    Self-attention (and cross-attention whose keys have the queries' shape) runs
    ``st_attention(mode="spatial")``: ``hidden_states`` ``[N, L, C]`` (``N = B T`` frames,
    ``L = H W``) is attended as ``N`` sequences through the ``[N, 1, 1, L, C]`` view. Text
    cross-attention, masked attention, grouped-query layers and head dims > 256 fall back to
    ``torch.nn.functional.scaled_dot_product_attention`` (see the module docstring). Handles what
    ``AttnProcessor2_0`` handles: ``spatial_norm``, ``group_norm``, ``norm_cross``,
    ``norm_q``/``norm_k``, 4-D ``[B, C, H, W]`` inputs, ``residual_connection`` and
    ``rescale_output_factor``; the score scale is ``attn.scale``.

    Args:
        backend: ``st_attention``'s backend (None: automatic dispatch).
        spatial: what runs spatial self-attention: "st_attention", "sdpa" (SDPA on strided views
            of q, k, v, as the fallback), or "auto" (st_attention on the CPU or when ``backend`` is
            named, SDPA on GPUs: the faster of the two on each, see ``_spatial_impl``). Temporal
            layers always run the op.

    Example:
        >>> unet.set_attn_processor(PyengineAttnProcessor())
    """

    mode = "spatial"

    def __init__(self, backend: str | None = None, spatial: str = "auto"):
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"{type(self).__name__}: backend must be None or a backend name, got {backend!r}")
        if spatial not in ("auto", "sdpa", "st_attention"):
            raise ValueError(f"{type(self).__name__}: spatial must be 'auto', 'sdpa' or 'st_attention', "
                             f"got {spatial!r}")
        self.backend = backend
        self.spatial = spatial

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args,
                 **kwargs) -> torch.Tensor:
        """Args as diffusers' processors: ``hidden_states`` ``[N, L, C]`` or ``[B, C, H, W]``,
        ``encoder_hidden_states`` ``[N, Lk, C_ctx]`` or None. Returns ``[N, L, C]`` (``[B, C, H, W]``
        for 4-D input). Extra arguments (the deprecated ``scale``) are ignored, as diffusers does."""
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() not in (3, 4):
            got = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)
            raise ValueError(f"{type(self).__name__}: hidden_states must be [N, L, C] or [B, C, H, W], got {got}")
        return _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, self.mode, self.backend,
                          self.spatial)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, spatial={self.spatial!r})"


class PyengineTemporalAttnProcessor(PyengineAttnProcessor):
    """diffusers attention processor for temporal (across-frame) attention layers.

    The temporal transformers (``TransformerTemporalModel``, AnimateDiff's
    ``AnimateDiffTransformer3D``, SVD's ``TemporalBasicTransformerBlock``) call their ``Attention``
    layers with ``hidden_states`` ``[B H W, T, C]``: one sequence per pixel, the frames along dim 1
    (so ``T = hidden_states.shape[1]``; ``num_frames`` itself never reaches the processor).
    Self-attention runs ``st_attention(mode="temporal")`` on the ``[B H W, T, 1, 1, C]`` view of q, k
    and v and hands its contiguous output to ``to_out`` as a view: no copy in the processor. The
    ``(b h w) t c`` permute copies before ``proj_in`` and after ``proj_out`` are made by the
    diffusers transformer's ``forward``, outside any processor, and remain. AnimateDiff's sinusoidal
    position embedding is added to ``hidden_states`` before the processor, as in diffusers.
    Fallbacks as :class:`PyengineAttnProcessor` (e.g. SVD's temporal cross-attention to the first
    frame's context runs SDPA).

    Args:
        backend: ``st_attention``'s backend (None: automatic dispatch).
    """

    mode = "temporal"


def _temporal_attention_ids(model) -> set[int]:
    ids: set[int] = set()
    for m in model.modules():
        if type(m).__name__ in TEMPORAL_CONTAINERS:
            ids.update(id(sub) for sub in m.modules())
    return ids


def set_pyengine_processors(model, backend: str | None = None, spatial: str = "auto") -> int:
    """Installs :class:`PyengineTemporalAttnProcessor` on the attention layers inside temporal
    transformers (:data:`TEMPORAL_CONTAINERS`) and :class:`PyengineAttnProcessor` on every other
    attention layer of ``model``.

    Only layers whose current processor is a plain one (``AttnProcessor``, ``AttnProcessor2_0``,
    xformers, NPU, sliced, or a pyengine processor) are changed: layers with added key/value
    projections, IP-Adapter or other custom processors keep theirs. Uses
    ``model.set_attn_processor`` where the model has it (``UNet3DConditionModel``,
    ``UNetMotionModel``), else ``set_processor`` on each layer (``MotionAdapter``, a single
    ``TransformerTemporalModel`` block, ...).

    Args:
        model: a diffusers ``torch.nn.Module`` (a U-Net, motion adapter or transformer).
        backend: ``st_attention``'s backend for the installed processors (None: automatic).
        spatial: what runs spatial self-attention ("auto", "sdpa" or "st_attention"; see
            :class:`PyengineAttnProcessor`).

    Returns:
        The number of attention layers now running a pyengine processor.

    Example:
        >>> unet = UNetMotionModel.from_unet2d(unet2d, motion_adapter)
        >>> n = set_pyengine_processors(unet)  # every attention layer of an AnimateDiff U-Net
        >>> n == len(unet.attn_processors)
        True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"set_pyengine_processors: model must be a torch.nn.Module, got {type(model).__name__}")
    spatial, temporal = PyengineAttnProcessor(backend, spatial), PyengineTemporalAttnProcessor(backend, spatial)
    temporal_ids = _temporal_attention_ids(model)
    chosen: dict[str, object] = {}
    for name, m in model.named_modules():
        if not (hasattr(m, "set_processor") and hasattr(m, "get_processor")):
            continue
        current = m.get_processor()
        if getattr(m, "added_kv_proj_dim", None) is not None or type(current).__name__ not in _REPLACEABLE:
            continue
        if not all(hasattr(m, a) for a in ("to_q", "to_k", "to_v", "to_out", "heads", "scale")):
            continue
        chosen[name] = temporal if id(m) in temporal_ids else spatial
    if hasattr(model, "set_attn_processor") and hasattr(model, "attn_processors"):
        procs = {}
        for key, current in model.attn_processors.items():
            procs[key] = chosen.get(key[: -len(".processor")], current)
        model.set_attn_processor(procs)
    else:
        modules = dict(model.named_modules())
        for name, proc in chosen.items():
            modules[name].set_processor(proc)
    return len(chosen)
