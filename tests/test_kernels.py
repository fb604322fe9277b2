"""Triton BLF kernels against plain torch (float64 where it matters): values, gradients, selection.

On a CPU machine these run under TRITON_INTERPRET=1 (conftest turns it on); on a GPU machine, run
natively on CUDA tensors. Outputs are poisoned (NaN / -7) before each call so unwritten rows fail.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import kernels.cross_entropy as ce
import kernels.selection as selection
from fractions import Fraction

from kernels import min_samples, reference, split_p, triton_impl

INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'
DEVICE = 'cuda' if torch.cuda.is_available() and not INTERPRET else 'cpu'
if DEVICE == 'cpu' and not INTERPRET:
    pytest.skip('CPU tensors need TRITON_INTERPRET=1', allow_module_level=True)

# Every test here runs the compiled kernels on a GPU, not only the `gpu` ones: reproduce.py's tests
# stage selects `native` too, so that the values, gradients, ties, zeros and extremes are checked
# where the interpreter's NumPy arithmetic is not what runs (it divided correctly where compiled
# Triton did not: kernels/selection.py's 1/k).
pytestmark = pytest.mark.native


class PoisonedTorch:
    """torch, except that new tensors come pre-filled with NaN (floats) or -7 (integers)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t):
        return t.fill_(float('nan') if t.is_floating_point() else -7)

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(ce, 'torch', PoisonedTorch())
    monkeypatch.setattr(selection, 'torch', PoisonedTorch())


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- per-sample cross-entropy: forward and weighted backward --------------------------------

def float64_reference(logits, labels, weight, smoothing, grad_out):
    x = logits.double().requires_grad_()
    losses = F.cross_entropy(x, labels, reduction='none', label_smoothing=smoothing)
    (grad,) = torch.autograd.grad((losses * weight.double()).sum() * grad_out, x)
    return losses.detach(), torch.logsumexp(x.detach(), 1), grad


def check_cross_entropy(logits, labels, weight, smoothing, grad_out=0.7):
    want_loss, want_lse, want_grad = float64_reference(logits.cpu(), labels.cpu(), weight.cpu(), smoothing, grad_out)
    loss, lse = ce.cross_entropy_forward(logits, labels, smoothing)
    grad = ce.cross_entropy_backward(logits, labels, lse, weight, torch.tensor([grad_out], device=logits.device), smoothing)
    assert loss.dtype == lse.dtype == torch.float32 and grad.dtype == logits.dtype
    scale = want_loss.abs().max().item() + 1
    torch.testing.assert_close(loss.cpu().double(), want_loss, atol=2e-6 * scale, rtol=2e-6, equal_nan=True)
    torch.testing.assert_close(lse.cpu().double(), want_lse, atol=2e-6 * scale, rtol=2e-6, equal_nan=True)
    # fp32 grads: fp32 arithmetic; fp16/bf16 grads: also rounded once when stored
    atol = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[logits.dtype]
    torch.testing.assert_close(grad.cpu().double(), want_grad, atol=atol, rtol=0, equal_nan=True)
    assert torch.all(grad[weight == 0] == 0), 'rows with weight 0 must get exactly 0'
    return loss, grad


@pytest.mark.parametrize('batch', [1, 7, 64, 333, 512, 1024, 4096])
@pytest.mark.parametrize('classes', [10, 100])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_cross_entropy_matches_float64_torch(batch, classes, dtype):
    g = gen(batch * 1000 + classes)
    logits = (torch.randn(batch, classes, generator=g) * 4).to(dtype).to(DEVICE)
    labels = torch.randint(0, classes, (batch,), generator=g).to(DEVICE)
    weight = torch.rand(batch, generator=g) * (torch.rand(batch, generator=g) < 0.6)
    for smoothing in (0.0, 0.2):
        check_cross_entropy(logits, labels, weight.to(DEVICE), smoothing)


def test_cross_entropy_many_classes_takes_several_column_blocks():
    g = gen(1)
    logits = torch.randn(37, 1000, generator=g).to(DEVICE) * 10  # 1000 > the 256-wide column block
    labels = torch.randint(0, 1000, (37,), generator=g).to(DEVICE)
    check_cross_entropy(logits, labels, torch.full((37,), 1 / 37, device=DEVICE), 0.1)


@pytest.mark.parametrize('case', ['zeros', 'ties', 'huge_fp32', 'huge_fp16', 'tiny', 'minus_inf'])
def test_cross_entropy_extreme_values(case):
    g = gen(2)
    b, c = 33, 10
    labels = torch.randint(0, c, (b,), generator=g)
    x = torch.randn(b, c, generator=g)
    dtype = torch.float32
    if case == 'zeros':
        x = torch.zeros(b, c)
    elif case == 'ties':
        x = torch.full((b, c), 3.0)
        x[:, 0] = 5.0  # a tie between label and non-label logits on some rows
        x[:, 1] = 5.0
    elif case == 'huge_fp32':
        x = x * 1e30
    elif case == 'huge_fp16':
        x, dtype = (x.clamp(-1, 1) * 60000), torch.float16
    elif case == 'tiny':
        x = x * 1e-30
    elif case == 'minus_inf':  # impossible classes: fine unless it is the label (or smoothing is on)
        x[torch.arange(b), (labels + 1) % c] = -torch.inf
    weight = torch.rand(b, generator=g)
    for smoothing in (0.0, 0.2):
        loss, _ = check_cross_entropy(x.to(dtype).to(DEVICE), labels.to(DEVICE), weight.to(DEVICE), smoothing)
        if case == 'minus_inf':
            assert torch.isfinite(loss).all() if smoothing == 0 else torch.isinf(loss).all()
        else:
            assert torch.isfinite(loss).all()
    if case == 'zeros':
        torch.testing.assert_close(loss.cpu(), torch.full((b,), math.log(c)))


def test_nan_rows_and_bad_labels_give_nan_losses_never_a_wrong_number():
    x = torch.randn(6, 10)
    x[2, 4] = torch.nan
    labels = torch.tensor([0, 1, 2, 10, -1, 9])  # 10 and -1 are out of range
    loss, lse = ce.cross_entropy_forward(x.to(DEVICE), labels.to(DEVICE), 0.1)
    assert torch.isnan(loss.cpu()).tolist() == [False, False, True, True, True, False]
    weight = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0, 0.0], device=DEVICE)
    grad = ce.cross_entropy_backward(x.to(DEVICE), labels.to(DEVICE), lse, weight, torch.ones(1, device=DEVICE), 0.1)
    assert torch.all(grad[2:] == 0) and torch.isfinite(grad).all()


def test_weighted_cross_entropy_autograd_matches_torch():
    g = gen(3)
    x = torch.randn(50, 10, generator=g, dtype=torch.float64).float()
    y = torch.randint(0, 10, (50,), generator=g)
    w = torch.rand(50, generator=g) * (torch.arange(50) % 3 != 0)
    xt = x.clone().to(DEVICE).requires_grad_()
    value = triton_impl.weighted_cross_entropy(xt, y.to(DEVICE), w.to(DEVICE), 0.2)
    (3 * value).backward()
    xr = x.clone().double().requires_grad_()
    want = reference.weighted_cross_entropy(xr, y, w.double(), 0.2)
    (3 * want).backward()
    torch.testing.assert_close(value.cpu().double(), want.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(xt.grad.cpu().double(), xr.grad, atol=1e-6, rtol=0)


def test_an_empty_batch_gives_empty_outputs_and_a_zero_sum():
    logits = torch.zeros(0, 10, device=DEVICE, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long, device=DEVICE)
    loss, lse = ce.cross_entropy_forward(logits.detach(), labels, 0.2)
    assert loss.shape == lse.shape == (0,) and loss.dtype == lse.dtype == torch.float32
    value = triton_impl.weighted_cross_entropy(logits, labels, torch.zeros(0, device=DEVICE), 0.2)
    value.backward()
    assert value.item() == 0.0 and logits.grad.shape == (0, 10)


def test_logits_with_a_column_stride_give_the_contiguous_results():
    """A transposed or column-sliced logits tensor (stride(1) != 1) is read as its contiguous copy."""
    wide = torch.randn(10, 37, generator=gen(3)).to(DEVICE)
    logits = wide.t()  # [37, 10], stride (1, 37)
    labels = torch.randint(0, 10, (37,), generator=gen(4)).to(DEVICE)
    weight = torch.rand(37, generator=gen(5)).to(DEVICE)
    assert logits.stride(1) != 1
    check_cross_entropy(logits, labels, weight, 0.1)
    loss, _ = ce.cross_entropy_forward(logits, labels)
    torch.testing.assert_close(loss, ce.cross_entropy_forward(logits.contiguous(), labels)[0], atol=0, rtol=0)


def test_logits_of_another_dtype_are_refused():
    with pytest.raises(ValueError, match='fp16, bf16 or fp32'):
        ce.cross_entropy_forward(torch.zeros(4, 10, dtype=torch.float64, device=DEVICE),
                                 torch.zeros(4, dtype=torch.long, device=DEVICE))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match='expected logits'):
        ce.cross_entropy_forward(torch.zeros(4, 10, device=DEVICE), torch.zeros(5, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match='1-D'):
        selection.select_top_loss(torch.zeros(2, 3, device=DEVICE), 0.5)


# ---- selection ----------------------------------------------------------------------------------

def run_both(losses, p, k_min=0, round_to=1, cap=None, fill=False):
    got = selection.select_top_loss(losses.to(DEVICE), p, k_min, round_to, cap, fill)
    want = reference.select_top_loss(losses, p, k_min, round_to, cap, fill)
    return got, want


def assert_same_selection(got, want):
    assert torch.equal(got.order.cpu(), want.order)
    assert torch.equal(got.counts.cpu(), want.counts)
    assert torch.equal(got.weight.cpu(), want.weight)
    torch.testing.assert_close(got.stats.cpu(), want.stats, rtol=1e-5, atol=1e-6, equal_nan=True)


# The interpreter runs tl.sort as a bitonic network op by op (~13 s at B = 4096 on a CPU core), so
# the full grid stops at 512 here; 4096 (the largest batch) gets single launches below and runs in the GPU tests.
@pytest.mark.parametrize('batch', [1, 7, 64, 333, 512])
@pytest.mark.parametrize('p', [1e-6, 0.5, 0.9, 1.0])
@pytest.mark.parametrize('q', [0.0, 0.25])
def test_selection_matches_reference_exactly(batch, p, q):
    # Losses on a 1/64 grid below 8: every partial sum is exact in fp32 whatever the summation
    # order, so kernel and reference must agree bit for bit (many ties included).
    g = gen(batch + int(p * 100) + int(q * 10))
    losses = torch.randint(0, 512, (batch,), generator=g).float() / 64
    k_min = min_samples(q, batch)
    for round_to in (1, 8):
        got, want = run_both(losses, p, k_min, round_to)
        assert_same_selection(got, want)
        k = int(got.counts[0])
        assert k >= max(k_min, 1) and k % round_to == 0 or k == batch


def test_selection_of_4096_in_one_launch_matches_reference():
    losses = torch.randint(0, 512, (4096,), generator=gen(4096)).float() / 64
    got, want = run_both(losses, 0.9, min_samples(0.25, 4096), round_to=8)
    assert_same_selection(got, want)


def check_rule(losses, ps, device):
    # Arbitrary floats: fp32 sums may round differently from float64, so check the rule itself
    # (k is the first count whose cumulative loss reaches p * total, up to fp32 rounding).
    batch = len(losses)
    for p in ps:
        sel = selection.select_top_loss(losses.to(device), p)
        order, k = sel.order.cpu(), int(sel.counts[0])
        want_order = torch.sort(losses, descending=True, stable=True).indices
        assert torch.equal(order, want_order)
        cum = torch.cumsum(losses.double()[order], 0)
        threshold = p * cum[-1]
        assert cum[k - 1] >= threshold * (1 - 1e-6)
        assert k == 1 or cum[k - 2] < threshold * (1 + 1e-6)
        assert torch.equal(sel.weight.cpu() > 0, torch.isin(torch.arange(batch), order[:k]))
        torch.testing.assert_close(sel.weight.cpu().sum(), torch.tensor(1.0))


@pytest.mark.parametrize('batch, ps', [(5, (0.3, 0.9, 0.99)), (100, (0.3, 0.9, 0.99)), (1000, (0.3, 0.9, 0.99)),
                                       (4096, (0.9,))])
def test_selection_obeys_the_rule_on_continuous_losses(batch, ps):
    check_rule(torch.rand(batch, generator=gen(batch)) ** 3 * 5, ps, DEVICE)


def kept_rows(sel):
    return sorted(sel.order[:int(sel.counts[1])].tolist())


def test_the_sample_that_crosses_the_threshold_is_kept():
    losses = torch.tensor([1.0, 4.0, 2.0, 3.0])  # total 10; sorted 4, 3, 2, 1; cumsum 4, 7, 9, 10
    for p, k in [(0.4, 1), (0.41, 2), (0.7, 2), (0.71, 3), (0.9, 3), (0.91, 4), (1.0, 4)]:
        got, want = run_both(losses, p)
        assert_same_selection(got, want)
        assert int(got.counts[0]) == k, (p, k)
    got, _ = run_both(losses, 0.71)
    assert kept_rows(got) == [1, 2, 3]
    torch.testing.assert_close(got.weight.cpu(), torch.tensor([0, 1 / 3, 1 / 3, 1 / 3]))
    torch.testing.assert_close(got.stats.cpu(), torch.tensor([0.9, 2.5, 3.0]))


def test_ties_keep_the_lower_index():
    got, want = run_both(torch.tensor([1.0, 2.0, 2.0, 2.0, 1.0]), 0.5)  # total 8: 2 + 2 reaches 4
    assert_same_selection(got, want)
    assert got.order.tolist() == [1, 2, 3, 0, 4] and kept_rows(got) == [1, 2]


def test_all_equal_losses():
    got, want = run_both(torch.ones(10), 0.9)
    assert_same_selection(got, want)
    assert int(got.counts[0]) == 9 and kept_rows(got) == list(range(9))


def test_one_dominant_loss():
    losses = torch.full((512,), 1e-3)
    losses[300] = 50.0
    got, want = run_both(losses, 0.9)
    assert_same_selection(got, want)
    assert kept_rows(got) == [300]


def test_all_zero_losses_keep_one_sample_or_the_minimum():
    got, want = run_both(torch.zeros(64), 0.9)
    assert_same_selection(got, want)
    assert int(got.counts[0]) == 1 and got.stats[0].item() == 1.0
    got, want = run_both(torch.zeros(64), 0.9, k_min=min_samples(0.25, 64))
    assert_same_selection(got, want)
    assert int(got.counts[0]) == 16 and kept_rows(got) == list(range(16))


def test_huge_and_negative_zero_losses():
    losses = torch.tensor([1e30, 3.0, -0.0, 2e30, 1.0, -1e-7])  # -1e-7: rounding below 0 counts as 0
    got, want = run_both(losses, 0.5)
    assert_same_selection(got, want)
    assert got.order.tolist()[:2] == [3, 0] and kept_rows(got) == [3]


def test_a_negative_loss_counts_as_zero_in_the_order_and_the_sums():
    """Rounding can push a loss below 0: it must sort with the zeros (ties by index) and add
    nothing. Unclamped, -2 would sort last and shrink the total to 2, so p = 1 would stop at k = 1."""
    losses = torch.tensor([3.0, -2.0, 0.0, 1.0])
    got, want = run_both(losses, 1.0)
    assert_same_selection(got, want)
    assert got.order.tolist() == [0, 3, 1, 2] and int(got.counts[0]) == 2
    assert got.stats[0].item() == 1.0


def test_non_finite_losses_are_kept_first_and_show_in_the_means():
    losses = torch.tensor([1.0, float('nan'), 2.0, float('inf'), -float('inf'), 0.5])
    got, want = run_both(losses, 0.5)
    assert_same_selection(got, want)
    assert got.order.tolist() == [1, 3, 4, 2, 0, 5]
    assert int(got.counts[0]) == 4 and kept_rows(got) == [1, 2, 3, 4]  # 3 bad + the 2.0 that crosses 1.75
    assert torch.isnan(got.stats[1]) and torch.isnan(got.stats[2])
    all_bad = run_both(torch.full((5,), float('nan')), 0.9)[0]
    assert int(all_bad.counts[0]) == 5


def test_rounding_up_and_the_cap():
    losses = torch.arange(20, 0, -1).float()  # 20, 19, ..., 1: total 210
    got, want = run_both(losses, 0.05, round_to=8)  # k_loss = 1 -> 8
    assert_same_selection(got, want)
    assert int(got.counts[0]) == 8
    got, want = run_both(losses, 0.97, round_to=8)  # cumsum reaches 203.7 at k = 17 -> 24 -> capped at B = 20
    assert_same_selection(got, want)
    assert int(got.counts[0]) == 20
    got, want = run_both(losses, 0.9, cap=5)  # 20 + ... + 7 = 189 = 0.9 * 210: k = 14, only 5 afforded
    assert_same_selection(got, want)
    assert got.counts.tolist() == [14, 5] and kept_rows(got) == [0, 1, 2, 3, 4]
    torch.testing.assert_close(got.weight.cpu().sum(), torch.tensor(1.0))


def test_min_samples_is_an_exact_ceiling():
    """A plain ceil(q * B) would take float noise above an integer for one more sample."""
    assert 0.07 * 100 > 7 and 0.7 * 10 == 7.0  # 7.000000000000001: the case the guard exists for
    assert min_samples(0.07, 100) == 7 and min_samples(0.0701, 100) == 8
    assert min_samples(0.3, 10) == 3
    assert min_samples(0.25, 333) == 84
    assert min_samples(0.0, 512) == 0 and min_samples(1.0, 512) == 512


# ---- on the GPU, natively ------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32])
def test_gpu_kernels_match_reference(dtype):
    g = torch.Generator(device='cuda').manual_seed(0)
    for batch in (512, 1024, 4096):
        logits = (torch.randn(batch, 10, device='cuda', generator=g) * 3).to(dtype)
        labels = torch.randint(0, 10, (batch,), device='cuda', generator=g)
        loss, lse = triton_impl.cross_entropy_forward(logits, labels, 0.2)
        want_loss, want_lse = reference.cross_entropy_forward(logits.double(), labels, 0.2)
        torch.testing.assert_close(loss.double(), want_loss, atol=1e-5, rtol=1e-5)
        sel = triton_impl.select_top_loss((loss * 64).round() / 64, 0.9)
        want = reference.select_top_loss((loss * 64).round() / 64, 0.9)
        assert torch.equal(sel.order, want.order) and torch.equal(sel.counts, want.counts)
        assert torch.equal(sel.weight, want.weight)


@pytest.mark.gpu
def test_gpu_selection_of_the_largest_batch():
    losses = torch.rand(selection.MAX_BATCH, generator=gen(1)) ** 3 * 5
    check_rule(losses, (0.3, 0.9, 0.99), 'cuda')
    grid = (losses * 64).round() / 64
    got = triton_impl.select_top_loss(grid.cuda(), 0.9, 100, 8)
    want = reference.select_top_loss(grid, 0.9, 100, 8)
    assert torch.equal(got.order.cpu(), want.order) and torch.equal(got.counts.cpu(), want.counts)


# ---- exact sums: both implementations agree bit for bit and follow the rule in exact arithmetic ----

def exact_rule(losses, p):
    """k by the rule in rational arithmetic (p as both implementations rebuild it), and the exact
    partial sums and threshold, to say how far the threshold is from each partial sum."""
    values = losses.tolist()
    n_bad = sum(not math.isfinite(v) for v in values)
    finite = sorted((Fraction(max(v, 0.0)) for v in values if math.isfinite(v)), reverse=True)
    threshold = Fraction(sum(split_p(p))) * sum(finite)
    partial, cum = [], Fraction(0)
    for v in finite:
        cum += v
        partial.append(cum)
    k = next((i + 1 for i, c in enumerate(partial) if c >= threshold), len(partial))
    return n_bad + max(k, 1), partial, threshold


def check_exact(losses, p, quantum_margin=True):
    """Kernel and reference agree bit for bit (order, counts, weights, kept-loss fraction); k is
    the exact rule's, except where the threshold lies within the fixed-point rounding (one quantum
    per loss) of a partial sum in between."""
    got, want = run_both(losses, p)
    assert torch.equal(got.order.cpu(), want.order) and torch.equal(got.counts.cpu(), want.counts)
    assert torch.equal(got.weight.cpu(), want.weight) and torch.equal(got.stats.cpu()[0], want.stats[0])
    assert torch.isfinite(got.stats[0]).item() and 0 <= got.stats[0].item() <= 1
    k = int(got.counts[0])
    k_rule, partial, threshold = exact_rule(losses, p)
    if k != k_rule:
        top = max(v for v in losses.tolist() if math.isfinite(v))
        quantum = Fraction(2) ** (math.frexp(top)[1] - (52 - (len(losses) - 1).bit_length()))
        between = partial[min(k, k_rule) - 1:max(k, k_rule) - 1]
        assert all(abs(c - threshold) <= len(losses) * quantum for c in between), (k, k_rule)
    return k, k_rule


def test_tiny_tails_are_counted_at_p_1():
    """fp32 cumulative sums absorbed [100] + [1e-6] * 7 at p = 1 (old kernel k = 1, old torch k = 5)."""
    assert check_exact(torch.tensor([100.0] + [1e-6] * 7), 1.0) == (8, 8)
    losses = torch.tensor([100.0] + [1e-6] * 1023)
    for p in (0.99999, 0.999999, 1.0):
        k, k_rule = check_exact(losses, p)
        assert k == k_rule
    assert check_exact(losses, 1.0)[0] == 1024


@pytest.mark.parametrize('batch', [2, 1000])
def test_the_rule_is_exact_a_few_quanta_from_the_threshold(batch):
    """The quantum is the one documented (kernels/selection.py; check_exact's): 2^(L - 51) beside a
    largest loss of 1, L = log2 of the block. A second loss of exactly 9 quanta is counted exactly,
    so thresholds 3 quanta below and above the first partial sum give the exact rule's k, 1 and 2.
    (A quantum 8x coarser rounds those 9 up to 16 and keeps 2 rows at both.)"""
    quantum = 2.0 ** ((batch - 1).bit_length() - 51)
    losses = torch.zeros(batch)
    losses[0], losses[-1] = 1.0, 9 * quantum  # total 1 + 9q
    for p, k in ((1 - 12 * quantum, 1), (1 - 6 * quantum, 2)):  # thresholds 1 - 3q and 1 + 3q (to O(q^2))
        assert check_exact(losses, p) == (k, k), p


@pytest.mark.parametrize('p', [0.3, 0.9, 0.999, 1.0])
def test_losses_spanning_1e_minus_30_to_1e30(p):
    g = gen(30)
    losses = 10.0 ** (torch.rand(333, generator=g) * 60 - 30)
    losses[::17] = 0.0
    k, k_rule = check_exact(losses, p)
    if p == 1.0:  # every positive loss is needed to reach the whole total
        assert k == k_rule == int((losses > 0).sum())


def test_confident_network_fp16_losses_at_p_1():
    """The review's case: per-sample losses of fp16 logits of a confident network, B = 1024, p = 1.
    The rule keeps every positive loss (fp32 sums gave 904 and 963 where the rule gives 1006).
    Whether the most confident rows come out as exactly 0 depends on the CPU's vectorised
    log-softmax: AVX-512 machines gave 18 zeros, an AVX2 one none (2^-23 at least). So 18 rows are
    set to 0 here, as many as the review's batch held, on every machine."""
    g = gen(1006)
    labels = torch.randint(0, 10, (1024,), generator=g)
    logits = torch.randn(1024, 10, generator=g) * 2
    logits[torch.arange(1024), labels] += 6 + 10 * torch.rand(1024, generator=g)  # margins of 6..16
    losses, _ = reference.cross_entropy_forward(logits.half(), labels)
    losses[losses.argsort()[:18]] = 0.0  # the smallest losses, as a confident network's exact zeros
    assert int((losses == 0).sum()) == 18 and losses.max() > 100 * losses[losses > 0].min()
    for p in (0.999, 1.0):
        k, k_rule = check_exact(losses, p)
        assert k == k_rule
    assert k == int((losses > 0).sum())


def test_a_total_beyond_fp32_keeps_the_kept_loss_fraction_finite():
    losses = torch.tensor([3e38] * 8 + [1.0])  # the sum overflows fp32
    k, k_rule = check_exact(losses, 0.5)
    assert k == k_rule == 5  # 4 x 3e38 falls short of half of (8 x 3e38 + 1) by 0.5
    got, _ = run_both(losses, 0.5)
    assert got.stats[0].item() == 0.625  # five of the eight huge losses (an fp32 sum: inf / inf = NaN)


def test_p_is_rebuilt_exactly_from_its_fp32_parts():
    for p in (0.3, 0.9, 0.123456789, 1 / 3, 1.0, 1e-6, 0.7):
        assert sum(split_p(p)) == p
    got, want = run_both(torch.ones(10), 0.3)  # fp32's 0.3 is 0.30000001: it would keep 4
    assert int(got.counts[0]) == int(want.counts[0]) == 3


def test_fill_keeps_exactly_cap_rows_and_reports_the_rule_k():
    losses = torch.arange(20, 0, -1).float()  # 20, 19, ..., 1: p = 0.5 needs 6 (20 + ... + 15 = 105)
    for cap in (3, 6, 11, 20):
        got, want = run_both(losses, 0.5, cap=cap, fill=True)
        assert_same_selection(got, want)
        assert got.counts.tolist() == [6, cap] and kept_rows(got) == list(range(cap))
        torch.testing.assert_close(got.weight.cpu()[:cap], torch.full((cap,), 1 / cap))
        torch.testing.assert_close(got.stats.cpu()[2], losses[:cap].mean())


def test_the_largest_batch_is_accepted_and_one_more_refused_before_any_launch():
    assert selection.MAX_BATCH == 4096
    with pytest.raises(ValueError, match='1..4096 entries'):
        selection.select_top_loss(torch.zeros(selection.MAX_BATCH + 1, device=DEVICE), 0.5)
    assert selection.select_num_warps(4096) == 16 and selection.select_num_warps(1024) == 4
