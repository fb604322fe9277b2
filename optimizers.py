"""The optimizer step: parameter groups, SGD or Adam, the loss scale, clipping and decoupled weight
decay (backward_and_step), the amp loss scaler, EMA; and the optimizers beyond torch's: Muon for
conv filters (airbench94_muon) and Lookahead (airbench94).

Every number stays on the device: no host syncs in a step.
"""
import copy

import torch
import torch.nn as nn

from networks import whitening_bias
from schedules import schedules

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
    """Muon on conv filters, and Nesterov SGD for every other parameter, as airbench94_muon trains
    (one optimizer here, so that train.py's step handles it like SGD).

    A group with muon=True (the default): Nesterov momentum on the gradient; each step first
    rescales the filter to norm sqrt(out_channels) (the filter renormalisation that replaces weight
    decay), then moves it by -lr x newton_schulz(update flattened to [out, in x k x k]). The update
    is normalised, so the gradient's scale (the loss scale) does not matter to it.
    A group with muon=False: torch's SGD with Nesterov momentum and L2 weight decay, in foreach ops
    (g += wd p; buf = momentum buf + g; p -= lr (g + momentum buf))."""

    def __init__(self, params, lr=0.24, momentum=0.6, nesterov=True, ns_steps=3, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay, muon=True))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if not params:
                continue
            lr, momentum = group['lr'], group['momentum']
            bufs = [self.state[p].setdefault('momentum_buffer', torch.zeros_like(p)) for p in params]
            grads = [p.grad for p in params]
            if not group['muon'] and group['weight_decay']:
                grads = torch._foreach_add(grads, params, alpha=group['weight_decay'])
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            updates = torch._foreach_add(grads, bufs, alpha=momentum) if group['nesterov'] else bufs
            if not group['muon']:
                torch._foreach_add_(params, updates, alpha=-lr)
                continue
            for p, update in zip(params, updates):
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


# ----------------------------------------------------------------------------------------------
# The optimizer step as train.py takes it (SGD or Adam, the loss scale, clipping, EMA)

def param_groups(model, hyp):
    """Weights of convolutions and linear layers; BatchNorm parameters and biases, with their own
    lr multiplier and weight decay switch (the 'no wd on bias and BN' and 'BN lr x64' tricks).
    --optimizer muon puts the conv filters (4-D weights) in a group of their own, first;
    --whiten-bias-decay the whitening bias in one of its own, last (its lr has its own schedule)."""
    weights, norms = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (norms if isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias" else weights).append(p)
    groups = [{'params': weights, 'lr_scale': 1.0, 'wd_scale': 1.0},
              {'params': norms, 'lr_scale': hyp['bn_lr_scale'], 'wd_scale': float(hyp['bn_weight_decay'])}]
    bias = whitening_bias(model)
    if hyp['whiten_bias_decay'] and bias is not None:
        groups[1]['params'] = [p for p in norms if p is not bias]
        groups.append({**groups[1], 'params': [bias], 'whiten_bias': True})
    if hyp['optimizer'] == 'muon':
        filters = [p for p in weights if p.dim() == 4]
        groups[0]['params'] = [p for p in weights if p.dim() != 4]
        groups = [{'params': filters, 'muon': True, 'lr_scale': 1.0, 'wd_scale': 0.0}] + [{**g, 'muon': False} for g in groups]
    return groups


def loss_scale(hyp):
    """The constant the batch-mean loss is multiplied by before backward (see backward_and_step).

    fp16 weights without a loss scaler (--precision fp16) need it: at batch 512 the gradient of a
    batch-mean loss puts most activation gradients below fp16's normal range (6e-5), and a large
    share rounds to zero. Myrtle and airbench back-propagate the summed loss (scale = batch size)
    with lr / batch and wd x batch; SGD then follows the same trajectory, which apply_setting
    reproduces by dividing lr and multiplying weight decay by the scale. Adam is invariant to the
    scale and amp has its own dynamic scaler, so both get 1 by default."""
    if hyp['loss_scale']:
        return float(hyp['loss_scale'])
    return 1.0 if hyp['optimizer'] == 'adam' or hyp['precision'] == 'amp' else float(hyp['batch_size'])


def make_optimizer(model, hyp, fused=False):
    """SGD with Nesterov momentum, Adam, or Muon (with SGD for what is not a conv filter); weight
    decay in the groups (l2) or applied apart (decoupled: AdamW, or SGDW by backward_and_step).
    fused=True for loss scaling without syncs.
    lr, momentum and weight decay are set before every step by apply_setting."""
    momenta = [m for _, m in schedules(hyp)['momentum']]
    decoupled = hyp['wd_mode'] == 'decoupled'
    kwargs = {'fused': True} if fused else {}
    if hyp['optimizer'] == 'muon':
        return Muon(param_groups(model, hyp), lr=0.0, momentum=max(momenta))
    if hyp['optimizer'] == 'adam':
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        return cls(param_groups(model, hyp), lr=0.0, betas=(momenta[0], 0.999), weight_decay=hyp['weight_decay'], **kwargs)
    # torch refuses nesterov=True with momentum 0 at construction, not at a step: a momentum
    # schedule that starts at 0 is built with its largest value and set per step
    return torch.optim.SGD(param_groups(model, hyp), lr=0.0, momentum=max(momenta), nesterov=max(momenta) > 0,
                           weight_decay=0.0 if decoupled else hyp['weight_decay'], **kwargs)


def apply_setting(opt, setting, hyp):
    """Hand one step's scheduled values (host floats) to every parameter group. The gradients are
    loss_scale times those of the batch-mean loss, so SGD gets lr / scale and weight decay x scale
    (the product lr x wd of decoupled decay is unchanged). Muon's filters get --muon-lr times the
    schedule's current share of --lr, --muon-momentum, and no weight decay. The whitening bias's
    group under --whiten-bias-decay gets --lr times its own falling share (schedules.py)."""
    sgdw = hyp['wd_mode'] == 'decoupled' and hyp['optimizer'] in ('sgd', 'muon')
    scale = loss_scale(hyp) if hyp['optimizer'] in ('sgd', 'muon') else 1.0
    for group in opt.param_groups:
        if group.get('muon'):
            group.update(lr=hyp['muon_lr'] * setting['lr'] / hyp['lr'], momentum=hyp['muon_momentum'],
                         weight_decay=0.0, decoupled_wd=0.0)
            continue
        lr = hyp['lr'] * setting.get('whiten_bias', 1.0) if group.get('whiten_bias') else setting['lr']
        group['lr'] = lr * group['lr_scale'] / scale
        wd = setting['weight_decay'] * group['wd_scale'] * scale
        group['decoupled_wd'], group['weight_decay'] = (wd, 0.0) if sgdw else (0.0, wd)
        if 'betas' in group:
            group['betas'] = (setting['momentum'], group['betas'][1])
        else:
            group['momentum'] = setting['momentum']


def adaptive_clip_(params, ratio, eps=1e-3, grad_scale=1.0):
    """AGC (Brock et al. 2021, as the lecture states it): G <- G * min(1, ratio * max(||W||, eps) / ||G||),
    per tensor, all on the device, in a fixed number of launches whatever the number of tensors
    (two foreach norms, a few ops on the stacked norms, one foreach multiply). The gradients are
    grad_scale times the true ones (loss_scale), so the bound is scaled with them."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    w_norms = torch.stack(torch._foreach_norm([p.detach() for p in params])).float()
    g_norms = torch.stack(torch._foreach_norm(grads)).float()
    factors = (w_norms.clamp_min(eps) * (ratio * grad_scale) / g_norms.clamp_min(1e-12)).clamp_max(1.0)
    torch._foreach_mul_(grads, list(factors.to(grads[0].dtype).unbind()))  # group 0 shares one dtype


def backward_and_step(model, opt, loss, hyp, scaler=None):
    """Backward of loss x loss_scale, then the optional clipping and decoupled decay, then the
    optimizer step. With a GradScaler (--precision amp) the loss is scaled further, gradients
    unscaled in place with an on-device inf check, and the fused optimizer skips the step on
    overflow: no host sync anywhere."""
    scale = loss_scale(hyp)
    opt.zero_grad(set_to_none=True)
    scaled = loss * scale if scale != 1 else loss
    if scaler is None:
        scaled.backward()
    else:
        scaler.scale(scaled).backward()
        if hyp['clip_norm'] or hyp['agc']:
            scaler.unscale_(opt)
    if hyp['clip_norm']:
        torch.nn.utils.clip_grad_norm_(model.parameters(), hyp['clip_norm'] * scale, foreach=True)
    if hyp['agc']:  # conv and linear weights (group 0); BatchNorm parameters are left alone, as in NFNets
        adaptive_clip_(opt.param_groups[0]['params'], hyp['agc'], grad_scale=scale)
    with torch.no_grad():  # SGDW's decay; under amp it also applies on a step the scaler skips (rare, harmless)
        for group in opt.param_groups:
            if group.get('decoupled_wd'):
                torch._foreach_mul_(group['params'], 1 - group['lr'] * group['decoupled_wd'])
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def make_scaler(hyp, device):
    """Dynamic loss scaling for --precision amp (used with fused optimizers: no host syncs)."""
    return torch.amp.GradScaler(torch.device(device).type) if hyp['precision'] == 'amp' else None


def averaged_tensors(model):
    """What EMA and lookahead average: the parameters and the floating-point buffers (BatchNorm's
    running statistics), so that the averaged network is normalised for its own weights."""
    return list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]


class EMA:
    """Exponential moving average of the weights and BatchNorm statistics, in fp32 whatever the
    model's dtype (fp16 would round away updates of (1 - decay) * difference). update() is called
    after each optimizer step and averages on every `every`-th (Myrtle post 8: every 5 steps with
    decay 0.99^5), one foreach lerp, no sync; model() returns a copy holding the average."""

    def __init__(self, model, decay, every=1):
        self.decay, self.every, self.steps = decay, every, 0
        self.tensors = averaged_tensors(model)
        self.restart()
        self.copy = copy.deepcopy(model)

    @torch.no_grad()
    def restart(self):
        """Start the average from the weights as they are now."""
        self.shadow = [t.detach().float().clone() for t in self.tensors]

    @torch.no_grad()
    def update(self):
        self.steps += 1
        if self.steps % self.every:
            return
        torch._foreach_lerp_(self.shadow, [t.detach().float() for t in self.tensors], 1 - self.decay)

    @torch.no_grad()
    def model(self):
        targets = averaged_tensors(self.copy)
        for target, average in zip(targets, self.shadow):
            target.copy_(average)
        return self.copy
