"""Plain-torch versions of the BLF kernels: the tests' ground truth and `--blf-impl torch`.

Same functions and semantics as kernels.triton_impl (see kernels/selection.py for the rule), also
free of host syncs: sort, cumsum, where, scatter and sums only.
"""
import torch
import torch.nn.functional as F

from kernels import Selection, split_p


def _at_least_fp32(t):
    return t if t.dtype == torch.float64 else t.float()


def cross_entropy_forward(logits, labels, smoothing=0.0):
    x = _at_least_fp32(logits)
    losses = F.cross_entropy(x, labels, reduction='none', label_smoothing=smoothing)
    return losses, torch.logsumexp(x, dim=1)


def select_top_loss(losses, p, k_min=0, round_to=1, cap=None, fill=False):
    n = losses.numel()
    cap = n if cap is None else cap
    losses = losses.float()
    finite = torch.isfinite(losses)
    key = torch.where(finite, losses.clamp_min(0), torch.inf)
    sorted_key, order = torch.sort(key, descending=True, stable=True)
    sorted_finite = torch.isfinite(sorted_key)
    value = torch.where(sorted_finite, sorted_key, 0.0)
    # the kernel's exact fixed-point sums (see kernels/selection.py), op for op
    log2_block = (n - 1).bit_length()  # log2 of the kernel's block, the next power of two >= n
    exponent = ((value.max().view(torch.int32) >> 23) & 0xFF).clamp_min(1) - 127
    scale = ((51 - log2_block - exponent + 1023).long() << 52).view(torch.float64)
    quanta = torch.ceil(value.double() * scale).long()
    cum = torch.cumsum(quanta, 0)
    total = cum[-1]
    threshold = total.double() * sum(split_p(p))  # as the kernel: p rebuilt in fp64 from its fp32 parts
    k = (~sorted_finite).sum() + (sorted_finite & (cum.double() < threshold)).sum() + 1
    k = k.clamp(min=k_min, max=n)
    k = torch.clamp((k + round_to - 1) // round_to * round_to, max=n)
    k_eff = torch.full_like(k, cap) if fill else k.clamp(max=cap)
    kept_sorted = torch.arange(n, device=losses.device) < k_eff
    weight = torch.zeros(n, device=losses.device).scatter(0, order, kept_sorted / k_eff)
    raw = losses[order].double()
    fraction = (quanta * kept_sorted).sum().double() / total.clamp_min(1).double()
    stats = torch.stack([torch.where(total > 0, fraction, 1.0), raw.mean(),
                         torch.where(kept_sorted, raw, 0.0).sum() / k_eff]).float()
    return Selection(weight, order, torch.stack([k, k_eff]).int(), stats)


def weighted_cross_entropy(logits, labels, weight, smoothing=0.0, losses=None, lse=None):
    losses = F.cross_entropy(_at_least_fp32(logits), labels, reduction='none', label_smoothing=smoothing)
    return torch.dot(weight.to(losses.dtype), losses)
