#!/usr/bin/env bash
# One command for a fresh GPU machine with no network: build with CUDA; run the whole test suite
# (GPU tests and the CPU half side by side), a compute-sanitizer pass and the Triton smoke run;
# then the benchmarks alone, with every provider that imports (nerfacc and tiny-cuda-nn from
# .peers/, see bench/peers/download.sh); then print a short table. Wheels in .peers/ are installed
# without network (the peers, and pure-Python needs the GPU image lacks: omegaconf, trimesh,
# diffusers). results.json (test summaries, benchmark rows) and logs.tar.gz (every log, packed
# after each step) go to $OUT (or bench/out).
# Time on an H200 (16 cores), 2026-11-28: build 113 s, the tests step 180 s (its limit), the
# rasterize, antialias and attention benchmarks 94 s: 7 minutes. Every benchmark together adds
# about 3 minutes more (about 10 in all): a session with less device time names STEPS.
#
#   bash bench/gpu_check.sh             # on the GPU machine
#   bash bench/gpu_check.sh --dry-run   # on a CPU machine: every step with CPU stand-ins (tests
#                                       # collected, not run; benchmarks tiny), to prove the script
#   STEPS=gpu_tests,bench_render bash bench/gpu_check.sh   # some steps only (a short rerun); the
#       steps: gpu_tests tests sanitizer bench_rasterize bench_antialias bench_attention bench_hash
#       bench_render bench_pvconv bench_sds bench_inverse bench_step_compiled
#       (default: all)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-bench/out}
L=$(mktemp -d)/logs  # packed into $OUT/logs.tar.gz at the end ($OUT takes few files)
mkdir -p "$OUT" "$L"
if [ -z "${PYTHON:-}" ] && [ $DRY = 1 ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
PY=${PYTHON:-python3}
NCPU=$(nproc)
export MAX_JOBS=${MAX_JOBS:-$NCPU} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
[ $DRY = 1 ] && export PYENGINE_CUDA=0 || export PYENGINE_CUDA=1
STEPS=",${STEPS:-gpu_tests,tests,sanitizer,bench_rasterize,bench_antialias,bench_attention,bench_hash,bench_render,bench_pvconv,bench_sds,bench_inverse,bench_step_compiled},"
want() { [[ $STEPS == *",$1,"* ]]; }
status=0
failed=()
T0=$(date +%s)
step() {  # a new step; the logs so far are packed first, in case the machine's time limit cuts in
  tar -czf "$OUT/logs.tar.gz" -C "$(dirname "$L")" logs 2>/dev/null
  echo "== $* (+$(( $(date +%s) - T0 )) s)"
}
run() {  # run NAME TIMEOUT CMD...: log to $L/NAME.log, remember a failure
  local name=$1 t=$2; shift 2
  timeout "$t" "$@" >"$L/$name.log" 2>&1
  local rc=$?
  if [ $rc != 0 ]; then status=1; failed+=("$name(rc=$rc)"); fi
  tar -czf "$OUT/logs.tar.gz" -C "$(dirname "$L")" logs 2>/dev/null  # in case the time limit cuts in
  return $rc
}

step "device"
if [ $DRY = 0 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$L/gpu.txt"
else
  echo "dry run: no GPU" | tee "$L/gpu.txt"
fi
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$L/gpu.txt"
# the GPU machine gets the working tree without .git: pass PYENGINE_COMMIT=<hash> there
export PYENGINE_COMMIT=${PYENGINE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "commit $PYENGINE_COMMIT" | tee -a "$L/gpu.txt"

step "peers from .peers/ (no network)"
PEER_SITE=$(mktemp -d)
for whl in .peers/*.whl; do
  [ -e "$whl" ] || continue
  $PY -m pip install -q --no-index --no-deps --target "$PEER_SITE" "$whl" >>"$L/peers.log" 2>&1 \
    && echo "installed $(basename "$whl")" || echo "could not install $whl (see peers.log)"
done
for d in .peers/site/*; do  # prebuilt packages (tiny-cuda-nn, PVCNN) for this machine's torch
  [ -e "$d" ] && cp -r "$d" "$PEER_SITE/"
done
export PYTHONPATH="$PEER_SITE${PYTHONPATH:+:$PYTHONPATH}"
NERFACC_PID=""
if [ $DRY = 0 ] && $PY -c "import nerfacc" 2>/dev/null; then
  # nerfacc compiles its CUDA code at first use: start that now, behind the build and the tests
  (MAX_JOBS=$(( NCPU / 2 )) timeout 400 $PY -c "from nerfacc.cuda import _backend as b; assert b._C is not None; print('nerfacc CUDA built')" \
    >"$L/nerfacc_build.log" 2>&1) &
  NERFACC_PID=$!
fi
$PY -c "import nerfacc; print('nerfacc', nerfacc.__version__, 'imports')" 2>/dev/null || echo "nerfacc: not importable"
$PY -c "import tinycudann; print('tiny-cuda-nn imports')" 2>/dev/null || echo "tiny-cuda-nn: not importable (no comparison with it)"

step "build"
start=$(date +%s)
if ! timeout 240 $PY -m pip install --no-build-isolation --no-deps -e . >"$L/build.log" 2>&1; then
  tail -40 "$L/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
$PY -m pyengine doctor 2>&1 | tee "$L/doctor.txt"

XDIST=()
if $PY -c "import xdist" 2>/dev/null; then XDIST=(-n "${XDIST_N:-$(( NCPU > 12 ? 8 : (NCPU + 1) / 2 ))}" --dist loadfile); fi
if [ $DRY = 0 ]; then
  # Nothing here is timed, so the GPU tests, the CPU half of the suite, the memcheck pass and the
  # Triton smoke run share the machine (16 cores: 8 + 8 workers); the benchmarks then run alone.
  step "tests: GPU tests (${XDIST[*]:-one process}), CPU half, memcheck, Triton smoke, side by side"
  pids=()
  # -v: each result is logged as it comes, so a step cut by its time limit still names its failures
  want gpu_tests && { OMP_NUM_THREADS=2 run gpu_tests "${GPU_TESTS_TIMEOUT:-240}" $PY -m pytest -v -p no:cacheprovider -m gpu \
    "${XDIST[@]}" tests & pids+=($!); }
  want tests && { OMP_NUM_THREADS=1 run tests 240 $PY -m pytest -v -p no:cacheprovider -m "not gpu" \
    "${XDIST[@]}" tests & pids+=($!); }
  if want sanitizer; then
    if command -v compute-sanitizer >/dev/null; then
      run sanitizer 150 compute-sanitizer --tool memcheck --error-exitcode 9 $PY bench/gpu_smoke.py cuda &
      pids+=($!)
    else
      echo "compute-sanitizer not found"; failed+=("sanitizer(missing)")
    fi
    run triton_smoke 150 $PY bench/gpu_smoke.py triton & pids+=($!)
  fi
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  # run() sets failed[] in the subshells, which is lost: name the failures from the logs
  for f in gpu_tests tests sanitizer triton_smoke; do
    [ -f "$L/$f.log" ] || continue
    echo "$f: $(tail -1 "$L/$f.log")"
    grep -qE "(passed|ran clean|ERROR SUMMARY: 0 errors)" "$L/$f.log" || failed+=("$f")
    grep -qE "[1-9][0-9]* (failed|errors?)" "$L/$f.log" && failed+=("$f(failures)")
  done
  grep -E "\] (FAILED|ERROR) tests/" "$L/gpu_tests.log" 2>/dev/null | head -20
  grep -E "(^(FAILED|ERROR) |\] (FAILED|ERROR) tests/)" "$L/tests.log" 2>/dev/null | head -20
  grep -E "ERROR SUMMARY" "$L/sanitizer.log" 2>/dev/null
else
  step "tests (dry run: collected only)"
  want gpu_tests && run gpu_tests 120 $PY -m pytest -q -p no:cacheprovider -m gpu --collect-only tests
  want gpu_tests && tail -1 "$L/gpu_tests.log"
  want tests && run tests 120 $PY -m pytest -q -p no:cacheprovider -m "not gpu" --collect-only tests
  want tests && tail -1 "$L/tests.log"
  if want sanitizer; then
    echo "dry run: compute-sanitizer not run; the smoke script on the CPU instead"
    run sanitizer 120 $PY bench/gpu_smoke.py cpu
    tail -1 "$L/sanitizer.log"
  fi
fi

step "benchmarks"
if [ $DRY = 0 ]; then
  if [ -n "$NERFACC_PID" ]; then wait "$NERFACC_PID"; tail -2 "$L/nerfacc_build.log"; fi
  want bench_rasterize && run bench_rasterize 60 $PY bench/bench_rasterize.py --device cuda \
    --json "$L/bench_rasterize.json"
  want bench_antialias && run bench_antialias 45 $PY bench/bench_antialias.py --device cuda \
    --json "$L/bench_antialias.json"
  want bench_attention && run bench_attention 150 $PY bench/bench_attention.py --device cuda \
    --json "$L/bench_attention.json"
  want bench_hash && run bench_hash_fp32 75 $PY bench/bench_hash_encode.py --device cuda --sizes 18 20 \
    --providers reference cuda triton tcnn --json "$L/bench_hash_encode_fp32.json"
  want bench_hash && run bench_hash_fp16 45 $PY bench/bench_hash_encode.py --device cuda --sizes 20 --dtype float16 \
    --providers cuda triton tcnn --json "$L/bench_hash_encode_fp16.json"
  want bench_render && run bench_render 150 $PY bench/bench_render.py --device cuda --json "$L/bench_render.json"
  want bench_pvconv && run bench_pvconv 120 $PY bench/bench_pvconv.py --device cuda --json "$L/bench_pvconv.json"
  want bench_sds && run bench_sds 150 $PY bench/bench_sds.py --device cuda --render-size 0 128 --iters 30 \
    --json "$L/bench_sds.json"
  want bench_inverse && run bench_inverse 90 $PY bench/bench_inverse.py --device cuda --images 32 --steps-scale 0.1 \
    --json "$L/bench_inverse.json"
  # last, alone: the compiled composite and training step (CUDA graphs); compiling takes tens of seconds
  want bench_step_compiled && run bench_step_compiled 180 $PY bench/bench_render.py --device cuda \
    --skip nerfacc floor march --providers reference cuda triton nerfacc --compile-step \
    --json "$L/bench_step_compiled.json"
else
  want bench_hash && run bench_hash_fp32 120 $PY bench/bench_hash_encode.py --device cpu --sizes 10 --reps 1 \
    --providers reference cpu tcnn --json "$L/bench_hash_encode_fp32.json"
  want bench_hash && run bench_hash_fp16 60 $PY bench/bench_hash_encode.py --device cpu --sizes 10 --reps 1 --dtype float16 \
    --providers cpu --json "$L/bench_hash_encode_fp16.json"
  want bench_pvconv && run bench_pvconv 300 $PY bench/bench_pvconv.py --device cpu --reps 1 \
    --size 2 8 256 8 --points-size 2 8 256 64 8 --step-batch 1 --json "$L/bench_pvconv.json"
  want bench_render && run bench_render 300 $PY bench/bench_render.py --device cpu --sizes 12 --reps 1 --skip step \
    --json "$L/bench_render.json"
  want bench_rasterize && run bench_rasterize 120 $PY bench/bench_rasterize.py --device cpu --sizes 64 \
    --sanity-size 16 --segments 10 20 --batch 2 --reps 1 --json "$L/bench_rasterize.json"
  want bench_antialias && run bench_antialias 120 $PY bench/bench_antialias.py --device cpu --size 1 64 64 \
    --sphere 16 32 --tex-size 64 --reps 1 --json "$L/bench_antialias.json"
  want bench_attention && run bench_attention 300 $PY bench/bench_attention.py --device cpu --quick --reps 1 \
    --json "$L/bench_attention.json"
  want bench_sds && run bench_sds 120 $PY bench/bench_sds.py --device cpu --quick --json "$L/bench_sds.json"
  want bench_inverse && run bench_inverse 120 $PY bench/bench_inverse.py --device cpu --images 2 --steps-scale 0.01 \
    --methods ddrm dps --json "$L/bench_inverse.json"
  want bench_step_compiled && run bench_step_compiled 30 $PY bench/bench_render.py --help
fi

step "results"
$PY - "$L" "$OUT/results.json" "$DRY" "${failed[*]:-}" <<'EOF'
import glob, json, os, re, sys
logs, dest, dry, failed = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4].split()
res = {"dry_run": dry, "failed_steps": failed, "machine": open(os.path.join(logs, "gpu.txt")).read().strip()}
for name in ("gpu_tests", "tests"):
    p = os.path.join(logs, name + ".log")
    lines = open(p).read().strip().splitlines() if os.path.exists(p) else []
    res[name] = next((ln for ln in reversed(lines) if re.search(r"passed|failed|error|collected|tests? ", ln)), "no log")
    res[name + "_failures"] = sorted({ln.strip() for ln in lines if ln.startswith(("FAILED", "ERROR"))
                                      or re.search(r"\] (FAILED|ERROR) tests/", ln)})[:60]
for p in sorted(glob.glob(os.path.join(logs, "bench_*.json"))):
    res[os.path.basename(p)[:-5]] = json.load(open(p))
json.dump(res, open(dest, "w"), indent=1)
print(f"results: {dest}; failed steps: {' '.join(failed) or 'none'}")
EOF
tar -czf "$OUT/logs.tar.gz" -C "$(dirname "$L")" logs

step "summary (status $status)"
for f in gpu_tests tests; do [ -f "$L/$f.log" ] && echo "$f: $(tail -1 "$L/$f.log")"; done
for f in bench_rasterize bench_antialias bench_attention bench_hash_fp32 bench_hash_fp16 bench_render bench_pvconv \
  bench_sds bench_inverse bench_step_compiled; do
  [ -f "$L/$f.log" ] || continue
  grep -E '^\||^skipped|^composite fwd takes|^copy bandwidth|^MISMATCH|^render\+backward' "$L/$f.log" || tail -5 "$L/$f.log"
done
echo "failed steps: ${failed[*]:-none}"
exit $status
