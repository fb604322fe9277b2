"""train.py as a user runs it: --help, errors, and short end-to-end runs on the CPU with real data."""
import json
import os

import pytest
import torch

import train
from conftest import run_script


def test_help_documents_every_flag_with_its_default():
    res = run_script('train.py', '--help')
    assert res.returncode == 0
    text = ' '.join(res.stdout.split())
    for key, default in train.hyp.items():
        assert '--' + key.replace('_', '-') in text
    for flag in ('--seed', '--runs', '--data-dir', '--device', '--n-train', '--out-dir'):
        assert flag in text
    assert '(default: 24)' in text and '(default: 512)' in text


def one_line_error(res, pattern):
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith('error:') and pattern in lines[0], lines[0]
    assert 'Traceback' not in res.stderr + res.stdout


@pytest.mark.parametrize('args, pattern', [
    (['--epochs', '0'], '--epochs must be at least 1'),
    (['--batch-size', '0'], '--batch-size must be at least 1'),
    (['--batch-size', '50001', '--device', 'cpu'], 'larger than the training set (50000 images)'),
    (['--n-train', '1000', '--batch-size', '1024', '--device', 'cpu'], 'larger than the training set (1000 images)'),
    (['--epochs', 'many'], "invalid int value: 'many'"),
    (['--lr', '-1'], '--lr must be positive'),
    (['--tta', '3'], '--tta must be 0, 1 or 2'),
    (['--ema', '1'], '--ema must be in [0, 1)'),
    (['--dropout', '-0.1'], '--dropout must be in [0, 1)'),
    (['--cutout-count', '0'], '--cutout-count must be at least 1'),
    (['--early-stop', '-1'], '--early-stop must be >= 0'),
    (['--bn-weight-decay', '2'], '--bn-weight-decay must be 0 or 1'),
    (['--clip-norm', '-1'], '--clip-norm must be >= 0'),
    (['--agc', '-0.1'], '--agc must be >= 0'),
    (['--optimizer', 'adam', '--precision', 'fp16'], '--optimizer adam needs fp32 weights'),
    (['--precision', 'fp8'], "argument --precision: invalid choice: 'fp8'"),
    (['--mixup', '0.4', '--cutmix', '1'], '--mixup and --cutmix: choose one'),
    (['--mixup', '-1'], '--mixup and --cutmix must be >= 0'),
    (['--blf-bottom', '0.1'], '--blf-bottom needs --blf'),
    (['--blf', '0.9', '--blf-bottom', '1'], '--blf-bottom must be in [0, 1)'),
    (['--wd-schedule', '0:-1'], '--wd-schedule values must be >= 0'),
    (['--label-smoothing', '1'], '--label-smoothing must be in [0, 1)'),
    (['--cutout', '-1'], '--cutout must be in 0..32'),
    (['--bn-lr-scale', '-1'], '--bn-lr-scale must be >= 0'),
    (['--plateau', '-1'], '--plateau must be >= 0'),
    (['--wd-mode', 'both'], "argument --wd-mode: invalid choice: 'both'"),
    (['--optimizer', 'lion'], "argument --optimizer: invalid choice: 'lion'"),
    (['--device', 'tpu'], '--device must be cuda, cuda:N or cpu'),
    (['--device', 'cuda:x'], '--device must be cuda, cuda:N or cpu'),
    (['--device', 'cpu:0'], '--device must be cuda, cuda:N or cpu'),
    (['--bogus'], 'unrecognized arguments: --bogus'),
    (['--lr-schedule', '0:0,5'], "argument --lr-schedule: expected knots 'epoch:value"),
    (['--lr-schedule', '5:0,1:0.4'], 'must be >= 0 and ascending'),
    (['--momentum-schedule', '0:1.2'], '--momentum-schedule values must be in [0, 1)'),
    (['--blf-schedule', '0:1,5:0.9'], '--blf-schedule needs --blf'),
    (['--blf', '0.9', '--blf-schedule', '0:1,5:0'], '--blf-schedule values must be in (0, 1]'),
])
def test_bad_values_give_one_line_errors(args, pattern, tmp_path, capsys):
    # in-process: the same main() a user runs; a few cases below also run as real processes
    try:
        code = train.main([*args, '--out-dir', str(tmp_path)])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:') and pattern in lines[0], err
    assert not os.listdir(tmp_path), 'nothing may be written for a rejected command'


@pytest.mark.parametrize('args, pattern', [(['--epochs', '0'], '--epochs must be at least 1'),
                                           (['--epochs', 'many'], "invalid int value: 'many'"),
                                           (['--blf', '2'], '--blf must be in (0, 1]')])
def test_bad_values_as_a_real_process(args, pattern, tmp_path):
    one_line_error(run_script('train.py', *args, '--out-dir', tmp_path), pattern)


def test_missing_data_dir_gives_one_line_error(tmp_path):
    res = run_script('train.py', '--device', 'cpu', '--data-dir', tmp_path / 'nothing', '--no-download',
                     '--out-dir', tmp_path / 'runs')
    one_line_error(res, 'no CIFAR-10 in')


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_no_gpu_says_how_to_run_on_cpu():
    one_line_error(run_script('train.py', '--epochs', '1'), 'no CUDA GPU found; to run on the CPU add --device cpu')


def test_records_never_overwrite_each_other(tmp_path):
    a, b = train.Record(str(tmp_path)), train.Record(str(tmp_path))
    a.log('first')
    b.log('second')
    assert a.path != b.path
    assert open(os.path.join(a.path, 'log.txt')).read() == 'first\n'


def read_jsonl(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def test_short_cpu_run_learns_and_writes_a_complete_record(cifar_dir, tmp_path):
    # 4000 real training images, 3 epochs, a quarter-width ResNet-9 in fp32: ~30 s on 2 cores.
    # Threshold 0.30 on 1000 test images: a guessing model scores 0.10 +- 0.0095 (binomial),
    # so 0.30 is 20 standard deviations away, and no constant answer exceeds a class's 10-11% share.
    res = run_script('train.py', '--device', 'cpu', '--data-dir', cifar_dir, '--out-dir', tmp_path,
                     '--n-train', 4000, '--n-test', 1000, '--epochs', 3, '--width', 0.25, '--batch-size', 256)
    assert res.returncode == 0, res.stderr
    (record,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    for name in ('command.txt', 'config.json', 'env.json', 'log.txt', 'epochs.jsonl', 'runs.jsonl',
                 'summary.json', 'source/train.py', 'source/data_gpu.py'):
        assert os.path.isfile(os.path.join(record, name)), name
    (result,) = read_jsonl(os.path.join(record, 'runs.jsonl'))
    assert result['test_acc'] >= 0.30, result
    epochs = read_jsonl(os.path.join(record, 'epochs.jsonl'))
    assert [r['epoch'] for r in epochs] == [1, 2, 3]
    assert epochs[-1]['train_loss'] < epochs[0]['train_loss']
    assert epochs[-1]['total_s'] == pytest.approx(sum(r['epoch_s'] for r in epochs))
    assert result['time_s'] == pytest.approx(result['train_s'] + result['eval_s'])
    config = json.load(open(os.path.join(record, 'config.json')))
    assert config['hyp']['epochs'] == 3 and config['n_train'] == 4000 and config['dtype'] == 'torch.float32'
    env = json.load(open(os.path.join(record, 'env.json')))
    assert env['torch'] == torch.__version__ and env['python']
    assert '--n-train 4000' in open(os.path.join(record, 'command.txt')).read()
    log = open(os.path.join(record, 'log.txt')).read()
    assert log.strip() in res.stdout and 'train_loss' in log and 'test accuracy' in log


def test_several_runs_use_consecutive_seeds_and_summarize(cifar_dir, tmp_path):
    res = run_script('train.py', '--device', 'cpu', '--data-dir', cifar_dir, '--out-dir', tmp_path, '--runs', 2,
                     '--seed', 5, '--n-train', 512, '--n-test', 200, '--epochs', 1, '--width', 0.125,
                     '--batch-size', 128)
    assert res.returncode == 0, res.stderr
    (record,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    assert [r['seed'] for r in read_jsonl(os.path.join(record, 'runs.jsonl'))] == [5, 6]
    summary = json.load(open(os.path.join(record, 'summary.json')))
    assert summary['accuracy']['n'] == 2 and 'p' in summary['t_test_mean_gt_0.94']
    assert '2 runs: accuracy mean' in res.stdout and 'time median' in res.stdout
