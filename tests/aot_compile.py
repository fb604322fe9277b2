"""Compile every kernel variant the launchers can pick, ahead of time, for an H100 (sm_90).

Run as a script without TRITON_INTERPRET (tests/test_compile.py does that): the interpreter accepts
things the compiler refuses (non-constexpr globals, some type promotions), so this is how a machine
without a GPU checks that the kernels will build on one. Prints one line per variant with the
registers per thread and the bytes spilled to local memory (ptxas, bundled with Triton, run on the
kernel's PTX), and exits non-zero if any variant spills: a spilling tile is a slow tile, or if the
selection kernel divides approximately: its outputs must equal kernels/reference.py's bit for bit,
and compiled Triton turns an fp32 `/` into PTX's div.full.f32 (up to 2 ulp off), which the
interpreter, dividing in NumPy, never shows.
"""
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.cross_entropy import _blocks, _ce_backward_kernel, _ce_forward_kernel
from kernels.selection import _select_kernel, select_num_warps

TARGET = GPUTarget('cuda', 90, 32)


SPILLS = []
INEXACT = []

# PTX instructions that divide or take a reciprocal with an error of an ulp or more (the correctly
# rounded ones are div.rn.* and rcp.rn.*)
APPROXIMATE_DIVISION = re.compile(r'\b(?:div\.(?:full|approx)|rcp\.approx)\.[a-z0-9.]*')


def ptxas():
    """Path of the ptxas that Triton bundles (its lookup function changed between versions)."""
    from triton.backends.nvidia import compiler
    try:
        tool = compiler.get_ptxas(TARGET.arch)
    except TypeError:
        tool = compiler.get_ptxas()
    return getattr(tool, 'path', tool)


def registers_and_spills(ptx):
    """(registers per thread, spill-store bytes, spill-load bytes) as ptxas -v reports them for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(f'{tmp}/k.ptx', 'w') as fh:
            fh.write(ptx)
        res = subprocess.run([ptxas(), '-v', '--gpu-name=sm_90a', f'{tmp}/k.ptx', '-o', f'{tmp}/k.o'],
                             capture_output=True, text=True, check=True)
    log = res.stdout + res.stderr
    regs = int(re.search(r'Used (\d+) registers', log).group(1))
    stores, loads = (int(v) for v in re.search(r'(\d+) bytes spill stores, (\d+) bytes spill loads', log).groups())
    return regs, stores, loads


def build(fn, signature, constexprs, num_warps=4, exact=False):
    sig = {name: 'constexpr' if name in constexprs else signature[name] for name in fn.arg_names}  # in the kernel's order
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=TARGET,
                            options={'num_warps': num_warps})
    assert 'ptx' in kernel.asm and kernel.asm['ptx']
    regs, stores, loads = registers_and_spills(kernel.asm['ptx'])
    dtype = signature[fn.arg_names[0]].lstrip('*')  # the first pointer's element type: the logits' or losses'
    if stores or loads:
        SPILLS.append(f'{fn.__name__} {dtype} {constexprs} warps={num_warps}')
    approximate = sorted(set(APPROXIMATE_DIVISION.findall(kernel.asm['ptx'])))
    if exact and approximate:
        INEXACT.append(f'{fn.__name__} {constexprs}: {", ".join(approximate)}')
    print(f'ok {fn.__name__} {dtype} {constexprs} warps={num_warps} registers={regs} spill_stores={stores} '
          f'spill_loads={loads} approximate_division={",".join(approximate) or "none"}', flush=True)


def main():
    variants = sorted({(classes, *_blocks(rows, classes)) for rows, classes in ((512, 10), (5, 10), (4096, 100), (37, 1000))})
    for dtype in ('fp16', 'bf16', 'fp32'):
        for classes, block_b, block_c in variants:
            for smoothing in (False, True):
                build(_ce_forward_kernel,
                      {'logits_ptr': f'*{dtype}', 'labels_ptr': '*i64', 'loss_ptr': '*fp32', 'lse_ptr': '*fp32',
                       'B': 'i32', 'stride_b': 'i32', 'smoothing': 'fp32'},
                      {'C': classes, 'SMOOTHING': smoothing, 'BLOCK_B': block_b, 'BLOCK_C': block_c})
            build(_ce_backward_kernel,
                  {'logits_ptr': f'*{dtype}', 'labels_ptr': '*i64', 'lse_ptr': '*fp32', 'weight_ptr': '*fp32',
                   'grad_out_ptr': '*fp32', 'grad_ptr': f'*{dtype}', 'B': 'i32', 'stride_b': 'i32',
                   'stride_gb': 'i32', 'smoothing': 'fp32'},
                  {'C': classes, 'BLOCK_B': block_b, 'BLOCK_C': block_c})
    for block in [int(b) for b in sys.argv[1:]] or [2, 512, 4096]:
        build(_select_kernel,
              {'loss_ptr': '*fp32', 'weight_ptr': '*fp32', 'order_ptr': '*i64', 'counts_ptr': '*i32',
               'stats_ptr': '*fp32', 'B': 'i32', 'p_hi': 'fp32', 'p_mid': 'fp32', 'p_lo': 'fp32', 'k_min': 'i32', 'round_to': 'i32',
               'cap': 'i32', 'fill': 'i32'},
              {'BLOCK': block, 'LOG2_BLOCK': block.bit_length() - 1}, num_warps=select_num_warps(block), exact=True)


if __name__ == '__main__':
    main()
    if SPILLS:
        sys.exit('variants that spill registers: ' + '; '.join(SPILLS))
    if INEXACT:
        sys.exit('approximate division in a kernel that must match its reference bit for bit: ' + '; '.join(INEXACT))
