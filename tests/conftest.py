"""Shared fixtures: the real CIFAR-10 (data/, $CIFAR10_DIR, or unpacked from ../shared/cifar10)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Triton can run kernels on CPU tensors only in its interpreter, which must be chosen before the
# kernels are defined (at import). Without a GPU, turn it on for the whole test session.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# Under pytest-xdist (`-n auto`: one worker per core) torch's own thread pool in each worker would
# fight the other workers for the same cores: on 2 cores the suite took 933 s with torch's 2 threads
# per worker and 498 s with one (results/cpu-checks/durations/). One thread, here and in every script
# a test starts. A plain `pytest` keeps torch's default.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)

import data_gpu  # noqa: E402
import reproduce  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / 'shared' / 'cifar10'


# The slowest files, slowest first (results/cpu-checks/durations/). With `--dist loadfile` a file
# runs whole on one worker, handed out in the order collected; the reproduce.py smoke file (350-440
# s on 2 cores) came last alphabetically and ran alone on one worker for the last minutes. Started
# first, it runs beside the rest, and the small files fill in at the end.
FILE_RANK = {name: rank for rank, name in enumerate([
    'test_reproduce.py', 'test_kernels.py', 'test_cli.py', 'test_recipes.py', 'test_loss_scale.py',
    'test_distributed.py', 'test_no_sync.py', 'test_blf.py', 'test_compile.py'])}


def pytest_configure(config):
    # pytest-xdist 3.6 and later hand out loadfile's files by their number of tests, most first,
    # unless told not to: that put test_reproduce.py (44 tests) after test_kernels.py (111) and
    # test_cli.py (71), and FILE_RANK came to nothing.
    if hasattr(config.option, 'loadscopereorder'):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: FILE_RANK.get(item.path.name, len(FILE_RANK)))  # stable: a file's tests keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope='session')
def cifar_dir(tmp_path_factory):
    """A folder holding cifar-10-batches-py/. In CI .ci/run unpacks it into data/ first."""
    for candidate in (os.environ.get('CIFAR10_DIR'), REPO / 'data'):
        if candidate and (Path(candidate) / data_gpu.FOLDER).is_dir():
            return str(candidate)
    if (SHARED / 'unpack.py').is_file():
        out = tmp_path_factory.mktemp('cifar10')
        subprocess.run([sys.executable, str(SHARED / 'unpack.py'), str(out)], check=True)
        return str(out)
    if os.environ.get('CI'):
        pytest.fail('CIFAR-10 not found in CI: .ci/run should have unpacked ../shared/cifar10 into data/')
    pytest.skip('CIFAR-10 not found: put it in data/ or set CIFAR10_DIR')


@pytest.fixture(scope='session')
def cifar(cifar_dir):
    return data_gpu.load_cifar10(cifar_dir, download=False)


def run_script(script, *args, timeout=600):
    """Run one of the repo's scripts in a subprocess from the repo root; returns CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def recipe_hyp(recipe, *flags):
    """train.py's hyperparameters for `--recipe RECIPE FLAGS...`, resolved as train.py resolves them: a
    recipe holds command-line text (myrtle-tricks' lr_schedule '0:0,2:0.9,...'), which only the parser
    turns into values, so a test must not merge recipes.RECIPES into cli.hyp itself."""
    import cli
    args = cli.parse_args(['--recipe', recipe, *map(str, flags)])
    return cli.hyp_of(args)


def process_running(pid):
    """Whether pid is alive: a zombie, waiting for a parent to reap it, has ended (Linux /proc)."""
    try:
        return reproduce.proc_stat(pid)[0] not in 'ZX'
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until_ended(pid, seconds=10):
    deadline = time.monotonic() + seconds
    while process_running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not process_running(pid)
