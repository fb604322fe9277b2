"""The run record: a new folder per invocation with the command, the resolved configuration, the
environment and what code ran, the log, one row per epoch and one result per run, and a summary
whose status says how the invocation ended (complete, interrupted, diverged, failed). Also the
table train.py prints, and how the runs of several torchrun ranks become one record.
"""


import glob
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tokenize

import torch

import stats
from cli import UserError

HERE = os.path.dirname(os.path.abspath(__file__))



# ----------------------------------------------------------------------------------------------
# The table


COLUMNS = [('epoch', '5d'), ('lr', '8.4f'), ('train_loss', '10.4f'), ('train_acc', '9.4f'),
           ('test_acc', '8.4f'), ('epoch_s', '8.3f'), ('total_s', '8.3f')]


BLF_COLUMNS = [('kept', '6.3f'), ('kept_loss_frac', '14.3f'), ('full_loss', '9.4f'), ('kept_loss', '9.4f')]


def table_columns(blf_on):
    return COLUMNS[:5] + (BLF_COLUMNS if blf_on else []) + COLUMNS[5:]


def table_header(blf_on=False):
    return '  '.join(f'{name:>{int(fmt.split(".")[0].rstrip("d"))}}' for name, fmt in table_columns(blf_on))


def format_row(row, blf_on=False):
    # epochs before --blf-start-epoch train on everything: show them as keeping all of it
    filled = {'kept': 1.0, 'kept_loss_frac': 1.0, 'full_loss': row['train_loss'], 'kept_loss': row['train_loss'], **row}
    return '  '.join(f'{filled[name]:{fmt}}' for name, fmt in table_columns(blf_on))



# ----------------------------------------------------------------------------------------------
# The record


def run_quietly(cmd, cwd=HERE):
    """stdout of a helper command (git, nvidia-smi), or None when it cannot run or fails."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode in (0, 1) else None  # git diff --no-index exits 1 on a difference


def environment(device):
    def run(cmd):
        out = run_quietly(cmd)
        return None if out is None else out.strip()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.device(device).type == 'cuda'
    return {'git_commit': run(['git', 'rev-parse', 'HEAD']),
            'git_dirty': bool(run(['git', 'status', '--porcelain', '--untracked-files=no'])),
            'python': platform.python_version(), 'torch': torch.__version__, 'triton': triton_version,
            'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version() if cuda else None,
            'device': torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
            'nvidia_smi': run(['nvidia-smi']) if cuda else None,
            'host': platform.node(), 'platform': platform.platform()}


def new_folder(parent, prefix=''):
    """A folder that did not exist before, named by the time: parent/<prefix><date>-<time>[-N]."""
    stamp = prefix + time.strftime('%Y%m%d-%H%M%S')
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f'cannot create the output folder {parent}: {e.strerror}') from None
    for suffix in [''] + [f'-{i}' for i in range(2, 1000)]:
        try:
            path = os.path.join(parent, stamp + suffix)
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f'too many folders named {stamp}-N in {parent}')


def save_source_state(path, root=HERE):
    """What code ran, without copying the repository into every record: the git commit is in
    env.json, and a tree that differs from it adds git.diff here (tracked changes and new .py
    files). Outside a git checkout there is no commit to name, so the .py files are copied into
    source/. Returns 'clean', 'diff' or 'copied'."""
    if run_quietly(['git', 'rev-parse', 'HEAD'], root) is None:
        for rel in sorted(glob.glob('*.py', root_dir=root) + glob.glob('kernels/*.py', root_dir=root)):
            dest = os.path.join(path, 'source', rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.join(root, rel), dest)
        return 'copied'
    diff = run_quietly(['git', 'diff', 'HEAD', '--binary'], root) or ''
    for rel in (run_quietly(['git', 'ls-files', '--others', '--exclude-standard', '--', '*.py'], root) or '').split():
        diff += run_quietly(['git', 'diff', '--no-index', '--binary', '/dev/null', rel], root) or ''
    if not diff:
        return 'clean'
    with open(os.path.join(path, 'git.diff'), 'w') as fh:
        fh.write(diff)
    return 'diff'


def code_hash(path):
    """A short hash of a Python file's code: its text less comments, blank lines and trailing
    spaces, so that editing a comment is not other code (a docstring is). Comments are found by
    Python's tokenizer, the same on every version (a syntax tree's dump is not). Of its bytes where
    it does not tokenize; None if it is missing."""
    try:
        with open(path, 'rb') as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    try:
        comments = [t for t in tokenize.tokenize(io.BytesIO(text).readline) if t.type == tokenize.COMMENT]
        lines = text.decode('utf-8').splitlines()
        for t in comments:  # a comment runs to the end of its line
            row, col = t.start
            lines[row - 1] = lines[row - 1][:col]
        text = '\n'.join(line.rstrip() for line in lines if line.strip()).encode()
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        pass
    return hashlib.sha256(text).hexdigest()[:16]


def code_hashes(files, root=HERE):
    """{relative path: code_hash} of these files of the repository."""
    return {rel: code_hash(os.path.join(root, rel)) for rel in sorted(files)}


def loaded_code(root=HERE):
    """The repository's own modules this process has imported (relative paths), the tests and
    anything under a hidden folder (a virtual environment in the checkout) left out: what the run
    is made of, for env.json's `code`."""
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, '__file__', None)
        if not isinstance(path, str) or not os.path.isabs(path) or not path.endswith('.py'):  # torch.ops names '_ops.py'
            continue
        parts = os.path.relpath(path, root).split(os.sep)
        if parts[0] not in ('..', 'tests') and not any(p.startswith('.') or p == 'site-packages' for p in parts):
            files.add(os.path.join(*parts))
    return sorted(files)


class Record:
    """A new folder per invocation (never reuses one); the log, JSON and what code ran."""

    def __init__(self, out_dir):
        self.path = new_folder(out_dir)
        self.log_file = open(os.path.join(self.path, 'log.txt'), 'w')

    def log(self, line=''):
        print(line, flush=True)
        self.log_file.write(line + '\n')
        self.log_file.flush()

    def write_json(self, name, obj):
        with open(os.path.join(self.path, name), 'w') as fh:
            json.dump(obj, fh, indent=1)

    def append_jsonl(self, name, obj):
        with open(os.path.join(self.path, name), 'a') as fh:
            fh.write(json.dumps(obj) + '\n')


class Follower:
    """What a rank other than 0 holds in place of a Record: it prints and writes nothing (rank 0
    gathers its runs at the end)."""
    path = None

    def log(self, line=''):
        pass

    def append_jsonl(self, name, obj):
        pass

    def write_json(self, name, obj):
        pass


def finish_record(record, results, status, runs_planned, errors=None):
    """summary.json: the status (complete, interrupted, diverged, failed), and the statistics of
    the runs that finished, if any."""
    summary = {'status': status, 'runs_finished': len(results), 'runs_planned': runs_planned}
    if errors:
        summary['errors'] = errors
    if results:
        summary.update(accuracy=stats.summarize([r['test_acc'] for r in results]),
                       time_s=stats.summarize([r['time_s'] for r in results]))
    if len(results) > 1:
        t, p = stats.t_test_greater([r['test_acc'] for r in results], 0.94)
        summary['t_test_mean_gt_0.94'] = {'t': t, 'p': p}
        if status == 'complete':
            a, s = summary['accuracy'], summary['time_s']
            record.log(f'\n{len(results)} runs: accuracy mean {a["mean"]:.4f} std {a["std"]:.4f} min {a["min"]:.4f} '
                       f'max {a["max"]:.4f} (one-sided t-test mean > 0.94: p = {p:.3g}); '
                       f'time median {s["median"]:.3f} s (min {s["min"]:.3f}, max {s["max"]:.3f})')
    if status != 'complete':
        record.log(f'# {status} after {len(results)} of {runs_planned} run(s)')
    record.write_json('summary.json', summary)



# ----------------------------------------------------------------------------------------------
# Several ranks, one record


class RankFailed(Exception):
    """Another rank failed; rank 0 has said so in one line, this rank only exits non-zero."""


def gather_runs(group, record, env, device, results, epochs, error, runs_planned):
    """Seeds over ranks: every rank's runs, epochs and error to rank 0, which writes them into the
    one record in seed order (as one process running all the seeds would) and says which rank failed."""
    parts = group.gather({'rank': group.rank, 'device': str(device), 'gpu': env['device'], 'results': results,
                          'epochs': epochs, 'error': error})
    everything = sorted((r for p in parts for r in p['results']), key=lambda r: r['seed'])
    errors = [p for p in parts if p['error']]
    if group.leader:
        for part in parts[1:]:
            for row in part['epochs']:
                record.append_jsonl('epochs.jsonl', row)
        for result in everything:
            record.append_jsonl('runs.jsonl', result)
            if result['rank'] != 0:
                record.log(f'seed {result["seed"]} (rank {result["rank"]}, {result["device"]}): test accuracy '
                           f'{result["test_acc"]:.4f}, time {result["time_s"]:.3f} s')
        env['ranks'] = [{k: p[k] for k in ('rank', 'device', 'gpu')} for p in parts]
        record.write_json('env.json', env)
    if errors:
        first = errors[0]
        finish_record(record, everything, 'failed', runs_planned,
                      errors=[{k: p[k] for k in ('rank', 'device', 'error')} for p in errors])
        if group.leader:
            raise UserError(f'rank {first["rank"]} ({first["device"]}): {first["error"]}')
        raise RankFailed()
    return everything
