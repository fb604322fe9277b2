"""Does every torch.X.Y / triton.X / tl.X the code names exist in this Python's torch and triton?
Most CUDA paths cannot run on a CPU, but their names can be looked up (the CUDA build of torch 2.11
holds them all). Run from the repository root: python results/cpu-checks/torch211-triton36/attributes.py"""
import glob
import importlib
import re

import torch
import triton

files = glob.glob('*.py') + glob.glob('kernels/*.py') + glob.glob('tests/*.py') + glob.glob('shims/**/*.py', recursive=True)
names = set()
for path in files:
    text = open(path).read()
    names |= set(re.findall(r'\btorch(?:\.[A-Za-z_]\w*)+', text))
    names |= set(re.findall(r'\btriton(?:\.[A-Za-z_]\w*)+', text))
    names |= {'triton.language' + n[2:] for n in re.findall(r'\btl(?:\.[A-Za-z_]\w*)+', text)}
missing = []
for name in sorted(names):
    parts = name.split('.')
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module('.'.join(parts[:i]))
            break
        except ImportError:
            continue
    try:
        for part in parts[i:]:
            obj = getattr(obj, part)
    except AttributeError:
        missing.append(name)
print(f'torch {torch.__version__}, triton {triton.__version__}: {len(names)} names in {len(files)} files, '
      f'missing: {missing or "none"}')
