"""Fused per-sample cross-entropy with label smoothing, and its row-weighted backward, in Triton.

Forward, one pass over the logits [B, C] (fp16 or fp32, any C): a row-wise online max and sum of
exponentials give the log-sum-exp; the same pass sums the logits and picks the label's logit, so

    loss_i = (1 - s) * (m_i - x_i,y) + s * (m_i - mean_j x_ij) + log(sum_j exp(x_ij - m_i))

(s = label smoothing, m_i = row max; written as differences of like-sized numbers, so huge logits
lose no precision). It stores loss_i and lse_i in fp32. A label outside 0..C-1 gives a NaN loss
(never a silently wrong one). Backward recomputes softmax from lse:

    dlogits_ij = g * w_i * (exp(x_ij - lse_i) - (1 - s) [j == y_i] - s / C)

with w the per-row weight (BLF: 1/k on kept rows, 0 elsewhere) and g the upstream scalar, read from
device memory so nothing syncs. Rows with w_i == 0 get exactly 0, even if their logits are NaN.

The class count C is a compile-time constant: one variant per data set (10 or 100 classes), and
the loop over classes unrolls (one step for CIFAR-10). Triton 3.6's interpreter also cannot run a
loop whose bound is a runtime argument under NumPy 2.4 (TypeError: only 0-dimensional arrays...).
"""
import torch
import triton
import triton.language as tl


def _blocks(n_rows, n_cols):
    """Tile of a program: up to 256 classes per loop step, 1024 logits in all. Tiles of 4096 logits
    spilled on an H100 while C was a runtime argument; with C constexpr they fit (128-255
    registers, results/cpu-checks/registers.log); whether they are faster is not yet timed on a GPU.
    tests/aot_compile.py reports registers and spills of every tile and fails on a spill."""
    block_c = min(triton.next_power_of_2(n_cols), 256)
    block_b = max(1, min(triton.next_power_of_2(n_rows), 1024 // block_c))
    return block_b, block_c


@triton.jit
def _ce_forward_kernel(logits_ptr, labels_ptr, loss_ptr, lse_ptr, B, C: tl.constexpr, stride_b, smoothing,
                       SMOOTHING: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    y = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    row_start = logits_ptr + rows.to(tl.int64)[:, None] * stride_b
    m = tl.full([BLOCK_B], float('-inf'), tl.float32)
    sum_exp = tl.zeros([BLOCK_B], tl.float32)
    sum_x = tl.zeros([BLOCK_B], tl.float32)
    x_label = tl.zeros([BLOCK_B], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        x = tl.load(row_start + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        x_or_ninf = tl.where(col_ok[None, :], x, float('-inf'))
        m_new = tl.maximum(m, tl.max(x_or_ninf, axis=1))
        sum_exp = sum_exp * tl.exp(m - m_new) + tl.sum(tl.exp(x_or_ninf - m_new[:, None]), axis=1)
        m = m_new
        sum_x += tl.sum(x, axis=1)
        x_label += tl.sum(tl.where(cols[None, :] == y[:, None], x, 0.0), axis=1)
    if SMOOTHING:  # compiled out at s = 0, where 0 * (m - sum_x / C) would be NaN for a -inf logit
        loss = (1 - smoothing) * (m - x_label) + smoothing * (m - sum_x / C) + tl.log(sum_exp)
    else:
        loss = (m - x_label) + tl.log(sum_exp)
    loss = tl.where((y >= 0) & (y < C), loss, float('nan'))
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    tl.store(lse_ptr + rows, m + tl.log(sum_exp), mask=row_ok)


@triton.jit
def _ce_backward_kernel(logits_ptr, labels_ptr, lse_ptr, weight_ptr, grad_out_ptr, grad_ptr, B, C: tl.constexpr,
                        stride_b, stride_gb, smoothing, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    y = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    w = tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    scale = w * tl.load(grad_out_ptr)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_ok[:, None] & (cols < C)[None, :]
        x = tl.load(logits_ptr + rows.to(tl.int64)[:, None] * stride_b + cols[None, :], mask=mask, other=0.0)
        target = tl.where(cols[None, :] == y[:, None], 1.0 - smoothing, 0.0) + smoothing / C
        g = (tl.exp(x.to(tl.float32) - lse[:, None]) - target) * scale[:, None]
        g = tl.where(w[:, None] != 0, g, 0.0)
        tl.store(grad_ptr + rows.to(tl.int64)[:, None] * stride_gb + cols[None, :],
                 g.to(grad_ptr.dtype.element_ty), mask=mask)


def _check(logits, labels):
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f'expected logits [B, C] and labels [B], got {tuple(logits.shape)} and {tuple(labels.shape)}')
    if logits.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f'logits must be fp16, bf16 or fp32, got {logits.dtype}')
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    return logits, labels.contiguous()


def cross_entropy_forward(logits, labels, smoothing=0.0, loss_out=None, lse_out=None):
    """Per-sample losses and log-sum-exps, both fp32 [B]. Outputs may be preallocated."""
    logits, labels = _check(logits, labels)
    n, c = logits.shape
    loss = torch.empty(n, device=logits.device, dtype=torch.float32) if loss_out is None else loss_out
    lse = torch.empty(n, device=logits.device, dtype=torch.float32) if lse_out is None else lse_out
    if n == 0:
        return loss, lse
    block_b, block_c = _blocks(n, c)
    _ce_forward_kernel[(triton.cdiv(n, block_b),)](logits, labels, loss, lse, n, c, logits.stride(0),
                                                    float(smoothing), SMOOTHING=smoothing != 0,
                                                    BLOCK_B=block_b, BLOCK_C=block_c)
    return loss, lse


def cross_entropy_backward(logits, labels, lse, weight, grad_out, smoothing=0.0, grad_in=None):
    """d(sum_i weight_i * loss_i)/dlogits * grad_out, in the logits' dtype; grad_out is a 1-element tensor."""
    logits, labels = _check(logits, labels)
    n, c = logits.shape
    grad = torch.empty_like(logits) if grad_in is None else grad_in
    if n == 0:
        return grad
    block_b, block_c = _blocks(n, c)
    _ce_backward_kernel[(triton.cdiv(n, block_b),)](
        logits, labels, lse, weight.contiguous(), grad_out.reshape(1).float(), grad, n, c, logits.stride(0),
        grad.stride(0), float(smoothing), BLOCK_B=block_b, BLOCK_C=block_c)
    return grad


class WeightedCrossEntropy(torch.autograd.Function):
    """sum_i weight_i * CE(logits_i, y_i); weight and the precomputed losses/lse carry no gradient."""

    @staticmethod
    def forward(ctx, logits, labels, weight, smoothing, losses, lse):
        ctx.save_for_backward(logits, labels, weight, lse)
        ctx.smoothing = smoothing
        return torch.dot(weight, losses)

    @staticmethod
    def backward(ctx, grad_out):
        logits, labels, weight, lse = ctx.saved_tensors
        grad = cross_entropy_backward(logits, labels, lse, weight, grad_out, ctx.smoothing)
        return grad, None, None, None, None, None


def weighted_cross_entropy(logits, labels, weight, smoothing=0.0, losses=None, lse=None):
    """Differentiable sum_i weight_i * loss_i. Pass losses/lse from cross_entropy_forward to skip a pass."""
    if losses is None or lse is None:
        losses, lse = cross_entropy_forward(logits.detach(), labels, smoothing)
    return WeightedCrossEntropy.apply(logits, labels, weight, smoothing, losses, lse)
