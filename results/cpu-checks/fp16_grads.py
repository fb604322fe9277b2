import sys
sys.path[:0] = ['.', 'tests']
import torch, cli, data_gpu, networks, train
from test_loss_scale import real_step_grads, errors
cifar = data_gpu.load_cifar10('data', download=False, log=lambda m: None)
n = 512
x32 = data_gpu.normalize(cifar['train_x'][:n], torch.float32).contiguous(memory_format=torch.channels_last)
y = cifar['train_y'][:n]
torch.manual_seed(0)
m32 = networks.make_model(0.25, 'cpu', torch.float32)
state = {k: v.clone() for k, v in m32.state_dict().items()}
print(f'# torch {torch.__version__}, CPU; ResNet-9 width 0.25, first {n} CIFAR-10 training images; fp16 weights+activations (BN fp32) vs fp32, same weights')
for scale in (1.0, 0.0):
    h = {**cli.hyp, 'batch_size': n, 'precision': 'fp16', 'loss_scale': scale}
    m32.load_state_dict(state)
    m16 = networks.make_model(0.25, 'cpu', torch.float16)
    m16.load_state_dict(state)
    errs = errors(real_step_grads(m16, x32.half(), y, h), real_step_grads(m32, x32, y, {**h, 'precision': 'fp32'}))
    print(f'\nloss scale {train.loss_scale(h):g}: layer, relative L2 error, cosine')
    for name, (rel, cos) in errs.items():
        print(f'  {name:28s} {rel:.4f} {cos:.5f}')
    print(f'  worst {max(r for r, _ in errs.values()):.4f}, lowest cosine {min(c for _, c in errs.values()):.5f}')
