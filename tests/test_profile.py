"""profile.py / ablation.py on the CPU with tiny sizes: every section, file and ablation comes out."""
import csv
import json
import os
import subprocess
import sys
import types

import pytest
import torch

import ablation
import bench_blf
import blf_step
import cli
import data_gpu
import networks
import optimizers
from conftest import REPO, run_script


def test_profile_runs_and_writes_every_section(cifar_dir, tmp_path):
    res = run_script('profile.py', '--device', 'cpu', '--data-dir', cifar_dir, '--out', tmp_path,
                     '--batch-sizes', '8,16', '--ablation-batch', 8, '--steps', 5, '--epochs', 1,
                     '--n-train', 64, '--width', 0.125, '--torch-profiler')
    assert res.returncode == 0, res.stderr
    (out,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    md = open(os.path.join(out, 'profile.md')).read()
    for heading in ('Time per step', 'Seconds per epoch', 'Precision and layout', 'Floor', 'torch.profiler'):
        assert heading in md
    assert md.strip() in res.stdout.replace('\r', '')
    rows = list(csv.DictReader(open(os.path.join(out, 'profile.csv'))))
    steps = {(r['batch'], r['config']): float(r['median_ms']) for r in rows if r['section'] == 'step'}
    for bs in ('8', '16'):
        for config in ablation.LADDER + ablation.SIDE:
            assert steps[(bs, config)] > 0, (bs, config)
        # sensible order: a no-grad forward costs less than a whole training step
        assert steps[(bs, 'forward')] < steps[(bs, 'no_data')] and steps[(bs, 'forward')] < steps[(bs, 'full')]
    shares = [r for r in rows if r['section'] == 'share_ms_per_epoch']
    assert sorted({r['config'] for r in shares}) == sorted(ablation.SHARES)
    for bs in ('8', '16'):  # each component is a difference of its step rows, per epoch of 50,000 images
        share = {r['config']: float(r['median_ms']) for r in shares if r['batch'] == bs}
        steps_per_epoch = 50000 // int(bs)
        for name, rows_of in ablation.SHARE_ROWS.items():
            want = steps[(bs, rows_of[0])] - (steps[(bs, rows_of[1])] if len(rows_of) > 1 else 0.0)
            assert share[name] == pytest.approx(want * steps_per_epoch), (bs, name)
    names = [r['config'] for r in rows if r['section'] == 'ablation']
    assert names == [a[0] for a in ablation.ABLATIONS]
    env = json.load(open(os.path.join(out, 'env.json')))
    floor, flops, ceilings = env['floor'], env['flops'], env['ceilings']
    assert floor['floor_s_per_epoch'] == pytest.approx(flops['train_flops_per_image'] * 50000 / (ceilings['matmul_tflops'] * 1e12))
    for bs in ('8', '16'):  # the efficiency of a whole epoch of 50,000 images, whatever --n-train timed
        epoch_s = steps[(bs, 'full')] * (50000 // int(bs)) / 1000
        assert floor[f'efficiency_full_b{bs}'] == pytest.approx(floor['floor_s_per_epoch'] / epoch_s)
    try:
        import matplotlib  # noqa: F401
        assert os.path.getsize(os.path.join(out, 'chart.png')) > 1000
    except ImportError:
        assert 'chart skipped' in res.stdout


@pytest.mark.parametrize('args, message', [
    (['--batch-sizes', 'a,b'], 'expected comma-separated integers'),
    (['--batch-sizes', '0,8'], 'expected positive integers'),
    (['--steps', '1'], '--steps must be at least 2'),
    (['--n-train', '100', '--batch-sizes', '128'], 'every batch size must fit'),
    (['--device', 'cuda:99'], 'GPU'),  # none here, or fewer than 100
    (['--device', 'tpu'], '--device must be cuda, cuda:N or cpu'),
])
def test_bad_arguments(args, message, tmp_path):
    # an empty data folder: a check that slips fails at once on the data instead of profiling for minutes
    (tmp_path / 'cifar-10-batches-py').mkdir()
    res = run_script('profile.py', '--device', 'cpu', '--data-dir', tmp_path, *args)
    assert res.returncode != 0 and message in res.stderr and 'Traceback' not in res.stderr


def test_damaged_data_and_an_unwritable_out_are_one_line_errors(tmp_path, cifar_dir):
    (tmp_path / 'cifar-10-batches-py').mkdir()  # extracted, but empty
    res = run_script('profile.py', '--device', 'cpu', '--data-dir', tmp_path)
    assert res.returncode != 0 and 'data_batch_1 is missing' in res.stderr and 'Traceback' not in res.stderr
    (tmp_path / 'a-file').write_text('')
    res = run_script('profile.py', '--device', 'cpu', '--data-dir', cifar_dir, '--out', tmp_path / 'a-file' / 'runs',
                     '--batch-sizes', '8', '--ablation-batch', '8', '--n-train', '64')
    assert res.returncode != 0 and 'cannot create the output folder' in res.stderr and 'Traceback' not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_flop_count_matches_the_layer_shapes():
    # forward MACs by hand: prep 3->64 @32x32, layer1 64->128 @32x32, res 2x 128->128 @16x16,
    # layer2 128->256 @16x16, layer3 256->512 @8x8, res 2x 512->512 @4x4, linear 512->10
    convs = [3 * 64 * 9 * 1024, 64 * 128 * 9 * 1024, 2 * 128 * 128 * 9 * 256, 128 * 256 * 9 * 256,
             256 * 512 * 9 * 64, 2 * 512 * 512 * 9 * 16]
    forward = 2 * (sum(convs) + 512 * 10)
    flops = ablation.count_flops(1.0, 'cpu')
    assert flops['forward_flops_per_image'] == forward
    assert flops['train_flops_per_image'] == forward + 2 * forward - 2 * 3 * 64 * 9 * 1024


def test_strip_bn_relu_leaves_convs_pools_and_additions():
    model = ablation.strip_bn_relu(networks.ResNet9(0.25))
    kinds = {type(m).__name__ for m in model.modules()}
    assert 'BatchNorm2d' not in kinds and 'ReLU' not in kinds and 'Conv2d' in kinds and 'MaxPool2d' in kinds
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize('name, category', [
    ('sm90_xmma_fprop_implicit_gemm_f16f16_f16f32', 'conv'), ('aten::mkldnn_convolution', 'conv'),
    ('cudnn::bn_fw_tr_1C11_kernel_NCHW', 'conv'), ('aten::native_batch_norm', 'batchnorm'),
    ('void at::native::batch_norm_collect_statistics_channels_last_kernel', 'batchnorm'),
    ('ampere_fp16_s16816gemm_fp16_128x64', 'gemm'), ('aten::max_pool2d_with_indices', 'pooling'),
    ('_select_kernel', 'triton'), ('void at::native::vectorized_elementwise_kernel<4, add>', 'elementwise'),
    ('Memcpy DtoD (Device -> Device)', 'copies'), ('something_new', 'other'),
])
def test_kernel_categories(name, category):
    assert ablation.categorize(name) == category


def test_profile_py_stands_in_for_the_stdlib_module_when_imported():
    code = ('import profile, cProfile, io, pstats; assert hasattr(profile, "Profile") and hasattr(profile, "_Utils"); '
            'p = cProfile.Profile(); p.runcall(sum, range(10)); pstats.Stats(p, stream=io.StringIO()); print("ok")')
    res = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == 'ok', res.stderr


def test_ctrl_c_or_a_crash_leaves_no_empty_profile_folder(cifar_dir, tmp_path, monkeypatch, capsys):
    for failure, code in ((KeyboardInterrupt, 130), (RuntimeError('boom'), None)):
        def fail(*args, **kwargs):
            raise failure
        monkeypatch.setattr(ablation, 'measure_and_write', fail)
        argv = ['--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path), '--batch-sizes', '8',
                '--ablation-batch', '8', '--n-train', '64']
        if code is None:
            with pytest.raises(RuntimeError):
                ablation.main(argv)
        else:
            with pytest.raises(SystemExit) as stop:
                ablation.main(argv)
            assert stop.value.code == 130 and 'interrupted: nothing was written' in capsys.readouterr().err
        assert os.listdir(tmp_path) == []


def test_a_component_below_its_rows_spread_prints_as_noise():
    def row(median, low, high):
        return {'median_ms': median, 'min_ms': low, 'max_ms': high}
    results = {'full': row(10.0, 9.0, 11.0), 'no_data': row(10.2, 10.1, 10.3), 'no_optimizer': row(6.0, 5.99, 6.01),
               'no_bn_relu': row(4.0, 3.99, 4.01)}
    shares = ablation.shares_per_epoch(results, 100)
    assert shares['data'] < 0  # full - no_data came out negative: noise, not a saving
    noise = {s: ablation.share_is_noise(results, s, shares[s], 100) for s in ablation.SHARES}
    assert noise == {'data': True, 'optimizer': False, 'bn_relu': False, 'conv_pool_add': False}
    small = {**results, 'full': row(10.5, 9.0, 12.0)}  # positive but inside the spread of 'full'
    assert ablation.share_is_noise(small, 'data', ablation.shares_per_epoch(small, 100)['data'], 100)


# ----------------------------------------------------------------------------------------------
# How the rows are timed and what each one runs (the mutation check's A group found these untested)

class FakeClock:
    """train.Stopwatch's interface over a counter that only the steps below advance."""
    now = 0.0

    def __init__(self, device):
        pass

    def mark(self):
        return FakeClock.now

    def seconds(self, start, end):
        return end - start


def test_time_steps_times_each_step_alone_after_the_untimed_warm_up(monkeypatch):
    monkeypatch.setattr(ablation.train, 'Stopwatch', FakeClock)
    durations = [100.0, 100.0, 100.0, 1.0, 2.0, 3.0, 4.0]  # three slow warm-up calls, then four steps

    def step():
        FakeClock.now += durations.pop(0)
    assert ablation.time_steps(step, 'cpu', steps=4, warmup=3) == [1.0, 2.0, 3.0, 4.0]
    assert durations == []


def test_a_rows_summary_is_its_median_min_and_max_in_ms():
    assert ablation.summary_ms([0.003, 0.001, 0.004, 0.002, 0.0025]) == pytest.approx(
        {'median_ms': 2.5, 'min_ms': 1.0, 'max_ms': 4.0, 'n': 5})


def test_the_full_row_is_each_timed_epoch_over_its_steps_after_one_warm_up_epoch(monkeypatch):
    monkeypatch.setattr(ablation.train, 'Stopwatch', FakeClock)
    epochs_run = []

    def train_epoch(model, opt, batches, settings, hyp):
        epochs_run.append(len(settings))
        FakeClock.now += 1.0  # one second per epoch
    monkeypatch.setattr(ablation.train, 'train_epoch', train_epoch)
    data = types.SimpleNamespace(n_train=80, train_batches=lambda bs: iter(()))
    hyp = {**cli.hyp, 'width': 0.125, 'batch_size': 16}
    per_step = ablation.time_full(hyp, data, torch.device('cpu'), torch.float32, epochs=2)
    assert epochs_run == [5, 5, 5] and per_step == pytest.approx([1 / 5, 1 / 5])


def small_hyp(**changes):
    return {**cli.hyp, 'width': 0.125, 'batch_size': 8, 'label_smoothing': 0.2, **changes}


def test_no_optimizer_runs_the_steps_scaled_backward_and_leaves_the_weights(monkeypatch):
    hyp = small_hyp()
    model, opt = ablation.fresh(hyp, torch.device('cpu'), torch.float32)
    x, y = ablation.random_batch(8, 'cpu', torch.float32)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.2).backward()
    unscaled = [p.grad.clone() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    step, _ = ablation.make_step('no_optimizer', model, opt, x, y, hyp)
    step()
    scale = optimizers.loss_scale(hyp)
    assert scale == 8.0  # train.py's fp16 default: the summed loss
    for p, g, w in zip(model.parameters(), unscaled, before):
        torch.testing.assert_close(p.grad, g * scale, rtol=1e-4, atol=1e-6)
        assert torch.equal(p.detach(), w), 'no_optimizer must not step the optimizer'
    step, _ = ablation.make_step('no_data', model, opt, x, y, hyp)
    step()
    assert any(not torch.equal(p.detach(), w) for p, w in zip(model.parameters(), before))


def test_each_row_runs_the_model_and_the_blf_share_it_names(cifar, monkeypatch):
    """profile_batch on real data at toy size, with the clock replaced by one call of each step."""
    seen, warmed, bench_p = [], [], []
    real_make_step = ablation.make_step

    def make_step(kind, model, *args, **kwargs):
        seen.append((kind, any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())))
        return real_make_step(kind, model, *args, **kwargs)

    def time_steps(step, device, steps, warmup=3):
        for _ in range(4):
            step()
        return [0.001] * steps
    real_blf_work = bench_blf.blf_work
    monkeypatch.setattr(ablation, 'make_step', make_step)
    monkeypatch.setattr(ablation, 'time_steps', time_steps)
    monkeypatch.setattr(ablation.train, 'warm_up', lambda h, *a, **k: warmed.append(h['blf_mode']))
    monkeypatch.setattr(bench_blf, 'blf_work', lambda backend, logits, y, p=0.9: bench_p.append(p) or real_blf_work(backend, logits, y, p))
    device = torch.device('cpu')
    hyp = small_hyp(blf=0.7)
    data = data_gpu.DeviceCIFAR10(cifar, device, torch.float32, n_train=64, n_test=16)
    args = types.SimpleNamespace(epochs=1, steps=2)
    out = ablation.profile_batch(hyp, data, device, torch.float32, args, blf_step.blf_backend('torch', device))
    assert seen == [('no_data', True), ('no_optimizer', True), ('no_bn_relu', False), ('forward', True),
                    ('blf_mask', True), ('blf_compact', True)]
    assert warmed == ['compact'], 'the compact row visits its kept-batch shapes before the clock'
    assert bench_p == [0.7], 'blf_kernels selects at --blf'
    for mode in ('blf_mask', 'blf_compact'):  # 4 steps of 8 rows at p = 0.7 on random data: most rows kept
        assert 0.5 < out[mode]['kept'] <= 1, out[mode]


def test_precision_ablations_feed_each_model_its_layout_and_restore_cudnn_benchmark(monkeypatch):
    seen = {}
    real_make_step = ablation.make_step

    def make_step(kind, model, opt, x, y, hyp):
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        seen[len(seen)] = (x.dtype, x.is_contiguous(), conv.weight.is_contiguous(), torch.backends.cudnn.benchmark)
        return real_make_step(kind, model, opt, x, y, hyp)
    monkeypatch.setattr(ablation, 'make_step', make_step)
    monkeypatch.setattr(ablation, 'time_steps', lambda step, device, steps: [0.001] * steps)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    rows = ablation.precision_ablations(small_hyp(), torch.device('cpu'), torch.float32, steps=3)
    assert torch.backends.cudnn.benchmark is True, 'the ablations must leave cudnn.benchmark as they found it'
    assert [r['ablation'] for r in rows] == [a[0] for a in ablation.ABLATIONS] and all(r['n'] == 3 for r in rows)
    names = [a[0] for a in ablation.ABLATIONS]
    nchw = names.index('NCHW instead of channels_last')
    for i, name in enumerate(names):
        dtype, x_nchw, w_nchw, benchmark = seen[i]
        assert x_nchw == w_nchw == (i == nchw), (name, 'images and weights share one layout')
        assert dtype == {'bf16 instead of fp16': torch.bfloat16}.get(name, torch.float32), name
        assert benchmark is (name != 'cudnn.benchmark off'), name


def test_the_ceilings_count_two_flops_per_multiply_add_and_a_copy_as_read_plus_write(monkeypatch):
    monkeypatch.setattr(ablation, 'time_steps', lambda step, device, reps: [0.5] * reps)
    c = ablation.measure_ceilings(torch.device('cpu'))
    assert (c['matmul_n'], c['matmul_dtype']) == (1024, 'float32')
    assert c['matmul_tflops'] == pytest.approx(2 * 1024 ** 3 / 0.5 / 1e12)
    assert c['copy_gbps'] == pytest.approx(2 * (64 << 20) / 0.5 / 1e9)


class FakeProfile:
    """torch.profiler.profile's interface over three events: 10 ms of convolution, 5 ms of addition
    and the step marker, for the whole profiled block."""
    def __init__(self, activities):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def key_averages(self):
        return [types.SimpleNamespace(key='aten::convolution', self_cpu_time_total=10000.0),
                types.SimpleNamespace(key='ProfilerStep#1', self_cpu_time_total=99000.0),
                types.SimpleNamespace(key='aten::add_', self_cpu_time_total=5000.0)]


def test_torch_profiler_times_are_per_step(monkeypatch):
    monkeypatch.setattr(torch.profiler, 'profile', FakeProfile)
    prof = ablation.torch_profile(small_hyp(), torch.device('cpu'), torch.float32, steps=5)
    assert prof['total_ms'] == pytest.approx(3.0)  # (10 + 5) ms over 5 steps
    assert [c for c, _, _ in prof['categories']] == ['conv', 'elementwise']
    assert [t for _, t, _ in prof['categories']] == pytest.approx([2.0, 1.0])
    assert [share for _, _, share in prof['categories']] == pytest.approx([100 * 2 / 3, 100 / 3])
    assert [name for name, _, _ in prof['top']] == ['aten::convolution', 'aten::add_']


def test_the_ablation_ratios_are_to_the_baseline_row():
    def row(name, median):
        return {'ablation': name, 'median_ms': median, 'min_ms': median, 'max_ms': median, 'n': 3}
    timing = {'median_ms': 1.0, 'min_ms': 1.0, 'max_ms': 1.0, 'n': 3}
    lines = ablation.report(
        [8], {8: {k: timing for k in ablation.LADDER}}, {8: {s: 1.0 for s in ablation.SHARES}},
        [row('baseline', 2.0), row('slower', 5.0), row('faster', 1.0)],
        {'train_flops_per_image': 1e9}, {'matmul_dtype': 'float32', 'matmul_n': 1024, 'matmul_tflops': 1.0, 'copy_gbps': 10.0},
        {'floor_s_per_epoch': 0.05, 'efficiency_full_b8': 0.5}, None, {'device': 'cpu', 'torch': '2', 'triton': '3'},
        torch.float32, types.SimpleNamespace(steps=3, epochs=1, n_train=64, ablation_batch=8), 'python profile.py')
    ratios = {line.split()[0]: line.split()[-2] for line in lines if line.endswith('x baseline')}
    assert ratios == {'baseline': '1.00x', 'slower': '2.50x', 'faster': '0.50x'}


def test_the_bench_reports_milliseconds_and_the_steps_median(monkeypatch):
    monkeypatch.setattr(bench_blf.ablation, 'time_steps', lambda fn, device, reps, warmup: [0.004, 0.002, 0.003])
    assert bench_blf.time_ms(lambda: None, 'cpu', 3) == pytest.approx((3.0, 2.4, 3.6))  # median, p20, p80 in ms
    monkeypatch.setattr(bench_blf, 'time_ms', lambda fn, device, reps: (5.0, 1.0, 9.0))
    assert bench_blf.step_ms(4, torch.device('cpu'), torch.float32, reps=3) == 5.0


def test_the_bench_starts_each_call_from_a_fresh_gradient():
    backend = blf_step.blf_backend('torch', 'cpu')
    logits = (torch.randn(33, 10) * 3).requires_grad_()
    labels = torch.randint(0, 10, (33,))
    work = bench_blf.blf_work(backend, logits, labels)
    work()
    once = logits.grad.clone()
    work()
    torch.testing.assert_close(logits.grad, once)
