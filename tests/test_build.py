"""The build's configuration: setup.py and .ci/run compile the CUDA sources with the same nvcc
flags (csrc/nvcc_flags.txt), none of them fast-math, and setup.py keeps its object files."""

import glob
import os
import re
import runpy
import shlex
import subprocess

import pytest
import setuptools
import torch.utils.cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS_FILE = os.path.join(ROOT, "csrc", "nvcc_flags.txt")

# Flags that let a compiler round differently from IEEE operations: nvcc's and the host compiler's.
FAST_MATH = re.compile(r"fast[-_]?math|ftz=true|prec-div=false|prec-sqrt=false|^-Ofast$|unsafe-math|"
                       r"associative-math|reciprocal-math|fp-contract=fast")


def _setup_namespace(monkeypatch):
    """setup.py's globals, run without building anything (setuptools.setup is a no-op)."""
    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    monkeypatch.setenv("PYENGINE_NO_EXT", "1")
    return runpy.run_path(os.path.join(ROOT, "setup.py"))["_extensions"].__globals__


def _setup_cuda_extension(monkeypatch):
    """The keyword arguments setup.py gives CUDAExtension when it builds the CUDA sources."""
    ns = _setup_namespace(monkeypatch)
    monkeypatch.delenv("PYENGINE_NO_EXT")
    seen = {}
    monkeypatch.setattr(torch.utils.cpp_extension, "CUDAExtension", lambda name, sources, **kw: seen.update(
        kw, name=name, sources=sources) or object())
    monkeypatch.setitem(ns, "_want_cuda", lambda torch_mod: True)
    ns["_extensions"]()
    assert seen, "setup.py did not build a CUDAExtension with PYENGINE_CUDA forced on"
    return ns, seen


def _ci_nvcc_commands():
    with open(os.path.join(ROOT, ".ci", "run")) as f:  # without it, .ci/run would run the whole CI
        assert "--print-nvcc" in f.read(), ".ci/run has no --print-nvcc mode"
    res = subprocess.run(["bash", os.path.join(ROOT, ".ci", "run"), "--print-nvcc"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return [shlex.split(line) for line in res.stdout.splitlines() if line.strip()]


def _ci_only(cmd):
    """An nvcc command of .ci/run less what only a compile check needs (its own -std, -gencode per
    target, include path, warnings as errors, -c SOURCE -o OBJECT); setup.py gets these from torch."""
    rest, i = [], 1
    assert cmd[0] == "nvcc", cmd
    while i < len(cmd):
        w = cmd[i]
        if w in ("-c", "-o", "-Werror", "-gencode"):
            i += 2
            continue
        if not (w.startswith(("-arch=", "-I")) or w == "-std=c++17"):
            rest.append(w)
        i += 1
    return rest


def test_flags_file_has_one_flag_per_line():
    with open(FLAGS_FILE) as f:
        for n, line in enumerate(f, 1):
            flag = line.split("#", 1)[0].strip()
            assert not re.search(r"\s", flag), f"{FLAGS_FILE}:{n}: one flag per line (--name=value), got {flag!r}"


def test_setup_and_ci_use_the_same_nvcc_flags(monkeypatch):
    ns, ext = _setup_cuda_extension(monkeypatch)
    setup_flags = ext["extra_compile_args"]["nvcc"]
    assert setup_flags == ns["NVCC_FLAGS"] and setup_flags, setup_flags
    commands = _ci_nvcc_commands()
    cus = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    assert sorted({cmd[cmd.index("-c") + 1] for cmd in commands}) == cus
    assert sorted(s for s in ext["sources"] if s.endswith(".cu")) == cus
    for cmd in commands:
        assert _ci_only(cmd) == setup_flags, f".ci/run: {shlex.join(cmd)}\nsetup.py nvcc flags: {setup_flags}"


def test_no_fast_math_anywhere(monkeypatch):
    _, ext = _setup_cuda_extension(monkeypatch)
    flags = ext["extra_compile_args"]["nvcc"] + ext["extra_compile_args"]["cxx"] + ext.get("extra_link_args", [])
    flags += [w for cmd in _ci_nvcc_commands() for w in cmd]
    bad = [f for f in flags if FAST_MATH.search(f)]
    assert not bad, f"fast-math flags {bad}: the CPU and CUDA kernels must round the same way"


def test_bench_extra():
    seen = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
        mp.setenv("PYENGINE_NO_EXT", "1")
        runpy.run_path(os.path.join(ROOT, "setup.py"))
    assert seen["extras_require"]["bench"] == ["nerfacc==0.5.3", "rich"]


def test_object_files_persist_in_the_checkout(monkeypatch):
    """Editable installs build in a fresh temporary folder; setup.py's build_ext keeps the objects
    in build/ instead, so ninja recompiles only what changed."""
    import torch
    from setuptools.dist import Distribution

    ns = _setup_namespace(monkeypatch)
    cls = ns["_build_ext"](torch, torch.utils.cpp_extension.BuildExtension)
    cmd = cls(Distribution({"name": "pyengine", "ext_modules": []}))
    cmd.build_temp = "/tmp/some-fresh-folder"
    cmd.finalize_options()
    assert os.path.dirname(cmd.build_temp) == os.path.join(ROOT, "build"), cmd.build_temp
    assert torch.__version__.split("+")[0] in cmd.build_temp
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert "build/" in f.read().split()


def test_every_subpackage_is_installed(monkeypatch):
    """A non-editable install carries every pyengine package (setup.py lists them by hand)."""
    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    monkeypatch.setenv("PYENGINE_NO_EXT", "1")
    runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="__main__")
    found = {"pyengine"}
    for d, _, files in os.walk(os.path.join(ROOT, "pyengine")):
        if "__init__.py" in files:
            found.add(os.path.relpath(d, ROOT).replace(os.sep, "."))
    assert found - set(seen["packages"]) == set()
