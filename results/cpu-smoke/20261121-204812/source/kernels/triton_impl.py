"""The Triton implementation of the BLF functions (see kernels/__init__.py)."""
from kernels.cross_entropy import cross_entropy_forward, weighted_cross_entropy  # noqa: F401
from kernels.selection import select_top_loss  # noqa: F401
