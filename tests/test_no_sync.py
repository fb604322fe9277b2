"""No host sync inside an epoch, checked on the CPU: every training configuration runs one epoch
under tests/syncguard.py, which records each op that would make the host wait for a GPU.

The GPU tests check the same under torch.cuda.set_sync_debug_mode("error"); CI has no GPU, so
without this file a `.item()` slipped into a step would go unnoticed until a GPU run.
"""
import pytest
import torch

import blf_step
import cli
import data_gpu
import schedules
import train
from syncguard import SyncGuard

CONFIGS = {
    'plain': {},
    'label-smoothing-schedules': {'label_smoothing': 0.2, 'lr_schedule': [(0, 0.0), (1, 0.4)],
                                  'momentum_schedule': [(0, 0.0), (1, 0.9)], 'wd_schedule': [(0, 5e-4), (1, 0.0)]},
    'blf-mask-triton': {'blf': 0.8, 'blf_mode': 'mask', 'blf_impl': 'triton'},
    'blf-mask-torch': {'blf': 0.8, 'blf_mode': 'mask', 'blf_impl': 'torch'},
    'blf-compact-triton': {'blf': 0.8, 'blf_mode': 'compact', 'blf_impl': 'triton', 'blf_bucket': 16},
    'blf-compact-torch': {'blf': 0.8, 'blf_mode': 'compact', 'blf_impl': 'torch', 'blf_bucket': 16},
    'random-control-compact': {'blf': 0.8, 'subset_control': 'random', 'blf_bucket': 16},
    'random-control-mask': {'blf': 0.8, 'blf_mode': 'mask', 'subset_control': 'random'},
    'blf-bottom-compact': {'blf': 0.8, 'blf_bottom': 0.1, 'blf_bucket': 16, 'blf_schedule': [(0, 1.0), (1, 0.7)]},
    'blf-bottom-mask-round-min': {'blf': 0.8, 'blf_mode': 'mask', 'blf_bottom': 0.1, 'blf_round_to': 8,
                                  'blf_min_samples': 0.25},
    'mixup-blf-compact': {'mixup': 0.4, 'blf': 0.8, 'blf_bucket': 16},
    'cutmix': {'cutmix': 1.0},
    'ema-dropout': {'ema': 0.99, 'dropout': 0.2},
    'clip': {'clip_norm': 1.0},
    'agc': {'agc': 0.05},
    'sgdw-bn-groups': {'wd_mode': 'decoupled', 'bn_weight_decay': 0, 'bn_lr_scale': 8.0},
    'amp-clip-agc': {'precision': 'amp', 'clip_norm': 1.0, 'agc': 0.05},
    'amp-adamw-blf-mask': {'precision': 'amp', 'optimizer': 'adam', 'wd_mode': 'decoupled', 'lr': 1e-3,
                           'blf': 0.8, 'blf_mode': 'mask'},
    # the recipes' pieces: post 8's ResNet-9 options with EMA every 5 steps; airbench94-muon's net
    # and optimizer (Newton-Schulz, the filters' renormalisation) with lookahead and BLF compact
    'myrtle-tricks-blf-compact': {'activation': 'celu', 'ghost_bn': 32, 'frozen_bn_scale': 1, 'pool_before_bn': 1,
                                  'whiten': 3, 'ema': 0.95, 'ema_every': 5, 'blf': 0.8, 'blf_bucket': 32},
    'muon-lookahead-blf-compact': {'net': 'airbench94-muon', 'optimizer': 'muon', 'lr': 40.0, 'lookahead': 1,
                                   'whiten_bias_epochs': 1.5, 'whiten_bias_decay': 1,
                                   'blf': 0.8, 'blf_bucket': 16},
}


@pytest.fixture(scope='module')
def data(cifar):
    return data_gpu.DeviceCIFAR10(cifar, 'cpu', torch.float32, n_train=256, n_test=64)


def guarded_epoch(data, extra, batch=64):
    """One epoch as train_run runs it (schedules, BLF, EMA, scaler, mixer), under the guard."""
    h = {**cli.hyp, 'batch_size': batch, 'width': 0.125, 'precision': 'fp32', 'epochs': 2, **extra}
    backend = blf_step.blf_backend(h['blf_impl'], 'cpu') if h['blf'] is not None else None
    parts = train.run_parts(h, 'cpu', torch.float32, 0, backend)
    steps = data.n_train // batch
    settings = schedules.step_settings(h, steps)[steps // 2:]  # mid-schedule: momentum > 0, BLF p < 1
    host = [parts['blf'].count.host] if parts['blf'] is not None else []
    with SyncGuard(host) as guard:
        totals = train.train_epoch(parts['model'], parts['opt'], data.train_batches(batch), settings, h,
                                   parts['blf'], parts['ema'], parts['scaler'], parts['mixer'], parts['lookahead'])
    assert totals['count'].item() == steps * batch
    return guard.syncs


@pytest.mark.parametrize('name', list(CONFIGS))
def test_an_epoch_makes_no_host_sync(data, name):
    assert guarded_epoch(data, CONFIGS[name]) == []


def test_the_guard_catches_an_int_slipped_into_a_step(data, monkeypatch):
    original = train.mixed_cross_entropy

    def with_a_sync(logits, y, mix, smoothing, reduction='mean'):
        loss = original(logits, y, mix, smoothing, reduction)
        if int(loss) > 1000:  # the kind of line that ends up in a step
            print('diverging')
        return loss
    monkeypatch.setattr(train, 'mixed_cross_entropy', with_a_sync)
    syncs = guarded_epoch(data, {})
    assert len(syncs) == 4 and all(s.startswith('_local_scalar_dense') and 'test_no_sync.py' in s for s in syncs)


def test_the_guard_knows_each_kind_of_sync():
    x = torch.randn(6)  # made outside the guard: device memory, as far as the guard knows
    repeats = torch.tensor([1, 2, 3])
    pinned = torch.zeros(2, dtype=torch.int32)
    cases = {
        'item': lambda: x.sum().item(), 'int': lambda: int(x[0]), 'bool': lambda: bool(x.sum() > 0),
        'format': lambda: f'{x[0]:.2f}', 'mask': lambda: x[x > 0], 'masked_select': lambda: x.masked_select(x > 0),
        'nonzero': lambda: torch.nonzero(x), 'where': lambda: torch.where(x > 0), 'unique': lambda: x.unique(),
        'equal': lambda: torch.equal(x, x), 'tolist': lambda: x.tolist(), 'numpy': lambda: x.numpy(),
        'cpu': lambda: x.cpu(), 'to cpu': lambda: x.to('cpu'), 'repr': lambda: repr(x),
        'repeat_interleave': lambda: torch.repeat_interleave(repeats),
        'host tensor': lambda: x * torch.tensor([2.0]), 'blocking copy to host': lambda: pinned.copy_(x[:2]),
        'pageable copy to device': lambda: x.copy_(torch.arange(6.0)),
        'bool mask assignment': lambda: x.clone().__setitem__(x > 0, 0.0),
    }
    for name, op in cases.items():
        with SyncGuard(host=[pinned]) as guard:
            op()
        assert guard.syncs, name
    fine = {
        'device math': lambda: (x * 2).sum(), 'factory with a device': lambda: torch.zeros(3, device=x.device),
        'async copy into pinned memory': lambda: pinned.copy_(x[:2].int(), non_blocking=True),
        'read pinned memory': lambda: int(pinned[0]), 'index with longs': lambda: x[torch.arange(3, device=x.device)],
        'repeat_interleave with output_size': lambda: torch.repeat_interleave(repeats, output_size=6),
        'python scalar': lambda: x * 2.5,
    }
    for name, op in fine.items():
        with SyncGuard(host=[pinned]) as guard:
            op()
        assert guard.syncs == [], (name, guard.syncs)
