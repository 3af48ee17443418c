#!/usr/bin/env bash
# Fetch the peers that the package index has into .peers/ (ignored by git), which travels to a GPU
# machine without network access next to the working tree; bench/gpu_check.sh installs from there.
#
#   bash bench/peers/download.sh
#
# nerfacc 0.5.3: a pure-Python wheel that compiles its CUDA code at first use (gpu_check.sh starts
# that compilation in the background while the build and the tests run).
# tiny-cuda-nn and PVCNN are not on the package index. A copy built elsewhere for the GPU machine's
# torch (2.11+cu130, sm_90) may be put under .peers/site/<package>/; gpu_check.sh puts .peers/site
# on the path and the benchmarks compare with whatever imports. This repository holds neither their
# source nor a recipe that builds it. Keep .peers/ under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .peers/site
python3 -m pip download --no-deps --only-binary=:all: -d .peers nerfacc==0.5.3
# pure-Python needs of pyengine that the GPU image lacks (it has torch, numpy, scipy, safetensors,
# tqdm, imageio, scikit-image, transformers): without them the engine tests fail there (xatlas
# has compiled code: this machine's Python's wheel, and CPython 3.12's, the GPU image's Python on
# 2026-11-28; gpu_check.sh installs whichever fits)
python3 -m pip download --no-deps --only-binary=:all: -d .peers omegaconf==2.4.0 trimesh==5.2.0 \
  diffusers==0.42.1 importlib_metadata==10.2.0 xatlas==0.0.11
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  -d .peers xatlas==0.0.11
du -sh .peers
