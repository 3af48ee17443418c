"""Reference of ``st_attention``: spatial or temporal multi-head attention on video activations.

Tensors are ``[B, T, H, W, C]`` (frame-major, channels last) with ``C = heads * D``, read through
their strides (any strides: ``[B, C, T, H, W]`` tensors arrive as permuted views). Position ``p``
of a sequence and the attended axis depend on the mode:

* temporal: one sequence per pixel ``(b, h, w)``; positions are the frames ``t`` (``L = T``).
* spatial: one sequence per frame ``(b, t)``; positions are the pixels ``p = h W + w``
  (``L = H W``). The keys and values of frame ``t`` are those of the frames
  ``kv_frames[t, 0], kv_frames[t, 1], ...`` one after the other (``Lk = n_src H W``): ``[t]`` is
  plain spatial attention, ``[0, t - 1]`` Tune-A-Video's sparse-causal attention.

For every sequence, head ``h`` (channels ``h D .. h D + D - 1``) and query position ``i``::

    q_i = q[i] + pos[i]          k_j = k[j] + pos[j mod L]        (pos: [L, D], optional)
    s_ij = scale <q_i, k_j> + bias[h or 0, i, j]                  (bias: [Hb, Lq, Lk], optional)
    out[i] = sum_j softmax_j(s_ij) v[j],     lse[i] = log sum_j exp(s_ij)

computed in float32 (float64 for float64 inputs). A row whose scores are all ``-inf`` (fully
masked) gives ``out = 0`` and ``lse = -inf``, with zero gradients.

Kernel arguments (the forward schema): ``st_attention_fwd(q, k, v, kv_frames, bias, pos, heads,
temporal, scale) -> (out [B, T, H, W, C] in q's dtype, lse [B, T, H, W, heads] float32/64)``.
``kv_frames`` is int32 ``[T, n_src]`` (ignored, and may be empty, in temporal mode); ``bias`` and
``pos`` are float32/64 and empty (``numel() == 0``) when absent.
"""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    B, T, H, W, C = x.shape
    return x.reshape(B, T, H, W, heads, C // heads)


def st_attention_fwd(q, k, v, kv_frames, bias, pos, heads: int, temporal: bool, scale: float):
    B, T, H, W, C = q.shape
    f = compute_dtype(q)
    qh, kh, vh = (_heads(x.to(f), heads) for x in (q, k, v))  # [B, T, H, W, heads, D]
    if temporal:
        # [B, H, W, heads, T, D]: sequences (b, h, w), positions t
        qs, ks, vs = (x.permute(0, 2, 3, 4, 1, 5) for x in (qh, kh, vh))
        if pos.numel():
            p = pos.to(f)[:T]
            qs, ks = qs + p, ks + p
    else:
        D = C // heads
        # [B, T, heads, HW, D]: sequences (b, t), positions h W + w
        flat = lambda x: x.reshape(B, T, H * W, heads, D).permute(0, 1, 3, 2, 4)  # noqa: E731
        qs, ks, vs = flat(qh), flat(kh), flat(vh)
        if pos.numel():
            p = pos.to(f)[: H * W]
            qs, ks = qs + p, ks + p
        idx = kv_frames.long()  # [T, n_src]
        n_src = idx.shape[1]
        # keys of frame t: frames idx[t, 0], idx[t, 1], ... one after the other
        ks = ks[:, idx].permute(0, 1, 3, 2, 4, 5).reshape(B, T, heads, n_src * H * W, D)
        vs = vs[:, idx].permute(0, 1, 3, 2, 4, 5).reshape(B, T, heads, n_src * H * W, D)
    s = torch.matmul(qs, ks.transpose(-1, -2)) * scale  # [..., heads, Lq, Lk]
    if bias.numel():
        s = s + bias.to(f)
    m = s.detach().amax(-1, keepdim=True)  # the result does not depend on m: no gradient through it
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # fully masked rows: exp(-inf) = 0
    e = torch.exp(s - m)
    denom = e.sum(-1, keepdim=True)
    live = denom > 0
    safe = torch.where(live, denom, torch.ones_like(denom))  # fully masked rows: out 0, lse -inf, no NaN
    o = torch.matmul(e, vs) / safe
    lse = torch.where(live, m + torch.log(safe), torch.full_like(m, float("-inf"))).squeeze(-1)  # [..., heads, Lq]
    if temporal:
        out = o.permute(0, 4, 1, 2, 3, 5).reshape(B, T, H, W, C)
        lse = lse.permute(0, 4, 1, 2, 3)  # [B, T, H, W, heads]
    else:
        out = o.permute(0, 1, 3, 2, 4).reshape(B, T, H, W, C)
        lse = lse.permute(0, 1, 3, 2).reshape(B, T, H, W, heads)
    return out.to(q.dtype), lse.contiguous()


def sinusoidal_table(length: int, dim: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[length, dim]`` sinusoidal position encoding (Vaswani et al.): channel ``2i`` is
    ``sin(p / 10000^(2i / dim))`` and channel ``2i + 1`` its cosine (an odd last channel: sine)."""
    p = torch.arange(length, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(dim, dtype=torch.float64, device=device)
    freq = torch.pow(10000.0, -(2 * torch.div(i, 2, rounding_mode="floor")) / max(dim, 1))
    ang = p * freq
    return torch.where(i.remainder(2) == 0, torch.sin(ang), torch.cos(ang)).to(dtype)


def t5_buckets(q_len: int, k_len: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True,
               device=None) -> torch.Tensor:
    """``[q_len, k_len]`` int64 T5 relative-position buckets of ``j - i`` (Raffel et al.; the
    relative attention bias of Ho et al.'s temporal attention): half the buckets for each sign when
    bidirectional, exact buckets for small distances and logarithmic ones up to ``max_distance``."""
    rel = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
    n = num_buckets
    ret = torch.zeros_like(rel)
    if bidirectional:
        n //= 2
        ret = ret + (rel > 0).long() * n
        rel = rel.abs()
    else:
        rel = (-rel).clamp_min(0)
    exact = n // 2
    is_small = rel < exact
    large = exact + (torch.log(rel.double().clamp_min(1) / exact) / torch.log(torch.tensor(max_distance / exact,
                     dtype=torch.float64)) * (n - exact)).long()
    large = large.clamp_max(n - 1)
    return ret + torch.where(is_small, rel, large)
