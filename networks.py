"""The networks, each readable top to bottom: Myrtle's ResNet-9 (the default recipe) and airbench94's
net (the leaderboard recipe: frozen 2x2 patch whitening, three conv groups, no residuals).

make_model builds either in the run's precision: conv/linear weights in `dtype` (fp16 on a GPU),
BatchNorm in fp32, memory channels_last.
"""
import contextlib

import torch
import torch.nn as nn


# ----------------------------------------------------------------------------------------------
# Myrtle's ResNet-9 (post 4 of "How to train your ResNet"), and post 8's tricks as options

ACTIVATIONS = {'relu': lambda: nn.ReLU(inplace=True), 'celu': lambda: nn.CELU(0.3),  # Myrtle post 8: alpha 0.3
               'gelu': nn.GELU, 'silu': nn.SiLU}


class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training-mode statistics come from sub-batches of `ghost_size` images (Myrtle
    post 8: 32 of a batch of 512), a regulariser; the running statistics, used in evaluation, move
    towards the mean of the sub-batches' statistics. A batch that is one sub-batch, or not a
    multiple of one (a compact BLF pass of another size), is normalised as a whole."""

    def __init__(self, channels, ghost_size=32, **kwargs):
        super().__init__(channels, **kwargs)
        self.ghost_size = ghost_size

    def forward(self, x):
        n, c, h, w = x.shape
        if not self.training or n % self.ghost_size or n == self.ghost_size:
            return super().forward(x)
        ghosts = x.float().view(n // self.ghost_size, self.ghost_size, c, h, w)  # a view, channels_last too
        mean = ghosts.mean(dim=(1, 3, 4))
        var = ghosts.var(dim=(1, 3, 4), unbiased=False)
        scale = torch.rsqrt(var + self.eps) * self.weight
        y = (ghosts - mean[:, None, :, None, None]) * scale[:, None, :, None, None] + self.bias[None, None, :, None, None]
        if self.track_running_stats:  # BLF's kept pass turns this off (see blf_step.running_stats_frozen)
            with torch.no_grad():
                unbiased = var * (self.ghost_size * h * w / (self.ghost_size * h * w - 1))
                self.running_mean.lerp_(mean.mean(0), self.momentum)
                self.running_var.lerp_(unbiased.mean(0), self.momentum)
                self.num_batches_tracked += 1
        return y.reshape(n, c, h, w).to(x.dtype)


def batchnorm(channels, ghost_bn=0, frozen_scale=False):
    bn = GhostBatchNorm(channels, ghost_bn) if ghost_bn else nn.BatchNorm2d(channels)
    if frozen_scale:  # Myrtle post 8: the scales stay at 1, only the biases learn
        bn.weight.requires_grad_(False)
    return bn


def conv_bn(c_in, c_out, norm=nn.BatchNorm2d, act=ACTIVATIONS['relu'], pool=False):
    """conv3x3 -> BN -> activation; pool=True (Myrtle post 8) puts a MaxPool2 right after the conv,
    so BatchNorm and the activation run on a quarter of the pixels."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)] + [nn.MaxPool2d(2)] * pool + [norm(c_out), act()]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, channels, **style):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels, **style), conv_bn(channels, channels, **style))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    """Myrtle's ResNet-9: prep conv (64), then three layers (128 with a residual block, 256, 512 with
    a residual block), each halving the resolution with a MaxPool2; global max-pool; linear without
    bias; logits x 0.125. Post 8's tricks are options: activation (CELU), ghost_bn (sub-batch size),
    frozen_bn_scale, pool_before_bn, and whiten=3: the prep layer becomes a frozen 3x3
    patch-whitening conv (27 filters, set from data by init_whitening) and a 1x1 conv."""

    def __init__(self, width=1.0, num_classes=10, logit_scale=0.125, dropout=0.0, activation='relu',
                 ghost_bn=0, frozen_bn_scale=False, pool_before_bn=False, whiten=0):
        super().__init__()
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        style = {'norm': lambda c: batchnorm(c, ghost_bn, frozen_bn_scale), 'act': ACTIVATIONS[activation]}
        if whiten:
            self.whiten = nn.Conv2d(3, 3 * whiten * whiten, whiten, padding=whiten // 2, bias=False)
            self.whiten.weight.requires_grad_(False)
            self.prep = nn.Sequential(self.whiten, nn.Conv2d(3 * whiten * whiten, c1, 1, bias=False),
                                      style['norm'](c1), style['act']())
        else:
            self.whiten = None
            self.prep = conv_bn(3, c1, **style)

        def down(c_in, c_out):  # conv -> BN -> act -> pool, or post 8's conv -> pool -> BN -> act
            if pool_before_bn:
                return [conv_bn(c_in, c_out, pool=True, **style)]
            return [conv_bn(c_in, c_out, **style), nn.MaxPool2d(2)]
        self.layer1 = nn.Sequential(*down(c1, c2), Residual(c2, **style))
        self.layer2 = nn.Sequential(*down(c2, c3))
        self.layer3 = nn.Sequential(*down(c3, c4), Residual(c4, **style))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(c4, num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_whitening(self, images):
        """whiten=3: the eigenvectors of the covariance of 3x3 patches, each scaled by
        1/sqrt(eigenvalue + 1e-2) (post 8's eps), without airbench's negated copies."""
        weights = patch_whitening_weights(images.float(), self.whiten.kernel_size[0], eps=1e-2, negated=False)
        self.whiten.weight.copy_(weights.to(self.whiten.weight))

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.linear(self.dropout(self.pool(x).flatten(1))) * self.logit_scale


# ----------------------------------------------------------------------------------------------
# airbench94's net (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498)

def patch_whitening_weights(images, patch=2, eps=5e-4, negated=True):
    """The frozen first layer's filters: the eigenvectors of the covariance of every patch x patch
    patch of `images` ([N, C, H, W], normalised), each scaled by 1/sqrt(eigenvalue + eps), then
    their negations (negated=False: without them): 2 C patch^2 filters [2 C p^2, C, p, p]. The first half's outputs have covariance
    diag(eigenvalue / (eigenvalue + eps)): the identity wherever the data varies at all."""
    c = images.shape[1]
    patches = images.double().unfold(2, patch, 1).unfold(3, patch, 1)  # [N, C, H', W', p, p]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * patch * patch)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))
    filters = (eigenvectors / torch.sqrt(eigenvalues + eps)).T.reshape(-1, c, patch, patch)
    return (torch.cat([filters, -filters]) if negated else filters).float()


def airbench_batchnorm(channels):
    """BatchNorm as airbench94 has it: running statistics with momentum 0.4 (its 0.6 is 1 - torch's),
    eps 1e-12, the scale frozen at 1 (only the bias learns)."""
    bn = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    """conv3x3 -> MaxPool2 -> BN -> GELU -> conv3x3 -> BN -> GELU, no residual."""

    def __init__(self, c_in, c_out, act=nn.GELU):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = airbench_batchnorm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = airbench_batchnorm(c_out)
        self.act = act()

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """Frozen 2x2 patch whitening (3 -> 24 channels, a trainable bias) and GELU; three conv groups of
    widths 64/256/256 (times `width`); MaxPool(3); a linear head without bias; logits x 1/9. The
    convolutions after the whitening are dirac-initialised on their first input channels, so at
    the start each group passes its input through; init_whitening(images) sets the first layer."""

    def __init__(self, width=1.0, num_classes=10, logit_scale=1 / 9, widths=(64, 256, 256), activation='gelu',
                 head_std=None):
        super().__init__()
        c1, c2, c3 = (max(1, round(c * width)) for c in widths)
        act = ACTIVATIONS[activation]
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = act()
        self.groups = nn.Sequential(ConvGroup(24, c1, act), ConvGroup(c1, c2, act), ConvGroup(c2, c3, act))
        self.pool = nn.MaxPool2d(3)
        self.linear = nn.Linear(c3, num_classes, bias=False)
        self.logit_scale = logit_scale
        for m in self.groups.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.dirac_(m.weight[:min(m.in_channels, m.out_channels)])
        if head_std is not None:
            with torch.no_grad():
                self.linear.weight.mul_(head_std / self.linear.weight.std())

    @torch.no_grad()
    def init_whitening(self, images):
        self.whiten.weight.copy_(patch_whitening_weights(images.float()).to(self.whiten.weight))
        self.whiten.bias.zero_()

    def forward(self, x):
        x = self.groups(self.act(self.whiten(x)))
        return self.linear(self.pool(x).flatten(1)) * self.logit_scale


def whitening_bias(model):
    """The trainable bias of a whitening first layer (airbench94's nets), or None (ResNet-9's
    --whiten 3 has none; a net without whitening neither)."""
    whiten = getattr(model, 'whiten', None)
    return None if whiten is None else whiten.bias


def airbench94_muon_net(width=1.0, **options):
    """airbench94_muon's variant of the net: the head's weights start with standard deviation 1 and
    the logits are divided by the number of features (256) instead of 9: its SGD lr for the head
    (0.67 per summed-loss step) is set for that scale."""
    features = max(1, round(256 * width))
    return AirbenchNet(width, logit_scale=1 / features, head_std=1.0, **options)


NETWORKS = {'resnet9': ResNet9, 'airbench94': AirbenchNet, 'airbench94-muon': airbench94_muon_net}


def flops_per_image(model, image_size=32):
    """FLOPs of conv and linear layers per 32x32 image: forward 2 x MACs; training adds the backward,
    2 x forward for every layer but the first, whose input needs no gradient (its weight gradient:
    1 x forward, or nothing when the layer is frozen, as airbench's whitening is)."""
    forward = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs = module.in_channels // module.groups * k * output.shape[1] * output.shape[2] * output.shape[3]
        else:
            macs = module.in_features * module.out_features
        forward.append((2 * macs, module.weight.requires_grad))
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    (first, first_trains), rest = forward[0], [f for f, _ in forward[1:]]
    total = first + sum(rest)
    return {'forward_flops_per_image': total,
            'train_flops_per_image': total + (first if first_trains else 0) + 2 * sum(rest)}


def net_options(hyp):
    """The run's options for its network's constructor: ResNet-9 takes Myrtle post 8's tricks and
    dropout; airbench94's net takes only the activation ('auto': the net's own)."""
    options = {} if hyp['activation'] == 'auto' else {'activation': hyp['activation']}
    if hyp['net'] == 'resnet9':
        options.update({key: hyp[key] for key in RESNET9_OPTIONS})
    return options


RESNET9_OPTIONS = ('dropout', 'ghost_bn', 'frozen_bn_scale', 'pool_before_bn', 'whiten')


def make_model(width, device, dtype, bn_fp32=True, channels_last=True, net='resnet9', **options):
    """A network of NETWORKS (options: its constructor's, see net_options) with conv/linear weights
    in `dtype`, BatchNorm kept in fp32, memory channels_last.

    fp32 BatchNorm with fp16 activations takes cuDNN's fast mixed-precision path (Myrtle post 3:
    fp16 BN fell onto a slow path); channels_last avoids NCHW<->NHWC transposes around each conv.
    The two switches exist for profile.py's ablations."""
    model = NETWORKS[net](width, **options).to(device=device, dtype=dtype)
    if bn_fp32:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.float()
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# ----------------------------------------------------------------------------------------------
# Precision: the dtype of the weights and of the data, and amp's autocast

PRECISIONS = {  # name: (weights, data on the device)
    'fp16': (torch.float16, torch.float16), 'amp': (torch.float32, torch.float16),
    'bf16': (torch.bfloat16, torch.bfloat16), 'fp32': (torch.float32, torch.float32)}


def resolve_precision(precision, device):
    return ('fp16' if torch.device(device).type == 'cuda' else 'fp32') if precision == 'auto' else precision


def autocast(hyp, device):
    """fp16 autocast for --precision amp; otherwise an empty context (cheaper per step than a disabled autocast)."""
    if hyp['precision'] != 'amp':
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.float16)
