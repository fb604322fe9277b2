"""BatchLossFilter kernels: fused per-sample cross-entropy, top-loss selection, weighted backward.

Two implementations with the same functions, picked by `--blf-impl`:
  kernels.triton_impl  Triton kernels (native on CUDA; on CPU tensors under TRITON_INTERPRET=1)
  kernels.reference    plain torch, the ground truth for the tests and the baseline for timing

    cross_entropy_forward(logits, labels, smoothing) -> (losses fp32 [B], lse fp32 [B])
    select_top_loss(losses, p, k_min, round_to, cap) -> Selection
    weighted_cross_entropy(logits, labels, weight, smoothing, losses, lse) -> sum_i weight_i * loss_i

Neither returns anything to the host: counts and statistics stay in device tensors.
"""
import math
import struct
from typing import NamedTuple

import torch

MAX_BATCH = 4096  # the selection's largest batch: one Triton program sorts it in registers; 8192 already spills on an H100


class Selection(NamedTuple):
    """What a selection step leaves on the device (B = batch size).

    weight  fp32 [B]   1/k_eff on the kept rows, exactly 0 elsewhere (in batch order)
    order   int64 [B]  row indices by loss, descending, ties by lower index; non-finite losses first
    counts  int32 [2]  k (the kept count by the rule) and k_eff = min(k, cap) (rows actually kept)
    stats   fp32 [3]   kept-loss fraction (finite losses), full-batch mean loss, kept-batch mean loss
    """
    weight: torch.Tensor
    order: torch.Tensor
    counts: torch.Tensor
    stats: torch.Tensor


def min_samples(q, batch):
    """k_min = ceil(q * B), immune to float noise such as 0.3 * 10 = 3.0000000000000004."""
    return math.ceil(round(q * batch, 9))


def split_p(p):
    """p as three fp32 numbers whose sum is exactly p's fp64 value: the compiled selection kernel
    takes float arguments in fp32, and fp32 alone would move the threshold by up to 2^-24 (0.3
    becomes 0.30000001). Both implementations rebuild p in fp64 from these parts, in this order."""
    def fp32(x):
        return struct.unpack('f', struct.pack('f', x))[0]
    hi = fp32(p)
    mid = fp32(p - hi)
    return hi, mid, fp32(p - hi - mid)
