"""Every number this repo publishes, from one command on a GPU, in stages of a few minutes each.

    python reproduce.py --data-dir /tmp/data --out runs/reproduce             # every stage, in order
    python reproduce.py --data-dir /tmp/data --out runs/reproduce --stage core blf
    python reproduce.py --list                                                # stages, what each proves, minutes
    python reproduce.py --smoke --device cpu --data-dir data --out /tmp/smoke # every stage at toy size

Stages run in the order of the value of what they prove. Each writes its records under
OUT/<stage>/ (train.py records, logs, tables), its key figures to OUT/<stage>/done.json and one
line to OUT/summary.md. After each stage OUT is packed into ONE file, OUT/reproduce.tgz (records,
logs, summary), to carry the whole of it back at once. Every training stage reports train.py's
clock (CUDA events around the training steps and the final evaluation, airbench's rules; see README).

Resuming: a stage completed in OUT is skipped; one that failed or was cut short runs again, and
within it every seed already finished in OUT is not run again, so no work is lost and no seed is
counted twice. Only runs of the same code are pooled: a record whose code (env.json's per-file
hashes of what train.py imported) differs from the code now is set aside and its seeds run again,
and a stage completed with other code runs again (keeping its records of unchanged code), so a
fix made between two attempts never mixes with the runs it fixed. OUT may be moved between two
attempts (its records are pooled by the folder they are in, not by the path they were written to),
but not to another machine: OUT/machine.json names the GPU and the software versions of its first
run, and a run on another GPU or with other versions stops at once rather than pool two machines'
timings (give it another --out: results/<gpu>/reproduce, <gpu> as machine_folder names it).

--budget-min M stops the whole run after M minutes (as SIGTERM from `timeout` does): the running
command gets Ctrl-C and keeps its finished runs, OUT is packed, the exit code is 3, and the same
command resumes it. A stage that would start over when cut (STARTS_OVER) is deferred to the next
run when its estimate does not fit in the time left. Each stage also stops after
--stage-timeout-min (default 9). The --list estimates are for an H100 and are guesses until a GPU
has measured them.
"""
import argparse
import csv
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback

import summarize

HERE = os.path.dirname(os.path.abspath(__file__))
PACK = 'reproduce.tgz'

# Toy sizes for --smoke: the same stages and commands, small enough for a CPU in CI.
SMOKE_TRAIN = ['--n-train', '256', '--n-test', '100', '--epochs', '2', '--width', '0.125', '--batch-size', '64',
               '--blf-bucket', '16']
SMOKE_BENCH = ['--batch-sizes', '16,33', '--reps', '2']
SMOKE_PROFILE = ['--batch-sizes', '8,16', '--ablation-batch', '8', '--steps', '3', '--epochs', '1', '--n-train', '64',
                 '--width', '0.125']

BLF_CONFIGS = {  # the BatchLossFilter comparison: 30 epochs, the thread's p = 0.9
    'baseline': [],
    'blf-compact': ['--blf', '0.9'],
    'blf-mask': ['--blf', '0.9', '--blf-mode', 'mask'],
    'random-subset': ['--blf', '0.9', '--subset-control', 'random'],
}
# The thread's other findings and requests (shared seeds: the BatchLossFilter forum thread), 30 epochs too
BLF_MIXUP_CONFIGS = {  # post 7: with Mixup, 90% of the loss came from 86% of the samples, and BLF did not help
    'mixup': ['--mixup', '0.4'],
    'mixup-blf': ['--mixup', '0.4', '--blf', '0.9'],
}
BLF_VARIANT_CONFIGS = {  # posts 9 and 10, beside BLF as it is
    'blf-compact': ['--blf', '0.9'],
    'blf-bottom': ['--blf', '0.9', '--blf-bottom', '0.1'],  # post 9: the bottom-N losses kept too
    'blf-curriculum': ['--blf', '0.9', '--blf-schedule', '0:1,10:0.9'],  # post 10: every sample early, the hard ones later
}

LADDER = {  # the tricks' ablation ladder (results/README.md): each rung adds to the one before
    '0-baseline': [],
    '1-smoothing': ['--label-smoothing', '0.2'],
    '2-ema': ['--label-smoothing', '0.2', '--ema', '0.99'],
    '3-tta2': ['--label-smoothing', '0.2', '--ema', '0.99', '--tta', '2'],
    '4-bn-groups': ['--label-smoothing', '0.2', '--ema', '0.99', '--tta', '2', '--bn-lr-scale', '64',
                    '--bn-weight-decay', '0'],
    '5-epochs-16': ['--label-smoothing', '0.2', '--ema', '0.99', '--tta', '2', '--bn-lr-scale', '64',
                    '--bn-weight-decay', '0', '--epochs', '16'],
    '5-epochs-12': ['--label-smoothing', '0.2', '--ema', '0.99', '--tta', '2', '--bn-lr-scale', '64',
                    '--bn-weight-decay', '0', '--epochs', '12'],
}



def post8_ladder():
    """Myrtle post 8's "bag of tricks", one published step per rung, each adding to the one before
    (shared ANCHORS: the step, then its V100 time and epochs). Where the post does not say, this
    repo's choice is named in the rung: the default lr shape stretched to each rung's epochs, and
    the biases' lr x64 / weight decay / 64 joining the frozen scales (as the final recipe has them).
    The last rung is the myrtle-tricks recipe itself."""
    steps = [('0-baseline', [], 24),                                                   # 75 s
             ('1-pool-before-bn', ['--pool-before-bn', '1'], 24),                      # 64 s
             ('2-smoothing', ['--label-smoothing', '0.2'], 23),                        # 59 s
             ('3-celu', ['--activation', 'celu'], 20),                                 # 52 s
             ('4-ghost-bn-lr-x1.5', ['--ghost-bn', '32', '--lr', '0.6'], 18),          # 46 s
             ('5-frozen-bn-scale', ['--frozen-bn-scale', '1', '--bn-lr-scale', '64', '--bn-weight-decay', '0.015625'], 17),  # 43 s
             ('6-whitening', ['--whiten', '3'], 15),                                   # 39 s
             ('7-lr-x1.5-cutout-5', ['--lr', '0.9', '--cutout', '5'], 14),             # 36 s
             ('8-ema', ['--ema', str(0.99 ** 5), '--ema-every', '5'], 13)]             # 33.5 s
    rungs, flags = {}, []
    for name, added, epochs in steps:
        flags = flags + added
        rungs[name] = flags + ['--epochs', str(epochs)]
    rungs['9-tta-no-cutout-10-epochs'] = ['--recipe', 'myrtle-tricks']              # 26 s, 94.1%
    return rungs


POST8_LADDER = post8_ladder()


class StageFailed(Exception):
    """A command of the stage failed or a check of its output did not hold; the stage runs again next time."""


class StageSkipped(Exception):
    """The stage has nothing to run with these options (airbench without --airbench); it runs next time."""


class OutOfTime(Exception):
    """--budget-min is spent, or the process was told to stop (SIGTERM, e.g. from `timeout`): the
    running command was stopped with Ctrl-C, so its record keeps the runs it finished; the stage is
    left incomplete and a second run resumes it."""


def on_sigterm(signum, frame):
    raise OutOfTime('stopped by SIGTERM')


STOP_GRACE_S = 20  # after Ctrl-C, how long a command has to close its record before it is killed


class Context:
    """What every stage needs: the options, its output folder, and a way to run a logged command."""

    def __init__(self, args, stage, budget_end=None):
        self.args, self.smoke, self.device = args, args.smoke, args.device
        self.dir = os.path.join(args.out, stage)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, 'log.txt')
        self.deadline = time.monotonic() + 60 * args.stage_timeout_min
        self.budget_end = budget_end  # time.monotonic() when --budget-min is spent, or None

    def log(self, text):
        print(text, flush=True)
        with open(self.log_path, 'a') as log:
            log.write(text + '\n')

    def run(self, cmd, env=None, check=True, cwd=HERE, stop_after=None, keep_line=None, finished=None, wanted=None):
        """Run a command (from the repo root by default), its output to the console and to the
        stage's log.txt. When the stage's time, the budget or stop_after runs out the command gets
        Ctrl-C (train.py then closes its record with the runs it finished) and, STOP_GRACE_S later,
        is killed. The stage's time raises StageFailed, the budget (or SIGTERM) OutOfTime.
        stop_after=S (for scripts that run more seeds than a stage has time for): after S seconds
        what it printed is returned with exit code None. finished: the count of runs that the
        output so far shows finished. With it the command is stopped, and returned as after S, once
        it has finished `wanted` runs; and a share S that ends before its first run has finished
        lasts until that run has (a warm-up and compiling must not leave it with none), within the
        stage's time and the budget. keep_line: a filter of the output's lines (the line, another
        line, or None to drop it) applied before anything is printed, logged, counted or returned."""
        line = '$ ' + shlex.join(cmd[1:] if cmd[0] == sys.executable else cmd)
        self.log(line)
        now = time.monotonic()
        share_end = now + stop_after if stop_after is not None else None

        def next_limit():
            limits = [(self.deadline, 'stage'), (share_end, 'share'), (self.budget_end, 'budget')]
            return min((t, w) for t, w in limits if t is not None)

        def ran_out(why):
            return (OutOfTime('--budget-min is spent') if why == 'budget' else
                    StageFailed(f'{line[2:]} ran past --stage-timeout-min {self.args.stage_timeout_min}'))
        end, why = next_limit()
        if end <= now:
            raise ran_out(why)
        proc = spawn(cmd, cwd, {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})})
        out = []
        runs, runs_to_stop_at = 0, wanted or float('inf')  # runs: how many `finished` counted so far
        with open(self.log_path, 'a') as log:
            def echo(lines):
                for text in lines:
                    text = keep_line(text) if keep_line else text
                    if text is None:
                        continue
                    print(text, end='', flush=True)
                    log.write(text)
                    out.append(text)
            try:
                while True:
                    end, why = next_limit()
                    try:
                        for text in iter_lines(proc, end - time.monotonic()):
                            echo([text])
                            runs = finished(''.join(out)) if finished else 0
                            if runs >= runs_to_stop_at:
                                echo([f'# stopped: {runs} finished run(s), what the stage needs of it\n'])
                                stop(proc, echo)
                                return None, ''.join(out)
                        break
                    except TimeoutError:
                        if why != 'share' or finished is None or runs > 0:
                            raise
                        echo([f'# its share of {stop_after:.0f} s is over before its first run has finished: '
                              'it goes on until one has, within the stage\'s time\n'])
                        share_end, runs_to_stop_at = None, 1
            except OutOfTime:  # SIGTERM
                stop(proc, echo)
                raise
            except TimeoutError:
                stop(proc, echo)
                if why == 'share':
                    echo([f'# stopped after {stop_after:.0f} s (the stage\'s share of time for it)\n'])
                    return None, ''.join(out)
                echo(['# stopped: ' + ('--budget-min is spent' if why == 'budget' else
                                       f'the stage ran past --stage-timeout-min {self.args.stage_timeout_min}') + '\n'])
                raise ran_out(why) from None
            except KeyboardInterrupt:  # Ctrl-C in a terminal reached the command too: let it close its record
                stop(proc, echo, interrupt=False)
                raise
        if check and proc.returncode != 0:
            raise StageFailed(f'{line[2:]} exited with {proc.returncode}')
        return proc.returncode, ''.join(out)

    def seconds_left(self):
        """Until the stage's time or the budget runs out, whichever comes first."""
        return min(t for t in (self.deadline, self.budget_end) if t is not None) - time.monotonic()

    def train(self, out, flags, runs=None, seed=None):
        """train.py with the stage's flags, for seeds seed..seed+runs-1 (see train_all)."""
        self.train_all([(out, flags, runs, seed)])

    def train_all(self, groups):
        """[(out, flags, runs, first seed)]: train.py for each group's seeds, in this order, in one
        process (train_many.py: the start-up, cuDNN's autotuning included, is paid once); --smoke
        appends the toy sizes last, so they win. Seeds already finished in `out` (a run cut short
        by the budget) are not run again. With several GPUs, torchrun spreads each group's seeds
        over them, one group at a time."""
        blocks = []  # (train.py's argv, how many seeds), in the order given
        for out, flags, runs, seed in groups:
            first = seed or 0
            wanted = range(first, first + (min(runs or 1, 2) if self.smoke else runs or 1))
            finished = finished_seeds(out, self.train_command(out, flags), self.log)
            missing = [s for s in wanted if s not in finished]
            if len(missing) < len(wanted):
                self.log(f'# resumed: seed(s) {", ".join(str(s) for s in wanted if s in finished)} already finished in {out}')
            blocks += [([*self.train_command(out, flags), '--runs', str(count), '--seed', str(start)], count)
                       for start, count in contiguous_blocks(missing)]
        gpus = gpu_count() if self.device == 'cuda' and not self.smoke else 1
        if gpus > 1:
            for argv, count in blocks:
                launcher = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(min(gpus, count))]
                self.run([sys.executable, *(launcher if count > 1 else []), *argv])
        elif len(blocks) == 1:
            self.run([sys.executable, *blocks[0][0]])
        elif blocks:
            self.run([sys.executable, 'train_many.py', *(shlex.join(argv[1:]) for argv, _ in blocks)])

    def train_command(self, out, flags):
        """train.py and its flags, without the seeds: what every record in `out` must have been made by."""
        return ['train.py', '--data-dir', self.args.data_dir, '--no-download', '--device', self.device,
                '--out-dir', out, *flags, *(SMOKE_TRAIN if self.smoke else [])]


def stop(proc, echo, interrupt=True):
    """Ctrl-C, so that train.py closes its record with the runs it finished; kill it if it has not
    ended STOP_GRACE_S later. What it prints meanwhile still goes to the log."""
    if proc.poll() is not None:
        return
    if interrupt:
        proc.send_signal(signal.SIGINT)
    try:
        echo(iter_lines(proc, STOP_GRACE_S))
    except (TimeoutError, OutOfTime):
        pass
    if proc.poll() is None:
        kill_tree(proc)


def proc_stat(pid):
    """The fields of Linux's /proc/PID/stat after the process's name: [state, ppid, ...]. The name,
    in parentheses, may itself hold spaces and parentheses, so the split is at the last ')'.
    OSError when there is no such process."""
    with open(f'/proc/{pid}/stat') as fh:
        return fh.read().rsplit(')', 1)[1].split()


def descendants(pid):
    """Every process below pid, read from Linux's /proc ([] where there is none). torchrun starts
    each worker in a session of its own: killing the launcher, or its process group, leaves the
    workers running, holding their GPU and the launcher's output pipe."""
    children = {}
    try:
        entries = [e for e in os.listdir('/proc') if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            ppid = int(proc_stat(entry)[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc):
    """SIGKILL proc and every process under it (found before any is killed: an orphan loses its
    parent link), then reap proc."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def contiguous_blocks(seeds):
    """[0, 1, 2, 5, 6] -> [(0, 3), (5, 2)]: (first seed, count) for train.py's --seed and --runs."""
    blocks = []
    for s in seeds:
        if blocks and blocks[-1][0] + blocks[-1][1] == s:
            blocks[-1] = (blocks[-1][0], blocks[-1][1] + 1)
        else:
            blocks.append((s, 1))
    return blocks


def without_seeds(argv):
    """A train.py command line less what may differ between the calls of one group: --seed and --runs,
    and the paths (--data-dir, --out-dir), so that an OUT moved elsewhere (a GPU's records unpacked
    into results/, resumed there) still pools its records: a record's folder already says which
    group it belongs to."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ('--seed', '--runs', '--data-dir', '--out-dir'):
            skip = True
        elif not arg.startswith(('--seed=', '--runs=', '--data-dir=', '--out-dir=')):
            kept.append(arg)
    return kept


def finished_seeds(out, command, log):
    """The seeds with a finished run in the records under `out`. Every record there must come from
    `command` (less its seeds), or the stage fails rather than pool different configurations. A
    record with a torn line (its process was killed while writing) is moved to out/set-aside/."""
    if not os.path.isdir(out):
        return set()
    seeds = set()
    for record in summarize.records_in(out):
        try:
            with open(os.path.join(record, 'command.txt')) as fh:
                made_by = shlex.split(fh.read())[1:]  # 'python train.py ...' -> 'train.py ...'
        except FileNotFoundError:
            made_by = None
        if made_by is None or without_seeds(made_by) != without_seeds(command):
            raise StageFailed(f'{record} was not made by this stage\'s command ({shlex.join(command)}): '
                              f'move it away, or use another --out')
        try:
            rows = summarize.read_jsonl(os.path.join(record, 'runs.jsonl'))
        except summarize.BadRecord as e:
            set_aside(out, record, str(e), log)
            continue
        changed = code_changed_since(record)
        if changed:
            set_aside(out, record, f'{record} was made by other code ({few(changed)})', log)
            continue
        seeds.update(row['seed'] for row in rows)
    return seeds


def set_aside(out, record, why, log):
    """Move a record that must not be pooled to out/set-aside/ (kept, not deleted); its seeds run again."""
    aside = os.path.join(out, 'set-aside')
    os.makedirs(aside, exist_ok=True)
    os.replace(record, os.path.join(aside, os.path.basename(record)))
    log(f'# {why}: its record is moved to {aside} and its seeds run again')


def code_changed_since(record_path):
    """The files of the code a record ran (env.json's `code`) that are not the same code now:
    a fix made between two attempts must not pool runs of the old code with runs of the new.
    Edits of comments or blank lines do not count (record.code_hash)."""
    import record
    try:
        with open(os.path.join(record_path, 'env.json')) as fh:
            then = json.load(fh).get('code')
    except (FileNotFoundError, json.JSONDecodeError):
        then = None
    if not then:
        return ['its env.json names no code']
    return code_differences(then, record.code_hashes(then))


def repo_code():
    """{path: code hash} of the repository's Python code, tests included and this runner left out:
    what a completed stage was made with. A stage completed with other code runs again."""
    import glob
    import record
    files = {rel for pattern in ('*.py', 'kernels/*.py', 'tests/*.py', 'tests/*/*.py', 'shims/*.py', 'shims/*/*.py')
             for rel in glob.glob(pattern, root_dir=HERE)} - {'reproduce.py'}
    return record.code_hashes(files)


def code_differences(then, now):
    """The files that differ between two {path: code hash}: changed, gone or new."""
    return sorted(rel for rel in then.keys() | now.keys() if then.get(rel) != now.get(rel))


def few(names, most=4):
    """'a, b, c, d and 9 more'."""
    return ', '.join(names[:most]) + (f' and {len(names) - most} more' if len(names) > most else '')


def code_digest(code):
    return hashlib.sha256(json.dumps(code, sort_keys=True).encode()).hexdigest()[:16]


def gpu_count():
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def let_commands_take_ctrl_c():
    """A shell without job control starts a command put in the background (`... &`) with Ctrl-C
    ignored, and every process it starts inherits that: a published airbench script sat out the
    Ctrl-C that ends its share and was killed STOP_GRACE_S later (seen on the CPU). A handler that
    does nothing leaves this process as it was, and is not inherited as an ignored signal is: the
    commands start with Ctrl-C's default. (train.py sets its own handler; `timeout` resets it too.)
    Only the main thread may set a handler; reproduce.py spawns from no other."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: None)


def spawn(cmd, cwd, env):
    """Start a command whose output (stderr with stdout) iter_lines reads (a raw pipe, no buffer),
    and which takes the Ctrl-C that stop() sends it."""
    let_commands_take_ctrl_c()
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0, env=env)


LINE_END = re.compile(rb'\r\n|\n|\r(?!$)')  # universal newlines; a '\r' at the end may be half of a '\r\n'


def iter_lines(proc, timeout):
    """The output of a spawn()ed process line by line as it comes ('\n'-ended, as text mode gives
    them); TimeoutError once `timeout` seconds have passed. The pipe is read in raw chunks and split
    here, what follows the last line end waiting in proc.pending for the next read: select() sees
    only the pipe, so lines that a buffered readline had taken in with the first would have waited,
    unseen, for more output (a script's finished runs, counted as they come, among them)."""
    import selectors
    end = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            pending = getattr(proc, 'pending', b'')
            match = LINE_END.search(pending)
            if match:
                proc.pending = pending[match.end():]
                yield pending[:match.start()].decode(errors='replace') + '\n'
                continue
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if sel.select(timeout=min(left, 5)):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                proc.pending = pending + chunk
    proc.pending = b''
    if pending:  # the last line: no line end, or a lone '\r'
        text = pending.decode(errors='replace')
        yield text[:-1] + '\n' if text.endswith('\r') else text
    proc.wait()


# ----------------------------------------------------------------------------------------------
# Reading the records back

def group_figures(path):
    """Accuracy and time statistics of a group of train.py records (a folder of record folders)."""
    try:
        group = summarize.summarize_group(path)
    except summarize.BadRecord as e:
        raise StageFailed(str(e)) from None
    if group is None:
        raise StageFailed(f'no finished runs under {path}')
    if group['pooling']:  # finished_seeds keeps this from happening; a figure must never rest on it
        raise StageFailed(f'{path} pools what should not be pooled: {"; ".join(group["pooling"])}')
    return {'acc': group['acc'], 'p_gt_94': group['p_gt_94'], 'time_s': group['time'],
            'kept_last_epoch': group['kept_curve'][-1] if group['kept_curve'] else None,
            'compiled_in_clock': group['compiled_in_clock'], 'truncated': group['truncated'], 'count_lag': group['count_lag']}


def describe(name, fig):
    a, t = fig['acc'], fig['time_s']
    text = (f'{name}: acc {a["mean"]:.4f} ± {a["std"]:.4f} (n={a["n"]}), '
            f'time median {t["median"]:.2f} s [{t["min"]:.2f}, {t["max"]:.2f}]')
    if fig.get('kept_last_epoch') not in (None, 1.0):
        text += f', kept {fig["kept_last_epoch"]:.2f} in the last epoch'
    if fig.get('count_lag'):
        text += f', passes sized from counts {fig["count_lag"]["mean"]:.2f} steps old (at most {fig["count_lag"]["max"]})'
    if fig.get('truncated', {}).get('steps'):
        text += f', {fig["truncated"]["steps"]} of {fig["truncated"]["of"]} BLF steps truncated'
    if fig.get('compiled_in_clock', {}).get('runs'):
        text += f', {fig["compiled_in_clock"]["graphs"]} graph(s) compiled inside the clock of {fig["compiled_in_clock"]["runs"]} run(s)'
    return text


# ----------------------------------------------------------------------------------------------
# Stages

# The GPU tests by stage (pytest -m): those of --compile each compile a recipe's graphs, which takes
# minutes, so they wait in their own stage until the stages that need no compiler have run.
# `native`: the kernel tests, which run on the CPU under Triton's interpreter and natively on a GPU
GPU_TESTS = {'tests': '(gpu or native) and not compile', 'tests-compile': 'gpu and compile'}


def stage_tests(ctx):
    """The GPU tests but those of --compile, and the kernel tests natively: no host sync in whole
    epochs, the kernels' values and gradients on odd shapes, ties and extremes. --smoke leaves the
    kernel tests out: on a CPU they are the suite's own, a minute or more under the interpreter."""
    return gpu_tests(ctx, 'gpu and not compile' if ctx.smoke else GPU_TESTS['tests'])


def stage_tests_compile(ctx):
    """The GPU tests of --compile, just before `fast`, the one stage that compiles."""
    return gpu_tests(ctx, GPU_TESTS['tests-compile'])


def gpu_tests(ctx, marker):
    """pytest -m MARKER with the data set found: no GPU test may skip for lack of data. A test that
    passed in an earlier attempt with the same code (its PASSED line is in the stage's log, under
    the same `# code` line) is not run again, so a stage cut short by the budget goes on with the
    tests it had not reached; after a fix, every test runs again."""
    digest = code_digest(repo_code())
    passed_before = passed_tests(ctx.log_path, digest)
    ctx.log(f'# code {digest}')
    deselect = [arg for node in sorted(passed_before) for arg in ('--deselect', node)]
    code, out = ctx.run([sys.executable, '-m', 'pytest', '-m', marker, '-v', '-rs', '-p', 'no:cacheprovider', *deselect],
                        env={'CIFAR10_DIR': os.path.abspath(ctx.args.data_dir)}, check=False)
    counts = pytest_counts(out)
    missing_data = [line for line in out.splitlines() if line.startswith('SKIPPED') and 'CIFAR-10 not found' in line]
    if missing_data:
        raise StageFailed(f'{len(missing_data)} GPU test(s) skipped for lack of data')
    if code not in (0, 5) or counts.get('failed') or counts.get('error'):
        raise StageFailed(f'pytest -m {marker!r}: {counts or "exit " + str(code)}')
    if passed_before:
        counts['passed_in_earlier_attempts'] = len(passed_before)
    return counts, 'gpu tests: ' + ', '.join(f'{n} {k}' for k, n in counts.items())


def passed_tests(log_path, digest):
    """The node ids that pytest -v reported PASSED in a log ('tests/test_x.py::test_y[p] PASSED [ 10%]')
    in the attempts made with this code (the lines after a '# code <digest>' line of this digest)."""
    if not os.path.isfile(log_path):
        return set()
    passed, current = set(), None
    with open(log_path) as fh:
        for line in fh:
            if line.startswith('# code '):
                current = line.split()[2]
            elif current == digest and (m := re.match(r'(tests/\S+::\S+) PASSED', line)):
                passed.add(m.group(1))
    return passed


def pytest_counts(out):
    """{'passed': n, 'skipped': m, ...} from pytest's closing line."""
    lines = [line for line in out.splitlines() if re.search(r'\d+ (passed|failed|skipped|deselected|error)', line)]
    if not lines:
        return {}
    return {word: int(n) for n, word in re.findall(r'(\d+) (passed|failed|skipped|deselected|errors?|xfailed)', lines[-1])}


def train_groups(ctx, groups):
    """{name: (flags, runs)}: one train.py invocation per group under the stage's folder, all in one
    process; their figures."""
    ctx.train_all([(os.path.join(ctx.dir, name), flags, runs, 0) for name, (flags, runs) in groups.items()])
    return stage_figures(ctx, groups)


def stage_figures(ctx, names):
    """The figures of the stage's groups, and summarize.py's table of them in OUT/<stage>/summary.md
    (accuracy with its t-test, time spread, kept fraction by epoch: the stage's README cites it)."""
    _, table = ctx.run([sys.executable, os.path.join(HERE, 'summarize.py'), *names], cwd=ctx.dir)  # rows named by group
    with open(os.path.join(ctx.dir, 'summary.md'), 'w') as fh:
        fh.write(table)
    figures = {name: group_figures(os.path.join(ctx.dir, name)) for name in names}
    return figures, '; '.join(describe(name, fig) for name, fig in figures.items())


def stage_core(ctx):
    """The default recipe, n = 5 in one process, and the control of the gradient-scale fix: the
    same recipe under amp (fp32 weights, dynamic loss scaling) and with --loss-scale 1 (the old
    batch-mean backward in fp16)."""
    groups = {'default': ([], 5), 'amp': (['--precision', 'amp'], 3), 'fp16-loss-scale-1': (['--loss-scale', '1'], 3)}
    if ctx.device == 'cpu' and not ctx.smoke:
        raise StageFailed('the core stage compares GPU precisions: run it on a GPU (or with --smoke)')
    return train_groups(ctx, groups)


def stage_bench(ctx):
    """BLF's kernels against the torch reference and as a share of a training step."""
    out = os.path.join(ctx.dir, 'bench')
    flags = (['--device', 'cpu'] + SMOKE_BENCH) if ctx.smoke else ['--device', ctx.device, '--batch-sizes', '512,1024']
    folder = run_into_new_folder(ctx, [sys.executable, 'bench_blf.py', '--out', out, *flags], out, 'bench-')
    with open(os.path.join(folder, 'bench.csv')) as fh:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    line = '; '.join(f'B={int(r["batch"])}: triton {r["triton_ms"]:.3f} ms vs torch {r["torch_ms"]:.3f} ms '
                     f'({r["speedup"]:.2f}x), {r["overhead_pct"]:.1f}% of a step' for r in rows)
    return {'rows': rows}, line


def stage_blf(ctx):
    """30 epochs: baseline, BLF compact, BLF mask and the random-subset control, n = 3 each."""
    return interleaved_groups(ctx, BLF_CONFIGS)


def stage_blf_mixup(ctx):
    """The thread's post 7, 30 epochs: Mixup alone against Mixup with BLF, n = 3 each."""
    return interleaved_groups(ctx, BLF_MIXUP_CONFIGS)


def stage_blf_variants(ctx):
    """The thread's posts 9 and 10, 30 epochs: BLF, BLF with the bottom 10% kept too, and BLF whose
    p falls from 1 to 0.9 over the first 10 epochs, n = 3 each."""
    return interleaved_groups(ctx, BLF_VARIANT_CONFIGS)


def interleaved_groups(ctx, configs):
    """{name: flags} at 30 epochs, n = 3 each, seeds interleaved (seed-major) so that drift of the
    machine hits every configuration alike, all invocations in one process (train_many.py)."""
    seeds = range(2 if ctx.smoke else 3)
    ctx.train_all([(os.path.join(ctx.dir, name), ['--epochs', '30', *flags], 1, seed)
                   for seed in seeds for name, flags in configs.items()])
    return stage_figures(ctx, configs)


def stage_profile(ctx):
    """profile.py at batch 256, 512 and 1024 with the torch profiler's summary."""
    flags = (['--device', 'cpu'] + SMOKE_PROFILE) if ctx.smoke else ['--device', ctx.device, '--batch-sizes', '256,512,1024']
    cmd = [sys.executable, 'profile.py', '--data-dir', ctx.args.data_dir, '--torch-profiler', '--out', ctx.dir, *flags]
    folder = os.path.basename(run_into_new_folder(ctx, cmd, ctx.dir, 'profile-'))
    return {'folder': folder}, f'see profile/{folder}/profile.md'


def run_into_new_folder(ctx, cmd, parent, prefix):
    """Run a command that writes its results into a new folder <prefix><time> in `parent`; that
    folder. The folders of earlier attempts (one cut short, or one of code changed since) stay
    beside it, kept and not read."""
    def folders():
        return {d for d in os.listdir(parent) if d.startswith(prefix)} if os.path.isdir(parent) else set()
    before = folders()
    ctx.run(cmd)
    made = sorted(folders() - before)
    if len(made) != 1:
        raise StageFailed(f'{shlex.join(cmd[1:])} made {len(made)} new {prefix}* folders in {parent}, not one')
    return os.path.join(parent, made[0])


def stage_recipes(ctx):
    """The leaderboard recipes (recipes.py), n = 5 each; the default (myrtle) is the core stage's."""
    return train_groups(ctx, {name: (['--recipe', name], 5) for name in ('airbench94', 'airbench94-muon', 'myrtle-tricks')})


def stage_fast(ctx):
    """Our `fast` candidate, n = 25 (what a claim of the fastest needs), and airbench94-muon under
    --compile (the published 2.59 s is compiled), n = 5."""
    groups = {'fast': (['--recipe', 'fast'], 25),
              'airbench94-muon-compiled': (['--recipe', 'airbench94-muon', '--compile', '1'], 5)}
    if ctx.smoke:  # compiling on a CPU takes minutes; tests/test_torch_compile.py covers --compile there
        del groups['airbench94-muon-compiled']
    return train_groups(ctx, groups)


CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def write_airbench_cache(data_dir, folder):
    """airbench's CifarLoader reads cifar10/train.pt and test.pt: {'images': uint8 [N, 32, 32, 3],
    'labels': int64 [N], 'classes'}; written here from this repo's data, so the script never
    downloads (and never needs torchvision's dataset code)."""
    import torch
    import data_gpu
    data = data_gpu.load_cifar10(data_dir, download=False, log=lambda line: None)
    os.makedirs(folder, exist_ok=True)
    for part in ('train', 'test'):
        torch.save({'images': data[f'{part}_x'].permute(0, 2, 3, 1).contiguous(), 'labels': data[f'{part}_y'],
                    'classes': CIFAR10_CLASSES}, os.path.join(folder, f'{part}.pt'))


AIRBENCH_SCRIPT_RUNS = 10  # a published script is stopped once it has finished this many runs,
AIRBENCH_SCRIPT_SHARE = 1 / 3  # or after this share of the time left, once it has finished one
AIRBENCH_TIME_COLUMNS = ('time_seconds', 'total_time_seconds')  # airbench94_muon.py's; legacy/airbench94.py's


def airbench_results(out):
    """(tta_val_acc, time in seconds) of each finished run in an airbench script's printed table:
    the rows whose epoch column says 'eval'. The run column names a run on its first row only; the
    untimed warm-up run (random labels) is named 'warmup' and left out."""
    columns, time_column, results, run = None, None, [], None
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')] if line.lstrip().startswith('|') else None
        if cells and 'tta_val_acc' in cells and set(AIRBENCH_TIME_COLUMNS) & set(cells):
            columns = cells
            time_column = next(columns.index(name) for name in AIRBENCH_TIME_COLUMNS if name in cells)
        elif cells and columns and len(cells) == len(columns):
            run = cells[columns.index('run')] or run
            if cells[columns.index('epoch')] == 'eval' and run != 'warmup':
                results.append((float(cells[columns.index('tta_val_acc')]), float(cells[time_column])))
    return results


def stage_airbench(ctx):
    """Each published airbench script named by --airbench, run on this GPU from this repo's data,
    then our recipe of the same name (n = 5), back to back: the ratio of their median times is
    measured side by side. The script runs as published (its own seeds, warm-up and clock) until it
    has finished AIRBENCH_SCRIPT_RUNS runs, or AIRBENCH_SCRIPT_SHARE of the time left (the stage's or
    the budget's) has passed and it has finished one; its cache, and any logs it writes
    (they hold its code), are deleted afterwards, and the source lines its tracebacks quote are
    left out of log.txt, so nothing of its code enters the records; its figures
    are kept in published_script.json, so a resumed stage goes straight to our recipe."""
    if not ctx.args.airbench:
        raise StageSkipped('no --airbench PATH given (a local copy of a published airbench script)')
    figures, lines = {}, []
    for path in ctx.args.airbench:
        stem = os.path.splitext(os.path.basename(path))[0]
        recipe = stem.replace('_', '-')
        work = os.path.join(ctx.dir, stem)
        theirs_path = os.path.join(work, 'published_script.json')  # a resumed stage does not run it again
        if os.path.isfile(theirs_path):
            with open(theirs_path) as fh:
                theirs = json.load(fh)
        else:
            theirs = run_airbench_script(ctx, path, stem, work)
            with open(theirs_path, 'w') as fh:
                json.dump(theirs, fh, indent=1)
        figure = {'published_script': theirs}
        if recipe in recipe_names():
            ours_dir = os.path.join(ctx.dir, f'ours-{recipe}')
            ctx.train(ours_dir, ['--recipe', recipe], runs=5)
            figure['ours'] = group_figures(ours_dir)
            figure['time_ratio_ours_to_theirs'] = figure['ours']['time_s']['median'] / theirs['time_s']['median']
        figures[stem] = figure
        line = describe(f'{stem} (published script)', {**theirs, 'time_s': theirs['time_s']})
        if 'ours' in figure:
            line += f'; {describe("ours --recipe " + recipe, figure["ours"])}; time ratio ours/theirs {figure["time_ratio_ours_to_theirs"]:.2f}'
        lines.append(line)
    return figures, '; '.join(lines)


def run_airbench_script(ctx, path, stem, work):
    """Run a published script in `work` from a cache of our data until it has finished
    AIRBENCH_SCRIPT_RUNS runs, or AIRBENCH_SCRIPT_SHARE of the time left has passed and it has
    finished one; the accuracy and time statistics of its finished runs. Its cache and logs are
    deleted. Why: the scripts run 25 (legacy) and 200 runs, 10 give a median time and a mean
    accuracy to set beside our 5 and leave the stage's time to the rest; and airbench94_muon.py
    trains a warm-up run and compiles with max-autotune before its first timed run, which a fixed
    share may not hold (on the CPU it did not: results/cpu-checks/airbench-on-cpu/)."""
    import statistics
    write_airbench_cache(ctx.args.data_dir, os.path.join(work, 'cifar10'))
    env = {}
    if importlib.util.find_spec('torchvision') is None:  # the GPU machines lent so far have none
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [os.path.join(HERE, 'shims'), os.environ.get('PYTHONPATH')]))
    try:
        code, out = ctx.run([sys.executable, os.path.abspath(path)], env=env, cwd=work, check=False,
                            stop_after=ctx.seconds_left() * AIRBENCH_SCRIPT_SHARE, keep_line=without_quotes_of(path),
                            finished=lambda text: len(airbench_results(text)), wanted=AIRBENCH_SCRIPT_RUNS)
    finally:
        for leftover in ('cifar10', 'logs'):
            shutil.rmtree(os.path.join(work, leftover), ignore_errors=True)
    runs = airbench_results(out)
    if not runs or code not in (0, None):
        raise StageFailed(f'{stem}: {len(runs)} finished run(s), exit {code}')
    accs, times = [a for a, _ in runs], [t for _, t in runs]
    with open(path, 'rb') as fh:  # which version of the script ran: its hash, never its code
        script_sha256 = hashlib.sha256(fh.read()).hexdigest()
    return {'script': os.path.basename(path), 'script_sha256': script_sha256,
            'acc': {'mean': statistics.mean(accs), 'std': statistics.stdev(accs) if len(accs) > 1 else 0.0, 'n': len(accs)},
            'time_s': {'median': statistics.median(times), 'min': min(times), 'max': max(times)},
            'stopped_early': code is None,  # and the rule that stopped it, since a resumed stage reuses these figures
            'runs_wanted': AIRBENCH_SCRIPT_RUNS, 'share_of_time_left': round(AIRBENCH_SCRIPT_SHARE, 4)}


def without_quotes_of(path):
    """A filter of a command's output lines that leaves out what a traceback quotes from `path`.
    Stopped after its share, a published script prints a KeyboardInterrupt traceback, and Python
    (like torch.compile's 'from user code') quotes each of its frames' source lines: that would put
    the script's code into the stage's log.txt, which is committed. A frame's quote is the lines
    after its `File "path", line N` that are indented deeper; they become one line saying so."""
    marker = f'File "{os.path.abspath(path)}"'
    frame = {'indent': None, 'told': False}  # the indent of the script's frame being quoted, if any

    def keep_line(text):
        indent = len(text) - len(text.lstrip(' '))
        if frame['indent'] is not None and text.strip() and indent > frame['indent']:
            if frame['told']:
                return None
            frame['told'] = True
            return ' ' * indent + '[the published script\'s source line(s), left out of the log]\n'
        frame['indent'], frame['told'] = (indent if marker in text else None), False
        return text
    return keep_line


def recipe_names():
    import recipes
    return set(recipes.RECIPES)


def stage_ladder(ctx):
    """The tricks' ablation ladder, n = 3 per rung, run as listed: each rung adds to the one before
    whatever that one did, so the stage's length is known before it starts. Its line names the rungs
    whose mean accuracy fell below the rung before's (dropping one means running the rungs after it
    again without it: results/README.md)."""
    rungs = list(LADDER)[:2] + list(LADDER)[-1:] if ctx.smoke else list(LADDER)  # smoke: the plumbing only
    figures, line = train_groups(ctx, {name: (LADDER[name], 3) for name in rungs})
    return figures, f'{line}; {ladder_verdict(figures)}'


def ladder_verdict(figures):
    """Which rungs (in order) lowered the mean accuracy against the rung before them, and which of the
    shortened ones (--epochs) keep it at 94% or more."""
    names = list(figures)
    mean = {name: figures[name]['acc']['mean'] for name in names}
    lower = [f'{name} ({mean[name] - mean[before]:+.4f} against {before})'
             for before, name in zip(names, names[1:]) if mean[name] < mean[before]]
    shortened = [name for name in names if '--epochs' in LADDER.get(name, [])]
    kept = [name for name in shortened if mean[name] >= 0.94]
    return (f'lower than the rung before: {", ".join(lower) or "none"}; '
            f'shortened rungs at >= 94%: {", ".join(kept) or "none"} (of {", ".join(shortened) or "none"})')


def stage_post8(ctx):
    """Myrtle post 8's ladder (POST8_LADDER), n = 3 per rung: each published step's time and accuracy
    on this GPU, to set beside the post's V100 times (75 s down to 26 s)."""
    rungs = list(POST8_LADDER)[:1] + list(POST8_LADDER)[-1:] if ctx.smoke else list(POST8_LADDER)  # smoke: the plumbing
    return train_groups(ctx, {name: (POST8_LADDER[name], 3) for name in rungs})


# name: (function, what it proves, estimated H100 minutes, measured?). Until measured, the minutes
# are reckoned from FLOPs: ResNet-9 trains on 2.27 GFLOP per image (networks.flops_per_image), so
# at an assumed 100 TFLOP/s (a tenth of the H100's dense fp16 peak, usual for small convolutions)
# a 24-epoch run takes about 27 s; a stage's process adds about 15 s (imports, CUDA, cuDNN's autotuning)
# and each train.py invocation in it a few more (data, warm-up). blf: 12 runs of 30 epochs, the compact
# and random ones about 3/4 of a full run's time at 60% kept, so 6 min of runs and 1 of start-ups;
# blf-mixup: 3 full runs and 3 compact ones at the thread's 86% kept (about 1.15 full runs' time);
# blf-variants: 9 compact runs, the curriculum's first 10 epochs at p near 1.
# The tests: a warm-up of a few seconds each, and the kernel tests' 71 Triton specialisations about 50 s of
# compiling (results/cpu-checks/native-tests/, timed on a 2-core CPU); compiling
# (tests-compile): about half a minute per graph, a few per recipe.
STAGES = {
    'tests': (stage_tests, 'the GPU-only tests pass on real data, and every kernel test natively: no host sync in '
                           'whole epochs (those of --compile: tests-compile)', 3, False),
    'core': (stage_core, 'the default recipe\'s accuracy and time (n=5); fp16 with the loss scale vs amp and vs '
                         'the old unscaled step', 6, False),
    'bench': (stage_bench, 'BLF\'s kernels: Triton vs torch, and their cost as a share of a training step', 1, False),
    'blf': (stage_blf, 'whether BatchLossFilter saves time at equal accuracy, against a random subset of the '
                       'same size (n=3 each, 30 epochs)', 7, False),
    'profile': (stage_profile, 'where the time of a step goes, and the distance from the hardware floor', 3, False),
    'recipes': (stage_recipes, 'the leaderboard recipes on this repo\'s data path (airbench94, airbench94-muon, '
                               'myrtle-tricks): accuracy and time (n=5), to set beside the published figures', 4, False),
    'tests-compile': (stage_tests_compile, 'a compiled epoch of two recipes with BLF has no host sync and compiles '
                                           'nothing inside the clock (before fast, which uses --compile)', 4, False),
    'fast': (stage_fast, 'our fast candidate (n=25) and airbench94-muon compiled (n=5)', 4, False),
    'airbench': (stage_airbench, 'the published airbench scripts (--airbench PATH) on this GPU and data, back to back '
                                 'with our recipe of the same name', 8, False),
    'ladder': (stage_ladder, 'what each trick adds to accuracy and time (n=3 per rung)', 8, False),
    'post8': (stage_post8, 'Myrtle post 8\'s bag of tricks step by step (n=3 per rung), beside its published V100 times', 8, False),
    'blf-mixup': (stage_blf_mixup, 'the BLF thread\'s finding that BLF does not help under Mixup (it kept 86% of the '
                                   'samples): Mixup with and without BLF (n=3 each, 30 epochs)', 4, False),
    'blf-variants': (stage_blf_variants, 'the BLF thread\'s requests: the bottom losses kept too (post 9), p scheduled '
                                         'from 1 to 0.9 (post 10), beside BLF as it is (n=3 each, 30 epochs)', 5, False),
}


# Stages that start over when cut (one command each, nothing to resume from): under --budget-min
# one is deferred to the next run, rather than started, when its estimate does not fit in the time
# left; the stages after it still use that time. Never when the estimate exceeds a whole budget.
STARTS_OVER = {'bench', 'profile'}

# Stages that read no CIFAR-10 (bench times the kernels and a step on random tensors): they can run
# before the data set is on the machine, e.g. in the call that brings the first half of it.
NEEDS_NO_DATA = {'bench'}


# ----------------------------------------------------------------------------------------------
# Driver

def pack(out, copy_to=None):
    """OUT/reproduce.tgz with everything in OUT but itself, written beside it and then renamed;
    with copy_to, also copied into that folder (a job's output folder: the pack is there even if
    the job is killed before its last line)."""
    tmp = os.path.join(out, PACK + '.part')
    with tarfile.open(tmp, 'w:gz') as tar:
        for name in sorted(os.listdir(out)):
            if name not in (PACK, PACK + '.part'):
                tar.add(os.path.join(out, name), arcname=os.path.join(os.path.basename(os.path.abspath(out)), name))
    os.replace(tmp, os.path.join(out, PACK))
    if copy_to:
        shutil.copyfile(os.path.join(out, PACK), os.path.join(copy_to, PACK + '.part'))
        os.replace(os.path.join(copy_to, PACK + '.part'), os.path.join(copy_to, PACK))


def machine(device):
    """What the times depend on besides the code (summarize.MACHINE_KEYS): the GPU's name and the
    versions of torch, triton, CUDA and cuDNN, as every train.py record's env.json has them."""
    import record
    import torch
    if device.startswith('cuda') and not torch.cuda.is_available():
        device = 'cpu'  # no GPU to name: the stages themselves say that they cannot run
    env = record.environment(device)
    return {key: env[key] for key in summarize.MACHINE_KEYS}


def machine_folder(device_name):
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': results/<this>/ holds that GPU's records.
    The GPU plan (results/README.md) finds it with nvidia-smi's name and `tr 'A-Z ' 'a-z-'`: the same."""
    return device_name.lower().replace(' ', '-')


def check_machine(out, here):
    """None when OUT was started on this machine (or is new: then it is marked as this machine's);
    else the one-line error that stops the run, so that no stage pools two machines' times."""
    path = os.path.join(out, 'machine.json')
    made_on = summarize.read_json(path)
    if made_on is None:
        with open(path, 'w') as fh:
            json.dump(here, fh, indent=1)
        return None
    differs = [f'{key} {made_on.get(key)} there, {here[key]} here'
               for key in summarize.differing([{key: made_on.get(key) for key in here}, here])]
    if not differs:
        return None
    return (f'error: {out} holds runs of another machine ({"; ".join(differs)}): times of two machines are '
            f'never pooled; give another --out, e.g. results/{machine_folder(here["device"])}/reproduce')


def environment_line(here):
    """The machine (machine()'s dict) in one line, for the console and summary.md's head."""
    return f'{here["device"]} | torch {here["torch"]} | triton {here["triton"]} | python {sys.version.split()[0]}'


def list_stages(out):
    """The stages with their H100 minutes; where OUT holds a completed stage, the minutes it took
    there (all attempts), from which the estimates are to be updated."""
    width = max(map(len, STAGES))
    print(f'{"stage":{width}}  {"H100 min":>8}  what it proves')
    for name, (_, proves, minutes, measured) in STAGES.items():
        took = ''
        done_path = os.path.join(out, name, 'done.json')
        if os.path.isfile(done_path):
            with open(done_path) as fh:
                done = json.load(fh)
            if done.get('status') == 'ok':
                took = f' [took {done.get("minutes_all_attempts", done["minutes"]):.1f} min in {out}]'
        print(f'{name:{width}}  {minutes:>5}{"" if measured else " (est.)":7}  {proves}{took}')


def parse_args(argv):
    # paths mean paths from the folder reproduce.py starts in, but the stages run their commands from
    # the repository's root: every path is made absolute here, so a run started elsewhere neither
    # writes its records into the repository nor looks for them where they are not
    ap = summarize.OneLineParser(description=__doc__.split('\n')[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('--data-dir', default='data', type=os.path.abspath, help='folder with cifar-10-batches-py/ (as train.py)')
    ap.add_argument('--out', default='runs/reproduce', type=os.path.abspath, help='where the stages write; a second run resumes here')
    ap.add_argument('--stage', nargs='+', choices=list(STAGES), help='only these stages (default: all, in order)')
    ap.add_argument('--budget-min', type=float, default=None,
                    help='stop after this many minutes: the running command gets Ctrl-C and keeps its finished runs, '
                         'the stage is left incomplete, OUT is packed, exit code 3; run again to resume')
    ap.add_argument('--stage-timeout-min', type=float, default=9.0, help='stop a stage that runs longer than this')
    ap.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (cpu only with --smoke)')
    ap.add_argument('--smoke', action='store_true', help='every stage at toy size (CPU tests and CI)')
    ap.add_argument('--list', action='store_true', help='list the stages and exit (with the minutes each took in --out)')
    ap.add_argument('--copy-pack-to', metavar='DIR', type=os.path.abspath, help='also copy reproduce.tgz into DIR after every stage '
                                                         '(a job\'s output folder, e.g. $OUT on the lent GPU)')
    ap.add_argument('--airbench', nargs='+', default=[], metavar='PATH', type=os.path.abspath,
                    help='local copies of published airbench scripts (airbench94.py, airbench94_muon.py) for the airbench stage')
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        list_stages(args.out)
        return 0
    if args.device == 'cpu' and not args.smoke:
        print('error: without a GPU only --smoke makes sense (the stages measure GPU time)', file=sys.stderr)
        return 2
    if args.copy_pack_to and not os.path.isdir(args.copy_pack_to):
        print(f'error: --copy-pack-to {args.copy_pack_to} is not a folder', file=sys.stderr)
        return 2
    if set(args.stage or STAGES) - NEEDS_NO_DATA and not os.path.isdir(os.path.join(args.data_dir, 'cifar-10-batches-py')):
        print(f'error: no cifar-10-batches-py/ in {args.data_dir}: give --data-dir (train.py --data-dir '
              f'{args.data_dir} downloads it when online)', file=sys.stderr)
        return 2
    missing = [path for path in args.airbench if not os.path.isfile(path)]
    if missing:
        print(f'error: --airbench {missing[0]}: no such file (a local copy of a published airbench script)', file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        print(f'error: cannot create {args.out}: {e.strerror}', file=sys.stderr)
        return 2
    here = machine(args.device)
    wrong_machine = check_machine(args.out, here)
    if wrong_machine:
        print(wrong_machine, file=sys.stderr)
        return 2
    print(f'== machine: {environment_line(here)} (its records belong in results/{machine_folder(here["device"])}/)')
    summary_path = os.path.join(args.out, 'summary.md')
    if not os.path.exists(summary_path):
        with open(summary_path, 'w') as fh:
            fh.write(f'# reproduce.py{" --smoke" if args.smoke else ""}\n\n{environment_line(here)}\n\n')
    previous = signal.signal(signal.SIGTERM, on_sigterm)  # `timeout` stops us: stop the command, pack, say how to resume
    try:
        return run_stages(args, summary_path)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stages(args, summary_path):
    """The stages asked for, in order; the exit code (0 done, 1 a stage failed, 3 stopped early)."""
    budget_end = None if args.budget_min is None else time.monotonic() + 60 * args.budget_min
    failed, stopped, deferred = [], None, []
    code = repo_code()
    for name in args.stage or list(STAGES):
        done_path = os.path.join(args.out, name, 'done.json')
        before = json.load(open(done_path)) if os.path.isfile(done_path) else {}
        if before.get('status') == 'ok':
            changed = code_differences(before.get('code', {}), code)
            if not changed:
                print(f'== {name}: already complete in {args.out}, skipped')
                continue
            # its training records of unchanged code are kept: only what changed runs
            print(f'== {name}: complete in {args.out}, but the code changed since ({few(changed)}): running it again')
        if budget_end is not None and time.monotonic() >= budget_end:
            stopped = f'--budget-min is spent before {name}'
            break
        left = None if budget_end is None else (budget_end - time.monotonic()) / 60
        if name in STARTS_OVER and left is not None and left < STAGES[name][2] <= args.budget_min:
            print(f'== {name}: deferred to the next run: it starts over when cut, and its estimated '
                  f'{STAGES[name][2]} min do not fit in the {left:.1f} min left', flush=True)
            deferred.append(name)
            continue
        print(f'== {name}: {STAGES[name][1]}' + (' (resumed)' if before else ''), flush=True)
        stage_start = time.monotonic()
        try:
            figures, line, status = *STAGES[name][0](Context(args, name, budget_end)), 'ok'
        except StageFailed as e:
            figures, line, status = {}, f'FAILED: {e}', 'failed'
            failed.append(name)
        except StageSkipped as e:
            figures, line, status = {}, f'skipped: {e}', 'skipped'
        except (OutOfTime, KeyboardInterrupt) as e:
            stopped = str(e) or 'interrupted (Ctrl-C)'
            figures, line, status = {}, f'incomplete: {stopped}; its finished runs are kept and a second run resumes it', 'incomplete'
        except Exception as e:  # a bug in the stage's own code: its traceback to its log, and the stages after it still run
            os.makedirs(os.path.join(args.out, name), exist_ok=True)
            with open(os.path.join(args.out, name, 'log.txt'), 'a') as log:
                traceback.print_exc(file=log)
            figures, line, status = {}, f'FAILED: {type(e).__name__} in reproduce.py: {e} (the traceback is in its log.txt)', 'failed'
            failed.append(name)
        minutes = (time.monotonic() - stage_start) / 60
        total = minutes + before.get('minutes_all_attempts', before.get('minutes', 0))
        with open(done_path, 'w') as fh:
            json.dump({'status': status, 'minutes': minutes, 'minutes_all_attempts': total, 'figures': figures,
                       'summary': line, 'code': code}, fh, indent=1)
        with open(summary_path, 'a') as fh:
            fh.write(f'- **{name}** ({minutes:.1f} min{f", {total:.1f} in all attempts" if before else ""}): {line}\n')
        print(f'== {name}: {line} ({minutes:.1f} min)', flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second stop must not cut the pack short
        pack(args.out, args.copy_pack_to)
        signal.signal(signal.SIGTERM, on_sigterm)
        if stopped:
            break
    # The pack's size in the log: a GPU job's output has limits on what comes back (results/README.md).
    # With the budget spent before the first stage of a new OUT, there is no pack at all.
    pack_path = os.path.join(args.out, PACK)
    if os.path.exists(pack_path):
        print(f'summary: {summary_path}; everything packed in {pack_path} ({os.path.getsize(pack_path) / 2**20:.2f} MiB)')
    else:
        print(f'summary: {summary_path}; nothing packed: no stage ran')
    if failed:
        print(f'error: stage(s) failed: {" ".join(failed)} (see their log.txt)', file=sys.stderr)
        return 1
    if stopped or deferred:
        why = stopped or f'{" ".join(deferred)} deferred for want of time'
        print(f'stopped: {why}; run the same command again to resume', file=sys.stderr)
        return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
