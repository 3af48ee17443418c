#!/usr/bin/env bash
# The inverse-problem evaluation protocol: `pyengine inverse eval` on its default lists (200 held-out
# ShapeWorld images x 6 tasks x 4 sigma_y x the 8 methods, each task's classical baseline, and the
# CCDF rows at t0 = 0.3), cut into chunks of BATCH images that are kept in DIR/chunks as they finish.
# A rerun goes on where the last one stopped, and a larger IMAGES reuses a smaller run's chunks (the
# first 8 images of 200 are the same chunks as an 8-image run), so the protocol can be run a piece at
# a time: on these 2 CPU cores it is about 75 core-hours (DPS-1000 and MCG take 17 s an image each).
#
#   bash bench/inverse_protocol.sh                   # solve chunks (WORKERS processes), then assemble
#   IMAGES=8 bash bench/inverse_protocol.sh          # the first 8 images: a prefix of the protocol
#   BUDGET=3000 bash bench/inverse_protocol.sh       # start no new chunk after 50 minutes, assemble
#   TASKS=[sr4] SIGMAS=[0.05] METHODS=[ddrm,dps] T0=[] bash bench/inverse_protocol.sh  # a part
#   bash bench/inverse_protocol.sh --dry-run         # tiny (2 images, 2 steps), in a temporary folder
#
# On a GPU machine: DEVICE=cuda WORKERS=1 BATCH=200 (a batch of 8 leaves a GPU idle; another batch
# starts another set of chunks, as the seeds follow the chunk's first image), carry DIR there and
# take $OUT/protocol back. The summary (summary.md: the table and the published orderings, each
# with its paired-bootstrap interval) holds the cells whose chunks are all there and names the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
PY=${PYTHON:-python3}
DIR=${DIR:-runs/inverse/protocol}
IMAGES=${IMAGES:-200}
BATCH=${BATCH:-8}
WORKERS=${WORKERS:-$(nproc)}
BUDGET=${BUDGET:-0}
DEVICE=${DEVICE:-auto}
T0=${T0:-[0.3]}
lists=()
[ -n "${TASKS:-}" ] && lists+=("eval_tasks=$TASKS")
[ -n "${SIGMAS:-}" ] && lists+=("eval_sigmas=$SIGMAS")
[ -n "${METHODS:-}" ] && lists+=("eval_methods=$METHODS")
if [ "${1:-}" = "--dry-run" ]; then
  DIR=$(mktemp -d)/protocol IMAGES=3 BATCH=2 WORKERS=2
  lists=("eval_tasks=[sr4,phase]" "eval_sigmas=[0,0.05]" "eval_methods=[ddrm,dps,scoresde,reddiff]" steps=2)
fi
mkdir -p "$DIR"
common=(eval_images="$IMAGES" eval_batch="$BATCH" eval_t0="$T0" device="$DEVICE" out="$DIR" "${lists[@]}")
threads=$(( $(nproc) / WORKERS )); [ $threads -lt 1 ] && threads=1
echo "inverse protocol: $IMAGES images, batch $BATCH, $WORKERS workers x $threads threads, into $DIR"
pids=()
for i in $(seq 0 $((WORKERS - 1))); do
  OMP_NUM_THREADS=$threads $PY -m pyengine inverse eval "${common[@]}" eval_shard="$i/$WORKERS" \
    eval_budget_s="$BUDGET" >"$DIR/shard-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ $status = 0 ] || { echo "inverse protocol: a worker failed; see $DIR/shard-*.log"; tail -n 5 "$DIR"/shard-*.log; }
$PY -m pyengine inverse eval "${common[@]}" eval_solve=false >"$DIR/assemble.log" 2>&1 || status=1
grep -E "^inverse eval: (wrote|.* chunks)" "$DIR/assemble.log" | tail -n 1
echo "inverse protocol: $(ls "$DIR/chunks" | wc -l) chunks in $DIR/chunks; summary in $DIR/summary.md"
[ -n "${OUT:-}" ] && cp -r "$DIR" "$OUT/" 2>/dev/null
exit $status
