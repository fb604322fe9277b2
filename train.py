"""CIFAR-10 speedrun: Myrtle's ResNet-9, data on the GPU, fp16 channels_last with fp32 BatchNorm.

    python train.py                          # default recipe, one run
    python train.py --runs 5                 # seeds 0..4: mean/std accuracy, median time
    python train.py --epochs 30 --blf 0.9    # train each step on the samples making 90% of the loss
    python train.py --device cpu --n-train 4000 --n-test 1000 --epochs 4 --width 0.25 --batch-size 256   # small CPU check

Time (CUDA events) covers every training step (augmentation, forward, loss, backward, optimizer)
and the final evaluation. It excludes reading the data into device memory, building the model,
warm-up (cudnn autotuning on throw-away data) and the per-epoch test evaluations of the table.
Every invocation writes a new record folder under --out-dir (default runs/).
"""
import argparse
import contextlib
import copy
import glob
import itertools
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import data_gpu
import distributed
import optimizers
import recipes
import stats
from networks import make_model

HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------------------------
# Hyperparameters (every one is a flag of the same name with - for _)

hyp = {
    'net': 'resnet9',          # resnet9 (Myrtle) or airbench94 (networks.py)
    'epochs': 24,              # passes over the training set (Myrtle's ResNet-9 recipe: 24); may be fractional
    'batch_size': 512,         # images per optimizer step
    'lr': 0.4,                 # peak learning rate for the batch-mean loss (= Myrtle's 0.4/512 per image on the summed loss)
    'loss_scale': 0.0,         # backward runs on loss * this, the optimizer gets lr / it and wd * it (0 = auto: the batch size)
    'lr_peak': 5 / 24,         # fraction of training where the lr peaks: lr_start*lr -> lr linearly, then -> lr_end*lr
    'lr_start': 0.0,           # the lr at the first step, as a fraction of --lr (airbench94: 0.2)
    'lr_end': 0.0,             # the lr at the last step, as a fraction of --lr (airbench94: 0.07)
    'lr_schedule': None,       # knots 'epoch:lr,...' (piecewise linear), overriding lr and lr_peak
    'momentum_schedule': None, # knots 'epoch:momentum,...'; None = constant momentum
    'wd_schedule': None,       # knots 'epoch:weight_decay,...'; None = constant weight_decay
    'momentum': 0.9,           # Nesterov momentum (Adam: beta1)
    'weight_decay': 5e-4,      # on all parameters, for the batch-mean loss (= Myrtle's 5e-4*512 on the summed loss)
    'wd_mode': 'l2',           # l2: added to the gradient (Myrtle); decoupled: w -= lr*wd*w apart from it (SGDW/AdamW)
    'optimizer': 'sgd',        # sgd (Nesterov) or adam
    'bn_weight_decay': 1,      # weight-decay multiplier for BatchNorm parameters and biases (0: none)
    'bn_lr_scale': 1.0,        # learning-rate multiplier for BatchNorm parameters (and biases)
    'clip_norm': 0.0,          # clip the global gradient norm to this (0 = off)
    'agc': 0.0,                # adaptive gradient clipping: per layer, ||g|| <= agc * ||w|| (0 = off)
    'precision': 'auto',       # fp16 (weights fp16, BN fp32), amp (fp32 weights, fp16 autocast, loss scaling), bf16, fp32
    'label_smoothing': 0.0,    # cross-entropy label smoothing
    'width': 1.0,              # channel multiplier: 1.0 = 64/128/256/512 channels
    'crop_pad': 4,             # pixels of reflect padding for random crops (0 = no crop)
    'flip': 1,                 # left-right flips: 1 = random each epoch, 2 = alternating (airbench), 0 = off
    'cutout': 8,               # Cutout box side in pixels (0 = off)
    'cutout_count': 1,         # Cutout boxes per image
    'dropout': 0.0,            # dropout rate before the classifier
    'mixup': 0.0,              # Mixup: lambda ~ Beta(a, a) per batch (0 = off)
    'cutmix': 0.0,             # CutMix: lambda ~ Beta(a, a) per batch, a box of area (1 - lambda) pasted (0 = off)
    'tta': 1,                  # final evaluation: 0 = plain, 1 = + mirror image, 2 = + 1-pixel translations of both, 3 = 2 weighted
    'whiten_bias_epochs': 0.0, # airbench94 net: the whitening layer's bias trains for this many epochs, then freezes
    'lookahead': 0,            # 1: airbench's lookahead (every 5 steps, decay 0.95^5 (t/T)^3), weights handed over at the end
    'ema': 0.0,                # decay per step of an exponential moving average of the weights (0 = off); evaluate with it
    'plateau': 3,              # print a line when the test loss has not improved for this many epochs (0 = never)
    'early_stop': 0,           # stop when the test loss has not improved for this many epochs (0 = never)
    'eval_batch_size': 1000,   # images per evaluation forward
    # BatchLossFilter: train each step on the highest-loss samples that make up a share of the loss
    'blf': None,               # min_loss_perc p in (0, 1]; None = off
    'blf_min_samples': 0.0,    # min_samples_perc q: keep at least ceil(q * batch) samples
    'blf_start_epoch': 2,      # first epoch (1-based) with BLF; before it, plain steps (the original skips one)
    'blf_mode': 'compact',     # compact: no-grad pass, then fwd+bwd on the kept rows only; mask: one pass, masked grad
    'blf_impl': 'triton',      # triton kernels, or the plain-torch reference
    'blf_round_to': 1,         # round the kept count up to a multiple of this (8 suits fp16 tensor cores)
    'blf_bucket': 64,          # compact: the kept batch is the host-known count rounded up to a multiple of this
    'subset_control': 'none',  # random: keep as many samples as BLF would, chosen at random (the honest baseline)
    'blf_schedule': None,      # knots 'epoch:p,...' for BLF's p (a curriculum: 1.0 early, lower later)
    'blf_bottom': 0.0,         # also keep this share of the batch from the lowest losses (forum post #9)
}

HELP = {
    'net': 'network: resnet9 (Myrtle) or airbench94 (2x2 whitening, three conv groups; see networks.py)',
    'epochs': 'passes over the training set (fractional: the last epoch stops part way, as airbench94\'s 9.9)',
    'batch_size': 'images per optimizer step',
    'lr': 'peak learning rate for the batch-mean loss (whatever --loss-scale is: the optimizer gets lr / scale)',
    'loss_scale': 'back-propagate the batch-mean loss times this and hand the optimizer lr / scale and weight decay '
                  'x scale: the same SGD trajectory, but fp16 gradients stay in range; 0 = auto: the batch size '
                  '(Myrtle\'s summed loss) for SGD, 1 under --precision amp (its own scaler) or Adam',
    'lr_peak': 'fraction of training at which the linear warm-up ends and the linear decay starts',
    'lr_start': 'lr at the first step as a fraction of --lr (the warm-up starts there)',
    'lr_end': 'lr at the last step as a fraction of --lr (the decay ends there)',
    'lr_schedule': 'piecewise-linear lr over epochs, e.g. 0:0,5:0.4,24:0 (overrides --lr and --lr-peak)',
    'momentum_schedule': 'piecewise-linear momentum over epochs, e.g. 0:0.85,5:0.95,24:0.9',
    'wd_schedule': 'piecewise-linear weight decay over epochs, e.g. 0:5e-4,20:0',
    'momentum': 'Nesterov momentum (beta1 for Adam)',
    'weight_decay': 'weight decay for the batch-mean loss (the optimizer gets wd x --loss-scale)',
    'wd_mode': 'l2 (added to the gradient) or decoupled (w -= lr * wd * w: SGDW, AdamW)',
    'optimizer': 'sgd (Nesterov momentum) or adam (needs fp32 weights: --precision amp or fp32)',
    'bn_weight_decay': 'weight-decay multiplier for BatchNorm parameters and biases (1: as the weights; 0: none)',
    'bn_lr_scale': 'learning-rate multiplier for BatchNorm parameters and biases',
    'clip_norm': 'clip the global gradient norm to this value (0 = off)',
    'agc': 'adaptive gradient clipping: scale each layer\'s gradient so ||g|| <= agc * ||w|| (0 = off)',
    'precision': 'auto (fp16 on a GPU, fp32 on the CPU), fp16, amp (fp32 weights, fp16 autocast, loss scaling), bf16, fp32',
    'label_smoothing': 'label smoothing of the cross-entropy, in [0, 1)',
    'width': 'channel multiplier of the network (1.0 = 64/128/256/512); below 1 for quick CPU runs',
    'crop_pad': 'reflect padding before random 32x32 crops, in pixels (0 = no crop)',
    'flip': 'horizontal flips: 1 = random each epoch, 2 = alternating (random in the first epoch, then each image '
            'mirrored on every other epoch), 0 = off',
    'cutout': 'side of the Cutout square in pixels, clipped at the borders (0 = off)',
    'cutout_count': 'Cutout squares per image',
    'dropout': 'dropout rate before the final linear layer',
    'mixup': 'Mixup with lambda ~ Beta(a, a) drawn per batch (0 = off)',
    'cutmix': 'CutMix with lambda ~ Beta(a, a) drawn per batch (0 = off; not together with --mixup)',
    'tta': 'test-time augmentation of the final evaluation: 0 = none, 1 = flip, 2 = flip and 1-pixel translations, '
           '3 = those six views weighted as airbench94 (1/2 for the plain pair, 1/4 for each shifted pair)',
    'whiten_bias_epochs': 'airbench94 net: train the whitening layer\'s bias for this many epochs, then freeze it',
    'lookahead': '1: lookahead (every 5 steps the slow weights move to the fast ones with decay 0.95^5 (t/T)^3)',
    'ema': 'decay per step of an exponential moving average of the weights, evaluated instead of them (0 = off)',
    'plateau': 'print a line when the test loss has not improved for this many epochs (0 = never)',
    'early_stop': 'stop when the test loss has not improved for this many epochs (0 = never; it watches the '
                  'test set, so use it to explore, not for records)',
    'eval_batch_size': 'images per evaluation forward pass',
    'blf': 'BatchLossFilter: keep the highest-loss samples making up this share of the batch loss, in (0, 1]',
    'blf_min_samples': 'BLF: keep at least this share of the batch, in [0, 1]',
    'blf_start_epoch': 'BLF: first epoch (1-based) that filters; earlier epochs train on every sample',
    'blf_mode': 'BLF: compact (saves time: no-grad pass, then fwd+bwd on kept rows) or mask (one pass, exact)',
    'blf_impl': 'BLF: triton (fused kernels) or torch (plain reference)',
    'blf_round_to': 'BLF: round the kept count up to a multiple of this',
    'blf_bucket': 'BLF compact: size granularity of the kept batch (fewer shapes, headroom for a growing count)',
    'subset_control': 'none, or random: train on a random subset as large as BLF would keep (needs --blf)',
    'blf_schedule': "piecewise-linear BLF p over epochs, e.g. 0:1.0,10:0.9 (needs --blf)",
    'blf_bottom': 'BLF: also keep this share of the batch with the lowest losses (top-N and bottom-N)',
}


class UserError(Exception):
    """A mistake in the command line or the environment; main() prints it as one line."""


# ----------------------------------------------------------------------------------------------
# Optimiser and schedule

def param_groups(model, hyp):
    """Weights of convolutions and linear layers; BatchNorm parameters and biases, with their own
    lr multiplier and weight decay switch (the 'no wd on bias and BN' and 'BN lr x64' tricks)."""
    weights, norms = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (norms if isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias" else weights).append(p)
    return [{'params': weights, 'lr_scale': 1.0, 'wd_scale': 1.0},
            {'params': norms, 'lr_scale': hyp['bn_lr_scale'], 'wd_scale': float(hyp['bn_weight_decay'])}]


def loss_scale(hyp):
    """The constant the batch-mean loss is multiplied by before backward (see backward_and_step).

    fp16 weights without a loss scaler (--precision fp16) need it: at batch 512 the gradient of a
    batch-mean loss puts most activation gradients below fp16's normal range (6e-5), and a large
    share rounds to zero. Myrtle and airbench back-propagate the summed loss (scale = batch size)
    with lr / batch and wd x batch; SGD then follows the same trajectory, which apply_setting
    reproduces by dividing lr and multiplying weight decay by the scale. Adam is invariant to the
    scale and amp has its own dynamic scaler, so both get 1 by default."""
    if hyp['loss_scale']:
        return float(hyp['loss_scale'])
    return 1.0 if hyp['optimizer'] == 'adam' or hyp['precision'] == 'amp' else float(hyp['batch_size'])


def make_optimizer(model, hyp, fused=False):
    """SGD with Nesterov momentum, or Adam; weight decay in the groups (l2) or applied apart
    (decoupled: AdamW, or SGDW by backward_and_step). fused=True for loss scaling without syncs.
    lr, momentum and weight decay are set before every step by apply_setting."""
    momenta = [m for _, m in schedules(hyp)['momentum']]
    decoupled = hyp['wd_mode'] == 'decoupled'
    kwargs = {'fused': True} if fused else {}
    if hyp['optimizer'] == 'adam':
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        return cls(param_groups(model, hyp), lr=0.0, betas=(momenta[0], 0.999), weight_decay=hyp['weight_decay'], **kwargs)
    # torch refuses nesterov=True with momentum 0 at construction, not at a step: a momentum
    # schedule that starts at 0 is built with its largest value and set per step
    return torch.optim.SGD(param_groups(model, hyp), lr=0.0, momentum=max(momenta), nesterov=max(momenta) > 0,
                           weight_decay=0.0 if decoupled else hyp['weight_decay'], **kwargs)


def apply_setting(opt, setting, hyp):
    """Hand one step's scheduled values (host floats) to every parameter group. The gradients are
    loss_scale times those of the batch-mean loss, so SGD gets lr / scale and weight decay x scale
    (the product lr x wd of decoupled decay is unchanged)."""
    sgdw = hyp['wd_mode'] == 'decoupled' and hyp['optimizer'] == 'sgd'
    scale = loss_scale(hyp) if hyp['optimizer'] == 'sgd' else 1.0
    for group in opt.param_groups:
        group['lr'] = setting['lr'] * group['lr_scale'] / scale
        wd = setting['weight_decay'] * group['wd_scale'] * scale
        group['decoupled_wd'], group['weight_decay'] = (wd, 0.0) if sgdw else (0.0, wd)
        if 'betas' in group:
            group['betas'] = (setting['momentum'], group['betas'][1])
        else:
            group['momentum'] = setting['momentum']


def adaptive_clip_(params, ratio, eps=1e-3, grad_scale=1.0):
    """AGC (Brock et al. 2021, as the lecture states it): G <- G * min(1, ratio * max(||W||, eps) / ||G||),
    per tensor, all on the device, in a fixed number of launches whatever the number of tensors
    (two foreach norms, a few ops on the stacked norms, one foreach multiply). The gradients are
    grad_scale times the true ones (loss_scale), so the bound is scaled with them."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    w_norms = torch.stack(torch._foreach_norm([p.detach() for p in params])).float()
    g_norms = torch.stack(torch._foreach_norm(grads)).float()
    factors = (w_norms.clamp_min(eps) * (ratio * grad_scale) / g_norms.clamp_min(1e-12)).clamp_max(1.0)
    torch._foreach_mul_(grads, list(factors.to(grads[0].dtype).unbind()))  # group 0 shares one dtype


def backward_and_step(model, opt, loss, hyp, scaler=None):
    """Backward of loss x loss_scale, then the optional clipping and decoupled decay, then the
    optimizer step. With a GradScaler (--precision amp) the loss is scaled further, gradients
    unscaled in place with an on-device inf check, and the fused optimizer skips the step on
    overflow: no host sync anywhere."""
    scale = loss_scale(hyp)
    opt.zero_grad(set_to_none=True)
    scaled = loss * scale if scale != 1 else loss
    if scaler is None:
        scaled.backward()
    else:
        scaler.scale(scaled).backward()
        if hyp['clip_norm'] or hyp['agc']:
            scaler.unscale_(opt)
    if hyp['clip_norm']:
        torch.nn.utils.clip_grad_norm_(model.parameters(), hyp['clip_norm'] * scale, foreach=True)
    if hyp['agc']:  # conv and linear weights (group 0); BatchNorm parameters are left alone, as in NFNets
        adaptive_clip_(opt.param_groups[0]['params'], hyp['agc'], grad_scale=scale)
    with torch.no_grad():  # SGDW's decay; under amp it also applies on a step the scaler skips (rare, harmless)
        for group in opt.param_groups:
            if group.get('decoupled_wd'):
                torch._foreach_mul_(group['params'], 1 - group['lr'] * group['decoupled_wd'])
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def parse_schedule(text):
    """'0:0,5:0.4,24:0' -> [(0.0, 0.0), (5.0, 0.4), (24.0, 0.0)]: knots (epoch, value), epochs ascending."""
    try:
        knots = [tuple(float(v) for v in knot.split(':')) for knot in text.split(',')]
    except ValueError:
        knots = None
    if not knots or any(len(k) != 2 for k in knots):
        raise argparse.ArgumentTypeError(f"expected knots 'epoch:value,epoch:value,...', got {text!r}")
    if not all(math.isfinite(v) for knot in knots for v in knot):
        raise argparse.ArgumentTypeError(f'a schedule\'s epochs and values must be finite numbers, got {text!r}')
    epochs = [e for e, _ in knots]
    if epochs[0] < 0 or any(b < a for a, b in zip(epochs, epochs[1:])):
        raise argparse.ArgumentTypeError(f'the epochs of a schedule must be >= 0 and ascending, got {text!r}')
    return knots


def piecewise_linear(knots, t):
    """The value at epoch t: linear between knots, the first/last value outside them."""
    if t <= knots[0][0]:
        return knots[0][1]
    for (t0, v0), (t1, v1) in zip(knots, knots[1:]):
        if t <= t1:
            return v1 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return knots[-1][1]


def schedules(hyp):
    """The knots of every scheduled hyperparameter; unscheduled ones are constant."""
    epochs, peak = hyp['epochs'], hyp['lr_peak'] * hyp['epochs']
    return {'lr': hyp['lr_schedule'] or [(0, hyp['lr_start'] * hyp['lr']), (peak, hyp['lr']), (epochs, hyp['lr_end'] * hyp['lr'])],
            'momentum': hyp['momentum_schedule'] or [(0, hyp['momentum'])],
            'weight_decay': hyp['wd_schedule'] or [(0, hyp['weight_decay'])],
            'blf': hyp['blf_schedule'] or [(0, hyp['blf'] or 1.0)]}


def step_settings(hyp, steps_per_epoch):
    """Per step: lr, momentum, weight_decay and BLF's p, each at the step's epoch fraction, so the
    shapes stretch with --epochs (the default lr: 0 -> lr at lr_peak, then -> 0 at the end)."""
    knots = schedules(hyp)
    return [{name: piecewise_linear(k, step / steps_per_epoch) for name, k in knots.items()}
            for step in range(total_steps(hyp, steps_per_epoch))]


def total_steps(hyp, steps_per_epoch):
    """Steps of a run: --epochs may be fractional (airbench94: 9.9), the last epoch then stops early."""
    return round(hyp['epochs'] * steps_per_epoch)


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

PRECISIONS = {  # name: (weights, data on the device)
    'fp16': (torch.float16, torch.float16), 'amp': (torch.float32, torch.float16),
    'bf16': (torch.bfloat16, torch.bfloat16), 'fp32': (torch.float32, torch.float32)}


def resolve_precision(precision, device):
    return ('fp16' if torch.device(device).type == 'cuda' else 'fp32') if precision == 'auto' else precision


def make_scaler(hyp, device):
    """Dynamic loss scaling for --precision amp (used with fused optimizers: no host syncs)."""
    return torch.amp.GradScaler(torch.device(device).type) if hyp['precision'] == 'amp' else None


def autocast(hyp, device):
    """fp16 autocast for --precision amp; otherwise an empty context (cheaper per step than a disabled autocast)."""
    if hyp['precision'] != 'amp':
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.float16)


class Mixer:
    """Mixup or CutMix, batch-wise on the device. lambda (and CutMix's box) is drawn on the host
    from a seeded generator, the partner permutation on the device: nothing crosses back.
    Returns the mixed images and `mix` = (partner labels, lambda) for mixed_cross_entropy."""

    def __init__(self, hyp, device, seed):
        self.kind = 'mixup' if hyp['mixup'] else 'cutmix'
        self.alpha = hyp['mixup'] or hyp['cutmix']
        self.rng = random.Random(seed)
        self.gen = torch.Generator(device=device).manual_seed(seed + 7)

    def __call__(self, x, y):
        lam = self.rng.betavariate(self.alpha, self.alpha)
        perm = torch.randperm(len(y), device=y.device, generator=self.gen)
        partner = x[perm]
        if self.kind == 'mixup':
            mixed = lam * x + (1 - lam) * partner
        else:  # a box of about (1 - lam) of the area, clipped at the borders; lam = what is left
            h, w = x.shape[2:]
            side_h, side_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
            cy, cx = self.rng.randrange(h), self.rng.randrange(w)
            y0, y1 = max(cy - side_h // 2, 0), min(cy - side_h // 2 + side_h, h)
            x0, x1 = max(cx - side_w // 2, 0), min(cx - side_w // 2 + side_w, w)
            mixed = x.clone()
            mixed[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        return mixed.contiguous(memory_format=torch.channels_last), (y[perm], lam)


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


def averaged_tensors(model):
    """What EMA and lookahead average: the parameters and the floating-point buffers (BatchNorm's
    running statistics), so that the averaged network is normalised for its own weights."""
    return list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]


class EMA:
    """Exponential moving average of the weights and BatchNorm statistics, in fp32 whatever the
    model's dtype (fp16 would round away updates of (1 - decay) * difference). update() is one
    foreach lerp after each optimizer step, no sync; model() returns a copy holding the average."""

    def __init__(self, model, decay):
        self.decay = decay
        self.tensors = averaged_tensors(model)
        self.restart()
        self.copy = copy.deepcopy(model)

    @torch.no_grad()
    def restart(self):
        """Start the average from the weights as they are now."""
        self.shadow = [t.detach().float().clone() for t in self.tensors]

    @torch.no_grad()
    def update(self):
        torch._foreach_lerp_(self.shadow, [t.detach().float() for t in self.tensors], 1 - self.decay)

    @torch.no_grad()
    def model(self):
        targets = averaged_tensors(self.copy)
        for target, average in zip(targets, self.shadow):
            target.copy_(average)
        return self.copy


# ----------------------------------------------------------------------------------------------
# BatchLossFilter: keep the samples that make up a share of the batch loss (kernels/ does the work)

BLF_MAX_BATCH = 4096  # = kernels/selection.py's MAX_BATCH: one Triton program sorts the whole batch
BLF_TOTALS = ('kept', 'kept_loss_frac', 'kept_loss', 'truncated')


def blf_backend(impl, device):
    """The module with cross_entropy_forward / select_top_loss / weighted_cross_entropy."""
    if impl == 'torch':
        from kernels import reference
        return reference
    if torch.device(device).type == 'cpu':
        os.environ.setdefault('TRITON_INTERPRET', '1')  # Triton runs on CPU tensors only in its interpreter
        # numpy warns when the interpreter meets NaN/Inf; BLF handles those rows itself (see README)
        warnings.filterwarnings('ignore', category=RuntimeWarning, module='triton.runtime.interpreter')
    try:
        from kernels import triton_impl
    except ImportError as e:
        raise UserError(f'--blf-impl triton needs triton ({e}); pip install triton, or use --blf-impl torch') from None
    return triton_impl


class LaggedCount:
    """The kept count of a recent step, read on the host without waiting for the GPU.

    Each step copies its count (a device scalar) into a slot of a pinned host buffer, asynchronously,
    and records an event; latest() takes the newest slot whose event has completed (event.query()
    does not block). `lag` says how many steps old the value is (1 = the previous step); the run
    record keeps its mean and maximum per epoch. The ring holds 16 slots, more steps than the host
    runs ahead of the GPU (its launch queue fills first), so the newest completed count is never
    overwritten before it is read. On the CPU each copy is done at once: the lag is one step."""

    def __init__(self, device, initial, slots=16):
        self.cuda = torch.device(device).type == 'cuda'
        self.host = torch.zeros(slots, dtype=torch.int32, pin_memory=self.cuda)
        self.events = [None] * slots
        self.new_event = torch.cuda.Event if self.cuda else None  # the tests put pending fake events here
        self.pushed = 0
        self.value, self.value_step = initial, None  # value_step: the push that wrote it (None: initial)

    def push(self, count):
        slot = self.pushed % len(self.events)
        self.host[slot].copy_(count, non_blocking=True)  # into pinned memory: asynchronous on a GPU
        event = 'done'
        if self.new_event is not None:
            event = self.new_event()
            event.record()
        self.events[slot] = event
        self.pushed += 1

    @property
    def lag(self):
        return 0 if self.value_step is None else self.pushed - self.value_step

    def latest(self):
        n = len(self.events)
        for back in range(1, min(n, self.pushed) + 1):
            slot = (self.pushed - back) % n
            step = self.pushed - back
            if self.value_step is not None and step <= self.value_step:
                break  # nothing newer than what we hold has completed
            if self.events[slot] == 'done' or self.events[slot].query():
                self.value, self.value_step = int(self.host[slot]), step
                break
        return self.value


class BLF:
    """Per-run BatchLossFilter state: backend, options, the compact mode's lagged count, and the
    random-subset control's own generator (so the data stream stays identical across configs)."""

    def __init__(self, hyp, backend, device, batch_size, seed):
        from kernels import min_samples
        self.backend, self.hyp, self.batch_size = backend, hyp, batch_size
        self.p = hyp['blf']  # train_epoch sets it each step from the schedule
        self.k_min = min_samples(hyp['blf_min_samples'], batch_size)
        self.n_bottom = min_samples(hyp['blf_bottom'], batch_size)
        self.count = LaggedCount(device, batch_size)
        self.fixed_size = None  # warm-up pins the compact batch size to visit every shape
        self.gen = None
        if hyp['subset_control'] == 'random':
            self.gen = torch.Generator(device=device).manual_seed(seed + 1_000_003)

    def kept_size(self):
        """Rows in the compact pass: the lagged count rounded up to the bucket, at most the batch."""
        if self.fixed_size is not None:
            return self.fixed_size
        bucket = self.hyp['blf_bucket']
        wanted = max(self.count.latest(), self.n_bottom + 1)
        return min(self.batch_size, -(-wanted // bucket) * bucket)

    def select(self, losses, cap, fill=False):
        """The step's Selection, at most `cap` rows kept (bottom rows included); fill=True keeps
        exactly `cap` (the compact pass: its rows are all real kept rows, see blf_train_step)."""
        h = self.hyp
        sel = self.backend.select_top_loss(losses, self.p, self.k_min, h['blf_round_to'], cap - self.n_bottom, fill)
        if self.n_bottom:
            sel = with_bottom(sel, losses, self.n_bottom)
        return sel if self.gen is None else random_subset(sel, losses, self.gen)

    def rows(self, sel, size):
        """The `size` rows the compact pass trains on: the first of the loss order, and with
        --blf-bottom its last n_bottom (the random control's order is already random)."""
        if not self.n_bottom or self.gen is not None:
            return sel.order[:size]
        n = sel.order.numel()
        return torch.cat([sel.order[:size - self.n_bottom], sel.order[n - self.n_bottom:]])


def kept_loss_stats(losses, kept):
    """[kept-loss fraction of the finite non-negative losses, full mean, kept mean], summed in fp64
    so that finite losses whose sum overflows fp32 still give a fraction (NaN/Inf show in the means)."""
    raw = losses.double()
    clean = torch.where(torch.isfinite(raw), raw.clamp_min(0), 0.0)
    total = clean.sum()
    fraction = torch.where(total > 0, (clean * kept).sum() / total.clamp_min(1e-300), 1.0)
    return torch.stack([fraction, raw.mean(), (torch.where(kept, raw, 0.0)).sum() / kept.sum().clamp_min(1)]).float()


def with_bottom(sel, losses, n_bottom):
    """Forum post #9's variant: besides the top rows, keep the n_bottom lowest-loss rows; every kept
    row weighs 1/count. counts become [the rule's top k plus the bottom rows, at most B; rows kept]:
    when the two sets overlap, they are counted once, so a step that keeps everything is not
    reported as truncated."""
    from kernels import Selection
    n = losses.numel()
    rank = torch.arange(n, device=losses.device)
    top = sel.counts[1].clamp(max=n - n_bottom)
    kept_sorted = (rank < top) | (rank >= n - n_bottom)
    count = top + n_bottom
    weight = torch.zeros(n, device=losses.device).scatter(0, sel.order, kept_sorted / count)
    kept = torch.zeros(n, dtype=torch.bool, device=losses.device).scatter(0, sel.order, kept_sorted)
    counts = torch.stack([(sel.counts[0] + n_bottom).clamp(max=n), count]).int()
    return Selection(weight, sel.order, counts, kept_loss_stats(losses, kept))


def random_subset(sel, losses, gen):
    """The control: as many rows as `sel` keeps, chosen uniformly at random, same weights."""
    from kernels import Selection
    n = losses.numel()
    order = torch.randperm(n, device=losses.device, generator=gen)
    k_eff = sel.counts[1]
    kept_sorted = torch.arange(n, device=losses.device) < k_eff
    weight = torch.zeros(n, device=losses.device).scatter(0, order, kept_sorted / k_eff)
    kept = torch.zeros(n, dtype=torch.bool, device=losses.device).scatter(0, order, kept_sorted)
    return Selection(weight, order, sel.counts, kept_loss_stats(losses, kept))


class running_stats_frozen:
    """BatchNorm normalises with the batch's own statistics but leaves the running ones alone."""

    def __init__(self, model):
        self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def __enter__(self):
        for bn in self.bns:
            bn.track_running_stats = False

    def __exit__(self, *exc):
        for bn in self.bns:
            bn.track_running_stats = True


def blf_losses(be, logits, y, mix, smoothing):
    """Per-sample losses for the selection, and each label set's (losses, lse) for the weighted loss.
    Under Mixup/CutMix a sample's loss is its mixed loss, lam * CE(y) + (1 - lam) * CE(partner)."""
    losses, lse = be.cross_entropy_forward(logits, y, smoothing)
    if mix is None:
        return losses, [(losses, lse)]
    partner, lam = mix
    losses_b, lse_b = be.cross_entropy_forward(logits, partner, smoothing)
    return lam * losses + (1 - lam) * losses_b, [(losses, lse), (losses_b, lse_b)]


def blf_weighted_loss(be, logits, y, mix, weight, smoothing, parts=(None, None)):
    """sum_i weight_i * loss_i for the (possibly mixed) per-sample loss; parts from blf_losses skip a pass."""
    loss = be.weighted_cross_entropy(logits, y, weight, smoothing, *(parts[0] or (None, None)))
    if mix is None:
        return loss
    partner, lam = mix
    return lam * loss + (1 - lam) * be.weighted_cross_entropy(logits, partner, weight, smoothing, *(parts[1] or (None, None)))


def blf_train_step(model, opt, x, y, hyp, totals, blf, scaler=None, mix=None):
    """One BLF step. mask: one forward, gradient (softmax - target)/k on kept rows and exactly 0
    elsewhere. compact: a no-grad forward of the whole batch (train-mode BatchNorm: full-batch
    statistics, and the only update of the running statistics), selection, then forward and
    backward of the kept rows only (their own batch statistics; running statistics untouched)."""
    be, s, n = blf.backend, hyp['label_smoothing'], len(y)
    if hyp['blf_mode'] == 'mask':
        with autocast(hyp, x.device):
            logits = model(x)
        losses, parts = blf_losses(be, logits.detach(), y, mix, s)
        sel = blf.select(losses, cap=n)
        loss = blf_weighted_loss(be, logits, y, mix, sel.weight, s, parts)
        rows_trained = n
    else:
        with torch.no_grad(), autocast(hyp, x.device):
            logits = model(x)
        losses, _ = blf_losses(be, logits, y, mix, s)
        rows_trained = blf.kept_size()  # a host int from an earlier step: no sync
        totals['count_lag'] += blf.count.lag
        totals['count_lag_max'] = max(totals['count_lag_max'], blf.count.lag)
        # the pass trains exactly rows_trained rows, the top ones by loss, each weighing
        # 1/rows_trained: every row in it is a kept row, so no padding enters BatchNorm's statistics
        sel = blf.select(losses, cap=rows_trained, fill=True)
        blf.count.push(sel.counts[0])
        rows = blf.rows(sel, rows_trained)
        with running_stats_frozen(model), autocast(hyp, x.device):
            kept_logits = model(x[rows])
        kept_mix = None if mix is None else (mix[0][rows], mix[1])
        loss = blf_weighted_loss(be, kept_logits, y[rows], kept_mix, sel.weight[rows], s)
    backward_and_step(model, opt, loss, hyp, scaler)
    totals['loss'] += sel.stats[1] * n
    totals['correct'] += (logits.argmax(1) == y).sum()
    totals['count'] += n
    totals['kept'] += sel.counts[1]
    totals['kept_loss_frac'] += sel.stats[0]
    totals['kept_loss'] += loss.detach()
    totals['truncated'] += sel.counts[0] > sel.counts[1]
    totals['steps'] += 1
    totals['rows_trained'] += rows_trained


# ----------------------------------------------------------------------------------------------
# A run

def warm_up(hyp, data, device, dtype, backend=None, steps=3):
    """An untimed run of the run's own code, as airbench warms up: cuDNN autotuning, Triton
    compilation, lazy initialisation, the first launches of the augmentation's ops (randperm,
    gathers, where, masked_fill) and the allocator's segments for an augmented epoch (about 1.5 GB
    in fp16) all happen here, not in epoch 1 of a timed run. It trains a few steps on real augmented
    batches from data.train_batches, in two epochs (the second reuses the first's memory, as the
    run's epochs do), then every compact kept-batch size and the evaluation shapes. The model and
    optimiser are thrown away; train_run reseeds the data, so the runs' streams do not depend on it."""
    parts = run_parts(hyp, device, dtype, 12345, backend, steps=4 * steps)
    model, opt, blf = parts['model'], parts['opt'], parts['blf']
    extras = {k: parts[k] for k in ('ema', 'scaler', 'mixer', 'lookahead')}
    bs = hyp['batch_size']
    settings = step_settings(hyp, 1)[:1] * steps
    init_weights_from_data(parts, data)
    data.reseed(12345)
    for _ in range(2):
        batches = list(itertools.islice(data.train_batches(bs), steps))
        train_epoch(model, opt, batches, settings, hyp, **extras)
    x, y = batches[-1]
    if blf is not None:
        sizes = [bs] if hyp['blf_mode'] == 'mask' else sorted(
            {min(bs, k) for k in range(hyp['blf_bucket'], bs + hyp['blf_bucket'], hyp['blf_bucket']) if k > blf.n_bottom})
        for size in sizes:  # compact: every kept-batch shape the run can meet
            blf.fixed_size = size
            train_epoch(model, opt, [(x, y)], settings[:1], hyp, blf, **extras)
    n_test, ebs = len(data.test_y), hyp['eval_batch_size']
    for n in {min(ebs, n_test), n_test % ebs or ebs}:  # the full and the last partial evaluation batch
        evaluate(model, [(data.test_x[:n], data.test_y[:n])], tta=hyp['tta'], amp=hyp['precision'] == 'amp')
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


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
                   truncated_steps=int(totals['truncated'].item()), rows_trained=totals['rows_trained'] / count)
        if totals['count_lag_max']:  # compact mode: how many steps old the count that sized each pass was
            row.update(count_lag=totals['count_lag'] / steps, count_lag_max=totals['count_lag_max'])
    return row


def run_parts(hyp, device, dtype, seed, backend=None, steps=1):
    """What one run trains with: model, optimizer, and the optional BLF state, EMA, lookahead
    (over `steps` steps), loss scaler and Mixup/CutMix mixer (None when off)."""
    model = make_model(hyp['width'], device, dtype, dropout=hyp['dropout'], net=hyp['net'])
    scaler = make_scaler(hyp, device)
    return {'model': model, 'opt': make_optimizer(model, hyp, fused=scaler is not None), 'scaler': scaler,
            'blf': BLF(hyp, backend, device, hyp['batch_size'], seed) if hyp['blf'] is not None else None,
            'ema': EMA(model, hyp['ema']) if hyp['ema'] else None,
            'lookahead': optimizers.Lookahead(averaged_tensors(model), steps) if hyp['lookahead'] else None,
            'mixer': Mixer(hyp, device, seed) if hyp['mixup'] or hyp['cutmix'] else None}


def init_weights_from_data(parts, data):
    """airbench94's net: its first layer whitens 2x2 patches of the first 5000 training images
    (inside the clock, as airbench times it); EMA and lookahead then restart from those weights,
    not from the ones they copied at construction. Other networks need nothing."""
    if hasattr(parts['model'], 'init_whitening'):
        parts['model'].init_whitening(data.first_images(5000))
        for average in (parts['ema'], parts['lookahead']):
            if average is not None:
                average.restart()


def train_run(hyp, data, seed, device, dtype, on_epoch, backend=None, log=print, group=None):
    """One full training run from `seed`; on_epoch(row) gets each epoch's row. Returns the result.
    In a data-parallel run (group.data_parallel) this rank trains on its slice of each global batch
    through DistributedDataParallel, and the clock's events sit between barriers."""
    group = group or distributed.Group()
    torch.manual_seed(seed)
    data.reseed(seed)  # the same augmented epochs on every rank of a data-parallel run
    global_batch = hyp['batch_size']
    if group.data_parallel:  # this rank's steps see its slice; lr/wd and the loss scale are unchanged
        hyp = {**hyp, 'batch_size': global_batch // group.world, 'loss_scale': loss_scale(hyp)}
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
        if hasattr(inner, 'whiten') and epoch >= hyp['whiten_bias_epochs']:
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
# Output: the table and the run record

COLUMNS = [('epoch', '5d'), ('lr', '8.4f'), ('train_loss', '10.4f'), ('train_acc', '9.4f'),
           ('test_acc', '8.4f'), ('epoch_s', '8.3f'), ('total_s', '8.3f')]


BLF_COLUMNS = [('kept', '6.3f'), ('kept_loss_frac', '14.3f'), ('full_loss', '9.4f'), ('kept_loss', '9.4f')]


def table_columns(blf_on):
    return COLUMNS[:5] + (BLF_COLUMNS if blf_on else []) + COLUMNS[5:]


def table_header(blf_on=False):
    return '  '.join(f'{name:>{int(fmt.split(".")[0].rstrip("d"))}}' for name, fmt in table_columns(blf_on))


def format_row(row, blf_on=False):
    # epochs before --blf-start-epoch train on everything: show them as keeping all of it
    filled = {'kept': 1.0, 'kept_loss_frac': 1.0, 'full_loss': row['train_loss'], 'kept_loss': row['train_loss'], **row}
    return '  '.join(f'{filled[name]:{fmt}}' for name, fmt in table_columns(blf_on))


def run_quietly(cmd, cwd=HERE):
    """stdout of a helper command (git, nvidia-smi), or None when it cannot run or fails."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode in (0, 1) else None  # git diff --no-index exits 1 on a difference


def environment(device):
    def run(cmd):
        out = run_quietly(cmd)
        return None if out is None else out.strip()
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


def new_folder(parent, prefix=''):
    """A folder that did not exist before, named by the time: parent/<prefix><date>-<time>[-N]."""
    stamp = prefix + time.strftime('%Y%m%d-%H%M%S')
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f'cannot create the output folder {parent}: {e.strerror}') from None
    for suffix in [''] + [f'-{i}' for i in range(2, 1000)]:
        try:
            path = os.path.join(parent, stamp + suffix)
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f'too many folders named {stamp}-N in {parent}')


def save_source_state(path, root=HERE):
    """What code ran, without copying the repository into every record: the git commit is in
    env.json, and a tree that differs from it adds git.diff here (tracked changes and new .py
    files). Outside a git checkout there is no commit to name, so the .py files are copied into
    source/. Returns 'clean', 'diff' or 'copied'."""
    if run_quietly(['git', 'rev-parse', 'HEAD'], root) is None:
        for rel in sorted(glob.glob('*.py', root_dir=root) + glob.glob('kernels/*.py', root_dir=root)):
            dest = os.path.join(path, 'source', rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.join(root, rel), dest)
        return 'copied'
    diff = run_quietly(['git', 'diff', 'HEAD', '--binary'], root) or ''
    for rel in (run_quietly(['git', 'ls-files', '--others', '--exclude-standard', '--', '*.py'], root) or '').split():
        diff += run_quietly(['git', 'diff', '--no-index', '--binary', '/dev/null', rel], root) or ''
    if not diff:
        return 'clean'
    with open(os.path.join(path, 'git.diff'), 'w') as fh:
        fh.write(diff)
    return 'diff'


class Record:
    """A new folder per invocation (never reuses one); the log, JSON and what code ran."""

    def __init__(self, out_dir):
        self.path = new_folder(out_dir)
        self.log_file = open(os.path.join(self.path, 'log.txt'), 'w')

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



# ----------------------------------------------------------------------------------------------
# Command line

class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f'error: {message} (see --help)\n')


def positive_ints(text):
    """argparse type for '128,256,512': a list of positive integers."""
    try:
        values = [int(v) for v in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f'expected positive integers, got {text!r}')
    return values


def parse_args(argv):
    """The command line over the chosen recipe (recipes.py) over `hyp`: a flag given wins, then the
    recipe's value, then train.py's default; --recipe X --help shows X's values as the defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--recipe', default='myrtle')
    chosen = pre.parse_known_args(argv)[0].recipe
    defaults = {**hyp, **recipes.RECIPES.get(chosen, {})}
    p = OneLineParser(description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--recipe', default='myrtle', choices=list(recipes.RECIPES),
                   help='a named set of the values below (recipes.py); flags given override it. ' +
                        '; '.join(recipes.NOTES.values()).replace('%', '%%'))
    special = {'blf': {'type': float}, 'blf_mode': {'choices': ['compact', 'mask']},
               'net': {'choices': ['resnet9', 'airbench94']}, 'epochs': {'type': float},
               'bn_weight_decay': {'type': float}, 'whiten_bias_epochs': {'type': float},
               'wd_mode': {'choices': ['l2', 'decoupled']}, 'optimizer': {'choices': ['sgd', 'adam']},
               'precision': {'choices': ['auto', 'fp16', 'amp', 'bf16', 'fp32']},
               'blf_impl': {'choices': ['triton', 'torch']}, 'subset_control': {'choices': ['none', 'random']},
               **{k: {'type': parse_schedule} for k in ('lr_schedule', 'momentum_schedule', 'wd_schedule', 'blf_schedule')}}
    for key, default in hyp.items():
        options = special.get(key, {'type': type(default)})
        p.add_argument('--' + key.replace('_', '-'), default=defaults[key], help=HELP[key], **options)
    p.add_argument('--seed', type=int, default=0, help='seed of the first run; run i uses seed+i')
    p.add_argument('--runs', type=int, default=1, help='number of runs (mean/std accuracy, median time)')
    p.add_argument('--data-dir', default='data', help='folder with cifar-10-batches-py/ or cifar-10-python.tar.gz')
    p.add_argument('--no-download', action='store_true', help='fail instead of downloading CIFAR-10')
    p.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (cpu runs in fp32)')
    p.add_argument('--n-train', type=int, default=None, help='use only the first N training images (default: all)')
    p.add_argument('--n-test', type=int, default=None, help='use only the first N test images (default: all)')
    p.add_argument('--out-dir', default='runs', help='a new record folder is made in here for each invocation')
    p.add_argument('--data-parallel', action='store_true',
                   help='under torchrun: one run, each global batch split over the ranks (default: seeds spread over them)')
    return p.parse_args(argv)


def check_args(args):
    """Reject impossible values before any work is done."""
    for key, default in hyp.items():
        value = getattr(args, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f'--{key.replace("_", "-")} must be a finite number, got {value}')
    checks = [
        (args.epochs >= 1, f'--epochs must be at least 1, got {args.epochs}'),
        (args.batch_size >= 1, f'--batch-size must be at least 1, got {args.batch_size}'),
        (args.lr > 0, f'--lr must be positive, got {args.lr}'),
        (args.loss_scale >= 0, f'--loss-scale must be >= 0 (0 = auto), got {args.loss_scale}'),
        (args.optimizer != 'adam' or args.loss_scale in (0, 1),
         '--loss-scale is for SGD: Adam is invariant to a gradient scale (and needs fp32 weights, where amp scales)'),
        (0 < args.lr_peak < 1, f'--lr-peak must be in (0, 1), got {args.lr_peak}'),
        (args.lr_start >= 0 and args.lr_end >= 0, '--lr-start and --lr-end must be >= 0'),
        (0 <= args.momentum < 1, f'--momentum must be in [0, 1), got {args.momentum}'),
        (args.weight_decay >= 0, f'--weight-decay must be >= 0, got {args.weight_decay}'),
        (args.bn_weight_decay >= 0, f'--bn-weight-decay must be >= 0, got {args.bn_weight_decay}'),
        (args.whiten_bias_epochs >= 0, f'--whiten-bias-epochs must be >= 0, got {args.whiten_bias_epochs}'),
        (args.lookahead in (0, 1), f'--lookahead must be 0 or 1, got {args.lookahead}'),
        (args.net == 'resnet9' or not args.dropout, '--dropout is for the resnet9 net'),
        (args.bn_lr_scale >= 0, f'--bn-lr-scale must be >= 0, got {args.bn_lr_scale}'),
        (args.clip_norm >= 0, f'--clip-norm must be >= 0, got {args.clip_norm}'),
        (args.agc >= 0, f'--agc must be >= 0, got {args.agc}'),
        (args.optimizer != 'adam' or args.precision in ('amp', 'fp32') or (args.precision == 'auto' and args.device == 'cpu'),
         "--optimizer adam needs fp32 weights (its second moments underflow in fp16): add --precision amp or fp32"),
        (0 <= args.label_smoothing < 1, f'--label-smoothing must be in [0, 1), got {args.label_smoothing}'),
        (args.width > 0, f'--width must be positive, got {args.width}'),
        (0 <= args.crop_pad <= 16, f'--crop-pad must be in 0..16, got {args.crop_pad}'),
        (args.flip in (0, 1, 2), f'--flip must be 0, 1 or 2, got {args.flip}'),
        (0 <= args.cutout <= 32, f'--cutout must be in 0..32, got {args.cutout}'),
        (args.cutout_count >= 1, f'--cutout-count must be at least 1, got {args.cutout_count}'),
        (0 <= args.dropout < 1, f'--dropout must be in [0, 1), got {args.dropout}'),
        (args.mixup >= 0 and args.cutmix >= 0, '--mixup and --cutmix must be >= 0'),
        (not (args.mixup and args.cutmix), '--mixup and --cutmix: choose one'),
        (args.plateau >= 0, f'--plateau must be >= 0, got {args.plateau}'),
        (args.early_stop >= 0, f'--early-stop must be >= 0, got {args.early_stop}'),
        (args.tta in (0, 1, 2, 3), f'--tta must be 0, 1, 2 or 3, got {args.tta}'),
        (0 <= args.ema < 1, f'--ema must be in [0, 1), got {args.ema}'),
        (args.eval_batch_size >= 1, f'--eval-batch-size must be at least 1, got {args.eval_batch_size}'),
        (args.runs >= 1, f'--runs must be at least 1, got {args.runs}'),
        (args.n_train is None or 1 <= args.n_train <= 50000, f'--n-train must be in 1..50000, got {args.n_train}'),
        (args.n_test is None or 1 <= args.n_test <= 10000, f'--n-test must be in 1..10000, got {args.n_test}'),
        (args.blf is None or 0 < args.blf <= 1, f'--blf must be in (0, 1], got {args.blf}'),
        (0 <= args.blf_min_samples <= 1, f'--blf-min-samples must be in [0, 1], got {args.blf_min_samples}'),
        (args.blf_start_epoch >= 1, f'--blf-start-epoch must be at least 1, got {args.blf_start_epoch}'),
        (args.blf_round_to >= 1, f'--blf-round-to must be at least 1, got {args.blf_round_to}'),
        (args.blf_bucket >= 1, f'--blf-bucket must be at least 1, got {args.blf_bucket}'),
        (args.subset_control == 'none' or args.blf is not None, '--subset-control random needs --blf P (its size)'),
        (args.blf_schedule is None or args.blf is not None, '--blf-schedule needs --blf (it turns BLF on)'),
        (0 <= args.blf_bottom < 1, f'--blf-bottom must be in [0, 1), got {args.blf_bottom}'),
        (not args.blf_bottom or args.blf is not None, '--blf-bottom needs --blf'),
        (all(v >= 0 for _, v in args.lr_schedule or []), '--lr-schedule values must be >= 0'),
        (args.lr_schedule is None or any(v > 0 for _, v in args.lr_schedule),
         '--lr-schedule is 0 throughout: nothing would train (as --lr 0 is refused)'),
        (all(0 <= v < 1 for _, v in args.momentum_schedule or []), '--momentum-schedule values must be in [0, 1)'),
        (all(v >= 0 for _, v in args.wd_schedule or []), '--wd-schedule values must be >= 0'),
        (all(0 < v <= 1 for _, v in args.blf_schedule or []), '--blf-schedule values must be in (0, 1]'),
        (args.blf is None or args.blf_impl != 'triton' or args.batch_size <= BLF_MAX_BATCH,
         f'--blf-impl triton takes batches up to {BLF_MAX_BATCH}; use --blf-impl torch for larger ones'),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    n_train = args.n_train or 50000
    if args.batch_size > n_train:
        raise UserError(f'--batch-size {args.batch_size} is larger than the training set ({n_train} images)')
    check_device(args.device, ' (slow: try --n-train 4000 --n-test 1000 --epochs 4 --width 0.25 --batch-size 256)')
    check_writable(args.out_dir)
    world = distributed.world_size()
    if args.data_parallel and world == 1:
        raise UserError('--data-parallel needs several processes: torchrun --nproc_per_node N train.py --data-parallel')
    if args.data_parallel and args.batch_size % world:
        raise UserError(f'--data-parallel: --batch-size {args.batch_size} does not split over {world} ranks')
    if world > 1 and ':' in args.device:
        raise UserError('under torchrun each rank takes the GPU cuda:LOCAL_RANK: give --device cuda')


def check_writable(folder):
    """A UserError unless `folder` is, or can be made, a folder this process can write into. Checked
    before the data loads, so a bad --out-dir costs nothing; leaves nothing behind."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError(f'--out-dir {folder}: {path} is a file, not a folder')
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f'--out-dir {folder}: cannot write into {path} ({e.strerror})') from None


def schedule_notes(h):
    """A line for each schedule that ends before the run does: its last value then holds, which is
    rarely what a short list of knots meant (0:0,5:0.4 with --epochs 24 trains at 0.4 for 19 epochs)."""
    notes = []
    for key in ('lr_schedule', 'momentum_schedule', 'wd_schedule', 'blf_schedule'):
        knots = h[key]
        if knots and knots[-1][0] < h['epochs']:
            notes.append(f'# note: --{key.replace("_", "-")} ends at epoch {knots[-1][0]:g} of {h["epochs"]}: '
                         f'its last value, {knots[-1][1]:g}, holds for the rest of the run')
    return notes


def check_device(text, cpu_hint=''):
    """torch.device for 'cuda', 'cuda:N' or 'cpu', or a UserError saying what is wrong."""
    kind, _, index = text.partition(':')
    if kind not in ('cuda', 'cpu') or (index and (kind == 'cpu' or not index.isdigit())):
        raise UserError(f'--device must be cuda, cuda:N or cpu, got {text!r}')
    if kind == 'cuda':
        if not torch.cuda.is_available():
            raise UserError('no CUDA GPU found; to run on the CPU add --device cpu' + cpu_hint)
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f'--device {text}: this machine has {torch.cuda.device_count()} GPU(s)')
    return torch.device(text)


def use_device(text, cpu_hint=''):
    """Check --device and make a GPU the current one: Triton launches, CUDA events, the pinned
    count buffer's copies and streams all follow the current device, not the tensors' own, so
    cuda:1 would otherwise time and launch on cuda:0."""
    device = check_device(text, cpu_hint)
    if device.type == 'cuda':
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
        device = torch.device('cuda', torch.cuda.current_device())
    return device


class Interrupted(Exception):
    """Ctrl-C; the message says what the record kept."""


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
    finally:
        group.close()


class Follower:
    """What a rank other than 0 holds in place of a Record: it prints and writes nothing (rank 0
    gathers its runs at the end)."""
    path = None

    def log(self, line=''):
        pass

    def append_jsonl(self, name, obj):
        pass

    def write_json(self, name, obj):
        pass


class RankFailed(Exception):
    """Another rank failed; rank 0 has said so in one line, this rank only exits non-zero."""


def run_in_group(args, argv, group, device_text):
    h = {key: getattr(args, key) for key in hyp}
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


def gather_runs(group, record, env, device, results, epochs, error, runs_planned):
    """Seeds over ranks: every rank's runs, epochs and error to rank 0, which writes them into the
    one record in seed order (as one process running all the seeds would) and says which rank failed."""
    parts = group.gather({'rank': group.rank, 'device': str(device), 'gpu': env['device'], 'results': results,
                          'epochs': epochs, 'error': error})
    everything = sorted((r for p in parts for r in p['results']), key=lambda r: r['seed'])
    errors = [p for p in parts if p['error']]
    if group.leader:
        for part in parts[1:]:
            for row in part['epochs']:
                record.append_jsonl('epochs.jsonl', row)
        for result in everything:
            record.append_jsonl('runs.jsonl', result)
            if result['rank'] != 0:
                record.log(f'seed {result["seed"]} (rank {result["rank"]}, {result["device"]}): test accuracy '
                           f'{result["test_acc"]:.4f}, time {result["time_s"]:.3f} s')
        env['ranks'] = [{k: p[k] for k in ('rank', 'device', 'gpu')} for p in parts]
        record.write_json('env.json', env)
    if errors:
        first = errors[0]
        finish_record(record, everything, 'failed', runs_planned,
                      errors=[{k: p[k] for k in ('rank', 'device', 'error')} for p in errors])
        if group.leader:
            raise UserError(f'rank {first["rank"]} ({first["device"]}): {first["error"]}')
        raise RankFailed()
    return everything


def finish_record(record, results, status, runs_planned, errors=None):
    """summary.json: the status (complete, interrupted, diverged, failed), and the statistics of
    the runs that finished, if any."""
    summary = {'status': status, 'runs_finished': len(results), 'runs_planned': runs_planned}
    if errors:
        summary['errors'] = errors
    if results:
        summary.update(accuracy=stats.summarize([r['test_acc'] for r in results]),
                       time_s=stats.summarize([r['time_s'] for r in results]))
    if len(results) > 1:
        t, p = stats.t_test_greater([r['test_acc'] for r in results], 0.94)
        summary['t_test_mean_gt_0.94'] = {'t': t, 'p': p}
        if status == 'complete':
            a, s = summary['accuracy'], summary['time_s']
            record.log(f'\n{len(results)} runs: accuracy mean {a["mean"]:.4f} std {a["std"]:.4f} min {a["min"]:.4f} '
                       f'max {a["max"]:.4f} (one-sided t-test mean > 0.94: p = {p:.3g}); '
                       f'time median {s["median"]:.3f} s (min {s["min"]:.3f}, max {s["max"]:.3f})')
    if status != 'complete':
        record.log(f'# {status} after {len(results)} of {runs_planned} run(s)')
    record.write_json('summary.json', summary)


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
    log('# time = training steps (augmentation included) + final evaluation; per-epoch test evals excluded')
    for note in schedule_notes(h):
        log(note)
    warm_up(h, data, device, dtype, backend)
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
        result = train_run(h, data, seed, device, dtype, on_epoch, backend, log,
                           group if group.data_parallel else None)  # seeds over ranks: independent runs
        result.update(rank=group.rank, device=str(device))
        if not group.active or group.data_parallel:
            record.append_jsonl('runs.jsonl', result)
        results.append(result)
        tta = {0: '', 1: ' (flip TTA)', 2: ' (flip + translate TTA)', 3: ' (weighted 6-view TTA)'}[h['tta']] + (' (EMA weights)' if h['ema'] else '')
        log(f'seed {seed}: test accuracy {result["test_acc"]:.4f}{tta}, time {result["time_s"]:.3f} s '
            f'(train {result["train_s"]:.3f} s + final eval {result["eval_s"]:.3f} s)')


if __name__ == '__main__':
    sys.exit(main())
