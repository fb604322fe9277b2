"""The network, its precision and memory layout, the schedule, and one training step."""
import argparse

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cli
import data_gpu
import networks
import optimizers
import schedules
import train


def conv_outputs_channels_last(model, x):
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    out = model(x)
    for h in hooks:
        h.remove()
    return out, seen


@pytest.mark.parametrize('dtype', [torch.float16, torch.float32])
def test_precision_and_layout_after_setup(dtype):
    model = networks.make_model(1.0, 'cpu', dtype)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(bns) == 8 and len(convs) == 9
    for bn in bns:
        for name, t in list(bn.named_parameters()) + list(bn.named_buffers()):
            want = torch.int64 if name == 'num_batches_tracked' else torch.float32
            assert t.dtype == want, f'BatchNorm {name} is {t.dtype}'
    for m in convs:
        assert m.weight.dtype == dtype
    for m in convs[:-1]:
        assert m.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).to(dtype).contiguous(memory_format=torch.channels_last)
    out, layouts = conv_outputs_channels_last(model, x)
    assert out.shape == (4, 10) and out.dtype == dtype
    assert len(layouts) == 16 and all(layouts), 'a conv or BN output fell back to NCHW'


def test_architecture_matches_myrtle_resnet9():
    model = networks.ResNet9()
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, 128, 128, 128, 256, 512, 512, 512]
    assert model.linear.in_features == 512 and model.linear.bias is None and model.logit_scale == 0.125
    assert sum(p.numel() for p in model.parameters()) == 6573120  # 6.57 M, as Myrtle's ResNet-9
    assert networks.ResNet9(width=0.25)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_one_step_lowers_the_loss_on_a_fixed_batch(cifar):
    torch.manual_seed(0)
    model = networks.make_model(0.5, 'cpu', torch.float32)
    opt = optimizers.make_optimizer(model, {**cli.hyp})
    optimizers.apply_setting(opt, {'lr': 0.2, 'momentum': 0.9, 'weight_decay': 5e-4, 'blf': 1.0}, cli.hyp)
    x = data_gpu.normalize(cifar['train_x'][:128], torch.float32).contiguous(memory_format=torch.channels_last)
    y = cifar['train_y'][:128]
    before = F.cross_entropy(model(x).float(), y)
    totals = {k: torch.zeros(()) for k in ('loss', 'correct', 'count')}
    train.train_step(model, opt, x, y, cli.hyp, totals)
    after = F.cross_entropy(model(x).float(), y)
    assert after < before - 0.01
    assert torch.isclose(totals['loss'] / totals['count'], before, rtol=1e-4)
    assert totals['count'] == 128


def lrs_of(h, steps_per_epoch):
    return [s['lr'] for s in schedules.step_settings(h, steps_per_epoch)]


def test_default_lr_schedule_hits_its_knots_and_stretches_with_epochs():
    h = {**cli.hyp, 'epochs': 24, 'lr': 0.4, 'lr_peak': 5 / 24}
    lrs = lrs_of(h, steps_per_epoch=10)
    assert len(lrs) == 240
    assert lrs[0] == 0 and lrs[50] == pytest.approx(0.4) and max(lrs) == pytest.approx(0.4)
    assert lrs[25] == pytest.approx(0.2) and lrs[145] == pytest.approx(0.2)
    assert all(a < b for a, b in zip(lrs[:50], lrs[1:51])) and all(a > b for a, b in zip(lrs[50:], lrs[51:]))
    assert lrs[-1] == pytest.approx(0.4 / 190)  # one step before reaching 0 at the end
    long = lrs_of({**h, 'epochs': 48}, steps_per_epoch=10)
    assert long[100] == pytest.approx(0.4) and long[::2][:240] == pytest.approx(lrs)


def test_schedules_from_the_command_line_hit_their_knots_exactly():
    h = {**cli.hyp, 'epochs': 10, 'blf': 0.9,
         'lr_schedule': schedules.parse_schedule('0:0,2:0.4,10:0'),
         'momentum_schedule': schedules.parse_schedule('0:0.85,5:0.95'),
         'wd_schedule': schedules.parse_schedule('0:5e-4,8:0'),
         'blf_schedule': schedules.parse_schedule('0:1.0,4:1.0,6:0.8')}
    steps = schedules.step_settings(h, steps_per_epoch=4)
    at = {epoch: steps[epoch * 4] for epoch in range(10)}
    assert [at[e]['lr'] for e in (0, 1, 2, 6)] == [0.0, 0.2, 0.4, 0.2]
    assert [at[e]['momentum'] for e in (0, 5, 9)] == [0.85, 0.95, 0.95]  # held after the last knot
    assert at[8]['weight_decay'] == 0.0 and at[4]['weight_decay'] == pytest.approx(2.5e-4)
    assert [at[e]['blf'] for e in (0, 4, 5, 6, 9)] == [1.0, 1.0, pytest.approx(0.9), 0.8, 0.8]
    assert steps[1]['lr'] == pytest.approx(0.05)  # a quarter of an epoch into the ramp
    assert schedules.step_settings({**cli.hyp, 'epochs': 2}, 3)[0]['momentum'] == cli.hyp['momentum']


def test_fractional_epochs_take_the_nearest_whole_number_of_steps():
    # 2.3 x 100 is 229.99999999999997 in floats: flooring it would lose a step
    assert schedules.total_steps({'epochs': 2.3}, 100) == 230
    assert schedules.total_steps({'epochs': 9.9}, 97) == 960  # airbench94's 9.9 epochs at batch 512
    assert len(schedules.step_settings({**cli.hyp, 'epochs': 2.3}, 100)) == 230


@pytest.mark.parametrize('text', ['', '1', '0:1:2', 'a:1', '3:1,2:0', '-1:0'])
def test_bad_schedules_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        schedules.parse_schedule(text)


def test_the_schedule_reaches_the_optimizer_each_step(cifar):
    h = {**cli.hyp, 'epochs': 2, 'momentum_schedule': schedules.parse_schedule('0:0.5,1:0.9'),
         'wd_schedule': schedules.parse_schedule('0:0,1:1e-3')}
    model = networks.make_model(0.125, 'cpu', torch.float32)
    opt = optimizers.make_optimizer(model, h)
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=256, n_test=10)
    settings = schedules.step_settings(h, 2)
    train.train_epoch(model, opt, data.train_batches(128), settings[2:], h)
    group = opt.param_groups[0]
    scale = optimizers.loss_scale(h)  # the step back-propagates loss x scale: SGD gets lr / scale, wd x scale
    assert scale == h['batch_size'] == 512
    assert (group['lr'], group['momentum'], group['weight_decay']) == (settings[3]['lr'] / scale, 0.9, 1e-3 * scale)
    assert group['nesterov']


def test_evaluate_flip_tta_averages_image_and_mirror():
    torch.manual_seed(0)
    model = networks.make_model(0.25, 'cpu', torch.float32).eval()
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.arange(8) % 10
    with torch.no_grad():
        logits = 0.5 * (model(x) + model(x.flip(3)))
    res = train.evaluate(model, [(x[:5], y[:5]), (x[5:], y[5:])], tta=1)
    assert res['count'] == 8
    assert torch.isclose(res['loss'], F.cross_entropy(logits, y, reduction='sum'), rtol=1e-5)
    assert res['correct'] == (logits.argmax(1) == y).sum()
    assert model.training, 'evaluate must put the model back into training mode'


@pytest.mark.gpu
def test_gpu_epoch_has_no_host_sync(cifar):
    data = data_gpu.DeviceCIFAR10(cifar, 'cuda', torch.float16, n_train=10240, n_test=1000)
    h = cli.hyp
    model = networks.make_model(1.0, 'cuda', torch.float16)
    opt = optimizers.make_optimizer(model, h)
    settings = schedules.step_settings(h, data.n_train // h['batch_size'])
    train.train_epoch(model, opt, data.train_batches(h['batch_size']), settings, h)  # lazy init outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        totals = train.train_epoch(model, opt, data.train_batches(h['batch_size']), settings, h)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert totals['count'].item() == 20 * h['batch_size']


@pytest.mark.gpu
def test_gpu_precision_and_layout():
    model = networks.make_model(1.0, 'cuda', torch.float16)
    x = torch.randn(16, 3, 32, 32, device='cuda').half().contiguous(memory_format=torch.channels_last)
    out, layouts = conv_outputs_channels_last(model, x)
    assert out.dtype == torch.float16 and all(layouts)
    assert all(m.weight.dtype == torch.float32 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_ema_after_one_step_equals_the_formula_and_is_kept_in_fp32(cifar):
    torch.manual_seed(0)
    model = networks.make_model(0.125, 'cpu', torch.float16)
    before = [t.detach().float().clone() for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]]
    ema = optimizers.EMA(model, decay=0.9)
    opt = optimizers.make_optimizer(model, cli.hyp)
    x = data_gpu.normalize(cifar['train_x'][:32], torch.float16).contiguous(memory_format=torch.channels_last)
    setting = {'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4, 'blf': 1.0}
    train.train_epoch(model, opt, [(x, cifar['train_y'][:32])], [setting], cli.hyp, ema=ema)
    after = [t.detach().float() for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]]
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), 'the step changed nothing'
    for shadow, b, a in zip(ema.shadow, before, after):
        assert shadow.dtype == torch.float32
        torch.testing.assert_close(shadow, 0.9 * b + 0.1 * a, rtol=1e-6, atol=1e-7)
    averaged = ema.model()
    assert averaged is not model and averaged.linear.weight.dtype == torch.float16
    torch.testing.assert_close(averaged.linear.weight.float(), ema.shadow[len(list(model.parameters())) - 1].half().float())


def test_tta_2_averages_six_views():
    torch.manual_seed(0)
    model = networks.make_model(0.25, 'cpu', torch.float32).eval()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.arange(4)
    # the 1-pixel shifts by index, independently of F.pad: up-left takes row/column i - 1 (reflected:
    # -1 -> 1), down-right takes i + 1 (32 -> 30)
    up, down = torch.tensor([1] + list(range(31))), torch.tensor(list(range(1, 32)) + [30])
    up_left, down_right = x[:, :, up][:, :, :, up], x[:, :, down][:, :, :, down]
    with torch.no_grad():
        views = [x, x.flip(3), up_left, up_left.flip(3), down_right, down_right.flip(3)]
        logits = sum(model(v.contiguous()) for v in views) / 6
    # the views themselves, exactly: the global max-pool can hide an edge pixel from the logits
    assert all(torch.equal(got, want) for got, want in zip(train.tta_views(x, 2), views, strict=True))
    res = train.evaluate(model, [(x, y)], tta=2)
    torch.testing.assert_close(res['loss'], F.cross_entropy(logits, y, reduction='sum'), rtol=1e-5, atol=1e-5)
    assert res['correct'] == (logits.argmax(1) == y).sum()


def test_plateau_notes_every_n_epochs_and_stops_after_m():
    plateau = train.Plateau(note=2, stop=3)
    events = [plateau.update(epoch, loss) for epoch, loss in enumerate([1.0, 0.8, 0.9, 0.85, 0.81, 0.7, 0.75], 1)]
    lines = [line for line, _ in events]
    assert lines[:4] == [None, None, None, '# test loss has not improved for 2 epochs (best 0.8000 at epoch 2)']
    assert [stop for _, stop in events] == [False, False, False, False, True, False, False]
    ties = train.Plateau(note=1, stop=2)
    assert [ties.update(epoch, 1.0)[1] for epoch in (1, 2, 3)] == [False, False, True], 'an equal loss is no improvement'
    quiet = train.Plateau(note=0, stop=0)
    assert all(quiet.update(e, 1.0) == (None, False) for e in range(10))


def test_dropout_sits_before_the_classifier_and_is_off_in_eval():
    torch.manual_seed(0)
    model = networks.make_model(0.25, 'cpu', torch.float32, dropout=0.5)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert not torch.equal(model(x), model(x)), 'dropout is random in training mode'
    model.eval()
    assert torch.equal(model(x), model(x))
    assert isinstance(networks.make_model(0.25, 'cpu', torch.float32).dropout, nn.Identity)


def test_early_stop_ends_the_run_and_says_so(cifar, monkeypatch):
    calls = []

    def worsening_evaluate(model, batches, tta=0, amp=False):
        calls.append(tta)
        return {'loss': torch.tensor(10.0 + len(calls)), 'correct': torch.tensor(1.0), 'count': 10}
    monkeypatch.setattr(train, 'evaluate', worsening_evaluate)
    h = {**cli.hyp, 'epochs': 6, 'width': 0.125, 'batch_size': 128, 'early_stop': 2, 'plateau': 1}
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=256, n_test=10)
    rows, lines = [], []
    result = train.train_run(h, data, 0, 'cpu', torch.float32, rows.append, log=lines.append)
    assert [r['epoch'] for r in rows] == [1, 2, 3] and result['stopped_at_epoch'] == 3
    assert lines == ['# test loss has not improved for 1 epochs (best 1.1000 at epoch 1)',
                     '# test loss has not improved for 2 epochs (best 1.1000 at epoch 1)',
                     '# early stop after epoch 3 (--early-stop 2)']
    assert calls == [0, 0, 0, h['tta']], 'three epoch evaluations, then the final one'


def test_tta_3_weighs_the_plain_pair_half_and_each_shifted_pair_a_quarter():
    """airbench94's weights, checked on a network whose logits are known per view: a constant
    output per view makes the weighted mean a hand sum. Would catch equal weights (1/6 each)."""
    views = train.tta_views(torch.zeros(1, 3, 32, 32), 3)
    assert len(views) == 6 and sum(train.tta_weights(3)) == 1.0
    outputs = iter(torch.tensor([[6.0, 0.0]]) * k for k in range(1, 7))

    class Known(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return next(outputs)
    res = train.evaluate(Known(), [(torch.zeros(1, 3, 32, 32), torch.tensor([1]))], tta=3)
    mean = 0.25 * 6 + 0.25 * 12 + 0.125 * (18 + 24 + 30 + 36)  # 18 (equal weights: 21)
    want = torch.nn.functional.cross_entropy(torch.tensor([[mean, 0.0]]), torch.tensor([1]), reduction='sum')
    torch.testing.assert_close(res['loss'], want)


def test_a_run_built_from_flags_gets_the_resnet9_options(cifar):
    """train.run_parts passes post 8's tricks and dropout from the run's settings to ResNet-9."""
    h = {**cli.hyp, 'width': 0.125, 'activation': 'celu', 'ghost_bn': 32, 'frozen_bn_scale': 1, 'pool_before_bn': 1,
         'whiten': 3, 'dropout': 0.1}
    model = train.run_parts(h, 'cpu', torch.float32, 0)['model']
    assert isinstance(model, networks.ResNet9) and model.whiten is not None and model.dropout.p == 0.1
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(isinstance(b, networks.GhostBatchNorm) and not b.weight.requires_grad for b in bns)
    assert [type(m).__name__ for m in model.layer2[0]] == ['Conv2d', 'MaxPool2d', 'GhostBatchNorm', 'CELU']


def small_run_hyp(**extra):
    return {**cli.hyp, 'width': 0.125, 'batch_size': 128, 'epochs': 2, 'eval_batch_size': 100, 'tta': 0, **extra}


def test_the_final_evaluation_sees_lookaheads_slow_weights(cifar, monkeypatch):
    """6 steps, lookahead every 5: after step 6 the weights are fast ones again; the final
    evaluation must see the slow weights that finish() hands back, the epochs' evaluations not."""
    lookaheads, at_slow = [], []
    real_lookahead = optimizers.Lookahead
    monkeypatch.setattr(optimizers, 'Lookahead', lambda *a, **k: lookaheads.append(real_lookahead(*a, **k)) or lookaheads[-1])
    real_evaluate = train.evaluate

    def spy(model, batches, **kw):
        la = lookaheads[-1]
        at_slow.append(all(torch.equal(p, s) for p, s in zip(la.params, la.slow)))
        return real_evaluate(model, batches, **kw)
    monkeypatch.setattr(train, 'evaluate', spy)
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=384, n_test=100)
    train.train_run(small_run_hyp(lookahead=1), data, 0, 'cpu', torch.float32, lambda row: None)
    assert lookaheads[-1].t == 6 and at_slow == [False, False, True]


class FakeDataParallel(train.distributed.Group):
    """Rank 0 of 2 of a data-parallel run, without a process group: no DDP, no barriers."""

    def __init__(self):
        super().__init__(rank=0, world=2, data_parallel=True)

    def wrap(self, model, device):
        return model

    def barrier(self):
        pass


def test_a_data_parallel_run_steps_through_the_global_batchs_schedule(cifar, monkeypatch):
    """Each rank takes n_train / global batch steps per epoch, at the one-process run's settings
    (lr, momentum, decay per step), although its own slice of each batch is half as large."""
    seen = []
    real_epoch = train.train_epoch
    monkeypatch.setattr(train, 'train_epoch', lambda model, opt, batches, settings, *a: seen.append(list(settings))
                        or real_epoch(model, opt, batches, settings, *a))
    h = small_run_hyp()
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=512, n_test=100)
    train.train_run(h, data, 0, 'cpu', torch.float32, lambda row: None, group=FakeDataParallel())
    expected = schedules.step_settings(h, 512 // 128)  # one process, the whole batch
    assert [len(s) for s in seen] == [4, 4] and seen[0] + seen[1] == expected


def test_warm_up_evaluates_the_full_and_the_last_partial_test_batch(cifar, monkeypatch):
    """250 test images in batches of 100: warm-up must meet both shapes (100 and 50), or cuDNN
    tunes the last one inside the clock."""
    sizes = []
    real_evaluate = train.evaluate
    monkeypatch.setattr(train, 'evaluate', lambda model, batches, **kw: real_evaluate(
        model, [sizes.append(len(y)) or (x, y) for x, y in batches], **kw))
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', n_train=512, n_test=250)
    train.warm_up(small_run_hyp(), data, 'cpu', torch.float32)
    assert sorted(sizes) == [50, 100]
