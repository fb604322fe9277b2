"""Compare groups of train.py records: accuracy (mean, std, t-test vs 94%), time (median, spread),
and BLF's kept fraction per epoch (the forum thread's "selected samples" curve).

    python summarize.py results/blf/baseline results/blf/blf results/blf/random
    python summarize.py runs/20261121-201500            # one record works too

Each argument is a group: a record folder, or a folder of record folders (all their runs pooled).
A record that was interrupted, or stopped when training diverged, contributes the runs it finished
(and only their epochs) and is named below the table. So is a group that pools what should not be
pooled: a seed in more than one record (counted twice), records of different settings, records of
different code (env.json's per-file hashes), or records timed on different machines (env.json's GPU
and software versions).

The p column is the p-value of a one-sided t-test of H0: mean <= 94%. A small p says the runs are
evidence that the mean exceeds 94%; it is not the probability that it does.
"""
import argparse
import collections
import json
import os
import sys

import stats


class BadRecord(Exception):
    """A record file that cannot be read; the message names the file and line."""


def read_jsonl(path):
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise BadRecord(f'{path}:{number}: not a complete JSON line (was the run killed while '
                                f'writing it?); remove that line to use the rest') from None
    return rows


def is_record(path):
    return os.path.isfile(os.path.join(path, 'config.json')) or os.path.isfile(os.path.join(path, 'runs.jsonl'))


def records_in(path):
    if is_record(path):
        return [path]
    return sorted(os.path.join(path, d) for d in os.listdir(path) if is_record(os.path.join(path, d)))


def record_status(record):
    """complete, interrupted, diverged, or unfinished (no summary.json: still running, or killed)."""
    path = os.path.join(record, 'summary.json')
    if not os.path.isfile(path):
        return 'unfinished'
    try:
        with open(path) as fh:
            return json.load(fh).get('status', 'complete')  # records from before the status field were complete
    except json.JSONDecodeError:
        raise BadRecord(f'{path}: not valid JSON') from None


def read_json(path, default=None):
    """A record's JSON file, or `default` when it is missing or torn."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def differing(dicts):
    """The keys whose values are not the same in all of these dicts (a key some lack counts)."""
    keys = set().union(*dicts) if dicts else set()
    return sorted(k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1)


# What a time depends on besides the code and the settings (record.environment's keys): the GPU and
# the software that drives it. Times of records that differ in one of these are never pooled.
MACHINE_KEYS = ('device', 'torch', 'triton', 'cuda', 'cudnn')


def pooling_notes(records, runs):
    """What a group pools that should not be pooled, in words: seeds in more than one record,
    records of different settings (config.json's hyp and image counts), records of different code
    (env.json's code), records made on different machines (env.json's MACHINE_KEYS)."""
    notes = []
    twice = sorted(seed for seed, n in collections.Counter(run['seed'] for run in runs).items() if n > 1)
    if twice:
        notes.append(f'seed(s) {", ".join(map(str, twice))} finished in more than one run: each counted every time')
    configs = [read_json(os.path.join(r, 'config.json'), {}) for r in records]
    hyps = [{**c['hyp'], 'n_train': c.get('n_train'), 'n_test': c.get('n_test')} for c in configs if c.get('hyp')]
    if differing(hyps):
        notes.append(f'its records differ in settings ({", ".join(differing(hyps))})')
    envs = [read_json(os.path.join(r, 'env.json'), {}) for r in records]
    codes = [e['code'] for e in envs if e.get('code')]
    changed = [f for f in differing(codes) if all(f in c for c in codes)]  # a file only some imported is no difference
    if changed:
        notes.append(f'its records ran different code ({", ".join(changed)})')
    machines = differing([{k: e.get(k) for k in MACHINE_KEYS} for e in envs if e])
    if machines:
        notes.append(f'its records were made on different machines ({", ".join(machines)})')
    return notes


def summarize_group(path):
    records = records_in(path)
    incomplete = [(rec, status) for rec in records if (status := record_status(rec)) != 'complete']
    runs, epochs = [], []
    for rec in records:
        finished = read_jsonl(os.path.join(rec, 'runs.jsonl'))
        seeds = {r['seed'] for r in finished}
        runs += finished
        epochs += [e for e in read_jsonl(os.path.join(rec, 'epochs.jsonl')) if e.get('seed') in seeds]  # not a cut run's
    if not runs:
        return None
    acc = stats.summarize([r['test_acc'] for r in runs])
    sec = stats.summarize([r['time_s'] for r in runs])
    p = stats.t_test_greater([r['test_acc'] for r in runs], 0.94)[1] if len(runs) > 1 else float('nan')
    by_epoch = {}
    for row in epochs:
        by_epoch.setdefault(row['epoch'], []).append(row.get('kept', 1.0))
    # compact BLF: steps whose rule asked for more rows than the pass (sized from an earlier step) held
    blf_epochs = [row for row in epochs if 'steps' in row]
    truncated = {'steps': sum(row['truncated_steps'] for row in blf_epochs), 'of': sum(row['steps'] for row in blf_epochs)}
    # compact BLF: how many steps old the count was that sized each pass (1: the previous step's)
    lagged = [row for row in blf_epochs if 'count_lag' in row]
    count_lag = {'mean': sum(row['count_lag'] * row['steps'] for row in lagged) / sum(row['steps'] for row in lagged),
                 'max': max(row['count_lag_max'] for row in lagged)} if lagged else None
    kept_curve = [sum(v) / len(v) for _, v in sorted(by_epoch.items())]
    # --compile: graphs built inside a run's clock (warm-up should have built them all) make its time a compile time
    compiled = [r['graphs_compiled_in_clock'] for r in runs if r.get('graphs_compiled_in_clock')]
    return {'group': path, 'records': len(records), 'acc': acc, 'p_gt_94': p, 'time': sec, 'kept_curve': kept_curve,
            'incomplete': incomplete, 'pooling': pooling_notes(records, runs),
            'compiled_in_clock': {'runs': len(compiled), 'graphs': sum(compiled)}, 'truncated': truncated,
            'count_lag': count_lag}


class OneLineParser(argparse.ArgumentParser):
    """A command-line mistake is one line and exit code 2, as in train.py (cli.py has the same class, but
    it imports torch, which this file and reproduce.py do without; and a change to a file train.py
    imports would set aside the GPU records made so far)."""

    def error(self, message):
        self.exit(2, f'error: {message} (see --help)\n')


def main(argv=None):
    ap = OneLineParser(description=__doc__.split('\n')[0])
    ap.add_argument('groups', nargs='+', help='record folders or folders of record folders')
    args = ap.parse_args(argv)
    rows = []
    for g in args.groups:
        if not os.path.isdir(g):
            sys.exit(f'error: {g} is not a folder')
        try:
            row = summarize_group(g)
        except BadRecord as e:
            sys.exit(f'error: {e}')
        if row is None:
            sys.exit(f'error: no finished run under {g}')
        rows.append(row)
    print('| group | runs | accuracy mean ± std [min, max] | p, H0: mean <= 94% | time median [min, max] s | kept fraction by epoch |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        a, t = r['acc'], r['time']
        curve = ' '.join(f'{k:.2f}' for k in r['kept_curve'])
        print(f'| {r["group"]} | {a["n"]} | {a["mean"]:.4f} ± {a["std"]:.4f} [{a["min"]:.4f}, {a["max"]:.4f}] | '
              f'{r["p_gt_94"]:.3g} | {t["median"]:.2f} [{t["min"]:.2f}, {t["max"]:.2f}] | {curve} |')
    for r in rows:
        for record, status in r['incomplete']:
            print(f'\nnote: {record} is {status}: only its finished runs are counted')
        for note in r['pooling']:
            print(f'\nwarning: {r["group"]} pools what should not be pooled: {note}')
        if r['count_lag']:
            print(f'\ncount lag: {r["group"]}: the compact passes were sized from counts {r["count_lag"]["mean"]:.2f} steps '
                  f'old on average, at most {r["count_lag"]["max"]}')
        if r['truncated']['steps']:
            print(f'\nnote: {r["group"]}: {r["truncated"]["steps"]} of {r["truncated"]["of"]} BLF steps trained fewer rows '
                  'than the rule kept (truncated: the compact pass was sized from an earlier step\'s count)')
        if r['compiled_in_clock']['runs']:
            print(f'\nwarning: {r["group"]}: {r["compiled_in_clock"]["graphs"]} graph(s) compiled inside the clock of '
                  f'{r["compiled_in_clock"]["runs"]} run(s): their times include compiling')


if __name__ == '__main__':
    main()
