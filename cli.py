"""The command line of train.py: every hyperparameter with its default and help, a recipe's values
over those defaults (recipes.py), and the checks that turn a mistake into one line and exit code 2.

Each key of `hyp` is a flag of the same name with - for _ (`blf_mode` is --blf-mode).
"""


import argparse
import math
import os
import tempfile

import torch

import distributed
import networks
import recipes
from kernels import MAX_BATCH, min_samples
from schedules import parse_schedule



# ----------------------------------------------------------------------------------------------
# Hyperparameters (every one is a flag of the same name with - for _)


hyp = {
    'net': 'resnet9',          # resnet9 (Myrtle), airbench94 or airbench94-muon (networks.py)
    'activation': 'auto',      # auto (the net's own: resnet9 relu, airbench94 gelu), relu, celu, gelu, silu
    'ghost_bn': 0,             # resnet9: BatchNorm statistics over sub-batches of this many images (0 = the whole batch)
    'frozen_bn_scale': 0,      # resnet9: 1 = BatchNorm scales frozen at 1, only the biases learn
    'pool_before_bn': 0,       # resnet9: 1 = conv -> MaxPool -> BN -> activation in the downsampling layers
    'whiten': 0,               # resnet9: 3 = a frozen 3x3 patch-whitening prep layer set from the data, then a 1x1 conv
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
    'optimizer': 'sgd',        # sgd (Nesterov), adam, or muon (Muon on conv filters, Nesterov SGD for the rest)
    'muon_lr': 0.24,           # --optimizer muon: Muon's lr (the schedule's shape scales it: muon_lr x lr(t) / lr)
    'muon_momentum': 0.6,      # --optimizer muon: Muon's Nesterov momentum
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
    'whiten_bias_decay': 0,    # 1: the whitening bias's lr falls linearly to 0 over those epochs (airbench94_muon)
    'lookahead': 0,            # 1: airbench's lookahead (every 5 steps, decay 0.95^5 (t/T)^3), weights handed over at the end
    'ema': 0.0,                # decay per update of an exponential moving average of the weights (0 = off); evaluate with it
    'ema_every': 1,            # update the average every this many steps (Myrtle post 8: 5)
    'compile': 0,              # 1 = torch.compile the network (compiled for every shape in the untimed warm-up)
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
    'net': 'network: resnet9 (Myrtle), airbench94 (2x2 whitening, three conv groups; see networks.py) or '
           'airbench94-muon (the same, with a unit-std head and logits / 256)',
    'activation': 'activation function: auto (the net\'s own: relu for resnet9, gelu for airbench94), relu, '
                  'celu (alpha 0.3, Myrtle post 8), gelu, silu',
    'ghost_bn': 'resnet9: ghost BatchNorm, statistics over sub-batches of this many images in training (0 = off)',
    'frozen_bn_scale': 'resnet9: 1 = BatchNorm scales frozen at 1 (only the biases learn)',
    'pool_before_bn': 'resnet9: 1 = max-pool right after the conv in the downsampling layers (BN and activation on 1/4 of the pixels)',
    'whiten': 'resnet9: 3 = the prep layer becomes a frozen 3x3 patch-whitening conv (from the first 5000 training '
              'images, inside the clock) and a 1x1 conv (Myrtle post 8); 0 = a plain conv',
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
    'optimizer': 'sgd (Nesterov momentum), adam (needs fp32 weights: --precision amp or fp32), or muon '
                 '(airbench94_muon: Muon on the conv filters, Nesterov SGD with --lr for the rest)',
    'muon_lr': '--optimizer muon: Muon\'s learning rate, scaled over the run as the lr schedule is (a gradient scale does not matter to it)',
    'muon_momentum': '--optimizer muon: Muon\'s Nesterov momentum',
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
    'whiten_bias_decay': '1: the whitening bias\'s lr is --lr x --bn-lr-scale falling linearly to 0 over '
                         '--whiten-bias-epochs, apart from the common schedule (airbench94_muon); 0: the common schedule',
    'lookahead': '1: lookahead (every 5 steps the slow weights move to the fast ones with decay 0.95^5 (t/T)^3)',
    'ema': 'decay per update of an exponential moving average of the weights, evaluated instead of them (0 = off)',
    'ema_every': 'update the moving average every this many steps',
    'compile': '1 = torch.compile the network; every shape the run meets is compiled in the untimed warm-up',
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
# Parsing and checks


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


def hyp_of(args):
    """The hyperparameters as the command line resolved them (a recipe's text turned into values
    by the parser), before train.py settles the precision and the loss scale for the device."""
    return {key: getattr(args, key) for key in hyp}


def parse_args(argv):
    """The command line over the chosen recipe (recipes.py) over `hyp`: a flag given wins, then the
    recipe's value, then train.py's default; --recipe X --help shows X's values as the defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--recipe', default='myrtle')
    chosen = pre.parse_known_args(argv)[0].recipe
    defaults = {**hyp, **recipes.RECIPES.get(chosen, {})}
    p = OneLineParser(description="CIFAR-10 speedrun: Myrtle's ResNet-9 (or a --recipe), data on the GPU", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--recipe', default='myrtle', choices=list(recipes.RECIPES),
                   help='a named set of the values below (recipes.py); flags given override it. ' +
                        '; '.join(recipes.NOTES.values()).replace('%', '%%'))
    special = {'blf': {'type': float}, 'blf_mode': {'choices': ['compact', 'mask']},
               'net': {'choices': list(networks.NETWORKS)}, 'epochs': {'type': float},
               'activation': {'choices': ['auto', 'relu', 'celu', 'gelu', 'silu']}, 'whiten': {'type': int, 'choices': [0, 3]},
               'bn_weight_decay': {'type': float}, 'whiten_bias_epochs': {'type': float},
               'wd_mode': {'choices': ['l2', 'decoupled']}, 'optimizer': {'choices': ['sgd', 'adam', 'muon']},
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
        (0 <= args.lr_peak < 1, f'--lr-peak must be in [0, 1) (0: no warm-up), got {args.lr_peak}'),
        (args.lr_start >= 0 and args.lr_end >= 0, '--lr-start and --lr-end must be >= 0'),
        (0 <= args.momentum < 1, f'--momentum must be in [0, 1), got {args.momentum}'),
        (args.weight_decay >= 0, f'--weight-decay must be >= 0, got {args.weight_decay}'),
        (args.bn_weight_decay >= 0, f'--bn-weight-decay must be >= 0, got {args.bn_weight_decay}'),
        (args.whiten_bias_epochs >= 0, f'--whiten-bias-epochs must be >= 0, got {args.whiten_bias_epochs}'),
        (args.lookahead in (0, 1), f'--lookahead must be 0 or 1, got {args.lookahead}'),
        (args.net == 'resnet9' or not any(getattr(args, k) for k in networks.RESNET9_OPTIONS),
         '--dropout, --ghost-bn, --frozen-bn-scale, --pool-before-bn and --whiten are for --net resnet9'),
        (args.ghost_bn >= 0 and (not args.ghost_bn or args.batch_size % args.ghost_bn == 0),
         f'--ghost-bn must be >= 0 and divide --batch-size {args.batch_size}, got {args.ghost_bn}'),
        (args.frozen_bn_scale in (0, 1) and args.pool_before_bn in (0, 1), '--frozen-bn-scale and --pool-before-bn are 0 or 1'),
        (args.optimizer != 'muon' or args.precision != 'amp',
         '--optimizer muon: use --precision fp16, bf16 or fp32 (amp\'s scaler would wait for the GPU at every step)'),
        (args.muon_lr > 0 and 0 <= args.muon_momentum < 1, '--muon-lr must be > 0 and --muon-momentum in [0, 1)'),
        (args.ema_every >= 1, f'--ema-every must be at least 1, got {args.ema_every}'),
        (args.compile in (0, 1), f'--compile must be 0 or 1, got {args.compile}'),
        (args.whiten_bias_decay in (0, 1), f'--whiten-bias-decay must be 0 or 1, got {args.whiten_bias_decay}'),
        (not (args.compile and args.data_parallel), '--compile with --data-parallel is not supported yet'),
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
        (args.blf is None or args.blf_impl != 'triton' or args.batch_size <= MAX_BATCH,
         f'--blf-impl triton takes batches up to {MAX_BATCH}; use --blf-impl torch for larger ones'),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    n_train = args.n_train or 50000
    if args.batch_size > n_train:
        raise UserError(f'--batch-size {args.batch_size} is larger than the training set ({n_train} images)')
    if args.blf_bottom and min_samples(args.blf_bottom, args.batch_size) >= args.batch_size:
        raise UserError(f'--blf-bottom {args.blf_bottom} keeps all {args.batch_size} rows of a batch as bottom rows: '
                        'leave at least one for the top')
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
