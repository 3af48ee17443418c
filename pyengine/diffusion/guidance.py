"""Classifier-free guidance (Ho and Salimans 2022).

A model trained with its condition sometimes replaced by a null one (caption dropout) predicts
both ``out(x, t, c)`` and ``out(x, t, null)``; guidance samples from

    out_guided = out(x, t, u) + scale * (out(x, t, c) - out(x, t, u))

with ``u`` the null condition, or a negative prompt's. The combination is affine, so it is the
same whether the model outputs ``eps``, ``v`` or ``x0`` (each is affine in ``eps`` at fixed
``x_t, t``). ``scale = 1`` is the conditional model, ``0`` the unconditional one.

Example:
    >>> net = lambda x, t, c: x * c[:, :1]
    >>> guided = ClassifierFreeGuidance(net, cond=torch.ones(2, 4), uncond=torch.zeros(2, 4), scale=3.0)
    >>> guided(torch.ones(2, 5), torch.zeros(2, dtype=torch.long))[0, 0].item()
    3.0
"""

from __future__ import annotations

import torch


def _batch(c: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if c.shape[0] == n:
        return c
    if c.shape[0] == 1:
        return c.expand(n, *c.shape[1:])
    raise ValueError(f"ClassifierFreeGuidance: {name} has batch {c.shape[0]}, expected 1 or {n}")


class ClassifierFreeGuidance:
    """A guided model ``guided(x, t) -> out``, to pass to the samplers.

    Args:
        model: ``model(x [B, ...], t [B], cond [B, ...]) -> [B, ...]`` (any prediction type).
        cond: [B, ...] or [1, ...] the condition (e.g. pooled text embeddings).
        uncond: like ``cond``: the null condition, or a negative prompt's.
        scale: guidance scale ``w`` (1: no guidance).
        batched: evaluate conditional and unconditional in one call on a ``2B`` batch (faster, the
            usual choice) or in two calls of ``B`` (half the peak memory).
    """

    def __init__(self, model, cond: torch.Tensor, uncond: torch.Tensor | None, scale: float = 1.0,
                 batched: bool = True):
        if uncond is None and scale != 1.0:
            raise ValueError("ClassifierFreeGuidance: scale != 1 needs an unconditional (or negative) condition")
        if uncond is not None and uncond.shape[1:] != cond.shape[1:]:
            raise ValueError(f"ClassifierFreeGuidance: uncond {tuple(uncond.shape)} does not match cond "
                             f"{tuple(cond.shape)} beyond the batch")
        self.model, self.cond, self.uncond, self.scale, self.batched = model, cond, uncond, float(scale), batched
        self.calls = 0  # model evaluations so far (each on B or 2B inputs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        B = x.shape[0]
        cond = _batch(self.cond, B, "cond")
        self.calls += 1
        if self.scale == 1.0:
            return self.model(x, t, cond)
        uncond = _batch(self.uncond, B, "uncond")
        if self.scale == 0.0:
            return self.model(x, t, uncond)
        if self.batched:
            out_c, out_u = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond])).chunk(2)
        else:
            out_c, out_u = self.model(x, t, cond), self.model(x, t, uncond)
        return out_u + self.scale * (out_c - out_u)
