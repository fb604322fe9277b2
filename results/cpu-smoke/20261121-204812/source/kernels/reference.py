"""Plain-torch versions of the BLF kernels: the tests' ground truth and `--blf-impl torch`.

Same functions and semantics as kernels.triton_impl (see kernels/selection.py for the rule), also
free of host syncs: sort, cumsum, where, scatter and sums only.
"""
import torch
import torch.nn.functional as F

from kernels import Selection


def _at_least_fp32(t):
    return t if t.dtype == torch.float64 else t.float()


def cross_entropy_forward(logits, labels, smoothing=0.0):
    x = _at_least_fp32(logits)
    losses = F.cross_entropy(x, labels, reduction='none', label_smoothing=smoothing)
    return losses, torch.logsumexp(x, dim=1)


def select_top_loss(losses, p, k_min=0, round_to=1, cap=None):
    n = losses.numel()
    cap = n if cap is None else cap
    losses = losses.float()
    finite = torch.isfinite(losses)
    key = torch.where(finite, losses.clamp_min(0), torch.inf)
    sorted_key, order = torch.sort(key, descending=True, stable=True)
    sorted_finite = torch.isfinite(sorted_key)
    value = torch.where(sorted_finite, sorted_key, 0.0)
    cum = torch.cumsum(value, 0)
    total = cum[-1]
    k = (~sorted_finite).sum() + (sorted_finite & (cum < p * total)).sum() + 1
    k = k.clamp(min=k_min, max=n)
    k = torch.clamp((k + round_to - 1) // round_to * round_to, max=n)
    k_eff = k.clamp(max=cap)
    kept_sorted = torch.arange(n, device=losses.device) < k_eff
    weight = torch.zeros(n, device=losses.device).scatter(0, order, kept_sorted / k_eff)
    raw = losses[order]
    stats = torch.stack([torch.where(total > 0, (value * kept_sorted).sum() / total, 1.0), losses.mean(),
                         torch.where(kept_sorted, raw, 0.0).sum() / k_eff])
    return Selection(weight, order, torch.stack([k, k_eff]).int(), stats)


def weighted_cross_entropy(logits, labels, weight, smoothing=0.0, losses=None, lse=None):
    losses = F.cross_entropy(_at_least_fp32(logits), labels, reduction='none', label_smoothing=smoothing)
    return torch.dot(weight.to(losses.dtype), losses)
