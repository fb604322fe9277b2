"""Schedules: piecewise-linear values over epochs for the lr, momentum, weight decay and BLF's p.

Each step's values are computed on the host before the run (step_settings), at the step's epoch
fraction, so the shapes stretch with --epochs and no step waits for the GPU to learn its settings.
"""


import argparse
import math


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
            'blf': hyp['blf_schedule'] or [(0, hyp['blf'] or 1.0)],
            # --whiten-bias-decay: the whitening bias's own lr, as a share of --lr x --bn-lr-scale
            'whiten_bias': [(0, 1.0), (hyp['whiten_bias_epochs'], 0.0)] if hyp['whiten_bias_decay'] else [(0, 1.0)]}


def step_settings(hyp, steps_per_epoch):
    """Per step: lr, momentum, weight_decay and BLF's p, each at the step's epoch fraction, so the
    shapes stretch with --epochs (the default lr: 0 -> lr at lr_peak, then -> 0 at the end)."""
    knots = schedules(hyp)
    return [{name: piecewise_linear(k, step / steps_per_epoch) for name, k in knots.items()}
            for step in range(total_steps(hyp, steps_per_epoch))]


def total_steps(hyp, steps_per_epoch):
    """Steps of a run: --epochs may be fractional (airbench94: 9.9), the last epoch then stops early."""
    return round(hyp['epochs'] * steps_per_epoch)
