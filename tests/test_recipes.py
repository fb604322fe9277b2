"""recipes.py and --recipe: resolution order, airbench94's values and conversions, and short CPU runs."""
import json
import os

import pytest
import torch

import cli
import data_gpu
import recipes
import schedules
import train
from conftest import recipe_hyp, run_script


def test_a_flag_overrides_its_recipe_and_the_recipe_overrides_the_defaults():
    args = cli.parse_args(['--recipe', 'airbench94', '--epochs', '12', '--label-smoothing', '0.1'])
    assert args.net == 'airbench94' and args.batch_size == 1024 and args.flip == 2 and args.tta == 3
    assert args.epochs == 12 and args.label_smoothing == 0.1
    plain = cli.parse_args([])
    assert plain.recipe == 'myrtle' and plain.net == 'resnet9' and plain.epochs == 24 and plain.batch_size == 512


@pytest.mark.parametrize('recipe', list(recipes.RECIPES))
def test_every_recipe_resolves_to_values_train_py_can_use(recipe):
    """A recipe is command-line text where a flag takes text (a schedule's knots): resolved as train.py
    resolves it, each value has its default's type, and a schedule is a list of (epoch, value) knots."""
    h = recipe_hyp(recipe)
    for key, value in h.items():
        if key.endswith('_schedule'):
            assert value is None or (isinstance(value, list) and all(len(knot) == 2 for knot in value)), (key, value)
        elif cli.hyp[key] is not None:  # a number where the default is a number (--epochs 9.9 over 24)
            number = (int, float)
            assert type(value) is type(cli.hyp[key]) or (type(value) in number and type(cli.hyp[key]) in number), (key, value)
    assert schedules.step_settings(h, 4)  # every schedule evaluates


def test_airbench94_hyperparameters_are_the_papers_converted_to_the_mean_loss():
    """airbench's SGD on the summed loss: lr 11.5 / 7850.7 = 0.0014648 per step, L2 weight decay
    1.3625 in torch's form; ours, for the batch-mean loss at batch 1024, are 1024 x lr and wd / 1024."""
    r = recipes.RECIPES['airbench94']
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    assert r['lr'] / 1024 == pytest.approx(11.5 / kilostep) == pytest.approx(0.0014648, rel=1e-4)
    assert r['weight_decay'] * 1024 == pytest.approx(0.0153 * 1024 / kilostep / (11.5 / kilostep))
    assert r['lr'] * r['weight_decay'] == pytest.approx(0.0153 * 1024 / kilostep)  # the decay per step
    # the rest of the paper's recipe: Nesterov momentum 0.85, lookahead, biases at lr x 64 with the
    # same decay per step, label smoothing 0.2, alternating flip, translate 2, no Cutout, 6-view TTA,
    # the whitening bias trained for 3 epochs
    assert (r['momentum'], r['lookahead'], r['bn_lr_scale'], r['bn_weight_decay']) == (0.85, 1, 64, 1 / 64)
    assert (r['label_smoothing'], r['flip'], r['crop_pad'], r['cutout'], r['tta'], r['whiten_bias_epochs']) == \
        (0.2, 2, 2, 0, 3, 3)
    h = {**cli.hyp, **r}
    settings = schedules.step_settings(h, 48)  # 48 steps per epoch at batch 1024
    lrs = [s['lr'] for s in settings]
    assert len(settings) == round(9.9 * 48) == 475
    assert lrs[0] == pytest.approx(0.2 * r['lr']) and max(lrs) == pytest.approx(r['lr'], rel=5e-3)
    assert lrs.index(max(lrs)) == pytest.approx(0.23 * 475, abs=1)
    assert 0.07 * r['lr'] < lrs[-1] < 0.075 * r['lr']  # the last step sits 1/48 epoch before the end


def test_the_whitening_bias_trains_for_its_epochs_only(cifar, monkeypatch):
    data = data_gpu.DeviceCIFAR10(cifar, 'cpu', torch.float32, n_train=256, n_test=50, crop_pad=2, cutout=0)
    seen = {}
    real_parts = train.run_parts

    def keep(*args, **kwargs):
        seen.update(real_parts(*args, **kwargs))
        return seen
    monkeypatch.setattr(train, 'run_parts', keep)
    biases = {}
    for epochs in (0.0, 5.0):
        h = {**recipe_hyp('airbench94'), 'batch_size': 64, 'epochs': 2, 'width': 0.125, 'precision': 'fp32',
             'whiten_bias_epochs': epochs}
        train.train_run(h, data, 0, 'cpu', torch.float32, lambda row: None, log=lambda line: None)
        biases[epochs] = seen['model'].whiten.bias.detach().clone()
    assert torch.equal(biases[0.0], torch.zeros(24)), 'frozen from the start: never moves'
    assert biases[5.0].abs().max() > 0


@pytest.mark.parametrize('extra', [[], ['--blf', '0.7', '--blf-start-epoch', '1', '--blf-bucket', '16'],
                                   ['--blf', '0.9', '--blf-mode', 'mask', '--subset-control', 'random']])
def test_a_short_airbench94_run_learns_and_records_its_recipe(cifar_dir, tmp_path, extra):
    """1024 images, 2 epochs of the airbench94 recipe at an eighth of its width: above chance (a
    guessing model scores 0.10 +- 0.013 on 500 images); BLF runs on it in both modes."""
    res = run_script('train.py', '--recipe', 'airbench94', '--device', 'cpu', '--data-dir', cifar_dir,
                     '--out-dir', tmp_path, '--n-train', 1024, '--n-test', 500, '--epochs', 2, '--batch-size', 128,
                     '--width', 0.125, *extra)
    assert res.returncode == 0, res.stderr
    (record,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    config = json.load(open(os.path.join(record, 'config.json')))
    assert config['recipe'] == 'airbench94' and config['hyp']['net'] == 'airbench94' and config['hyp']['epochs'] == 2
    (result,) = [json.loads(line) for line in open(os.path.join(record, 'runs.jsonl'))]
    epochs = [json.loads(line) for line in open(os.path.join(record, 'epochs.jsonl'))]
    if extra:
        assert all(0 < row['kept'] < 1 for row in epochs[1 if '--blf-mode' in extra else 0:])
    else:
        assert result['test_acc'] >= 0.2, result
    assert 'weighted 6-view TTA' in res.stdout


def test_airbench94_muon_hyperparameters_are_the_published_ones_converted():
    """Per summed-loss step at batch 2000: SGD lr 0.67 (head) and 0.053 (biases), weight decay 2e-6 x 2000
    = 0.004 per step for both (torch's weight_decay = 0.004 / lr), Muon lr 0.24 and momentum 0.6; the
    lr falls linearly from the first step to 0, Muon's with it; the whitening bias's from 0.053 to 0
    over its own 3 epochs (75 steps). Checked through apply_setting, the values the optimizer's
    groups actually get."""
    import networks
    import optimizers
    h = {**recipe_hyp('airbench94-muon'), 'width': 0.125, 'precision': 'fp32'}
    h['loss_scale'] = optimizers.loss_scale(h)
    assert h['loss_scale'] == 2000 and h['net'] == 'airbench94-muon' and h['epochs'] == 8
    model = networks.make_model(h['width'], 'cpu', torch.float32, net=h['net'])
    opt = optimizers.make_optimizer(model, h)
    settings = schedules.step_settings(h, 25)  # 50000 / 2000 steps per epoch
    assert len(settings) == 200
    muon, head, biases, whiten_bias = opt.param_groups
    assert all(p.dim() == 4 for p in muon['params']) and muon['muon'] and not head['muon'] and not biases['muon']
    assert head['params'] == [model.linear.weight] and whiten_bias['params'] == [model.whiten.bias]
    assert not any(p is model.whiten.bias for p in biases['params'])
    for step, share, whiten_share in ((0, 1.0, 1.0), (30, 0.85, 0.6), (100, 0.5, 0.0), (150, 0.25, 0.0)):
        optimizers.apply_setting(opt, settings[step], h)
        assert muon['lr'] == pytest.approx(0.24 * share) and muon['momentum'] == 0.6 and muon['weight_decay'] == 0
        assert head['lr'] == pytest.approx(0.67 * share) and biases['lr'] == pytest.approx(0.053 * share)
        assert head['momentum'] == biases['momentum'] == 0.85
        assert head['weight_decay'] == pytest.approx(0.004 / 0.67) and biases['weight_decay'] == pytest.approx(0.004 / 0.053)
        assert whiten_bias['lr'] == pytest.approx(0.053 * whiten_share, abs=1e-12)
        assert whiten_bias['weight_decay'] == biases['weight_decay']


def test_myrtle_tricks_and_fast_resolve_to_their_published_values():
    args = cli.parse_args(['--recipe', 'myrtle-tricks'])
    assert args.lr_schedule == [(0, 0), (2, 0.9), (8, 0.09), (10, 0.09)] and args.epochs == 10
    assert args.lr == pytest.approx(0.4 * 1.5 * 1.5)  # post 4's lr and post 8's two x1.5 steps
    assert (args.activation, args.ghost_bn, args.frozen_bn_scale, args.pool_before_bn, args.whiten) == ('celu', 32, 1, 1, 3)
    assert args.ema == pytest.approx(0.99 ** 5) and args.ema_every == 5 and args.cutout == 0 and args.tta == 1
    assert args.label_smoothing == 0.2 and args.bn_lr_scale == 64 and args.bn_weight_decay == pytest.approx(1 / 64)
    fast = cli.parse_args(['--recipe', 'fast'])
    assert (fast.batch_size, fast.epochs, fast.label_smoothing, fast.activation) == (1536, 7.6, 0.09, 'silu')
    assert fast.lr == pytest.approx(0.67 * 1536) and fast.weight_decay == recipes.RECIPES['airbench94-muon']['weight_decay']
    assert (fast.muon_lr, fast.muon_momentum) == (0.205, 0.655)  # hiverge's Muon settings
    assert 'CANDIDATE, never measured on a GPU' in recipes.NOTES['fast']


@pytest.mark.parametrize('recipe, extra', [('myrtle-tricks', ['--blf', '0.7', '--blf-start-epoch', '1', '--blf-bucket', '32']),
                                           ('airbench94-muon', ['--blf', '0.7', '--blf-start-epoch', '1', '--blf-bucket', '16']),
                                           ('fast', ['--blf', '0.9', '--blf-mode', 'mask', '--subset-control', 'random'])])
def test_every_new_recipe_runs_with_blf_on_the_cpu(cifar_dir, tmp_path, recipe, extra):
    """Each recipe at an eighth of its width on 1024 images, with BatchLossFilter (compact, or mask
    with the random control): it completes, filters, and records the recipe."""
    res = run_script('train.py', '--recipe', recipe, '--device', 'cpu', '--data-dir', cifar_dir, '--out-dir', tmp_path,
                     '--n-train', 1024, '--n-test', 200, '--epochs', 2, '--batch-size', 128, '--width', 0.125, *extra)
    assert res.returncode == 0, res.stderr
    (record,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    assert json.load(open(os.path.join(record, 'config.json')))['recipe'] == recipe
    epochs = [json.loads(line) for line in open(os.path.join(record, 'epochs.jsonl'))]
    assert len(epochs) == 2 and all(0 < row['kept'] < 1 and row['train_loss'] < 5 for row in epochs[1:])
    assert f'# recipe {recipe} (flags given override it): {recipes.NOTES[recipe]}' in open(os.path.join(record, 'log.txt')).read()
