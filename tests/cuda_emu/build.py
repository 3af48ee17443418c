"""Build pyengine's extension with its CUDA kernels compiled for the CPU (see include/cuda_runtime.h).

Every csrc/cuda/*.cu is copied with its kernel launches rewritten for the emulator and with
__CUDACC__ and __CUDA_ARCH__ (``ARCH``) defined at its top, as in nvcc's device pass, so its
device-only branches and those of csrc/include/pyengine compile and run, over the intrinsics of
include/cuda_runtime.h. Then the whole extension (ext.cpp, host code with PE_WITH_CUDA and
PE_EMULATE_CUDA, CPU kernels, the rewritten CUDA kernels, support.cpp) is built as the module
``pyengine_cuda_emu``; the host and CPU units do not see __CUDA_ARCH__. With
``PYENGINE_EXT=pyengine_cuda_emu`` pyengine loads it instead of pyengine._C, and the "cpu"
backend then runs the CUDA kernels.

    python tests/cuda_emu/build.py BUILD_DIR
"""

from __future__ import annotations

import glob
import os
import platform
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NAME = "pyengine_cuda_emu"
# __CUDA_ARCH__ of the device pass: 900 takes the sm_90 branches (vector atomics). PYENGINE_EMU_ARCH
# picks another (e.g. 800); 0 leaves it undefined, so only host branches run (a check of the tests).
ARCH = int(os.environ.get("PYENGINE_EMU_ARCH", "900"))
# IEEE rounding for the _rn intrinsics: no contraction into FMAs, no fast-math. Where the CPU has
# FMA instructions the build uses them, so that a contraction would show (test_cuda_emulated.py).
CFLAGS = ["-O1", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-DPE_WITH_CUDA", "-DPE_EMULATE_CUDA"]


def _cpu_has_fma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "fma" in line.split() for line in f)
    except OSError:
        return False


def _matching(src: str, i: int, open_ch: str, close_ch: str) -> int:
    depth = 0
    for j in range(i, len(src)):
        if src[j] == open_ch:
            depth += 1
        elif src[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unbalanced brackets")


_DYNAMIC_SMEM = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:<>, ]*?)\s+"
                           r"(?:__align__\(\s*\d+\s*\)\s+)?(\w+)\s*\[\s*\]\s*;")


def translate(src: str, arch: int = ARCH) -> str:
    """`k<T><<<grid, block, smem, stream>>>(args);` -> `::pe_emu::launch(grid, block, [&] { k<T>(args); });`,
    in a unit compiled as a device pass for sm_<arch>. A file that uses __syncthreads, shared memory or
    warp shuffles gets `::pe_emu::launch_coop(grid, block, smem, ...)` (each thread a coroutine, so barriers hold), and
    each `extern __shared__ T name[];` becomes a pointer to the launch's dynamic shared memory."""
    coop = any(k in src for k in ("__syncthreads", "__shared__", "__shfl", "__syncwarp"))
    src = _DYNAMIC_SMEM.sub(lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>"
                                      f"(::pe_emu::dynamic_smem());", src)
    out, pos = [], 0
    for m in re.finditer(r"<<<", src):
        if m.start() < pos:
            continue
        start = src.rfind(";", 0, m.start())
        start = max(start, src.rfind("{", 0, m.start()), src.rfind("}", 0, m.start())) + 1
        kernel = src[start:m.start()].strip()
        cfg_end = src.index(">>>", m.end())
        config = [c.strip() for c in _split_top(src[m.end():cfg_end])]
        args_open = src.index("(", cfg_end)
        args_close = _matching(src, args_open, "(", ")")
        args = src[args_open + 1:args_close]
        semi = src.index(";", args_close)
        lead = src[start:m.start()][: len(src[start:m.start()]) - len(src[start:m.start()].lstrip())]
        out.append(src[pos:start])
        if coop:
            smem = config[2] if len(config) > 2 else "0"
            out.append(f"{lead}::pe_emu::launch_coop({config[0]}, {config[1]}, {smem}, [&] {{ {kernel}({args}); }});")
        else:
            out.append(f"{lead}::pe_emu::launch({config[0]}, {config[1]}, [&] {{ {kernel}({args}); }});")
        pos = semi + 1
    out.append(src[pos:])
    arch_line = f"#define __CUDA_ARCH__ {arch}\n" if arch else ""
    return "#define __CUDACC__ 1\n" + arch_line + "#include <cuda_runtime.h>\n" + "".join(out)


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def default_build_dir() -> str:
    return os.path.join(ROOT, "build", "cuda_emu" if ARCH == 900 else f"cuda_emu_arch{ARCH}")


def build(build_dir: str, verbose: bool = False):
    from torch.utils.cpp_extension import load

    os.makedirs(build_dir, exist_ok=True)
    gen = os.path.join(build_dir, "gen")
    os.makedirs(gen, exist_ok=True)
    sources = []
    # one flat folder of uniquely named copies: the extension builder names objects by basename
    units = [(sub, path) for sub, pattern in (("", "ext.cpp"), ("host", "*.cpp"), ("cpu", "*.cpp"), ("cuda", "*.cu"))
             for path in sorted(glob.glob(os.path.join(ROOT, "csrc", sub, pattern)))]
    for sub, path in units + [("emu", os.path.join(HERE, "support.cpp"))]:
        text = open(path).read()
        name = os.path.basename(path)
        if sub in ("cuda", "emu"):
            text, name = translate(text), os.path.splitext(name)[0] + ".cpp"
        dst = os.path.join(gen, f"{sub or 'top'}_{name}")
        if not os.path.exists(dst) or open(dst).read() != text:
            with open(dst, "w") as f:
                f.write(text)
        sources.append(dst)
    cflags = CFLAGS + (["-mfma"] if platform.machine() == "x86_64" and _cpu_has_fma() else [])
    includes = [os.path.join(HERE, "include"), os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    return load(NAME, sources, extra_include_paths=includes,
                extra_cflags=cflags, extra_ldflags=["-fopenmp"],
                build_directory=build_dir, verbose=verbose)


if __name__ == "__main__":
    mod = build(sys.argv[1] if len(sys.argv) > 1 else default_build_dir(), verbose=True)
    print(mod.__file__)
