#!/bin/bash
# reproduce.py's blf stage at toy size on this CPU: one process per train.py invocation (OLD, the
# commit before train_many.py) against all 8 invocations in one process (NEW), alternating, 3 each;
# then the two stages' records compared: the same runs, to the last bit, but for the clocks.
# usage: bash results/cpu-checks/train-many/compare.sh OLD_COMMIT NEW_COMMIT   (from the repo root, data/ unpacked)
set -euo pipefail
OLD=$1 NEW=$2 WORK=/tmp/train-many-compare
rm -rf $WORK && mkdir -p $WORK
for c in $OLD $NEW; do git worktree add -f -q --detach $WORK/$c $c && ln -s "$PWD/data" $WORK/$c/data; done
echo "# $(python -c 'import sys, torch, triton; print(f"python {sys.version.split()[0]} torch {torch.__version__} triton {triton.__version__}")') | $(nproc) CPUs | $(date -u +%FT%TZ)"
for i in 1 2 3; do
  for c in $OLD $NEW; do
    rm -rf $WORK/out-$c
    start=$(date +%s.%N)
    (cd $WORK/$c && env -u TRITON_INTERPRET python reproduce.py --smoke --device cpu --data-dir data --out $WORK/out-$c --stage blf > $WORK/log-$c-$i.txt 2>&1)
    echo "$( [ $c = $OLD ] && echo old || echo new ) $c run $i: rc $? $(python -c "print(f'{$(date +%s.%N) - $start:.1f}')") s, $(grep -c '^seed .: test accuracy' $WORK/log-$c-$i.txt) runs"
  done
done
python - $WORK/out-$OLD/blf $WORK/out-$NEW/blf <<'PY'
import json, pathlib, sys
clocks = {'epoch_s', 'total_s', 'train_s', 'eval_s', 'time_s'}
def runs(stage):
    out = {}
    for path in sorted(pathlib.Path(stage).glob('*/*/epochs.jsonl')):
        for line in path.read_text().splitlines():
            row = {k: v for k, v in json.loads(line).items() if k not in clocks}
            out.setdefault((path.parent.parent.name, row['seed']), []).append(row)
    return out
old, new = map(runs, sys.argv[1:])
same = [key for key in old if old[key] == new.get(key)]
print(f'records compared (config, seed): {len(old)} old, {len(new)} new; identical but for the clocks: {len(same)}')
for key in sorted(old):
    print(f'  {key[0]:14} seed {key[1]}: final test_acc {old[key][-1]["test_acc"]:.4f} old, {new[key][-1]["test_acc"]:.4f} new')
PY
for c in $OLD $NEW; do git worktree remove --force $WORK/$c; done
