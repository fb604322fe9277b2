import json
import os

from conftest import run_script


def fake_record(folder, seeds_accs_times, kept, status='complete', run_fields=None, epoch_fields=None):
    os.makedirs(folder)
    with open(os.path.join(folder, 'summary.json'), 'w') as fh:
        json.dump({'status': status}, fh)
    with open(os.path.join(folder, 'runs.jsonl'), 'w') as fh:
        for seed, acc, t in seeds_accs_times:
            fh.write(json.dumps({'seed': seed, 'test_acc': acc, 'time_s': t, **(run_fields or {}).get(seed, {})}) + '\n')
    with open(os.path.join(folder, 'epochs.jsonl'), 'w') as fh:
        for seed, _, _ in seeds_accs_times:
            for epoch, k in enumerate(kept, 1):
                fh.write(json.dumps({'seed': seed, 'epoch': epoch, **({'kept': k} if k < 1 else {}),
                                     **(epoch_fields or {}).get(epoch, {})}) + '\n')


def test_groups_pool_their_records(tmp_path):
    fake_record(tmp_path / 'blf' / 'r1', [(0, 0.941, 10.0)], [1.0, 0.5, 0.25])
    fake_record(tmp_path / 'blf' / 'r2', [(1, 0.943, 12.0), (2, 0.945, 11.0)], [1.0, 0.7, 0.35])
    fake_record(tmp_path / 'base', [(0, 0.94, 20.0)], [1.0, 1.0, 1.0])
    res = run_script('summarize.py', tmp_path / 'blf', tmp_path / 'base')
    assert res.returncode == 0, res.stderr
    header, _, blf, base = res.stdout.splitlines()
    assert '| p, H0: mean <= 94% |' in header, 'a p-value, not the probability that the mean exceeds 94%'
    assert '| 3 | 0.9430 ± 0.0020 [0.9410, 0.9450]' in blf and '11.00 [10.00, 12.00]' in blf
    assert blf.endswith('| 1.00 0.63 0.32 |') and base.endswith('| 1.00 1.00 1.00 |')
    t = (0.943 - 0.94) / (0.002 / 3 ** 0.5)  # one-sided p-value of H0: mean <= 94%: Student's t with 2 degrees of freedom
    assert f'| {0.5 * (1 - t / (t * t + 2) ** 0.5):.3g} |' in blf and '| nan |' in base, 'one run has no p'
    assert run_script('summarize.py', tmp_path / 'nothing').returncode != 0


def test_command_line_mistakes_are_one_line(tmp_path):
    for args, message in [((), 'error: the following arguments are required: groups (see --help)'),
                          ((tmp_path, '--bogus'), 'error: unrecognized arguments: --bogus (see --help)')]:
        res = run_script('summarize.py', *args)
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [message], res.stderr


def test_a_truncated_runs_file_is_named_in_one_line(tmp_path):
    fake_record(tmp_path / 'g' / 'r1', [(0, 0.941, 10.0), (1, 0.942, 10.0)], [1.0])
    path = tmp_path / 'g' / 'r1' / 'runs.jsonl'
    path.write_text(path.read_text()[:-20])  # the second line cut, as a kill while writing leaves it
    res = run_script('summarize.py', tmp_path / 'g')
    assert res.returncode != 0 and 'Traceback' not in res.stderr
    assert res.stderr.strip().splitlines() == [f'error: {path}:2: not a complete JSON line (was the run killed '
                                               f'while writing it?); remove that line to use the rest']


def test_interrupted_and_unfinished_records_count_their_finished_runs_and_are_named(tmp_path):
    fake_record(tmp_path / 'g' / 'r1', [(0, 0.941, 10.0)], [1.0])
    fake_record(tmp_path / 'g' / 'r2', [(1, 0.943, 12.0)], [1.0], status='interrupted')
    os.makedirs(tmp_path / 'g' / 'r3')  # killed before its first run finished: a config and nothing else
    (tmp_path / 'g' / 'r3' / 'config.json').write_text('{}')
    res = run_script('summarize.py', tmp_path / 'g')
    assert res.returncode == 0, res.stderr
    assert '| 2 | 0.9420 ± 0.0014' in res.stdout
    assert f'note: {tmp_path / "g" / "r2"} is interrupted' in res.stdout
    assert f'note: {tmp_path / "g" / "r3"} is unfinished' in res.stdout


def test_the_epochs_of_a_cut_run_stay_out_of_the_kept_curve(tmp_path):
    """A record interrupted in seed 1's third epoch: seed 0 counts, seed 1's two epochs do not."""
    fake_record(tmp_path / 'g' / 'r1', [(0, 0.941, 10.0)], [0.5, 0.5, 0.5], status='interrupted')
    with open(tmp_path / 'g' / 'r1' / 'epochs.jsonl', 'a') as fh:
        for epoch in (1, 2):
            fh.write(json.dumps({'seed': 1, 'epoch': epoch, 'kept': 0.1}) + '\n')
    res = run_script('summarize.py', tmp_path / 'g')
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[2].endswith('| 0.50 0.50 0.50 |')


def test_a_group_that_pools_what_should_not_be_pooled_says_so(tmp_path):
    """The same seed twice, other settings, other code, another GPU: pooled as asked, and each named
    below the table."""
    def config(record, **hyp):
        (record / 'config.json').write_text(json.dumps({'hyp': {'lr': 0.4, 'epochs': 24, **hyp}, 'n_train': 50000}))

    def code(record, device='NVIDIA H100 80GB HBM3', **files):
        machine = {'device': device, 'torch': '2.11.0+cu130', 'triton': '3.6.0', 'cuda': '13.0', 'cudnn': 91300}
        (record / 'env.json').write_text(json.dumps({'code': {'train.py': 'aaaa', 'networks.py': 'bbbb', **files},
                                                     'host': str(record), **machine}))  # another host: no difference
    fake_record(tmp_path / 'clean' / 'r1', [(0, 0.941, 10.0)], [1.0])
    fake_record(tmp_path / 'clean' / 'r2', [(1, 0.942, 10.0)], [1.0])
    config(tmp_path / 'clean' / 'r1')
    config(tmp_path / 'clean' / 'r2')
    code(tmp_path / 'clean' / 'r1')
    code(tmp_path / 'clean' / 'r2', **{'kernels/selection.py': 'cccc'})  # imported by one only: no difference
    res = run_script('summarize.py', tmp_path / 'clean')
    assert res.returncode == 0 and 'warning' not in res.stdout, res.stdout

    fake_record(tmp_path / 'mixed' / 'r1', [(0, 0.941, 10.0), (1, 0.942, 10.0)], [1.0])
    fake_record(tmp_path / 'mixed' / 'r2', [(1, 0.943, 10.0)], [1.0])
    config(tmp_path / 'mixed' / 'r1')
    config(tmp_path / 'mixed' / 'r2', epochs=30)
    code(tmp_path / 'mixed' / 'r1')
    code(tmp_path / 'mixed' / 'r2', device='NVIDIA H200', **{'networks.py': 'after-a-fix'})
    res = run_script('summarize.py', tmp_path / 'mixed')
    assert res.returncode == 0 and '| 3 |' in res.stdout
    warnings = [line for line in res.stdout.splitlines() if line.startswith('warning:')]
    prefix = f'warning: {tmp_path / "mixed"} pools what should not be pooled: '
    assert warnings == [prefix + 'seed(s) 1 finished in more than one run: each counted every time',
                        prefix + 'its records differ in settings (epochs)',
                        prefix + 'its records ran different code (networks.py)',
                        prefix + 'its records were made on different machines (device)']


def test_runs_that_compiled_graphs_inside_their_clock_are_counted_and_named(tmp_path):
    """--compile: a graph built inside the clock makes that run's time partly a compile time."""
    import summarize
    clean = {0: {'graphs_compiled_in_clock': 0}, 1: {'graphs_compiled_in_clock': 0}}
    fake_record(tmp_path / 'clean' / 'r1', [(0, 0.94, 3.0), (1, 0.94, 3.1)], [1.0], run_fields=clean)
    fake_record(tmp_path / 'slow' / 'r1', [(0, 0.94, 3.0), (1, 0.94, 9.0), (2, 0.94, 8.0)], [1.0],
                run_fields={1: {'graphs_compiled_in_clock': 2}, 2: {'graphs_compiled_in_clock': 1}})
    assert summarize.summarize_group(tmp_path / 'clean')['compiled_in_clock'] == {'runs': 0, 'graphs': 0}
    assert summarize.summarize_group(tmp_path / 'slow')['compiled_in_clock'] == {'runs': 2, 'graphs': 3}
    res = run_script('summarize.py', tmp_path / 'clean', tmp_path / 'slow')
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stdout.splitlines() if line.startswith('warning')]
    assert warnings == [f'warning: {tmp_path / "slow"}: 3 graph(s) compiled inside the clock of 2 run(s): '
                        'their times include compiling']


def test_the_blf_steps_a_compact_pass_truncated_are_counted_over_every_run_and_named(tmp_path):
    """Compact BLF sizes its pass from an earlier step's count; where this step's rule keeps more, the
    pass trains fewer rows than the rule: how often that happened belongs beside the group's times."""
    import summarize
    blf = {2: {'steps': 10, 'truncated_steps': 3}, 3: {'steps': 10, 'truncated_steps': 1}}  # epoch 1: before BLF
    fake_record(tmp_path / 'compact' / 'r1', [(0, 0.94, 3.0), (1, 0.94, 3.1)], [1.0, 0.6, 0.5], epoch_fields=blf)
    fake_record(tmp_path / 'mask' / 'r1', [(0, 0.94, 4.0)], [1.0, 0.6, 0.5],
                epoch_fields={2: {'steps': 10, 'truncated_steps': 0}, 3: {'steps': 10, 'truncated_steps': 0}})
    fake_record(tmp_path / 'baseline' / 'r1', [(0, 0.94, 4.0)], [1.0, 1.0, 1.0])
    assert summarize.summarize_group(tmp_path / 'compact')['truncated'] == {'steps': 8, 'of': 40}, 'two runs, two epochs'
    assert summarize.summarize_group(tmp_path / 'mask')['truncated'] == {'steps': 0, 'of': 20}
    assert summarize.summarize_group(tmp_path / 'baseline')['truncated'] == {'steps': 0, 'of': 0}
    res = run_script('summarize.py', tmp_path / 'compact', tmp_path / 'mask', tmp_path / 'baseline')
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stdout.splitlines() if line.startswith('note')]
    assert notes == [f'note: {tmp_path / "compact"}: 8 of 40 BLF steps trained fewer rows than the rule kept '
                     "(truncated: the compact pass was sized from an earlier step's count)"]


def test_the_count_lag_of_compact_passes_is_averaged_over_steps_and_its_maximum_kept(tmp_path):
    """The compact pass's size comes from a count some steps old (README: "a step or two earlier"):
    the group's mean over all its BLF steps, weighted by each epoch's steps, and the largest lag."""
    import summarize
    lag = {2: {'steps': 10, 'truncated_steps': 0, 'count_lag': 0.9, 'count_lag_max': 1},
           3: {'steps': 30, 'truncated_steps': 0, 'count_lag': 2.0, 'count_lag_max': 4}}
    fake_record(tmp_path / 'compact' / 'r1', [(0, 0.94, 3.0)], [1.0, 0.6, 0.5], epoch_fields=lag)
    fake_record(tmp_path / 'mask' / 'r1', [(0, 0.94, 4.0)], [1.0, 0.6, 0.5],
                epoch_fields={2: {'steps': 10, 'truncated_steps': 0}})
    assert summarize.summarize_group(tmp_path / 'compact')['count_lag'] == {'mean': (9 + 60) / 40, 'max': 4}
    assert summarize.summarize_group(tmp_path / 'mask')['count_lag'] is None
    res = run_script('summarize.py', tmp_path / 'compact', tmp_path / 'mask')
    assert res.returncode == 0, res.stderr
    assert [line for line in res.stdout.splitlines() if line.startswith('count lag')] == [
        f'count lag: {tmp_path / "compact"}: the compact passes were sized from counts 1.73 steps old on average, at most 4']
