#!/usr/bin/env bash
# One command for a fresh GPU machine (under 8 minutes): build with CUDA, run the whole test suite
# (the README's test command: CPU, GPU and Triton tests, Triton compiled on CUDA tensors), a
# compute-sanitizer pass, the GPU benchmarks, and print a short table last. Logs and JSON go to
# $OUT (the device tool's output folder) or bench/out.
#
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYENGINE_CUDA=1
status=0
step() { echo "== $* ($(date +%T))"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

step "build"
start=$(date +%s)
if ! $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
$PY -m pyengine doctor | tee "$OUT/doctor.txt"

step "test suite (GPU tests first, then everything else)"
timeout 120 $PY -m pytest -q -m gpu tests >"$OUT/gpu_tests.log" 2>&1 || status=1
tail -4 "$OUT/gpu_tests.log"
timeout 240 $PY -m pytest -q -m "not gpu" -p no:cacheprovider tests >"$OUT/tests.log" 2>&1 || status=1
tail -4 "$OUT/tests.log"

step "benchmarks"
timeout 70 $PY bench/bench_hash_encode.py --device cuda --sizes 18 20 --providers reference cuda triton tcnn \
  --json "$OUT/bench_hash_encode_fp32.json" >"$OUT/bench_fp32.txt" 2>&1 || status=1
timeout 40 $PY bench/bench_hash_encode.py --device cuda --sizes 20 --dtype float16 --providers cuda triton tcnn \
  --json "$OUT/bench_hash_encode_fp16.json" >"$OUT/bench_fp16.txt" 2>&1 || status=1
timeout 70 $PY bench/bench_render.py --device cuda --json "$OUT/bench_render.json" >"$OUT/bench_render.txt" 2>&1 || status=1

step "compute-sanitizer"
if command -v compute-sanitizer >/dev/null; then
  timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $PY bench/gpu_smoke.py cuda >"$OUT/sanitizer.log" 2>&1 || status=1
  tail -3 "$OUT/sanitizer.log"
fi
timeout 40 $PY bench/gpu_smoke.py triton >"$OUT/triton_smoke.log" 2>&1 || status=1
tail -1 "$OUT/triton_smoke.log"

step "summary (status $status)"
cat "$OUT/bench_fp32.txt" "$OUT/bench_fp16.txt" "$OUT/bench_render.txt"
exit $status
