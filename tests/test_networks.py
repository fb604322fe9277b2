"""networks.py: airbench94's net checked by hand (whitening, dirac init, BatchNorm, sizes, FLOPs)."""
import pytest
import torch
import torch.nn as nn

import data_gpu
import networks


@pytest.fixture(scope='module')
def images(cifar):
    return data_gpu.normalize(cifar['train_x'][:5000], torch.float32)


def test_whitened_2x2_patches_have_identity_covariance(images):
    """The frozen first layer maps 2x2 patches to outputs with covariance diag(l / (l + eps)): the
    identity up to the eps on each eigenvalue l; its second half is the first half negated."""
    weights = networks.patch_whitening_weights(images)
    assert weights.shape == (24, 3, 2, 2)
    torch.testing.assert_close(weights[12:], -weights[:12])
    out = torch.nn.functional.conv2d(images.double(), weights[:12].double())  # [N, 12, 31, 31]
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(12, -1))
    patches = images.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    eigenvalues = torch.linalg.eigvalsh(torch.cov(patches.T))
    # the filters are stored in fp32: off-diagonal terms of ~1e-6 are their rounding
    torch.testing.assert_close(cov, torch.diag(eigenvalues / (eigenvalues + 5e-4)), atol=1e-5, rtol=1e-5)
    assert torch.diagonal(cov)[-6:].min() > 0.99, 'the main directions come out with unit variance'


def test_airbench_convs_start_as_identities_on_their_first_channels():
    torch.manual_seed(0)
    net = networks.AirbenchNet()
    group = net.groups[0]
    x = torch.randn(2, 24, 8, 8)
    torch.testing.assert_close(group.conv1(x)[:, :24], x)  # 24 -> 64: channels 0..23 pass through
    y = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(group.conv2(y), y)  # 64 -> 64: the identity
    assert group.conv1.weight[24:].abs().sum() > 0, 'the filters beyond the inputs keep the default init'


def test_airbench_batchnorm_and_frozen_parameters():
    net = networks.AirbenchNet()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6
    assert all(bn.momentum == 0.4 and bn.eps == 1e-12 and not bn.weight.requires_grad and bn.bias.requires_grad
               for bn in bns)
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    assert net.linear.bias is None and net.logit_scale == pytest.approx(1 / 9)


def test_airbench_parameter_count_by_hand():
    whiten = 24 * 3 * 2 * 2 + 24
    group1 = 24 * 64 * 9 + 64 * 64 * 9 + 2 * 2 * 64
    group2 = 64 * 256 * 9 + 256 * 256 * 9 + 2 * 2 * 256
    group3 = 256 * 256 * 9 + 256 * 256 * 9 + 2 * 2 * 256
    head = 256 * 10
    assert sum(p.numel() for p in networks.AirbenchNet().parameters()) == whiten + group1 + group2 + group3 + head


def test_flops_per_image_and_per_run_by_hand():
    """Forward MACs per image, layer by layer (output pixels x output channels x input channels x 9),
    and the paper's total: about 3.6e14 FLOP for 9.9 epochs and the 6-view evaluation."""
    macs = [31 * 31 * 24 * 3 * 4,                                  # whitening, 2x2, 32 -> 31
            31 * 31 * 64 * 24 * 9, 15 * 15 * 64 * 64 * 9,           # group 1 (pool 31 -> 15)
            15 * 15 * 256 * 64 * 9, 7 * 7 * 256 * 256 * 9,          # group 2 (15 -> 7)
            7 * 7 * 256 * 256 * 9, 3 * 3 * 256 * 256 * 9,           # group 3 (7 -> 3)
            256 * 10]                                               # head
    flops = networks.flops_per_image(networks.AirbenchNet())
    assert flops['forward_flops_per_image'] == 2 * sum(macs)
    assert flops['train_flops_per_image'] == 2 * sum(macs) + 2 * 2 * sum(macs[1:])  # the whitening is frozen
    per_run = 9.9 * 50000 * flops['train_flops_per_image'] + 6 * 10000 * flops['forward_flops_per_image']
    assert per_run == pytest.approx(3.6e14, rel=0.03)
    resnet = networks.flops_per_image(networks.ResNet9())
    assert resnet['train_flops_per_image'] / flops['train_flops_per_image'] == pytest.approx(3.2, abs=0.1)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_make_model_builds_airbench_in_the_run_precision(images, dtype):
    model = networks.make_model(0.25, 'cpu', dtype, net='airbench94')
    model.init_whitening(images[:500])
    assert model.whiten.weight.dtype == dtype and model.groups[0].norm1.weight.dtype == torch.float32
    x = images[:4].to(dtype).contiguous(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------------------------
# Myrtle post 8's tricks on ResNet-9, and airbench94_muon's net

def test_whitened_3x3_patches_have_identity_covariance_without_negated_copies(images):
    """--whiten 3: 27 filters (no negations), outputs with covariance diag(l / (l + 1e-2))."""
    weights = networks.patch_whitening_weights(images[:2000], patch=3, eps=1e-2, negated=False)
    assert weights.shape == (27, 3, 3, 3)
    out = torch.nn.functional.conv2d(images[:2000].double(), weights.double())
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(27, -1))
    patches = images[:2000].double().unfold(2, 3, 1).unfold(3, 3, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 27)
    eigenvalues = torch.linalg.eigvalsh(torch.cov(patches.T))
    torch.testing.assert_close(cov, torch.diag(eigenvalues / (eigenvalues + 1e-2)), atol=1e-5, rtol=1e-5)


def test_ghost_batchnorm_normalises_each_sub_batch_on_its_own():
    """Training: each sub-batch of 4 against F.batch_norm on it alone; the running statistics move
    towards the mean of the sub-batches' (unbiased) ones; evaluation uses them; a batch that is not
    a multiple of the sub-batch, or is one, is normalised as a whole, as nn.BatchNorm2d does."""
    torch.manual_seed(0)
    bn = networks.GhostBatchNorm(3, ghost_size=4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    x = (torch.randn(12, 3, 5, 5) * torch.tensor([1.0, 3.0, 0.2]).view(1, 3, 1, 1) + 2).contiguous(memory_format=torch.channels_last)
    out = bn(x)
    chunks = [torch.nn.functional.batch_norm(c, None, None, bn.weight, bn.bias, training=True, eps=bn.eps) for c in x.split(4)]
    torch.testing.assert_close(out, torch.cat(chunks), atol=1e-5, rtol=1e-5)
    mean = torch.stack([c.mean((0, 2, 3)) for c in x.split(4)]).mean(0)
    var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in x.split(4)]).mean(0)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var)
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(bn.state_dict())
    for rows in (10, 4):  # not a multiple of 4 / exactly one sub-batch: the whole batch, as plain BN
        torch.testing.assert_close(bn(x[:rows]), plain(x[:rows]))
    bn.eval(), plain.eval()
    torch.testing.assert_close(bn(x), plain(x))
    half = networks.GhostBatchNorm(3, ghost_size=4)(x.half())  # fp32 statistics, the fp16 net's dtype out
    assert half.dtype == torch.float16, 'an fp16 conv cannot take the fp32 activations after ghost BN'


def test_resnet9_residual_block_adds_its_input():
    """With the body's last BN zeroed, the body outputs relu(0) = 0 and the block passes its input
    through: the skip connection is there (the parameter count cannot tell)."""
    torch.manual_seed(0)
    block = networks.Residual(4)
    with torch.no_grad():
        block.body[1][1].weight.zero_(), block.body[1][1].bias.zero_()
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(block(x), x)


def test_airbench_conv_group_pools_before_its_first_batchnorm():
    """conv -> pool -> BN: the first BN sees the pooled 16x16 map of a 32x32 input, the second the same."""
    group, seen = networks.ConvGroup(3, 8), []
    for norm in (group.norm1, group.norm2):
        norm.register_forward_pre_hook(lambda m, inputs: seen.append(tuple(inputs[0].shape)))
    assert group(torch.randn(2, 3, 32, 32)).shape == (2, 8, 16, 16)
    assert seen == [(2, 8, 16, 16), (2, 8, 16, 16)]


def test_resnet9_tricks_are_wired_as_post_8_has_them(images):
    net = networks.ResNet9(activation='celu', ghost_bn=32, frozen_bn_scale=True, pool_before_bn=True, whiten=3)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 8 and all(isinstance(b, networks.GhostBatchNorm) and b.ghost_size == 32 for b in bns)
    assert all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    acts = [m for m in net.modules() if isinstance(m, (nn.CELU, nn.ReLU))]
    assert len(acts) == 8 and all(isinstance(m, nn.CELU) and m.alpha == 0.3 for m in acts)
    assert [type(m).__name__ for m in net.layer1[0]] == ['Conv2d', 'MaxPool2d', 'GhostBatchNorm', 'CELU']
    assert not net.whiten.weight.requires_grad and net.whiten.bias is None and net.prep[1].kernel_size == (1, 1)
    net.init_whitening(images[:500])
    torch.testing.assert_close(net.whiten.weight, networks.patch_whitening_weights(images[:500], 3, 1e-2, negated=False))
    plain = networks.ResNet9()
    assert [type(m).__name__ for m in plain.layer1] == ['Sequential', 'MaxPool2d', 'Residual'] and plain.whiten is None
    # sizes by hand: the 3x3x3 -> 64 prep conv becomes 27 frozen 3x3x3 filters and a 27 -> 64 1x1 conv
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net) == count(plain) + 27 * 27
    prep, whiten, pointwise = 2 * 32 * 32 * 64 * 27, 2 * 32 * 32 * 27 * 27, 2 * 32 * 32 * 64 * 27
    f_plain, f_net = networks.flops_per_image(plain), networks.flops_per_image(net)
    assert f_net['forward_flops_per_image'] == f_plain['forward_flops_per_image'] - prep + whiten + pointwise
    # training: the frozen whitening only forward; the 1x1 conv forward, input and weight gradients
    assert f_net['train_flops_per_image'] == f_plain['train_flops_per_image'] - 2 * prep + whiten + 3 * pointwise


def test_airbench94_muon_net_has_a_unit_std_head_and_logits_over_256():
    torch.manual_seed(0)
    net = networks.NETWORKS['airbench94-muon']()
    assert net.logit_scale == pytest.approx(1 / 256) and net.linear.weight.std().item() == pytest.approx(1.0)
    assert networks.NETWORKS['airbench94-muon'](0.5).logit_scale == pytest.approx(1 / 128)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in networks.AirbenchNet().parameters())
