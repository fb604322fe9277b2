"""Run under torchrun by tests/test_distributed.py: one data-parallel training step of train.py's
own step function on this rank's half of a fixed real batch; rank 0 saves the updated weights.
BatchNorm runs in eval mode so that per-rank statistics do not enter the comparison. As train_run
does, the rank's step keeps the global batch's loss scale (64), so lr / 64 matches it. The test
calls one_step itself, in one process on the whole batch, for the reference."""
import sys

import torch

import cli
import data_gpu
import distributed
import networks
import optimizers
import train

HYP = {**cli.hyp, 'batch_size': 64, 'width': 0.125, 'precision': 'fp32', 'label_smoothing': 0.2, 'loss_scale': 64.0}


def first_batch(cifar):
    x = data_gpu.normalize(cifar['train_x'][:64], torch.float32).contiguous(memory_format=torch.channels_last)
    return x, cifar['train_y'][:64]


def one_step(x, y, wrap=lambda model: model):
    """The seeded model after one train.train_step on (x, y); returns the model."""
    torch.manual_seed(0)
    model = networks.make_model(HYP['width'], 'cpu', torch.float32)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    opt = optimizers.make_optimizer(model, HYP)
    optimizers.apply_setting(opt, {'lr': 0.4, 'momentum': 0.9, 'weight_decay': 5e-4, 'blf': 1.0}, HYP)
    train.train_step(wrap(model), opt, x, y, {**HYP, 'batch_size': len(y)}, train.epoch_totals('cpu', False))
    return model


if __name__ == '__main__':
    cifar_dir, out = sys.argv[1], sys.argv[2]
    group, _ = distributed.join('cpu', data_parallel=True)
    cifar = data_gpu.load_cifar10(cifar_dir, download=False, log=lambda line: None)
    x, y = group.local_batch(*first_batch(cifar))
    model = one_step(x, y, lambda m: group.wrap(m, torch.device('cpu')))
    if group.leader:
        torch.save([p.detach() for p in model.parameters()], out)
    group.close(wait_for_peers=True)
    distributed.end_process(0)
