"""BatchLossFilter inside training: gradients, compact mode, the random control, CLI and records."""
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

import blf_step
import cli
import data_gpu
import networks
import optimizers
import schedules
import train
from conftest import run_script
from kernels import reference

IMPLS = ['triton', 'torch']


def setup(cifar, impl, mode, n=96, smoothing=0.1, seed=0, **extra):
    torch.manual_seed(seed)
    h = {**cli.hyp, 'blf': 0.7, 'blf_mode': mode, 'blf_impl': impl, 'label_smoothing': smoothing,
         'weight_decay': 0.0, 'momentum': 0.0, **extra}
    model = networks.make_model(0.25, 'cpu', torch.float32)
    opt = optimizers.make_optimizer(model, h)  # lr 0: step() leaves the weights, .grad keeps the gradient
    x = data_gpu.normalize(cifar['train_x'][:n], torch.float32).contiguous(memory_format=torch.channels_last)
    y = cifar['train_y'][:n]
    blf = blf_step.BLF(h, blf_step.blf_backend(impl, 'cpu'), 'cpu', n, seed)
    return h, model, opt, x, y, blf


def grads(model, h):
    """The gradients of the batch-mean loss (the step back-propagates it times loss_scale)."""
    return [p.grad / optimizers.loss_scale(h) for p in model.parameters()]


def new_totals():
    return train.epoch_totals('cpu', blf_on=True)


@pytest.mark.parametrize('impl', IMPLS)
def test_mask_step_gradient_equals_autograd_of_mean_loss_over_reference_kept_rows(cifar, impl):
    h, model, opt, x, y, blf = setup(cifar, impl, 'mask')
    before = copy.deepcopy(model)
    totals = new_totals()
    blf_step.blf_train_step(model, opt, x, y, h, totals, blf)
    got = grads(model, h)

    logits = before(x).float()
    losses = F.cross_entropy(logits, y, reduction='none', label_smoothing=h['label_smoothing'])
    sel = reference.select_top_loss(losses.detach(), h['blf'])
    kept = sel.order[:int(sel.counts[0])]
    assert 0 < len(kept) < len(y)
    losses[kept].mean().backward()
    for g, p in zip(got, before.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert totals['kept'].item() == len(kept) and totals['steps'] == 1
    assert totals['truncated'].item() == 0, 'the mask pass holds every row the rule keeps'
    torch.testing.assert_close(totals['kept_loss'], losses[kept].mean().detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(totals['loss'] / totals['count'], losses.mean().detach(), rtol=1e-5, atol=1e-6)


def compact_reference_grads(before, x, y, h, size):
    """The compact step by hand: a no-grad full pass scores the batch (BatchNorm in train mode), then
    the mean loss of the top `size` rows, through BatchNorm with those rows' own statistics."""
    with torch.no_grad():
        losses = F.cross_entropy(before(x).float(), y, reduction='none', label_smoothing=h['label_smoothing'])
    bn_after_scoring = [b.clone() for name, b in before.named_buffers() if 'running' in name]
    rows = reference.select_top_loss(losses, h['blf']).order[:size]
    with blf_step.running_stats_frozen(before):
        F.cross_entropy(before(x[rows]).float(), y[rows], label_smoothing=h['label_smoothing']).backward()
    return [p.grad for p in before.parameters()], bn_after_scoring, losses


@pytest.mark.parametrize('impl', IMPLS)
def test_compact_step_trains_on_the_top_rows_and_only_the_full_pass_moves_bn_statistics(cifar, impl):
    h, model, opt, x, y, blf = setup(cifar, impl, 'compact', blf_bucket=8)
    before = copy.deepcopy(model)
    blf.count.value = 40  # as if an earlier step had kept 40 rows: this step runs on 40
    totals = new_totals()
    blf_step.blf_train_step(model, opt, x, y, h, totals, blf)
    want, bn_after_scoring, losses = compact_reference_grads(before, x, y, h, 40)
    for g, w in zip(grads(model, h), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    bn_now = [b for name, b in model.named_buffers() if 'running' in name]
    for a, b in zip(bn_now, bn_after_scoring):
        torch.testing.assert_close(a, b)
    k = int(reference.select_top_loss(losses, h['blf']).counts[0])
    assert totals['rows_trained'] == 40 and totals['kept'].item() == 40, 'every trained row is a kept row'
    assert totals['truncated'].item() == float(k > 40)
    assert blf.count.latest() == k, 'the rule\'s count of this step sizes the next one'


@pytest.mark.parametrize('impl', IMPLS)
def test_compact_gradient_depends_on_the_rows_trained_not_on_the_bucket(cifar, impl):
    """Padding rows used to ride along with weight 0 and still enter BatchNorm's statistics, so the
    kept rows' gradient changed with --blf-bucket. Now the pass holds only real kept rows: the same
    trained rows give the same gradient whatever bucket produced them, and the pass's size is the
    only thing the bucket decides."""
    got = {}
    for bucket, lagged in [(8, 64), (64, 40), (16, 49)]:  # all three round up to a 64-row pass
        h, model, opt, x, y, blf = setup(cifar, impl, 'compact', blf_bucket=bucket)
        blf.batch_size = 96
        blf.count.value = lagged
        before = copy.deepcopy(model)
        totals = new_totals()
        blf_step.blf_train_step(model, opt, x, y, h, totals, blf)
        assert totals['rows_trained'] == 64
        got[bucket] = grads(model, h)
    want, _, _ = compact_reference_grads(before, x, y, h, 64)
    for bucket, g in got.items():
        for a, b, w in zip(g, got[8], want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6)


def test_random_control_keeps_as_many_rows_but_not_the_top_ones(cifar):
    h, model, opt, x, y, blf = setup(cifar, 'torch', 'mask', n=256, subset_control='random')
    with torch.no_grad():
        losses = F.cross_entropy(model(x).float(), y, reduction='none')
    top = reference.select_top_loss(losses, h['blf'])
    rand = blf.select(losses, cap=256)
    k = int(top.counts[1])
    assert torch.equal(rand.counts, top.counts)
    assert (rand.weight > 0).sum() == k and torch.allclose(rand.weight.sum(), torch.tensor(1.0))
    assert not torch.equal(rand.weight > 0, top.weight > 0)
    torch.testing.assert_close(rand.stats[2], losses[rand.weight > 0].mean())
    again = blf_step.BLF(h, blf.backend, 'cpu', 256, seed=0).select(losses, cap=256)
    assert torch.equal(again.order, rand.order), 'the control is seeded'


def test_the_blf_schedule_sets_p_each_step(cifar):
    h, model, opt, x, y, blf = setup(cifar, 'torch', 'mask', n=128)
    setting = {'lr': 0.0, 'momentum': 0.9, 'weight_decay': 0.0}
    kept = {}
    for p in (1.0, 0.5):
        totals = train.train_epoch(model, opt, [(x, y)], [{**setting, 'blf': p}], h, blf)
        kept[p] = totals['kept'].item()
    assert kept[1.0] == 128 and kept[0.5] < 64  # half the loss sits in fewer than half the samples


class PendingEvent:
    """A CUDA event stand-in that completes only when the test says so."""

    def __init__(self):
        self.done = False

    def record(self):
        pass

    def query(self):
        return self.done


def test_lagged_count_takes_the_newest_completed_count_and_reports_its_age():
    """On a GPU the copies land late and out of step with the host: only a slot whose event has
    completed may be read, the newest of them, and `lag` says how many steps old it is."""
    count = blf_step.LaggedCount('cpu', initial=512)
    events = []
    count.new_event = lambda: events.append(PendingEvent()) or events[-1]

    def push(value):
        count.push(torch.tensor(value, dtype=torch.int32))

    push(100)
    push(120)
    assert (count.latest(), count.lag) == (512, 0), 'nothing has landed: keep the initial size'
    events[0].done = True
    assert (count.latest(), count.lag) == (100, 2)
    events[1].done = True
    assert (count.latest(), count.lag) == (120, 1)
    push(130)
    push(140)
    events[3].done = True  # the newer one completes first: take it, and never go back to 130
    assert (count.latest(), count.lag) == (140, 1)
    events[2].done = True
    assert (count.latest(), count.lag) == (140, 1)
    push(150)
    assert (count.latest(), count.lag) == (140, 2), 'a pending newest copy: the older value, one step staler'
    for value in range(200, 200 + 20):  # more pushes than slots: the ring wraps
        push(value)
    events[-1].done = True
    assert (count.latest(), count.lag) == (219, 1)


def test_kept_size_rounds_up_to_the_bucket_and_never_exceeds_the_batch(cifar):
    h, model, opt, x, y, blf = setup(cifar, 'torch', 'compact', blf_bucket=64)
    # a batch of 500 is not a multiple of the bucket: its last bucket (512) is cut to the batch
    for batch, latest, size in [(512, 1, 64), (512, 64, 64), (512, 65, 128), (512, 500, 512), (512, 512, 512),
                                (500, 448, 448), (500, 449, 500), (500, 500, 500)]:
        blf.batch_size, blf.count.value = batch, latest
        assert blf.kept_size() == size, (batch, latest)


@pytest.mark.parametrize('args, pattern', [
    (['--blf', '0'], '--blf must be in (0, 1]'),
    (['--blf', '1.5'], '--blf must be in (0, 1]'),
    (['--blf', '0.9', '--blf-min-samples', '2'], '--blf-min-samples must be in [0, 1]'),
    (['--blf', '0.9', '--blf-start-epoch', '0'], '--blf-start-epoch must be at least 1'),
    (['--blf', '0.9', '--blf-round-to', '0'], '--blf-round-to must be at least 1'),
    (['--subset-control', 'random'], '--subset-control random needs --blf'),
    (['--blf', '0.9', '--blf-mode', 'fast'], "argument --blf-mode: invalid choice: 'fast'"),
    (['--blf', '0.9', '--blf-impl', 'cuda'], "argument --blf-impl: invalid choice: 'cuda'"),
])
def test_bad_blf_values_give_one_line_errors(args, pattern, tmp_path, capsys):
    try:
        code = train.main(['--device', 'cpu', *args, '--out-dir', str(tmp_path)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count('\n') == 0 and pattern in err, err


def record_rows(tmp_path):
    (record,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    with open(os.path.join(record, 'epochs.jsonl')) as fh:
        return [json.loads(line) for line in fh], record


@pytest.mark.parametrize('mode, impl, control', [('compact', 'triton', 'none'), ('mask', 'torch', 'random')])
def test_cpu_run_with_blf_records_the_kept_fraction_per_epoch(cifar_dir, tmp_path, mode, impl, control):
    res = run_script('train.py', '--device', 'cpu', '--data-dir', cifar_dir, '--out-dir', tmp_path,
                     '--n-train', 1024, '--n-test', 200, '--epochs', 3, '--width', 0.125, '--batch-size', 256,
                     '--blf', 0.9, '--blf-start-epoch', 2, '--blf-mode', mode, '--blf-impl', impl,
                     '--subset-control', control, '--blf-bucket', 8)
    assert res.returncode == 0, res.stderr
    rows, record = record_rows(tmp_path)
    assert 'kept' not in rows[0], 'epoch 1 is before --blf-start-epoch'
    for row in rows[1:]:
        assert 0 < row['kept'] < 1 and 0.85 <= row['kept_loss_frac'] <= 1
        assert row['steps'] == 1024 // 256 and 0 <= row['truncated_steps'] <= row['steps']
        if mode == 'mask':
            assert row['rows_trained'] == 1.0 and 'count_lag' not in row
        else:  # the pass trains only kept rows; on the CPU the count is one step old, except at the first
            # BLF step (of 4 per epoch), which has no earlier count and trains on the whole batch
            assert row['rows_trained'] == row['kept'] and row['count_lag_max'] == 1
            assert row['count_lag'] == (0.75 if row['epoch'] == 2 else 1.0)
    if control == 'none':  # the top losses weigh more than the average ones
        assert all(row['kept_loss'] > row['full_loss'] for row in rows[1:])
    else:  # a random subset's loss is about the average: well below the top rows'
        assert all(abs(row['kept_loss'] - row['full_loss']) < 0.2 * row['full_loss'] for row in rows[1:])
    assert 'kept_loss_frac' in res.stdout
    config = json.load(open(os.path.join(record, 'config.json')))
    assert config['hyp']['blf'] == 0.9 and config['hyp']['subset_control'] == control


# ---- GPU: a whole BLF epoch without a host sync --------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize('mode', ['mask', 'compact'])
@pytest.mark.parametrize('impl', IMPLS)
def test_gpu_blf_epoch_has_no_host_sync(cifar, mode, impl):
    h = {**cli.hyp, 'blf': 0.9, 'blf_mode': mode, 'blf_impl': impl}
    data = data_gpu.DeviceCIFAR10(cifar, 'cuda', torch.float16, n_train=10240, n_test=1000)
    backend = blf_step.blf_backend(impl, 'cuda')
    train.warm_up(h, data, 'cuda', torch.float16, backend)
    model = networks.make_model(1.0, 'cuda', torch.float16)
    opt = optimizers.make_optimizer(model, h)
    settings = schedules.step_settings(h, data.n_train // h['batch_size'])
    blf = blf_step.BLF(h, backend, 'cuda', h['batch_size'], seed=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        totals = train.train_epoch(model, opt, data.train_batches(h['batch_size']), settings, h, blf)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert totals['steps'] == 20 and 0 < totals['kept'].item() <= totals['count'].item()


def test_benchmark_runs_and_writes_its_tables(tmp_path):
    res = run_script('bench_blf.py', '--device', 'cpu', '--batch-sizes', '16,33', '--reps', 2, '--out', tmp_path)
    assert res.returncode == 0, res.stderr
    (out,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    with open(os.path.join(out, 'bench.csv')) as fh:
        lines = fh.read().splitlines()
    assert lines[0].startswith('batch,triton_ms') and [l.split(',')[0] for l in lines[1:]] == ['16', '33']
    assert 'interpreter' in res.stdout and os.path.isfile(os.path.join(out, 'bench.md'))
    import csv
    for row in csv.DictReader(open(os.path.join(out, 'bench.csv'))):  # the derived columns from the measured ones
        r = {k: float(v) for k, v in row.items()}
        assert r['speedup'] == pytest.approx(r['torch_ms'] / r['triton_ms'])
        assert r['overhead_pct'] == pytest.approx(100 * r['triton_ms'] / r['step_ms'])
        assert r['triton_p20'] <= r['triton_ms'] <= r['triton_p80'] and r['torch_p20'] <= r['torch_ms'] <= r['torch_p80']
    assert run_script('bench_blf.py', '--batch-sizes', 'x').returncode != 0
    for args, message in ((['--reps', '0'], '--reps must be positive'), (['--device', 'cuda:99'], 'GPU')):
        res = run_script('bench_blf.py', *args)
        assert res.returncode != 0 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, args


def test_a_diverging_blf_run_stops_with_one_line_and_keeps_its_record(cifar_dir, tmp_path):
    res = run_script('train.py', '--device', 'cpu', '--data-dir', cifar_dir, '--out-dir', tmp_path, '--lr', '1e30',
                     '--n-train', 512, '--n-test', 100, '--epochs', 2, '--width', 0.125, '--batch-size', 128,
                     '--blf', 0.9, '--blf-start-epoch', 1)
    assert res.returncode == 2 and 'Traceback' not in res.stderr
    assert res.stderr.strip().splitlines() == [
        'error: training diverged at epoch 1: the loss is nan (BLF keeps non-finite rows, never hides them); '
        'try a lower --lr']
    rows, _ = record_rows(tmp_path)
    assert len(rows) == 1 and rows[0]['train_loss'] != rows[0]['train_loss']  # NaN, written before stopping


def test_blf_bottom_keeps_the_top_and_the_bottom_rows():
    losses = torch.tensor([5.0, 0.1, 3.0, 0.2, 9.0, 0.3, 1.0, 0.05, 2.0, 0.4])  # total 21.05
    h = {**cli.hyp, 'blf': 0.6, 'blf_bottom': 0.2}
    blf = blf_step.BLF(h, reference, 'cpu', 10, seed=0)
    sel = blf.select(losses, cap=10)  # top: 9 + 5 = 14 >= 12.63 -> rows 4, 0; bottom 2: rows 1, 7
    assert sel.counts.tolist() == [4, 4]
    assert sorted(torch.nonzero(sel.weight).flatten().tolist()) == [0, 1, 4, 7]
    torch.testing.assert_close(sel.weight.sum(), torch.tensor(1.0))
    torch.testing.assert_close(sel.stats[2], (9 + 5 + 0.1 + 0.05) / torch.tensor(4.0))
    rows = blf.rows(sel, 6)  # compact with 6 rows: the top 4 by loss, then the bottom 2
    assert rows.tolist() == [4, 0, 2, 8, 1, 7]
    capped = blf.select(losses, cap=3)  # only one top row fits beside the two bottom ones
    assert sorted(torch.nonzero(capped.weight).flatten().tolist()) == [1, 4, 7] and capped.counts.tolist() == [4, 3]


def test_mask_step_with_blf_bottom_matches_autograd(cifar):
    h, model, opt, x, y, blf = setup(cifar, 'triton', 'mask', blf_bottom=0.1)
    before = copy.deepcopy(model)
    blf_step.blf_train_step(model, opt, x, y, h, new_totals(), blf)
    losses = F.cross_entropy(before(x).float(), y, reduction='none', label_smoothing=h['label_smoothing'])
    sel = reference.select_top_loss(losses.detach(), h['blf'])
    kept = torch.cat([sel.order[:int(sel.counts[0])], sel.order[-10:]])  # ceil(0.1 * 96) = 10 bottom rows
    losses[kept].mean().backward()
    for g, q in zip(grads(model, h), before.parameters()):
        torch.testing.assert_close(g, q.grad, rtol=1e-4, atol=1e-6)


def test_torch_impl_needs_no_triton_and_the_triton_impl_says_what_is_missing():
    import subprocess
    import sys
    from conftest import REPO
    code = '''
import sys
sys.modules["triton"] = None  # as if triton were not installed
import torch, blf_step, cli, train  # train imports triton only where a run asks for it
blf = blf_step.BLF({**cli.hyp, "blf": 0.9}, blf_step.blf_backend("torch", "cpu"), "cpu", 64, 0)
sel = blf.select(torch.rand(64), cap=64)
assert 1 <= int(sel.counts[0]) <= 64
try:
    blf_step.blf_backend("triton", "cpu")
except cli.UserError as e:
    print("UserError:", e)
'''
    res = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert 'UserError: --blf-impl triton needs triton' in res.stdout and 'use --blf-impl torch' in res.stdout


def test_blf_bottom_overlapping_the_top_counts_each_row_once():
    """When the top k and the bottom rows overlap, counts used to reach k + n_bottom > B and the
    step was reported as truncated although every row was kept."""
    losses = torch.tensor([5.0, 0.1, 3.0, 0.2, 9.0, 0.3, 1.0, 0.05, 2.0, 0.4])
    blf = blf_step.BLF({**cli.hyp, 'blf': 1.0, 'blf_bottom': 0.2}, reference, 'cpu', 10, seed=0)
    sel = blf.select(losses, cap=10)
    assert sel.counts.tolist() == [10, 10], 'all ten rows, none truncated'
    torch.testing.assert_close(sel.weight, torch.full((10,), 0.1))
    assert sel.stats[0].item() == pytest.approx(1.0)


def test_kept_loss_fraction_counts_negative_losses_as_zero_like_the_kernels():
    """A loss below 0 (rounding can give -0.0 or -1e-8) counts as 0 in the selection's sums; the
    variants' fraction, computed outside the kernels, must count it the same way."""
    losses = torch.tensor([-1.0, 1.0, 1.0, 2.0])
    kept = torch.tensor([True, False, True, False])
    fraction, full_mean, kept_mean = blf_step.kept_loss_stats(losses, kept).tolist()
    assert fraction == pytest.approx(0.25) and full_mean == pytest.approx(0.75) and kept_mean == pytest.approx(0.0)
    assert blf_step.kept_loss_stats(torch.zeros(4), kept)[0].item() == 1.0, 'nothing to lose: all of it is kept'


@pytest.mark.parametrize('impl', IMPLS)
def test_with_blf_bottom_the_compact_pass_always_holds_a_top_row(impl):
    """kept_size relies on the rule's count including at least one top row besides the bottom ones,
    even when the losses are all zero and --blf-min-samples is 0."""
    h = {**cli.hyp, 'blf': 0.5, 'blf_bottom': 0.25, 'blf_min_samples': 0.0, 'blf_bucket': 1}
    blf = blf_step.BLF(h, blf_step.blf_backend(impl, 'cpu'), 'cpu', 12, seed=0)
    sel = blf.select(torch.zeros(12), cap=12)
    assert sel.counts.tolist() == [4, 4], 'one top row and the 3 bottom ones'
    blf.count.push(sel.counts[0])
    assert blf.kept_size() == 4 and blf.rows(sel, 4).tolist() == sel.order[[0, 9, 10, 11]].tolist()


@pytest.mark.parametrize('extra', [{'blf_bottom': 0.25}, {'subset_control': 'random'}])
def test_kept_loss_fraction_survives_a_total_beyond_fp32(extra):
    losses = torch.tensor([3e38] * 6 + [1.0, 2.0])  # finite, but their fp32 sum overflows
    blf = blf_step.BLF({**cli.hyp, 'blf': 0.5, **extra}, reference, 'cpu', 8, seed=0)
    sel = blf.select(losses, cap=8)
    fraction = sel.stats[0].item()
    assert 0 < fraction <= 1, fraction  # an fp32 sum gave inf / inf = NaN
    kept = sel.weight > 0
    assert fraction == pytest.approx(float(losses.double()[kept].sum() / losses.double().sum()), rel=1e-6)


def test_random_control_weights_sum_to_one_over_the_rows_a_capped_compact_pass_trains():
    losses = torch.rand(64, generator=torch.Generator().manual_seed(0)) + 0.1
    blf = blf_step.BLF({**cli.hyp, 'blf': 0.99, 'subset_control': 'random'}, reference, 'cpu', 64, seed=0)
    sel = blf.select(losses, cap=16, fill=True)  # the rule wants ~60 rows; the pass holds 16
    rows = blf.rows(sel, 16)
    assert sel.counts[1].item() == 16 and int(sel.counts[0]) > 16
    torch.testing.assert_close(sel.weight[rows].sum(), torch.tensor(1.0))
    assert int((sel.weight > 0).sum()) == 16 and bool((sel.weight[rows] > 0).all())


def test_bench_times_every_call_alike():
    """Both sides of bench_blf.py go through time_ms: warm-up calls untimed, then one timed
    interval per call (do_bench used to take --reps as milliseconds and flush L2 on one side only)."""
    import bench_blf
    calls = []
    median, p20, p80 = bench_blf.time_ms(lambda: calls.append(1), 'cpu', reps=7, warmup=3)
    assert len(calls) == 10 and 0 <= p20 <= median <= p80
    assert bench_blf.quantiles([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 1.8, 4.2)
