"""A stand-in for the two pieces of torchvision that airbench's published scripts use, for machines
without torchvision (reproduce.py's `airbench` stage puts this folder on PYTHONPATH only then).

The scripts read CIFAR-10 from their own cache (cifar10/train.pt, test.pt), which reproduce.py
writes from this repo's data before running them, so the download path is never taken; and they
normalise with transforms.Normalize. Nothing else of torchvision is here.
"""
from . import datasets, transforms  # noqa: F401
