"""The CUDA kernels, run without a GPU: csrc/cuda/*.cu compiled for the CPU by the emulator in
this folder (threads one after another; block barriers and shared memory through coroutines),
loaded in place of pyengine._C, then the op test files run against them through the "cpu"
backend. Catches indexing, launch-configuration, barrier and host-wrapper bugs in code that
otherwise only gets compiled here; it cannot see races."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.cuda_emu import build

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OP_TESTS = ["tests/ops/test_hash_encode.py", "tests/ops/test_composite.py", "tests/ops/test_ray_march.py",
            "tests/ops/test_ray_aabb_intersect.py", "tests/ops/test_avg_voxelize.py",
            "tests/ops/test_trilinear_devoxelize.py", "tests/ops/test_furthest_point_sample.py",
            "tests/ops/test_ball_query.py", "tests/ops/test_gather.py", "tests/ops/test_grouping.py",
            "tests/ops/test_nearest_neighbor_interpolate.py", "tests/ops/test_rasterize.py",
            "tests/ops/test_interpolate.py", "tests/ops/test_antialias.py", "tests/ops/test_texture.py"]


@pytest.fixture(scope="module")
def emulated_build():
    build_dir = build.default_build_dir()
    res = subprocess.run([sys.executable, os.path.join(HERE, "build.py"), build_dir], capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return build_dir


def _env(build_dir):
    return {**os.environ, "PYENGINE_EXT": "pyengine_cuda_emu",
            "PYTHONPATH": os.pathsep.join(filter(None, [build_dir, ROOT, os.environ.get("PYTHONPATH")]))}


# Loads the emulated module as pyengine's extension and opens its support symbols (support.cpp).
_PRELUDE = """
import ctypes, json, torch
from pyengine import _ext
mod = _ext.load()
assert mod is not None and mod.__name__ == "pyengine_cuda_emu", _ext.error()
lib = ctypes.CDLL(mod.__file__)
lib.pe_emu_unit_file.restype = lib.pe_emu_counter_name.restype = ctypes.c_char_p
lib.pe_emu_counter.restype = ctypes.c_uint64
for f in ("pe_emu_rn_mul_add", "pe_emu_rn_div", "pe_emu_rn_rcp"):
    getattr(lib, f).restype = ctypes.c_float
def counters():
    return {lib.pe_emu_counter_name(i).decode(): lib.pe_emu_counter(i) for i in range(lib.pe_emu_n_counters())}
"""


def _run_emulated(build_dir, code):
    """Runs PRELUDE + code with the emulated build; returns what it printed, parsed as JSON."""
    res = subprocess.run([sys.executable, "-c", _PRELUDE + code], capture_output=True, text=True,
                         env=_env(build_dir), cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_cuda_units_compile_as_a_device_pass_and_host_units_do_not(emulated_build):
    units = _run_emulated(emulated_build, "print(json.dumps([(lib.pe_emu_unit_file(i).decode(), "
                                          "lib.pe_emu_unit_arch(i)) for i in range(lib.pe_emu_n_units())]))")
    arch = {os.path.basename(f): a for f, a in units}
    assert build.ARCH >= 800, f"PYENGINE_EMU_ARCH={build.ARCH}: the .cu units must be built as a device pass"
    for cu in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        name = "cuda_" + os.path.basename(cu)[:-3] + ".cpp"
        assert arch.get(name) == build.ARCH, f"{cu}: compiled with __CUDA_ARCH__ {arch.get(name)} (units: {arch})"
    assert arch.get("emu_support.cpp") == build.ARCH, arch
    host = {n: a for n, a in arch.items() if not n.startswith(("cuda_", "emu_"))}
    assert host and all(a == 0 for a in host.values()), f"host units must not see __CUDA_ARCH__: {host}"


def test_ops_run_the_device_branches(emulated_build):
    """Each op call goes through the device intrinsics: the _rn arithmetic of ray_march.h and the
    sm_90 vector atomics of hash_encode.cu, not the host branches."""
    got = _run_emulated(emulated_build, """
from pyengine.ops.hash_encode import hash_encode
from pyengine.ops.ray_aabb_intersect import ray_aabb_intersect
from pyengine.ops.ray_march import ray_march
from pyengine.reference.hash_encode import HashGridConfig
out = {}
def step(name, fn):
    lib.pe_emu_reset_counters()
    fn()
    out[name] = {k: v for k, v in counters().items() if v}
g = torch.Generator().manual_seed(0)
def aabb(dtype):
    o = torch.rand(37, 3, generator=g, dtype=dtype) * 4 - 2
    d = torch.randn(37, 3, generator=g, dtype=dtype)
    ray_aabb_intersect(o, d, torch.tensor([[-1.0, -1, -1, 1, 1, 1]], dtype=dtype), backend="cpu")
step("aabb_f32", lambda: aabb(torch.float32))
step("aabb_f64", lambda: aabb(torch.float64))
def march():
    o = torch.rand(16, 3, generator=g) * 0.2 + 0.4
    d = torch.nn.functional.normalize(torch.randn(16, 3, generator=g), dim=-1)
    ray_march(o, d, torch.zeros(16), torch.ones(16), torch.ones(2, 4, 4, 4, dtype=torch.bool),
              torch.tensor([0.0, 0, 0, 1, 1, 1]), 0.05, backend="cpu")
step("march", march)
def encode(F, dtype):
    cfg = HashGridConfig(n_input_dims=3, n_levels=3, n_features_per_level=F, log2_hashmap_size=8,
                         base_resolution=3, per_level_scale=2.0)
    x = torch.rand(19, 3, generator=g, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    p = (torch.rand(cfg.n_params(), generator=g, dtype=torch.float64) - 0.5).to(dtype).requires_grad_()
    hash_encode(x, p, cfg, backend="cpu").sum().backward()
for F in (1, 2, 4, 8):
    step(f"encode_f32_F{F}", lambda: encode(F, torch.float32))
for F in (2, 4, 8):
    step(f"encode_f16_F{F}", lambda: encode(F, torch.float16))
step("encode_f64_F2", lambda: encode(2, torch.float64))
print(json.dumps(out))
""")
    for name, used in (("aabb_f32", ("__fmul_rn", "__frcp_rn")), ("march", ("__fmul_rn", "__fadd_rn", "__fdiv_rn"))):
        assert all(got[name].get(k, 0) > 0 for k in used), (name, got[name])
    assert got["aabb_f64"].get("__dmul_rn", 0) > 0 and got["aabb_f64"].get("__drcp_rn", 0) > 0, got["aabb_f64"]
    assert "__fmul_rn" not in got["aabb_f64"], got["aabb_f64"]
    # float tables on sm_90: F = 2 as float2, F = 4 and 8 as float4 atomics; F = 1 and dL/dx as float atomics
    vector = {"atomicAdd(float2)", "atomicAdd(float4)"}
    if build.ARCH >= 900:
        assert got["encode_f32_F2"].get("atomicAdd(float2)", 0) > 0, got["encode_f32_F2"]
        for F in (4, 8):
            assert got[f"encode_f32_F{F}"].get("atomicAdd(float4)", 0) > 0, got[f"encode_f32_F{F}"]
            assert "atomicAdd(float2)" not in got[f"encode_f32_F{F}"], got[f"encode_f32_F{F}"]
    else:
        assert not any(vector & got[f"encode_f32_F{F}"].keys() for F in (2, 4, 8)), got
    assert got["encode_f32_F1"].get("atomicAdd(float)", 0) > 0, got["encode_f32_F1"]
    assert not vector & got["encode_f32_F1"].keys(), got["encode_f32_F1"]
    assert got["encode_f64_F2"].get("atomicAdd(double)", 0) > 0, got["encode_f64_F2"]
    # every hash_encode kernel stages its rows in shared memory; table rows of 2+ features of 16 or
    # 32 bits are read with vector loads (float64 rows and single features are not)
    for name, used in got.items():
        if name.startswith("encode"):
            assert used.get("__syncthreads", 0) > 0, (name, used)
            vectors = name.startswith(("encode_f32", "encode_f16")) and not name.endswith("F1")
            assert (used.get("vector load", 0) > 0) == vectors, (name, used)


def test_hash_encode_tiles_and_vector_loads(emulated_build):
    """The tiled hash_encode kernels at the largest tile (32 levels x 8 features, float32 and
    float64) and on a table whose rows are not aligned for vector loads (read value by value, the
    same numbers): forward, backward and double backward against the reference."""
    got = _run_emulated(emulated_build, """
from pyengine.ops.hash_encode import hash_encode
from pyengine.reference.hash_encode import HashGridConfig
out = {}
def run(name, cfg, x, p, backend, offset=0):
    x = x.clone().requires_grad_()
    whole = torch.cat([p.new_zeros(offset), p]).requires_grad_()
    p = whole[offset:]  # offset 1: 4 bytes past an aligned start, so no float2 loads
    lib.pe_emu_reset_counters()
    y = hash_encode(x, p, cfg, backend=backend)
    go = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    dx, dp = torch.autograd.grad(y, (x, p), go, create_graph=True)
    ddx, ddp = torch.autograd.grad((dx * dx.detach().sign()).sum() + dp.square().sum(), (x, p))
    out.setdefault(name, {})[backend] = {"t": [t.detach().double().flatten().tolist() for t in (y, dx, dp, ddx, ddp)],
                                         "counters": counters()}
g = torch.Generator().manual_seed(3)
for dtype in (torch.float32, torch.float64):
    cfg = HashGridConfig(n_input_dims=3, n_levels=32, n_features_per_level=8, log2_hashmap_size=7,
                         base_resolution=2, per_level_scale=1.3)
    x = torch.rand(37, 3, generator=g, dtype=torch.float64).to(dtype)
    p = (torch.rand(cfg.n_params(), generator=g, dtype=torch.float64) - 0.5).to(dtype)
    for backend in ("cpu", "reference"):
        run(f"L32F8-{dtype}", cfg, x, p, backend)
cfg = HashGridConfig(n_input_dims=3, n_levels=4, n_features_per_level=2, log2_hashmap_size=8,
                     base_resolution=3, per_level_scale=2.0)
x = torch.rand(45, 3, generator=g)
p = torch.rand(cfg.n_params(), generator=g) - 0.5
run("misaligned", cfg, x, p, "cpu", offset=1)
run("aligned", cfg, x, p, "cpu")
print(json.dumps(out))
""")
    for dtype, tol in (("torch.float32", 2e-4), ("torch.float64", 1e-10)):
        case = got[f"L32F8-{dtype}"]
        assert case["cpu"]["counters"]["__syncthreads"] > 0, case["cpu"]["counters"]
        for name, a, b in zip(("y", "dx", "dp", "ddx", "ddp"), case["cpu"]["t"], case["reference"]["t"]):
            scale = max(1.0, max(abs(v) for v in b))
            assert max(abs(u - v) for u, v in zip(a, b)) <= tol * scale, (dtype, name)
    # the misaligned table is read value by value (the double backward's extra passes read fresh,
    # aligned tensors with vector loads), with no misaligned-address fault and the same numbers
    assert got["misaligned"]["cpu"]["counters"]["vector load"] < got["aligned"]["cpu"]["counters"]["vector load"]
    assert got["misaligned"]["cpu"]["t"] == got["aligned"]["cpu"]["t"]


def test_emulated_block_barriers(emulated_build):
    """launch_coop: a barrier orders every thread's shared-memory write before any read after it,
    for 1-D and 2-D blocks and a short last block; a barrier that one thread returns before, and
    more dynamic shared memory than a launch may ask for, fail the launch as on a GPU."""
    got = _run_emulated(emulated_build, """
import numpy as np
out = {}
for name, n, bx, by, early, smem in (("1d", 96, 32, 1, 0, 128), ("2d-short", 100, 8, 4, 0, 128),
                                     ("early-exit", 64, 32, 1, 1, 128), ("too-much-smem", 64, 32, 1, 0, 49153)):
    a = np.arange(n, dtype=np.int32) * 3 + 1
    b = np.full(n, -1, dtype=np.int32)
    err = lib.pe_emu_block_reverse(a.ctypes.data_as(ctypes.c_void_p), b.ctypes.data_as(ctypes.c_void_p), n, bx, by,
                                   early, ctypes.c_long(smem))
    out[name] = {"err": err, "b": b.tolist()}
print(json.dumps(out))
""")
    import numpy as np

    for name, n, nt in (("1d", 96, 32), ("2d-short", 100, 32)):
        a = np.arange(n) * 3 + 1
        i = np.arange(n)
        j = (i // nt) * nt + nt - 1 - i % nt  # the element this thread's mirror wrote
        want = np.where(j < n, a[np.minimum(j, n - 1)], -7)
        assert got[name]["err"] == 0 and got[name]["b"] == want.tolist(), name
    assert got["early-exit"]["err"] == 719, got["early-exit"]
    assert got["too-much-smem"]["err"] == 1 and got["too-much-smem"]["b"] == [-1] * 64, got["too-much-smem"]


def test_voxel_reductions_use_atomics_only_when_not_deterministic(emulated_build):
    """avg_voxelize's sums and devoxelize's grid gradient: float atomics by default, none with
    deterministic=True (the sorted segments), the same values either way."""
    got = _run_emulated(emulated_build, """
from pyengine.ops.voxelize import avg_voxelize, trilinear_devoxelize
g = torch.Generator().manual_seed(0)
f = torch.randn(2, 3, 40, generator=g)
c = torch.randint(0, 3, (2, 3, 40), generator=g)
x = torch.rand(2, 3, 40, generator=g) * 3 - 0.5
out = {}
for det in (False, True):
    lib.pe_emu_reset_counters()
    grid = avg_voxelize(f, c, 3, deterministic=det, backend="cpu").requires_grad_()
    y = trilinear_devoxelize(grid, x, 3, deterministic=det, backend="cpu")
    (gg,) = torch.autograd.grad(y, grid, torch.ones_like(y))
    out[str(det)] = {"counters": counters(), "grid": grid.flatten().tolist(), "gg": gg.flatten().tolist()}
print(json.dumps(out))
""")
    atomic, sorted_ = got["False"], got["True"]
    assert atomic["counters"]["atomicAdd(float)"] == 2 * 3 * 40 * 9, atomic["counters"]  # sums + 8 corners
    assert sorted_["counters"]["atomicAdd(float)"] == 0, sorted_["counters"]
    assert sorted_["counters"]["atomicAdd(int)"] == 2 * 40  # the counts, exact in any order
    for k in ("grid", "gg"):
        assert max(abs(a - b) for a, b in zip(atomic[k], sorted_[k])) < 1e-5


def test_point_op_reductions_use_atomics_only_when_not_deterministic(emulated_build):
    """gather / grouping / nearest_neighbor_interpolate backward: float atomics by default, none
    with deterministic=True (the sorted segments), the same values either way; the sampling and
    the ball query use no float atomics at all."""
    got = _run_emulated(emulated_build, """
from pyengine.ops.ball_query import ball_query
from pyengine.ops.furthest_point_sample import furthest_point_sample
from pyengine.ops.grouping import gather, grouping
from pyengine.ops.nearest_neighbor_interpolate import nearest_neighbor_interpolate
g = torch.Generator().manual_seed(0)
p = torch.rand(2, 3, 40, generator=g)
f = torch.randn(2, 3, 40, generator=g)
lib.pe_emu_reset_counters()
idx = furthest_point_sample(p, 9, backend="cpu")
nb = ball_query(gather(p, idx), p, 0.4, 5, backend="cpu")
out = {"sampling": counters()}
for det in (False, True):
    lib.pe_emu_reset_counters()
    x = f.clone().requires_grad_()
    c = gather(x, idx, deterministic=det, backend="cpu")
    y = grouping(x, nb, deterministic=det, backend="cpu")
    z = nearest_neighbor_interpolate(p, gather(p, idx), c, deterministic=det, backend="cpu")
    (gx,) = torch.autograd.grad(z.sum() + y.square().sum(), x)
    out[str(det)] = {"counters": counters(), "gx": gx.flatten().tolist()}
print(json.dumps(out))
""")
    assert got["sampling"]["atomicAdd(float)"] == 0, got["sampling"]
    atomic, sorted_ = got["False"], got["True"]
    # grouping 2 * 3 * 9 * 5, interpolate 2 * 3 * 40 * 3, gather 2 * 3 * 9
    assert atomic["counters"]["atomicAdd(float)"] == 270 + 720 + 54, atomic["counters"]
    assert sorted_["counters"]["atomicAdd(float)"] == 0, sorted_["counters"]
    assert max(abs(a - b) for a, b in zip(atomic["gx"], sorted_["gx"])) < 1e-5


def test_rasterize_takes_both_depth_passes_with_the_device_arithmetic(emulated_build):
    """A small triangle is tested by one thread (depth_small), a large one and one crossing w = 0 go
    through the block list (one atomicAdd(int) each, then depth_large); products and quotients are
    the _rn intrinsics; the result equals the reference bit for bit."""
    got = _run_emulated(emulated_build, """
from pyengine.ops.rasterize import rasterize
big = torch.tensor([[-0.9, -0.9, 0.2, 1.0], [0.9, -0.8, 0.1, 1.0], [0.0, 0.9, 0.3, 1.0]])
small = torch.tensor([[0.60, -0.60, -0.99, 1.0], [0.66, -0.59, -0.99, 1.0], [0.62, -0.53, -0.99, 1.0]])
crossing = torch.tensor([[-0.61, 0.3, -0.95, 1.0], [0.43, -0.17, -0.9, 1.1], [0.13, 0.52, 0.3, -0.4]])
out = {}
for dtype in (torch.float32, torch.float64):
    pos = torch.cat([big, small, crossing])[None].to(dtype)
    tri = torch.arange(9).reshape(3, 3)
    lib.pe_emu_reset_counters()
    r = rasterize(pos, tri, (48, 40), backend="cpu")
    out[str(dtype)] = {"counters": counters(), "ids": sorted(set(r[..., 3].flatten().tolist())),
                       "equal": bool(torch.equal(r, rasterize(pos, tri, (48, 40), backend="reference")))}
print(json.dumps(out))
""")
    for dtype, res in got.items():
        assert res["equal"], dtype
        assert res["ids"] == [0.0, 1.0, 2.0, 3.0], (dtype, res["ids"])
        assert res["counters"]["atomicAdd(int)"] == 2, (dtype, res["counters"])
    assert got["torch.float32"]["counters"]["__fmul_rn"] > 0 and got["torch.float32"]["counters"]["__fdiv_rn"] > 0
    assert got["torch.float64"]["counters"]["__dmul_rn"] > 0 and got["torch.float64"]["counters"]["__fmul_rn"] == 0


def test_rn_intrinsics_round_like_separate_ieee_operations(emulated_build):
    """rn_add(rn_mul(a, b), c) rounds twice (the build would contract it into one FMA otherwise,
    on a CPU with FMA); rn_div and rn_rcp are correctly rounded."""
    got = _run_emulated(emulated_build, """
g = torch.Generator().manual_seed(1)
a, b, c = (torch.rand(3, 4000, generator=g, dtype=torch.float64) * 2 - 1).float()
lib.pe_emu_reset_counters()
out = {"mul_add": [lib.pe_emu_rn_mul_add(*map(ctypes.c_float, v)) for v in zip(a.tolist(), b.tolist(), c.tolist())],
       "div": [lib.pe_emu_rn_div(ctypes.c_float(x), ctypes.c_float(y)) for x, y in zip(a.tolist(), b.tolist())],
       "rcp": [lib.pe_emu_rn_rcp(ctypes.c_float(x)) for x in a.tolist()], "counters": counters()}
print(json.dumps(out))
""")
    import torch

    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.rand(3, 4000, generator=g, dtype=torch.float64) * 2 - 1).float()
    two_roundings = ((a * b) + c).tolist()
    fused = (a.double() * b.double() + c.double()).float()
    assert (fused != torch.tensor(two_roundings)).any(), "no case tells a fused multiply-add apart"
    bad = [i for i, (x, y) in enumerate(zip(got["mul_add"], two_roundings)) if x != y]
    assert not bad, f"{len(bad)} of 4000 rn_add(rn_mul(a, b), c) differ from two float32 roundings, e.g. {bad[:5]}"
    assert got["div"] == (a / b).tolist() and got["rcp"] == (1 / a).tolist()
    n = got["counters"]
    assert n["__fmul_rn"] == n["__fadd_rn"] == n["__fdiv_rn"] == n["__frcp_rn"] == 4000, n


@pytest.mark.skipif(build.ARCH < 900, reason="vector atomics are sm_90+")
def test_misaligned_vector_atomic_faults(emulated_build):
    assert _run_emulated(emulated_build, "print(lib.pe_emu_misaligned_float2_atomic())") == 716


def test_emulated_warp_shuffles(emulated_build):
    """__shfl_up/xor/down/_sync and __shfl_sync within segments of every width, in blocks of one and
    of several warps, as CUDA defines them; a lane that returns before a shuffle naming it fails the
    launch (on a GPU: undefined, a hang or garbage)."""
    got = _run_emulated(emulated_build, """
import numpy as np
out = {}
for width in (1, 2, 4, 8, 16, 32):
    for block, early in ((32, 0), (96, 0), (64, 1)):
        n = 150
        a = (np.arange(n, dtype=np.int32) * 7) % 11 - 5
        b = np.full(4 * n, -99, dtype=np.int32)
        err = lib.pe_emu_shuffles(a.ctypes.data_as(ctypes.c_void_p), b.ctypes.data_as(ctypes.c_void_p), n, block,
                                  width, early)
        out[f"{width}-{block}-{early}"] = {"err": err, "b": b.tolist()}
print(json.dumps(out))
""")
    import numpy as np

    n = 150
    a = (np.arange(n) * 7) % 11 - 5
    for width in (1, 2, 4, 8, 16, 32):
        for block in (32, 96):
            padded = np.concatenate([a, np.zeros(-n % block, dtype=a.dtype)])  # lanes past n hold 0
            seg = padded.reshape(-1, width)
            incl, total = np.cumsum(seg, 1), np.repeat(seg.sum(1, keepdims=True), width, 1)
            right = np.concatenate([seg[:, 1:], seg[:, -1:]], 1)
            first = np.repeat(seg[:, :1], width, 1)
            want = np.stack([m.reshape(-1)[:n] for m in (incl, total, right, first)], 1).reshape(-1)
            res = got[f"{width}-{block}-0"]
            assert res["err"] == 0 and res["b"] == want.tolist(), (width, block)
        assert got[f"{width}-64-1"]["err"] == 719, (width, got[f"{width}-64-1"]["err"])


def test_op_suites_pass_on_the_emulated_cuda_kernels(emulated_build):
    env = _env(emulated_build)
    probe = subprocess.run([sys.executable, "-c", "from pyengine import _ext; m = _ext.load(); "
                            "print(m.__name__, m.built_with_cuda())"], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=300)
    assert probe.stdout.split() == ["pyengine_cuda_emu", "True"], probe.stdout + probe.stderr
    # -v: each test's name is printed before it runs, so a crash's output ends with the test's name
    res = subprocess.run([sys.executable, "-m", "pytest", "-v", "-x", "-p", "no:cacheprovider", "-k", "not triton",
                          *OP_TESTS], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if res.returncode != 0:
        out = "\n".join(ln for ln in res.stdout.splitlines() if not ln.endswith(("PASSED", "SKIPPED"))
                         and " PASSED " not in ln and " SKIPPED " not in ln)
        fatal = res.stderr.find("Fatal Python error")  # a crash: faulthandler's stack, innermost first
        err = res.stderr[fatal:fatal + 3000] if fatal >= 0 else res.stderr[-2000:]
        pytest.fail(f"exit code {res.returncode}\n{out[-4000:]}\n{err}")
    assert " passed" in res.stdout and "failed" not in res.stdout
