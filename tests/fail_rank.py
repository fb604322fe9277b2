"""Run under torchrun by tests/test_distributed.py: train.py, except that rank 1's first run raises."""
import os
import sys

import distributed
import train

real_run = train.train_run


def failing_run(*args, **kwargs):
    if os.environ.get('RANK') == '1':
        raise RuntimeError('the GPU fell off the bus')
    return real_run(*args, **kwargs)


train.train_run = failing_run
distributed.end_process(train.main(sys.argv[1:]))
