"""ray_march: every backend bit-for-bit against the reference, hand-made cases, nerfacc's level rule."""

import numpy as np
import pytest
import torch

import pyengine
from pyengine.ops import ray_march as op_mod
from pyengine.ops.ray_march import ray_march
from pyengine.reference import ray_aabb_intersect as ref_aabb
from pyengine.reference import ray_march as ref_mod
from tests.op_harness import Bad, Case, OpSuite, change

ROI = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
ODD_ROI = [-1.0, -0.5, -1.0, 1.0, 0.5, 0.7]  # non-cubic, off-centre
NAMES = ("packed_info", "ray_indices", "t_starts", "t_ends")


def f32(*v):
    return torch.tensor(v, dtype=torch.float32)


def make_case(R, levels, res, seed, roi=ODD_ROI, p=0.5, step=0.02):
    """Random rays from around the grid, t's from the coarsest box, a random cascade."""
    g = torch.Generator().manual_seed(seed)
    roi = torch.tensor(roi)
    o = torch.rand(R, 3, generator=g) * 6 - 3
    d = torch.randn(R, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    c, h = (roi[:3] + roi[3:]) / 2, (roi[3:] - roi[:3]) / 2
    big = torch.cat([c - h * 2 ** (levels - 1), c + h * 2 ** (levels - 1)])[None]
    t0, t1, _ = ref_aabb.ray_aabb_intersect(o, d, big, near_plane=0.0)  # misses: inf
    t_min, t_max = t0[:, 0].clone(), t1[:, 0].clone()
    if R > 8:  # empty, reversed and NaN intervals
        t_max[:2] = t_min[:2]
        t_min[2], t_max[2] = 1.0, 0.5
        t_min[3] = float("nan")
    bins = torch.rand((levels,) + tuple(res), generator=g) < p
    args = {"rays_o": o, "rays_d": d, "t_min": t_min, "t_max": t_max, "binaries": bins, "roi_aabb": roi,
            "step_size": step}
    return args, g


def assert_same(got, want, what):
    for name, a, b in zip(NAMES, got, want):
        assert a.dtype == b.dtype, f"{what} {name}: dtype {a.dtype} != {b.dtype}"
        if a.shape != b.shape:
            raise AssertionError(f"{what} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}; "
                                 f"rays whose counts differ: {int((got[0][:, 1] != want[0][:, 1]).sum())}")
        bad = a != b
        assert not bad.any(), f"{what} {name}: {int(bad.sum())} of {a.numel()} differ"


def check_packing(info, idx, t0, t1, R):
    assert info.shape == (R, 2) and info.dtype == torch.int64 and idx.dtype == torch.int64
    counts = info[:, 1]
    assert int(counts.sum()) == idx.numel() == t0.numel() == t1.numel()
    assert torch.equal(info[:, 0], torch.cumsum(counts, 0) - counts)
    assert torch.equal(idx, torch.repeat_interleave(torch.arange(R), counts))
    assert (t1 >= t0).all()


# --------------------------------------------------------------------------------- special cases


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_all_missing_rays_and_grids_empty_or_full(backend):
    args, _ = make_case(50, 1, (8, 8, 8), seed=5)
    miss = dict(args, t_min=torch.full((50,), float("inf")), t_max=torch.full((50,), float("inf")))
    info, idx, t0, t1 = ray_march(**miss, backend=backend)
    assert idx.numel() == 0 and (info == 0).all()
    empty = dict(args, binaries=torch.zeros(1, 8, 8, 8, dtype=torch.bool))
    assert ray_march(**empty, backend=backend)[1].numel() == 0
    full = dict(args, binaries=torch.ones(1, 8, 8, 8, dtype=torch.bool))
    info, idx, t0, t1 = ray_march(**full, backend=backend)
    check_packing(info, idx, t0, t1, 50)
    # every step of a ray inside the box is a sample: consecutive intervals tile [t_min, t_max]
    for r in torch.nonzero(info[:, 1] > 0)[:10, 0].tolist():
        s, n = info[r].tolist()
        assert t0[s] == args["t_min"][r] and t1[s + n - 1] == args["t_max"][r]
        assert torch.equal(t0[s + 1:s + n], t1[s:s + n - 1])


# --------------------------------------------------------------------------------- hand-made cases


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_single_ray_through_full_grid(backend):
    grid = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    o, d = f32([-2.0, 0.1, 0.2]), f32([1.0, 0.0, 0.0])
    info, idx, t0, t1 = ray_march(o, d, f32(1.0), f32(3.0), grid, f32(*ROI), 0.25, backend=backend)
    assert info.tolist() == [[0, 8]] and idx.tolist() == [0] * 8
    assert t0.tolist() == [1.0 + 0.25 * k for k in range(8)]
    assert t1.tolist() == [1.25 + 0.25 * k for k in range(8)]
    # the last step is cut at t_max
    info, idx, t0, t1 = ray_march(o, d, f32(1.0), f32(2.9), grid, f32(*ROI), 0.25, backend=backend)
    assert info.tolist() == [[0, 8]] and t0[-1].item() == 2.75 and t1[-1].item() == np.float32(2.9)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_one_occupied_cell(backend):
    grid = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    grid[0, 1, 2, 2] = True  # x in [-0.5, 0), y in [0, 0.5), z in [0, 0.5)
    lo, hi = np.array([-0.5, 0.0, 0.0]), np.array([0.0, 0.5, 0.5])
    g = torch.Generator().manual_seed(0)
    R = 200
    target = torch.tensor((lo + hi) / 2, dtype=torch.float32) + (torch.rand(R, 3, generator=g) - 0.5) * 0.3
    o = torch.randn(R, 3, generator=g) * 3
    d = target - o
    d = d / d.norm(dim=-1, keepdim=True)
    t_min, t_max, _ = ref_aabb.ray_aabb_intersect(o, d, f32(*ROI)[None], near_plane=0.0)
    info, idx, t0, t1 = ray_march(o, d, t_min[:, 0], t_max[:, 0], grid, f32(*ROI), 0.01, backend=backend)
    assert (info[:, 1] > 0).all(), "every ray aims into the cell"
    mid = (o[idx] + d[idx] * ((t0 + t1) / 2)[:, None]).numpy()
    assert ((mid >= lo - 1e-5) & (mid < hi + 1e-5)).all()
    assert info[:, 1].max() <= 0.5 * np.sqrt(3) / 0.01 + 1


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_level_boundary_belongs_to_the_coarser_level(backend):
    """nerfacc's rule: level = floor(log2(max|u|)) + 1, so |u| = 1 is level 1, not level 0."""
    o, d = f32([0.0, 0.0, 0.0]), f32([1.0, 0.0, 0.0])
    # midpoints at x = 0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.4375
    run = lambda grid: ray_march(o, d, f32(-0.125), f32(1.5), grid, f32(*ROI), 0.25, backend=backend)
    fine_only = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    fine_only[0] = True
    _, _, t0, t1 = run(fine_only)
    assert t0.tolist() == [-0.125, 0.125, 0.375, 0.625]
    coarse_only = ~fine_only
    _, _, t0, t1 = run(coarse_only)
    assert t0.tolist() == [0.875, 1.125, 1.375] and t1.tolist() == [1.125, 1.375, 1.5]
    # with one level, x = 1.0 is outside the grid
    _, _, t0, _ = run(torch.ones(1, 4, 4, 4, dtype=torch.bool))
    assert t0.tolist() == [-0.125, 0.125, 0.375, 0.625]


def test_level_rule_matches_nerfacc_query():
    """Our occupancy lookup against nerfacc's frexp-based _query, written out independently."""
    L, res = 3, (8, 6, 4)
    g = torch.Generator().manual_seed(2)
    bins = torch.rand(L, *res, generator=g) < 0.5
    # cell centres of every level (away from faces) plus points exactly on level boundaries
    pts = []
    for lvl in range(L):
        idx = torch.stack(torch.meshgrid(*[torch.arange(r) for r in res], indexing="ij"), -1).reshape(-1, 3)
        pts.append(((idx + 0.5) / torch.tensor(res) * 2 - 1) * 2**lvl)
    pts.append(torch.tensor([[1.0, 0, 0], [-1, 0.3, 0], [0, 2.0, 0], [0, 0, -2.0], [4.0, 0, 0], [3.9, -3.9, 0]]))
    x = torch.cat(pts).float()
    ours = ref_mod.occupied(x, bins, f32(*ROI))
    x_norm = (x + 1) / 2  # nerfacc normalises the base box to [0, 1]
    maxval = (x_norm - 0.5).abs().amax(-1).clamp(min=0.1)
    mip = (torch.frexp(maxval)[1].long() + 1).clamp(min=0)
    selector = mip < L
    x_unit = (x_norm - 0.5) / (2.0 ** mip)[:, None] + 0.5
    ix = (x_unit * torch.tensor(res)).long().clamp(max=torch.tensor(res) - 1)
    theirs = bins[mip.clamp(max=L - 1), ix[:, 0], ix[:, 1], ix[:, 2]] & selector
    assert torch.equal(ours, theirs)
    assert ours[-6:].tolist() == theirs[-6:].tolist()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_cone_angle_and_jitter(backend):
    grid = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    o, d = f32([-2.0, 0.1, 0.2], [-2.0, 0.3, 0.2]), f32([1.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    step, cone = 0.01, 0.1
    t_min, t_max = f32(1.0, 1.0), f32(3.0, 3.0)
    info, _, t0, t1 = ray_march(o, d, t_min, t_max, grid, f32(*ROI), step, cone, backend=backend)
    assert t0[0] == 1.0 and torch.equal(t0[1:info[0, 1]], t1[:info[0, 1] - 1])
    dt = np.maximum(t0.numpy() * np.float32(cone), np.float32(step))
    full = t1 < 3.0
    assert np.array_equal((t0.numpy() + dt)[full.numpy()], t1.numpy()[full.numpy()])
    assert info[0, 1] == info[1, 1] and (t1 - t0).max() > 2.5 * (t1 - t0).min()
    jit = f32(0.5, 0.0)
    info, _, t0, t1 = ray_march(o, d, t_min, t_max, grid, f32(*ROI), step, cone, jit, backend=backend)
    assert t0[0].item() == np.float32(1.0) + np.float32(0.5) * np.float32(0.1)
    assert t0[info[1, 0]].item() == 1.0


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vanishing_step_terminates(backend):
    grid = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    o, d = f32([0.0, 0.0, 0.0]), f32([1.0, 0.0, 0.0])
    info, *_ = ray_march(o, d, f32(1e8), f32(2e8), grid, f32(-1e9, -1e9, -1e9, 1e9, 1e9, 1e9),
                                  1e-3, backend=backend)
    assert info[0, 1] <= 1


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("levels", [1, 3])
def test_sparse_cascade_axis_aligned_rays_bitwise(backend, levels):
    """Sparse cascades (a sphere shell and a few random cells) with rays along the axes, nearly
    along them and on cell faces: the reference's samples bit for bit."""
    res = (24, 24, 24)
    c = (torch.arange(24, dtype=torch.float32) + 0.5) / 24 * 2 - 1
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    r = (x * x + y * y + z * z).sqrt()
    g = torch.Generator().manual_seed(3)
    bins = ((r > 0.55) & (r < 0.65))[None].repeat(levels, 1, 1, 1) | (torch.rand((levels,) + res, generator=g) < 0.01)
    roi = f32(*ROI)
    axes = torch.eye(3).repeat(2, 1) * torch.tensor([1.0] * 3 + [-1.0] * 3)[:, None]
    near_axis = torch.nn.functional.normalize(axes + 1e-7 * torch.randn(6, 3, generator=g), dim=-1)
    d = torch.cat([axes, near_axis, torch.nn.functional.normalize(torch.randn(300, 3, generator=g), dim=-1)])
    o = -d * 3.0 + torch.cat([torch.zeros(12, 3), (torch.rand(300, 3, generator=g) - 0.5) * 0.8])
    o[:3] += f32(0.0, 1 / 12, 2 / 12)  # exactly on cell faces
    half = 2.0 ** (levels - 1)
    t0, t1, _ = ref_aabb.ray_aabb_intersect(o, d, torch.tensor([[-half] * 3 + [half] * 3]), near_plane=0.0)
    for cone, jitter in ((0.0, None), (0.01, torch.rand(d.shape[0], generator=g))):
        args = dict(rays_o=o, rays_d=d, t_min=t0[:, 0], t_max=t1[:, 0], binaries=bins, roi_aabb=roi,
                    step_size=0.0017, cone_angle=cone, jitter=jitter)
        want = ref_mod.ray_march(**args)
        assert want[1].numel() > 1000  # the shell is hit
        assert_same(ray_march(**args, backend=backend), want, f"levels={levels} cone={cone}")


@pytest.mark.parametrize("res", [(24, 24, 24), (10, 7, 13)])
def test_empty_space_skipping_is_bitwise_far_and_grazing(res):
    """The kernels skip lookups inside empty cells (march_skip); the samples must stay the
    reference's bit for bit: origins 80 units away (large rounding in o + d t), rays grazing cell
    faces and the level boundaries, cell sizes not divisible by 4 (cells that straddle the finer
    level's box are never skipped), and many small steps per cell."""
    g = torch.Generator().manual_seed(11)
    levels = 3
    bins = torch.rand((levels,) + res, generator=g) < 0.15
    roi = f32(*ODD_ROI)
    d = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    d[:20] = torch.nn.functional.normalize(d[:20] * f32(1.0, 1e-4, 1e-4), dim=-1)  # nearly along x
    faces = (torch.randint(0, 24, (200, 3), generator=g).float() / 12 - 1) * 2  # on level-1 cell faces
    o = faces - d * 80.0
    c, h = (roi[:3] + roi[3:]) / 2, (roi[3:] - roi[:3]) / 2
    big = torch.cat([c - h * 2 ** (levels - 1), c + h * 2 ** (levels - 1)])[None]
    t0, t1, _ = ref_aabb.ray_aabb_intersect(o, d, big, near_plane=0.0)
    for cone in (0.0, 0.004):
        args = dict(rays_o=o, rays_d=d, t_min=t0[:, 0], t_max=t1[:, 0], binaries=bins, roi_aabb=roi,
                    step_size=0.003, cone_angle=cone)
        want = ref_mod.ray_march(**args)
        assert want[1].numel() > 300
        assert_same(ray_march(**args, backend="cpu"), want, f"res={res} cone={cone}")


# --------------------------------------------------------------------------------- checks & registration


def test_compiled_checks_guard_direct_calls():
    from pyengine import _ext

    mod = _ext.load()
    args, _ = make_case(4, 1, (4, 4, 4), seed=0)
    a = list(args.values()) + [0.0, None, ref_mod.MAX_STEPS]
    with pytest.raises(ValueError, match="roi_aabb must be"):  # its values: the op layer (no device sync here)
        mod.ray_march(*a[:5], f32(1, 1, 1, 0, 0), *a[6:])
    with pytest.raises(TypeError, match="binaries must be bool"):
        mod.ray_march(*a[:4], args["binaries"].int(), *a[5:])


def test_not_differentiable():
    args, _ = make_case(9, 1, (4, 4, 4), seed=0)
    args["rays_o"].requires_grad_()
    out = ray_march(**args)
    assert not any(t.requires_grad for t in out)


# --------------------------------------------------------------------------------- max_steps, bounded fill pass


def compiled_march(args, *max_steps):
    return ray_march(**args, **({"max_steps": max_steps[0]} if max_steps else {}), backend="cpu")


@pytest.mark.parametrize("max_steps", [1, 7, 40])
@pytest.mark.parametrize("cone_angle,jitter", [(0.0, False), (0.03, True)])
def test_max_steps_matches_reference_bitwise(max_steps, cone_angle, jitter):
    seed = max_steps * 10 + int(jitter)
    R = 257
    args, g = make_case(R, 2, (16, 8, 12), seed)
    args["cone_angle"] = cone_angle
    args["jitter"] = torch.rand(R, generator=g) if jitter else None
    want = ref_mod.ray_march(**args, max_steps=max_steps)
    got = compiled_march(args, max_steps)
    assert_same(got, want, f"max_steps={max_steps} (seed {seed})")
    check_packing(*got, R)
    assert got[0][:, 1].max() <= max_steps
    # each ray's samples are the first ones of its uncapped march
    full = compiled_march(args)
    for r in torch.nonzero(got[0][:, 1] > 0)[:20, 0].tolist():
        (s, n), (fs, _) = got[0][r].tolist(), full[0][r].tolist()
        assert torch.equal(got[2][s:s + n], full[2][fs:fs + n]) and torch.equal(got[3][s:s + n], full[3][fs:fs + n])


def test_max_steps_counts_empty_steps_and_defaults_to_2_pow_20():
    """The cap counts every step marched, occupied or not; the default is 2^20 in C++ and the reference."""
    grid = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    # four steps outside the box (x in [-2, -1)), then eight inside
    args = dict(rays_o=f32([-2.0, 0.1, 0.2]), rays_d=f32([1.0, 0.0, 0.0]), t_min=f32(0.0), t_max=f32(3.0),
                binaries=grid, roi_aabb=f32(*ROI), step_size=0.25)
    for max_steps, want_t0 in [(4, []), (5, [1.0]), (6, [1.0, 1.25]), (100, [1.0 + 0.25 * k for k in range(8)])]:
        got = compiled_march(args, max_steps)
        assert got[2].tolist() == want_t0 and got[0][0, 1] == len(want_t0), max_steps
        assert_same(got, ref_mod.ray_march(**args, max_steps=max_steps), f"max_steps={max_steps}")
    assert ref_mod.MAX_STEPS == 2**20
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
            compiled_march(args, bad)
        with pytest.raises(ValueError, match="max_steps must be >= 1"):
            torch.ops.pyengine.ray_march(*args.values(), 0.0, None, bad, -1, "cpu")
        with pytest.raises(ValueError, match="max_steps must be >= 1"):
            ref_mod.ray_march(**args, max_steps=bad)


def test_endless_ray_with_tiny_step_stops_at_max_steps():
    """t_max = 1e30 with step 1e-6 would march ~2.5e7 steps (until the step vanishes in float32); every
    step is occupied here, so without the cap that is 400 MB of samples for one ray."""
    grid = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    args = dict(rays_o=f32([0.0, 0.0, 0.0]), rays_d=f32([1.0, 0.0, 0.0]), t_min=f32(0.0), t_max=f32(1e30),
                binaries=grid, roi_aabb=f32(-1e9, -1e9, -1e9, 1e9, 1e9, 1e9), step_size=1e-6)
    info, idx, t0, t1 = compiled_march(args)  # the default cap
    assert info.tolist() == [[0, 2**20]] and idx.numel() == 2**20
    assert torch.equal(t0[1:], t1[:-1]) and (t1 > t0).all()
    want = ref_mod.ray_march(**args, max_steps=300)
    got = compiled_march(args, 300)
    assert_same(got, want, "max_steps=300")
    assert torch.equal(got[2], t0[:300])


def test_fill_pass_writes_exactly_the_counted_slices_when_inputs_change():
    """The fill pass re-marches every ray after the count pass sized the output. Here another thread
    flips the occupancy grid in place while the op runs (torch releases the GIL inside its own ops), so
    the two passes see different grids: the fill pass must still write each ray's counted slice and
    nothing else (no write past it, no slot left unwritten), whatever it finds."""
    import threading

    g = torch.Generator().manual_seed(0)
    R = 64
    o = torch.cat([torch.full((R, 1), -1.0), torch.rand(R, 2, generator=g) * 1.6 - 0.8], 1)
    args = dict(rays_o=o, rays_d=f32([1.0, 0.0, 0.0]).expand(R, 3).contiguous(), t_min=torch.zeros(R),
                t_max=torch.full((R,), 2.0), binaries=torch.zeros(1, 256, 256, 256, dtype=torch.bool),
                roi_aabb=f32(*ROI), step_size=2e-4)  # 1e4 steps per ray; a flip of 16 MiB takes ~ms
    bins = args["binaries"]
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            bins.logical_not_()

    thread = threading.Thread(target=flip)
    thread.start()
    padded = 0
    try:
        for _ in range(25):
            info, idx, t0, t1 = compiled_march(args)
            check_packing(info, idx, t0, t1, R)
            assert ((t0 >= 0) & (t1 <= 2.0)).all()
            padded += int((t0 == t1).sum())
    finally:
        stop.set()
        thread.join()
    print(f"{padded} zero-length samples padded where the fill pass found fewer than counted")


# --------------------------------------------------------------------------------- fixed capacity


@pytest.mark.parametrize("cone_angle,jitter", [(0.0, False), (0.03, True)])
def test_capacity_keeps_the_first_rays_prefixes_bitwise(cone_angle, jitter):
    """With a capacity the outputs have exactly that size: every ray keeps the prefix of its
    data-sized samples that fits after the rays before it, the rest is zero-length padding on the
    last ray, and ``wanted`` is the data-sized total. The kernels match the reference bit for bit."""
    R = 257
    args, g = make_case(R, 2, (16, 8, 12), seed=21 + int(jitter))
    args.update(cone_angle=cone_angle, jitter=torch.rand(R, generator=g) if jitter else None)
    full = ray_march(**args, backend="cpu")
    S = full[1].numel()
    assert S > 1000
    for cap in (0, 1, 17, S // 3, S - 1, S, S + 9):
        got = ray_march(**args, capacity=cap, backend="cpu")
        want = ref_mod.ray_march(**args, capacity=cap)
        assert len(got) == 5 and got[4].shape == () and int(got[4]) == int(want[4]) == S
        assert_same(got, want, f"capacity={cap}")
        info, idx, t0, t1, _ = got
        assert idx.shape == t0.shape == t1.shape == (cap,)
        kept = min(cap, S)
        assert int(info[:, 1].sum()) == kept
        check_packing(info, idx[:kept], t0[:kept], t1[:kept], R)
        # the kept samples are the data-sized ones up to the cut, in order
        assert torch.equal(idx[:kept], full[1][:kept]) and torch.equal(t0[:kept], full[2][:kept])
        assert torch.equal(t1[:kept], full[3][:kept])
        assert (idx[kept:] == R - 1).all() and (t0[kept:] == 0).all() and (t1[kept:] == 0).all()
        assert torch.equal(info[:, 1], torch.minimum(full[0][:, 1], (cap - full[0][:, 0]).clamp(min=0)))


def test_capacity_with_no_rays_or_no_samples():
    args, _ = make_case(10, 2, (4, 4, 4), seed=0)
    none = {k: (v[:0] if isinstance(v, torch.Tensor) and k not in ("binaries", "roi_aabb") else v)
            for k, v in args.items()}
    for backend in ("reference", "cpu"):
        info, idx, t0, t1, wanted = ray_march(**none, capacity=5, backend=backend)
        assert info.shape == (0, 2) and idx.tolist() == [0] * 5 and t0.tolist() == t1.tolist() == [0.0] * 5
        assert int(wanted) == 0
        empty = dict(args, binaries=torch.zeros(1, 4, 4, 4, dtype=torch.bool))
        info, idx, t0, t1, wanted = ray_march(**empty, capacity=3, backend=backend)
        assert (info == 0).all() and idx.tolist() == [9] * 3 and int(wanted) == 0


def test_capacity_is_checked():
    args, _ = make_case(10, 2, (4, 4, 4), seed=0)
    for bad in (-1, -5, 2.5, True, "8"):
        with pytest.raises(ValueError, match="capacity must be None or an int >= 0"):
            ray_march(**args, capacity=bad)
    with pytest.raises(ValueError, match=r"capacity must be -1 \(sized by the data\) or >= 0"):
        torch.ops.pyengine.ray_march(*args.values(), 0.0, None, 8, -2, "cpu")
    with pytest.raises(ValueError, match=r"capacity must be -1 \(sized by the data\) or >= 0"):
        ref_mod.ray_march(**args, capacity=-2)


def test_capacity_gives_static_output_sizes():
    """Traced with fake tensors (as torch.compile does), data-sized outputs have an unbacked size
    (reading it is the op's device sync); with a capacity the size is the capacity."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    args, _ = make_case(64, 2, (8, 8, 8), seed=1)
    for capacity in (-1, 300):
        with FakeTensorMode(shape_env=ShapeEnv()) as mode:
            fake = [mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in args.values()]
            out = torch.ops.pyengine.ray_march(*fake, 0.0, None, 8, capacity, "cpu")
        assert len(out) == 5 and out[4].shape == ()
        assert isinstance(out[1].shape[0], int) == (capacity >= 0), (capacity, out[1].shape)
        if capacity >= 0:
            assert out[1].shape == out[2].shape == out[3].shape == (capacity,)


# --------------------------------------------------------------------------------- the harness


def _case(R, levels, res, cone_angle, jitter, step=0.02, cpu=True, p=0.5, capacity=None):
    def make(g, dtype, device):
        args, g2 = make_case(R, levels, res, seed=int(torch.randint(0, 2**31, (1,), generator=g)), step=step, p=p)
        args["cone_angle"] = cone_angle
        args["jitter"] = torch.rand(R, generator=g2) if jitter else None
        if capacity is not None:
            args["capacity"] = capacity
        return (), {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}

    sparse = "" if p == 0.5 else f"-p{p}"
    cap = "" if capacity is None else f"-cap{capacity}"
    name = f"R{R}-L{levels}-{'x'.join(map(str, res))}-cone{cone_angle}-{'jit' if jitter else 'fixed'}{sparse}{cap}"
    return Case(name, make, dtypes=(torch.float32,), cpu=cpu)


# bit-identical to the reference (atol = rtol = 0) on every case
CASES = ([_case(257, L, r, c, j) for L, r in [(1, (16, 8, 12)), (2, (16, 8, 12)), (2, (5, 7, 3))]
          for c in (0.0, 0.03) for j in (False, True)]
         + [_case(R, 2, (4, 4, 4), 0.0, False) for R in (0, 1, 3)]
         # fixed capacity: cut (about a third of the ~2900 samples), ample, zero, and no rays
         + [_case(257, 2, (16, 8, 12), 0.03, True, capacity=cap) for cap in (1000, 4000, 0)]
         + [_case(0, 2, (4, 4, 4), 0.0, False, capacity=5)]
         # sparse grids with small steps: long runs of empty steps
         + [_case(257, L, r, c, j, step=0.004, p=0.03) for L, r in [(1, (16, 8, 12)), (3, (9, 7, 5))]
            for c, j in ((0.0, False), (0.02, True))]
         + [_case(4099, L, r, c, j, step=0.01, cpu=False) for L, r in [(2, (16, 8, 12)), (4, (32, 32, 32))]
            for c in (0.0, 0.03) for j in (False, True)])


def _base(g, device):
    args, _ = make_case(10, 2, (4, 4, 4), seed=0)
    return (), args


def _kw(**changes):
    return lambda a, k: (a, {**k, **changes})


BAD = [
    Bad("rays-o-2", change("rays_o", lambda t: t[:, :2]), ValueError, r"rays_o must be \[R, 3\]"),
    Bad("rays-d-9", change("rays_d", lambda t: t[:9]), ValueError, r"rays_d must be \[R, 3\] with R = 10"),
    Bad("t-min-2d", change("t_min", lambda t: t[:, None]), ValueError, r"t_min must be \[R\] with R = 10"),
    Bad("t-max-3", change("t_max", lambda t: t[:3]), ValueError, r"t_max must be \[R\] with R = 10"),
    Bad("rays-o-double", change("rays_o", lambda t: t.double()), TypeError, "rays_o must be float32"),
    Bad("t-max-half", change("t_max", lambda t: t.half()), TypeError, "t_max must be float32"),
    Bad("float-binaries", change("binaries", lambda t: t.float()), TypeError, "binaries must be bool"),
    Bad("3d-binaries", change("binaries", lambda t: t[0]), ValueError, r"binaries must be \[L, X, Y, Z\]"),
    Bad("empty-binaries", change("binaries", lambda t: t[:, :0]), ValueError,
        r"binaries must be \[L, X, Y, Z\] with every size >= 1"),
    Bad("roi-2d", change("roi_aabb", lambda t: t[None]), ValueError, r"roi_aabb must be \[6\]"),
    Bad("roi-flat", _kw(roi_aabb=f32(-1, -1, -1, 1, -1, 1)), ValueError, "roi_aabb must have max > min"),
    Bad("step-0", _kw(step_size=0.0), ValueError, "step_size must be > 0"),
    Bad("cone-negative", _kw(cone_angle=-0.1), ValueError, "cone_angle must be >= 0"),
    Bad("jitter-1", _kw(jitter=torch.full((10,), 1.0)), ValueError, r"jitter must lie in \[0, 1\)"),
    Bad("jitter-3", _kw(jitter=torch.zeros(3)), ValueError, r"jitter must be \[R\] with R = 10"),
    Bad("jitter-double", _kw(jitter=torch.zeros(10, dtype=torch.float64)), TypeError, "jitter must be float32"),
    Bad("meta-binaries", change("binaries", lambda t: t.to("meta")), ValueError,
        "binaries is on meta but rays_o is on cpu"),
    Bad("list-roi", _kw(roi_aabb=ROI), TypeError, "roi_aabb must be a torch.Tensor"),
    Bad("max-steps-0", _kw(max_steps=0), ValueError, "max_steps must be an int >= 1"),
    Bad("cuda-on-cpu", _kw(backend="cuda"), pyengine.BackendError, "'cuda'.*CUDA tensors"),
]

SUITE = OpSuite(op_mod.OP, ray_march, CASES, tol={torch.float32: (0, 0)}, base=_base, bad=BAD,
                compile_kwargs={"validate": False})
globals().update(SUITE.tests())
