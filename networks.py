"""The networks, each readable top to bottom: Myrtle's ResNet-9 (the default recipe) and airbench94's
net (the leaderboard recipe: frozen 2x2 patch whitening, three conv groups, no residuals).

make_model builds either in the run's precision: conv/linear weights in `dtype` (fp16 on a GPU),
BatchNorm in fp32, memory channels_last.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Myrtle's ResNet-9 (post 4 of "How to train your ResNet")


def conv_bn(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    def __init__(self, width=1.0, num_classes=10, logit_scale=0.125, dropout=0.0):
        super().__init__()
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        self.prep = conv_bn(3, c1)
        self.layer1 = nn.Sequential(conv_bn(c1, c2), nn.MaxPool2d(2), Residual(c2))
        self.layer2 = nn.Sequential(conv_bn(c2, c3), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv_bn(c3, c4), nn.MaxPool2d(2), Residual(c4))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(c4, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.linear(self.dropout(self.pool(x).flatten(1))) * self.logit_scale


# ----------------------------------------------------------------------------------------------
# airbench94's net (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498)

def patch_whitening_weights(images, patch=2, eps=5e-4):
    """The frozen first layer's filters: the eigenvectors of the covariance of every patch x patch
    patch of `images` ([N, C, H, W], normalised), each scaled by 1/sqrt(eigenvalue + eps), then
    their negations: 2 C patch^2 filters [2 C p^2, C, p, p]. The first half's outputs have covariance
    diag(eigenvalue / (eigenvalue + eps)): the identity wherever the data varies at all."""
    c = images.shape[1]
    patches = images.double().unfold(2, patch, 1).unfold(3, patch, 1)  # [N, C, H', W', p, p]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * patch * patch)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))
    filters = (eigenvectors / torch.sqrt(eigenvalues + eps)).T.reshape(-1, c, patch, patch)
    return torch.cat([filters, -filters]).float()


def airbench_batchnorm(channels):
    """BatchNorm as airbench94 has it: running statistics with momentum 0.4 (its 0.6 is 1 - torch's),
    eps 1e-12, the scale frozen at 1 (only the bias learns)."""
    bn = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    """conv3x3 -> MaxPool2 -> BN -> GELU -> conv3x3 -> BN -> GELU, no residual."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = airbench_batchnorm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = airbench_batchnorm(c_out)

    def forward(self, x):
        x = F.gelu(self.norm1(self.pool(self.conv1(x))))
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """Frozen 2x2 patch whitening (3 -> 24 channels, a trainable bias) and GELU; three conv groups of
    widths 64/256/256 (times `width`); MaxPool(3); a linear head without bias; logits x 1/9. The
    convolutions after the whitening are dirac-initialised on their first input channels, so at
    the start each group passes its input through; init_whitening(images) sets the first layer."""

    def __init__(self, width=1.0, num_classes=10, logit_scale=1 / 9, widths=(64, 256, 256)):
        super().__init__()
        c1, c2, c3 = (max(1, round(c * width)) for c in widths)
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.groups = nn.Sequential(ConvGroup(24, c1), ConvGroup(c1, c2), ConvGroup(c2, c3))
        self.pool = nn.MaxPool2d(3)
        self.linear = nn.Linear(c3, num_classes, bias=False)
        self.logit_scale = logit_scale
        for m in self.groups.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.dirac_(m.weight[:min(m.in_channels, m.out_channels)])

    @torch.no_grad()
    def init_whitening(self, images):
        self.whiten.weight.copy_(patch_whitening_weights(images.float()).to(self.whiten.weight))
        self.whiten.bias.zero_()

    def forward(self, x):
        x = self.groups(F.gelu(self.whiten(x)))
        return self.linear(self.pool(x).flatten(1)) * self.logit_scale


NETWORKS = {'resnet9': ResNet9, 'airbench94': AirbenchNet}


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


def make_model(width, device, dtype, bn_fp32=True, channels_last=True, dropout=0.0, net='resnet9'):
    """A network of NETWORKS with conv/linear weights in `dtype`, BatchNorm kept in fp32, memory
    channels_last.

    fp32 BatchNorm with fp16 activations takes cuDNN's fast mixed-precision path (Myrtle post 3:
    fp16 BN fell onto a slow path); channels_last avoids NCHW<->NHWC transposes around each conv.
    The two switches exist for profile.py's ablations."""
    model = (ResNet9(width, dropout=dropout) if net == 'resnet9' else NETWORKS[net](width)).to(device=device, dtype=dtype)
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
