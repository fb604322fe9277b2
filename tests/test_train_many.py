"""train_many.py: several train.py invocations in one process give the records each gives alone."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, run_script

TOY = ['--device', 'cpu', '--no-download', '--n-train', '256', '--n-test', '100', '--epochs', '2', '--width', '0.125',
       '--batch-size', '64', '--blf-bucket', '16']
CLOCKS = ('epoch_s', 'total_s', 'train_s', 'eval_s', 'time_s')


def toy(cifar_dir, out, *flags):
    return shlex.join([*TOY, '--data-dir', cifar_dir, '--out-dir', str(out), *flags])


def record_of(folder):
    (record,) = folder.iterdir()
    return record


def rows(record, name):
    """A record's jsonl rows without the clocks (the one thing that differs between two runs)."""
    with open(record / name) as fh:
        return [{k: v for k, v in json.loads(line).items() if k not in CLOCKS} for line in fh]


def test_an_invocation_after_others_in_one_process_gives_the_runs_it_gives_alone(cifar_dir, tmp_path):
    """BLF compact with label smoothing and an EMA, then the default recipe's seeds 0-1: the second
    invocation's seed 1 must match, to the last bit, seed 1 of train.py run alone (nothing leaks
    from one invocation into the next: seeds, schedules, BatchNorm modes, the recipe's values)."""
    res = run_script('train_many.py', toy(cifar_dir, tmp_path / 'a', '--blf', '0.5', '--label-smoothing', '0.2',
                                          '--ema', '0.9', '--seed', '3'),
                     toy(cifar_dir, tmp_path / 'b', '--runs', '2'))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    alone = run_script('train.py', *shlex.split(toy(cifar_dir, tmp_path / 'c', '--seed', '1')))
    assert alone.returncode == 0, alone.stderr[-2000:]
    many, single = record_of(tmp_path / 'b'), record_of(tmp_path / 'c')
    assert [r for r in rows(many, 'epochs.jsonl') if r['seed'] == 1] == rows(single, 'epochs.jsonl')
    assert [r for r in rows(many, 'runs.jsonl') if r['seed'] == 1] == rows(single, 'runs.jsonl')
    assert rows(record_of(tmp_path / 'a'), 'epochs.jsonl')[-1]['kept'] < 1, 'the first invocation trained with BLF'
    assert (many / 'command.txt').read_text() == shlex.join(['python', 'train.py', *shlex.split(
        toy(cifar_dir, tmp_path / 'b', '--runs', '2'))]) + '\n', 'the command that makes the record alone'
    assert res.stdout.count('# train_many: invocation') == 2


def test_it_stops_at_the_first_invocation_that_fails_with_its_exit_code(cifar_dir, tmp_path):
    (tmp_path / 'empty').mkdir()  # no data set there: found only when invocation 2 loads its data
    res = run_script('train_many.py', toy(cifar_dir, tmp_path / 'a'), toy(str(tmp_path / 'empty'), tmp_path / 'b'),
                     toy(cifar_dir, tmp_path / 'c'))
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert 'invocation 2 exited with 2; the 1 after it did not run' in res.stderr
    assert (tmp_path / 'a').is_dir() and not (tmp_path / 'c').exists()


def test_without_invocations_it_says_how_to_use_it_and_fails(tmp_path):
    res = run_script('train_many.py')
    assert res.returncode == 2 and res.stderr.startswith('error: give one or more train.py command lines')
    assert len(res.stderr.splitlines()) == 1
    helped = run_script('train_many.py', '--help')
    assert helped.returncode == 0 and 'one train.py\ncommand line' in helped.stdout


def test_on_a_cpu_a_blf_invocation_after_one_without_blf_runs_its_kernels(cifar_dir, tmp_path):
    """Triton's interpreter must be on before the first invocation imports triton (for the record's
    versions): without TRITON_INTERPRET in the environment (the tests' conftest sets it), as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    res = subprocess.run([sys.executable, str(REPO / 'train_many.py'), toy(cifar_dir, tmp_path / 'a'),
                          toy(cifar_dir, tmp_path / 'b', '--blf', '0.5')], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert rows(record_of(tmp_path / 'b'), 'epochs.jsonl')[-1]['kept'] < 1


def test_every_command_line_is_checked_before_the_first_runs(cifar_dir, tmp_path):
    res = run_script('train_many.py', toy(cifar_dir, tmp_path / 'a'), toy(cifar_dir, tmp_path / 'b', '--epochs', '0'))
    assert res.returncode == 2 and res.stderr == 'error: invocation 2: --epochs must be at least 1, got 0.0\n'
    assert not (tmp_path / 'a').exists(), 'nothing ran'


def test_invocations_of_two_device_types_are_refused(monkeypatch):
    import train_many
    monkeypatch.setattr(train_many, 'check_args', lambda args: None)  # a CPU machine refuses --device cuda itself
    with pytest.raises(train_many.UserError, match=r'mix devices \(cpu, cuda\)'):
        train_many.device_types([['--device', 'cpu'], ['--device', 'cuda:1']])
    assert train_many.device_types([['--device', 'cuda:0'], []]) == {'cuda'}


def test_under_torchrun_it_refuses_in_one_line(cifar_dir, tmp_path):
    env = {**os.environ, 'WORLD_SIZE': '2', 'RANK': '0', 'LOCAL_RANK': '0'}
    res = subprocess.run([sys.executable, str(REPO / 'train_many.py'), toy(cifar_dir, tmp_path / 'a')], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith('error: under torchrun, run train.py itself')
    assert len(res.stderr.splitlines()) == 1 and not (tmp_path / 'a').exists()


def test_each_invocation_is_split_as_a_shell_splits_it(monkeypatch):
    """A quoted value keeps its spaces (a folder name), as `python train.py FLAGS` would get it."""
    import train_many
    seen = []
    monkeypatch.setattr(train_many, 'run_all', lambda invocations: seen.extend(invocations) or 0)
    assert train_many.main(["--epochs 3 --out-dir 'my runs'", '--seed "1"']) == 0
    assert seen == [['--epochs', '3', '--out-dir', 'my runs'], ['--seed', '1']]
