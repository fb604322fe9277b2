"""Top-loss selection (BatchLossFilter) in one Triton program: sort, threshold, scatter.

From B per-sample losses, with p = min_loss_perc and k_min = ceil(q * B):
  - order rows by loss, descending, ties by lower index: pack (fp32 loss bits << 32 | 2^31-1-index)
    into int64 and sort that (Triton's sort has no argsort; non-negative fp32 bits order like the
    floats). Non-finite losses (NaN, +-Inf) sort first, as if +Inf: they are always kept, so a
    broken row is never silently dropped, and they add nothing to the sums below;
  - k_loss = n_nonfinite + the smallest k' such that the top k' finite losses sum to >= p * their
    total (the sample that crosses the threshold is kept). The sums are exact integer sums of
    fixed-point losses (quantum: 2^-(52 - log2 B) of the largest loss's power of two, each loss
    rounded up): the rule holds except where the threshold lies within a few quanta of a partial
    sum, p = 1 keeps every positive loss, and no order of addition changes the result;
  - k = clamp(max(k_loss, k_min), 1, B), then rounded up to a multiple of round_to (at most B);
  - k_eff = min(k, cap): the rows actually kept when the caller can only afford `cap` of them;
    or, with fill, k_eff = cap: exactly `cap` rows, the top `cap` by loss.
Writes weight (1/k_eff on kept rows, 0 elsewhere), order, counts = [k, k_eff] and stats =
[kept-loss fraction, full-batch mean loss, kept-batch mean loss]. Nothing goes back to the host.
"""
import torch
import triton
import triton.language as tl

from kernels import MAX_BATCH, Selection, split_p


@triton.jit
def _select_kernel(loss_ptr, weight_ptr, order_ptr, counts_ptr, stats_ptr, B, p_hi, p_mid, p_lo, k_min, round_to,
                   cap, fill, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
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

    # Exact sums: each loss becomes an integer number of quanta (rounded up, so no positive loss
    # becomes 0), the quantum a power of two chosen from the largest loss so that the total stays
    # below 2^52. Integer sums are exact and independent of the order of addition, so this kernel
    # and kernels/reference.py agree bit for bit, and every int64 sum converts exactly to fp64.
    top_bits = tl.max(tl.where(sorted_finite, sorted_bits, 0), axis=0)
    exponent = tl.maximum((top_bits >> 23) & 0xFF, 1) - 127  # largest loss < 2^(exponent + 1)
    shift = 51 - LOG2_BLOCK - exponent  # each loss < 2^(52 - LOG2_BLOCK) quanta
    scale = ((shift + 1023).to(tl.int64) << 52).to(tl.float64, bitcast=True)  # 2^shift
    scaled = value.to(tl.float64) * scale  # exact: a power-of-two multiple of an fp32 value
    quanta = scaled.to(tl.int64)
    quanta += (quanta.to(tl.float64) < scaled).to(tl.int64)  # ceil
    cum = tl.cumsum(quanta, axis=0)
    total = tl.sum(quanta, axis=0)
    p = tl.zeros([], tl.float64) + p_hi  # fp64 from here on: p_hi + p_mid + p_lo is p's exact fp64 value
    p = p + p_mid
    p = p + p_lo
    threshold = total.to(tl.float64) * p
    n_bad = tl.sum((ok & ~sorted_finite).to(tl.int32), axis=0)
    k = n_bad + tl.sum((sorted_finite & (cum.to(tl.float64) < threshold)).to(tl.int32), axis=0) + 1
    k = tl.minimum(tl.maximum(k, k_min), B)
    k = tl.minimum((k + round_to - 1) // round_to * round_to, B)
    k_eff = tl.where(fill != 0, cap, tl.minimum(k, cap))

    kept = ok & (rank < k_eff)
    # 1/k_eff correctly rounded, as torch divides: compiled, an fp32 division is PTX's div.full.f32
    # (up to 2 ulp off; the interpreter's NumPy rounds correctly, so only a GPU would show it). The
    # fp64 quotient is correctly rounded, and rounding it again to fp32 gives the correctly rounded
    # fp32 quotient (53 >= 2 * 24 + 2 bits: double rounding is harmless for a division).
    inv_k = (1.0 / k_eff.to(tl.float64)).to(tl.float32)
    tl.store(order_ptr + rank, index.to(tl.int64), mask=ok)
    tl.store(weight_ptr + index, tl.where(kept, inv_k, 0.0), mask=ok)
    raw = tl.load(loss_ptr + index, mask=ok, other=0.0).to(tl.float64)  # NaN/Inf show in the means, on purpose
    kept_quanta = tl.sum(tl.where(kept, quanta, 0), axis=0)
    tl.store(counts_ptr, k)
    tl.store(counts_ptr + 1, k_eff)
    fraction = kept_quanta.to(tl.float64) / tl.maximum(total, 1).to(tl.float64)
    tl.store(stats_ptr, tl.where(total > 0, fraction, 1.0).to(tl.float32))
    tl.store(stats_ptr + 1, (tl.sum(tl.where(ok, raw, 0.0), axis=0) / B).to(tl.float32))
    tl.store(stats_ptr + 2, (tl.sum(tl.where(kept, raw, 0.0), axis=0) / k_eff).to(tl.float32))


def select_num_warps(block):
    """Warps for one program over `block` losses: at most 8-16 losses per thread, so that the int64
    keys, quanta and sums fit in registers (aot_compile checks: 8192 spills with 16 or 32 warps)."""
    return 4 if block <= 1024 else 8 if block <= 2048 else 16 if block <= 4096 else 32


def select_top_loss(losses, p, k_min=0, round_to=1, cap=None, fill=False):
    """Selection for a 1-D float tensor of B losses; p in (0, 1], k_min, round_to and
    cap host ints; fill=True keeps exactly `cap` rows (the compact pass's bucket, see train.py)."""
    if losses.dim() != 1 or not 1 <= losses.numel() <= MAX_BATCH:
        raise ValueError(f'losses must be 1-D with 1..{MAX_BATCH} entries, got shape {tuple(losses.shape)}')
    n = losses.numel()
    cap = n if cap is None else cap
    losses = losses.float().contiguous()
    dev = losses.device
    sel = Selection(weight=torch.empty(n, device=dev), order=torch.empty(n, device=dev, dtype=torch.int64),
                    counts=torch.empty(2, device=dev, dtype=torch.int32), stats=torch.empty(3, device=dev))
    block = triton.next_power_of_2(n)
    _select_kernel[(1,)](losses, sel.weight, sel.order, sel.counts, sel.stats, n, *split_p(p), int(k_min),
                         int(round_to), int(cap), int(fill), BLOCK=block, LOG2_BLOCK=block.bit_length() - 1,
                         num_warps=select_num_warps(block))
    return sel
