"""ray_march: every backend bit-for-bit against the reference, hand-made cases, nerfacc's level rule."""

import numpy as np
import pytest
import torch

import pyengine
from pyengine.ops.ray_march import ray_march
from pyengine.reference import ray_aabb_intersect as ref_aabb
from pyengine.reference import ray_march as ref_mod

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


# --------------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("levels,res", [(1, (16, 8, 12)), (2, (16, 8, 12)), (2, (5, 7, 3))])
@pytest.mark.parametrize("cone_angle", [0.0, 0.03])
@pytest.mark.parametrize("jitter", [False, True])
def test_matches_reference_bitwise(backend, levels, res, cone_angle, jitter):
    seed = torch.seed() % 2**31
    R = 257
    args, g = make_case(R, levels, res, seed)
    args["cone_angle"] = cone_angle
    args["jitter"] = torch.rand(R, generator=g) if jitter else None
    want = ref_mod.ray_march(**args)
    got = ray_march(**args, backend=backend)
    print(f"seed {seed}: {want[1].numel()} samples")
    assert_same(got, want, f"{backend} (seed {seed})")
    check_packing(*got, R)
    assert got[1].numel() > 20  # not vacuous
    assert (got[0][:4, 1] == 0).all()  # empty, reversed and NaN intervals


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("R", [0, 1, 3])
def test_tiny_and_empty_batches(backend, R):
    args, _ = make_case(R, 2, (4, 4, 4), seed=R)
    out = ray_march(**args, backend=backend)
    check_packing(*out, R)
    assert_same(out, ref_mod.ray_march(**args), backend)


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


# --------------------------------------------------------------------------------- checks & registration


def test_bad_inputs_raise_clear_errors():
    args, _ = make_case(10, 2, (4, 4, 4), seed=0)

    def bad(exc, match, **kw):
        with pytest.raises(exc, match=match):
            ray_march(**{**args, **kw})

    bad(ValueError, r"rays_o must be \[R, 3\]", rays_o=args["rays_o"][:, :2])
    bad(ValueError, r"rays_d must be \[10, 3\]", rays_d=args["rays_d"][:9])
    bad(ValueError, r"t_min must be \[10\]", t_min=args["t_min"][:, None])
    bad(ValueError, r"t_max must be \[10\]", t_max=args["t_max"][:3])
    bad(TypeError, "rays_o must be torch.float32", rays_o=args["rays_o"].double())
    bad(TypeError, "t_max must be torch.float32", t_max=args["t_max"].half())
    bad(TypeError, "binaries must be torch.bool", binaries=args["binaries"].float())
    bad(ValueError, r"binaries must be \[L, X, Y, Z\]", binaries=args["binaries"][0])
    bad(ValueError, r"binaries must be \[L, X, Y, Z\] with every size >= 1", binaries=args["binaries"][:, :0])
    bad(ValueError, r"roi_aabb must be \[6\]", roi_aabb=args["roi_aabb"][None])
    bad(ValueError, "roi_aabb must have max > min", roi_aabb=f32(-1, -1, -1, 1, -1, 1))
    bad(ValueError, "step_size must be > 0", step_size=0.0)
    bad(ValueError, "cone_angle must be >= 0", cone_angle=-0.1)
    bad(ValueError, r"jitter must lie in \[0, 1\)", jitter=torch.full((10,), 1.0))
    bad(ValueError, r"jitter must be \[10\]", jitter=torch.zeros(3))
    bad(TypeError, "jitter must be torch.float32", jitter=torch.zeros(10, dtype=torch.float64))
    bad(ValueError, "rays_o is on cpu but binaries on meta", binaries=args["binaries"].to("meta"))
    bad(TypeError, "roi_aabb must be a torch.Tensor", roi_aabb=ROI)
    bad(pyengine.BackendError, "'cuda'.*CUDA tensors", backend="cuda")


def test_compiled_checks_guard_direct_calls():
    from pyengine import _ext

    mod = _ext.load()
    args, _ = make_case(4, 1, (4, 4, 4), seed=0)
    a = list(args.values()) + [0.0, None]
    with pytest.raises(ValueError, match="roi_aabb must be"):  # its values: the op layer (no device sync here)
        mod.ray_march(*a[:5], f32(1, 1, 1, 0, 0), *a[6:])
    with pytest.raises(TypeError, match="binaries must be bool"):
        mod.ray_march(*a[:4], args["binaries"].int(), *a[5:])


def test_not_differentiable_opcheck_and_compile():
    args, _ = make_case(9, 1, (4, 4, 4), seed=0)
    args["rays_o"].requires_grad_()
    out = ray_march(**args)
    assert not any(t.requires_grad for t in out)
    op_args = (args["rays_o"].detach(), args["rays_d"], args["t_min"], args["t_max"], args["binaries"],
               args["roi_aabb"], 0.02, 0.0, None, "cpu")
    torch.library.opcheck(torch.ops.pyengine.ray_march.default, op_args, test_utils=("test_schema",))

    @torch.compile(backend="aot_eager")
    def f(*a):
        info, _, t0, t1 = torch.ops.pyengine.ray_march(*a)
        return info[:, 1].sum(), (t1 - t0).sum()

    n, total = f(*op_args)
    want = ref_mod.ray_march(*op_args[:-1])
    assert n.item() == want[1].numel() and total.item() == pytest.approx((want[3] - want[2]).sum().item())


# --------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("levels,res", [(1, (16, 8, 12)), (2, (16, 8, 12)), (4, (32, 32, 32))])
@pytest.mark.parametrize("cone_angle", [0.0, 0.03])
@pytest.mark.parametrize("jitter", [False, True])
def test_cuda_matches_reference(levels, res, cone_angle, jitter):
    R = 4099
    args, g = make_case(R, levels, res, seed=7, step=0.01)
    args["cone_angle"] = cone_angle
    args["jitter"] = torch.rand(R, generator=g) if jitter else None
    want = ref_mod.ray_march(**args)
    cuda_args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    got = [t.cpu() for t in ray_march(**cuda_args, backend="cuda")]
    print(f"{want[1].numel()} samples")
    assert_same(got, want, "cuda")
    # the reference on CUDA tensors (the fallback path) gives the same bits too
    assert_same([t.cpu() for t in ref_mod.ray_march(**cuda_args)], want, "reference on cuda")


# --------------------------------------------------------------------------------- max_steps, bounded fill pass
# Called through the compiled module directly: the op layer passes max_steps once it is updated.


def compiled_march(args, *max_steps):
    from pyengine import _ext

    return _ext.load().ray_march(args["rays_o"], args["rays_d"], args["t_min"], args["t_max"], args["binaries"],
                                 args["roi_aabb"], float(args["step_size"]), float(args.get("cone_angle", 0.0)),
                                 args.get("jitter"), *max_steps)


@pytest.mark.parametrize("max_steps", [1, 7, 40])
@pytest.mark.parametrize("cone_angle,jitter", [(0.0, False), (0.03, True)])
def test_max_steps_matches_reference_bitwise(max_steps, cone_angle, jitter):
    seed = torch.seed() % 2**31
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
        with pytest.raises(ValueError, match="max_steps must be >= 1"):
            compiled_march(args, bad)
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
