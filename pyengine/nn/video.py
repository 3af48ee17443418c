"""Video diffusion modules on ``pyengine.st_attention``: factorized space-time attention, space-only
and pseudo-3D convolutions, Video LDM's temporal mixing and a small 3D U-Net (Ho et al., 2022).

Every module takes and returns activations ``[B, T, H, W, C]``: frame-major and channels last, the
layout in which ``st_attention`` reads queries, keys and values without copies. Linear layers act
on the last dim (so 1x1 convolutions, QKV and output projections are plain ``nn.Linear``); the
convolutions run ``conv3d`` on the ``[B, C, T, H, W]`` view of the same memory, which is
``channels_last_3d``, and hand the result back as a view; GroupNorm (per frame) runs likewise on
the channels-last ``[B T, C, H, W]`` view.

The temporal layers start as the identity (zero output projection, identity temporal taps), so
they can be added to a pretrained image model without changing its output (Make-A-Video, Video LDM).

Example:
    >>> net = UNet3D(in_channels=3, out_channels=3)
    >>> x = torch.randn(2, 4, 16, 16, 3)                  # [B, T, H, W, C]
    >>> net(x, torch.tensor([10, 500])).shape
    torch.Size([2, 4, 16, 16, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyengine.ops.st_attention import relative_position_bias, st_attention

__all__ = ["Pseudo3DConv", "SpaceConv3d", "SpatialAttention", "TemporalAttention", "TemporalMix", "UNet3D",
           "sdpa_rearranged", "timestep_embedding"]


def _check_video(x, name: str, channels: int | None, where: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{where}: {name} must be [B, T, H, W, C] (5-D, channels last), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{where}: {name} must have C = {channels} channels in its last dim, got shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: {name} must be a floating tensor, got {x.dtype}")


def _num_groups(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """Largest power of two up to ``max_groups`` that divides ``channels`` with at least
    ``min_per_group`` channels per group (1 if none)."""
    g = max_groups
    while g > 1 and (channels % g or channels // g < min_per_group):
        g //= 2
    return g


def sdpa_rearranged(q, k, v, *, mode: str, heads: int, bias=None, mask=None, pos_encoding: bool = False,
                    cross_frame: Sequence[str] = ("self",)) -> torch.Tensor:
    """``st_attention``'s maths done the usual way, as a baseline: permute ``[B, T, H, W, C]``
    into ``(b h w) t c`` (temporal) or ``(b t) (h w) c`` (spatial) copies, split the heads,
    ``torch.nn.functional.scaled_dot_product_attention``, and permute back (a copy). The modules'
    ``impl="sdpa"`` switch runs this, so benchmarks can time one model both ways."""
    B, T, H, W, C = q.shape
    D = C // heads
    temporal = mode == "temporal"
    L = T if temporal else H * W
    if temporal:
        seqs = lambda x: x.permute(0, 2, 3, 1, 4).reshape(B * H * W, T, heads, D).transpose(1, 2)  # noqa: E731
        qs, ks, vs = seqs(q), seqs(k), seqs(v)
    else:
        frames = lambda x: x.reshape(B, T, H * W, heads, D)  # noqa: E731
        qs, ks, vs = frames(q), frames(k), frames(v)
        t = torch.arange(T, device=q.device)
        src = {"self": t, "first": torch.zeros_like(t), "previous": (t - 1).clamp_min(0)}
        idx = torch.stack([src[c] for c in cross_frame], 1)  # [T, n_src]
        ks, vs = (x[:, idx].reshape(B * T, len(cross_frame) * H * W, heads, D).transpose(1, 2) for x in (ks, vs))
        qs = qs.reshape(B * T, H * W, heads, D).transpose(1, 2)
    if pos_encoding:
        from pyengine.ops.st_attention import sinusoidal_table

        pe = sinusoidal_table(L, D, q.dtype, q.device)
        qs = qs + pe
        ks = ks + pe.repeat(ks.shape[2] // L, 1)
    attn = bias.to(q.dtype) if bias is not None else None
    if mask is not None:
        neg = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        attn = neg if attn is None else attn + neg
    o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=attn)
    if temporal:
        return o.transpose(1, 2).reshape(B, H, W, T, C).permute(0, 3, 1, 2, 4).contiguous()
    return o.transpose(1, 2).reshape(B, T, H, W, C)


IMPLS = ("op", "sdpa")


def _to_cthw(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, W, C]`` -> ``[B, C, T, H, W]`` view (``channels_last_3d`` when x is contiguous)."""
    return x.permute(0, 4, 1, 2, 3)


def _from_cthw(y: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, T, H, W, C]``: a view when y is ``channels_last_3d``; torch's
    CPU conv3d picks its output layout per kernel and thread count, so a contiguous-NCDHW result
    is copied once here rather than handed on as a strided view."""
    return y.permute(0, 2, 3, 4, 1).contiguous()


class _GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` of each frame of ``[B, T, H, W, C]``: statistics per (b, t, group) over H,
    W and the group's channels, as an image model applied frame by frame (diffusers' UNet3D does
    the same), so frames interact only through the temporal layers and images can be trained as
    one-frame clips. Runs on the channels-last ``[B T, C, H, W]`` view; parameters as ``nn.GroupNorm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H, W, C = x.shape
        y = super().forward(x.reshape(B * T, H, W, C).permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1).contiguous().view(B, T, H, W, C)


def _make_norm(kind: str, dim: int, groups: int | None) -> nn.Module:
    if kind == "group":
        g = groups if groups is not None else _num_groups(dim)
        if not isinstance(g, int) or g < 1 or dim % g:
            raise ValueError(f"groups must be a positive int dividing dim = {dim}, got {g!r}")
        return _GroupNorm(g, dim, eps=1e-6)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-6)
    raise ValueError(f"norm must be 'group' or 'layer', got {kind!r}")


def _check_heads(where: str, dim, heads) -> None:
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{where}: dim must be a positive int, got {dim!r}")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or dim % heads:
        raise ValueError(f"{where}: heads must be a positive int dividing dim = {dim}, got {heads!r}")
    if dim // heads > 256:
        raise ValueError(f"{where}: head dim dim / heads must be at most 256, got {dim // heads}")


def _attention(impl: str, where: str):
    if impl == "op":
        return st_attention
    if impl == "sdpa":
        return sdpa_rearranged
    raise ValueError(f"{where}: impl must be one of {IMPLS}, got {impl!r}")


class SpatialAttention(nn.Module):
    """Pre-norm multi-head self-attention inside each frame, with a residual connection.

    ``out = x + proj(st_attention(q, k, v, mode="spatial"))`` with ``q, k, v`` the three channel
    slices of ``qkv(norm(x))`` (views: nothing is permuted or copied before the op). With
    ``cross_frame`` other than ``("self",)`` each frame attends to the listed source frames (e.g.
    ``("first", "previous")``: Tune-A-Video's sparse-causal attention), see ``st_attention``.

    With ``context_dim`` a second pre-norm sub-layer attends from every pixel to a token sequence
    (text cross-attention, as in Stable Diffusion's transformer blocks). Its keys have another
    length than the video, which ``st_attention`` does not cover, so it runs
    ``torch.nn.functional.scaled_dot_product_attention`` on ``[B, heads, T H W, D]`` views.

    Args:
        dim: channels C.
        heads: attention heads; must divide ``dim``, head dim at most 256.
        cross_frame: key/value source frames of each frame (``st_attention``'s ``cross_frame``).
        context_dim: channels of the context tokens; None: no cross-attention sub-layer.
        norm: ``"group"`` (GroupNorm over C, ``groups`` groups) or ``"layer"`` (LayerNorm over C).
        groups: GroupNorm groups; default the largest power of two <= 32 leaving >= 4 channels each.

    Shapes:
        x: ``[B, T, H, W, dim]``; context: ``[B, N, context_dim]`` tokens or ``[B, context_dim]``
        (one token); output like x (contiguous when x is).

    Example:
        >>> attn = SpatialAttention(64, heads=4, cross_frame=("first", "previous"))
        >>> attn(torch.randn(2, 4, 8, 8, 64)).shape
        torch.Size([2, 4, 8, 8, 64])
    """

    def __init__(self, dim: int, heads: int, cross_frame: str | Sequence[str] = ("self",),
                 context_dim: int | None = None, *, norm: str = "group", groups: int | None = None):
        super().__init__()
        _check_heads("SpatialAttention", dim, heads)
        cf = (cross_frame,) if isinstance(cross_frame, str) else tuple(cross_frame)
        if not cf or any(s not in ("self", "first", "previous") for s in cf):
            raise ValueError(f"SpatialAttention: cross_frame must be a non-empty sequence of 'self', 'first', "
                             f"'previous', got {cross_frame!r}")
        if context_dim is not None and (not isinstance(context_dim, int) or context_dim < 1):
            raise ValueError(f"SpatialAttention: context_dim must be None or a positive int, got {context_dim!r}")
        self.dim, self.heads, self.cross_frame, self.context_dim = dim, heads, cf, context_dim
        #: "op": ``st_attention`` (default); "sdpa": permute copies + SDPA (:func:`sdpa_rearranged`)
        self.impl = "op"
        self.norm = _make_norm(norm, dim, groups)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(dim, eps=1e-6)
            self.cross_q = nn.Linear(dim, dim)
            self.cross_kv = nn.Linear(context_dim, 2 * dim)
            self.cross_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        _check_video(x, "x", self.dim, "SpatialAttention")
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        attend = _attention(self.impl, "SpatialAttention")
        x = x + self.proj(attend(q, k, v, mode="spatial", heads=self.heads, cross_frame=self.cross_frame))
        if context is None:
            return x
        if self.context_dim is None:
            raise ValueError("SpatialAttention: got a context but the layer was built with context_dim=None")
        if not isinstance(context, torch.Tensor) or context.dim() not in (2, 3) or context.shape[0] != x.shape[0] \
                or context.shape[-1] != self.context_dim:
            got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"SpatialAttention: context must be [B, N, {self.context_dim}] or "
                             f"[B, {self.context_dim}] with B = {x.shape[0]}, got {got}")
        if context.dim() == 2:
            context = context[:, None]
        B, T, H, W, C = x.shape
        n, d = self.heads, C // self.heads
        qc = self.cross_q(self.cross_norm(x)).view(B, T * H * W, n, d).transpose(1, 2)
        kc, vc = (t.view(B, -1, n, d).transpose(1, 2) for t in self.cross_kv(context.to(x.dtype)).chunk(2, dim=-1))
        o = F.scaled_dot_product_attention(qc, kc, vc)  # [B, heads, T H W, D]
        return x + self.cross_proj(o.transpose(1, 2).reshape(B, T, H, W, C))


class TemporalAttention(nn.Module):
    """Pre-norm multi-head self-attention across the frames at each pixel, starting as the identity.

    ``out = x + proj(st_attention(q, k, v, mode="temporal", bias=b, mask=m, pos_encoding=...))``,
    ``q, k, v`` the channel slices of ``qkv(norm(x))`` (views, no ``(b h w) t c`` copies). ``proj``
    is zero-initialised, so a fresh layer returns x exactly (Ho et al.; Make-A-Video; Video LDM).

    The score bias ``b[h, i, j] = table[h, bucket(j - i)]`` is T5's relative position bias (Raffel
    et al.) that Ho et al. use for temporal attention: a learned ``[heads, num_buckets]`` table
    (``rel_table``, zero-initialised) indexed by logarithmic distance buckets up to
    ``max_distance`` frames; bidirectional buckets, or past-only ones when ``causal``.

    Args:
        dim: channels C.
        heads: attention heads; must divide ``dim``, head dim at most 256.
        rel_pos_bias: learn the relative position bias table.
        num_buckets: T5 buckets (split between the two directions unless ``causal``).
        max_distance: distance (frames) from which all distances share the last bucket.
        pos_encoding: add the sinusoidal encoding of the frame index to every head's q and k.
        causal: frame t attends to frames <= t only.
        norm: ``"group"`` or ``"layer"``; groups: as ``SpatialAttention``.

    Shapes:
        x: ``[B, T, H, W, dim]`` -> ``[B, T, H, W, dim]`` (contiguous when x is).

    Example:
        >>> attn = TemporalAttention(64, heads=4)
        >>> x = torch.randn(2, 8, 4, 4, 64)
        >>> bool((attn(x) == x).all())   # identity at init
        True
    """

    def __init__(self, dim: int, heads: int, rel_pos_bias: bool = True, num_buckets: int = 32,
                 max_distance: int = 32, pos_encoding: bool = False, causal: bool = False, *, norm: str = "group",
                 groups: int | None = None):
        super().__init__()
        _check_heads("TemporalAttention", dim, heads)
        if rel_pos_bias:
            if not isinstance(num_buckets, int) or num_buckets < (2 if causal else 4):
                raise ValueError(f"TemporalAttention: num_buckets must be an int >= {2 if causal else 4}, "
                                 f"got {num_buckets!r}")
            if not isinstance(max_distance, int) or max_distance < 1:
                raise ValueError(f"TemporalAttention: max_distance must be a positive int, got {max_distance!r}")
        if not isinstance(pos_encoding, bool):
            raise TypeError(f"TemporalAttention: pos_encoding must be a bool, got {pos_encoding!r}")
        self.dim, self.heads = dim, heads
        self.max_distance, self.pos_encoding, self.causal = max_distance, pos_encoding, bool(causal)
        self.norm = _make_norm(norm, dim, groups)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.rel_table = nn.Parameter(torch.zeros(heads, num_buckets)) if rel_pos_bias else None
        #: "op": ``st_attention`` (default); "sdpa": permute copies + SDPA (:func:`sdpa_rearranged`)
        self.impl = "op"

    def bias(self, frames: int) -> torch.Tensor | None:
        """The ``[heads, frames, frames]`` relative position bias (None without ``rel_pos_bias``)."""
        if self.rel_table is None:
            return None
        return relative_position_bias(self.rel_table, frames, self.max_distance, bidirectional=not self.causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_video(x, "x", self.dim, "TemporalAttention")
        T = x.shape[1]
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if self.causal else None
        o = _attention(self.impl, "TemporalAttention")(q, k, v, mode="temporal", heads=self.heads, bias=self.bias(T),
                                                         mask=mask, pos_encoding=self.pos_encoding)
        return x + self.proj(o)


class SpaceConv3d(nn.Module):
    """The "space-only" 3D convolution of Ho et al.: a ``1 x kernel x kernel`` conv applied to
    every frame, on channels-last video.

    Runs ``conv3d`` on the ``[B, C, T, H, W]`` view of x, which is ``channels_last_3d`` when x is
    contiguous ``[B, T, H, W, C]``; the result comes back as a view (see ``_from_cthw``). The
    weight is a ``Conv3d`` weight ``[cout, cin, 1, k, k]`` (``conv.weight``).

    Args:
        cin, cout: input and output channels.
        kernel_size: spatial kernel (odd), default 3; padding keeps H and W at stride 1.
        stride: spatial stride (2: Ho et al.'s space-only downsampling).

    Shapes:
        x: ``[B, T, H, W, cin]`` -> ``[B, T, H', W', cout]``, ``H' = ceil(H / stride)`` for odd kernels.

    Example:
        >>> SpaceConv3d(3, 16)(torch.randn(1, 4, 8, 8, 3)).shape
        torch.Size([1, 4, 8, 8, 16])
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        for name, val in (("cin", cin), ("cout", cout), ("stride", stride)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"SpaceConv3d: {name} must be a positive int, got {val!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SpaceConv3d: kernel_size must be a positive odd int, got {kernel_size!r}")
        self.cin, self.cout = cin, cout
        p = kernel_size // 2
        self.conv = nn.Conv3d(cin, cout, (1, kernel_size, kernel_size), stride=(1, stride, stride), padding=(0, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_video(x, "x", self.cin, "SpaceConv3d")
        return _from_cthw(self.conv(_to_cthw(x)))


class Pseudo3DConv(nn.Module):
    """Make-A-Video's pseudo-3D convolution: a spatial 3x3 conv on every frame, then a 3-tap
    temporal conv at every pixel, initialised to the identity (so it starts as the 2D conv).

    ``out = temporal(spatial(x))``; ``temporal.weight[:, :, 1] = I``, the other taps and the bias
    zero. Both run ``conv3d`` on channels-last views (kernels ``1x3x3`` and ``3x1x1``, zero
    padding in time: the first and last frames see a zero neighbour).

    Args:
        cin, cout: input and output channels.

    Shapes:
        x: ``[B, T, H, W, cin]`` -> ``[B, T, H, W, cout]``.

    Example:
        >>> conv = Pseudo3DConv(8, 16)
        >>> x = torch.randn(1, 4, 8, 8, 8)
        >>> torch.allclose(conv(x), conv.spatial(x))
        True
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.spatial = SpaceConv3d(cin, cout)
        self.temporal = nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0))
        with torch.no_grad():
            self.temporal.weight.zero_()
            self.temporal.weight[:, :, 1, 0, 0] = torch.eye(cout)
            self.temporal.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.spatial(x)
        return _from_cthw(self.temporal(_to_cthw(h)))


class TemporalMix(nn.Module):
    """Video LDM's learned blending of a (frozen) spatial layer with a temporal layer
    (Blattmann et al., 2023)::

        h_s = spatial_layer(x, ...)
        h_t = temporal_layer(h_s)
        out = alpha * h_s + (1 - alpha) * h_t,      alpha = sigmoid(logit)

    ``logit`` is a learned scalar, initialised to ``log(alpha_init / (1 - alpha_init))``. With a
    temporal layer that starts as the identity (``TemporalAttention``, ``Pseudo3DConv``'s taps)
    the mix starts as the spatial layer alone for any ``alpha_init``.

    Args:
        spatial_layer: maps ``[B, T, H, W, C]`` to ``[B, T, H, W, C']`` frame by frame (extra
            forward arguments are passed to it).
        temporal_layer: maps ``[B, T, H, W, C']`` to the same shape.
        alpha_init: initial alpha in (0, 1).
        freeze_spatial: set ``requires_grad=False`` on the spatial layer's parameters (Video LDM
            trains the temporal layers and alpha only).

    Example:
        >>> mix = TemporalMix(SpatialAttention(32, 4), TemporalAttention(32, 4))
        >>> mix(torch.randn(1, 4, 8, 8, 32)).shape
        torch.Size([1, 4, 8, 8, 32])
    """

    def __init__(self, spatial_layer: nn.Module, temporal_layer: nn.Module, alpha_init: float = 0.5,
                 freeze_spatial: bool = True):
        super().__init__()
        if not isinstance(spatial_layer, nn.Module) or not isinstance(temporal_layer, nn.Module):
            raise TypeError("TemporalMix: spatial_layer and temporal_layer must be nn.Module instances")
        if not isinstance(alpha_init, (int, float)) or not 0.0 < float(alpha_init) < 1.0:
            raise ValueError(f"TemporalMix: alpha_init must be a number in (0, 1), got {alpha_init!r}")
        self.spatial_layer, self.temporal_layer = spatial_layer, temporal_layer
        a = float(alpha_init)
        self.logit = nn.Parameter(torch.tensor(math.log(a / (1.0 - a))))
        if freeze_spatial:
            spatial_layer.requires_grad_(False)

    @property
    def alpha(self) -> torch.Tensor:
        """The current blending weight of the spatial output, ``sigmoid(logit)``."""
        return torch.sigmoid(self.logit)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h_s = self.spatial_layer(x, *args, **kwargs)
        h_t = self.temporal_layer(h_s)
        alpha = self.alpha.to(h_s.dtype)
        return alpha * h_s + (1 - alpha) * h_t


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[B, dim]`` sinusoidal embedding of (possibly fractional) timesteps ``t`` [B]: the first
    half cosines, the second sines of ``t * max_period^(-i / half)`` (an odd last channel is 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    ang = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class _ResBlock(nn.Module):
    """GroupNorm, SiLU, 1x3x3 conv, + Linear(temb), GroupNorm, SiLU, dropout, 1x3x3 conv
    (zero-initialised), plus the input (through a 1x1 conv, i.e. a Linear, when widths differ).
    With ``temporal_conv`` the first conv is a ``Pseudo3DConv`` (its temporal taps start as the
    identity). With ``scale_shift`` the conditioning is ADM's scale-shift norm instead of a sum:
    ``norm2(h) * (1 + scale) + shift`` with ``[scale, shift] = Linear(temb)``."""

    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, temporal_conv: bool = False,
                 scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = _GroupNorm(_num_groups(cin), cin, eps=1e-6)
        self.conv1 = Pseudo3DConv(cin, cout) if temporal_conv else SpaceConv3d(cin, cout)
        self.temb = nn.Linear(temb_dim, 2 * cout if scale_shift else cout)
        self.norm2 = _GroupNorm(_num_groups(cout), cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = SpaceConv3d(cout, cout)
        nn.init.zeros_(self.conv2.conv.weight)
        nn.init.zeros_(self.conv2.conv.bias)
        self.skip = nn.Linear(cin, cout) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.temb(F.silu(temb))  # [B, C], or [B, T, C] with a frame embedding
        e = e[:, None, None, None, :] if e.dim() == 2 else e[:, :, None, None, :]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=-1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Block(nn.Module):
    """A residual block, then (optionally) spatial and temporal attention."""

    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, attention: bool, heads: int,
                 rel_bias: bool, temporal: bool = True, temporal_conv: bool = False, scale_shift: bool = False):
        super().__init__()
        self.res = _ResBlock(cin, cout, temb_dim, dropout, temporal_conv, scale_shift)
        self.spatial = SpatialAttention(cout, heads) if attention else None
        self.temporal = TemporalAttention(cout, heads, rel_pos_bias=rel_bias) if attention and temporal else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, temb)
        if self.spatial is not None:
            x = self.spatial(x)
        if self.temporal is not None:
            x = self.temporal(x)
        return x


class _Upsample(nn.Module):
    """Nearest 2x in H and W (frames unchanged), then a 1x3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = SpaceConv3d(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H, W, C = x.shape
        x = x[:, :, :, None, :, None, :].expand(B, T, H, 2, W, 2, C).reshape(B, T, 2 * H, 2 * W, C)
        return self.conv(x)


class UNet3D(nn.Module):
    """A small video diffusion U-Net after Ho et al. (2022), on ``[B, T, H, W, C]`` throughout.

    Layout (ADM-style, with Ho et al.'s factorization): ``conv_in`` (1x3x3); per level of
    ``channel_mult``, ``num_res_blocks`` blocks of [residual block of 1x3x3 convs with the time
    embedding added, then at ``attention_levels`` spatial attention and temporal attention with a
    T5 relative position bias], then a space-only stride-2 conv (not after the last level); a middle
    of block-with-attention and residual block; the mirrored up path with ``num_res_blocks + 1``
    blocks per level on the concatenated skips and nearest-2x space-only upsampling; GroupNorm,
    SiLU and a zero-initialised 1x3x3 ``conv_out``. Frames are never down- or upsampled.

    Conditioning: ``temb = MLP(sinusoidal(t)) + Linear(context)``, fed to every residual block; the
    context is a pooled embedding (e.g. a text encoder's pooled output), not a token sequence.
    With ``frame_embedding`` each frame ``f`` gets ``temb + MLP_f(sinusoidal(f))`` ([B, T, temb_dim]).

    Why a frame embedding: without it nothing in the network knows a frame's absolute index. The
    convolutions and norms act per frame and temporal attention returns convex combinations of
    the values, so a clip whose frames are all equal comes out with all frames equal whatever the
    weights, relative bias and q/k position encodings included. Near pure noise the frames are
    exchangeable, and the best prediction of a captioned motion ("moving left": the object right of
    centre early, left late) differs by frame; such a network can reach the frame index only
    indirectly, through how attention weighs the noise near the ends of the clip. Trained so, it
    makes motion whose direction is set by the noise, not by the caption. The embedding is not
    zero-initialised: averaged over captions the frame alone predicts nothing (left and right
    cancel), so from zero its gradient is second order and training sits on a plateau for longer
    (zero the last layer, ``frame_embed[2]``, to add it to a trained model unchanged).

    Args:
        in_channels, out_channels: channels of x and of the output.
        model_channels: width of the first level; level i has ``model_channels * channel_mult[i]``.
        channel_mult: one multiplier per level.
        num_res_blocks: residual blocks per level on the way down.
        attention_levels: indices of the levels with spatial + temporal attention (the middle
            always has both).
        heads: attention heads; must divide the width of every attention level and the middle.
        context_dim: width of the pooled context; 0: unconditional (passing a context raises).
        temporal_rel_bias: learn T5 relative position biases in the temporal attention layers.
        dropout: dropout rate inside the residual blocks.
        temporal: False leaves out every temporal attention layer: frames are then denoised
            independently, and with ``T = 1`` this is an image U-Net (the ShapeWorld image prior).
        frame_embedding: add a learned embedding of the frame index to every residual block's
            conditioning (see above); needed for text-controlled motion direction.
        temporal_conv: the first conv of every residual block is a ``Pseudo3DConv`` (Make-A-Video:
            a 3-tap temporal conv after the spatial one, starting as the identity), so frames mix at
            every level, not only where there is temporal attention.
        scale_shift: condition the residual blocks by ADM's scale-shift norm (``norm(h) * (1 +
            scale) + shift``) instead of adding the embedding: the caption and frame index then
            gate features multiplicatively (e.g. which way the temporal taps shift).
        frame_context: add a bilinear function of the context and the frame's sinusoidal embedding
            (zero at start) to each frame's conditioning: the place of an object moving as the
            caption says is, to first order, the caption's direction times the frame index, which
            a sum of the two embeddings reaches only through higher-order terms.
        cond_mlp: pass the summed conditioning (time, context, frame) through a residual 2-layer
            MLP before the blocks, so that the caption and the frame index interact (a captioned
            motion is a function of both) in more than one nonlinearity.
        coord_channels: append each pixel's x and y (in [-1, 1]) to the input (CoordConv), so the
            network knows absolute positions: near pure noise the best prediction of a captioned
            motion puts the object at a caption- and frame-dependent place in the frame.

    Shapes:
        x: ``[B, T, H, W, in_channels]`` (H and W divisible by ``2 ** (len(channel_mult) - 1)``);
        t: ``[B]`` (or a scalar / 0-d tensor, broadcast) int or float timesteps;
        context: ``[B, context_dim]`` or None (no context term); output ``[B, T, H, W, out_channels]``.

    Example:
        >>> net = UNet3D(context_dim=16)
        >>> x = torch.randn(2, 4, 8, 8, 3)
        >>> net(x, torch.tensor([1, 999]), torch.randn(2, 16)).shape
        torch.Size([2, 4, 8, 8, 3])
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, model_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1, attention_levels: Sequence[int] = (1,),
                 heads: int = 4, context_dim: int = 0, temporal_rel_bias: bool = True, dropout: float = 0.0,
                 temporal: bool = True, frame_embedding: bool = False, temporal_conv: bool = False,
                 scale_shift: bool = False, coord_channels: bool = False, cond_mlp: bool = False,
                 frame_context: bool = False):
        super().__init__()
        for name, val in (("in_channels", in_channels), ("out_channels", out_channels),
                          ("model_channels", model_channels), ("num_res_blocks", num_res_blocks)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"UNet3D: {name} must be a positive int, got {val!r}")
        channel_mult = tuple(channel_mult)
        if not channel_mult or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"UNet3D: channel_mult must be a non-empty sequence of positive ints, "
                             f"got {channel_mult!r}")
        attention_levels = tuple(attention_levels)
        if any(not isinstance(i, int) or not 0 <= i < len(channel_mult) for i in attention_levels):
            raise ValueError(f"UNet3D: attention_levels must be level indices in [0, {len(channel_mult)}), "
                             f"got {attention_levels!r}")
        if not isinstance(context_dim, int) or context_dim < 0:
            raise ValueError(f"UNet3D: context_dim must be an int >= 0, got {context_dim!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"UNet3D: dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(frame_embedding, bool):
            raise TypeError(f"UNet3D: frame_embedding must be a bool, got {frame_embedding!r}")
        for name, val in (("temporal_conv", temporal_conv), ("scale_shift", scale_shift),
                          ("coord_channels", coord_channels), ("cond_mlp", cond_mlp),
                          ("frame_context", frame_context)):
            if not isinstance(val, bool):
                raise TypeError(f"UNet3D: {name} must be a bool, got {val!r}")
        if temporal_conv and not temporal:
            raise ValueError("UNet3D: temporal_conv=True mixes frames, which temporal=False rules out")
        widths = [model_channels * m for m in channel_mult]
        for i in (*attention_levels, len(widths) - 1):
            _check_heads("UNet3D", widths[i], heads)
        self.in_channels, self.out_channels, self.model_channels = in_channels, out_channels, model_channels
        self.context_dim, self.levels = context_dim, len(channel_mult)
        temb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.context_embed = nn.Linear(context_dim, temb_dim) if context_dim else None
        self.frame_embed = None
        if frame_embedding:
            self.frame_embed = nn.Sequential(nn.Linear(model_channels, temb_dim), nn.SiLU(),
                                             nn.Linear(temb_dim, temb_dim))
        self.coord_channels = coord_channels
        if frame_context and not (frame_embedding and context_dim):
            raise ValueError("UNet3D: frame_context=True needs frame_embedding=True and context_dim > 0")
        self.frame_context = None
        if frame_context:  # bilinear in (context, frame), zero at start (see the docstring)
            self.frame_context = nn.Bilinear(context_dim, model_channels, temb_dim)
            nn.init.zeros_(self.frame_context.weight)
            nn.init.zeros_(self.frame_context.bias)
        self.cond_mlp = None
        if cond_mlp:  # a residual MLP on the summed conditioning, its last layer zero: starts as the identity
            self.cond_mlp = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, temb_dim), nn.SiLU(),
                                          nn.Linear(temb_dim, temb_dim))
            nn.init.zeros_(self.cond_mlp[3].weight)
            nn.init.zeros_(self.cond_mlp[3].bias)
        self.conv_in = SpaceConv3d(in_channels + (2 if coord_channels else 0), model_channels)

        def block(cin, cout, attn):
            return _Block(cin, cout, temb_dim, dropout, attn, heads, temporal_rel_bias, temporal, temporal_conv,
                          scale_shift)

        self.down_blocks, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        skips, ch = [model_channels], model_channels
        for lvl, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(ch, w, lvl in attention_levels))
                ch = w
                skips.append(ch)
            self.down_blocks.append(blocks)
            if lvl < len(widths) - 1:
                self.downsamplers.append(SpaceConv3d(ch, ch, stride=2))
                skips.append(ch)
        self.mid_block = block(ch, ch, True)
        self.mid_res = _ResBlock(ch, ch, temb_dim, dropout, temporal_conv, scale_shift)
        self.up_blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skips.pop(), widths[lvl], lvl in attention_levels))
                ch = widths[lvl]
            self.up_blocks.append(blocks)
            if lvl > 0:
                self.upsamplers.append(_Upsample(ch))
        self.norm_out = _GroupNorm(_num_groups(ch), ch, eps=1e-6)
        self.conv_out = SpaceConv3d(ch, out_channels)
        nn.init.zeros_(self.conv_out.conv.weight)
        nn.init.zeros_(self.conv_out.conv.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int,
                context: torch.Tensor | None = None) -> torch.Tensor:
        _check_video(x, "x", self.in_channels, "UNet3D")
        B, T, H, W, _ = x.shape
        f = 2 ** (self.levels - 1)
        if H % f or W % f:
            raise ValueError(f"UNet3D: x's H and W must be divisible by {f} ({self.levels} levels), got "
                             f"shape {tuple(x.shape)}")
        if not isinstance(t, torch.Tensor):
            if not isinstance(t, (int, float)) or isinstance(t, bool):
                raise TypeError(f"UNet3D: t must be a tensor or a number, got {type(t).__name__}")
            t = torch.tensor(float(t), device=x.device)
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() != 1 or t.shape[0] != B or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"UNet3D: t must be [B] = [{B}] int or float timesteps, got {t.dtype} {tuple(t.shape)}")
        temb = self.time_embed(timestep_embedding(t.to(x.device), self.model_channels).to(x.dtype))
        if context is not None:
            if self.context_embed is None:
                raise ValueError("UNet3D: got a context but the model was built with context_dim=0")
            if not isinstance(context, torch.Tensor) or tuple(context.shape) != (B, self.context_dim):
                got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
                raise ValueError(f"UNet3D: context must be [B, context_dim] = [{B}, {self.context_dim}], got {got}")
            temb = temb + self.context_embed(context.to(x.dtype))
        if self.frame_embed is not None:
            frames = timestep_embedding(torch.arange(T, device=x.device), self.model_channels).to(x.dtype)
            temb = temb[:, None, :] + self.frame_embed(frames)[None]  # [B, T, temb_dim]
            if self.frame_context is not None and context is not None:
                temb = temb + self.frame_context(context.to(x.dtype)[:, None, :].expand(B, T, -1),
                                                 frames[None].expand(B, T, -1))
        if self.cond_mlp is not None:
            temb = temb + self.cond_mlp(temb)

        if self.coord_channels:  # x and y of each pixel in [-1, 1], the same in every frame
            ys = torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype)
            xs = torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # [H, W, 2]
            x = torch.cat([x, grid.expand(B, T, H, W, 2)], -1)
        h = self.conv_in(x)
        skips = [h]
        for lvl, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, temb)
                skips.append(h)
            if lvl < len(self.downsamplers):
                h = self.downsamplers[lvl](h)
                skips.append(h)
        h = self.mid_res(self.mid_block(h, temb), temb)
        for i, blocks in enumerate(self.up_blocks):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=-1), temb)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))
