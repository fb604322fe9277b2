#!/usr/bin/env bash
# N runs of tests/dp_step.py (one data-parallel step, 2 ranks on gloo) under torchrun, with SPIN
# busy-looping processes beside them (default 2), as CI's 2 cores are loaded by pytest-xdist.
# Counts the runs that fail; prints the abort line of each. Usage: [SPIN=k] stress.sh REPO DATA_DIR N
set -u
repo=$1; data=$2; n=$3
for k in $(seq 1 "${SPIN:-2}"); do python3 -c "while True: pass" & done
spinners=$(jobs -p)
trap 'kill $spinners 2>/dev/null' EXIT
echo "repo $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet || echo '+changes'), $n runs, ${SPIN:-2} spinners, $(nproc) cores, torch $(python3 -c 'import torch; print(torch.__version__)'), $(date -u +%FT%TZ)"
fails=0
for i in $(seq 1 "$n"); do
  log=$(mktemp); out=$(mktemp -u).pt
  if ! PYTHONPATH="$repo" timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node 2 \
       "$repo/tests/dp_step.py" "$data" "$out" > "$log" 2>&1; then
    fails=$((fails + 1))
    echo "run $i failed: $(grep -m1 -E 'terminate called|Error|error' "$log")"
  fi
  rm -f "$log" "$out"
done
echo "failed $fails of $n"
