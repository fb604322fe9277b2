"""The commands and flags the READMEs show must be ones the scripts accept: a renamed flag, a
recipe, stage or script that no longer exists, or a value a check now refuses fails here, not in
a newcomer's first hour. Only argument parsing and train.py's checks run (nothing trains)."""
import argparse
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest
import torch

import ablation
import bench_blf
import cli
import reproduce
import summarize
import train_many

REPO = Path(__file__).resolve().parent.parent
DOCS = ['README.md', 'results/README.md', 'results/recipes/README.md']

# flags the READMEs give to other programs: torchrun, pytest-xdist, nvidia-smi, pip, the packed data's unpack.py
OTHER_PROGRAMS_FLAGS = {'--standalone', '--nproc_per_node', '--nnodes', '--rdzv_backend', '--rdzv_endpoint',
                        '--dist', '--query-gpu', '--format', '--index-url', '--check'}
# placeholders the prose uses in commands, and a value that stands for each
PLACEHOLDERS = {'NAME': 'airbench94', '<gpu>': 'nvidia-h100', 'GROUP...': 'runs', '[REPRODUCE_OUT]': ''}
FLAG = re.compile(r'(?<![\w-])--[a-z][a-z0-9_-]*')


def long_options(parse, args=('--help',)):
    """The --options of the parser that `parse(args)` builds (its --help exits 0 before any work)."""
    parsers = []
    original = argparse.ArgumentParser.parse_args

    def spy(parser, *a, **k):
        parsers.append(parser)
        return original(parser, *a, **k)

    with mock.patch.object(argparse.ArgumentParser, 'parse_args', spy), \
            contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_:
        parse(list(args))
    assert exit_.value.code == 0
    return {o for o in parsers[-1]._option_string_actions if o.startswith('--')}


SCRIPTS = {'train.py': cli.parse_args, 'reproduce.py': reproduce.parse_args, 'profile.py': ablation.main,
           'bench_blf.py': bench_blf.main, 'summarize.py': summarize.main}


@functools.cache
def options_of(script):
    return long_options(SCRIPTS[script])


def shell_commands(text):
    """Each simple command of the ```bash blocks and of the inline `python ...`/`torchrun ...` spans,
    as a list of words (environment assignments and redirections dropped)."""
    lines = []
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
        lines += block.replace('\\\n', ' ').splitlines()
    lines += re.findall(r'`((?:python3?|torchrun) [^`]*)`', text)
    for line in lines:
        line = re.sub(r'\s\d?>&\d', ' ', line)  # 2>&1
        for name, value in PLACEHOLDERS.items():
            line = line.replace(name, value)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=';&|()')
        lexer.whitespace_split, lexer.commenters = True, '#'
        words = []
        for word in list(lexer) + [';']:
            if set(word) <= set(';&|()'):
                if words:
                    yield words
                words = []
            elif not (not words and re.fullmatch(r'[A-Z_][A-Z0-9_]*=.*', word)):
                words.append(word)


def script_and_args(words):
    """(script path, its arguments) for a command that runs one of this repo's Python files, or None.
    `timeout N python3 X.py`, `python X.py`, `torchrun [its options] X.py`."""
    if words[:1] == ['timeout']:
        words = words[2:]
    if not words or words[0] not in ('python', 'python3', 'torchrun') or words[1:2] == ['-m']:
        return None
    scripts = [i for i, w in enumerate(words) if w.endswith('.py')]
    if not scripts or words[scripts[0]].startswith(('.cifar/', '.airbench/')):  # the data's unpacker, published scripts
        return None
    return words[scripts[0]], words[scripts[0] + 1:]


def torchrun_world(words):
    if words[0] != 'torchrun':
        return 1
    options = dict(zip(words[1:], words[2:]))
    return int(options.get('--nnodes', 1)) * int(options.get('--nproc_per_node', 1))


def readme_commands():
    found = []
    for doc in DOCS:
        for words in shell_commands((REPO / doc).read_text()):
            if script_and_args(words):
                found.append(pytest.param(words, id=f'{doc}: {shlex.join(words)}'[:120]))
    return found


def test_the_readmes_show_the_commands_a_newcomer_runs():
    """The extraction itself: it must find the README's main commands, or the test below checks nothing."""
    shown = [shlex.join(p.values[0]) for p in readme_commands()]
    for expected in ['python train.py --epochs 30 --blf 0.9', 'python reproduce.py --list', 'python bench_blf.py',
                     'torchrun --standalone --nproc_per_node 8 train.py --data-parallel',
                     'timeout 240 python3 reproduce.py --out /tmp/reproduce --copy-pack-to \'$OUT\' --budget-min 3 --stage bench',
                     'python train.py --recipe airbench94 --help', 'python summarize.py runs']:
        assert expected in shown
    assert len(shown) >= 25


@pytest.mark.parametrize('words', readme_commands())
def test_a_readme_command_is_accepted_by_its_script(words, monkeypatch, tmp_path):
    script, args = script_and_args(words)
    assert (REPO / script).is_file(), f'{script} does not exist'
    monkeypatch.chdir(tmp_path)  # train.py's check that --out-dir can be written looks here, not in the repo
    if script == 'train.py':
        # a GPU command, checked on a machine that may have none; under torchrun, the job's size
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: 8)
        monkeypatch.setenv('WORLD_SIZE', str(torchrun_world(words)))
        if '--help' in args:
            long_options(cli.parse_args, args)
        else:
            cli.check_args(cli.parse_args(args))
    elif script == 'train_many.py':
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        assert len(args) >= 2
        train_many.device_types([shlex.split(line) for line in args])
    elif script == 'reproduce.py':
        reproduce.parse_args(args)
    elif script in SCRIPTS:
        assert set(FLAG.findall(' '.join(args))) <= options_of(script)


def test_every_flag_the_readmes_name_is_one_of_a_script():
    ours = set().union(*map(options_of, SCRIPTS))
    for doc in DOCS:
        named = set(FLAG.findall((REPO / doc).read_text())) - OTHER_PROGRAMS_FLAGS
        assert named - ours == set(), f'{doc} names flags no script has'


def test_every_flag_of_train_py_is_in_the_readme():
    """--help lists them all; the README says what each is for, so none may be missing there."""
    documented = set(FLAG.findall((REPO / 'README.md').read_text()))
    assert options_of('train.py') - documented == set()


def test_the_readmes_cpu_install_asks_for_the_torch_that_requirements_txt_admits():
    """A newer CPU build than requirements.txt admits would make `pip install -r requirements.txt`
    fetch an older torch from PyPI, its CUDA build: gigabytes on a machine without a GPU."""
    (wanted,) = [line.split('#')[0].strip() for line in (REPO / 'requirements.txt').read_text().splitlines()
                 if line.startswith('torch')]
    cpu_installs = [words for words in shell_commands((REPO / 'README.md').read_text())
                    if words[:2] == ['pip', 'install'] and '--index-url' in words]
    assert cpu_installs and all(words[2] == wanted for words in cpu_installs), (wanted, cpu_installs)
