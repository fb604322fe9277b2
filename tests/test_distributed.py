"""torchrun with gloo on the CPU, 2 processes: seeds spread over ranks, one data-parallel run, a failing rank."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import cli
import distributed
import dp_step
import networks
import optimizers
import reproduce
import train
from conftest import REPO, wait_until_ended

SMALL = ['--device', 'cpu', '--n-train', 256, '--n-test', 100, '--epochs', 2, '--width', 0.125, '--batch-size', 64]


def torchrun(script, *args, nproc=2, timeout=300):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
           str(REPO / script), *map(str, args)]
    env = {**os.environ, 'PYTHONPATH': str(REPO)}  # the helper scripts in tests/ import the repo's modules
    # a session of its own, away from pytest's signals; a hang ends with kill_tree, which also finds the ranks
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        reproduce.kill_tree(proc)  # the workers too: each sits in a session of its own
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def only_record(folder):
    (record,) = list(folder.iterdir())
    return record


def jsonl(path):
    return [json.loads(line) for line in open(path)]


def without_clock(rows, drop=('rank', 'device')):
    return [{k: v for k, v in r.items() if not k.endswith('_s') and k not in drop} for r in rows]


# ----------------------------------------------------------------------------------------------
# Group's rules in one process (first: the torchrun tests below run them for real, on 2 ranks,
# and a broken rule can hang those until their timeout)

def test_a_group_spreads_seeds_round_robin_and_a_data_parallel_one_trains_them_all():
    seeds = range(10, 17)
    assert [distributed.Group(r, 3).my_seeds(seeds) for r in range(3)] == [[10, 13, 16], [11, 14], [12, 15]]
    assert distributed.Group(2, 3, data_parallel=True).my_seeds(seeds) == list(seeds)
    assert distributed.Group().my_seeds(seeds) == list(seeds)


def test_data_parallel_needs_a_second_rank():
    alone = distributed.Group(data_parallel=True)
    assert not alone.data_parallel and not alone.active
    model = torch.nn.Linear(2, 2)
    assert alone.wrap(model, torch.device('cpu')) is model, 'no DDP (and no process group) for one process'
    x, y = torch.arange(8).view(8, 1), torch.arange(8)
    assert alone.local_batch(x, y)[1].tolist() == list(range(8))


def test_each_data_parallel_rank_takes_its_own_contiguous_slice():
    x, y = torch.arange(24).view(12, 2), torch.arange(12)
    slices = [distributed.Group(r, 4, data_parallel=True).local_batch(x, y) for r in range(4)]
    assert [s[1].tolist() for s in slices] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert all(torch.equal(sx, x[sy]) for sx, sy in slices)


def test_barriers_and_gathers_reach_torch_distributed_only_with_several_ranks(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.dist, 'barrier', lambda: calls.append('barrier'))

    def all_gather_object(out, obj):
        calls.append('gather')
        out[:] = [f'{obj} from rank {r}' for r in range(len(out))]
    monkeypatch.setattr(distributed.dist, 'all_gather_object', all_gather_object)
    distributed.Group().barrier()
    assert distributed.Group().gather('x') == ['x'] and calls == []
    pair = distributed.Group(1, 2)
    pair.barrier()
    assert pair.gather('x') == ['x from rank 0', 'x from rank 1'] and calls == ['barrier', 'gather']


def test_the_world_counts_every_node_and_join_keeps_data_parallel(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '16')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')
    assert distributed.world_size() == 16 and distributed.under_torchrun()
    monkeypatch.setenv('RANK', '9')
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setattr(distributed.dist, 'init_process_group', lambda backend: None)
    group, device = distributed.join('cpu', data_parallel=True)
    assert (group.rank, group.world, group.local_rank, group.data_parallel, device) == (9, 16, 1, True, 'cpu')
    monkeypatch.delenv('WORLD_SIZE')
    assert distributed.world_size() == 1 and not distributed.under_torchrun()


@pytest.mark.parametrize('world, finalized', [('2', False), ('1', True)])
def test_a_rank_ends_without_the_interpreters_finalization_and_keeps_its_status_and_output(world, finalized):
    """Under torchrun a rank skips finalization, where gloo's worker threads could abort it (see
    end_process); a single process exits as usual. Either way its status and unflushed output stay."""
    code = ('import atexit, sys, distributed\n'
            'atexit.register(lambda: print("finalized", flush=True))\n'
            'print("to stdout", end=""); print("to stderr", end="", file=sys.stderr)\n'
            'distributed.end_process(3)\n')
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONUNBUFFERED'}  # buffered, as by default
    res = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**env, 'WORLD_SIZE': world})
    assert res.returncode == 3
    assert res.stdout == 'to stdout' + ('finalized\n' if finalized else '') and res.stderr == 'to stderr'


# ----------------------------------------------------------------------------------------------
# torchrun, 2 processes on gloo


def test_seeds_spread_over_two_ranks_give_the_record_one_process_gives(cifar_dir, tmp_path):
    res = torchrun('train.py', *SMALL, '--data-dir', cifar_dir, '--runs', 3, '--seed', 5, '--out-dir', tmp_path / 'two')
    assert res.returncode == 0, res.stderr[-3000:]
    # one process with the one thread torchrun gives each rank: CPU kernels sum in another order with more
    single = subprocess.run([sys.executable, str(REPO / 'train.py'), *map(str, SMALL), '--data-dir', cifar_dir,
                             '--runs', '3', '--seed', '5', '--out-dir', str(tmp_path / 'one')], cwd=REPO,
                            capture_output=True, text=True, timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert single.returncode == 0, single.stderr
    two, one = only_record(tmp_path / 'two'), only_record(tmp_path / 'one')
    runs = jsonl(two / 'runs.jsonl')
    assert [(r['seed'], r['rank']) for r in runs] == [(5, 0), (6, 1), (7, 0)]
    assert without_clock(runs) == without_clock(jsonl(one / 'runs.jsonl'))
    key = lambda r: (r['seed'], r['epoch'])  # noqa: E731
    assert sorted(without_clock(jsonl(two / 'epochs.jsonl')), key=key) == \
        sorted(without_clock(jsonl(one / 'epochs.jsonl')), key=key)
    summary = json.load(open(two / 'summary.json'))
    assert summary['status'] == 'complete' and summary['runs_finished'] == 3 and summary['accuracy']['n'] == 3
    env = json.load(open(two / 'env.json'))
    assert [r['rank'] for r in env['ranks']] == [0, 1] and all(r['device'] == 'cpu' for r in env['ranks'])
    assert json.load(open(two / 'config.json'))['world_size'] == 2
    assert 'seed 6 (rank 1, cpu): test accuracy' in res.stdout


def test_a_data_parallel_step_equals_one_process_on_the_whole_batch(cifar, cifar_dir, tmp_path):
    res = torchrun('tests/dp_step.py', cifar_dir, tmp_path / 'dp.pt')
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / 'dp.pt')
    torch.manual_seed(0)
    before = [p.detach().clone() for p in networks.make_model(dp_step.HYP['width'], 'cpu', torch.float32).parameters()]
    model = dp_step.one_step(*dp_step.first_batch(cifar))
    for a, b, b0 in zip(got, model.parameters(), before):
        torch.testing.assert_close(a, b.detach(), rtol=1e-4, atol=1e-6)
    assert max((b.detach() - b0).abs().max().item() for b, b0 in zip(model.parameters(), before)) > 1e-3


@pytest.mark.parametrize('blf', [[], ['--blf', '0.8', '--blf-start-epoch', '1', '--blf-bucket', '8']])
def test_a_data_parallel_run_completes_with_one_record(cifar_dir, tmp_path, blf):
    res = torchrun('train.py', *SMALL, '--data-dir', cifar_dir, '--data-parallel', '--out-dir', tmp_path, *blf)
    assert res.returncode == 0, res.stderr[-3000:]
    record = only_record(tmp_path)
    runs = jsonl(record / 'runs.jsonl')
    assert len(runs) == 1 and runs[0]['rank'] == 0 and 0 < runs[0]['test_acc'] < 1
    config = json.load(open(record / 'config.json'))
    assert config['data_parallel'] and config['world_size'] == 2
    assert json.load(open(record / 'summary.json'))['status'] == 'complete'
    assert 'one data-parallel run' in res.stdout
    assert "# warm-up at this rank's batch of 32" in res.stdout, 'warm-up must see the shapes of the steps'


def test_a_failing_rank_stops_the_job_with_one_line_and_an_incomplete_record(cifar_dir, tmp_path):
    res = torchrun('tests/fail_rank.py', *SMALL, '--data-dir', cifar_dir, '--runs', 2, '--out-dir', tmp_path)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith('error:')]
    assert ours == ['error: rank 1 (cpu): RuntimeError: the GPU fell off the bus'], res.stderr[-3000:]
    record = only_record(tmp_path)
    summary = json.load(open(record / 'summary.json'))
    assert summary['status'] == 'failed' and summary['runs_finished'] == 1
    assert summary['errors'] == [{'rank': 1, 'device': 'cpu', 'error': 'RuntimeError: the GPU fell off the bus'}]


def test_data_parallel_without_torchrun_and_cuda_n_under_torchrun_are_refused(tmp_path, monkeypatch, capsys):
    assert train.main(['--device', 'cpu', '--data-parallel', '--out-dir', str(tmp_path)]) == 2
    assert '--data-parallel needs several processes: torchrun' in capsys.readouterr().err
    monkeypatch.setenv('WORLD_SIZE', '3')
    assert train.main(['--device', 'cpu', '--data-parallel', '--batch-size', '512', '--out-dir', str(tmp_path)]) == 2
    assert 'does not split over 3 ranks' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_data_parallel_rank_warms_up_and_steps_at_its_slice_of_the_batch():
    h = {**cli.hyp, 'batch_size': 512}
    rank = train.rank_hyp(h, distributed.Group(rank=1, world=4, local_rank=1, data_parallel=True))
    assert rank['batch_size'] == 128 and rank['lr'] == h['lr'] and rank['weight_decay'] == h['weight_decay']
    assert rank['loss_scale'] == optimizers.loss_scale(h), 'the loss scale is the global batch\'s'
    assert train.rank_hyp(h, distributed.Group(rank=1, world=4, local_rank=1)) is h, 'seeds over ranks: whole batches'


def test_kill_tree_ends_torchruns_workers_which_sit_in_sessions_of_their_own(tmp_path):
    script = tmp_path / 'sleeper.py'
    # one write(2) per line: under PYTHONUNBUFFERED=1 (inherited from the shell) print() writes each piece
    # apart, and the two workers' pieces interleaved on the shared pipe ('2828528286 28286': 3 runs in 10)
    script.write_text("import os, time\nos.write(1, f'{os.getpid()} {os.getsid(0)}\\n'.encode())\ntime.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        workers = [tuple(map(int, proc.stdout.readline().split())) for _ in range(2)]
        assert all(pid == sid for pid, sid in workers), 'torchrun gives each worker a session of its own'
        assert {pid for pid, _ in workers} <= set(reproduce.descendants(proc.pid))
        reproduce.kill_tree(proc)
        proc.communicate(timeout=30)  # returns only once no worker holds the pipe
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert all(wait_until_ended(pid) for pid, _ in workers)
