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
