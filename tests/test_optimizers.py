"""optimizers.py: Newton-Schulz, Muon and Lookahead against their formulas, by hand."""
import pytest
import torch

import optimizers


@pytest.mark.parametrize('shape', [(64, 24 * 9), (256, 64 * 9), (24 * 9, 64), (10, 90)])
def test_newton_schulz_output_is_near_orthogonal(shape):
    """3 quintic steps from a Gaussian filter-shaped matrix (out x in k k, what Muon meets): every singular value in
    [0.6, 1.25] and the direction of U V^T. Would catch wrong coefficients (they diverge or stall),
    a missing normalisation, or tall matrices not transposed."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x = optimizers.newton_schulz(g).float()
    s = torch.linalg.svdvals(x)
    assert x.shape == g.shape and 0.6 <= s.min() and s.max() <= 1.25, s
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(x.flatten(), (u @ vt).flatten(), 0) > 0.98


def test_newton_schulz_ignores_the_scale_of_its_input():
    g = torch.randn(32, 72, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(optimizers.newton_schulz(g * 512), optimizers.newton_schulz(g), atol=1e-2, rtol=0)


def test_muon_step_renormalises_the_filter_then_moves_it_by_the_orthogonalised_nesterov_update():
    gen = torch.Generator().manual_seed(2)
    w = torch.nn.Parameter(torch.randn(16, 8, 3, 3, generator=gen))
    opt = optimizers.Muon([w], lr=0.24, momentum=0.6)
    grads = [torch.randn(16, 8, 3, 3, generator=gen) for _ in range(2)]
    expected, buf = w.detach().clone(), torch.zeros_like(w)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        buf = 0.6 * buf + g
        update = g + 0.6 * buf
        expected = expected * 4.0 / expected.norm()  # sqrt(16 output channels)
        expected = expected - 0.24 * optimizers.newton_schulz(update.reshape(16, -1)).view_as(expected)
        torch.testing.assert_close(w.detach(), expected)
    assert w.detach().norm().item() == pytest.approx(4.0, rel=0.15), 'renormalised, then one bounded step'


def test_lookahead_follows_its_formula():
    """Every 5 steps slow <- a slow + (1 - a) fast, fast <- slow, a = 0.95^5 (t/T)^3; finish() copies."""
    p = torch.nn.Parameter(torch.zeros(3))
    look = optimizers.Lookahead([p], total_steps=20)
    slow = torch.zeros(3)
    for t in range(1, 21):
        with torch.no_grad():
            p.add_(1.0)  # the optimizer's step
        fast = p.detach().clone()
        look.step()
        if t % 5 == 0:
            a = 0.95 ** 5 * (t / 20) ** 3
            slow = a * slow + (1 - a) * fast
            torch.testing.assert_close(p.detach(), slow)
        else:
            torch.testing.assert_close(p.detach(), fast)
    with torch.no_grad():
        p.add_(7.0)
    look.finish()
    torch.testing.assert_close(p.detach(), slow)


def test_muon_groups_without_muon_are_torch_nesterov_sgd_with_l2_decay():
    """airbench94_muon's head and biases: the same steps as torch.optim.SGD(nesterov=True) gives."""
    gen = torch.Generator().manual_seed(3)
    w, b = torch.nn.Parameter(torch.randn(10, 6, generator=gen)), torch.nn.Parameter(torch.randn(6, generator=gen))
    w_ref, b_ref = torch.nn.Parameter(w.detach().clone()), torch.nn.Parameter(b.detach().clone())
    opt = optimizers.Muon([{'params': [w], 'muon': False, 'lr': 0.3, 'weight_decay': 0.01},
                           {'params': [b], 'muon': False, 'lr': 0.05, 'weight_decay': 0.2}], momentum=0.85)
    ref = torch.optim.SGD([{'params': [w_ref], 'lr': 0.3, 'weight_decay': 0.01},
                           {'params': [b_ref], 'lr': 0.05, 'weight_decay': 0.2}], momentum=0.85, nesterov=True)
    for _ in range(3):
        gw, gb = torch.randn(10, 6, generator=gen), torch.randn(6, generator=gen)
        w.grad, b.grad, w_ref.grad, b_ref.grad = gw, gb, gw.clone(), gb.clone()
        opt.step()
        ref.step()
        torch.testing.assert_close(w.detach(), w_ref.detach())
        torch.testing.assert_close(b.detach(), b_ref.detach())


def test_ema_every_k_steps_averages_on_every_kth_step_only():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = optimizers.EMA(model, decay=0.5, every=3)
    expected = 0.0
    for step in range(1, 8):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update()
        if step % 3 == 0:
            expected = 0.5 * expected + 0.5 * step
        assert ema.shadow[0].item() == expected
