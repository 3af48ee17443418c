"""``NeRFField``: hash-grid encoding plus small MLPs for density and albedo, with normals.

Normals are ``-grad(density) / |grad(density)|``, either analytic (autograd through the hash
grid; training through them uses the grid's double backward) or by central finite differences.
"""

from __future__ import annotations

import math

import torch

from pyengine.nn.hash_grid import HashGrid
from pyengine.ops.hash_encode import HashGridConfig


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)): stops exploding density gradients (torch-ngp)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


ACTIVATIONS = {
    "trunc_exp": trunc_exp,
    "softplus": lambda x: torch.nn.functional.softplus(x - 1.0),
    "relu": torch.relu,
}


def _mlp(n_in, hidden, n_out, n_hidden_layers=1):
    layers, width = [], n_in
    for _ in range(n_hidden_layers):
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


class NeRFField(torch.nn.Module):
    """Density + albedo field over an axis-aligned box.

    Args:
        aabb: [6] (xmin, ymin, zmin, xmax, ymax, zmax) of the region the grid covers.
        n_levels, n_features_per_level, log2_hashmap_size, base_resolution: hash grid settings.
        finest_resolution: per-level scale is chosen so that the last level has this resolution.
        hidden: width of the MLPs; geo_feat_dim: features passed from density to albedo.
        density_activation: "trunc_exp" (Instant-NGP), "softplus" or "relu".
        density_bias: added to the raw density before the activation; "blob" adds
            ``blob_density * (1 - |x| / blob_radius)`` (DreamFusion / threestudio init for SDS).
        normals: "analytic" (autograd through the grid), "finite_difference", or "none".

    Example:
        >>> field = NeRFField(aabb=[-1, -1, -1, 1, 1, 1], n_levels=8, log2_hashmap_size=15)
        >>> out = field(torch.rand(100, 3) * 2 - 1, with_normals=True)
        >>> out["density"].shape, out["albedo"].shape, out["normal"].shape
        (torch.Size([100]), torch.Size([100, 3]), torch.Size([100, 3]))
    """

    def __init__(self, aabb=(-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), *, n_levels: int = 16,
                 n_features_per_level: int = 2, log2_hashmap_size: int = 19, base_resolution: float = 16.0,
                 finest_resolution: float = 1024.0, interpolation: str = "linear", hidden: int = 64,
                 geo_feat_dim: int = 15, density_activation: str = "trunc_exp", density_bias="none",
                 blob_density: float = 10.0, blob_radius: float = 0.5, normals: str = "analytic",
                 fd_eps: float = 1e-3, backend: str | None = None):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if aabb.shape != (6,) or not (aabb[3:] > aabb[:3]).all():
            raise ValueError(f"NeRFField: aabb must be [xmin, ymin, zmin, xmax, ymax, zmax] with max > min, got {aabb}")
        if density_activation not in ACTIVATIONS:
            raise ValueError(f"NeRFField: density_activation must be one of {sorted(ACTIVATIONS)}")
        if normals not in ("analytic", "finite_difference", "none"):
            raise ValueError("NeRFField: normals must be 'analytic', 'finite_difference' or 'none'")
        if density_bias not in ("none", "blob") and not isinstance(density_bias, (int, float)):
            raise ValueError("NeRFField: density_bias must be 'none', 'blob' or a number")
        per_level_scale = math.exp(math.log(finest_resolution / base_resolution) / max(n_levels - 1, 1))
        cfg = HashGridConfig(3, n_levels, n_features_per_level, log2_hashmap_size, base_resolution,
                             max(per_level_scale, 1.0), interpolation)
        self.register_buffer("aabb", aabb)
        self.grid = HashGrid(cfg, bounds=aabb.reshape(2, 3), backend=backend)
        self.density_net = _mlp(cfg.n_output_dims, hidden, 1 + geo_feat_dim)
        self.albedo_net = _mlp(geo_feat_dim, hidden, 3)
        self.density_activation = density_activation
        self.density_bias = density_bias
        self.blob_density, self.blob_radius = blob_density, blob_radius
        self.normals = normals
        self.fd_eps = fd_eps

    def _raw(self, x):
        h = self.density_net(self.grid(x))
        raw, geo = h[..., 0], h[..., 1:]
        if self.density_bias == "blob":
            center = (self.aabb[:3] + self.aabb[3:]) / 2
            raw = raw + self.blob_density * (1 - (x - center).norm(dim=-1) / self.blob_radius)
        elif isinstance(self.density_bias, (int, float)):
            raw = raw + self.density_bias
        inside = ((x >= self.aabb[:3]) & (x <= self.aabb[3:])).all(-1)
        sigma = ACTIVATIONS[self.density_activation](raw) * inside
        return sigma, geo

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., 3] world positions -> [...] density (zero outside the aabb)."""
        return self._raw(x)[0]

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> dict:
        """x: [..., 3] -> dict(density [...], albedo [..., 3], normal [..., 3] if asked)."""
        if with_normals and self.normals == "analytic":
            with torch.enable_grad():
                xg = x if x.requires_grad else x.detach().requires_grad_(True)
                sigma, geo = self._raw(xg)
                (grad,) = torch.autograd.grad(sigma.sum(), xg, create_graph=torch.is_grad_enabled())
            out = {"density": sigma, "normal": -torch.nn.functional.normalize(grad, dim=-1, eps=1e-12)}
        else:
            sigma, geo = self._raw(x)
            out = {"density": sigma}
            if with_normals and self.normals == "finite_difference":
                eps = self.fd_eps
                offs = torch.eye(3, device=x.device, dtype=x.dtype) * eps
                d_plus = torch.stack([self.density(x + o) for o in offs], -1)
                d_minus = torch.stack([self.density(x - o) for o in offs], -1)
                grad = (d_plus - d_minus) / (2 * eps)
                out["normal"] = -torch.nn.functional.normalize(grad, dim=-1, eps=1e-12)
        out["albedo"] = torch.sigmoid(self.albedo_net(geo))
        return out
