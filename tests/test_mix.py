"""Mixup and CutMix: the mixed images, the mixed loss, and BLF's per-sample loss under mixing."""
import copy

import pytest
import torch
import torch.nn.functional as F

import blf_step
import cli
import data_gpu
import networks
import optimizers
import train
from kernels import reference


def encoded_batch(n=64):
    """Images filled with their label's value, so every pixel says where it came from."""
    y = torch.arange(n) % 10
    x = (y.float() * 10).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return x, y


def test_mixed_loss_is_cross_entropy_against_the_mixed_target():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=g)
    y, partner = torch.randint(0, 10, (16,), generator=g), torch.randint(0, 10, (16,), generator=g)
    lam = 0.3
    target = lam * F.one_hot(y, 10).float() + (1 - lam) * F.one_hot(partner, 10).float()
    for smoothing in (0.0, 0.1):
        smoothed = target * (1 - smoothing) + smoothing / 10
        want = F.cross_entropy(logits, smoothed, reduction='none')
        got = train.mixed_cross_entropy(logits, y, (partner, lam), smoothing, reduction='none')
        torch.testing.assert_close(got, want)


def test_mixup_images_are_the_weighted_sum_of_a_pair():
    h = {**cli.hyp, 'mixup': 0.4}
    x, y = encoded_batch()
    mixed, (partner, lam) = data_gpu.Mixer(h, 'cpu', seed=1)(x, y)
    assert 0 < lam < 1 and not torch.equal(partner, y)
    want = (lam * y.float() * 10 + (1 - lam) * partner.float() * 10).view(-1, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(mixed, want)
    assert mixed.is_contiguous(memory_format=torch.channels_last)


def test_cutmix_pastes_one_box_whose_area_is_one_minus_lambda():
    h = {**cli.hyp, 'cutmix': 1.0}
    x, y = encoded_batch()
    mixer = data_gpu.Mixer(h, 'cpu', seed=3)
    for _ in range(20):
        mixed, (partner, lam) = mixer(x, y)
        from_partner = (mixed[:, 0] == (partner.float() * 10).view(-1, 1, 1)) & (partner != y).view(-1, 1, 1)
        own = mixed[:, 0] == (y.float() * 10).view(-1, 1, 1)
        assert torch.all(own | from_partner)
        rows = partner != y
        areas = from_partner[rows].sum((1, 2))
        assert torch.all(areas == areas[0]), 'one box for the whole batch'
        assert areas[0].item() == round((1 - lam) * 1024)


def test_mixers_are_seeded():
    h = {**cli.hyp, 'mixup': 0.4}
    x, y = encoded_batch()
    a, b = data_gpu.Mixer(h, 'cpu', seed=5), data_gpu.Mixer(h, 'cpu', seed=5)
    for _ in range(3):
        (xa, (pa, la)), (xb, (pb, lb)) = a(x, y), b(x, y)
        assert la == lb and torch.equal(pa, pb) and torch.equal(xa, xb)


def blf_step_under_mixup(cifar, impl, mode, kept_before=None, **extra):
    """One BLF step on 96 Mixup images (lr 0, so .grad keeps the gradient); returns the model after
    it, a copy from before it, the hyperparameters, the mixed images, labels and mix."""
    torch.manual_seed(0)
    h = {**cli.hyp, 'blf': 0.7, 'blf_mode': mode, 'blf_impl': impl, 'label_smoothing': 0.1, 'mixup': 0.4,
         'weight_decay': 0.0, 'momentum': 0.0, **extra}
    model = networks.make_model(0.25, 'cpu', torch.float32)
    opt = optimizers.make_optimizer(model, h)
    x = data_gpu.normalize(cifar['train_x'][:96], torch.float32).contiguous(memory_format=torch.channels_last)
    y = cifar['train_y'][:96]
    mixed, mix = data_gpu.Mixer(h, 'cpu', seed=0)(x, y)
    blf = blf_step.BLF(h, blf_step.blf_backend(impl, 'cpu'), 'cpu', 96, seed=0)
    if kept_before is not None:
        blf.count.value = kept_before  # as if an earlier step had kept that many rows
    before = copy.deepcopy(model)
    blf_step.blf_train_step(model, opt, mixed, y, h, train.epoch_totals('cpu', blf_on=True), blf, mix=mix)
    return model, before, h, mixed, y, mix


def assert_same_gradients(model, reference_model, h):
    for p, q in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(p.grad / optimizers.loss_scale(h), q.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('impl', ['triton', 'torch'])
def test_blf_under_mixup_trains_on_the_top_mixed_losses(cifar, impl):
    model, before, h, mixed, y, mix = blf_step_under_mixup(cifar, impl, 'mask')
    losses = train.mixed_cross_entropy(before(mixed), y, mix, 0.1, reduction='none')
    sel = reference.select_top_loss(losses.detach(), 0.7)
    losses[sel.order[:int(sel.counts[0])]].mean().backward()
    assert_same_gradients(model, before, h)


@pytest.mark.parametrize('impl', ['triton', 'torch'])
def test_compact_blf_under_mixup_pairs_each_kept_row_with_its_own_partner(cifar, impl):
    """The compact pass trains on a subset of rows: their partners' labels must be taken with them
    (pairing the kept rows with the full batch's first partners trains against the wrong targets)."""
    model, before, h, mixed, y, mix = blf_step_under_mixup(cifar, impl, 'compact', kept_before=40, blf_bucket=8)
    with torch.no_grad():
        losses = train.mixed_cross_entropy(before(mixed), y, mix, 0.1, reduction='none')
    rows = reference.select_top_loss(losses, 0.7).order[:40]  # this step trains on 40 rows
    partner, lam = mix
    with blf_step.running_stats_frozen(before):
        train.mixed_cross_entropy(before(mixed[rows]), y[rows], (partner[rows], lam), 0.1, reduction='mean').backward()
    assert_same_gradients(model, before, h)
