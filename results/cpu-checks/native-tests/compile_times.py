"""Seconds to compile the selection kernel at several blocks and one cross-entropy variant for sm_90,
ahead of time (no GPU), from an empty Triton cache. Run from the repository root; usage in
native-tests.log."""
import sys, time
sys.path.insert(0, '.')
import triton
from triton.compiler import ASTSource
from tests.aot_compile import TARGET
from kernels.selection import _select_kernel, select_num_warps
from kernels.cross_entropy import _ce_forward_kernel, _blocks
sig = {'loss_ptr': '*fp32', 'weight_ptr': '*fp32', 'order_ptr': '*i64', 'counts_ptr': '*i32',
       'stats_ptr': '*fp32', 'B': 'i32', 'p_hi': 'fp32', 'p_mid': 'fp32', 'p_lo': 'fp32', 'k_min': 'i32', 'round_to': 'i32',
       'cap': 'i32', 'fill': 'i32'}
for block in (8, 128, 512, 1024, 4096):
    ce = {'BLOCK': block, 'LOG2_BLOCK': block.bit_length()-1}
    s = {n: 'constexpr' if n in ce else sig[n] for n in _select_kernel.arg_names}
    t = time.time()
    triton.compile(ASTSource(fn=_select_kernel, signature=s, constexprs=ce), target=TARGET, options={'num_warps': select_num_warps(block)})
    print('select', block, round(time.time() - t, 2))
bb, bc = _blocks(512, 10)
s2 = {'logits_ptr': '*fp16', 'labels_ptr': '*i64', 'loss_ptr': '*fp32', 'lse_ptr': '*fp32','B': 'i32', 'stride_b': 'i32', 'smoothing': 'fp32'}
cx = {'C': 10, 'SMOOTHING': True, 'BLOCK_B': bb, 'BLOCK_C': bc}
s = {n: 'constexpr' if n in cx else s2[n] for n in _ce_forward_kernel.arg_names}
t = time.time(); triton.compile(ASTSource(fn=_ce_forward_kernel, signature=s, constexprs=cx), target=TARGET, options={'num_warps': 4}); print('ce_fwd', round(time.time()-t, 2))
