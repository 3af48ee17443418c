"""Build pyengine and its compiled extension pyengine._C.

The C++/OpenMP sources always build. CUDA sources are added when PYENGINE_CUDA allows it:
  PYENGINE_CUDA=auto (default)  CUDA when nvcc is found and torch is a CUDA build
  PYENGINE_CUDA=1               CUDA required (fails if it cannot be built)
  PYENGINE_CUDA=0               CPU only
Other knobs: TORCH_CUDA_ARCH_LIST (e.g. "9.0"), MAX_JOBS (parallel compile jobs),
PYENGINE_NO_EXT=1 (skip the extension entirely; ops then run on Triton / PyTorch),
PYENGINE_BUILD_DIR (where object files are kept between builds; default build/ in the checkout),
PYENGINE_DEBUG=1 (keep debug information in the C++ objects).

Object files persist in build/temp.<platform>-<python>-torch<version>/, also for editable
installs (whose own build folder is a fresh temporary one each time), so ninja recompiles only
the sources that changed since the last build.

The nvcc flags are read from csrc/nvcc_flags.txt, which .ci/run reads too.

torch must already be installed (pip install --no-build-isolation), since the build uses
torch.utils.cpp_extension.
"""

import glob
import os
import shutil
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _read_flags(path):
    """One flag per line; '#' starts a comment."""
    with open(path) as f:
        return [flag for flag in (line.split("#", 1)[0].strip() for line in f) if flag]


NVCC_FLAGS = _read_flags(os.path.join(ROOT, "csrc", "nvcc_flags.txt"))
# the C++ standard is the one torch asks for. -g0 overrides the -g of Python's own flags: debug
# information for torch's headers doubled the host files' compile time (PYENGINE_DEBUG=1 keeps it)
CXX_FLAGS = ["-O3", "-fopenmp"] + ([] if os.environ.get("PYENGINE_DEBUG") == "1" else ["-g0"])


def _build_temp(torch_mod):
    """Object files of this torch and Python: kept, so that the next build reuses them. The torch
    version is in the name because ninja does not track torch's headers (included as -isystem)."""
    tag = "".join(c if c.isalnum() or c in "._-" else "_" for c in torch_mod.__version__)
    base = os.environ.get("PYENGINE_BUILD_DIR") or os.path.join(ROOT, "build")
    return os.path.join(base, f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}-torch{tag}")


def _build_ext(torch_mod, build_extension):
    base = build_extension.with_options(use_ninja=shutil.which("ninja") is not None)

    class BuildExt(base):
        def finalize_options(self):
            super().finalize_options()
            self.build_temp = _build_temp(torch_mod)

    return BuildExt


def _want_cuda(torch_mod):
    mode = os.environ.get("PYENGINE_CUDA", "auto").lower()
    if mode in ("0", "false", "no", "off"):
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    have = torch_mod.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc"))
    if mode in ("1", "true", "yes", "on"):
        if not have:
            sys.exit("PYENGINE_CUDA=1 but torch is not a CUDA build or nvcc was not found")
        return True
    return bool(have)


def _extensions():
    if os.environ.get("PYENGINE_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    sources = ["csrc/ext.cpp"] + sorted(glob.glob("csrc/host/*.cpp", root_dir=ROOT)) + sorted(
        glob.glob("csrc/cpu/*.cpp", root_dir=ROOT))
    cxx = list(CXX_FLAGS)
    if _want_cuda(torch):
        sources += sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT))
        ext = CUDAExtension(
            "pyengine._C",
            sources,
            include_dirs=include,
            define_macros=[("PE_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": list(NVCC_FLAGS)},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "pyengine._C", sources, include_dirs=include, extra_compile_args=cxx,
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": _build_ext(torch, BuildExtension)}


def _readme():
    path = os.path.join(ROOT, "README.md")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


ext_modules, cmdclass = _extensions()

setup(
    name="pyengine",
    version=VERSION,
    description="Fused kernels and engines for text-to-3D and video diffusion",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["pyengine"] + ["pyengine." + p for p in (
        "ops", "reference", "nn", "compat", "compat.pvcnn", "engines", "data", "render", "diffusion", "inverse")]
    + ["pyengine.kernels"],
    package_dir={"pyengine.kernels": "kernels"},
    package_data={"pyengine": ["assets/*.safetensors"]},  # the bundled priors and judges
    install_requires=[
        "torch>=2.4",
        "numpy",
        "scipy",  # exact EMD (linear_sum_assignment) in `pyengine points eval`
        "safetensors",
        "tqdm",
        "omegaconf",
        "imageio",
        "imageio-ffmpeg",
        "triton; platform_system=='Linux'",
        "trimesh",  # mesh export (OBJ, GLB) of the SDS / Magic3D engines
        "scikit-image",  # marching cubes on a NeRF's density
        "xatlas",  # UV atlas of Magic3D's textured mesh
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff", "diffusers", "transformers"],
                    "video": ["diffusers"], "priors": ["diffusers", "transformers"],
                    "bench": ["nerfacc==0.5.3", "rich"]},
    entry_points={"console_scripts": ["pyengine=pyengine.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
