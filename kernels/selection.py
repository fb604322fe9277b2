"""Top-loss selection (BatchLossFilter) in one Triton program: sort, threshold, scatter.

From B per-sample losses, with p = min_loss_perc and k_min = ceil(q * B):
  - order rows by loss, descending, ties by lower index: pack (fp32 loss bits << 32 | 2^31-1-index)
    into int64 and sort that (Triton's sort has no argsort; non-negative fp32 bits order like the
    floats). Non-finite losses (NaN, +-Inf) sort first, as if +Inf: they are always kept, so a
    broken row is never silently dropped, and they add nothing to the sums below;
  - k_loss = n_nonfinite + the smallest k' such that the top k' finite losses sum to >= p * their
    total (the sample that crosses the threshold is kept; the total is the last cumsum entry);
  - k = clamp(max(k_loss, k_min), 1, B), then rounded up to a multiple of round_to (at most B);
  - k_eff = min(k, cap): the rows actually kept when the caller can only afford `cap` of them.
Writes weight (1/k_eff on kept rows, 0 elsewhere), order, counts = [k, k_eff] and stats =
[kept-loss fraction, full-batch mean loss, kept-batch mean loss]. Nothing goes back to the host.
"""
import torch
import triton
import triton.language as tl

from kernels import Selection

MAX_BATCH = 16384


@triton.jit
def _select_kernel(loss_ptr, weight_ptr, order_ptr, counts_ptr, stats_ptr, B, p, k_min, round_to, cap,
                   BLOCK: tl.constexpr):
    rank = tl.arange(0, BLOCK)  # before the sort: row index; after it: position in loss order
    ok = rank < B
    loss = tl.load(loss_ptr + rank, mask=ok, other=0.0)
    finite = (loss == loss) & (tl.abs(loss) < float('inf'))
    clean = tl.where(finite & (loss > 0), loss, 0.0)  # also turns -0.0 and rounding negatives into +0
    bits = tl.where(finite, clean.to(tl.int32, bitcast=True), 0x7F800000)  # non-finite sort as +Inf
    # low word: 2^31 - 1 - index, so that ties sort lower index first (a literal: compiled Triton
    # refuses non-constexpr globals, and the interpreter does not unwrap constexpr ones)
    key = (bits.to(tl.int64) << 32) | (2147483647 - rank).to(tl.int64)
    key = tl.sort(tl.where(ok, key, -1), descending=True)  # padding (-1) sorts last

    index = 2147483647 - (key & 0x7FFFFFFF)  # the low word is below 2^31: an int32 mask, no uint32 literal
    sorted_bits = (key >> 32).to(tl.int32)
    sorted_finite = ok & (sorted_bits != 0x7F800000)
    value = tl.where(sorted_finite, sorted_bits.to(tl.float32, bitcast=True), 0.0)
    cum = tl.cumsum(value, axis=0)
    total = tl.sum(tl.where(rank == B - 1, cum, 0.0), axis=0)
    n_bad = tl.sum((ok & ~sorted_finite).to(tl.int32), axis=0)
    k = n_bad + tl.sum((sorted_finite & (cum < p * total)).to(tl.int32), axis=0) + 1
    k = tl.minimum(tl.maximum(k, k_min), B)
    k = tl.minimum((k + round_to - 1) // round_to * round_to, B)
    k_eff = tl.minimum(k, cap)

    kept = ok & (rank < k_eff)
    tl.store(order_ptr + rank, index.to(tl.int64), mask=ok)
    tl.store(weight_ptr + index, tl.where(kept, 1.0 / k_eff, 0.0), mask=ok)
    raw = tl.load(loss_ptr + index, mask=ok, other=0.0)  # NaN/Inf show in the means, on purpose
    kept_finite = tl.sum(tl.where(kept, value, 0.0), axis=0)
    tl.store(counts_ptr, k)
    tl.store(counts_ptr + 1, k_eff)
    tl.store(stats_ptr, tl.where(total > 0, kept_finite / tl.where(total > 0, total, 1.0), 1.0))
    tl.store(stats_ptr + 1, tl.sum(tl.where(ok, raw, 0.0), axis=0) / B)
    tl.store(stats_ptr + 2, tl.sum(tl.where(kept, raw, 0.0), axis=0) / k_eff)


def select_num_warps(block):
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def select_top_loss(losses, p, k_min=0, round_to=1, cap=None):
    """Selection for a 1-D float tensor of B losses; p in (0, 1], k_min, round_to and cap host ints."""
    if losses.dim() != 1 or not 1 <= losses.numel() <= MAX_BATCH:
        raise ValueError(f'losses must be 1-D with 1..{MAX_BATCH} entries, got shape {tuple(losses.shape)}')
    n = losses.numel()
    cap = n if cap is None else cap
    losses = losses.float().contiguous()
    dev = losses.device
    sel = Selection(weight=torch.empty(n, device=dev), order=torch.empty(n, device=dev, dtype=torch.int64),
                    counts=torch.empty(2, device=dev, dtype=torch.int32), stats=torch.empty(3, device=dev))
    block = triton.next_power_of_2(n)
    _select_kernel[(1,)](losses, sel.weight, sel.order, sel.counts, sel.stats, n, float(p), int(k_min),
                         int(round_to), int(cap), BLOCK=block,
                         num_warps=select_num_warps(block))
    return sel
