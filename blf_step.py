"""BatchLossFilter's training step: each step trains on the highest-loss samples that make up a
share p of the batch's loss, without a host sync (README, "BatchLossFilter", states the rule).

The kernels (kernels/: Triton, with their plain-torch twins) compute the per-sample losses, the
selection and the weighted gradient; this file holds the per-run state (BLF), the compact mode's
lagged kept count, the variants (bottom rows, the random-subset control) and the step itself.
"""


import os
import warnings

import torch
import torch.nn as nn

from cli import UserError
from networks import autocast
from optimizers import backward_and_step


BLF_TOTALS = ('kept', 'kept_loss_frac', 'kept_loss', 'truncated')


def blf_backend(impl, device):
    """The module with cross_entropy_forward / select_top_loss / weighted_cross_entropy."""
    if impl == 'torch':
        from kernels import reference
        return reference
    if torch.device(device).type == 'cpu':
        use_triton_interpreter()
    try:
        from kernels import triton_impl
    except ImportError as e:
        raise UserError(f'--blf-impl triton needs triton ({e}); pip install triton, or use --blf-impl torch') from None
    return triton_impl


def use_triton_interpreter():
    """Triton runs kernels on CPU tensors only in its interpreter, which must be chosen before
    triton is first imported: it makes its own jitted helpers (tl.sum's combine, ...) for one mode
    then. record.environment imports triton for its version, so a process that runs a BLF run on
    the CPU after another run (train_many.py) chooses it before the first."""
    os.environ.setdefault('TRITON_INTERPRET', '1')
    # numpy warns when the interpreter meets NaN/Inf; BLF handles those rows itself (see README)
    warnings.filterwarnings('ignore', category=RuntimeWarning, module='triton.runtime.interpreter')


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
        wanted = self.count.latest()  # >= n_bottom + 1 or the batch: the rule keeps at least one top row
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
    row weighs 1/count. sel keeps at most n - n_bottom rows (BLF.select caps it so), so the kept
    sets never overlap. counts become [the rule's top k plus the bottom rows, at most B; rows kept]:
    where the rule's k reaches into the bottom rows they are counted once, so a step that keeps
    everything is not reported as truncated."""
    from kernels import Selection
    n = losses.numel()
    rank = torch.arange(n, device=losses.device)
    top = sel.counts[1]
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
