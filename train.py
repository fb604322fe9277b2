"""CIFAR-10 speedrun: Myrtle's ResNet-9, data on the GPU, fp16 channels_last with fp32 BatchNorm.

    python train.py                          # default recipe, one run
    python train.py --runs 5                 # seeds 0..4: mean/std accuracy, median time
    python train.py --epochs 30 --blf 0.9    # train each step on the samples making 90% of the loss
    python train.py --device cpu --n-train 4000 --n-test 1000 --epochs 4 --width 0.25 --batch-size 256   # small CPU check

Time (CUDA events) covers every training step (augmentation, forward, loss, backward, optimizer)
and the final evaluation. It excludes reading the data into device memory, building the model,
warm-up (an untimed run of the same code) and the per-epoch test evaluations of the table.
Every invocation writes a new record folder under --out-dir (default runs/).

This file is the training loop, top to bottom: a step, an epoch, evaluation, warm-up, a run, and
the runs of one invocation. The rest lives beside it: cli.py (flags and checks), networks.py,
optimizers.py (optimizer step, loss scale, EMA, Muon, lookahead), schedules.py, blf_step.py
(BatchLossFilter's step), data_gpu.py (data and augmentation), record.py (the run record).
"""
import itertools
import math
import os
import shlex
import signal
import sys
import time

import torch
import torch.nn.functional as F

import data_gpu
import distributed
import optimizers
import recipes
from blf_step import BLF, BLF_TOTALS, blf_backend, blf_train_step
from cli import UserError, hyp_of, parse_args, check_args, schedule_notes, use_device
from networks import PRECISIONS, autocast, make_model, net_options, resolve_precision, whitening_bias
from optimizers import EMA, apply_setting, averaged_tensors, backward_and_step, loss_scale, make_optimizer, make_scaler
from record import (Follower, RankFailed, Record, code_hashes, environment, finish_record, format_row, gather_runs,
                    loaded_code, save_source_state, table_header)
from schedules import step_settings

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

def mixed_cross_entropy(logits, y, mix, smoothing, reduction='mean'):
    """lam * CE(logits, y) + (1 - lam) * CE(logits, partner): cross-entropy against the mixed target."""
    loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing, reduction=reduction)
    if mix is None:
        return loss
    partner, lam = mix
    return lam * loss + (1 - lam) * F.cross_entropy(logits.float(), partner, label_smoothing=smoothing, reduction=reduction)


def train_step(model, opt, x, y, hyp, totals, scaler=None, mix=None):
    with autocast(hyp, x.device):
        logits = model(x)
    loss = mixed_cross_entropy(logits, y, mix, hyp['label_smoothing'])
    backward_and_step(model, opt, loss, hyp, scaler)
    totals['loss'] += loss.detach() * len(y)
    totals['correct'] += (logits.argmax(1) == y).sum()
    totals['count'] += len(y)


def epoch_totals(device, blf_on):
    """An epoch's running sums: device tensors (read once, at its end) and, for BLF, host counters."""
    totals = {k: torch.zeros((), device=device) for k in ('loss', 'correct', 'count')}
    if blf_on:
        totals.update({k: torch.zeros((), device=device) for k in BLF_TOTALS})
        totals.update(steps=0, rows_trained=0, count_lag=0, count_lag_max=0)
    return totals


def train_epoch(model, opt, batches, settings, hyp, blf=None, ema=None, scaler=None, mixer=None, lookahead=None):
    """One pass over `batches`; per step, `settings` gives lr, momentum, weight decay and BLF's p
    (host floats, so nothing syncs); BLF steps when `blf` is given. Returns device tensors."""
    totals = epoch_totals(next(model.parameters()).device, blf is not None)
    for (x, y), setting in zip(batches, settings):
        apply_setting(opt, setting, hyp)
        x, mix = mixer(x, y) if mixer is not None else (x, None)
        if blf is None:
            train_step(model, opt, x, y, hyp, totals, scaler, mix)
        else:
            blf.p = setting['blf']
            blf_train_step(model, opt, x, y, hyp, totals, blf, scaler, mix)
        if ema is not None:
            ema.update()
        if lookahead is not None:
            lookahead.step()
    return totals


def tta_views(x, level):
    """The views whose logits are averaged: level 0 the image; 1 and its mirror; 2 each of those
    also shifted one pixel up-left and down-right (reflect padding), six views in all; 3 the same
    six views as airbench weighs them (tta_weights)."""
    views = [x] if level == 0 else [x, x.flip(3)]
    if level >= 2:
        padded = F.pad(x, (1, 1, 1, 1), mode='reflect')
        for shifted in (padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]):
            shifted = shifted.contiguous(memory_format=torch.channels_last)
            views += [shifted, shifted.flip(3)]
    return views


def tta_weights(level):
    """Each view's weight: equal, except at level 3 (airbench94): 1/2 for the unshifted pair and
    1/4 for each shifted pair, split evenly within a pair."""
    if level == 3:
        return [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    n = {0: 1, 1: 2, 2: 6}[level]
    return [1 / n] * n


@torch.no_grad()
def evaluate(model, batches, tta=0, amp=False):
    """Test loss sum, correct count and count as device tensors, logits averaged over tta_views."""
    model.eval()
    device = next(model.parameters()).device
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    count = 0
    for x, y in batches:
        views, weights = tta_views(x, tta), tta_weights(tta)
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
            logits = sum(w * model(v).float() for w, v in zip(weights, views))
        loss += F.cross_entropy(logits, y, reduction='sum')
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    model.train()
    return {'loss': loss, 'correct': correct, 'count': count}


# ----------------------------------------------------------------------------------------------
# A run

def warm_up(hyp, data, device, dtype, backend=None, steps=3):
    """An untimed run of the run's own code, as airbench warms up: cuDNN autotuning, Triton
    compilation, lazy initialisation, the first launches of the augmentation's ops (randperm,
    gathers, where, masked_fill) and the allocator's segments for an augmented epoch (about 1.5 GB
    in fp16) all happen here, not in epoch 1 of a timed run. It trains a few steps on real augmented
    batches from data.train_batches, in two epochs (the second reuses the first's memory, as the
    run's epochs do), then every compact kept-batch size (one on a CPU without --compile, where no
    shape compiles anything) and the evaluation shapes; with a whitening
    bias that freezes part way (airbench94), the steps and shapes once more with it frozen (under
    --compile that is another set of graphs). The model and optimiser are thrown away; train_run
    reseeds the data, so the runs' streams do not depend on it."""
    parts = run_parts(hyp, device, dtype, 12345, backend, steps=4 * steps)
    model, opt, blf = parts['model'], parts['opt'], parts['blf']
    extras = {k: parts[k] for k in ('ema', 'scaler', 'mixer', 'lookahead')}
    bs = hyp['batch_size']
    settings = step_settings(hyp, 1)[:1] * steps
    init_weights_from_data(parts, data)
    data.reseed(12345)
    for frozen in whitening_bias_states(model, hyp):
        if frozen is not None:
            model.whiten.bias.requires_grad_(not frozen)
        for _ in range(2):
            batches = list(itertools.islice(data.train_batches(bs), steps))
            train_epoch(model, opt, batches, settings, hyp, **extras)
        x, y = batches[-1]
        if blf is not None:
            for size in warm_up_sizes(hyp, blf.n_bottom, device):
                blf.fixed_size = size
                train_epoch(model, opt, [(x, y)], settings[:1], hyp, blf, **extras)
            blf.fixed_size = None
        n_test, ebs = len(data.test_y), hyp['eval_batch_size']
        for n in {min(ebs, n_test), n_test % ebs or ebs}:  # the full and the last partial evaluation batch
            evaluate(model, [(data.test_x[:n], data.test_y[:n])], tta=hyp['tta'], amp=hyp['precision'] == 'amp')
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def compact_sizes(hyp, n_bottom):
    """The kept-batch sizes a run can meet: the batch in mask mode; in compact mode each multiple of
    --blf-bucket above the --blf-bottom rows, and the whole batch."""
    bs, bucket = hyp['batch_size'], hyp['blf_bucket']
    if hyp['blf_mode'] == 'mask':
        return [bs]
    return sorted({min(bs, k) for k in range(bucket, bs + bucket, bucket) if k > n_bottom})


def warm_up_sizes(hyp, n_bottom, device):
    """The kept-batch sizes warm-up trains a step at: on a GPU or under --compile every size the run
    can meet (Triton, cuDNN and torch.compile each build per shape); on a CPU without --compile the
    largest only, since nothing there builds per shape and under Triton's interpreter each size
    costs seconds (32 sizes took a minute)."""
    sizes = compact_sizes(hyp, n_bottom)
    if torch.device(device).type == 'cuda' or hyp['compile']:
        return sizes
    return sizes[-1:]


def whitening_bias_states(model, hyp):
    """The states a run's whitening bias goes through: [False, True] (trains, then frozen after
    --whiten-bias-epochs), [True] or [False]; [None] for a network without one."""
    if whitening_bias(model) is None:
        return [None]
    return sorted({epoch >= hyp['whiten_bias_epochs'] for epoch in range(math.ceil(hyp['epochs']))})


class Plateau:
    """Counts the epochs since the test loss last improved: a note after `note` of them, a stop
    after `stop` of them (0 = never for either)."""

    def __init__(self, note, stop):
        self.note, self.stop = note, stop
        self.best, self.best_epoch, self.since = math.inf, 0, 0

    def update(self, epoch, loss):
        """Returns (a line to print or None, whether to stop)."""
        if loss < self.best:
            self.best, self.best_epoch, self.since = loss, epoch, 0
            return None, False
        self.since += 1
        line = None
        if self.note and self.since % self.note == 0:
            line = f'# test loss has not improved for {self.since} epochs (best {self.best:.4f} at epoch {self.best_epoch})'
        return line, bool(self.stop) and self.since >= self.stop


def epoch_row(seed, epoch, lr, totals, test, seconds, total):
    count = totals['count'].item()
    row = {'seed': seed, 'epoch': epoch, 'lr': lr,
           'train_loss': totals['loss'].item() / count, 'train_acc': totals['correct'].item() / count,
           'test_loss': test['loss'].item() / test['count'], 'test_acc': test['correct'].item() / test['count'],
           'epoch_s': seconds, 'total_s': total}
    if 'steps' in totals:  # a BLF epoch: what was kept, and what the compact passes cost
        steps = totals['steps']
        row.update(kept=totals['kept'].item() / count, kept_loss_frac=totals['kept_loss_frac'].item() / steps,
                   full_loss=row['train_loss'], kept_loss=totals['kept_loss'].item() / steps,
                   steps=steps, truncated_steps=int(totals['truncated'].item()), rows_trained=totals['rows_trained'] / count)
        if totals['count_lag_max']:  # compact mode: how many steps old the count that sized each pass was
            row.update(count_lag=totals['count_lag'] / steps, count_lag_max=totals['count_lag_max'])
    return row


def run_parts(hyp, device, dtype, seed, backend=None, steps=1):
    """What one run trains with: model, optimizer, and the optional BLF state, EMA, lookahead
    (over `steps` steps), loss scaler and Mixup/CutMix mixer (None when off). --compile compiles the
    model last, so EMA's copy (evaluation only) stays eager."""
    model = make_model(hyp['width'], device, dtype, net=hyp['net'], **net_options(hyp))
    scaler = make_scaler(hyp, device)
    parts = {'model': model, 'opt': make_optimizer(model, hyp, fused=scaler is not None), 'scaler': scaler,
             'blf': BLF(hyp, backend, device, hyp['batch_size'], seed) if hyp['blf'] is not None else None,
             'ema': EMA(model, hyp['ema'], hyp['ema_every']) if hyp['ema'] else None,
             'lookahead': optimizers.Lookahead(averaged_tensors(model), steps) if hyp['lookahead'] else None,
             'mixer': data_gpu.Mixer(hyp, device, seed) if hyp['mixup'] or hyp['cutmix'] else None}
    if hyp['compile']:
        compile_model(model)
    return parts


def compile_model(model):
    """torch.compile the network's forward in place, static shapes. Every instance of a network
    class shares the compiled graphs, so warm_up's throw-away model compiles each graph the run
    meets (the batch, each compact BLF size, with and without grad, train and eval modes, the
    evaluation batches) and the timed run reuses them; compiled_graphs() lets the run check that
    nothing compiled inside the clock. The BLF kernels run between the compiled forward and its
    backward, eager, as they run without --compile."""
    for name in ('recompile_limit', 'cache_size_limit'):  # one graph per shape: more than the default 8
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
    model.compile(dynamic=False)


def compiled_graphs():
    """How many graphs torch.compile has built in this process so far."""
    from torch._dynamo.utils import counters
    return counters['stats']['unique_graphs']


def init_weights_from_data(parts, data):
    """A whitening first layer (airbench94's 2x2, or resnet9's --whiten 3) is set from the patches of
    the first 5000 training images, inside the clock (as airbench times it); EMA and lookahead then
    restart from those weights, not from the ones they copied at construction. Other networks need
    nothing."""
    if getattr(parts['model'], 'whiten', None) is not None:
        parts['model'].init_whitening(data.first_images(5000))
        for average in (parts['ema'], parts['lookahead']):
            if average is not None:
                average.restart()


def rank_hyp(hyp, group):
    """The settings this rank's steps see: in a data-parallel run its slice of each global batch,
    with lr, weight decay and the loss scale unchanged (they are the global batch's)."""
    if not group.data_parallel:
        return hyp
    return {**hyp, 'batch_size': hyp['batch_size'] // group.world, 'loss_scale': loss_scale(hyp)}


def train_run(hyp, data, seed, device, dtype, on_epoch, backend=None, log=print, group=None):
    """One full training run from `seed`; on_epoch(row) gets each epoch's row. Returns the result.
    In a data-parallel run (group.data_parallel) this rank trains on its slice of each global batch
    through DistributedDataParallel, and the clock's events sit between barriers."""
    group = group or distributed.Group()
    torch.manual_seed(seed)
    data.reseed(seed)  # the same augmented epochs on every rank of a data-parallel run
    global_batch = hyp['batch_size']
    hyp = rank_hyp(hyp, group)
    steps_per_epoch = data.n_train // global_batch
    settings = step_settings(hyp, steps_per_epoch)
    parts = run_parts(hyp, device, dtype, seed, backend, steps=len(settings))
    inner, opt, blf, ema, scaler, mixer, lookahead = (
        parts[k] for k in ('model', 'opt', 'blf', 'ema', 'scaler', 'mixer', 'lookahead'))
    model = group.wrap(inner, device)
    plateau = Plateau(hyp['plateau'], hyp['early_stop'])
    clock = Stopwatch(device)
    start = clock.mark()
    init_weights_from_data(parts, data)
    total, stopped_at = clock.seconds(start, clock.mark()), None
    for epoch in range(math.ceil(len(settings) / steps_per_epoch)):
        group.barrier()
        start = clock.mark()
        if whitening_bias(inner) is not None and epoch >= hyp['whiten_bias_epochs']:
            inner.whiten.bias.requires_grad_(False)  # airbench: the whitening bias trains for the first epochs only
        epoch_settings = settings[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]
        filtering = blf if blf is not None and epoch + 1 >= hyp['blf_start_epoch'] else None
        batches = (group.local_batch(x, y) for x, y in data.train_batches(global_batch))
        totals = train_epoch(model, opt, batches, epoch_settings, hyp, filtering, ema, scaler, mixer, lookahead)
        group.barrier()
        end = clock.mark()
        amp = hyp['precision'] == 'amp'
        test = evaluate(ema.model() if ema else inner, data.test_batches(hyp['eval_batch_size']), amp=amp)  # not timed
        seconds = clock.seconds(start, end)  # the one sync of the epoch
        total += seconds
        row = epoch_row(seed, epoch + 1, epoch_settings[-1]['lr'], totals, test, seconds, total)
        on_epoch(row)
        if not math.isfinite(row['train_loss']):
            blf_note = ' (BLF keeps non-finite rows, never hides them)' if blf is not None else ''
            raise UserError(f'training diverged at epoch {epoch + 1}: the loss is {row["train_loss"]}{blf_note}; '
                            f'try a lower --lr')
        line, stop = plateau.update(epoch + 1, row['test_loss'])
        if line:
            log(line)
        if stop and epoch + 1 < math.ceil(hyp['epochs']):
            stopped_at = epoch + 1
            log(f'# early stop after epoch {stopped_at} (--early-stop {hyp["early_stop"]})')
            break
    start = clock.mark()
    if lookahead is not None:
        lookahead.finish()
    final = evaluate(ema.model() if ema else inner, data.test_batches(hyp['eval_batch_size']), tta=hyp['tta'], amp=amp)
    end = clock.mark()
    eval_s = clock.seconds(start, end)
    return {'seed': seed, 'test_acc': final['correct'].item() / final['count'],
            'test_loss': final['loss'].item() / final['count'], 'tta': hyp['tta'],
            'train_s': total, 'eval_s': eval_s, 'time_s': total + eval_s, 'stopped_at_epoch': stopped_at}


# ----------------------------------------------------------------------------------------------
# An invocation: the runs, their record, and how it ends

class Interrupted(Exception):
    """Ctrl-C; the message says what the record kept."""


def stop_on_signal(signum, frame):
    """Ctrl-C and SIGTERM (`timeout`, a job's time limit, kill) end an invocation alike: the record
    keeps the finished runs and says it was interrupted. Signals that follow are ignored, so that
    a second one cannot cut the record's closing short."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        check_args(args)
        run(args, argv)
    except (UserError, data_gpu.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f'interrupted: {e}', file=sys.stderr)
        return 130
    except RankFailed:
        return 2
    except KeyboardInterrupt:
        print('interrupted before the first run started; nothing was recorded', file=sys.stderr)
        return 130
    return 0


def run(args, argv):
    """One process, or one rank of a torchrun job (see distributed.py)."""
    group, device_text = distributed.join(args.device, args.data_parallel)
    try:
        run_in_group(args, argv, group, device_text)
    except BaseException:
        group.close()
        raise
    group.close(wait_for_peers=True)


def run_in_group(args, argv, group, device_text):
    h = hyp_of(args)
    device = use_device(device_text)
    h['precision'] = resolve_precision(h['precision'], device)
    h['loss_scale'] = loss_scale(h)  # the record shows the value used, not 0
    dtype, data_dtype = PRECISIONS[h['precision']]
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    backend = blf_backend(h['blf_impl'], device) if h['blf'] is not None else None

    if not group.leader:
        group.barrier()  # rank 0 downloads and writes the cache first; the others then read it
    data_cpu = data_gpu.load_cifar10(args.data_dir, download=not args.no_download,
                                     log=print if group.leader else (lambda line: None))
    if group.leader:
        group.barrier()
    data = data_gpu.DeviceCIFAR10(data_cpu, device, data_dtype, n_train=args.n_train, n_test=args.n_test,
                                  flip=h['flip'], crop_pad=h['crop_pad'], cutout=h['cutout'],
                                  cutout_count=h['cutout_count'])
    record = Record(args.out_dir) if group.leader else Follower()
    record.write_json('config.json', {'recipe': args.recipe, 'hyp': h, 'seed': args.seed, 'runs': args.runs, 'device': str(device),
                                      'dtype': str(dtype), 'n_train': data.n_train, 'n_test': len(data.test_y),
                                      'data_dir': os.path.abspath(args.data_dir), 'world_size': group.world,
                                      'data_parallel': group.data_parallel})
    env = environment(device)
    if group.leader:
        with open(os.path.join(record.path, 'command.txt'), 'w') as fh:
            fh.write(shlex.join(['python', 'train.py'] + argv) + '\n')
        env['source'] = save_source_state(record.path)  # clean (the commit says it all), diff or copied
        env['code'] = code_hashes(loaded_code())  # per file: reproduce.py pools only runs of the same code
        record.write_json('env.json', env)

    results, epochs, error = [], [], None
    try:
        train_runs(args, argv, h, data, device, dtype, backend, record, env, results, epochs, group)
    except KeyboardInterrupt:
        finish_record(record, results, 'interrupted', args.runs)
        raise Interrupted(f'{len(results)} of {args.runs} run(s) finished; the record {record.path} keeps '
                          f'them (and the epochs of the cut run) and says it was interrupted') from None
    except Exception as e:
        if group.active and not group.data_parallel:  # seeds over ranks: tell rank 0, which says it
            error = str(e) if isinstance(e, (UserError, data_gpu.DataError)) else f'{type(e).__name__}: {e}'
        else:
            if isinstance(e, UserError):
                finish_record(record, results, 'diverged', args.runs)
            if group.active:  # data-parallel: torchrun stops the other ranks
                raise UserError(f'rank {group.rank} ({device}): {e}') from None
            raise
    if group.active and not group.data_parallel:
        results = gather_runs(group, record, env, device, results, epochs, error, args.runs)
    finish_record(record, results, 'complete', args.runs)
    record.log(f'record: {record.path}')


def train_runs(args, argv, h, data, device, dtype, backend, record, env, results, epochs, group):
    """Warm-up, then this rank's runs; each finished run goes to `results` (and, in one process or
    a data-parallel run, to runs.jsonl at once), each epoch's row to `epochs` and epochs.jsonl."""
    log = record.log
    log(f'# {shlex.join(["python", "train.py"] + argv)}')
    log(f'# {env["device"]} | torch {env["torch"]} | {h["precision"]} | {data.n_train} train / {len(data.test_y)} test images '
        f'| record: {record.path}')
    if group.active:
        log(f'# torchrun: {group.world} ranks, ' + ('one data-parallel run over all of them' if group.data_parallel
                                                   else 'seeds spread over them; this table is rank 0\'s'))
    log(f'# recipe {args.recipe} (flags given override it): {recipes.NOTES[args.recipe]}')
    log('# time = training steps (augmentation included) + final evaluation; per-epoch test evals excluded')
    for note in schedule_notes(h):
        log(note)
    steps_hyp = rank_hyp(h, group)  # warm up on the shapes the steps will see: this rank's slice, not the global batch
    if group.data_parallel:
        log(f'# warm-up at this rank\'s batch of {steps_hyp["batch_size"]}')
    warm_up(steps_hyp, data, device, dtype, backend)
    blf_on = h['blf'] is not None
    if blf_on:
        log(f'# BLF p={h["blf"]} q={h["blf_min_samples"]} from epoch {h["blf_start_epoch"]}, {h["blf_mode"]} mode, '
            f'{h["blf_impl"]} kernels' + (', RANDOM-SUBSET CONTROL' if h['subset_control'] == 'random' else ''))

    def on_epoch(row):
        epochs.append(row)
        record.append_jsonl('epochs.jsonl', row)
        log(format_row(row, blf_on))

    seeds = group.my_seeds(args.seed + i for i in range(args.runs))
    for i, seed in enumerate(seeds):
        log(f'\nrun {i + 1}/{len(seeds)}, seed {seed}')
        log(table_header(blf_on))
        graphs = compiled_graphs() if h['compile'] else 0
        result = train_run(h, data, seed, device, dtype, on_epoch, backend, log,
                           group if group.data_parallel else None)  # seeds over ranks: independent runs
        result.update(rank=group.rank, device=str(device))
        if h['compile']:  # warm-up should have compiled every graph; one compiled in the clock is slow and said
            result['graphs_compiled_in_clock'] = compiled_graphs() - graphs
            if result['graphs_compiled_in_clock']:
                log(f'# note: {result["graphs_compiled_in_clock"]} graph(s) compiled inside the clock of seed {seed}')
        if not group.active or group.data_parallel:
            record.append_jsonl('runs.jsonl', result)
        results.append(result)
        tta = {0: '', 1: ' (flip TTA)', 2: ' (flip + translate TTA)', 3: ' (weighted 6-view TTA)'}[h['tta']] + (' (EMA weights)' if h['ema'] else '')
        log(f'seed {seed}: test accuracy {result["test_acc"]:.4f}{tta}, time {result["time_s"]:.3f} s '
            f'(train {result["train_s"]:.3f} s + final eval {result["eval_s"]:.3f} s)')


if __name__ == '__main__':
    for sig in (signal.SIGINT, signal.SIGTERM):  # as a script only: in-process callers keep their own handlers
        signal.signal(sig, stop_on_signal)
    distributed.end_process(main())
