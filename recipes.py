"""Recipes: named sets of train.py's hyperparameters (data, not code). A flag given on the command
line overrides its recipe's value; --help and the run record show the resolved values.

    python train.py --recipe airbench94             # the airbench94 paper's recipe on this repo's data path
    python train.py --recipe airbench94 --blf 0.9   # with BatchLossFilter on top

Units: --lr and --weight-decay are for the batch-mean loss (train.py back-propagates it times the
loss scale, the batch size by default, and hands SGD lr / scale and weight decay x scale, so the
numbers below are the published ones converted once, here).
"""

# airbench94 (arXiv 2404.00498): SGD on the summed loss with lr = 11.5 / (1024 (1 + 1 / (1 - 0.85)))
# = 0.0014648 per step and L2 weight decay 0.0153 x 1024 / that same 7850.7 = 0.0019958 per step,
# given to torch's SGD as weight_decay = 0.0019958 / 0.0014648 = 1.3625 (so that lr x wd is the
# decoupled decay). For the batch-mean loss at batch 1024: lr = 0.0014648 x 1024 = 1.5 and
# weight_decay = 1.3625 / 1024 = 0.0013306. Biases (BatchNorm's and the whitening's) get lr x 64 and
# weight decay / 64: the same decay per step.
AIRBENCH94_LR = 11.5 / (1024 * (1 + 1 / (1 - 0.85))) * 1024
AIRBENCH94_WD = 0.0153 * 1024 / (1024 * (1 + 1 / (1 - 0.85))) / (11.5 / (1024 * (1 + 1 / (1 - 0.85)))) / 1024

RECIPES = {
    # Myrtle's ResNet-9, post 4 of "How to train your ResNet": train.py's own defaults
    'myrtle': {},
    'airbench94': {
        'net': 'airbench94', 'batch_size': 1024, 'epochs': 9.9, 'momentum': 0.85,
        'lr': AIRBENCH94_LR, 'weight_decay': AIRBENCH94_WD, 'bn_lr_scale': 64.0, 'bn_weight_decay': 1 / 64,
        # warm-up from 0.2x to 1x over the first 23% of the steps, then linear down to 0.07x (stretches with --epochs)
        'lr_start': 0.2, 'lr_peak': 0.23, 'lr_end': 0.07,
        'label_smoothing': 0.2, 'flip': 2, 'crop_pad': 2, 'cutout': 0, 'tta': 3,
        'whiten_bias_epochs': 3.0, 'lookahead': 1,
    },
}

# airbench94_muon: summed loss at batch 2000; Nesterov SGD (momentum 0.85) with lr 0.67 per step for the
# head and 0.053 for the biases, and weight decay 2e-6 x 2000 = 0.004 per step for both, given to
# torch's SGD as weight_decay = 0.004 / lr. For the batch-mean loss at batch B (the loss scale hands
# SGD lr / B and weight decay x B): lr = 0.67 B, weight_decay = 0.004 / 0.67 / B = 2e-6 / 0.67 (the
# same at every batch, since airbench's decay is 2e-6 x batch), and the biases' lr x 0.053 / 0.67
# with weight decay x 0.67 / 0.053 (the same decay per step). Muon (conv filters): lr 0.24, momentum
# 0.6. The lr decays linearly to 0 from the first step (no warm-up), Muon's with it. The net divides
# its logits by 256 and starts its head at unit std (networks.airbench94_muon_net). The whitening
# bias's lr falls from 0.053 to 0 over its 3 epochs on a schedule of its own (--whiten-bias-decay).
MUON_HEAD_LR, MUON_BIAS_LR = 0.67, 0.053


def airbench94_muon(batch_size):
    return {'net': 'airbench94-muon', 'optimizer': 'muon', 'batch_size': batch_size, 'momentum': 0.85,
            'lr': MUON_HEAD_LR * batch_size, 'weight_decay': 2e-6 / MUON_HEAD_LR,
            'bn_lr_scale': MUON_BIAS_LR / MUON_HEAD_LR, 'bn_weight_decay': MUON_HEAD_LR / MUON_BIAS_LR,
            'muon_lr': 0.24, 'muon_momentum': 0.6, 'lr_start': 1.0, 'lr_peak': 0.0, 'lr_end': 0.0,
            'label_smoothing': 0.2, 'flip': 2, 'crop_pad': 2, 'cutout': 0, 'tta': 3, 'whiten_bias_epochs': 3.0,
            'whiten_bias_decay': 1}


RECIPES.update({
    # Myrtle post 8's final recipe ("bag of tricks", 94.1% in 26 s on a V100): pool before BN, label
    # smoothing 0.2, CELU (alpha 0.3), ghost BatchNorm over sub-batches of 32, frozen BN scales,
    # 3x3 patch whitening, BN biases' lr x64 (and weight decay / 64), EMA every 5 steps with momentum
    # 0.99 per step (0.99^5 per update), flip TTA, no Cutout, 10 epochs. The lr peaks at post 4's 0.4
    # x 1.5 x 1.5 = 0.9 (the post's two "lr x1.5" steps; batch-mean units); the shape (peak at epoch
    # 2, down to a tenth at epoch 8, held for the last 2 epochs while EMA averages) is that of
    # Myrtle's final code as a re-implementation shows it, not stated in the post.
    'myrtle-tricks': {
        'epochs': 10, 'lr': 0.9, 'lr_schedule': '0:0,2:0.9,8:0.09,10:0.09', 'label_smoothing': 0.2,
        'activation': 'celu', 'ghost_bn': 32, 'frozen_bn_scale': 1, 'pool_before_bn': 1, 'whiten': 3,
        'bn_lr_scale': 64.0, 'bn_weight_decay': 1 / 64, 'ema': 0.99 ** 5, 'ema_every': 5, 'cutout': 0, 'tta': 1,
    },
    'airbench94-muon': {**airbench94_muon(2000), 'epochs': 8},
    # ours, a candidate until a GPU has measured it (n >= 25): airbench94-muon with hiverge's changes
    # that this repo has (batch 1536, 7.6 epochs, label smoothing 0.09, SiLU, Muon lr 0.205 and
    # momentum 0.655); not hiverge's colour jitter, SVD whitening or selective TTA
    'fast': {**airbench94_muon(1536), 'epochs': 7.6, 'label_smoothing': 0.09, 'activation': 'silu',
             'muon_lr': 0.205, 'muon_momentum': 0.655},
})

NOTES = {
    'myrtle': "Myrtle's ResNet-9 (24 epochs, batch 512, Cutout, flip TTA): 94.1% in 79 s on a V100 (published)",
    'airbench94': 'airbench94: 2x2 whitening net, 9.9 epochs at batch 1024, lookahead, alternating flip, '
                  '6-view TTA: 94.01% in 3.83 s on an A100 (published); not yet measured here',
    'myrtle-tricks': "Myrtle post 8's bag of tricks (whitening, ghost BN, CELU, EMA, 10 epochs): 94.1% in 26 s on "
                     'a V100 (published); not yet measured here',
    'airbench94-muon': 'airbench94_muon: Muon on the conv filters, batch 2000, 8 epochs: 94.01% in 2.59 s on an '
                       'A100 (published); not yet measured here',
    'fast': 'fast: a CANDIDATE, never measured on a GPU: airbench94-muon with hiverge\'s batch 1536, 7.6 epochs, '
            'label smoothing 0.09, SiLU, Muon lr 0.205 / momentum 0.655',
}
