"""Why tests/test_loss_scale.py turns oneDNN off for its fp16 step: on a CPU with AVX512-FP16,
oneDNN's fp16 weight gradient is slow. Times one 3x3 convolution's gradients, then the test's own
comparison (train.py's step at batch 512, ResNet-9 width 0.25, fp16 against fp32) with and without
oneDNN. One thread, as under the suite's xdist workers.

    python results/cpu-checks/durations/onednn_fp16.py data      # a folder holding cifar-10-batches-py/
"""
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]
torch.set_num_threads(1)

import cli  # noqa: E402
import data_gpu  # noqa: E402
import networks  # noqa: E402
import test_loss_scale as T  # noqa: E402


def conv_grads(onednn):
    torch.backends.mkldnn.enabled = onednn
    go, x = (torch.randn(128, 32, 32, 32, dtype=torch.float16).contiguous(memory_format=torch.channels_last) for _ in range(2))
    w = torch.randn(32, 32, 3, 3, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    for name, mask in (('input grad', (True, False, False)), ('weight grad', (False, True, False))):
        t = time.time()
        torch.ops.aten.convolution_backward(go, x, w, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1, mask)
        print(f'oneDNN {"on " if onednn else "off"}: fp16 conv 3x3, 128x32x32x32, {name}: {time.time() - t:.2f} s', flush=True)
    torch.backends.mkldnn.enabled = True


def step_comparison(cifar, onednn, scale):
    n = 512
    x32 = data_gpu.normalize(cifar['train_x'][:n], torch.float32).contiguous(memory_format=torch.channels_last)
    y = cifar['train_y'][:n]
    torch.manual_seed(0)
    m32 = networks.make_model(0.25, 'cpu', torch.float32)
    m16 = networks.make_model(0.25, 'cpu', torch.float16)
    m16.load_state_dict(m32.state_dict())
    h = {**cli.hyp, 'batch_size': n, 'precision': 'fp16', 'loss_scale': scale}
    torch.backends.mkldnn.enabled = onednn
    t = time.time()
    g16 = T.real_step_grads(m16, x32.half(), y, h)
    seconds = time.time() - t
    torch.backends.mkldnn.enabled = True
    e = T.errors(g16, T.real_step_grads(m32, x32, y, {**h, 'precision': 'fp32'}))
    print(f'oneDNN {"on " if onednn else "off"}, loss scale {"512 (default)" if scale == 0 else scale}: fp16 step {seconds:.1f} s, '
          f'worst layer {max(r for r, _ in e.values()):.4f} off fp32, lowest cosine {min(c for _, c in e.values()):.4f}', flush=True)


if __name__ == '__main__':
    print(f'# torch {torch.__version__}, one thread')
    for onednn in (True, False):
        conv_grads(onednn)
    cifar = data_gpu.load_cifar10(sys.argv[1], download=False)
    for onednn in (False, True):
        for scale in (0.0, 1.0):
            step_comparison(cifar, onednn, scale)
