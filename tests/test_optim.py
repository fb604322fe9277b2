"""Optimiser tricks: parameter groups, decoupled weight decay, clipping, AGC, precision and loss scaling."""
import math

import pytest
import torch
import torch.nn as nn

import blf_step
import cli
import data_gpu
import networks
import optimizers
import schedules
import train

# The formula tests below state the update for the gradient of the loss as written: scale 1. The
# loss-scale tests check that any other scale gives the same updates.
HYP = {**cli.hyp, 'loss_scale': 1.0}


def tiny(hyp, fused=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    return model, optimizers.make_optimizer(model, hyp, fused=fused)


SETTING = {'lr': 0.1, 'momentum': 0.0, 'weight_decay': 0.01, 'blf': 1.0}


def step(model, opt, hyp, loss_fn, scaler=None, setting=SETTING):
    optimizers.apply_setting(opt, setting, hyp)
    before = [p.detach().clone() for p in model.parameters()]
    loss = loss_fn(model)
    optimizers.backward_and_step(model, opt, loss, hyp, scaler)
    return before


def simple_loss(model):
    return model(torch.arange(6.0).view(2, 3)).square().mean()


def test_param_groups_put_batchnorm_and_biases_apart():
    h = {**HYP, 'bn_lr_scale': 64.0, 'bn_weight_decay': 0}
    model, opt = tiny(h)
    weights, norms = opt.param_groups
    assert [p.shape for p in weights['params']] == [(4, 3), (2, 4)]
    assert [p.shape for p in norms['params']] == [(4,), (4,), (4,)]  # first bias, BN weight and bias
    optimizers.apply_setting(opt, SETTING, h)
    assert (weights['lr'], norms['lr']) == (0.1, pytest.approx(6.4))
    assert (weights['weight_decay'], norms['weight_decay']) == (0.01, 0.0)
    resnet_groups = optimizers.param_groups(networks.ResNet9(0.25), HYP)
    assert len(resnet_groups[0]['params']) == 9 and len(resnet_groups[1]['params']) == 16


def test_decoupled_weight_decay_is_applied_apart_from_the_gradient():
    h = {**HYP, 'wd_mode': 'decoupled', 'bn_weight_decay': 0}
    model, opt = tiny(h)
    before = step(model, opt, h, simple_loss)
    grads = [p.grad for p in model.parameters()]
    weights = {id(p) for p in opt.param_groups[0]['params']}
    for p, w0, g in zip(model.parameters(), before, grads):
        decay = 1 - 0.1 * 0.01 if id(p) in weights else 1.0
        torch.testing.assert_close(p.detach(), w0 * decay - 0.1 * g, rtol=1e-6, atol=1e-7)
    assert all(g['weight_decay'] == 0 for g in opt.param_groups), 'SGDW must not also add L2'


def test_l2_weight_decay_goes_through_the_gradient():
    h = {**HYP, 'wd_mode': 'l2'}
    model, opt = tiny(h)
    before = step(model, opt, h, simple_loss)
    for p, w0 in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), w0 - 0.1 * (p.grad + 0.01 * w0), rtol=1e-6, atol=1e-7)


def test_adam_takes_momentum_as_beta1_and_adamw_is_decoupled():
    h = {**HYP, 'optimizer': 'adam', 'wd_mode': 'decoupled'}
    model, opt = tiny(h)
    assert isinstance(opt, torch.optim.AdamW)
    optimizers.apply_setting(opt, {**SETTING, 'momentum': 0.8}, h)
    assert opt.param_groups[0]['betas'] == (0.8, 0.999) and opt.param_groups[0]['weight_decay'] == 0.01
    assert isinstance(tiny({**h, 'wd_mode': 'l2'})[1], torch.optim.Adam)


def test_global_norm_clipping():
    h = {**HYP, 'clip_norm': 0.5}
    model, opt = tiny(h)
    before = step(model, opt, h, lambda m: 1000 * simple_loss(m), setting={**SETTING, 'weight_decay': 0.0})
    total = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
    torch.testing.assert_close(total, torch.tensor(0.5), rtol=1e-4, atol=0)
    for p, w0 in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), w0 - 0.1 * p.grad)


def test_agc_clips_exactly_the_layers_over_the_ratio():
    over, under = nn.Parameter(torch.full((4,), 1.0)), nn.Parameter(torch.full((9,), 2.0))
    over.grad = torch.full((4,), 3.0)    # ||g|| / ||w|| = 3
    under.grad = torch.full((9,), 0.02)  # 0.01
    optimizers.adaptive_clip_([over, under], ratio=0.1)
    torch.testing.assert_close(over.grad.norm(), 0.1 * over.detach().norm())
    torch.testing.assert_close(over.grad, torch.full((4,), 0.1))  # direction kept
    assert torch.equal(under.grad, torch.full((9,), 0.02))
    tiny_w = nn.Parameter(torch.zeros(4))  # zero weights: the eps keeps a small step possible
    tiny_w.grad = torch.ones(4)
    optimizers.adaptive_clip_([tiny_w], ratio=0.1)
    torch.testing.assert_close(tiny_w.grad.norm(), torch.tensor(0.1 * 1e-3))


def test_agc_costs_the_same_number_of_ops_for_any_number_of_layers():
    """AGC used to loop over the tensors in Python (~55 launches a step for ResNet-9)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += func.__name__ not in ('unbind.int', 'detach.default')  # views launch nothing
            return func(*args, **(kwargs or {}))

    counts = []
    for layers in (3, 30):
        params = [nn.Parameter(torch.randn(5, 4)) for _ in range(layers)]
        for p in params:
            p.grad = torch.randn(5, 4) * 10
        with CountOps() as counter:
            optimizers.adaptive_clip_(params, ratio=0.1)
        counts.append(counter.ops)
    assert counts[0] == counts[1] < 15, counts


def test_loss_scaling_steps_normally_and_skips_an_overflowing_step():
    h = {**HYP, 'precision': 'amp'}
    model, opt = tiny(h, fused=True)
    scaler = optimizers.make_scaler(h, 'cpu')
    scale = scaler.get_scale()
    before = step(model, opt, h, simple_loss, scaler)
    assert any(not torch.equal(p, w0) for p, w0 in zip(model.parameters(), before))
    before = step(model, opt, h, lambda m: simple_loss(m) * float('inf'), scaler)
    assert all(torch.equal(p, w0) for p, w0 in zip(model.parameters(), before)), 'the inf step must be skipped'
    assert scaler.get_scale() == scale / 2


SCALE_CASES = {
    'nesterov-l2': {},
    'bn-groups': {'bn_lr_scale': 8.0, 'bn_weight_decay': 0},
    'sgdw': {'wd_mode': 'decoupled'},
    'clip': {'clip_norm': 0.05},
    'agc': {'agc': 0.01},
    'amp-clip': {'precision': 'amp', 'clip_norm': 0.05},
}


@pytest.mark.parametrize('case', list(SCALE_CASES))
def test_a_loss_scale_leaves_the_sgd_trajectory_unchanged(case):
    """Back-propagating loss x S with lr / S and wd x S (clipping bounds x S) is the same SGD: after
    a few steps the weights match the unscaled run up to fp32 rounding. A scale left in the
    gradient, or folded into the wrong hyperparameter, moves them by orders of magnitude more."""
    h = {**cli.hyp, 'weight_decay': 0.05, **SCALE_CASES[case]}
    setting = {'lr': 0.02, 'momentum': 0.9, 'weight_decay': 0.05, 'blf': 1.0}
    finals = {}
    for scale in (1.0, 64.0, 0.0):  # 0: auto (the batch size, 512; amp: 1)
        hs = {**h, 'loss_scale': scale}
        model, opt = tiny(hs, fused=hs['precision'] == 'amp')
        scaler = optimizers.make_scaler(hs, 'cpu')
        for _ in range(4):
            step(model, opt, hs, simple_loss, scaler, setting)
        finals[scale] = [p.detach().clone() for p in model.parameters()]
    assert optimizers.loss_scale({**h, 'loss_scale': 0.0}) == (1.0 if h['precision'] == 'amp' else 512.0)
    for scale in (64.0, 0.0):
        for a, b in zip(finals[scale], finals[1.0]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adam_and_amp_default_to_no_loss_scale_and_adam_refuses_one(tmp_path, capsys):
    assert optimizers.loss_scale({**cli.hyp, 'optimizer': 'adam'}) == 1.0
    assert optimizers.loss_scale({**cli.hyp, 'precision': 'amp'}) == 1.0
    assert optimizers.loss_scale({**cli.hyp, 'batch_size': 1024}) == 1024.0
    code = train.main(['--device', 'cpu', '--optimizer', 'adam', '--loss-scale', '512', '--out-dir', str(tmp_path)])
    assert code == 2 and '--loss-scale is for SGD' in capsys.readouterr().err


def test_a_momentum_schedule_that_starts_at_zero_builds_and_steps():
    """torch's SGD refuses nesterov=True with momentum 0 at construction (not at a step)."""
    h = {**HYP, 'momentum_schedule': [(0, 0.0), (1, 0.9)]}
    model, opt = tiny(h)
    for momentum in (0.0, 0.0, 0.9, 0.9):
        before = step(model, opt, h, simple_loss, setting={**SETTING, 'momentum': momentum})
        assert all(not torch.equal(p, w0) for p, w0 in zip(model.parameters(), before))
    assert opt.param_groups[0]['nesterov'] and opt.param_groups[0]['momentum'] == 0.9


@pytest.mark.parametrize('precision', ['fp32', 'bf16', 'amp', 'fp16'])
def test_each_precision_trains_with_the_dtypes_it_promises(cifar, precision):
    """One real step per --precision: the weights (and their gradients) in the promised dtype,
    BatchNorm in fp32, the data on the device in the promised dtype, and a step that moves the
    weights by a finite amount."""
    h = {**cli.hyp, 'precision': precision, 'batch_size': 32, 'width': 0.125}
    weights, data_dtype = networks.PRECISIONS[precision]
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', data_dtype, n_train=64, n_test=10)
    parts = train.run_parts(h, 'cpu', weights, 0, None)
    model, opt = parts['model'], parts['opt']
    x, y = next(data.train_batches(32))
    assert x.dtype == {'fp32': torch.float32, 'bf16': torch.bfloat16, 'amp': torch.float16, 'fp16': torch.float16}[precision]
    optimizers.apply_setting(opt, {'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4, 'blf': 1.0}, h)
    before = [p.detach().float().clone() for p in model.parameters()]
    train.train_step(model, opt, x, y, h, train.epoch_totals('cpu', False), parts['scaler'])
    conv = model.prep[0].weight
    assert conv.dtype == conv.grad.dtype == {'fp32': torch.float32, 'bf16': torch.bfloat16, 'amp': torch.float32,
                                             'fp16': torch.float16}[precision]
    assert model.prep[1].weight.dtype == model.prep[1].running_mean.dtype == torch.float32
    assert (parts['scaler'] is not None) == (precision == 'amp')
    moved = [(p.detach().float() - b).abs().max().item() for p, b in zip(model.parameters(), before)]
    assert all(math.isfinite(m) for m in moved) and max(moved) > 0


TRICK_SETS = {
    'amp-clip-agc-sgdw-ema': {'precision': 'amp', 'clip_norm': 1.0, 'agc': 0.1, 'wd_mode': 'decoupled', 'ema': 0.99},
    'mixup-blf-compact-bottom-schedules': {'mixup': 0.4, 'blf': 0.9, 'blf_bottom': 0.05, 'bn_lr_scale': 4.0,
                                           'momentum_schedule': [(0, 0.85), (1, 0.95)], 'blf_schedule': [(0, 1.0), (1, 0.8)]},
    'cutmix-bf16-dropout-cutout2': {'cutmix': 1.0, 'dropout': 0.2, 'cutout_count': 2, 'precision': 'bf16'},
    'adamw-amp-blf-mask-random': {'optimizer': 'adam', 'wd_mode': 'decoupled', 'precision': 'amp', 'lr': 1e-3,
                                  'blf': 0.9, 'blf_mode': 'mask', 'subset_control': 'random', 'bn_weight_decay': 0},
}


@pytest.mark.gpu
@pytest.mark.parametrize('name', list(TRICK_SETS))
def test_gpu_epoch_with_tricks_has_no_host_sync(cifar, name):
    h = {**cli.hyp, **TRICK_SETS[name]}
    h['precision'] = networks.resolve_precision(h['precision'], 'cuda')
    weights, inputs = networks.PRECISIONS[h['precision']]
    data = data_gpu.DeviceCIFAR10(cifar, 'cuda', inputs, n_train=10240, n_test=1000, cutout_count=h['cutout_count'])
    backend = blf_step.blf_backend('triton', 'cuda') if h['blf'] else None
    train.warm_up(h, data, 'cuda', weights, backend)
    parts = train.run_parts(h, 'cuda', weights, 0, backend)
    settings = schedules.step_settings(h, data.n_train // h['batch_size'])
    args = (parts['model'], parts['opt'], None, settings, h, parts['blf'], parts['ema'], parts['scaler'], parts['mixer'])
    train.train_epoch(*args[:2], data.train_batches(h['batch_size']), *args[3:])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        totals = train.train_epoch(*args[:2], data.train_batches(h['batch_size']), *args[3:])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(totals['loss']).item()
