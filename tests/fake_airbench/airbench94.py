"""A stand-in for a published airbench script, for reproduce.py's `airbench` stage on the CPU.

It does what the stage relies on and nothing more: reads the cache airbench's CifarLoader reads
(cifar10/train.pt, test.pt in the working folder), normalises with torchvision.transforms.Normalize
(the stage's stand-in when torchvision is missing), prints airbench's table with one `eval` row per
run, and saves its code under logs/ as airbench does (the stage must delete that). Its "model" is a
nearest-class-mean classifier on raw pixels: a real, quick accuracy (about 0.27), timed as it runs.
"""
import os
import time
import uuid

import torch
import torchvision.transforms as T

train, test = torch.load('cifar10/train.pt'), torch.load('cifar10/test.pt')
assert train['images'].shape == (50000, 32, 32, 3) and train['images'].dtype == torch.uint8
assert test['labels'].shape == (10000,) and len(train['classes']) == 10
normalize = T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def images(part, n):
    return normalize((part['images'][:n].float() / 255).permute(0, 3, 1, 2)).flatten(1)


columns = ['run   ', 'epoch', 'train_acc', 'val_acc', 'tta_val_acc', 'time_seconds']
print('|' + '|'.join(f'  {c}  ' for c in columns) + '|')
accs = []
for run in range(3):
    start = time.perf_counter()
    n = 2000 * (run + 1)
    x, y = images(train, n), train['labels'][:n]
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    predicted = torch.cdist(images(test, 1000), means).argmin(1)
    acc = (predicted == test['labels'][:1000]).float().mean().item()
    seconds = time.perf_counter() - start
    accs.append(acc)
    cells = [str(run), 'eval', '', '', f'{acc:.4f}', f'{seconds:.4f}']
    print('|' + '|'.join(f'  {v.rjust(len(c))}  ' for v, c in zip(cells, columns)) + '|')
log_dir = os.path.join('logs', str(uuid.uuid4()))
os.makedirs(log_dir)
torch.save({'code': open(__file__).read(), 'accs': accs}, os.path.join(log_dir, 'log.pt'))
