"""Summary statistics for claims: mean/std/min/max, median with spread, and a one-sided t-test.

No scipy: the Student t tail comes from the regularised incomplete beta function (continued
fraction, Numerical Recipes' Lentz method), which is exact to ~1e-12 for the sizes we use.
"""
import math
import statistics


def _betacf(a, b, x, iters=300, eps=1e-15):
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t, df):
    """P(T > t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_test_greater(xs, mu):
    """One-sided one-sample t-test of H0: mean <= mu. Returns (t, p); needs two or more values."""
    n = len(xs)
    sd = statistics.stdev(xs)
    if sd == 0:
        return (math.inf, 0.0) if statistics.fmean(xs) > mu else (-math.inf, 1.0)
    t = (statistics.fmean(xs) - mu) / (sd / math.sqrt(n))
    return t, t_sf(t, n - 1)


def summarize(values):
    """n, mean, std (n-1), min, max, median of a list of numbers (std is 0 for a single value)."""
    return {'n': len(values), 'mean': statistics.fmean(values),
            'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'min': min(values), 'max': max(values), 'median': statistics.median(values)}
