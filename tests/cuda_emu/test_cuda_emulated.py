"""The CUDA kernels, run without a GPU: csrc/cuda/*.cu compiled for the CPU by the emulator in
this folder (threads one after another), loaded in place of pyengine._C, then the op test files
run against them through the "cpu" backend. Catches indexing, launch-configuration and
host-wrapper bugs in code that otherwise only gets compiled here; it cannot see races."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OP_TESTS = ["tests/ops/test_hash_encode.py", "tests/ops/test_composite.py", "tests/ops/test_ray_march.py",
            "tests/ops/test_ray_aabb_intersect.py"]


@pytest.fixture(scope="module")
def emulated_build():
    build_dir = os.path.join(ROOT, "build", "cuda_emu")
    res = subprocess.run([sys.executable, os.path.join(HERE, "build.py"), build_dir], capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return build_dir


def test_op_suites_pass_on_the_emulated_cuda_kernels(emulated_build):
    env = {**os.environ, "PYENGINE_EXT": "pyengine_cuda_emu",
           "PYTHONPATH": os.pathsep.join(filter(None, [emulated_build, ROOT, os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "from pyengine import _ext; m = _ext.load(); "
                            "print(m.__name__, m.built_with_cuda())"], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=300)
    assert probe.stdout.split() == ["pyengine_cuda_emu", "True"], probe.stdout + probe.stderr
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not triton",
                          *OP_TESTS], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout
