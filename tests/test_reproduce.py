"""reproduce.py: every stage at toy size on the CPU, the summary, the single packed file, resuming."""
import json
import tarfile

import pytest

import reproduce
from conftest import run_script


@pytest.fixture(scope='module')
def smoke(cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('reproduce') / 'out'
    res = run_script('reproduce.py', '--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', out, timeout=900)
    return res, out


def test_list_names_every_stage_with_its_minutes():
    res = run_script('reproduce.py', '--list')
    assert res.returncode == 0
    lines = res.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines] == list(reproduce.STAGES) == \
        ['tests', 'core', 'bench', 'blf', 'profile', 'recipes', 'ladder']
    assert all('(est.)' in line for line in lines), 'no stage has been timed on a GPU yet'


def test_smoke_runs_every_stage_and_writes_its_figures(smoke):
    res, out = smoke
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = (out / 'summary.md').read_text()
    for stage in reproduce.STAGES:
        done = json.loads((out / stage / 'done.json').read_text())
        assert done['status'] == 'ok' and done['minutes'] > 0, stage
        assert f'- **{stage}**' in summary
    core = json.loads((out / 'core' / 'done.json').read_text())['figures']
    assert set(core) == {'default', 'amp', 'fp16-loss-scale-1'}
    assert all(fig['acc']['n'] == 2 and 0 < fig['acc']['mean'] < 1 for fig in core.values())
    blf = json.loads((out / 'blf' / 'done.json').read_text())['figures']
    assert set(blf) == set(reproduce.BLF_CONFIGS) and all(fig['acc']['n'] == 2 for fig in blf.values())
    assert blf['blf-mask']['kept_last_epoch'] < 1 and blf['baseline']['kept_last_epoch'] == 1.0
    assert '| group | runs |' in (out / 'blf' / 'summary.md').read_text()
    bench = json.loads((out / 'bench' / 'done.json').read_text())['figures']['rows']
    assert [int(r['batch']) for r in bench] == [16, 33]
    tests = json.loads((out / 'tests' / 'done.json').read_text())['figures']
    assert tests['skipped'] >= 10 and not tests.get('failed'), 'on a CPU the GPU tests skip; none fails'


def test_everything_is_packed_into_one_file(smoke):
    _, out = smoke
    with tarfile.open(out / reproduce.PACK) as tar:
        names = tar.getnames()
    assert 'out/summary.md' in names and 'out/blf/summary.md' in names and 'out/core/log.txt' in names
    assert any(n.startswith('out/core/default/') and n.endswith('runs.jsonl') for n in names)
    assert not any(n.endswith('.tgz') or n.endswith('.part') for n in names)


def test_a_second_run_resumes_and_skips_what_is_complete(smoke, cifar_dir):
    res, out = smoke
    before = (out / 'summary.md').read_text()
    again = run_script('reproduce.py', '--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', out)
    assert again.returncode == 0
    assert again.stdout.count('already complete') == len(reproduce.STAGES)
    assert (out / 'summary.md').read_text() == before


def test_a_failed_stage_is_reported_and_runs_again(tmp_path, cifar_dir, monkeypatch):
    calls = []

    def broken(ctx):
        calls.append(1)
        raise reproduce.StageFailed('on purpose')
    monkeypatch.setitem(reproduce.STAGES, 'bench', (broken, 'a stage that fails', 1, False))
    for _ in range(2):
        assert reproduce.main(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path),
                               '--stage', 'bench']) == 1
    assert len(calls) == 2
    assert json.loads((tmp_path / 'bench' / 'done.json').read_text())['status'] == 'failed'
    assert (tmp_path / 'summary.md').read_text().count('FAILED: on purpose') == 2


def test_the_budget_leaves_stages_that_do_not_fit(tmp_path, cifar_dir, capsys):
    assert reproduce.main(['--smoke', '--device', 'cpu', '--data-dir', cifar_dir, '--out', str(tmp_path),
                           '--budget-min', '0.5']) == 0
    out = capsys.readouterr().out
    assert 'not started (budget): tests core bench blf profile recipes ladder' in out


@pytest.mark.parametrize('args, message', [
    (['--device', 'cpu'], 'only --smoke makes sense'),
    (['--smoke', '--device', 'cpu', '--data-dir', '/nonexistent'], 'no cifar-10-batches-py/ in /nonexistent'),
])
def test_user_errors_are_one_line(args, message, tmp_path):
    res = run_script('reproduce.py', *args, '--out', tmp_path / 'out')
    assert res.returncode == 2 and res.stderr.strip().count('\n') == 0 and message in res.stderr
