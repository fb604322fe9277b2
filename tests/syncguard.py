"""A CPU stand-in for torch.cuda.set_sync_debug_mode("error"): records every op that would make the
host wait for a CUDA device, while the code runs on the CPU (where nothing ever waits).

CI has no GPU, so the "no host sync inside an epoch" rule needs a guard that works without one.
On the CPU every tensor lives in host memory, so the guard treats every tensor as device memory
except the ones known to be host memory: those passed in `host` (the pinned count buffer of BLF's
compact mode) and tensors created inside the guarded code without a device (a host tensor, as it
would be on a GPU machine). It records:

- reading a device value on the host: item(), int(), float(), bool(), format() (all of them reach
  aten._local_scalar_dense), is_nonzero, equal, tolist(), numpy(), cpu(), to('cpu'), repr/str;
- ops whose output size depends on values: nonzero, masked_select, unique, bool-mask indexing
  (index / index_put with a bool or uint8 index), repeat_interleave without output_size;
- copies between host and device that wait: device -> host without non_blocking=True, and
  host -> device from a tensor that is not the registered (pinned) host memory;
- host tensors created inside the guarded code by the code under test (a factory call without a
  device); torch's own internals may do that (an optimizer's step counter is a host tensor on
  purpose) and are not counted, but what they create is host memory. Likewise torch's own
  .to(device) calls (device to device on a GPU) are left to the dispatch-level checks.

Ops run inside Triton's interpreter are skipped: on a GPU a kernel launch does not sync, while the
interpreter copies through numpy. What is recorded: 'what (file:line of the calling repo code)'.
"""
import os
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_DIR = os.path.dirname(torch.__file__)
HERE = os.path.abspath(__file__)

READS = {'_local_scalar_dense', 'is_nonzero', 'equal'}
VALUE_SIZED = {'nonzero', 'masked_select', '_unique', '_unique2', 'unique_dim', 'unique_consecutive',
               'masked_scatter'}
INDEXING = {'index', 'index_put', 'index_put_', '_index_put_impl_'}
FACTORIES = {'tensor', 'as_tensor', 'from_numpy', 'zeros', 'ones', 'empty', 'full', 'arange', 'rand', 'randn',
             'randint', 'randperm', 'linspace', 'logspace', 'eye', 'scalar_tensor', 'empty_strided'}
HOST_READS = {'tolist', 'numpy', 'cpu', '__repr__', '__str__'}  # format() reaches _local_scalar_dense


def _frames():
    frame = sys._getframe(2)
    while frame is not None:
        yield frame
        frame = frame.f_back


def _in_triton():
    return any(f'{os.sep}triton{os.sep}' in f.f_code.co_filename for f in _frames())


def _caller():
    """The innermost frame of the repo's own code (train.py, kernels/, the tests), or None."""
    for frame in _frames():
        name = os.path.abspath(frame.f_code.co_filename)
        if name.startswith(REPO) and name != HERE:
            return frame
    return None


def _called_from_torch():
    """True when the factory call came from torch's own Python code, not from the repo's."""
    for frame in _frames():
        name = os.path.abspath(frame.f_code.co_filename)
        if name == HERE or name.startswith(os.path.join(TORCH_DIR, 'overrides')) or \
                name.startswith(os.path.join(TORCH_DIR, 'utils', '_python_dispatch')) or \
                name == os.path.join(TORCH_DIR, '_tensor.py'):  # Tensor methods' wrappers: look at their caller
            continue
        return name.startswith(TORCH_DIR)
    return False


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


class SyncGuard:
    """with SyncGuard(host=[pinned_buffer]) as guard: ...; then guard.syncs lists what would sync."""

    def __init__(self, host=()):
        self.pinned = {t.untyped_storage().data_ptr() for t in host}
        self.host = set(self.pinned)
        self.keep = list(host)  # host tensors stay alive, so their addresses are not reused
        self.syncs = []
        guard = self

        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, '__name__', str(func))
                if name in HOST_READS or (name == 'to' and _to_host(args, kwargs)):
                    # torch's own .to(device) calls are device-to-device on a GPU (on the CPU every
                    # device is 'cpu'): only the repo's code is held to this rule
                    if any(guard.is_device(t) for t in _tensors(args[:1])) and not _called_from_torch():
                        guard.record(f'{name}() of a device tensor')
                out = func(*args, **kwargs)
                if name in FACTORIES and 'device' not in kwargs and isinstance(out, torch.Tensor):
                    guard.add_host(out)
                    if not _called_from_torch():
                        guard.record(f'torch.{name}() without a device: a host tensor made inside the loop')
                return out

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                guard.check(func.__name__.split('.')[0], args, kwargs)
                return func(*args, **kwargs)

        self.modes = [Functions(), Dispatch()]

    def add_host(self, t):
        self.host.add(t.untyped_storage().data_ptr())
        self.keep.append(t)

    def is_device(self, t):
        return t.device.type != 'meta' and t.untyped_storage().data_ptr() not in self.host

    def record(self, what):
        if _in_triton():
            return
        frame = _caller()
        where = f'{os.path.relpath(frame.f_code.co_filename, REPO)}:{frame.f_lineno}' if frame else '?'
        self.syncs.append(f'{what} ({where})')

    def check(self, op, args, kwargs):
        tensors = list(_tensors(args)) + list(_tensors(kwargs))
        on_device = any(self.is_device(t) for t in tensors)
        if op in READS and on_device:
            self.record(f'{op}: a device value read on the host')
        elif op in VALUE_SIZED and on_device:
            self.record(f'{op}: an output size that depends on device values')
        elif op == 'repeat_interleave' and kwargs.get('output_size') is None and len(args) < 4 and on_device:
            self.record('repeat_interleave without output_size')
        elif op in INDEXING and on_device and any(
                t is not None and t.dtype in (torch.bool, torch.uint8) for t in _tensors(args[1])):
            self.record(f'{op} with a boolean mask')
        elif op == 'copy_':
            dst, src = args[0], args[1]
            non_blocking = kwargs.get('non_blocking', args[2] if len(args) > 2 else False)
            if not self.is_device(dst) and self.is_device(src) and not non_blocking:
                self.record('device -> host copy without non_blocking=True')
            elif self.is_device(dst) and not self.is_device(src) and src.dim() > 0 and \
                    (src.untyped_storage().data_ptr() not in self.pinned or not non_blocking):
                self.record('host -> device copy from pageable memory, or without non_blocking=True')

    def __enter__(self):
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


def _to_host(args, kwargs):
    target = kwargs.get('device', args[1] if len(args) > 1 else None)
    if isinstance(target, (str, torch.device)):
        return torch.device(target).type == 'cpu'
    return False
