"""CIFAR-10 speedrun: Myrtle's ResNet-9, data on the GPU, fp16 channels_last with fp32 BatchNorm.

    python train.py                          # default recipe, one run
    python train.py --runs 5                 # seeds 0..4: mean/std accuracy, median time
    python train.py --epochs 30 --blf 0.9    # train each step on the samples making 90% of the loss
    python train.py --device cpu --n-train 2000 --n-test 1000 --epochs 2 --width 0.25   # small CPU check

Time (CUDA events) covers every training step (augmentation, forward, loss, backward, optimizer)
and the final evaluation. It excludes reading the data into device memory, building the model,
warm-up (cudnn autotuning on throw-away data) and the per-epoch test evaluations of the table.
Every invocation writes a new record folder under --out-dir (default runs/).
"""
import argparse
import glob
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import data_gpu
import stats

HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------------------------
# Hyperparameters (every one is a flag of the same name with - for _)

hyp = {
    'epochs': 24,              # passes over the training set (Myrtle's ResNet-9 recipe: 24)
    'batch_size': 512,         # images per optimizer step
    'lr': 0.4,                 # peak learning rate for the batch-mean loss (= Myrtle's 0.4/512 per image on the summed loss)
    'lr_peak': 5 / 24,         # fraction of training where the lr peaks: 0 -> lr linearly, then linearly -> 0 at the end
    'momentum': 0.9,           # Nesterov momentum
    'weight_decay': 5e-4,      # L2 on all parameters, per mean loss (= Myrtle's 5e-4*batch on the summed loss)
    'label_smoothing': 0.0,    # cross-entropy label smoothing
    'width': 1.0,              # channel multiplier: 1.0 = 64/128/256/512 channels
    'crop_pad': 4,             # pixels of reflect padding for random crops (0 = no crop)
    'flip': 1,                 # random left-right flips (0 = off)
    'cutout': 8,               # Cutout box side in pixels (0 = off)
    'tta': 1,                  # final evaluation: 0 = plain, 1 = mean of the logits of image and mirror image
    'eval_batch_size': 1000,   # images per evaluation forward
}

HELP = {
    'epochs': 'passes over the training set',
    'batch_size': 'images per optimizer step',
    'lr': 'peak learning rate for the batch-mean loss',
    'lr_peak': 'fraction of training at which the linear warm-up ends and the linear decay to 0 starts',
    'momentum': 'Nesterov momentum',
    'weight_decay': 'L2 weight decay (applied to all parameters, scaled for the mean loss)',
    'label_smoothing': 'label smoothing of the cross-entropy, in [0, 1)',
    'width': 'channel multiplier of the network (1.0 = 64/128/256/512); below 1 for quick CPU runs',
    'crop_pad': 'reflect padding before random 32x32 crops, in pixels (0 = no crop)',
    'flip': 'random horizontal flips: 1 = on, 0 = off',
    'cutout': 'side of the Cutout square in pixels, clipped at the borders (0 = off)',
    'tta': 'test-time augmentation of the final evaluation: 0 = none, 1 = flip',
    'eval_batch_size': 'images per evaluation forward pass',
}


class UserError(Exception):
    """A mistake in the command line or the environment; main() prints it as one line."""


# ----------------------------------------------------------------------------------------------
# Network: Myrtle's ResNet-9 (post 4 of "How to train your ResNet")

def conv_bn(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    def __init__(self, width=1.0, num_classes=10, logit_scale=0.125):
        super().__init__()
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        self.prep = conv_bn(3, c1)
        self.layer1 = nn.Sequential(conv_bn(c1, c2), nn.MaxPool2d(2), Residual(c2))
        self.layer2 = nn.Sequential(conv_bn(c2, c3), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn(c3, c4), nn.MaxPool2d(2), Residual(c4))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = nn.Linear(c4, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.linear(self.pool(x).flatten(1)) * self.logit_scale


def make_model(width, device, dtype):
    """ResNet-9 with conv/linear weights in `dtype`, BatchNorm kept in fp32, memory channels_last.

    fp32 BatchNorm with fp16 activations takes cuDNN's fast mixed-precision path (Myrtle post 3:
    fp16 BN fell onto a slow path); channels_last avoids NCHW<->NHWC transposes around each conv."""
    model = ResNet9(width).to(device=device, dtype=dtype)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.float()
    return model.to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------
# Optimiser and schedule

def make_optimizer(model, hyp):
    return torch.optim.SGD(model.parameters(), lr=0.0, momentum=hyp['momentum'], nesterov=True,
                           weight_decay=hyp['weight_decay'])


def lr_schedule(hyp, steps_per_epoch):
    """One learning rate per step: piecewise linear through (0, 0), (lr_peak*epochs, lr), (epochs, 0).

    Evaluated at the epoch fraction of each step, so the shape stretches with --epochs."""
    epochs, peak = hyp['epochs'], hyp['lr_peak'] * hyp['epochs']
    lrs = []
    for step in range(epochs * steps_per_epoch):
        t = step / steps_per_epoch
        frac = t / peak if t < peak else (epochs - t) / (epochs - peak)
        lrs.append(hyp['lr'] * frac)
    return lrs


# ----------------------------------------------------------------------------------------------
# Timing: CUDA events on a GPU, wall clock on the CPU (where each op has finished when it returns)

class Stopwatch:
    def __init__(self, device):
        self.cuda = torch.device(device).type == 'cuda'

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end):
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000


# ----------------------------------------------------------------------------------------------
# Training and evaluation (no host syncs inside: sums stay in device tensors)

def train_step(model, opt, x, y, hyp, totals):
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=hyp['label_smoothing'])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    totals['loss'] += loss.detach() * len(y)
    totals['correct'] += (logits.argmax(1) == y).sum()
    totals['count'] += len(y)


def train_epoch(model, opt, batches, lrs, hyp):
    """One pass over `batches`, lr per step from `lrs`. Returns device tensors; never syncs."""
    device = next(model.parameters()).device
    totals = {k: torch.zeros((), device=device) for k in ('loss', 'correct', 'count')}
    for (x, y), lr in zip(batches, lrs):
        for group in opt.param_groups:
            group['lr'] = lr
        train_step(model, opt, x, y, hyp, totals)
    return totals


@torch.no_grad()
def evaluate(model, batches, tta=0):
    """Test loss sum, correct count and count as device tensors. tta=1 averages image and mirror."""
    model.eval()
    device = next(model.parameters()).device
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    count = 0
    for x, y in batches:
        logits = model(x).float()
        if tta:
            logits = 0.5 * (logits + model(x.flip(3)).float())
        loss += F.cross_entropy(logits, y, reduction='sum')
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train()
    return {'loss': loss, 'correct': correct, 'count': count}


def warm_up(hyp, data, device, dtype, steps=3):
    """Run the real step and eval shapes on random data so cudnn autotuning and lazy init happen
    outside the timed region. The model and optimiser used here are thrown away."""
    gen = torch.Generator(device=device).manual_seed(12345)
    model = make_model(hyp['width'], device, dtype)
    opt = make_optimizer(model, hyp)
    bs = hyp['batch_size']
    x = torch.randn(bs, 3, 32, 32, device=device, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=device, generator=gen)
    train_epoch(model, opt, [(x, y)] * steps, [hyp['lr'] * 0.01] * steps, hyp)
    n_test, ebs = len(data.test_y), hyp['eval_batch_size']
    for n in {min(ebs, n_test), n_test % ebs or ebs}:
        evaluate(model, [(x.new_zeros(n, 3, 32, 32).contiguous(memory_format=torch.channels_last), y.new_zeros(n))], tta=hyp['tta'])
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def train_run(hyp, data, seed, device, dtype, log):
    """One full training run from `seed`. Returns (result dict, list of per-epoch rows)."""
    torch.manual_seed(seed)
    data.reseed(seed)
    model = make_model(hyp['width'], device, dtype)
    opt = make_optimizer(model, hyp)
    steps_per_epoch = data.n_train // hyp['batch_size']
    lrs = lr_schedule(hyp, steps_per_epoch)
    clock = Stopwatch(device)
    rows, total = [], 0.0
    for epoch in range(hyp['epochs']):
        start = clock.mark()
        epoch_lrs = lrs[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]
        totals = train_epoch(model, opt, data.train_batches(hyp['batch_size']), epoch_lrs, hyp)
        end = clock.mark()
        test = evaluate(model, data.test_batches(hyp['eval_batch_size']))  # not timed
        seconds = clock.seconds(start, end)  # the one sync of the epoch
        total += seconds
        count = totals['count'].item()
        row = {'seed': seed, 'epoch': epoch + 1, 'lr': epoch_lrs[-1],
               'train_loss': totals['loss'].item() / count, 'train_acc': totals['correct'].item() / count,
               'test_loss': test['loss'].item() / test['count'], 'test_acc': test['correct'].item() / test['count'],
               'epoch_s': seconds, 'total_s': total}
        if not math.isfinite(row['train_loss']):
            raise UserError(f'training diverged at epoch {epoch + 1} (loss {row["train_loss"]}); lower --lr')
        rows.append(row)
        log(format_row(row))
    start = clock.mark()
    final = evaluate(model, data.test_batches(hyp['eval_batch_size']), tta=hyp['tta'])
    end = clock.mark()
    eval_s = clock.seconds(start, end)
    result = {'seed': seed, 'test_acc': final['correct'].item() / final['count'],
              'test_loss': final['loss'].item() / final['count'], 'tta': hyp['tta'],
              'train_s': total, 'eval_s': eval_s, 'time_s': total + eval_s}
    return result, rows


# ----------------------------------------------------------------------------------------------
# Output: the table and the run record

COLUMNS = [('epoch', '5d'), ('lr', '8.4f'), ('train_loss', '10.4f'), ('train_acc', '9.4f'),
           ('test_acc', '8.4f'), ('epoch_s', '8.3f'), ('total_s', '8.3f')]


def table_header():
    return '  '.join(f'{name:>{int(fmt.split(".")[0].rstrip("d"))}}' for name, fmt in COLUMNS)


def format_row(row):
    return '  '.join(f'{row[name]:{fmt}}' for name, fmt in COLUMNS)


def environment(device):
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=HERE).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
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


class Record:
    """A new folder per invocation (never reuses one); the log, JSON and a copy of the source."""

    def __init__(self, out_dir):
        stamp = time.strftime('%Y%m%d-%H%M%S')
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise UserError(f'cannot create the output folder {out_dir}: {e.strerror}') from None
        for suffix in [''] + [f'-{i}' for i in range(2, 1000)]:
            path = os.path.join(out_dir, stamp + suffix)
            try:
                os.mkdir(path)
                break
            except FileExistsError:
                continue
        self.path = path
        self.log_file = open(os.path.join(path, 'log.txt'), 'w')

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

    def copy_source(self):
        for rel in sorted(glob.glob('*.py', root_dir=HERE) + glob.glob('kernels/*.py', root_dir=HERE)):
            dest = os.path.join(self.path, 'source', rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.join(HERE, rel), dest)


# ----------------------------------------------------------------------------------------------
# Command line

class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f'error: {message} (see --help)\n')


def parse_args(argv):
    p = OneLineParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for key, default in hyp.items():
        p.add_argument('--' + key.replace('_', '-'), type=type(default), default=default, help=HELP[key])
    p.add_argument('--seed', type=int, default=0, help='seed of the first run; run i uses seed+i')
    p.add_argument('--runs', type=int, default=1, help='number of runs (mean/std accuracy, median time)')
    p.add_argument('--data-dir', default='data', help='folder with cifar-10-batches-py/ or cifar-10-python.tar.gz')
    p.add_argument('--no-download', action='store_true', help='fail instead of downloading CIFAR-10')
    p.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (cpu runs in fp32)')
    p.add_argument('--n-train', type=int, default=None, help='use only the first N training images (default: all)')
    p.add_argument('--n-test', type=int, default=None, help='use only the first N test images (default: all)')
    p.add_argument('--out-dir', default='runs', help='a new record folder is made in here for each invocation')
    return p.parse_args(argv)


def check_args(args):
    """Reject impossible values before any work is done."""
    checks = [
        (args.epochs >= 1, f'--epochs must be at least 1, got {args.epochs}'),
        (args.batch_size >= 1, f'--batch-size must be at least 1, got {args.batch_size}'),
        (args.lr > 0, f'--lr must be positive, got {args.lr}'),
        (0 < args.lr_peak < 1, f'--lr-peak must be in (0, 1), got {args.lr_peak}'),
        (0 <= args.momentum < 1, f'--momentum must be in [0, 1), got {args.momentum}'),
        (args.weight_decay >= 0, f'--weight-decay must be >= 0, got {args.weight_decay}'),
        (0 <= args.label_smoothing < 1, f'--label-smoothing must be in [0, 1), got {args.label_smoothing}'),
        (args.width > 0, f'--width must be positive, got {args.width}'),
        (0 <= args.crop_pad <= 16, f'--crop-pad must be in 0..16, got {args.crop_pad}'),
        (args.flip in (0, 1), f'--flip must be 0 or 1, got {args.flip}'),
        (0 <= args.cutout <= 32, f'--cutout must be in 0..32, got {args.cutout}'),
        (args.tta in (0, 1), f'--tta must be 0 or 1, got {args.tta}'),
        (args.eval_batch_size >= 1, f'--eval-batch-size must be at least 1, got {args.eval_batch_size}'),
        (args.runs >= 1, f'--runs must be at least 1, got {args.runs}'),
        (args.n_train is None or 1 <= args.n_train <= 50000, f'--n-train must be in 1..50000, got {args.n_train}'),
        (args.n_test is None or 1 <= args.n_test <= 10000, f'--n-test must be in 1..10000, got {args.n_test}'),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    n_train = args.n_train or 50000
    if args.batch_size > n_train:
        raise UserError(f'--batch-size {args.batch_size} is larger than the training set ({n_train} images)')
    if args.device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise UserError('no CUDA GPU found; to run on the CPU add --device cpu '
                            '(slow: try --n-train 2000 --n-test 1000 --epochs 2 --width 0.25)')
    elif args.device != 'cpu':
        raise UserError(f'--device must be cuda, cuda:N or cpu, got {args.device!r}')


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        check_args(args)
        run(args, argv)
    except (UserError, data_gpu.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


def run(args, argv):
    h = {key: getattr(args, key) for key in hyp}
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == 'cuda' else torch.float32
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True

    data_cpu = data_gpu.load_cifar10(args.data_dir, download=not args.no_download, log=print)
    data = data_gpu.DeviceCIFAR10(data_cpu, device, dtype, n_train=args.n_train, n_test=args.n_test,
                                  flip=bool(h['flip']), crop_pad=h['crop_pad'], cutout=h['cutout'])
    record = Record(args.out_dir)
    log = record.log
    record.write_json('config.json', {'hyp': h, 'seed': args.seed, 'runs': args.runs, 'device': str(device),
                                      'dtype': str(dtype), 'n_train': data.n_train, 'n_test': len(data.test_y),
                                      'data_dir': os.path.abspath(args.data_dir)})
    with open(os.path.join(record.path, 'command.txt'), 'w') as fh:
        fh.write(shlex.join(['python', 'train.py'] + argv) + '\n')
    env = environment(device)
    record.write_json('env.json', env)
    record.copy_source()

    log(f'# {shlex.join(["python", "train.py"] + argv)}')
    log(f'# {env["device"]} | torch {env["torch"]} | {dtype} | {data.n_train} train / {len(data.test_y)} test images '
        f'| record: {record.path}')
    log('# time = training steps (augmentation included) + final evaluation; per-epoch test evals excluded')
    warm_up(h, data, device, dtype)

    results = []
    for i in range(args.runs):
        seed = args.seed + i
        log(f'\nrun {i + 1}/{args.runs}, seed {seed}')
        log(table_header())
        result, rows = train_run(h, data, seed, device, dtype, log)
        for row in rows:
            record.append_jsonl('epochs.jsonl', row)
        record.append_jsonl('runs.jsonl', result)
        results.append(result)
        tta = ' (flip TTA)' if h['tta'] else ''
        log(f'seed {seed}: test accuracy {result["test_acc"]:.4f}{tta}, time {result["time_s"]:.3f} s '
            f'(train {result["train_s"]:.3f} s + final eval {result["eval_s"]:.3f} s)')

    summary = {'accuracy': stats.summarize([r['test_acc'] for r in results]),
               'time_s': stats.summarize([r['time_s'] for r in results])}
    if len(results) > 1:
        t, p = stats.t_test_greater([r['test_acc'] for r in results], 0.94)
        summary['t_test_mean_gt_0.94'] = {'t': t, 'p': p}
        a, s = summary['accuracy'], summary['time_s']
        log(f'\n{len(results)} runs: accuracy mean {a["mean"]:.4f} std {a["std"]:.4f} min {a["min"]:.4f} '
            f'max {a["max"]:.4f} (one-sided t-test mean > 0.94: p = {p:.3g}); '
            f'time median {s["median"]:.3f} s (min {s["min"]:.3f}, max {s["max"]:.3f})')
    record.write_json('summary.json', summary)
    log(f'record: {record.path}')


if __name__ == '__main__':
    sys.exit(main())
