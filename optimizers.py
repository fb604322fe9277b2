"""Optimizers beyond torch's: Muon for conv filters (airbench94_muon) and Lookahead (airbench94).

Both keep every number on the device: no host syncs in a step.
"""
import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # airbench94_muon's quintic iteration


def newton_schulz(matrix, steps=3, coefficients=NS_COEFFICIENTS, eps=1e-7):
    """About U V^T for matrix = U S V^T (the nearest semi-orthogonal matrix, up to a scale near 1):
    `steps` iterations X <- a X + (b A + c A^2) X with A = X X^T, from X = matrix / ||matrix||, in
    bf16 as Muon runs it. The quintic's coefficients push every singular value towards [0.7, 1.2]
    fast rather than exactly to 1."""
    a, b, c = coefficients
    x = matrix.bfloat16()
    x = x / (x.norm() + eps)
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon on conv filters: Nesterov momentum on the gradient; each step first rescales the filter
    to norm sqrt(out_channels) (the filter renormalisation that replaces weight decay), then moves
    it by -lr x newton_schulz(update flattened to [out, in x k x k]). Gradient scale does not matter
    (the update is normalised), so the loss scale needs no unscaling."""

    def __init__(self, params, lr=0.24, momentum=0.6, nesterov=True, ns_steps=3):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, momentum = group['lr'], group['momentum']
            for p in group['params']:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p.grad))
                buf.mul_(momentum).add_(p.grad)
                update = p.grad.add(buf, alpha=momentum) if group['nesterov'] else buf
                p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
                p.add_(newton_schulz(update.reshape(len(update), -1), group['ns_steps']).view_as(p), alpha=-lr)


class Lookahead:
    """airbench94's lookahead: every `every` steps the slow weights move towards the fast ones,
    slow <- alpha slow + (1 - alpha) fast with alpha = decay^every x (t / total)^3 (nothing early,
    strong averaging late), and the fast weights restart from the slow ones; finish() hands the
    slow weights to the model at the end of training."""

    def __init__(self, params, total_steps, every=5, decay=0.95):
        self.params = [p for p in params]
        self.total, self.every, self.decay, self.t = total_steps, every, decay, 0
        self.restart()

    @torch.no_grad()
    def restart(self):
        """Slow weights from the weights as they are now (after an initialisation from data)."""
        self.slow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def step(self):
        self.t += 1
        if self.t % self.every:
            return
        alpha = self.decay ** self.every * (self.t / self.total) ** 3
        torch._foreach_lerp_(self.slow, [p.detach() for p in self.params], 1 - alpha)
        torch._foreach_copy_(self.params, self.slow)

    @torch.no_grad()
    def finish(self):
        torch._foreach_copy_(self.params, self.slow)
