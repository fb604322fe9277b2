"""Seconds of one ResNet-9 training step (forward, summed cross-entropy, backward) at batch 512 on
this CPU, by width and dtype: why run_on_cpu.py trains the gpu tests at width 0.125 in their own
dtype (fp16), rather than at full width.

    OMP_NUM_THREADS=2 python results/cpu-checks/gpu-tests-on-cpu/step_time.py
"""
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
import networks  # noqa: E402

print(f'# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, '
      f'{torch.get_num_threads()} threads')
torch.manual_seed(0)
for width, dtype in [(1.0, torch.float16), (1.0, torch.float32), (0.125, torch.float16)]:
    model = networks.make_model(width, 'cpu', dtype)
    x = torch.randn(512, 3, 32, 32).to(dtype).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (512,))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        F.cross_entropy(model(x).float(), y, reduction='sum').backward()
        times.append(time.perf_counter() - start)
    print(f'width {width:5}  {str(dtype):14}  step s: {", ".join(f"{t:.2f}" for t in times)}')
