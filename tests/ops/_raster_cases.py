"""Shared by test_rasterize.py and test_interpolate.py: random meshes in clip space.

A mesh is a height-field grid (shared vertices, triangles that do not overlap on screen) behind
free triangles in separate depth layers (overlapping each other on screen, never within 0.05 of
each other's depth), some partly outside the view or the depth range, both windings, in random
order, with random w (perspective). Optionally a triangle wholly behind the camera and one
crossing w = 0. Depth ties are thereby absent, so small perturbations of pos change no winner
(gradcheck) except at edges, where pixel centres land with probability ~0."""

import torch


def make_mesh(g, B=2, grid=(4, 5), n_free=6, behind=False, crossing=False, dtype=torch.float64, device="cpu"):
    """(pos [B, V, 4], tri [T, 3] int64) from generator g."""
    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    ndc, tris = [], []
    # the grid: NDC x, y over most of the screen (jittered), z in [0.55, 0.95]
    gy, gx = grid
    ys, xs = torch.meshgrid(torch.linspace(-1.1, 0.9, gy, dtype=torch.float64),
                            torch.linspace(-0.9, 1.05, gx, dtype=torch.float64), indexing="ij")
    jitter = (rand(gy, gx, 2) - 0.5) * 0.1
    z = 0.55 + 0.4 * rand(gy, gx)
    ndc += torch.stack([xs + jitter[..., 0], ys + jitter[..., 1], z], -1).reshape(-1, 3).tolist()
    for i in range(gy - 1):
        for j in range(gx - 1):
            a, b, c, d = i * gx + j, i * gx + j + 1, (i + 1) * gx + j, (i + 1) * gx + j + 1
            tris += [[a, b, d], [a, d, c]]
    # free triangles: layer k at NDC depth -0.8 + 0.2 k (+- 0.02 per vertex); one pokes past z = 1
    for k in range(n_free):
        centre = (rand(2) - 0.5) * 1.6
        base = len(ndc)
        zk = -0.8 + 0.2 * k if k < n_free - 1 or n_free < 3 else 0.7
        for _ in range(3):
            xy = centre + (rand(2) - 0.5) * 1.4
            dz = (rand(1).item() - 0.5) * 0.04
            if k == n_free - 1 and n_free >= 3 and _ == 0:
                dz = 0.8  # partly beyond the far plane: clipped by depth
            ndc.append([xy[0].item(), xy[1].item(), zk + dz])
        tris.append([base, base + 1, base + 2])
    ndc = torch.tensor(ndc, dtype=torch.float64)
    V = ndc.shape[0]
    w = 0.6 + 1.2 * rand(B, V, 1)
    pos = torch.cat([ndc[None] * w, w], -1)  # clip = (x w, y w, z w, w)
    extra = []
    if behind:  # a visible-looking triangle, all w < 0: covers nothing
        extra.append(torch.tensor([[-0.5, -0.5, 0.0, -1.0], [0.5, -0.6, 0.0, -1.2], [0.0, 0.7, 0.0, -0.9]],
                                  dtype=torch.float64))
    if crossing:  # one vertex behind the camera, in front of everything where it shows
        extra.append(torch.tensor([[-0.61, 0.3, -0.95, 1.0], [0.43, -0.17, -0.9, 1.1], [0.13, 0.52, 0.3, -0.4]],
                                  dtype=torch.float64))
    for e in extra:
        tris.append([V, V + 1, V + 2])
        pos = torch.cat([pos, e[None].expand(B, 3, 4)], 1)
        V += 3
    tri = torch.tensor(tris, dtype=torch.int64).reshape(-1, 3)
    # both windings, random order
    flip = rand(tri.shape[0]) < 0.5
    tri[flip] = tri[flip][:, [0, 2, 1]]
    tri = tri[torch.randperm(tri.shape[0], generator=g)]
    return pos.to(dtype).to(device), tri.to(device)


def seed_of(g):
    return int(torch.randint(0, 2**31, (1,), generator=g))
