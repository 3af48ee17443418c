"""``HashGrid``: the multiresolution hash encoding as a module with its own table."""

from __future__ import annotations

import torch

from pyengine.ops.hash_encode import HashGridConfig, hash_encode


class HashGrid(torch.nn.Module):
    """Learnable multiresolution hash grid (Instant-NGP).

    Args:
        config: grid hyper-parameters; keyword arguments build one (``HashGrid(n_levels=8)``).
        bounds: optional [2, D] (min corner, max corner) of the region mapped to the unit cube.
        dtype: storage dtype of the table (float32, float16 or bfloat16).
        init_scale: the table starts uniform in [-init_scale, init_scale] (tcnn uses 1e-4).
        backend: force a backend ("cuda", "triton", "cpu", "reference"); default automatic.

    Example:
        >>> grid = HashGrid(n_input_dims=3, n_levels=8, log2_hashmap_size=15)
        >>> grid(torch.rand(1024, 3)).shape
        torch.Size([1024, 16])
    """

    def __init__(self, config: HashGridConfig | None = None, *, bounds=None, dtype=torch.float32,
                 init_scale: float = 1e-4, backend: str | None = None, generator=None, **kwargs):
        super().__init__()
        if config is None:
            config = HashGridConfig(**kwargs)
        elif kwargs:
            raise TypeError(f"HashGrid: pass either config or keyword arguments, not both ({sorted(kwargs)})")
        self.config = config
        self.backend = backend
        table = (torch.rand(config.n_params(), generator=generator, dtype=torch.float32) * 2 - 1) * init_scale
        self.params = torch.nn.Parameter(table.to(dtype))
        if bounds is not None:
            bounds = torch.as_tensor(bounds, dtype=torch.float32)
            if bounds.shape != (2, config.n_input_dims):
                raise ValueError(f"HashGrid: bounds must be [2, {config.n_input_dims}], got {tuple(bounds.shape)}")
            if not (bounds[1] > bounds[0]).all():
                raise ValueError("HashGrid: bounds[1] must be greater than bounds[0] in every dim")
        self.register_buffer("bounds", bounds)

    @property
    def n_output_dims(self) -> int:
        return self.config.n_output_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., D] in ``bounds`` (or [0, 1]) -> [..., L * F]."""
        if self.bounds is not None:
            x = (x - self.bounds[0]) / (self.bounds[1] - self.bounds[0])
        return hash_encode(x, self.params, self.config, backend=self.backend)

    def extra_repr(self) -> str:
        c = self.config
        return (f"D={c.n_input_dims}, levels={c.n_levels}, features={c.n_features_per_level}, "
                f"log2_T={c.log2_hashmap_size}, base={c.base_resolution}, b={c.per_level_scale}, "
                f"{c.interpolation}, {c.grid_type}, params={c.n_params()}")
