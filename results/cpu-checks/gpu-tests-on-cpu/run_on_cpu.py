"""The GPU-only tests' own code, run on the CPU: do their bodies call the project's functions as
they are now, and do their assertions hold on real data? (No GPU has run them yet; reproduce.py's
`tests` stage will, and a defect in a test would cost that stage a rerun in a later GPU session.)

What it does, in a copy of the tree at HEAD (`git archive`), never in the repository itself:
- in each test function marked `gpu`, and only there, the device and the sizes change:
  'cuda' -> 'cpu' and .cuda() -> .cpu(); in those that train on data (`n_train=`), also the
  network's width 1.0 -> 0.125 and n_train=10240 -> 2048, with the step counts asserted for it,
  20 -> 4 (a full-width fp16 step of ResNet-9 at batch 512 takes 131-136 s on the 2-core EPYC, one
  at width 0.125 2.8-3.0 s: step_time.log; the dtypes stay as the tests give them, fp16 included);
- torch.cuda.synchronize and torch.cuda.set_sync_debug_mode become no-ops: the no-host-sync check
  itself is the GPU's (on the CPU, tests/test_no_sync.py guards the same epochs with syncguard.py);
- conftest.py no longer skips the `gpu` tests.
Then `pytest -m gpu` there, with the Triton kernels in the interpreter. What this cannot show: the
CUDA paths of the library (warm-up's compact sizes, pinned counts, cuDNN, native kernels).

    python results/cpu-checks/gpu-tests-on-cpu/run_on_cpu.py [pytest args, e.g. -k kernels]   # data/ unpacked
    python results/cpu-checks/gpu-tests-on-cpu/run_on_cpu.py --compile   # the gpu tests of torch.compile (inductor's CPU backend)
"""
import ast
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SWAPS = [("'cuda'", "'cpu'"), ('.cuda()', '.cpu()')]
# only in the tests that train on data (n_train=...): ResNet-9 at 1/8 of its width, a fifth of the data
TRAINING_SWAPS = [('make_model(1.0,', 'make_model(0.125,'), ('n_train=10240', 'n_train=2048'),
                  ('== 20 *', '== 4 *'), ("totals['steps'] == 20", "totals['steps'] == 4")]
HYP_LINE = re.compile(r'^(\s*h = )(.*)$')  # the hyperparameters a test trains with: width 0.125 on top
PATCH = '''
# run_on_cpu.py: the GPU tests on the CPU (no-op sync calls; the gpu tests are not skipped)
torch.cuda.synchronize = lambda *args, **kwargs: None
torch.cuda.set_sync_debug_mode = lambda *args, **kwargs: None
'''


def gpu_functions(source):
    """(first line, last line) of each top-level function marked pytest.mark.gpu, decorators included."""
    spans = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and any('mark.gpu' in ast.unparse(d) for d in node.decorator_list):
            spans.append((min(d.lineno for d in node.decorator_list), node.end_lineno))
    return spans


def transform(path):
    lines = open(path).read().splitlines(keepends=True)
    changed = 0
    for first, last in gpu_functions(''.join(lines)):
        trains = any('n_train=' in line for line in lines[first - 1:last])
        for i in range(first - 1, last):
            before = lines[i]
            for old, new in SWAPS + (TRAINING_SWAPS if trains else []):
                lines[i] = lines[i].replace(old, new)
            if trains and (m := HYP_LINE.match(lines[i].rstrip('\n'))):
                lines[i] = f"{m[1]}{{**{m[2]}, 'width': 0.125}}\n"
            changed += lines[i] != before
    open(path, 'w').write(''.join(lines))
    return changed


def main():
    data = os.path.abspath(os.path.join(REPO, 'data'))
    with tempfile.TemporaryDirectory() as tree:
        head = subprocess.run(['git', '-C', REPO, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
        subprocess.run(f'git -C {REPO} archive HEAD | tar -x -C {tree}', shell=True, check=True)
        print(f'# tree: {head} (git archive), data: {data}')
        conftest = os.path.join(tree, 'tests', 'conftest.py')
        text = open(conftest).read()
        skip = '    if torch.cuda.is_available():\n        return\n    skip ='
        assert skip in text, 'conftest.py changed: update run_on_cpu.py'
        text = text.replace(skip, '    return\n    skip =')
        text = text.replace('\nimport data_gpu', PATCH + '\nimport data_gpu', 1)
        open(conftest, 'w').write(text)
        for name in sorted(os.listdir(os.path.join(tree, 'tests'))):
            path = os.path.join(tree, 'tests', name)
            if name.startswith('test_') and name.endswith('.py') and 'mark.gpu' in open(path).read():
                print(f'# {name}: {transform(path)} line(s) changed in {len(gpu_functions(open(path).read()))} gpu test(s)')
        sys.stdout.flush()
        env = {**os.environ, 'TRITON_INTERPRET': '1', 'CIFAR10_DIR': data}
        args = sys.argv[1:]
        marker = 'gpu and compile' if '--compile' in args else 'gpu and not compile'
        return subprocess.run([sys.executable, '-m', 'pytest', '-m', marker, '-v', '-rs', '-p', 'no:cacheprovider',
                               *[a for a in args if a != '--compile']], cwd=tree, env=env).returncode


if __name__ == '__main__':
    sys.exit(main())
