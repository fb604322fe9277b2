"""Beyond one GPU: train.py under torchrun, with PyTorch's own torch.distributed (NCCL on GPUs,
gloo on CPUs). Two ways to use several processes:

    torchrun --nproc_per_node 8 train.py --runs 40            # many seeds: each rank trains its share
    torchrun --nproc_per_node 8 train.py --data-parallel      # one run: the batch split over the ranks

Many seeds: seed s + i goes to rank i mod WORLD_SIZE, each rank trains its seeds on its own device
(cuda:LOCAL_RANK), and rank 0 gathers every run into ONE record, the same as one process running
all the seeds would write (each run also names its rank and device).

Data-parallel: every rank holds the whole data set on its GPU and draws the same augmented epoch
from the shared seed, then trains on its own contiguous slice of each global batch; gradients are
averaged by DistributedDataParallel. BatchNorm uses each rank's own statistics (as the multi-GPU
DAWNBench entries did: at batch 512 on 8 GPUs it is ghost BatchNorm of 64). BatchLossFilter selects
within each rank's slice (no collective, no host sync). Rank 0 records; its CUDA events sit between
barriers, so an epoch's time is the slowest rank's.
"""
import os
import sys

import torch
import torch.distributed as dist


class Group:
    """This process's place in the job: rank `rank` of `world` (a single process: 0 of 1)."""

    def __init__(self, rank=0, world=1, local_rank=0, data_parallel=False):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.data_parallel = data_parallel and world > 1

    @property
    def active(self):
        return self.world > 1

    @property
    def leader(self):
        return self.rank == 0

    def my_seeds(self, seeds):
        """The seeds this rank trains: all of them in a data-parallel run, every world-th otherwise."""
        return list(seeds) if self.data_parallel or not self.active else list(seeds)[self.rank::self.world]

    def gather(self, obj):
        """Every rank's obj, in rank order, on every rank (host objects: at the end of a run only)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        """Wait for every rank (between epochs of a data-parallel run; at start-up)."""
        if self.active:
            dist.barrier()

    def local_batch(self, x, y):
        """This rank's contiguous slice of a global batch."""
        if not self.data_parallel:
            return x, y
        size = len(y) // self.world
        start = self.rank * size
        return x[start:start + size], y[start:start + size]

    def wrap(self, model, device):
        """The model as the training steps see it: DistributedDataParallel in a data-parallel run."""
        if not self.data_parallel:
            return model
        ids = [device.index] if device.type == 'cuda' else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def close(self, wait_for_peers=False):
        """Leave the job. wait_for_peers (every rank finished): a barrier first, so that no rank
        tears down its process group while a peer still waits on a collective. A rank that failed
        leaves at once: its peers may never arrive. The process should then end with end_process."""
        if self.active and dist.is_initialized():
            if wait_for_peers:
                dist.barrier()
            dist.destroy_process_group()


def world_size():
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get('WORLD_SIZE', '1'))


def under_torchrun():
    return world_size() > 1


def join(device_text, data_parallel=False):
    """(Group, device text): joins torchrun's job when there is one (NCCL for CUDA, gloo for the
    CPU), and names this rank's GPU, cuda:LOCAL_RANK."""
    if not under_torchrun():
        return Group(), device_text
    rank, world, local = int(os.environ['RANK']), world_size(), int(os.environ['LOCAL_RANK'])
    cuda = device_text.startswith('cuda')
    if cuda:
        device_text = f'cuda:{local}'
        torch.cuda.set_device(local)
    dist.init_process_group('nccl' if cuda else 'gloo')
    return Group(rank, world, local, data_parallel), device_text


def end_process(code):
    """End this process with exit status `code`. Under torchrun, without the interpreter's
    finalization: gloo's worker threads drop a collective's work object only after the rank has
    seen it complete, and the work objects of DDP's gradient all-reduces hold Python objects (the
    autograd engine's context, saved with the thread's state), so a worker thread can be releasing
    one while the interpreter shuts down; taking the GIL then ends the thread inside C++ and aborts
    the rank ("terminate called without an active exception", SIGABRT), after it had finished its
    work. Seen in CI and reproduced here: results/cpu-checks/gloo-exit/. Everything this repo writes
    is closed by then; only the standard streams need flushing."""
    if not under_torchrun():
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
