"""Several train.py invocations in one process, one after another: each argument is one train.py
command line (its flags, quoted as one word), run as `python train.py FLAGS` would run it.

    python train_many.py "--epochs 30 --seed 0" "--epochs 30 --blf 0.9 --seed 0" \\
                         "--epochs 30 --seed 1" "--epochs 30 --blf 0.9 --seed 1"

Why: a comparison whose seeds are interleaved (seed 0 of every configuration, then seed 1, ...,
so that drift of the machine hits every configuration alike) needs one invocation per seed and
configuration, and each process pays the start-up again: Python and torch imports, the CUDA
context, loading the Triton kernels and cuDNN's autotuning of every convolution shape (BLF's
compact mode meets one batch size per bucket, each autotuned). Here that is paid once. Each
invocation still warms up, writes its own record (its command.txt is the train.py command that
makes it alone) and gives the same runs as it would alone: the seeds fix everything a run draws.

Every command line is checked before the first one runs (a typo in the last must not cost the
runs before it). It stops at the first invocation that fails or is interrupted and exits with its
code (Ctrl-C or SIGTERM: the running invocation closes its record with the runs it finished, as
train.py does). Under torchrun, run train.py itself: this runs invocations in one process only.
"""
import gc
import shlex
import signal
import sys

import distributed
import train
from blf_step import use_triton_interpreter
from cli import UserError, check_args, parse_args


def device_types(invocations):
    """{'cuda'} or {'cpu'}: the device type of every invocation, each command line checked as
    train.py checks it; a UserError names the invocation."""
    types = set()
    for i, flags in enumerate(invocations):
        args = parse_args(flags)  # a malformed flag: argparse's one line and exit 2
        try:
            check_args(args)
        except UserError as e:
            raise UserError(f'invocation {i + 1}: {e}') from None
        types.add(args.device.split(':')[0])
    if len(types) > 1:
        raise UserError(f'the invocations mix devices ({", ".join(sorted(types))}): run one process per device type')
    return types


def main(argv=None):
    lines = sys.argv[1:] if argv is None else argv
    if lines[:1] in (['-h'], ['--help']):
        print(__doc__.strip())
        return 0
    try:
        return run_all([shlex.split(line) for line in lines])
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a signal before the first or between two: the finished ones have closed their records
        print('interrupted between invocations; every finished one has its record', file=sys.stderr)
        return 130


def run_all(invocations):
    if not invocations:
        raise UserError('give one or more train.py command lines, each quoted as one argument (see --help)')
    if distributed.under_torchrun():  # each invocation would join and leave the job again
        raise UserError('under torchrun, run train.py itself (one invocation per job); train_many.py runs one process')
    if device_types(invocations) == {'cpu'}:
        use_triton_interpreter()  # before the first invocation imports triton, which a later BLF one needs
    for i, flags in enumerate(invocations):
        print(f'\n# train_many: invocation {i + 1}/{len(invocations)}: {shlex.join(["python", "train.py", *flags])}',
              flush=True)
        code = train.main(flags)
        if code:
            print(f'# train_many: invocation {i + 1} exited with {code}; the {len(invocations) - i - 1} after it '
                  f'did not run', file=sys.stderr, flush=True)
            return code
        gc.collect()  # the last invocation's data and model leave device memory before the next loads
    return 0


if __name__ == '__main__':
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, train.stop_on_signal)
    sys.exit(main())
