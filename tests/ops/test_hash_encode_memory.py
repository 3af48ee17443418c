"""The CPU hash-grid backward's memory does not grow with the OpenMP thread count.

Each measurement runs in a fresh interpreter with OMP_NUM_THREADS and torch.set_num_threads (the
extension shares torch's OpenMP runtime, which torch caps to the cores it sees unless told), warms
up with a forward (which starts the thread team), then reads the peak RSS (VmHWM) before and after
one backward with a 2^19-entry table on a small batch. A per-thread scratch copy
of a level's gradient (2^19 x 2 floats = 4 MiB) would cost 8 MiB at 2 threads and 256 MiB at 64.
"""

import json
import os
import subprocess
import sys

import pytest

from pyengine import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import json, os, torch
from pyengine import _ext
from pyengine.reference.hash_encode import HashGridConfig

def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

cfg = HashGridConfig(n_input_dims=3, n_levels=16, n_features_per_level=2, log2_hashmap_size=19,
                     base_resolution=16.0, per_level_scale=1.447269)
lay = cfg.layout()
args = (list(lay.offsets), list(lay.scales), list(lay.resolutions),
        sum(1 << i for i, h in enumerate(lay.hashed) if h), cfg.n_features_per_level, 0)
# torch caps its OpenMP team to the cores it sees; the extension shares that runtime
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
mod = _ext.load()
g = torch.Generator().manual_seed(0)
x = torch.rand(4096, 3, generator=g)
params = torch.rand(cfg.n_params(), generator=g) * 1e-2
out = mod.hash_encode_fwd(x, params, *args)  # starts the OpenMP team
grad_out = torch.randn(out.shape, generator=g)
before = hwm_kib()
grad_params, _ = mod.hash_encode_bwd(grad_out, x, params, *args, True, False)
after = hwm_kib()
w = torch.rand(grad_params.shape, generator=torch.Generator().manual_seed(1))
print(json.dumps({"growth_mib": (after - before) / 1024, "grad_mib": grad_params.numel() * 4 / 2**20,
                  "checksum": float((grad_params.double() * w).sum())}))
"""

# More threads than levels: the table-gradient tasks share levels and add atomically.
GRADCHECK = r"""
import os, torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from pyengine.ops.hash_encode import hash_encode
from pyengine.reference.hash_encode import HashGridConfig
cfg = HashGridConfig(n_input_dims=3, n_levels=2, n_features_per_level=2, log2_hashmap_size=5,
                     base_resolution=3.0, per_level_scale=1.9)
g = torch.Generator().manual_seed(0)
x = torch.rand(40, 3, generator=g, dtype=torch.float64).requires_grad_()
p = (torch.rand(cfg.n_params(), generator=g, dtype=torch.float64) - 0.5).requires_grad_()
f = lambda x, p: hash_encode(x, p, cfg, backend="cpu")
assert torch.autograd.gradcheck(f, (x, p), eps=1e-6, atol=1e-6)
assert torch.autograd.gradgradcheck(f, (x, p), eps=1e-6, atol=1e-6)
print("ok")
"""


def run(script: str, threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def peak_growth_mib(threads: int) -> dict:
    return json.loads(run(SCRIPT, threads))


@pytest.mark.skipif(_ext.load() is None, reason="pyengine._C is not built")
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc/self/status (Linux)")
def test_cpu_backward_memory_does_not_grow_with_threads():
    few, many = peak_growth_mib(2), peak_growth_mib(64)
    print(f"peak RSS growth of one backward: {few['growth_mib']:.1f} MiB at 2 threads, "
          f"{many['growth_mib']:.1f} MiB at 64 threads (the gradient itself: {few['grad_mib']:.1f} MiB)")
    assert many["growth_mib"] - few["growth_mib"] < 32, (few, many)
    assert many["checksum"] == pytest.approx(few["checksum"], rel=1e-5)  # same gradient, other summation order


@pytest.mark.skipif(_ext.load() is None, reason="pyengine._C is not built")
def test_cpu_backward_with_more_threads_than_levels_passes_gradcheck():
    assert run(GRADCHECK, 8) == "ok"
