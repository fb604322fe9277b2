"""Benchmark: the cost of BatchLossFilter's own work per step, Triton kernels vs the torch reference.

    python bench_blf.py                                  # B = 512, 1024, 2048 on the GPU
    python bench_blf.py --batch-sizes 512 --reps 200

Timed per batch size B, on fp16 logits [B, 10] as train.py produces them:
  blf     = per-sample loss + selection + backward of the weighted loss into the logits
            (exactly the extra work of a `mask`-mode step), Triton vs torch;
  step    = one plain training step of train.py's ResNet-9 at batch B (forward, loss, backward,
            optimizer), so that `overhead = blf / step` says what BLF's machinery costs.
Both are timed the same way: after 5 untimed calls, a pair of CUDA events around each of --reps
calls, one sync at the end (none between calls, so the host queues work as in training), L2 left
as the previous call left it (in training the logits were just written); median and 20th/80th
percentiles in ms. The BLF kernels are small: if the host launches them more slowly than the GPU
runs them, the time includes the GPU waiting for launches, which a training step (where the GPU
runs behind the host) would hide; `overhead` is then an upper bound.
`--device cpu` runs the same code under Triton's interpreter as a smoke test: its times say nothing
about GPU speed. Writes bench.csv, bench.md and env.json into a new folder under --out.
"""
import csv
import json
import os
import statistics
import sys

import torch

import ablation
import blf_step
import cli
import networks
import optimizers
import record
import train


def time_ms(fn, device, reps, warmup=5):
    """(median, p20, p80) in ms of `reps` calls of fn, timed as profile.py times its steps
    (ablation.time_steps: an event between calls, one sync at the end; the wall clock on the CPU)."""
    return quantiles([t * 1000 for t in ablation.time_steps(fn, device, reps, warmup)])


def quantiles(times):
    """(median, p20, p80) of a list of times."""
    q = statistics.quantiles(times, n=5, method='inclusive') if len(times) > 1 else [times[0]] * 4
    return statistics.median(times), q[0], q[3]


def blf_work(backend, logits, labels, p=0.9, smoothing=0.0):
    def run():
        logits.grad = None  # a fresh gradient each call, as in training (no accumulation kernel)
        losses, lse = backend.cross_entropy_forward(logits.detach(), labels, smoothing)
        sel = backend.select_top_loss(losses, p)
        backend.weighted_cross_entropy(logits, labels, sel.weight, smoothing, losses, lse).backward()
    return run


def step_ms(batch, device, dtype, reps):
    """Median of --reps plain training steps of train.py at this batch size, timed as time_ms."""
    h = {**cli.hyp, 'batch_size': batch}
    model = networks.make_model(1.0, device, dtype)
    opt = optimizers.make_optimizer(model, h)
    # a small lr: a step's time does not depend on it
    optimizers.apply_setting(opt, {'lr': 1e-3, 'momentum': 0.9, 'weight_decay': 5e-4, 'blf': 1.0}, h)
    x = torch.randn(batch, 3, 32, 32, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    totals = {k: torch.zeros((), device=device) for k in ('loss', 'correct', 'count')}
    return time_ms(lambda: train.train_step(model, opt, x, y, h, totals), device, reps)[0]


def main(argv=None):
    ap = cli.OneLineParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch-sizes', type=cli.positive_ints, default='512,1024,2048', help='comma-separated batch sizes')
    ap.add_argument('--reps', type=int, default=100, help='repetitions per measurement')
    ap.add_argument('--device', default='cuda', help='cuda or cpu (cpu: interpreter smoke test only)')
    ap.add_argument('--out', default='runs', help='a new folder bench-<time> is made in here')
    args = ap.parse_args(argv)
    sizes = args.batch_sizes
    if args.reps < 1:
        sys.exit('error: --reps must be positive')
    try:
        device = cli.use_device(args.device)  # cuda:N becomes the current device
    except cli.UserError as e:
        sys.exit(f'error: {e}')
    dtype = networks.PRECISIONS[networks.resolve_precision('auto', device)][0]  # train.py's default: fp16 on a GPU
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    backends = {'triton': blf_step.blf_backend('triton', device), 'torch': blf_step.blf_backend('torch', device)}

    out = record.new_folder(args.out, prefix='bench-')
    env = record.environment(device)
    with open(os.path.join(out, 'env.json'), 'w') as fh:
        json.dump({**env, 'command': ' '.join(['python', 'bench_blf.py'] + (argv or sys.argv[1:]))}, fh, indent=1)

    rows = []
    for b in sizes:
        gen = torch.Generator(device=device).manual_seed(b)
        logits = (torch.randn(b, 10, device=device, generator=gen) * 3).to(dtype).requires_grad_()
        labels = torch.randint(0, 10, (b,), device=device, generator=gen)
        row = {'batch': b}
        for name, backend in backends.items():
            row[f'{name}_ms'], row[f'{name}_p20'], row[f'{name}_p80'] = time_ms(blf_work(backend, logits, labels), device, args.reps)
        row['speedup'] = row['torch_ms'] / row['triton_ms']
        row['step_ms'] = step_ms(b, device, dtype, args.reps)
        row['overhead_pct'] = 100 * row['triton_ms'] / row['step_ms']
        rows.append(row)

    header = f'{"batch":>6}  {"triton ms [p20, p80]":>26}  {"torch ms [p20, p80]":>26}  {"speedup":>7}  {"step ms":>8}  {"overhead":>8}'
    lines = [f'# {env["device"]} | torch {env["torch"]} | triton {env["triton"]} | {dtype}', header]
    for r in rows:
        lines.append(f'{r["batch"]:6d}  {r["triton_ms"]:8.4f} [{r["triton_p20"]:7.4f}, {r["triton_p80"]:7.4f}]  '
                     f'{r["torch_ms"]:8.4f} [{r["torch_p20"]:7.4f}, {r["torch_p80"]:7.4f}]  {r["speedup"]:6.2f}x  '
                     f'{r["step_ms"]:8.3f}  {r["overhead_pct"]:7.2f}%')
    if device.type == 'cpu':
        lines.append('# CPU: Triton ran in its interpreter; these times are a smoke test, not a measurement')
    print('\n'.join(lines))
    with open(os.path.join(out, 'bench.csv'), 'w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, 'bench.md'), 'w') as fh:
        fh.write('```\n' + '\n'.join(lines) + '\n```\n')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
