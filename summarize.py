"""Compare groups of train.py records: accuracy (mean, std, t-test vs 94%), time (median, spread),
and BLF's kept fraction per epoch (the forum thread's "selected samples" curve).

    python summarize.py results/blf/baseline results/blf/blf results/blf/random
    python summarize.py runs/20261121-201500            # one record works too

Each argument is a group: a record folder, or a folder of record folders (all their runs pooled).
"""
import argparse
import json
import os
import sys

import stats


def read_jsonl(path):
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def records_in(path):
    if os.path.isfile(os.path.join(path, 'runs.jsonl')):
        return [path]
    return sorted(os.path.join(path, d) for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, 'runs.jsonl')))


def summarize_group(path):
    records = records_in(path)
    runs = [r for rec in records for r in read_jsonl(os.path.join(rec, 'runs.jsonl'))]
    epochs = [r for rec in records for r in read_jsonl(os.path.join(rec, 'epochs.jsonl'))]
    if not runs:
        return None
    acc = stats.summarize([r['test_acc'] for r in runs])
    sec = stats.summarize([r['time_s'] for r in runs])
    p = stats.t_test_greater([r['test_acc'] for r in runs], 0.94)[1] if len(runs) > 1 else float('nan')
    by_epoch = {}
    for row in epochs:
        by_epoch.setdefault(row['epoch'], []).append(row.get('kept', 1.0))
    kept_curve = [sum(v) / len(v) for _, v in sorted(by_epoch.items())]
    return {'group': path, 'records': len(records), 'acc': acc, 'p_gt_94': p, 'time': sec, 'kept_curve': kept_curve}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('groups', nargs='+', help='record folders or folders of record folders')
    args = ap.parse_args(argv)
    rows = []
    for g in args.groups:
        if not os.path.isdir(g):
            sys.exit(f'error: {g} is not a folder')
        row = summarize_group(g)
        if row is None:
            sys.exit(f'error: no runs.jsonl under {g}')
        rows.append(row)
    print('| group | runs | accuracy mean ± std [min, max] | p(mean > 94%) | time median [min, max] s | kept fraction by epoch |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        a, t = r['acc'], r['time']
        curve = ' '.join(f'{k:.2f}' for k in r['kept_curve'])
        print(f'| {r["group"]} | {a["n"]} | {a["mean"]:.4f} ± {a["std"]:.4f} [{a["min"]:.4f}, {a["max"]:.4f}] | '
              f'{r["p_gt_94"]:.3g} | {t["median"]:.2f} [{t["min"]:.2f}, {t["max"]:.2f}] | {curve} |')


if __name__ == '__main__':
    main()
