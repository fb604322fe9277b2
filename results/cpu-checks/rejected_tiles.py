"""Registers and spills (ptxas for sm_90a, no GPU needed) of the tiles the kernels no longer use:
the cross-entropy's former 4096-logit tiles and the selection at 8192 and 16384 losses.
Run from the repository root: python results/cpu-checks/rejected_tiles.py"""
import sys

sys.path[:0] = ['.', 'tests']
import aot_compile as a  # noqa: E402
from kernels.cross_entropy import _ce_backward_kernel, _ce_forward_kernel  # noqa: E402
from kernels.selection import _select_kernel  # noqa: E402

for dtype in ('fp16',):
    for classes, block_b, block_c in ((10, 256, 16), (100, 32, 128)):  # 4096 logits for C = 10 and C = 100
        a.build(_ce_forward_kernel, {'logits_ptr': f'*{dtype}', 'labels_ptr': '*i64', 'loss_ptr': '*fp32',
                                     'lse_ptr': '*fp32', 'B': 'i32', 'stride_b': 'i32', 'smoothing': 'fp32'},
                {'C': classes, 'SMOOTHING': True, 'BLOCK_B': block_b, 'BLOCK_C': block_c})
        a.build(_ce_backward_kernel, {'logits_ptr': f'*{dtype}', 'labels_ptr': '*i64', 'lse_ptr': '*fp32',
                                      'weight_ptr': '*fp32', 'grad_out_ptr': '*fp32', 'grad_ptr': f'*{dtype}', 'B': 'i32',
                                      'stride_b': 'i32', 'stride_gb': 'i32', 'smoothing': 'fp32'},
                {'C': classes, 'BLOCK_B': block_b, 'BLOCK_C': block_c})
for block, warps in ((8192, 16), (8192, 32), (16384, 32)):
    a.build(_select_kernel, {'loss_ptr': '*fp32', 'weight_ptr': '*fp32', 'order_ptr': '*i64', 'counts_ptr': '*i32',
                             'stats_ptr': '*fp32', 'B': 'i32', 'p_hi': 'fp32', 'p_mid': 'fp32', 'p_lo': 'fp32',
                             'k_min': 'i32', 'round_to': 'i32', 'cap': 'i32', 'fill': 'i32'},
            {'BLOCK': block, 'LOG2_BLOCK': block.bit_length() - 1}, num_warps=warps)
