"""reproduce.py: every stage at toy size on the CPU, the summary, the single packed file, resuming."""
import hashlib
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

import pytest

import reproduce
from conftest import REPO, SHARED, run_script, wait_until_ended
import record
import summarize
from record import code_hash, code_hashes, loaded_code


@pytest.fixture(scope='module')
def smoke(cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('reproduce') / 'out'
    res = run_script('reproduce.py', '--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', out,
                     '--airbench', FAKE_AIRBENCH, timeout=900)
    return res, out


FAKE_AIRBENCH = str(REPO / 'tests' / 'fake_airbench' / 'airbench94.py')


def test_list_names_every_stage_with_its_minutes_and_what_each_took_in_out(tmp_path):
    (tmp_path / 'core').mkdir()
    (tmp_path / 'core' / 'done.json').write_text(json.dumps({'status': 'ok', 'minutes': 2.0, 'minutes_all_attempts': 7.25}))
    (tmp_path / 'blf').mkdir()
    (tmp_path / 'blf' / 'done.json').write_text(json.dumps({'status': 'incomplete', 'minutes': 8.0}))
    res = run_script('reproduce.py', '--list', '--out', tmp_path)
    assert res.returncode == 0
    lines = res.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines] == list(reproduce.STAGES) == \
        ['tests', 'core', 'bench', 'blf', 'profile', 'recipes', 'tests-compile', 'fast', 'airbench', 'ladder', 'post8',
         'blf-mixup', 'blf-variants']
    assert all('(est.)' in line for line in lines), 'no stage has been timed on a GPU yet'
    took = {line.split()[0]: line.split('[took ')[1] for line in lines if '[took ' in line}
    assert took == {'core': f'7.2 min in {tmp_path}]'}, 'only a completed stage, all its attempts counted'


def test_smoke_runs_every_stage_and_writes_its_figures(smoke):
    res, out = smoke
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = (out / 'summary.md').read_text()
    for stage in reproduce.STAGES:
        done = json.loads((out / stage / 'done.json').read_text())
        assert done['status'] == 'ok' and done['minutes'] > 0, stage
        assert f'- **{stage}**' in summary
    core = json.loads((out / 'core' / 'done.json').read_text())['figures']
    assert set(core) == {'default', 'amp', 'fp16-loss-scale-1'}
    assert all(fig['acc']['n'] == 2 and 0 < fig['acc']['mean'] < 1 for fig in core.values())
    blf = json.loads((out / 'blf' / 'done.json').read_text())['figures']
    assert set(blf) == set(reproduce.BLF_CONFIGS) and all(fig['acc']['n'] == 2 for fig in blf.values())
    assert blf['blf-mask']['kept_last_epoch'] < 1 and blf['baseline']['kept_last_epoch'] == 1.0
    mixup = json.loads((out / 'blf-mixup' / 'done.json').read_text())['figures']
    assert set(mixup) == set(reproduce.BLF_MIXUP_CONFIGS) and all(fig['acc']['n'] == 2 for fig in mixup.values())
    variants = json.loads((out / 'blf-variants' / 'done.json').read_text())['figures']
    assert set(variants) == set(reproduce.BLF_VARIANT_CONFIGS) and all(fig['acc']['n'] == 2 for fig in variants.values())
    for stage in ('core', 'blf', 'recipes', 'fast', 'ladder', 'post8', 'blf-mixup', 'blf-variants'):  # summarize.py's table of every training stage
        table = (out / stage / 'summary.md').read_text()
        groups = json.loads((out / stage / 'done.json').read_text())['figures']
        assert table.startswith('| group | runs |') and all(f'| {name} | 2 |' in table for name in groups), stage
    bench = json.loads((out / 'bench' / 'done.json').read_text())['figures']['rows']
    assert [int(r['batch']) for r in bench] == [16, 33]
    recipes = json.loads((out / 'recipes' / 'done.json').read_text())['figures']
    assert set(recipes) == {'airbench94', 'airbench94-muon', 'myrtle-tricks'}
    tests = json.loads((out / 'tests' / 'done.json').read_text())['figures']
    assert tests['skipped'] >= 10 and not tests.get('failed'), 'on a CPU the GPU tests skip; none fails'


def test_every_record_names_the_code_it_ran_and_that_code_is_unchanged(smoke):
    _, out = smoke
    codes = {}
    for group in ('core/default', 'blf/blf-compact'):
        for record in (out / group).iterdir():
            codes[group] = json.loads((record / 'env.json').read_text())['code']
            assert {'train.py', 'record.py', 'data_gpu.py', 'networks.py'} <= set(codes[group]), group
            assert not any(rel.startswith('tests') for rel in codes[group])
            assert all(len(h) == 16 for h in codes[group].values())
            assert reproduce.code_changed_since(str(record)) == []
    assert 'kernels/selection.py' in codes['blf/blf-compact'] and 'kernels/selection.py' not in codes['core/default'], \
        'the code a run imported, no more'


def test_everything_is_packed_into_one_file(smoke):
    res, out = smoke
    size_mib = (out / reproduce.PACK).stat().st_size / 2**20
    assert f'everything packed in {out / reproduce.PACK} ({size_mib:.2f} MiB)' in res.stdout, 'the log says how big the pack is'
    with tarfile.open(out / reproduce.PACK) as tar:
        names = tar.getnames()
    assert 'out/summary.md' in names and 'out/blf/summary.md' in names and 'out/core/log.txt' in names
    assert any(n.startswith('out/core/default/') and n.endswith('runs.jsonl') for n in names)
    assert not any(n.endswith('.tgz') or n.endswith('.part') for n in names)


def test_a_second_run_resumes_and_skips_what_is_complete(smoke, cifar_dir):
    res, out = smoke
    before = (out / 'summary.md').read_text()
    again = run_script('reproduce.py', '--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', out)
    assert again.returncode == 0
    assert again.stdout.count('already complete') == len(reproduce.STAGES)
    assert (out / 'summary.md').read_text() == before


def test_a_failed_stage_is_reported_and_runs_again(tmp_path, cifar_dir, monkeypatch):
    calls = []

    def broken(ctx):
        calls.append(1)
        raise reproduce.StageFailed('on purpose')
    monkeypatch.setitem(reproduce.STAGES, 'bench', (broken, 'a stage that fails', 1, False))
    for _ in range(2):
        assert reproduce.main(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path),
                               '--stage', 'bench']) == 1
    assert len(calls) == 2
    assert json.loads((tmp_path / 'bench' / 'done.json').read_text())['status'] == 'failed'
    assert (tmp_path / 'summary.md').read_text().count('FAILED: on purpose') == 2


def test_a_stage_that_crashes_fails_alone_with_its_traceback_logged_and_the_next_stage_runs(tmp_path, cifar_dir, monkeypatch):
    ran = []

    def crashing(ctx):
        ran.append('bench')
        return {}['a bug']
    monkeypatch.setitem(reproduce.STAGES, 'bench', (crashing, 'a stage with a bug', 1, False))
    monkeypatch.setitem(reproduce.STAGES, 'blf', (lambda ctx: ran.append('blf') or ({}, 'fine'), 'after it', 1, False))
    assert reproduce.main(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path),
                           '--stage', 'bench', 'blf']) == 1
    assert ran == ['bench', 'blf'] and (tmp_path / reproduce.PACK).is_file()
    assert json.loads((tmp_path / 'bench' / 'done.json').read_text())['status'] == 'failed'
    assert json.loads((tmp_path / 'blf' / 'done.json').read_text())['status'] == 'ok'
    assert "FAILED: KeyError in reproduce.py: 'a bug'" in (tmp_path / 'summary.md').read_text()
    assert 'Traceback' in (tmp_path / 'bench' / 'log.txt').read_text()


def test_a_command_that_exits_with_an_error_fails_its_stage_and_its_output_is_logged(tmp_path):
    args = reproduce.parse_args(['--device', 'cuda', '--out', str(tmp_path)])
    ctx = reproduce.Context(args, 'core')
    cmd = [sys.executable, '-c', 'import sys; print("error: bad flag"); sys.exit(2)']
    with pytest.raises(reproduce.StageFailed, match='exited with 2'):
        ctx.run(cmd)
    assert ctx.run(cmd, check=False) == (2, 'error: bad flag\n')
    assert (tmp_path / 'core' / 'log.txt').read_text().splitlines().count('error: bad flag') == 2


def test_seeds_go_to_train_py_in_contiguous_blocks_and_commands_compare_without_them():
    assert reproduce.contiguous_blocks([0, 1, 2, 5, 6, 9]) == [(0, 3), (5, 2), (9, 1)]
    assert reproduce.contiguous_blocks([]) == []
    assert reproduce.without_seeds(['train.py', '--seed', '3', '--epochs', '30', '--runs=2', '--data-dir', '/a',
                                    '--out-dir=/b', '--blf', '0.9']) == ['train.py', '--epochs', '30', '--blf', '0.9']


def fake_train_py(calls, cut_after=None):
    """Context.run as if it ran train.py (or train_many.py's invocations, one after another): a
    record with its command, config and one runs.jsonl row per seed; with cut_after=k the first
    invocation finishes k runs and is then stopped by the budget."""
    def run(self, cmd, **kwargs):
        if 'train_many.py' in cmd:
            invocations = [['train.py', *shlex.split(line)] for line in cmd[cmd.index('train_many.py') + 1:]]
        else:
            invocations = [cmd[cmd.index('train.py'):]]
        for argv in invocations:
            value = lambda flag: argv[argv.index(flag) + 1]
            seed, runs, out = int(value('--seed')), int(value('--runs')), value('--out-dir')
            # the real command runs from the repo root, not from where reproduce.py was started
            assert os.path.isabs(out) and os.path.isabs(value('--data-dir')), argv
            calls.append((seed, runs))
            record = os.path.join(out, f'record-{len(calls)}')
            os.makedirs(record)
            with open(os.path.join(record, 'command.txt'), 'w') as fh:
                fh.write(shlex.join(['python', *argv]) + '\n')
            with open(os.path.join(record, 'config.json'), 'w') as fh:
                fh.write('{}')
            with open(os.path.join(record, 'env.json'), 'w') as fh:
                json.dump({'code': code_hashes(['train.py', 'networks.py'])}, fh)
            finished = runs if cut_after is None or len(calls) > 1 else cut_after
            with open(os.path.join(record, 'runs.jsonl'), 'w') as fh:
                for s in range(seed, seed + finished):
                    fh.write(json.dumps({'seed': s, 'test_acc': 0.9 + s / 100, 'time_s': 10.0 + s}) + '\n')
            if finished < runs:
                raise reproduce.OutOfTime('--budget-min is spent')
        return 0, ''
    return run


def five_runs_stage(ctx):
    out = os.path.join(ctx.dir, 'group')
    ctx.train(out, ['--epochs', '30'], runs=5)
    return {'group': reproduce.group_figures(out)}, 'five runs'


def test_a_stage_cut_by_the_budget_resumes_its_missing_seeds_and_counts_none_twice(tmp_path, cifar_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce.Context, 'run', fake_train_py(calls, cut_after=2))
    monkeypatch.setitem(reproduce.STAGES, 'core', (five_runs_stage, 'five runs', 1, False))
    args = ['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path), '--stage', 'core']
    assert reproduce.main(args) == 3
    done = json.loads((tmp_path / 'core' / 'done.json').read_text())
    assert done['status'] == 'incomplete' and (tmp_path / reproduce.PACK).is_file()
    (tmp_path / 'core' / 'done.json').write_text(json.dumps({**done, 'minutes_all_attempts': 2.5}))  # as if it had run long
    assert reproduce.main(args) == 0
    assert calls == [(0, 5), (2, 3)], 'the second call runs only the seeds the first did not finish'
    done = json.loads((tmp_path / 'core' / 'done.json').read_text())
    assert done['status'] == 'ok' and done['figures']['group']['acc']['n'] == 5
    assert done['figures']['group']['acc']['mean'] == pytest.approx(0.92)
    assert done['minutes_all_attempts'] == pytest.approx(2.5 + done['minutes']), 'the minutes of every attempt (--list)'
    summary = (tmp_path / 'summary.md').read_text()
    assert 'incomplete: --budget-min is spent' in summary and 'in all attempts): five runs' in summary
    assert reproduce.main(args) == 0 and calls == [(0, 5), (2, 3)]


def test_relative_paths_mean_the_starting_folder_and_a_moved_out_resumes(tmp_path, cifar_dir, monkeypatch):
    """Started from another folder with relative --out and --data-dir, the records land in that
    folder's OUT (the commands run from the repo root, so they get absolute paths); an OUT moved
    elsewhere (a GPU's records unpacked into results/) resumes there and pools what it holds."""
    calls = []
    monkeypatch.setattr(reproduce.Context, 'run', fake_train_py(calls, cut_after=2))
    monkeypatch.setitem(reproduce.STAGES, 'core', (five_runs_stage, 'five runs', 1, False))
    os.symlink(cifar_dir, tmp_path / 'cifar')
    monkeypatch.chdir(tmp_path)
    args = ['--device', 'cuda', '--data-dir', 'cifar', '--stage', 'core']
    assert reproduce.main([*args, '--out', 'first']) == 3
    assert len(list((tmp_path / 'first' / 'core' / 'group').iterdir())) == 1
    shutil.move(tmp_path / 'first', tmp_path / 'moved')
    assert reproduce.main([*args, '--out', 'moved']) == 0
    assert calls == [(0, 5), (2, 3)], 'the moved records count: only the seeds they lack run'
    done = json.loads((tmp_path / 'moved' / 'core' / 'done.json').read_text())
    assert done['status'] == 'ok' and done['figures']['group']['acc']['n'] == 5


def test_bench_and_profile_read_the_folder_their_command_made_and_keep_the_earlier_ones(tmp_path, cifar_dir, monkeypatch):
    """bench_blf.py and profile.py each make a new folder per call: a stage run again (cut short
    after its command made its folder, or its code changed since) finds an earlier attempt's folder
    beside the new one. It reads the new one, keeps both, and never stops with a traceback."""
    made = []

    def run(self, cmd, **kwargs):
        script = os.path.basename(cmd[1])
        assert all(os.path.isabs(cmd[cmd.index(flag) + 1]) for flag in ('--out', '--data-dir') if flag in cmd), cmd
        folder = record.new_folder(cmd[cmd.index('--out') + 1], prefix=script.split('_')[0].replace('.py', '') + '-')
        made.append(folder)
        if script == 'bench_blf.py':
            with open(os.path.join(folder, 'bench.csv'), 'w') as fh:
                fh.write('batch,triton_ms,torch_ms,speedup,overhead_pct\n' + f'512,{len(made)},2,1,1\n')
        if len(made) == 1:
            raise reproduce.OutOfTime('--budget-min is spent')
        return 0, ''
    monkeypatch.setattr(reproduce.Context, 'run', run)
    monkeypatch.chdir(tmp_path)
    args = ['--device', 'cuda', '--data-dir', cifar_dir, '--out', 'out', '--stage', 'bench', 'profile']
    assert reproduce.main(args) == 3
    assert reproduce.main(args) == 0
    done = tmp_path / 'out' / 'bench' / 'done.json'
    assert json.loads(done.read_text())['figures']['rows'][0]['triton_ms'] == 2
    state = json.loads(done.read_text())
    state['code']['train.py'] = 'another version'
    done.write_text(json.dumps(state))
    assert reproduce.main(args[:-1]) == 0
    assert json.loads(done.read_text())['figures']['rows'][0]['triton_ms'] == 4
    assert sorted(os.listdir(tmp_path / 'out' / 'bench' / 'bench')) == sorted(os.path.basename(f) for f in made if 'bench-' in f)
    profile = json.loads((tmp_path / 'out' / 'profile' / 'done.json').read_text())
    assert profile['status'] == 'ok' and profile['figures']['folder'] == os.path.basename(made[2])


def test_the_blf_stage_runs_its_seeds_interleaved_in_one_process_and_resumes_the_missing_one(
        tmp_path, cifar_dir, monkeypatch):
    calls, commands = [], []
    fake = fake_train_py(calls)
    monkeypatch.setattr(reproduce.Context, 'run', lambda self, cmd, **kw: (commands.append(cmd), fake(self, cmd))[1])
    monkeypatch.setattr(reproduce, 'stage_figures', lambda ctx, names: ({}, 'figures'))
    args = ['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path), '--stage', 'blf']
    assert reproduce.main(args) == 0
    (command,) = commands
    assert command[1] == 'train_many.py' and len(command) == 2 + 3 * len(reproduce.BLF_CONFIGS)
    order = [(os.path.basename(value(line, '--out-dir')), int(value(line, '--seed'))) for line in command[2:]]
    assert order == [(name, seed) for seed in range(3) for name in reproduce.BLF_CONFIGS], 'seed-major'
    assert calls == [(seed, 1) for _, seed in order], 'one run per invocation'
    for record in (tmp_path / 'blf' / 'blf-mask').iterdir():  # lose one seed's record, as a cut run would
        if '"seed": 2' in (record / 'runs.jsonl').read_text():
            shutil.rmtree(record)
    (tmp_path / 'blf' / 'done.json').unlink()
    assert reproduce.main(args) == 0
    assert commands[1][1] == 'train.py' and value(shlex.join(commands[1][1:]), '--seed') == '2'
    assert value(shlex.join(commands[1][1:]), '--out-dir').endswith('blf-mask'), 'only the missing seed runs again'


def test_with_several_gpus_each_group_goes_to_torchrun_and_one_seed_to_train_py(tmp_path, cifar_dir, monkeypatch):
    commands = []
    monkeypatch.setattr(reproduce.Context, 'run', lambda self, cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(reproduce, 'gpu_count', lambda: 2)
    args = reproduce.parse_args(['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path)])
    reproduce.Context(args, 'core').train_all([(str(tmp_path / 'a'), [], 3, 0), (str(tmp_path / 'b'), ['--blf', '0.9'], 1, 2)])
    assert [cmd[1:6] for cmd in commands] == [['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'],
                                              ['train.py', '--data-dir', cifar_dir, '--no-download', '--device']]
    assert commands[0][-4:] == ['--runs', '3', '--seed', '0'] and commands[1][-4:] == ['--runs', '1', '--seed', '2']


def value(line, flag):
    argv = shlex.split(line)
    return argv[argv.index(flag) + 1]


def test_a_record_of_another_command_fails_the_stage_instead_of_being_pooled(tmp_path, cifar_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce.Context, 'run', fake_train_py(calls))
    monkeypatch.setitem(reproduce.STAGES, 'core', (five_runs_stage, 'five runs', 1, False))
    stranger = tmp_path / 'core' / 'group' / 'stranger'
    stranger.mkdir(parents=True)
    (stranger / 'config.json').write_text('{}')
    (stranger / 'command.txt').write_text('python train.py --epochs 10 --seed 0\n')
    assert reproduce.main(['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path), '--stage', 'core']) == 1
    assert calls == [] and 'was not made by this stage' in (tmp_path / 'summary.md').read_text()


def test_a_torn_record_is_set_aside_and_its_seeds_run_again(tmp_path, cifar_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce.Context, 'run', fake_train_py(calls))
    monkeypatch.setitem(reproduce.STAGES, 'core', (five_runs_stage, 'five runs', 1, False))
    args = ['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path), '--stage', 'core']
    assert reproduce.main(args) == 0
    (record,) = (tmp_path / 'core' / 'group').iterdir()
    with open(record / 'runs.jsonl', 'a') as fh:
        fh.write('{"seed": 5, "test_a')  # what a kill in the middle of a write leaves
    (tmp_path / 'core' / 'done.json').unlink()
    assert reproduce.main(args) == 0
    assert calls == [(0, 5), (0, 5)] and (tmp_path / 'core' / 'group' / 'set-aside' / record.name).is_dir()


def test_a_record_of_other_code_is_set_aside_and_one_of_unchanged_code_is_kept(tmp_path, cifar_dir, monkeypatch, capsys):
    """A fix between two attempts: the completed stage runs again; a record whose code changed is set
    aside and its seeds run again, one whose code did not change (another file did) is pooled as is."""
    calls = []
    monkeypatch.setattr(reproduce.Context, 'run', fake_train_py(calls))
    monkeypatch.setitem(reproduce.STAGES, 'core', (five_runs_stage, 'five runs', 1, False))
    args = ['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path), '--stage', 'core']
    assert reproduce.main(args) == 0 and reproduce.main(args) == 0 and calls == [(0, 5)]
    assert 'already complete' in capsys.readouterr().out

    now = reproduce.repo_code()
    monkeypatch.setattr(reproduce, 'repo_code', lambda: {**now, 'bench_blf.py': 'another'})  # not what train.py ran
    assert reproduce.main(args) == 0 and calls == [(0, 5)], 'the records are of unchanged code: nothing to run'
    assert 'the code changed since (bench_blf.py): running it again' in capsys.readouterr().out

    (record,) = (tmp_path / 'core' / 'group').iterdir()
    env = json.loads((record / 'env.json').read_text())
    (record / 'env.json').write_text(json.dumps({'code': {**env['code'], 'networks.py': 'before-the-fix'}}))
    monkeypatch.setattr(reproduce, 'repo_code', lambda: {**now, 'networks.py': 'the-fix'})
    assert reproduce.main(args) == 0 and calls == [(0, 5), (0, 5)]
    assert (tmp_path / 'core' / 'group' / 'set-aside' / record.name).is_dir()
    assert f'{record} was made by other code (networks.py)' in capsys.readouterr().out
    assert json.loads((tmp_path / 'core' / 'done.json').read_text())['figures']['group']['acc']['n'] == 5


def test_a_completed_stage_is_of_the_code_it_ran_less_the_runner_itself():
    """An edit of the runner (a message, a new stage) does not redo the stages it completed: their
    figures rest on the records and the code that made them; every other Python file counts."""
    code = reproduce.repo_code()
    assert 'reproduce.py' not in code
    assert {'train.py', 'kernels/selection.py', 'bench_blf.py', 'tests/test_blf.py', 'summarize.py'} <= code.keys()


def test_a_figure_never_rests_on_a_group_that_pools_a_seed_twice(tmp_path):
    for name in ('r1', 'r2'):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'runs.jsonl').write_text(json.dumps({'seed': 0, 'test_acc': 0.94, 'time_s': 10.0}) + '\n')
    with pytest.raises(reproduce.StageFailed, match='seed.s. 0 finished in more than one run'):
        reproduce.group_figures(str(tmp_path))


def test_a_record_that_names_no_code_is_not_pooled(tmp_path):
    (tmp_path / 'env.json').write_text('{"torch": "2.11"}')
    assert reproduce.code_changed_since(str(tmp_path)) == ['its env.json names no code']
    (tmp_path / 'env.json').unlink()
    assert reproduce.code_changed_since(str(tmp_path)) == ['its env.json names no code']


def test_code_hashes_ignore_comments_blank_lines_and_trailing_spaces_but_not_code(tmp_path):
    (tmp_path / 'a.py').write_text('def f(x):\n    return x + 1\n')
    first = code_hash(tmp_path / 'a.py')
    (tmp_path / 'a.py').write_text('# why\ndef f(x):  # the step\n\n    return x + 1   \n# end\n')
    assert code_hash(tmp_path / 'a.py') == first
    (tmp_path / 'a.py').write_text('def f(x):\n    return x + 2\n')
    assert code_hash(tmp_path / 'a.py') != first
    (tmp_path / 'a.py').write_text('def f(x):\n    return "x + 1  # not a comment"\n')
    with_hash_in_string = code_hash(tmp_path / 'a.py')
    (tmp_path / 'a.py').write_text('def f(x):\n    return "x + 1"\n')
    assert code_hash(tmp_path / 'a.py') != with_hash_in_string, 'a # inside a string is code'
    (tmp_path / 'a.py').write_text('def f(x:\n')  # does not tokenize: its bytes count
    assert code_hash(tmp_path / 'a.py') not in (None, first)
    assert code_hashes(['a.py', 'gone.py'], root=tmp_path)['gone.py'] is None
    assert reproduce.code_differences({'a': '1', 'b': '2'}, {'a': '1', 'b': '3', 'c': '4'}) == ['b', 'c']


def other_pythons():
    """Python interpreters of another version than this one that actually run (a pyenv shim of a
    version that is not selected does not)."""
    import glob
    import shutil
    found = {}
    for path in [*(shutil.which(f'python3.{m}') for m in range(8, 15)),
                 *glob.glob(os.path.expanduser('~/.pyenv/versions/3.*/bin/python3'))]:
        try:
            res = subprocess.run([path, '-c', 'import sys; print(sys.version_info[1])'], capture_output=True,
                                 text=True, timeout=30) if path else None
        except OSError:
            continue
        if res and res.returncode == 0 and int(res.stdout) not in (sys.version_info[1], *found) \
                and int(res.stdout) >= 8:
            found[int(res.stdout)] = path
    return list(found.values())


def test_code_hashes_are_the_same_on_every_python_version():
    """The GPU machines run Python 3.12, this one 3.11: a record's code must hash alike on both
    (a dump of the syntax tree does not: 3.12 adds fields to it)."""
    import inspect
    import record
    pythons = other_pythons()
    if not pythons:
        pytest.skip('no Python of another version runs on this machine')
    files = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob('*.py'), *REPO.glob('kernels/*.py')])
    program = ('import hashlib, io, json, sys, tokenize\n' + inspect.getsource(record.code_hash) +
               'print(json.dumps({f: code_hash(f) for f in sys.argv[1:]}))')
    for python in pythons:
        res = subprocess.run([python, '-c', program, *files], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == code_hashes(files), python


def test_loaded_code_is_the_repos_imported_modules_without_tests_or_hidden_folders(monkeypatch):
    import types
    for name, path in (('fake_venv_module', REPO / '.venv' / 'lib' / 'site-packages' / 'x.py'),
                       ('fake_outside', REPO.parent / 'elsewhere.py'), ('fake_relative', 'networks_copy.py')):
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(__file__=str(path)))
    files = loaded_code()
    assert {'reproduce.py', 'record.py', 'kernels/__init__.py'} <= set(files)
    assert not any(f.startswith(('tests', '.', '..')) or 'site-packages' in f for f in files)
    assert 'networks_copy.py' not in files and '_ops.py' not in files, 'a relative __file__ is nobody\'s file here'
    assert all(code_hashes(files).values())


SLOW_COMMAND = """
import signal, sys, time
def closing(*_):
    print('closing the record', flush=True)
    open(sys.argv[1], 'w').write('closed')
    sys.exit(130)
signal.signal(signal.SIGINT, closing)
print('started', flush=True)
time.sleep(60)
"""


def test_a_command_past_the_budget_gets_ctrl_c_and_closes_its_record(tmp_path, cifar_dir):
    args = reproduce.parse_args(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path)])
    ctx = reproduce.Context(args, 'core', budget_end=time.monotonic() + 4)  # time for the command to start under load
    with pytest.raises(reproduce.OutOfTime):
        ctx.run([sys.executable, '-c', SLOW_COMMAND, str(tmp_path / 'closed')])
    assert (tmp_path / 'closed').read_text() == 'closed'
    log = (tmp_path / 'core' / 'log.txt').read_text()
    assert 'started' in log and 'closing the record' in log and '# stopped: --budget-min is spent' in log


def test_sigterm_stops_the_command_packs_and_exits_3(tmp_path, cifar_dir, monkeypatch):
    def slow_stage(ctx):
        ctx.run([sys.executable, '-c', SLOW_COMMAND, str(tmp_path / 'closed')])
        return {}, 'never reached'
    monkeypatch.setitem(reproduce.STAGES, 'bench', (slow_stage, 'a slow stage', 1, False))
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    (tmp_path / 'job').mkdir()  # the job's output folder: the pack must be there although the job was stopped
    code = reproduce.main(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path / 'out'),
                           '--stage', 'bench', 'blf', '--copy-pack-to', str(tmp_path / 'job')])
    timer.join()
    assert code == 3 and (tmp_path / 'closed').read_text() == 'closed'
    assert json.loads((tmp_path / 'out' / 'bench' / 'done.json').read_text())['status'] == 'incomplete'
    assert not (tmp_path / 'out' / 'blf').exists(), 'no stage starts after a stop'
    assert (tmp_path / 'out' / reproduce.PACK).is_file() and signal.getsignal(signal.SIGTERM) == before
    assert (tmp_path / 'job' / reproduce.PACK).read_bytes() == (tmp_path / 'out' / reproduce.PACK).read_bytes()
    assert sorted(p.name for p in (tmp_path / 'job').iterdir()) == [reproduce.PACK]


def test_a_stage_that_starts_over_is_deferred_when_it_does_not_fit_and_later_stages_use_the_time(
        tmp_path, cifar_dir, monkeypatch, capsys):
    import types
    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(reproduce, 'time', types.SimpleNamespace(monotonic=lambda: clock.now))
    ran = []

    def stage(name, minutes):
        def run(ctx):
            ran.append(name)
            clock.now += 60 * minutes
            return {}, name
        return run
    monkeypatch.setitem(reproduce.STAGES, 'core', (stage('core', 2), 'two minutes', 2, False))
    monkeypatch.setitem(reproduce.STAGES, 'bench', (stage('bench', 1.5), 'starts over when cut', 1.5, False))
    monkeypatch.setitem(reproduce.STAGES, 'blf', (stage('blf', 0.5), 'resumable', 5, False))
    args = ['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path), '--budget-min', '3',
            '--stage', 'core', 'bench', 'blf']
    assert reproduce.main(args) == 3 and ran == ['core', 'blf']
    captured = capsys.readouterr()
    assert '== bench: deferred to the next run: it starts over when cut, and its estimated 1.5 min do not fit ' \
           'in the 1.0 min left' in captured.out and 'bench deferred for want of time' in captured.err
    assert reproduce.main(args) == 0 and ran == ['core', 'blf', 'bench']
    monkeypatch.setitem(reproduce.STAGES, 'bench', (stage('bench', 1), 'longer than a whole budget', 4, False))
    (tmp_path / 'bench' / 'done.json').unlink()
    clock.now += 1
    assert reproduce.main([*args[:-4], '--budget-min', '0.5', '--stage', 'bench']) == 0 and ran[-1] == 'bench', \
        'a stage longer than a whole budget is never deferred (it would wait forever)'


def test_a_spent_budget_starts_no_stage(tmp_path, cifar_dir, capsys):
    assert reproduce.main(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path),
                           '--budget-min', '0']) == 3
    captured = capsys.readouterr()
    assert 'run the same command again to resume' in captured.err and 'nothing packed: no stage ran' in captured.out
    assert not any(p.is_dir() for p in tmp_path.iterdir())


@pytest.mark.parametrize('args, message', [
    (['--device', 'cpu'], 'only --smoke makes sense'),
    (['--smoke', '--device', 'cpu', '--data-dir', '/nonexistent'], 'no cifar-10-batches-py/ in /nonexistent'),
    (['--smoke', '--device', 'cpu', '--copy-pack-to', '/nonexistent'], '--copy-pack-to /nonexistent is not a folder'),
    (['--smoke', '--bogus'], 'error: unrecognized arguments: --bogus (see --help)'),
    (['--smoke', '--stage', 'nope'], "error: argument --stage: invalid choice: 'nope'"),
    (['--smoke', '--budget-min', 'ten'], "error: argument --budget-min: invalid float value: 'ten'"),
])
def test_user_errors_are_one_line(args, message, tmp_path):
    """Each is caught before anything is written, whether or not data/ holds the data set."""
    res = run_script('reproduce.py', *args, '--out', tmp_path / 'out')
    assert res.returncode == 2 and res.stderr.strip().count('\n') == 0 and message in res.stderr
    assert not (tmp_path / 'out').exists()


def test_bench_runs_before_the_data_set_is_on_the_machine_and_the_other_stages_do_not(tmp_path, monkeypatch, capsys):
    """On the lent GPU the data set comes in two calls; bench reads none of it, so the first call runs it."""
    ran = []
    monkeypatch.setitem(reproduce.STAGES, 'bench', (lambda ctx: ran.append(ctx.dir) or ({}, 'benched'), 'no data', 1, False))
    args = ['--smoke', '--device', 'cpu', '--data-dir', str(tmp_path / 'not-yet'), '--out', str(tmp_path / 'out')]
    assert reproduce.main([*args, '--stage', 'bench']) == 0 and ran == [str(tmp_path / 'out' / 'bench')]
    for stages in (['bench', 'core'], ['tests']):
        assert reproduce.main([*args, '--stage', *stages]) == 2
        assert 'no cifar-10-batches-py/ in' in capsys.readouterr().err
    assert len(ran) == 1 and reproduce.NEEDS_NO_DATA == {'bench'}


def test_the_two_tests_stages_run_every_gpu_test_once_and_only_the_compiling_ones_wait():
    """pytest's own selection by marker: `tests` and `tests-compile` together run each GPU test and
    each kernel test (natively there) exactly once, and tests-compile holds the torch.compile tests
    (minutes each) and nothing else."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / 'tests').glob('test_*.py')
                   if 'mark.gpu' in p.read_text() or 'mark.native' in p.read_text())
    markers = ['gpu or native', reproduce.GPU_TESTS['tests'], reproduce.GPU_TESTS['tests-compile']]
    script = ('import sys, pytest\n'  # one process for the three collections: torch is imported once
              'for m in sys.argv[1:4]:\n'
              '    print("== " + m, flush=True)\n'
              '    assert pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", m, *sys.argv[4:]]) == 0\n')
    res = subprocess.run([sys.executable, '-c', script, *markers, *files], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    every, plain, compiling = ({line for line in part.splitlines() if '::' in line} for part in res.stdout.split('== ')[1:])
    assert len(every) >= 13 and plain | compiling == every and not plain & compiling
    assert compiling and all(node.startswith('tests/test_torch_compile.py::test_gpu_') for node in compiling)
    kernel_tests = {node for node in plain if node.startswith('tests/test_kernels.py::')}
    assert len(kernel_tests) >= 100 and 'tests/test_kernels.py::test_the_sample_that_crosses_the_threshold_is_kept' in plain


def documented_carries(number):
    """The paths results/README.md's call N carries ('**Call N**, ... carrying `PATHS`, ...')."""
    text = (REPO / 'results' / 'README.md').read_text()
    head = text.split(f'**Call {number}**', 1)[1].split('```', 1)[0]
    return re.search(r'carrying `([^`]*)`', head).group(1).split()


def once_here_command():
    """results/README.md's 'Once, here:' command, which fills .cifar/ from ../shared/cifar10."""
    text = (REPO / 'results' / 'README.md').read_text()
    return re.search(r'Once, here: `([^`]*)`', text).group(1)


AIRBENCH_SCRIPTS_AT_MOST = 256 * 2 ** 10  # the two published scripts: 37 KiB (37,671 bytes) at f1c599c


def test_the_tracked_tree_and_each_half_of_the_data_fit_in_one_device_call():
    """results/README.md's GPU plan: each call carries the working tree and half the data set, and a
    call carries at most 64 MiB (63 here, a margin). Committed results travel with the tree, so they
    must stay small; the halves are equal so that the tree has the most room in both calls."""
    if not (SHARED / 'train-0.npz').is_file() or not (REPO / '.git').exists():
        pytest.skip('needs a git checkout with ../shared/cifar10 beside it')
    tracked = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True, text=True, check=True).stdout
    tree = sum(os.path.getsize(REPO / f) for f in tracked.split('\0') if f and (REPO / f).is_file())
    test_npz = (SHARED / 'test.npz').stat().st_size
    size = {'.cifar/test.npz.part-00': test_npz // 2, '.cifar/test.npz.part-01': test_npz - test_npz // 2,
            '.airbench': AIRBENCH_SCRIPTS_AT_MOST}  # split -n 2: the remainder goes to the last part
    for call in (1, 2):
        data = sum(size.get(path) or (SHARED / path.removeprefix('.cifar/')).stat().st_size
                   for path in documented_carries(call))
        assert tree + data <= 63 * 2 ** 20, f'call {call}: tree {tree / 2**20:.1f} MiB + data {data / 2**20:.1f} MiB'


def test_the_two_calls_carry_the_data_set_whole_and_call_2_joins_it(tmp_path):
    """'Once, here' cuts test.npz in two; call 1 and call 2 each carry one part (and a training chunk),
    call 2 joins them before unpack.py: every file unpack.py reads arrives, test.npz byte for byte."""
    shared, here, there = tmp_path / 'shared' / 'cifar10', tmp_path / 'repo', tmp_path / 'machine'
    shared.mkdir(parents=True), here.mkdir(), there.mkdir()
    files = {'train-0.npz': os.urandom(1000), 'train-1.npz': os.urandom(1001), 'test.npz': os.urandom(100_003),
             'manifest.json': b'{}', 'unpack.py': b'', 'README.md': b''}
    for name, content in files.items():
        (shared / name).write_bytes(content)
        (shared / name).chmod(0o444)  # read-only, as ../shared is
    subprocess.run(['bash', '-c', once_here_command()], cwd=here, check=True)
    for path in documented_carries(1) + documented_carries(2):  # the machine keeps what a call brought
        if path.startswith('.cifar/'):
            (there / '.cifar').mkdir(exist_ok=True)
            shutil.copy(here / path, there / path)
    block = documented_call(2)[0]
    (join,) = re.findall(r'cat [^;&|{}]*> \.cifar/test\.npz', block)
    subprocess.run(['bash', '-c', join], cwd=there, check=True)
    for name in ('train-0.npz', 'train-1.npz', 'test.npz', 'manifest.json', 'unpack.py'):
        assert (there / '.cifar' / name).read_bytes() == files[name], name
    assert f'{join} && python3 .cifar/unpack.py /tmp/data --check' in block, 'the join, then every pixel checked'


def documented_call(number):
    """results/README.md's GPU plan: the bash block under '**Call N**', and its reproduce.py options."""
    text = (REPO / 'results' / 'README.md').read_text()
    block = text.split(f'**Call {number}**', 1)[1].split('```bash\n', 1)[1].split('```', 1)[0]
    line = next(line for line in block.splitlines() if 'reproduce.py' in line)
    # The tool gives $OUT as an absolute folder (the caller runs from the repository root, where the
    # call's relative paths start).
    words = shlex.split(line.split('2>&1')[0].replace('$OUT', '/OUT'))
    timeout = int(words[words.index('timeout') + 1])
    return block, timeout, reproduce.parse_args(words[words.index('reproduce.py') + 1:])


def test_the_documented_gpu_calls_fit_the_device_tool_and_stop_before_it_does(monkeypatch):
    """The two calls of the GPU plan: each under the tool's 2,000 characters; call 1, which has only
    half the data set, runs only stages that read none; each stops itself (--budget-min) and is
    stopped by `timeout` before the tool's 600 s; both pack into $OUT and resume the same OUT."""
    monkeypatch.chdir(REPO)  # where the calls run
    first, second = documented_call(1), documented_call(2)
    for block, timeout, args in (first, second):
        assert len('; '.join(block.strip().splitlines())) <= 2000
        assert args.copy_pack_to == '/OUT' and args.out == first[2].out
        assert 60 * args.budget_min + reproduce.STOP_GRACE_S + 30 <= timeout <= 570
    assert first[2].stage and set(first[2].stage) <= reproduce.NEEDS_NO_DATA
    assert second[2].stage is None, 'call 2 runs every stage in order until its budget ends'
    assert f'unpack.py {second[2].data_dir}' in second[0]
    assert f'cp -r results/$G/reproduce {os.path.dirname(first[2].out)}' in first[0], \
        'call 1 resumes from the committed pack of its GPU'
    airbench = [os.path.relpath(path, REPO) for path in second[2].airbench]
    assert airbench and all(path.startswith('.airbench/') for path in airbench)
    ignored = subprocess.run(['git', 'check-ignore', '--no-index', *airbench], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    assert ignored == airbench, 'the published scripts are carried to the machine, never committed'


@pytest.mark.parametrize('name', ['NVIDIA H100 80GB HBM3', 'NVIDIA H200', 'NVIDIA H100 PCIe', 'NVIDIA A100-SXM4-80GB'])
def test_call_1_finds_the_gpus_folder_where_reproduce_says_its_records_belong(name, tmp_path):
    """Call 1 names the GPU's results folder from nvidia-smi before any Python runs; it must be the
    folder reproduce.py names from torch's device name (the same driver string), or a session would
    start afresh beside the records it should resume."""
    block = documented_call(1)[0]
    (expression,) = re.findall(r'G=\$\(([^()]*)\)', block)
    fake = tmp_path / 'nvidia-smi'
    fake.write_text(f'#!/bin/sh\nprintf "{name}\\n{name}\\n"\n')  # a machine with two of them
    fake.chmod(0o755)
    res = subprocess.run(['bash', '-c', expression], capture_output=True, text=True,
                         env={**os.environ, 'PATH': f'{tmp_path}{os.pathsep}{os.environ["PATH"]}'})
    assert res.returncode == 0 and res.stdout.strip() == reproduce.machine_folder(name), res.stderr


def test_an_out_of_another_machine_stops_the_run_before_any_stage(tmp_path, cifar_dir, monkeypatch, capsys):
    """OUT/machine.json names the GPU and software of its first run: the same machine resumes, and a
    run on another (an H200 given an H100's records, or another torch) stops in one line, writing
    nothing, rather than pool two machines' times."""
    ran = []
    monkeypatch.setitem(reproduce.STAGES, 'core', (lambda ctx: ran.append(ctx.dir) or ({}, 'ran'), 'a stage', 1, False))
    args = ['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path), '--stage', 'core']
    assert reproduce.main(args) == 0 and len(ran) == 1
    made_on = json.loads((tmp_path / 'machine.json').read_text())
    assert made_on == reproduce.machine('cpu') and list(made_on) == list(summarize.MACHINE_KEYS)
    (tmp_path / 'core' / 'done.json').unlink()
    assert reproduce.main(args) == 0 and len(ran) == 2, 'the same machine resumes'
    capsys.readouterr()
    # values that differ from this machine's whatever it is (the lent GPUs run torch 2.11.0+cu130 itself)
    others = {'device': ['NVIDIA H200', 'NVIDIA H100 80GB HBM3'], 'torch': ['2.11.0+cu130', '2.13.0+cpu']}
    for key, candidates in others.items():
        other = next(value for value in candidates if value != made_on[key])
        (tmp_path / 'machine.json').write_text(json.dumps({**made_on, key: other}))
        files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*')}
        assert reproduce.main(args) == 2 and len(ran) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and f'{key} {other} there, {made_on[key]} here' in err, err
        assert f'results/{reproduce.machine_folder(made_on["device"])}/reproduce' in err
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*')} == files, 'nothing written'


def test_the_airbench_stage_runs_the_script_on_our_data_then_our_recipe_and_keeps_none_of_its_code(smoke):
    """The stand-in script read the cache written from our data (its asserts), its three eval rows
    were parsed, our recipe of the same name ran beside it, and its cache and logs (its code) are gone."""
    _, out = smoke
    fig = json.loads((out / 'airbench' / 'done.json').read_text())['figures']['airbench94']
    theirs = fig['published_script']
    assert theirs['acc']['n'] == 3 and 0.2 < theirs['acc']['mean'] < 0.4 and not theirs['stopped_early']
    assert theirs['script'] == 'airbench94.py'
    assert theirs['script_sha256'] == hashlib.sha256(open(FAKE_AIRBENCH, 'rb').read()).hexdigest()
    assert fig['ours']['acc']['n'] == 2 and fig['time_ratio_ours_to_theirs'] > 0
    assert sorted(p.name for p in (out / 'airbench' / 'airbench94').iterdir()) == ['published_script.json']
    assert json.loads((out / 'airbench' / 'airbench94' / 'published_script.json').read_text()) == theirs
    with tarfile.open(out / reproduce.PACK) as tar:
        assert not any('/logs/' in n or n.endswith('.pt') for n in tar.getnames())


def run_stand_in_script(tmp_path, cifar_dir, name, code, stage_min='0.5'):
    """A stand-in for a published script (its code, under its name) through run_airbench_script in
    a stage of `stage_min` minutes: its figures and the stage's log."""
    script = tmp_path / name
    script.write_text(code)
    args = reproduce.parse_args(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path / 'out'),
                                 '--stage-timeout-min', stage_min])
    ctx = reproduce.Context(args, 'airbench')
    theirs = reproduce.run_airbench_script(ctx, str(script), script.stem, str(tmp_path / 'out' / 'airbench' / script.stem))
    return theirs, (tmp_path / 'out' / 'airbench' / 'log.txt').read_text()


def test_a_published_script_that_outruns_its_share_is_stopped_and_its_finished_runs_count(tmp_path, cifar_dir):
    """airbench94_muon.py runs 200 seeds, more than a stage has time for: after its third of the
    time left (10 s of 30 here) it gets Ctrl-C, and the runs it finished make its figures
    (stopped_early says so)."""
    theirs, log = run_stand_in_script(tmp_path, cifar_dir, 'airbench94_muon.py', (
        'import time\n'
        'print("|  run  |  epoch  |  tta_val_acc  |  time_seconds  |")\n'
        'for run, acc in ((0, 0.9401), (1, 0.9395)):\n'
        '    print(f"|  {run}  |  1  |  |  1.0  |")\n'
        '    print(f"|  |  eval  |  {acc}  |  3.{run}  |", flush=True)\n'
        'time.sleep(600)  # the other 198 runs\n'))  # the stage's timeout would raise
    script = tmp_path / 'airbench94_muon.py'
    assert theirs['stopped_early'] and theirs['acc']['n'] == 2 and theirs['time_s']['median'] == 3.05
    assert theirs['script_sha256'] == hashlib.sha256(script.read_bytes()).hexdigest()
    share = re.search(r"# stopped after (\d+) s \(the stage's share", log)
    assert share and 5 <= int(share[1]) <= 10, log  # a third of the 30 s, less writing the cache
    assert f'File "{script}", line 6' in log and 'KeyboardInterrupt' in log, 'its traceback is logged...'
    assert 'time.sleep(600)' not in log and "source line(s), left out" in log, '...without its code'
    assert not (tmp_path / 'out' / 'airbench' / 'airbench94_muon' / 'cifar10').exists(), 'the cache written for it is deleted'


def test_lines_that_arrive_together_are_each_read_at_once_and_as_text_mode_splits_them(tmp_path):
    """Two runs' rows written in one go, then a long silence: both must be read before the silence
    ends (a buffered readline kept the second until more output came, so a script's finished runs
    were seen late). Line ends as text mode gives them ('\r\n' and '\r' become '\n', even when a
    '\r\n' is split across two writes), bad UTF-8 replaced, a last line without its end kept."""
    code = ('import os, sys, time\n'
            'os.write(1, b"run 0\\nrun 1\\n"); time.sleep(3)\n'
            'os.write(1, b"crlf\\r\\nprogress 1%\\rprogress 2%\\r"); time.sleep(0.5)\n'
            'os.write(1, b"\\nbad \\xff byte\\nhalf a line"); time.sleep(0.5)\n'
            'os.write(1, b" and its end\\nlast, no end")\n')
    proc = reproduce.spawn([sys.executable, '-c', code], str(tmp_path), {**os.environ})
    first = []
    with pytest.raises(TimeoutError):
        for text in reproduce.iter_lines(proc, 1.5):
            first.append(text)
    assert first == ['run 0\n', 'run 1\n']
    rest = list(reproduce.iter_lines(proc, 10))
    assert rest == ['crlf\n', 'progress 1%\n', 'progress 2%\n', 'bad \ufffd byte\n', 'half a line and its end\n', 'last, no end']
    assert proc.returncode == 0


def test_a_published_script_is_stopped_once_it_has_finished_the_runs_the_stage_needs(tmp_path, cifar_dir):
    """Its 11th run never counts: Ctrl-C comes after the 10th eval row, before its share of the
    time (10 s here) ends, and the script's own code stays out of the log."""
    theirs, log = run_stand_in_script(tmp_path, cifar_dir, 'airbench94.py', (
        'import time\n'
        'print("|  run  |  epoch  |  tta_val_acc  |  total_time_seconds  |")\n'
        'for run in range(25):\n'
        '    print(f"|  {run}  |  eval  |  0.94{run:02d}  |  {3 + run / 100}  |", flush=True)\n'
        '    time.sleep(0.5)\n'))
    assert theirs['acc']['n'] == 10 and theirs['stopped_early']
    assert (theirs['runs_wanted'], theirs['share_of_time_left']) == (10, 0.3333), 'the figures say which rule stopped it'
    assert theirs['time_s'] == pytest.approx({'median': 3.045, 'min': 3.0, 'max': 3.09})
    assert '|  9  |  eval' in log and '|  10  |' not in log and '# stopped: 10 finished run(s)' in log
    assert 'time.sleep(0.5)' not in log


def test_a_script_started_in_the_background_still_takes_the_ctrl_c_that_ends_its_share(tmp_path, cifar_dir):
    """reproduce.py started with Ctrl-C ignored (`... &` in a shell without job control): the
    published script must not inherit that, or it sits out the Ctrl-C after its share and is killed
    STOP_GRACE_S later, past the stage's 30 s here, which fails the stage."""
    script = tmp_path / 'airbench94.py'
    script.write_text('import time\n'
                      'print("|  run  |  epoch  |  tta_val_acc  |  time_seconds  |")\n'
                      'print("|  0  |  eval  |  0.9400  |  3.0  |", flush=True)\n'
                      'time.sleep(600)\n')
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, 'reproduce.py', '--smoke', '--device', 'cpu', '--data-dir', cifar_dir,
                           '--out', str(out), '--stage', 'airbench', '--airbench', str(script), '--stage-timeout-min', '0.5'],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    log = (out / 'airbench' / 'log.txt').read_text()
    assert 'KeyboardInterrupt' in log, log
    theirs = json.loads((out / 'airbench' / 'done.json').read_text())['figures']['airbench94']['published_script']
    assert theirs['acc']['n'] == 1 and theirs['stopped_early'], proc.stdout + proc.stderr


def test_a_published_scripts_warm_up_longer_than_its_share_still_gives_a_finished_run(tmp_path, cifar_dir):
    """airbench94_muon.py trains a warm-up run and compiles before its first timed run: when that
    outlasts its share (10 s of a 30-s stage here), it goes on until one run has finished, and is
    stopped then, not at the 10th run, since its share is over."""
    theirs, log = run_stand_in_script(tmp_path, cifar_dir, 'airbench94_muon.py', (
        'import time\n'
        'print("|  run  |  epoch  |  tta_val_acc  |  time_seconds  |")\n'
        'print("|  warmup  |  eval  |  0.1000  |  0.0  |", flush=True)\n'
        'time.sleep(12)  # max-autotune\n'
        'for run in range(200):\n'
        '    print(f"|  {run}  |  eval  |  0.9400  |  2.{run}  |", flush=True)\n'
        '    time.sleep(1)\n'))
    assert theirs['acc'] == {'mean': 0.94, 'std': 0.0, 'n': 1} and theirs['stopped_early']
    share = re.search(r'# its share of (\d+) s is over before its first run has finished', log)
    assert share and 5 <= int(share[1]) <= 10, log
    assert '# stopped: 1 finished run(s)' in log and '|  1  |' not in log


def test_a_published_script_with_no_finished_run_when_the_stage_ends_fails_the_stage(tmp_path, cifar_dir):
    with pytest.raises(reproduce.StageFailed, match='ran past --stage-timeout-min 0.25'):
        run_stand_in_script(tmp_path, cifar_dir, 'airbench94_muon.py', (
            'import time\nprint("|  run  |  epoch  |  tta_val_acc  |  time_seconds  |", flush=True)\n'
            'time.sleep(600)\n'), stage_min='0.25')
    log = (tmp_path / 'out' / 'airbench' / 'log.txt').read_text()
    assert re.search(r'# its share of [2-5] s is over', log) and '# stopped: the stage ran past --stage-timeout-min' in log
    assert not (tmp_path / 'out' / 'airbench' / 'airbench94_muon' / 'cifar10').exists(), 'the cache written for it is deleted'


def test_a_published_scripts_source_lines_are_left_out_of_its_tracebacks_and_nothing_else():
    """Python's traceback and torch.compile's 'from user code' quote the script's lines under each of
    its frames (indented deeper, carets included); other files' frames and everything else stay."""
    path = os.path.abspath('airbench94_muon.py')
    keep_line = reproduce.without_quotes_of('airbench94_muon.py')
    out = [
        '|  0  |  eval  |  0.9401  |  3.8  |\n',
        'Traceback (most recent call last):\n',
        f'  File "{path}", line 300, in <module>\n',
        '    main(run)\n',
        f'  File "{path}", line 250, in main\n',
        '    loss = model(inputs)\n',
        '           ^^^^^^^^^^^^^\n',
        '  File "/usr/lib/torch/nn/modules/module.py", line 1778, in _wrapped_call_impl\n',
        '    return self._call_impl(*args, **kwargs)\n',
        'KeyboardInterrupt\n',
        'from user code:\n',
        f'   File "{path}", line 96, in forward\n',
        '    x = self.conv1(x)\n',
        '\n',
        '    indented output after a blank line\n',
        f'  File "{path}.bak", line 1, in <module>\n',
        '    another file, kept\n',
    ]
    kept = [line for line in map(keep_line, out) if line is not None]
    told = "[the published script's source line(s), left out of the log]"
    assert [line.strip() for line in kept] == [
        '|  0  |  eval  |  0.9401  |  3.8  |', 'Traceback (most recent call last):',
        f'File "{path}", line 300, in <module>', told, f'File "{path}", line 250, in main', told,
        'File "/usr/lib/torch/nn/modules/module.py", line 1778, in _wrapped_call_impl',
        'return self._call_impl(*args, **kwargs)', 'KeyboardInterrupt', 'from user code:',
        f'File "{path}", line 96, in forward', told, '', 'indented output after a blank line',
        f'File "{path}.bak", line 1, in <module>', 'another file, kept']


def test_an_airbench_script_that_is_not_there_stops_the_run_before_any_stage(tmp_path, cifar_dir, capsys):
    assert reproduce.main(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path / 'out'),
                           '--airbench', FAKE_AIRBENCH, str(tmp_path / 'airbench94_muon.py')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'airbench94_muon.py: no such file' in err
    assert not (tmp_path / 'out').exists(), 'nothing ran, nothing was written'


def test_the_airbench_stage_without_a_script_is_skipped_not_failed(tmp_path, cifar_dir):
    assert reproduce.main(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path),
                           '--stage', 'airbench']) == 0
    assert json.loads((tmp_path / 'airbench' / 'done.json').read_text())['status'] == 'skipped'


def test_airbench_tables_are_read_by_their_eval_rows():
    out = """|  run  |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |
|  warmup  |      1  |     0.1  |    0.1  |               |    2.0000  |
|       |   eval  |          |         |       0.1000  |    9.0000  |
|    0  |      1  |     0.5  |    0.5  |               |    1.0000  |
|       |   eval  |          |         |       0.9401  |    3.8312  |
|    1  |      1  |     0.5  |    0.5  |               |    1.0000  |
|       |   eval  |          |         |       0.9392  |    3.8001  |
Mean: 0.9401    Std: 0.0000"""
    assert reproduce.airbench_results(out) == [(0.9401, 3.8312), (0.9392, 3.8001)]


def test_the_legacy_airbench94_table_with_its_total_time_column_is_read_too():
    """legacy/airbench94.py names its clock total_time_seconds, has a train_loss column, rules its
    header off with dashes and runs no warm-up: each run's eval row still counts."""
    out = """---------------------------------------------------------------------------------------------
|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |
---------------------------------------------------------------------------------------------
|       0  |      1  |      1.2345  |     0.5000  |   0.6000  |               |              1.1000  |
|          |   eval  |              |             |           |       0.9405  |              3.9000  |
---------------------------------------------------------------------------------------------
|       1  |      1  |      1.2000  |     0.5100  |   0.6100  |               |              1.0500  |
|          |   eval  |              |             |           |       0.9388  |              3.8500  |
---------------------------------------------------------------------------------------------
Mean: 0.9397    Std: 0.0012"""
    assert reproduce.airbench_results(out) == [(0.9405, 3.9), (0.9388, 3.85)]


def test_the_post8_ladder_adds_one_published_step_per_rung_and_ends_at_the_recipe():
    """Each rung keeps the flags of the one before (later values win: lr 0.6 then 0.9), its epochs are
    the post's (24, 24, 23, 20, 18, 17, 15, 14, 13), and the last rung is --recipe myrtle-tricks."""
    import cli
    import recipes
    rungs = list(reproduce.POST8_LADDER.values())
    for before, after in zip(rungs[:-2], rungs[1:-1]):
        assert after[:len(before) - 2] == before[:-2]
    epochs = [cli.parse_args(r).epochs for r in rungs]
    assert epochs == [24, 24, 23, 20, 18, 17, 15, 14, 13, 10]
    eighth = cli.parse_args(rungs[-2])
    final = cli.parse_args(rungs[-1])
    for key in ('pool_before_bn', 'label_smoothing', 'activation', 'ghost_bn', 'frozen_bn_scale', 'whiten', 'ema',
                'ema_every', 'bn_lr_scale', 'bn_weight_decay', 'lr'):
        assert getattr(eighth, key) == pytest.approx(getattr(final, key)) if isinstance(getattr(final, key), float) \
            else getattr(eighth, key) == getattr(final, key), key
    assert eighth.cutout == 5 and final.cutout == 0 and rungs[-1] == ['--recipe', 'myrtle-tricks']
    assert recipes.RECIPES['myrtle-tricks']['tta'] == 1


def test_the_tests_stage_does_not_run_again_what_passed_in_an_earlier_attempt(tmp_path, cifar_dir, monkeypatch):
    args = reproduce.parse_args(['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path)])
    ctx = reproduce.Context(args, 'tests')
    code = reproduce.code_digest(reproduce.repo_code())
    with open(ctx.log_path, 'w') as fh:  # an attempt with other code, then one cut short by the budget in its third test
        fh.write('# code 0123456789abcdef\n'
                 'tests/test_model.py::test_gpu_step_runs_channels_last PASSED                     [  7%]\n'
                 f'# code {code}\n'
                 'tests/test_blf.py::test_gpu_blf_epoch_has_no_host_sync[triton-mask] PASSED    [  7%]\n'
                 'tests/test_kernels.py::test_gpu_kernels_match_reference[dtype0] PASSED          [ 14%]\n'
                 'tests/test_kernels.py::test_gpu_kernels_match_reference[dtype1] FAILED          [ 21%]\n'
                 '# stopped: --budget-min is spent\n')
    commands = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        return 0, '============ 11 passed, 400 deselected in 61.2s ============\n'
    monkeypatch.setattr(ctx, 'run', run)
    counts, line = reproduce.stage_tests(ctx)
    (cmd,) = commands
    deselected = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == '--deselect']
    assert deselected == ['tests/test_blf.py::test_gpu_blf_epoch_has_no_host_sync[triton-mask]',
                          'tests/test_kernels.py::test_gpu_kernels_match_reference[dtype0]']
    assert counts == {'passed': 11, 'deselected': 400, 'passed_in_earlier_attempts': 2}
    assert ctx.log_path and open(ctx.log_path).read().count(f'# code {code}') == 2, 'this attempt names its code'
    assert reproduce.passed_tests(ctx.log_path, 'fedcba9876543210') == set(), 'after a fix every test runs again'



def test_the_tests_stage_counts_from_pytests_closing_line_and_fails_when_a_test_lacks_the_data(tmp_path, monkeypatch):
    args = reproduce.parse_args(['--device', 'cuda', '--data-dir', str(tmp_path), '--out', str(tmp_path / 'out')])
    ctx = reproduce.Context(args, 'tests')
    head = ('collected 460 items / 447 deselected / 13 selected\n'
            'tests/test_kernels.py::test_gpu_kernels_match_reference[dtype0] PASSED          [  7%]\n')
    outputs = [head + '============ 13 passed, 447 deselected in 61.2s ============\n',
               head + 'tests/test_model.py::test_gpu_epoch_has_no_host_sync SKIPPED (CIFAR-10 not found: put it...) [ 14%]\n'
                      '=========================== short test summary info ============================\n'
                      'SKIPPED [1] tests/conftest.py:52: CIFAR-10 not found: put it in data/ or set CIFAR10_DIR\n'
                      '============ 12 passed, 1 skipped, 447 deselected in 60.8s ============\n']
    monkeypatch.setattr(ctx, 'run', lambda cmd, **kwargs: (0, outputs.pop(0)))
    counts, line = reproduce.stage_tests(ctx)
    assert counts == {'passed': 13, 'deselected': 447} and line == 'gpu tests: 13 passed, 447 deselected'
    with pytest.raises(reproduce.StageFailed, match='1 GPU test\\(s\\) skipped for lack of data'):
        reproduce.stage_tests(ctx)


def test_sigterm_to_the_process_group_mid_stage_then_a_rerun_finishes_it_without_repeating_a_seed(tmp_path, cifar_dir):
    """End to end, as `timeout` stops a job (SIGTERM to the whole process group): the real train.py
    closes its record with seed 0, reproduce.py packs and exits 3; the same command then runs seed 1
    only, and the stage counts each seed once."""
    out = tmp_path / 'out'
    cmd = [sys.executable, str(REPO / 'reproduce.py'), '--smoke', '--device', 'cpu', '--data-dir', cifar_dir,
           '--out', str(out), '--stage', 'core']
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith('seed 0: test accuracy'):
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 3, rest
    assert json.loads((out / 'core' / 'done.json').read_text())['status'] == 'incomplete'
    (record,) = (out / 'core' / 'default').iterdir()
    assert json.loads((record / 'summary.json').read_text())['status'] == 'interrupted'
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f'# resumed: seed(s) 0 already finished in {out / "core" / "default"}' in again.stdout
    assert '--runs 1 --seed 1' in again.stdout
    figures = json.loads((out / 'core' / 'done.json').read_text())['figures']
    assert figures['default']['acc']['n'] == 2 and all(fig['acc']['n'] == 2 for fig in figures.values())


def test_a_command_that_outlives_its_grace_is_killed_with_every_process_it_started(monkeypatch):
    """As torchrun's workers do, the grandchild here sits in a session of its own, and the command
    ignores Ctrl-C: stop() must leave neither running (nor a GPU held by an orphan)."""
    monkeypatch.setattr(reproduce, 'STOP_GRACE_S', 1)
    code = ('import signal, subprocess, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); '
            'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True); '
            'print(child.pid, flush=True); time.sleep(300)')
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    grandchild = int(proc.stdout.readline())
    started = time.monotonic()
    reproduce.stop(proc, lambda lines: list(lines))
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started < 15
    assert wait_until_ended(grandchild), 'the grandchild still runs'


def test_the_ladders_line_names_the_rungs_that_lowered_the_accuracy_and_the_short_ones_at_94():
    """A rung is compared with the rung before it in the ladder's order, not with the baseline; a
    shortened rung (--epochs) counts where its mean is 94% or more, 94.00% included."""
    def fig(mean):
        return {'acc': {'mean': mean}}
    figures = {'0-baseline': fig(0.9400), '1-smoothing': fig(0.9420), '2-ema': fig(0.9410), '3-tta2': fig(0.9415),
               '4-bn-groups': fig(0.9430), '5-epochs-16': fig(0.9400), '5-epochs-12': fig(0.9380)}
    verdict = reproduce.ladder_verdict(figures)
    assert verdict == ('lower than the rung before: 2-ema (-0.0010 against 1-smoothing), 5-epochs-16 (-0.0030 against '
                       '4-bn-groups), 5-epochs-12 (-0.0020 against 5-epochs-16); shortened rungs at >= 94%: 5-epochs-16 '
                       '(of 5-epochs-16, 5-epochs-12)')
    rising = {name: fig(0.93 + i / 1000) for i, name in enumerate(['0-baseline', '1-smoothing', '5-epochs-12'])}
    assert reproduce.ladder_verdict(rising) == ('lower than the rung before: none; shortened rungs at >= 94%: none '
                                                '(of 5-epochs-12)')


def test_a_stage_line_names_the_graphs_a_group_compiled_inside_its_clock():
    """The fast stage's times are this repo's speed claim: one that includes compiling must say so."""
    fig = {'acc': {'mean': 0.94, 'std': 0.001, 'n': 5}, 'time_s': {'median': 3.0, 'min': 2.9, 'max': 9.0},
           'kept_last_epoch': 1.0, 'compiled_in_clock': {'runs': 1, 'graphs': 2}}
    assert reproduce.describe('fast', fig).endswith(', 2 graph(s) compiled inside the clock of 1 run(s)')
    clean = {**fig, 'compiled_in_clock': {'runs': 0, 'graphs': 0}}
    assert reproduce.describe('fast', clean).endswith('time median 3.00 s [2.90, 9.00]')


def test_a_stage_line_names_the_blf_steps_a_group_truncated():
    fig = {'acc': {'mean': 0.94, 'std': 0.001, 'n': 3}, 'time_s': {'median': 3.0, 'min': 2.9, 'max': 3.1},
           'kept_last_epoch': 0.4, 'truncated': {'steps': 12, 'of': 300}}
    assert reproduce.describe('blf-compact', fig).endswith('kept 0.40 in the last epoch, 12 of 300 BLF steps truncated')
    assert reproduce.describe('blf-mask', {**fig, 'truncated': {'steps': 0, 'of': 300}}).endswith('in the last epoch')
    lagged = {**fig, 'count_lag': {'mean': 1.25, 'max': 3}}
    assert reproduce.describe('blf-compact', lagged).endswith(
        'kept 0.40 in the last epoch, passes sized from counts 1.25 steps old (at most 3), 12 of 300 BLF steps truncated')


class Collected(Exception):
    """Raised by a stand-in for Context.run once it has taken a stage's train.py commands."""


def test_every_train_py_command_of_the_full_size_stages_is_one_train_py_accepts(tmp_path, cifar_dir, monkeypatch):
    """At full size the training stages run only on a GPU; --smoke runs a few of their rungs (the
    ladder's first two and last, post 8's first and last) and no --compile group. A rung whose flags
    train.py refuses would fail its stage there, after the minutes spent on the rungs before it. So
    each command a stage would run at full size goes through train.py's parser and checks here,
    with a GPU pretended as the README's commands are (tests/test_readme.py)."""
    import cli
    import torch
    commands = {}

    def collect(ctx, cmd, **kwargs):  # the stage's first command trains: train.py, or train_many.py's invocations
        argvs = [shlex.split(line) for line in cmd[2:]] if cmd[1] == 'train_many.py' else [cmd[2:]]
        commands[os.path.basename(ctx.dir)] = argvs
        raise Collected
    monkeypatch.setattr(reproduce.Context, 'run', collect)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    args = reproduce.parse_args(['--device', 'cuda', '--data-dir', cifar_dir, '--out', str(tmp_path)])
    training = [name for name in reproduce.STAGES if name not in ('tests', 'tests-compile', 'bench', 'profile', 'airbench')]
    for name in training:
        with pytest.raises(Collected):
            reproduce.STAGES[name][0](reproduce.Context(args, name))
    assert sorted(commands) == sorted(training)
    assert sum(map(len, commands.values())) >= 40, 'every rung and group of every training stage'
    for name, argvs in commands.items():
        for argv in argvs:
            try:
                cli.check_args(cli.parse_args(argv))
            except (SystemExit, cli.UserError) as e:
                pytest.fail(f'{name}: train.py refuses {shlex.join(argv)}: {e}')
    flat = [' '.join(argv) for argvs in commands.values() for argv in argvs]
    assert any('--compile 1' in line for line in flat), 'the compiled group smoke leaves out is checked too'
