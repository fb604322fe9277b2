import math

import pytest

import stats


def test_t_tail_matches_closed_forms():
    for t in (-3.0, -0.5, 0.0, 0.7, 1.0, 4.2):
        assert stats.t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert stats.t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)), abs=1e-12)
    # large df tends to the normal tail
    assert stats.t_sf(1.6448536, 10**6) == pytest.approx(0.05, abs=1e-5)
    assert stats.t_sf(2.228139, 10) == pytest.approx(0.025, abs=1e-6)  # table value


def test_t_test_greater():
    t, p = stats.t_test_greater([0.941, 0.943, 0.945, 0.942, 0.944], 0.94)
    assert t == pytest.approx(0.003 / (math.sqrt(0.0000025) / math.sqrt(5)))
    assert p < 0.01
    _, p = stats.t_test_greater([0.935, 0.945, 0.938, 0.941], 0.94)
    assert p > 0.5


def test_summarize():
    s = stats.summarize([3.0, 1.0, 2.0, 10.0])
    assert s == {'n': 4, 'mean': 4.0, 'std': pytest.approx(4.0825, abs=1e-4), 'min': 1.0, 'max': 10.0, 'median': 2.5}
    assert stats.summarize([5.0])['std'] == 0.0


def t4_sf(t):
    """Student's t upper tail for 4 degrees of freedom, in closed form."""
    x = t / math.sqrt(4 + t * t)
    return 0.5 - 0.75 * x + 0.25 * x ** 3


def test_t_test_p_values_are_the_known_ones_with_n_minus_1_degrees_of_freedom():
    """Would catch df = n instead of n - 1 (p 0.0041 instead of 0.0066 here), a two-sided p, or the
    population std in place of the sample std."""
    accs = [0.941, 0.942, 0.943, 0.944, 0.945]  # mean 0.943, sample std 0.0015811
    t, p = stats.t_test_greater(accs, 0.94)
    assert t == pytest.approx(0.003 / (0.0015811388 / math.sqrt(5)), rel=1e-6)
    assert p == pytest.approx(t4_sf(t), abs=1e-10) and p == pytest.approx(0.0066, abs=1e-4)
    assert stats.t_sf(2.776445, 4) == pytest.approx(0.025, abs=1e-6)  # the table's 97.5% point for df = 4
    _, p_below = stats.t_test_greater([0.939, 0.938, 0.937, 0.936, 0.935], 0.94)
    assert p_below == pytest.approx(1 - t4_sf(abs(stats.t_test_greater([0.939, 0.938, 0.937, 0.936, 0.935], 0.94)[0])))


def test_summarize_prints_that_p(tmp_path):
    import json
    import os
    from conftest import run_script
    folder = tmp_path / 'g'
    os.makedirs(folder)
    (folder / 'summary.json').write_text('{"status": "complete"}')
    accs = [0.941, 0.942, 0.943, 0.944, 0.945]
    (folder / 'runs.jsonl').write_text(''.join(json.dumps({'seed': i, 'test_acc': a, 'time_s': 1.0}) + '\n'
                                               for i, a in enumerate(accs)))
    res = run_script('summarize.py', folder)
    assert res.returncode == 0, res.stderr
    row = res.stdout.splitlines()[2].split('|')
    p = t4_sf(stats.t_test_greater(accs, 0.94)[0])
    assert row[4].strip() == f'{p:.3g}' == '0.00662'
