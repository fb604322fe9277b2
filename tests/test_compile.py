"""The Triton kernels compile for an H100 (sm_90), checked on a machine without a GPU.

The interpreter that runs the other kernel tests on the CPU accepts code that the GPU compiler
refuses (this test was added after it caught a non-constexpr global in the selection kernel), so
every variant the launchers can choose is compiled ahead of time here, from a fresh cache, and
ptxas's register and spill counts are checked: no variant may spill. The selection kernel's PTX
must divide with correct rounding only: its weights are compared bit for bit with the reference's,
and the interpreter divides correctly even where the compiled kernel would not.
"""
import os
import subprocess
import sys

from conftest import REPO


def test_every_kernel_variant_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION='1', PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, str(REPO / 'tests' / 'aot_compile.py'), '2', '512', '1024', '2048', '4096'],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith('ok ')]
    assert len(lines) == 3 * 4 * 3 + 5, res.stdout  # dtypes x (classes, tile) x (2 forward + 1 backward), 5 selections
    for line in lines:  # the script exits non-zero on a spill; check its report too
        assert 'spill_stores=0 spill_loads=0' in line and int(line.split('registers=')[1].split()[0]) <= 255, line
        if line.startswith('ok _select_kernel'):  # its weights must equal the reference's bit for bit
            assert 'approximate_division=none' in line, line
