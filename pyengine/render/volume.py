"""Volume rendering of a field along rays: occupancy-grid marching, fused compositing, chunking.

``render_rays`` is the training path (differentiable); ``render_image`` renders whole cameras
in chunks under ``no_grad`` so that any resolution fits in memory.
"""

from __future__ import annotations

import torch

from pyengine.ops.composite import composite, pack_info


def _background(background, n, device, dtype, rays_d=None):
    if callable(background):
        return background(rays_d)
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    return bg.expand(n, 3) if bg.numel() == 3 else bg.reshape(n, 3)


def render_rays(field, estimator, rays_o: torch.Tensor, rays_d: torch.Tensor, *, render_step_size: float,
                near_plane: float = 0.0, far_plane: float = 1e10, background=(1.0, 1.0, 1.0),
                cone_angle: float = 0.0, alpha_thre: float = 0.0, early_stop_eps: float = 1e-4,
                stratified: bool = False, with_normals: bool = False, orientation: bool = False,
                sample_budget: int | None = None, march_budget: int | None = None) -> dict:
    """Render rays through ``field`` with samples from ``estimator`` (an ``OccupancyGrid``).

    Args:
        field: module with ``density(x [S, 3]) -> [S]`` and ``forward(x, with_normals) -> dict``
            holding ``density`` [S], ``albedo`` [S, 3] and, if asked, ``normal`` [S, 3].
        estimator: ``pyengine.nn.OccupancyGrid`` (or nerfacc's ``OccGridEstimator`` API).
        rays_o, rays_d: [R, 3] origins and unit directions.
        background: [3] colour, [R, 3] colours, or a callable ``rays_d -> [R, 3]``.

        orientation: also composite Ref-NeRF's orientation penalty ``max(0, n . d)^2`` (normals
            facing away from the camera), exact per sample; implies normals.
        sample_budget: None: the field runs on as many samples as the rays have, which reads two
            counts back from the device (the marcher's, and the early stop's). An int: the field
            runs on exactly this many sample slots and nothing is read back, so the whole step
            has static shapes (CUDA graphs, ``torch.compile`` without graph breaks). Rays are
            served in order and the last ones are cut when the budget runs out (see
            ``OccupancyGrid.sampling``); with a large enough budget the result is the
            data-sized one.
        march_budget: with ``sample_budget``, the marcher's slots (default: ``sample_budget``).
            Larger, the samples that survive the early stop are packed into the
            ``sample_budget`` slots the field runs on (no sync either), as the data-sized path
            compacts them: size it for the marched samples, ``sample_budget`` for the kept ones.

    Returns:
        dict(rgb [R, 3], opacity [R], depth [R] (expected distance, divided by opacity where
        non-zero), normal [R, 3] if asked (opacity-weighted, not renormalised), orientation [R] if
        asked (the weighted sum of the penalty along the ray), n_samples int (the samples the
        field ran on: the budget, when one is given), and with a budget ``wanted_samples``, a [2]
        int64 device tensor: the samples the marcher wanted and the marched samples the early stop
        kept (``[0] > march_budget`` or ``[1] > sample_budget``: some were cut)).
    """
    with_normals = with_normals or orientation
    R = rays_o.shape[0]

    def sigma_fn(t_starts, t_ends, ray_indices):
        mid = (t_starts + t_ends)[:, None] * 0.5
        return field.density(rays_o[ray_indices] + rays_d[ray_indices] * mid)

    budget = {} if sample_budget is None else {"capacity": sample_budget, "march_capacity": march_budget}
    sampled = estimator.sampling(
        rays_o, rays_d, sigma_fn=sigma_fn, near_plane=near_plane, far_plane=far_plane,
        render_step_size=render_step_size, early_stop_eps=early_stop_eps, alpha_thre=alpha_thre,
        stratified=stratified, cone_angle=cone_angle, **budget)
    ray_indices, t_starts, t_ends = sampled[:3]
    mid = (t_starts + t_ends)[:, None] * 0.5
    x = rays_o[ray_indices] + rays_d[ray_indices] * mid
    out = field(x, with_normals=with_normals)
    density = out["density"]
    if sample_budget is not None:
        # padding and dropped samples are zero-length: zero their density too, so that even an
        # infinite one composites to nothing (inf * 0 would be NaN)
        density = torch.where(t_ends > t_starts, density, torch.zeros_like(density))
    values = out["albedo"] if not with_normals else torch.cat([out["albedo"], out["normal"]], -1)
    if orientation:
        facing = (out["normal"] * rays_d[ray_indices]).sum(-1, keepdim=True)
        values = torch.cat([values, torch.relu(facing) ** 2], -1)
    # the marcher's indices are sorted and in range: skip both checks (each costs a device sync)
    res = composite(pack_info(ray_indices, R, validate=False), t_starts, t_ends, densities=density,
                    values=values, validate=False)
    opacity = res.opacity
    bg = _background(background, R, rays_o.device, rays_o.dtype, rays_d)
    rgb = res.accumulated[:, :3] + (1.0 - opacity)[:, None] * bg
    depth = torch.where(opacity > 0, res.depth / opacity.clamp_min(1e-10), torch.zeros_like(opacity))
    result = {"rgb": rgb, "opacity": opacity, "depth": depth, "n_samples": int(t_starts.shape[0])}
    if sample_budget is not None:
        result["wanted_samples"] = sampled[3]
    if with_normals:
        result["normal"] = res.accumulated[:, 3:6]
    if orientation:
        result["orientation"] = res.accumulated[:, 6]
    return result


@torch.no_grad()
def render_image(field, estimator, cams, *, chunk: int = 8192, **kwargs) -> dict:
    """Render every pixel of every camera in ``cams``; returns [B, H, W, ...] tensors."""
    from pyengine.render.camera import generate_rays

    rays_o, rays_d = generate_rays(cams)
    B, H, W = rays_o.shape[:3]
    o, d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    parts = [render_rays(field, estimator, o[s:s + chunk], d[s:s + chunk], **kwargs)
             for s in range(0, o.shape[0], chunk)]
    out = {}
    for k in parts[0]:
        if k == "n_samples":
            out[k] = sum(p[k] for p in parts)
        elif k == "wanted_samples":
            out[k] = torch.stack([p[k] for p in parts]).sum(0)
        else:
            v = torch.cat([p[k] for p in parts])
            out[k] = v.reshape(B, H, W, *v.shape[1:])
    return out
