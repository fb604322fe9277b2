"""profile.py / ablation.py on the CPU with tiny sizes: every section, file and ablation comes out."""
import csv
import os
import subprocess
import sys

import pytest
import torch

import ablation
import networks
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
    assert os.path.isfile(os.path.join(out, 'env.json'))
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
def test_bad_arguments(args, message):
    res = run_script('profile.py', '--device', 'cpu', *args)
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
