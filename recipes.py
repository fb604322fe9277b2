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

NOTES = {
    'myrtle': "Myrtle's ResNet-9 (24 epochs, batch 512, Cutout, flip TTA): 94.1% in 79 s on a V100",
    'airbench94': 'airbench94: 2x2 whitening net, 9.9 epochs at batch 1024, lookahead, alternating flip, '
                  '6-view TTA: 94.01% in 3.83 s on an A100 (published); not yet measured here',
}
