"""The airbench stage's own code running the published airbench scripts on the CPU.

reproduce.py's `airbench` stage writes airbench's cache (cifar10/train.pt, test.pt) from this repo's
data, runs a published script in that folder with shims/ standing in for torchvision, stops it after
its share of the time, parses the table it printed and deletes its cache and logs. The tests do all
of that with a stand-in script; this runs the real ones through reproduce.run_airbench_script.

The scripts are CUDA-only and train in fp16, which crawls on a CPU, so each runs from a copy that
begins with a preamble of CPU stand-ins and is otherwise the published file, but for one edit:
  - torch.load's `map_location=torch.device(...)` becomes 'cpu' (torch.device(0) raises without a
    GPU), and the preamble's torch.load keeps the first --n-train / --n-test images of the cache;
  - .cuda() leaves a tensor or module on the CPU, torch.cuda.Event is the wall clock, synchronize a no-op;
  - .half() gives fp32, and torch.compile / Module.compile leave the code uncompiled.
Everything of ours runs unchanged: the cache writer, the shim, the Ctrl-C after the share, the
filter that keeps the source lines its tracebacks quote out of the log, the table parser, the
clean-up. The accuracies at this size say nothing about the scripts.

    python results/cpu-checks/airbench-on-cpu/run_published.py .airbench/airbench94.py .airbench/airbench94_muon.py

(.airbench/ holds the published scripts, never committed; results/README.md says how to get them.)
"""
import argparse
import hashlib
import json
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, ROOT)

import reproduce  # noqa: E402

PREAMBLE = '''# --- CPU stand-ins (results/cpu-checks/airbench-on-cpu/run_published.py); the published script follows ---
import time as _time
import torch as _torch
_load = _torch.load
def _cpu_load(f, map_location=None, **kw):
    data = _load(f, map_location='cpu', **kw)
    n = {N_TRAIN} if str(f).endswith('train.pt') else {N_TEST}
    return {{**data, 'images': data['images'][:n], 'labels': data['labels'][:n]}}
_torch.load = _cpu_load
_torch.Tensor.cuda = lambda self, *a, **k: self
_torch.nn.Module.cuda = lambda self, *a, **k: self
_torch.Tensor.half = lambda self, *a, **k: self.float()
_torch.nn.Module.half = lambda self: self.float()
_torch.nn.Module.compile = lambda self, *a, **k: None
_torch.compile = lambda fn=None, **k: fn if fn is not None else (lambda g: g)
class _Event:
    def __init__(self, enable_timing=False):
        self.t = None
    def record(self, stream=None):
        self.t = _time.perf_counter()
    def elapsed_time(self, end):
        return 1000 * (end.t - self.t)
_torch.cuda.Event = _Event
_torch.cuda.synchronize = lambda *a, **k: None
# --- the published script, unchanged ---
'''


def cpu_copy(script, folder, n_train, n_test):
    """The preamble followed by the published script, in `folder` under the script's own name."""
    with open(script) as fh:
        code, edits = re.subn(r'map_location=torch\.device\([^)]*\)', "map_location='cpu'", fh.read())
    assert edits == 1, f'{script}: {edits} torch.load calls with a device, expected 1'
    path = os.path.join(folder, os.path.basename(script))
    with open(path, 'w') as fh:
        fh.write(PREAMBLE.format(N_TRAIN=n_train, N_TEST=n_test) + code)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('scripts', nargs='+', help='local copies of the published scripts')
    ap.add_argument('--data-dir', default=os.path.join(ROOT, 'data'))
    ap.add_argument('--n-train', type=int, default=4000)
    ap.add_argument('--n-test', type=int, default=2000)
    ap.add_argument('--share-min', type=float, default=12, help='the stage time; a script gets reproduce.AIRBENCH_SCRIPT_SHARE of what is left of it')
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix='airbench-on-cpu-')
    stage_args = reproduce.parse_args(['--smoke', '--device', 'cpu', '--data-dir', args.data_dir, '--out', out,
                                       '--stage-timeout-min', str(args.share_min)])
    ctx = reproduce.Context(stage_args, 'airbench')
    failed = 0
    for script in args.scripts:
        stem = os.path.splitext(os.path.basename(script))[0]
        with open(script, 'rb') as fh:
            print(f'== {stem}: published sha256 {hashlib.sha256(fh.read()).hexdigest()}', flush=True)
        copy = cpu_copy(script, tempfile.mkdtemp(prefix=stem + '-'), args.n_train, args.n_test)
        work = os.path.join(ctx.dir, stem)
        try:
            theirs = reproduce.run_airbench_script(ctx, copy, stem, work)
        except reproduce.StageFailed as e:
            print(f'FAILED {stem}: {e}', flush=True)
            failed += 1
            continue
        left = sorted(os.listdir(work)) if os.path.isdir(work) else []
        print(f'== {stem}: {json.dumps(theirs)}')
        print(f'== {stem}: left in its folder: {left or "nothing"}', flush=True)
        if left:
            failed += 1
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
