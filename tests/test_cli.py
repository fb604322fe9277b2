"""train.py as a user runs it: --help, errors, and short end-to-end runs on the CPU with real data."""
import json
import os
import re

import pytest
import torch

import blf_step
import cli
import data_gpu
import record
import schedules
import train
from conftest import run_script


def test_help_documents_every_flag_with_its_default():
    res = run_script('train.py', '--help')
    assert res.returncode == 0
    text = ' '.join(res.stdout.split())
    for key, default in cli.hyp.items():
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
    (['--recipe', 'airbench94-muon', '--precision', 'amp', '--device', 'cpu'], "amp's scaler would wait for the GPU"),
    (['--ghost-bn', '48', '--device', 'cpu'], '--ghost-bn must be >= 0 and divide --batch-size 512, got 48'),
    (['--net', 'airbench94', '--whiten', '3', '--device', 'cpu'], '--whiten are for --net resnet9'),
    (['--muon-lr', '0', '--device', 'cpu'], '--muon-lr must be > 0'),
    (['--ema-every', '0', '--device', 'cpu'], '--ema-every must be at least 1'),
    (['--whiten', '2', '--device', 'cpu'], 'invalid choice: 2'),
    (['--batch-size', '0'], '--batch-size must be at least 1'),
    (['--batch-size', '50001', '--device', 'cpu'], 'larger than the training set (50000 images)'),
    (['--n-train', '1000', '--batch-size', '1024', '--device', 'cpu'], 'larger than the training set (1000 images)'),
    (['--epochs', 'many'], "invalid float value: 'many'"),
    (['--lr', '-1'], '--lr must be positive'),
    (['--tta', '4'], '--tta must be 0, 1, 2 or 3'),
    (['--ema', '1'], '--ema must be in [0, 1)'),
    (['--dropout', '-0.1'], '--dropout must be in [0, 1)'),
    (['--cutout-count', '0'], '--cutout-count must be at least 1'),
    (['--early-stop', '-1'], '--early-stop must be >= 0'),
    (['--bn-weight-decay', '-1'], '--bn-weight-decay must be >= 0'),
    (['--clip-norm', '-1'], '--clip-norm must be >= 0'),
    (['--agc', '-0.1'], '--agc must be >= 0'),
    (['--optimizer', 'adam', '--precision', 'fp16'], '--optimizer adam needs fp32 weights'),
    (['--precision', 'fp8'], "argument --precision: invalid choice: 'fp8'"),
    (['--mixup', '0.4', '--cutmix', '1'], '--mixup and --cutmix: choose one'),
    (['--mixup', '-1'], '--mixup and --cutmix must be >= 0'),
    (['--blf-bottom', '0.1'], '--blf-bottom needs --blf'),
    (['--blf', '0.9', '--blf-bottom', '1'], '--blf-bottom must be in [0, 1)'),
    (['--blf', '0.9', '--blf-bottom', '0.999', '--batch-size', '512'], 'leave at least one for the top'),
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
    (['--lr', 'inf'], '--lr must be a finite number, got inf'),
    (['--weight-decay', 'nan'], '--weight-decay must be a finite number'),
    (['--lr-schedule', 'nan:0.4'], "a schedule's epochs and values must be finite numbers"),
    (['--momentum-schedule', '0:0.9,10:inf'], "a schedule's epochs and values must be finite numbers"),
    (['--lr-schedule', '0:0'], '--lr-schedule is 0 throughout: nothing would train'),
    (['--lr-schedule', '0:0,10:0'], '--lr-schedule is 0 throughout'),
])
def test_bad_values_give_one_line_errors(args, pattern, tmp_path, capsys):
    # in-process: the same main() a user runs; a few cases below also run as real processes
    # no data where it looks: a check that slips fails at once on the missing data instead of training a run
    try:
        code = train.main([*args, '--out-dir', str(tmp_path), '--data-dir', str(tmp_path / 'no-data'), '--no-download'])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:') and pattern in lines[0], err
    assert not os.listdir(tmp_path), 'nothing may be written for a rejected command'


# Each bound once on each side: the value at the bound is a real setting someone runs (`--blf 1` is BLF's own
# control, `--momentum 0` plain SGD, a batch of the whole set), and the value just past it is refused by name.
BOUNDARIES = [
    (['--epochs', '1'], None), (['--epochs', '0.99'], '--epochs must be at least 1'),
    (['--lr-peak', '0'], None), (['--lr-peak', '0.99'], None), (['--lr-peak', '1'], '--lr-peak must be in [0, 1)'),
    (['--momentum', '0'], None), (['--momentum', '1'], '--momentum must be in [0, 1)'),
    (['--ghost-bn', '64'], None), (['--ghost-bn', '48'], '--ghost-bn must be >= 0 and divide --batch-size 512'),
    (['--crop-pad', '16'], None), (['--crop-pad', '17'], '--crop-pad must be in 0..16'),
    (['--blf', '1'], None), (['--blf', '0'], '--blf must be in (0, 1]'), (['--blf', '1.01'], '--blf must be in (0, 1]'),
    (['--batch-size', '50000'], None), (['--batch-size', '50001'], 'larger than the training set (50000 images)'),
    (['--n-train', '50000'], None), (['--n-train', '50001'], '--n-train must be in 1..50000'),
    (['--n-train', '1', '--batch-size', '1'], None), (['--n-train', '0'], '--n-train must be in 1..50000'),
    (['--blf', '0.9', '--blf-bottom', '0.5'], None),
    (['--blf', '0.9', '--blf-bottom', '0.999', '--batch-size', '512'], 'leave at least one for the top'),
    (['--blf', '0.9', '--batch-size', '4096'], None),
    (['--blf', '0.9', '--batch-size', '4097'], '--blf-impl triton takes batches up to 4096'),
    (['--blf', '0.9', '--batch-size', '4097', '--blf-impl', 'torch'], None),
    (['--optimizer', 'adam', '--precision', 'fp32'], None), (['--optimizer', 'adam', '--precision', 'amp'], None),
    (['--optimizer', 'adam', '--precision', 'bf16'], '--optimizer adam needs fp32 weights'),
    (['--blf', '0.9', '--subset-control', 'random'], None),
    (['--subset-control', 'random'], '--subset-control random needs --blf P'),
    (['--blf', '0.9', '--blf-min-samples', '1'], None), (['--blf', '0.9', '--blf-min-samples', '0'], None),
    (['--blf', '0.9', '--blf-min-samples', '1.01'], '--blf-min-samples must be in [0, 1]'),
]


@pytest.mark.parametrize('args, refusal', BOUNDARIES)
def test_a_value_at_its_boundary_is_accepted_and_one_past_it_refused(args, refusal, tmp_path):
    parsed = cli.parse_args([*args, '--device', 'cpu', '--out-dir', str(tmp_path)])
    if refusal is None:
        cli.check_args(parsed)
    else:
        with pytest.raises(cli.UserError, match=re.escape(refusal)):
            cli.check_args(parsed)


@pytest.mark.parametrize('args, pattern', [(['--epochs', '0'], '--epochs must be at least 1'),
                                           (['--epochs', 'many'], "invalid float value: 'many'"),
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
    a, b = record.Record(str(tmp_path)), record.Record(str(tmp_path))
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
    for name in ('command.txt', 'config.json', 'env.json', 'log.txt', 'epochs.jsonl', 'runs.jsonl', 'summary.json'):
        assert os.path.isfile(os.path.join(record, name)), name
    assert not os.path.exists(os.path.join(record, 'source')), 'a checkout names its commit instead of copying code' 
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
    assert env['torch'] == torch.__version__ and env['python'] and len(env['git_commit']) == 40
    assert env['source'] in ('clean', 'diff'), 'inside a checkout the commit names the code'
    assert os.path.isfile(os.path.join(record, 'git.diff')) == (env['source'] == 'diff')
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


def git(cwd, *args):
    import subprocess
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=cwd, check=True,
                   capture_output=True)


def test_a_record_stores_a_diff_only_when_the_tree_differs_from_its_commit(tmp_path):
    repo, out = tmp_path / 'repo', tmp_path / 'record'
    repo.mkdir()
    out.mkdir()
    (repo / 'train.py').write_text('a = 1\n')
    git(repo, 'init', '-q')
    git(repo, 'add', 'train.py')
    git(repo, 'commit', '-qm', 'first')
    assert record.save_source_state(str(out), str(repo)) == 'clean' and os.listdir(out) == []
    (repo / 'train.py').write_text('a = 2\n')
    (repo / 'new_kernel.py').write_text('b = 3\n')
    assert record.save_source_state(str(out), str(repo)) == 'diff'
    diff = (out / 'git.diff').read_text()
    assert '-a = 1' in diff and '+a = 2' in diff and '+b = 3' in diff and 'new_kernel.py' in diff
    plain = tmp_path / 'no-git'
    plain.mkdir()
    (plain / 'train.py').write_text('c = 4\n')
    out2 = tmp_path / 'record2'
    out2.mkdir()
    assert record.save_source_state(str(out2), str(plain)) == 'copied'
    assert (out2 / 'source' / 'train.py').read_text() == 'c = 4\n'


def test_cuda_n_becomes_the_current_device_before_any_work(monkeypatch, tmp_path, capsys):
    """--device cuda:1 used to be accepted but never made current: Triton launches and CUDA events
    went to cuda:0. Checked here with a pretend CUDA of two GPUs."""
    current = [0]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: current[0])
    monkeypatch.setattr(torch.cuda, 'set_device', lambda index: current.__setitem__(0, index))
    assert cli.use_device('cuda:1') == torch.device('cuda', 1) and current == [1]
    assert cli.use_device('cuda') == torch.device('cuda', 1), 'plain cuda keeps the current device'
    with pytest.raises(cli.UserError, match='this machine has 2 GPU'):
        cli.use_device('cuda:2')

    def stop(*args, **kwargs):
        raise data_gpu.DataError(f'stopped with cuda:{current[0]} current')
    current[0] = 0
    monkeypatch.setattr(data_gpu, 'load_cifar10', stop)
    assert train.main(['--device', 'cuda:1', '--out-dir', str(tmp_path)]) == 2
    assert 'stopped with cuda:1 current' in capsys.readouterr().err


@pytest.mark.parametrize('extra', [{}, {'blf': 0.8, 'blf_bucket': 32, 'blf_start_epoch': 1}])
def test_warm_up_runs_the_augmentation_and_leaves_the_run_unchanged(cifar, extra):
    """Epoch 1 used to pay, on the clock, for the augmentation's first launches and its memory:
    warm-up never augmented. Now it trains on real augmented batches (two epochs' worth of
    augmentation) and a kept-batch size, and a run after it is identical to one without it."""
    h = {**cli.hyp, 'batch_size': 128, 'epochs': 2, 'width': 0.125, 'precision': 'fp32', 'tta': 0, **extra}
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', torch.float32, n_train=512, n_test=300)
    backend = blf_step.blf_backend('torch', 'cpu') if h['blf'] else None
    augmented, trained = [], []
    original_augment, original_epoch = data.augmented_epoch, train.train_epoch

    def counting_augment():
        augmented.append(1)
        return original_augment()

    def counting_epoch(model, opt, batches, *args, **kwargs):
        batches = list(batches)
        trained.append(len(batches))
        return original_epoch(model, opt, batches, *args, **kwargs)

    def run():
        rows = []
        result = train.train_run(h, data, 3, 'cpu', torch.float32, rows.append, backend, log=lambda line: None)
        return result, [{k: v for k, v in r.items() if not k.endswith('_s')} for r in rows]

    cold = run()
    data.augmented_epoch = counting_augment
    train.train_epoch = counting_epoch
    try:
        train.warm_up(h, data, 'cpu', torch.float32, backend)
    finally:
        train.train_epoch = original_epoch
    assert len(augmented) == 2 and trained[:2] == [3, 3]
    if h['blf']:  # on a GPU or under --compile one step at each compact size; on a CPU one is enough
        assert trained[2:] == [1]
        assert train.compact_sizes(h, 0) == [32, 64, 96, 128] and train.compact_sizes(h, 40) == [64, 96, 128]
        assert train.compact_sizes({**h, 'blf_bucket': 48}, 0) == [48, 96, 128]
        assert train.compact_sizes({**h, 'blf_mode': 'mask'}, 0) == [128]
        assert train.warm_up_sizes(h, 40, 'cpu') == [128] and train.warm_up_sizes(h, 40, 'cuda') == [64, 96, 128]
        assert train.warm_up_sizes(h, 40, torch.device('cuda', 0)) == [64, 96, 128]
        assert train.warm_up_sizes({**h, 'compile': 1}, 40, 'cpu') == [64, 96, 128]
    warm = run()
    assert warm[1] == cold[1]
    assert {k: v for k, v in warm[0].items() if not k.endswith('_s')} == \
        {k: v for k, v in cold[0].items() if not k.endswith('_s')}


def test_under_compile_warm_up_trains_one_step_at_every_compact_size(cifar, monkeypatch):
    """--compile builds a graph per shape, so warm-up must meet every kept-batch size the run can
    (on a GPU as well: Triton and cuDNN); compiling itself is stubbed out to keep this quick."""
    h = {**cli.hyp, 'batch_size': 128, 'epochs': 2, 'width': 0.125, 'precision': 'fp32', 'tta': 0, 'compile': 1,
         'blf': 0.8, 'blf_bucket': 32, 'blf_start_epoch': 1}
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', torch.float32, n_train=512, n_test=300)
    sizes, original_epoch = [], train.train_epoch

    def recording_epoch(model, opt, batches, settings, hyp, blf=None, **kwargs):
        if blf is not None:
            sizes.append(blf.fixed_size)
        return original_epoch(model, opt, batches, settings, hyp, blf, **kwargs)

    monkeypatch.setattr(train, 'compile_model', lambda model: None)
    monkeypatch.setattr(train, 'train_epoch', recording_epoch)
    train.warm_up(h, data, 'cpu', torch.float32, blf_step.blf_backend('torch', 'cpu'))
    assert sizes == [32, 64, 96, 128]


def test_a_schedule_that_ends_early_is_named_in_the_header():
    h = {**cli.hyp, 'epochs': 24, 'lr_schedule': schedules.parse_schedule('0:0,5:0.4'),
         'momentum_schedule': schedules.parse_schedule('0:0.9,30:0.8')}
    notes = cli.schedule_notes(h)
    assert notes == ['# note: --lr-schedule ends at epoch 5 of 24: its last value, 0.4, holds for the rest of the run']
    assert cli.schedule_notes(cli.hyp) == []


def test_an_unusable_out_dir_is_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    for out in (a_file, a_file / 'below'):
        assert train.main(['--device', 'cpu', '--out-dir', str(out), '--data-dir', str(tmp_path / 'none')]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'error: --out-dir {out}: {a_file} is a file, not a folder'), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_read_only_out_dir_is_refused_before_any_work(tmp_path, capsys):
    os.chmod(tmp_path, 0o555)
    try:
        assert train.main(['--device', 'cpu', '--out-dir', str(tmp_path), '--data-dir', '/none']) == 2
        assert 'cannot write into' in capsys.readouterr().err
    finally:
        os.chmod(tmp_path, 0o755)


def test_divergence_without_blf_does_not_blame_blf(cifar_dir, tmp_path):
    res = run_script('train.py', '--device', 'cpu', '--data-dir', cifar_dir, '--out-dir', tmp_path, '--lr', '1e30',
                     '--n-train', 256, '--n-test', 100, '--epochs', 2, '--width', 0.125, '--batch-size', 128)
    one_line_error(res, 'training diverged at epoch')
    assert res.stderr.strip().endswith('the loss is nan; try a lower --lr') and 'BLF' not in res.stderr
    (record,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    assert json.load(open(os.path.join(record, 'summary.json')))['status'] == 'diverged'


@pytest.mark.parametrize('signals', [('SIGINT',), ('SIGTERM', 'SIGINT')])
def test_ctrl_c_mid_run_prints_one_line_marks_the_record_and_exits_130(cifar_dir, tmp_path, signals):
    """Ctrl-C, or SIGTERM (as `timeout` and job schedulers stop a job) followed by a Ctrl-C while the
    record closes: the finished run is kept either way."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import REPO
    # One step per epoch: the first run must finish before the signals, and 49 epochs of the second
    # (about 6 s on 2 cores) leave the signals time to land mid-run.
    args = ['--device', 'cpu', '--data-dir', cifar_dir, '--out-dir', tmp_path, '--n-train', 128, '--n-test', 100,
            '--epochs', 50, '--width', 0.125, '--batch-size', 128, '--runs', 3]
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), *map(str, args)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until the first run has finished and the second has begun
        if line.startswith('    1 ') and 'seed 0:' in open(next(tmp_path.iterdir()) / 'log.txt').read():
            break
    for name in signals:
        proc.send_signal(getattr(signal, name))
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().count('\n') == 0 and err.startswith('interrupted: 1 of 3 run(s) finished'), err
    (record,) = list(tmp_path.iterdir())
    summary = json.load(open(record / 'summary.json'))
    assert summary['status'] == 'interrupted' and summary['runs_finished'] == 1 and summary['accuracy']['n'] == 1
    assert len(read_jsonl(record / 'runs.jsonl')) == 1
    assert {r['seed'] for r in read_jsonl(record / 'epochs.jsonl')} == {0, 1}, 'the cut run\'s epochs are kept'


def test_a_complete_record_says_so(cifar_dir, tmp_path):
    res = run_script('train.py', '--device', 'cpu', '--data-dir', cifar_dir, '--out-dir', tmp_path,
                     '--n-train', 128, '--n-test', 50, '--epochs', 1, '--width', 0.125, '--batch-size', 128)
    assert res.returncode == 0, res.stderr
    (record,) = list(tmp_path.iterdir())
    summary = json.load(open(record / 'summary.json'))
    assert summary['status'] == 'complete' and summary['runs_finished'] == summary['runs_planned'] == 1


def test_run_i_of_a_multi_run_equals_a_single_run_from_its_seed(cifar_dir, tmp_path):
    """--seed 3 --runs 2 trains seeds 3 and 4, each from its own data stream (the runs differ), and its
    second run is the run --seed 4 --runs 1 trains: would catch a data generator not reseeded per
    run, or a seed offset by one."""
    small = ['--device', 'cpu', '--data-dir', cifar_dir, '--n-train', 256, '--n-test', 100, '--epochs', 2,
             '--width', 0.125, '--batch-size', 64]
    for name, extra in (('two', ['--seed', 3, '--runs', 2]), ('one', ['--seed', 4])):
        res = run_script('train.py', *small, *extra, '--out-dir', tmp_path / name)
        assert res.returncode == 0, res.stderr

    def rows(name):
        (record,) = list((tmp_path / name).iterdir())
        return [{k: v for k, v in r.items() if not k.endswith('_s')} for r in read_jsonl(record / 'epochs.jsonl')]
    two, one = rows('two'), rows('one')
    assert [r for r in two if r['seed'] == 4] == one
    assert [r['train_loss'] for r in two if r['seed'] == 3] != [r['train_loss'] for r in one]
