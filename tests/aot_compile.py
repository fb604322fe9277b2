"""Compile every kernel variant the launchers can pick, ahead of time, for an H100 (sm_90).

Run as a script without TRITON_INTERPRET (tests/test_compile.py does that): the interpreter accepts
things the compiler refuses (non-constexpr globals, some type promotions), so this is how a machine
without a GPU checks that the kernels will build on one. Prints one line per variant.
"""
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.cross_entropy import _blocks, _ce_backward_kernel, _ce_forward_kernel
from kernels.selection import _select_kernel, select_num_warps

TARGET = GPUTarget('cuda', 90, 32)


def build(fn, signature, constexprs, num_warps=4):
    sig = {**signature, **{name: 'constexpr' for name in constexprs}}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=TARGET,
                            options={'num_warps': num_warps})
    assert 'ptx' in kernel.asm and kernel.asm['ptx']
    print(f'ok {fn.__name__} {constexprs} warps={num_warps}', flush=True)


def main():
    for dtype in ('fp16', 'bf16', 'fp32'):
        for rows, classes in ((512, 10), (64, 10), (4096, 100), (37, 1000)):
            block_b, block_c = _blocks(rows, classes)
            for smoothing in (False, True):
                build(_ce_forward_kernel,
                      {'logits_ptr': f'*{dtype}', 'labels_ptr': '*i64', 'loss_ptr': '*fp32', 'lse_ptr': '*fp32',
                       'B': 'i32', 'C': 'i32', 'stride_b': 'i32', 'smoothing': 'fp32'},
                      {'SMOOTHING': smoothing, 'BLOCK_B': block_b, 'BLOCK_C': block_c})
            build(_ce_backward_kernel,
                  {'logits_ptr': f'*{dtype}', 'labels_ptr': '*i64', 'lse_ptr': '*fp32', 'weight_ptr': '*fp32',
                   'grad_out_ptr': '*fp32', 'grad_ptr': f'*{dtype}', 'B': 'i32', 'C': 'i32', 'stride_b': 'i32',
                   'stride_gb': 'i32', 'smoothing': 'fp32'},
                  {'BLOCK_B': block_b, 'BLOCK_C': block_c})
    for block in [int(b) for b in sys.argv[1:]] or [2, 512, 4096]:
        build(_select_kernel,
              {'loss_ptr': '*fp32', 'weight_ptr': '*fp32', 'order_ptr': '*i64', 'counts_ptr': '*i32',
               'stats_ptr': '*fp32', 'B': 'i32', 'p': 'fp32', 'k_min': 'i32', 'round_to': 'i32', 'cap': 'i32'},
              {'BLOCK': block}, num_warps=select_num_warps(block))


if __name__ == '__main__':
    main()
