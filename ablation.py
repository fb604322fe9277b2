"""Where the time of a training step goes: Myrtle-style ablation by component, across batch sizes,
precision/layout ablations, and the distance from the hardware's floor. Run it as `python profile.py`.

    python profile.py                                   # batch 128, 256, 512, 768, 1024 on the GPU
    python profile.py --batch-sizes 512 --torch-profiler
    python profile.py --device cpu --batch-sizes 16,32 --steps 3 --width 0.125 --n-train 256   # smoke test

Per batch size, the time per step (median of --steps steps, each between two CUDA events, no sync in
between; min and max kept) of, each removing one more part (Myrtle, "How to train your ResNet 3"):
  full          the step as train.py runs it: per-epoch augmentation + batching + forward + loss +
                backward + optimizer (timed over whole epochs of --n-train images, per step)
  no_data       random data preloaded on the device: no augmentation or batching
  no_optimizer  forward + loss + backward, no optimizer step
  no_bn_relu    the same without BatchNorm and ReLU: convolutions, pooling, residual additions
and beside the ladder: forward (no-grad forward + loss), blf_mask / blf_compact (BLF steps with
--blf on the preloaded batch; kept fraction shown) and blf_kernels (BLF's kernels alone, as in
bench_blf.py). Shares per epoch: data = full - no_data, optimizer = no_data - no_optimizer,
bn_relu = no_optimizer - no_bn_relu, convs+pool+add = no_bn_relu.

Precision/layout ablations at --ablation-batch (no_data step): BatchNorm fp16 vs fp32,
NCHW vs channels_last, fp16 vs bf16 vs fp32, cudnn.benchmark off vs on.

The floor: FLOPs per step counted from the layer shapes (convolutions and the linear layer,
forward and backward; elementwise work not counted), the device's dense matrix rate measured on
the spot (a large fp16 matmul on a GPU, fp32 on a CPU) and its copy bandwidth: seconds per epoch at
100% efficiency, and the achieved fraction.

Writes profile.csv, profile.md, env.json and chart.png (stacked bars; needs matplotlib) into a new
folder under --out.
"""
import argparse
import csv
import json
import os
import re
import shutil
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import blf_step
import cli
import data_gpu
import networks
import optimizers
import record
import train

LADDER = ['full', 'no_data', 'no_optimizer', 'no_bn_relu']
SIDE = ['forward', 'blf_mask', 'blf_compact', 'blf_kernels']
SHARES = ['data', 'optimizer', 'bn_relu', 'conv_pool_add']


# ----------------------------------------------------------------------------------------------
# Timing

def time_steps(step, device, steps, warmup=3):
    """Per-step seconds: an event before and after each step, one sync at the end (no bubbles)."""
    for _ in range(warmup):
        step()
    clock = train.Stopwatch(device)
    marks = [clock.mark()]
    for _ in range(steps):
        step()
        marks.append(clock.mark())
    return [clock.seconds(a, b) for a, b in zip(marks, marks[1:])]


def summary_ms(times):
    ms = [t * 1000 for t in times]
    return {'median_ms': statistics.median(ms), 'min_ms': min(ms), 'max_ms': max(ms), 'n': len(ms)}


# ----------------------------------------------------------------------------------------------
# The steps being compared

def strip_bn_relu(model):
    """Replace every BatchNorm and ReLU by Identity: what is left is convs, pooling, additions."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (nn.BatchNorm2d, nn.ReLU)):
                setattr(parent, name, nn.Identity())
    return model


def make_step(kind, model, opt, x, y, hyp, blf=None):
    totals = train.epoch_totals(x.device, blf_on=True)
    smoothing = hyp['label_smoothing']

    def full_step():
        train.train_step(model, opt, x, y, hyp, totals)

    def no_optimizer():  # the step's backward, loss scale included
        model.zero_grad(set_to_none=True)
        (F.cross_entropy(model(x).float(), y, label_smoothing=smoothing) * optimizers.loss_scale(hyp)).backward()

    def forward():
        with torch.no_grad():
            F.cross_entropy(model(x).float(), y, label_smoothing=smoothing)

    def filtered_step():
        blf_step.blf_train_step(model, opt, x, y, hyp, totals, blf)

    step = {'no_data': full_step, 'no_optimizer': no_optimizer, 'no_bn_relu': no_optimizer,
            'forward': forward, 'blf_mask': filtered_step, 'blf_compact': filtered_step}[kind]
    return step, totals


def random_batch(batch, device, dtype, channels_last=True, seed=0):
    """Random images and labels (never zeros: they can run faster than real data)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, device=device, generator=gen).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x, torch.randint(0, 10, (batch,), device=device, generator=gen)


SETTING = {'lr': 1e-3, 'momentum': 0.9, 'weight_decay': 5e-4, 'blf': 0.9}  # the time of a step does not depend on them


def fresh(hyp, device, dtype, **model_options):
    torch.manual_seed(0)
    model = networks.make_model(hyp['width'], device, dtype, **model_options)
    opt = optimizers.make_optimizer(model, hyp)
    optimizers.apply_setting(opt, SETTING, hyp)  # a small fixed lr: the time of a step does not depend on it
    return model, opt


def time_full(hyp, data, device, dtype, epochs):
    """Per-step time of whole epochs as train.py runs them (augmentation and batching included)."""
    model, opt = fresh(hyp, device, dtype)
    bs = hyp['batch_size']
    steps = data.n_train // bs
    clock = train.Stopwatch(device)
    per_step = []
    for epoch in range(epochs + 1):  # the first epoch is warm-up
        start = clock.mark()
        train.train_epoch(model, opt, data.train_batches(bs), [{**SETTING}] * steps, hyp)
        seconds = clock.seconds(start, clock.mark())
        if epoch:
            per_step.append(seconds / steps)
    return per_step


def profile_batch(hyp, data, device, dtype, args, backend):
    """All ladder and side measurements at one batch size: {config: summary}."""
    bs = hyp['batch_size']
    x, y = random_batch(bs, device, dtype)
    out = {'full': summary_ms(time_full(hyp, data, device, dtype, args.epochs))}
    for kind in ['no_data', 'no_optimizer', 'no_bn_relu', 'forward']:
        model, opt = fresh(hyp, device, dtype)
        if kind == 'no_bn_relu':
            strip_bn_relu(model)
        step, _ = make_step(kind, model, opt, x, y, hyp)
        out[kind] = summary_ms(time_steps(step, device, args.steps))
    if backend is not None:
        for mode in ('mask', 'compact'):
            h = {**hyp, 'blf_mode': mode}
            model, opt = fresh(h, device, dtype)
            blf = blf_step.BLF(h, backend, device, bs, seed=0)
            step, totals = make_step('blf_' + mode, model, opt, x, y, h, blf)
            if mode == 'compact':  # visit every kept-batch shape before timing (cudnn autotuning)
                train.warm_up(h, data, device, dtype, backend)
            out['blf_' + mode] = summary_ms(time_steps(step, device, args.steps))
            out['blf_' + mode]['kept'] = totals['kept'].item() / totals['count'].item()
        import bench_blf
        logits = torch.randn(bs, 10, device=device).to(dtype).requires_grad_()
        median, low, high = bench_blf.time_ms(bench_blf.blf_work(backend, logits, y, hyp['blf']), device, args.steps)
        out['blf_kernels'] = {'median_ms': median, 'min_ms': low, 'max_ms': high, 'n': args.steps,
                              'note': 'p20/p80 as min/max' if device.type == 'cuda' else ''}
    return out


SHARE_ROWS = {'data': ('full', 'no_data'), 'optimizer': ('no_data', 'no_optimizer'),
              'bn_relu': ('no_optimizer', 'no_bn_relu'), 'conv_pool_add': ('no_bn_relu',)}


def share_is_noise(row, share, ms_per_epoch, steps_per_epoch):
    """A component's time is the difference of two rows' medians: below either row's spread
    (max - min per step) it says nothing, and it can even come out negative."""
    spread = max(row[k]['max_ms'] - row[k]['min_ms'] for k in SHARE_ROWS[share]) * steps_per_epoch
    return ms_per_epoch <= 0 or ms_per_epoch < spread


def shares_per_epoch(row, steps_per_epoch):
    """Each component's milliseconds per epoch, from the ladder's differences."""
    m = {k: row[k]['median_ms'] * steps_per_epoch for k in LADDER}
    return {'data': m['full'] - m['no_data'], 'optimizer': m['no_data'] - m['no_optimizer'],
            'bn_relu': m['no_optimizer'] - m['no_bn_relu'], 'conv_pool_add': m['no_bn_relu']}


ABLATIONS = [  # name, dtype (None = the run's), model options, cudnn.benchmark
    ('baseline: fp16, BN fp32, channels_last, cudnn.benchmark', None, {}, True),
    ('BatchNorm in fp16', None, {'bn_fp32': False}, True),
    ('NCHW instead of channels_last', None, {'channels_last': False}, True),
    ('bf16 instead of fp16', torch.bfloat16, {}, True),
    ('fp32 everywhere (cuDNN may use TF32: the default)', torch.float32, {}, True),
    ('cudnn.benchmark off', None, {}, False),
]


def precision_ablations(hyp, device, dtype, steps):
    rows = []
    for name, abl_dtype, options, benchmark in ABLATIONS:
        d = abl_dtype or dtype
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark  # only cuDNN reads it: on a CPU it changes nothing
        try:
            model, opt = fresh(hyp, device, d, **options)
            x, y = random_batch(hyp['batch_size'], device, d, channels_last=options.get('channels_last', True))
            step, _ = make_step('no_data', model, opt, x, y, hyp)
            rows.append({'ablation': name, **summary_ms(time_steps(step, device, steps))})
        except (RuntimeError, NotImplementedError) as e:  # a combination this device cannot run
            rows.append({'ablation': name, 'median_ms': float('nan'), 'min_ms': float('nan'),
                         'max_ms': float('nan'), 'n': 0, 'error': str(e).splitlines()[0][:120]})
        finally:
            torch.backends.cudnn.benchmark = saved
    return rows


# ----------------------------------------------------------------------------------------------
# The floor

def count_flops(width, device):
    """Training FLOPs per image of ResNet-9's conv and linear layers (networks.flops_per_image)."""
    return networks.flops_per_image(networks.ResNet9(width).to(device))


def measure_ceilings(device, reps=10):
    """Dense matmul rate (TFLOP/s) and device-to-device copy bandwidth (GB/s, read + write)."""
    cuda = device.type == 'cuda'
    n, dtype = (8192, torch.float16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul_s = statistics.median(time_steps(lambda: a @ b, device, reps))
    nbytes = (1 << 30) if cuda else (64 << 20)
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    copy_s = statistics.median(time_steps(lambda: dst.copy_(src), device, reps))
    return {'matmul_dtype': str(dtype).replace('torch.', ''), 'matmul_n': n,
            'matmul_tflops': 2 * n ** 3 / matmul_s / 1e12, 'copy_gbps': 2 * nbytes / copy_s / 1e9}


# ----------------------------------------------------------------------------------------------
# torch.profiler summary

CATEGORIES = [  # first match wins; kernel names differ between cuDNN versions, hence loose patterns
    ('triton', r'triton|^_(ce_forward|ce_backward|select)_kernel'),  # our kernels keep their jit names
    ('conv', r'conv|cudnn|implicit_gemm|sm\d+_xmma|wgrad|dgrad|fprop'),
    ('batchnorm', r'batch_norm|batchnorm|bn_'),
    ('gemm', r'gemm|matmul|\bmm\b|addmm|cutlass'),
    ('pooling', r'pool'),
    ('copies', r'copy|memcpy|memset|cat|index|gather|scatter'),
    ('elementwise', r'elementwise|relu|add|mul|fill|where|vectorized|reduce|sum|foreach|sgd'),
]


def categorize(name):
    low = name.lower()
    for category, pattern in CATEGORIES:
        if re.search(pattern, low):
            return category
    return 'other'


def torch_profile(hyp, device, dtype, steps):
    """Self time per kernel (GPU) or op (CPU) over `steps` no_data steps, by category and top 10."""
    from torch.profiler import ProfilerActivity, profile
    model, opt = fresh(hyp, device, dtype)
    x, y = random_batch(hyp['batch_size'], device, dtype)
    step, _ = make_step('no_data', model, opt, x, y, hyp)
    for _ in range(3):
        step()
    cuda = device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    kernels = []
    for e in prof.key_averages():
        if cuda:
            t = getattr(e, 'self_device_time_total', None)
            t = getattr(e, 'self_cuda_time_total', 0) if t is None else t
            if not t or e.device_type != torch.autograd.DeviceType.CUDA:
                continue
        else:
            t = e.self_cpu_time_total
            if not t or e.key.startswith('ProfilerStep'):
                continue
        kernels.append((e.key, t / 1000 / steps))  # ms per step
    total = sum(t for _, t in kernels) or 1.0
    by_cat = {}
    for name, t in kernels:
        by_cat[categorize(name)] = by_cat.get(categorize(name), 0.0) + t
    return {'total_ms': total,
            'categories': sorted(([c, t, 100 * t / total] for c, t in by_cat.items()), key=lambda r: -r[1]),
            'top': [[n, t, 100 * t / total] for n, t in sorted(kernels, key=lambda r: -r[1])[:10]]}


# ----------------------------------------------------------------------------------------------
# Output

def write_chart(path, batches, shares):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return 'chart skipped: matplotlib is not installed'
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(batches)
    for part in SHARES:
        values = [shares[b][part] / 1000 for b in batches]
        ax.bar([str(b) for b in batches], values, bottom=bottom, label=part)
        bottom = [a + v for a, v in zip(bottom, values)]
    ax.set_xlabel('batch size')
    ax.set_ylabel('seconds per epoch (50,000 images)')
    ax.set_title('Where an epoch goes (ablation by component)')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f'chart: {path}'


def main(argv=None):
    ap = cli.OneLineParser(description='Where the time of a training step goes (see ablation.py)',
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('--batch-sizes', type=cli.positive_ints, default='128,256,512,768,1024',
                    help='comma-separated batch sizes')
    ap.add_argument('--ablation-batch', type=int, default=512, help='batch size of the precision/layout ablations')
    ap.add_argument('--steps', type=int, default=30, help='timed steps per measurement')
    ap.add_argument('--epochs', type=int, default=2, help='timed epochs for the full step (after one warm-up epoch)')
    ap.add_argument('--n-train', type=int, default=10240, help='training images per epoch of the full step')
    ap.add_argument('--width', type=float, default=cli.hyp['width'], help='channel multiplier of ResNet-9')
    ap.add_argument('--blf', type=float, default=0.9, help='BLF share for the BLF rows (0 = skip them)')
    ap.add_argument('--device', default='cuda', help='cuda or cpu (cpu: fp32, a smoke test)')
    ap.add_argument('--data-dir', default='data', help='CIFAR-10 folder (as train.py)')
    ap.add_argument('--torch-profiler', action='store_true', help='also summarise a torch.profiler trace')
    ap.add_argument('--out', default='runs', help='a new folder profile-<time> is made in here')
    args = ap.parse_args(argv)
    batches = args.batch_sizes
    problems = [(args.steps < 2, '--steps must be at least 2'), (args.epochs < 1, '--epochs must be at least 1'),
                (not 0 <= args.blf <= 1, '--blf must be in [0, 1]'), (args.width <= 0, '--width must be positive'),
                (not 1 <= args.n_train <= 50000, '--n-train must be in 1..50000'),
                (max(batches + [args.ablation_batch]) > args.n_train, 'every batch size must fit in --n-train images')]
    for bad, message in problems:
        if bad:
            sys.exit(f'error: {message}')
    try:
        device = cli.use_device(args.device)  # cuda:N becomes the current device
    except cli.UserError as e:
        sys.exit(f'error: {e}')
    dtype = networks.PRECISIONS[networks.resolve_precision('auto', device)][0]  # train.py's default: fp16 on a GPU
    torch.backends.cudnn.benchmark = device.type == 'cuda'
    try:
        cifar = data_gpu.load_cifar10(args.data_dir, download=True)
    except data_gpu.DataError as e:
        sys.exit(f'error: {e}')
    try:
        out = record.new_folder(args.out, prefix='profile-')
    except cli.UserError as e:
        sys.exit(f'error: {e}')
    try:
        measure_and_write(args, argv, batches, device, dtype, cifar, out)
    except BaseException as e:  # an error or Ctrl-C: a half-written profile folder is removed, not left behind
        shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt):
            print(f'interrupted: nothing was written ({out} removed)', file=sys.stderr)
            sys.exit(130)
        raise


def measure_and_write(args, argv, batches, device, dtype, cifar, out):
    backend = blf_step.blf_backend('triton', device) if args.blf > 0 else None
    base = {**cli.hyp, 'width': args.width, 'blf': args.blf or None}
    env = record.environment(device)
    print(f'# {env["device"]} | torch {env["torch"]} | triton {env["triton"]} | {dtype} | '
          f'{args.steps} timed steps per row, median [min, max] ms per step', flush=True)

    results, shares = {}, {}
    for bs in batches:
        hyp = {**base, 'batch_size': bs}
        data = data_gpu.DeviceCIFAR10(cifar, device, dtype, n_train=args.n_train, n_test=hyp['eval_batch_size'])
        results[bs] = profile_batch(hyp, data, device, dtype, args, backend)
        shares[bs] = shares_per_epoch(results[bs], 50000 // bs)
        print(f'batch {bs}: ' + '  '.join(f'{k} {v["median_ms"]:.3f}' for k, v in results[bs].items()), flush=True)

    ablations = precision_ablations({**base, 'batch_size': args.ablation_batch}, device, dtype, args.steps)
    flops = count_flops(args.width, device)
    ceilings = measure_ceilings(device)
    floor = {'train_flops_per_epoch': flops['train_flops_per_image'] * 50000,
             'floor_s_per_epoch': flops['train_flops_per_image'] * 50000 / (ceilings['matmul_tflops'] * 1e12)}
    for bs in batches:
        floor[f'efficiency_full_b{bs}'] = floor['floor_s_per_epoch'] / (results[bs]['full']['median_ms'] * (50000 // bs) / 1000)
    prof = torch_profile({**base, 'batch_size': args.ablation_batch}, device, dtype, 5) if args.torch_profiler else None

    command = ' '.join(['python', 'profile.py'] + (argv if argv is not None else sys.argv[1:]))
    lines = report(batches, results, shares, ablations, flops, ceilings, floor, prof, env, dtype, args, command)
    print('\n'.join(lines))
    with open(os.path.join(out, 'profile.md'), 'w') as fh:
        fh.write('\n'.join(lines) + '\n')
    with open(os.path.join(out, 'profile.csv'), 'w', newline='') as fh:
        w = csv.writer(fh)
        w.writerow(['section', 'batch', 'config', 'median_ms', 'min_ms', 'max_ms', 'n', 'extra'])
        for bs in batches:
            for k, v in results[bs].items():
                w.writerow(['step', bs, k, v['median_ms'], v['min_ms'], v['max_ms'], v['n'], v.get('kept', '')])
            for k, v in shares[bs].items():
                w.writerow(['share_ms_per_epoch', bs, k, v, '', '', '', ''])
        for r in ablations:
            w.writerow(['ablation', args.ablation_batch, r['ablation'], r['median_ms'], r['min_ms'], r['max_ms'], r['n'],
                        r.get('error', '')])
    with open(os.path.join(out, 'env.json'), 'w') as fh:
        json.dump({**env, 'command': command,
                   'flops': flops, 'ceilings': ceilings, 'floor': floor, 'torch_profiler': prof}, fh, indent=1)
    print(write_chart(os.path.join(out, 'chart.png'), batches, shares))
    print(f'wrote {out}')


def report(batches, results, shares, ablations, flops, ceilings, floor, prof, env, dtype, args, command):
    """The Markdown/terminal report: fixed-width tables inside code fences."""
    cols = LADDER + [c for c in SIDE if c in results[batches[0]]]
    lines = [f'# profile: {env["device"]}, torch {env["torch"]}, triton {env["triton"]}, {dtype}',
             '', f'Command: `{command}`', '',
             f'## Time per step, ms: median [min, max] of {args.steps} steps (full: {args.epochs} epochs of '
             f'{args.n_train} images)', '', '```', f'{"batch":>6}' + ''.join(f'  {c:>26}' for c in cols)]
    for bs in batches:
        lines.append(f'{bs:>6}' + ''.join(f'  {fmt_cell(results[bs][c]):>26}' for c in cols))
    if 'blf_mask' in results[batches[0]]:
        lines.append('kept fraction in the BLF rows (random data): ' + ', '.join(
            f'{bs}: {results[bs]["blf_mask"]["kept"]:.2f}' for bs in batches))
    lines += ['```', '', '## Seconds per epoch (50,000 images) by component', '', '```',
              f'{"batch":>6} ' + ''.join(f'{s:>15}' for s in SHARES) + f'{"total":>10}']
    for bs in batches:
        cells = ['< noise' if share_is_noise(results[bs], s, shares[bs][s], 50000 // bs) else f'{shares[bs][s] / 1000:.3f}'
                 for s in SHARES]
        lines.append(f'{bs:>6} ' + ''.join(f'{c:>15}' for c in cells) + f'{sum(shares[bs].values()) / 1000:10.3f}')
    lines.append('(< noise: a difference of two rows smaller than their spread, or negative; profile.csv keeps the number)')
    lines += ['```', '', f'## Precision and layout at batch {args.ablation_batch} (no_data step)', '', '```']
    base = ablations[0]['median_ms']
    for r in ablations:
        tail = f'  ({r["error"]})' if r.get('error') else f'  {r["median_ms"] / base:5.2f}x baseline'
        lines.append(f'{r["ablation"]:<58}{fmt_cell(r):>28}{tail}')
    lines += ['```', '', '## Floor', '', '```',
              f'train FLOPs per image (conv + linear, fwd + bwd): {flops["train_flops_per_image"] / 1e9:.3f} GFLOP',
              f'measured {ceilings["matmul_dtype"]} matmul ({ceilings["matmul_n"]}^3): {ceilings["matmul_tflops"]:.1f} TFLOP/s; '
              f'copy bandwidth: {ceilings["copy_gbps"]:.0f} GB/s',
              f'seconds per epoch at 100% of that rate: {floor["floor_s_per_epoch"]:.4f} '
              f'({floor["floor_s_per_epoch"] * cli.hyp["epochs"]:.3f} s for {cli.hyp["epochs"]} epochs; '
              f'Myrtle\'s "40 s target" on a V100)']
    for bs in batches:
        lines.append(f'achieved efficiency of the full step at batch {bs}: {100 * floor[f"efficiency_full_b{bs}"]:.1f}%')
    lines.append('```')
    if prof:
        lines += ['', f'## torch.profiler, batch {args.ablation_batch}: self time per step by category '
                  f'({prof["total_ms"]:.3f} ms in all)', '', '```']
        lines += [f'{c:<14}{t:10.3f} ms {p:6.1f}%' for c, t, p in prof['categories']]
        lines += ['', 'top 10:'] + [f'{t:10.3f} ms {p:6.1f}%  {n[:90]}' for n, t, p in prof['top']] + ['```']
    return lines


def fmt_cell(r):
    if r['median_ms'] != r['median_ms']:
        return 'n/a'
    return f'{r["median_ms"]:.3f} [{r["min_ms"]:.3f}, {r["max_ms"]:.3f}]'
