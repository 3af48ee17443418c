"""Plain-PyTorch stand-ins for pyengine.ops' point ops, with PVCNN's semantics, for tests only.

``install(monkeypatch)`` sets each stand-in on ``pyengine.ops`` only where the package lacks the
name, so the tests that use it run the real ops once they exist.
"""

import torch

import pyengine.ops


def furthest_point_sample(coords, num_samples, *, backend=None, deterministic=None):
    """[B, 3, N] -> int32 [B, M]: start at point 0, then repeatedly the point farthest from those taken."""
    B, _, N = coords.shape
    idx = torch.zeros(B, num_samples, dtype=torch.int32, device=coords.device)
    dist = torch.full((B, N), 1e10, dtype=coords.dtype, device=coords.device)
    last = torch.zeros(B, dtype=torch.long, device=coords.device)
    for m in range(1, num_samples):
        d = (coords - coords.gather(2, last[:, None, None].expand(B, 3, 1))).square().sum(1)
        dist = torch.minimum(dist, d)
        last = dist.argmax(1)
        idx[:, m] = last.to(torch.int32)
    return idx


def gather(features, indices, *, backend=None, deterministic=None):
    """[B, C, N], [B, M] -> [B, C, M]."""
    return features.gather(2, indices.long()[:, None].expand(-1, features.shape[1], -1))


def ball_query(centers_coords, points_coords, radius, num_neighbors, *, backend=None, deterministic=None):
    """int32 [B, M, K]: the first K points (by index) with squared distance < radius^2, padded
    with the first one found; 0 where none is found."""
    d2 = (centers_coords[:, :, :, None] - points_coords[:, :, None, :]).square().sum(1)  # [B, M, N]
    inside = d2 < radius ** 2
    N = points_coords.shape[2]
    order = torch.where(inside, torch.arange(N, device=d2.device), N)
    first = order.sort(-1).values[..., :num_neighbors]  # [B, M, K], N where missing
    if first.shape[-1] < num_neighbors:
        first = torch.cat([first, first.new_full((*first.shape[:2], num_neighbors - first.shape[-1]), N)], -1)
    pad = torch.where(first[..., :1] < N, first[..., :1], 0)
    return torch.where(first < N, first, pad).to(torch.int32)


def grouping(features, indices, *, backend=None, deterministic=None):
    """[B, C, N], [B, M, K] -> [B, C, M, K]."""
    B, M, K = indices.shape
    return gather(features, indices.reshape(B, M * K)).reshape(B, -1, M, K)


def nearest_neighbor_interpolate(points_coords, centers_coords, centers_features, *, backend=None,
                                 deterministic=None):
    """[B, C, N]: the 3 nearest centres' features weighted by 1 / d^2 (d^2 clamped to [1e-10, 1e10])."""
    d2 = (points_coords[:, :, :, None] - centers_coords[:, :, None, :]).square().sum(1)  # [B, N, M]
    best, idx = d2.topk(3, dim=-1, largest=False)
    w = 1.0 / best.clamp(1e-10, 1e10)
    w = w / w.sum(-1, keepdim=True)  # [B, N, 3]
    B, N, _ = idx.shape
    neigh = gather(centers_features, idx.reshape(B, N * 3)).reshape(B, -1, N, 3)
    return (neigh * w[:, None]).sum(-1)


NAMES = ("furthest_point_sample", "gather", "ball_query", "grouping", "nearest_neighbor_interpolate")


def install(monkeypatch) -> list[str]:
    """Sets the stand-ins that pyengine.ops lacks; returns their names."""
    missing = [n for n in NAMES if not hasattr(pyengine.ops, n)]
    for name in missing:
        monkeypatch.setattr(pyengine.ops, name, globals()[name], raising=False)
    return missing
