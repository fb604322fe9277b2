"""Mutation check: does the test suite notice when the code is wrong?

Each mutant below changes one line of the code every claim rests on (the BLF kernels and step,
the augmentation on the device, the statistics, the schedules and the optimizer step, the summary
tables and the run records) the way a plausible bug would (an off-by-one, a dropped clamp, a wrong
denominator, a flipped comparison). For each, in a throw-away git worktree of the commit under
test, the mutant is applied and the tests that cover that code run (stopping at the first
failure); a mutant "survives" when they all pass: a bug the suite cannot see. Run from the
repository root, on a CPU (the kernels under Triton's interpreter):

    python results/cpu-checks/mutation/mutate.py [--rev HEAD] [--only S1 C4 ...] > results/cpu-checks/mutation/mutation.log

Exit code 1 when a mutant survives, 0 when every one is killed.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

KERNEL_TESTS = ['tests/test_kernels.py', 'tests/test_blf.py']
BLF_TESTS = ['tests/test_blf.py', 'tests/test_mix.py']
DATA_TESTS = ['tests/test_data.py', 'tests/test_mix.py']
STATS_TESTS = ['tests/test_stats.py', 'tests/test_summarize.py']
SUMMARY_TESTS = ['tests/test_summarize.py', 'tests/test_reproduce.py']
RECORD_TESTS = ['tests/test_cli.py', 'tests/test_reproduce.py', 'tests/test_distributed.py']
# reproduce.py's tests in two passes: first those that run no real stage (a few seconds each), then
# the whole file, the smoke run of every stage included (minutes), for a mutant the first pass missed
REPRODUCE_QUICK = ('not every_record_names and not everything_is_packed and not smoke_runs and not second_run_resumes '
                   'and not airbench_stage_runs_the_script and not sigterm_to_the_process_group')
REPRODUCE_TESTS = [['tests/test_reproduce.py', '-k', REPRODUCE_QUICK], ['tests/test_reproduce.py']]
WARM_UP_TESTS = ['tests/test_cli.py', '-k', 'warm']
OPT_TESTS = ['tests/test_optim.py', 'tests/test_optimizers.py', 'tests/test_loss_scale.py', 'tests/test_model.py']
# the networks and train.py's loop: the quick files first, then those that train whole runs
NET_TESTS = [['tests/test_networks.py', 'tests/test_model.py'],
             ['tests/test_recipes.py', 'tests/test_cli.py', 'tests/test_torch_compile.py']]
CLI_TESTS = ['tests/test_cli.py', '-k', 'bad_values or boundar']  # the in-process refusals and acceptances
LOOP_TESTS = [['tests/test_model.py', 'tests/test_networks.py', 'tests/test_mix.py', 'tests/test_loss_scale.py'],
              ['tests/test_cli.py', 'tests/test_recipes.py', 'tests/test_blf.py', 'tests/test_distributed.py',
               'tests/test_torch_compile.py', 'tests/test_train_many.py', 'tests/test_no_sync.py']]
# profile.py's ablation and bench_blf.py: the profile tests, then the benchmark's
PROFILE_TESTS = [['tests/test_profile.py'], ['tests/test_blf.py', '-k', 'bench']]
LOAD_TESTS = ['tests/test_data.py']  # reading CIFAR-10 from disk, the cache, the first N images
DIST_TESTS = ['tests/test_distributed.py']  # two real processes under torchrun on gloo

# (id, file, old text (must occur exactly once), new text, the bug it stands for, the tests to run:
# pytest's arguments, or a list of such passes, each run only when the one before it passed)
MUTANTS = [
    # kernels/selection.py: the top-loss selection
    ('S1', 'kernels/selection.py', 'descending=True)', 'descending=False)', 'sorts the losses ascending', KERNEL_TESTS),
    ('S2', 'kernels/selection.py', 'quanta += (quanta.to(tl.float64) < scaled).to(tl.int64)  # ceil',
     'pass  # floor', 'the quanta rounded down: tiny losses count as 0', KERNEL_TESTS),
    ('S3', 'kernels/selection.py', 'cum.to(tl.float64) < threshold', 'cum.to(tl.float64) <= threshold',
     'a partial sum equal to the threshold keeps one more row', KERNEL_TESTS),
    ('S4', 'kernels/selection.py', 'tl.int32), axis=0) + 1', 'tl.int32), axis=0) + 0',
     'the sample that crosses the threshold is dropped', KERNEL_TESTS),
    ('S5', 'kernels/selection.py', 'tl.minimum(tl.maximum(k, k_min), B)', 'tl.minimum(k, B)',
     'k_min (--blf-min-samples) ignored', KERNEL_TESTS),
    ('S6', 'kernels/selection.py', '(k + round_to - 1) // round_to * round_to', '(k + round_to) // round_to * round_to',
     'rounding to round_to goes one multiple too far on exact multiples', KERNEL_TESTS),
    ('S7', 'kernels/selection.py', 'tl.where(fill != 0, cap, tl.minimum(k, cap))', 'tl.minimum(k, cap)',
     'fill ignored: the compact pass is padded with weight-0 rows', KERNEL_TESTS),
    ('S8', 'kernels/selection.py', 'inv_k = (1.0 / k_eff.to(tl.float64))', 'inv_k = (1.0 / k.to(tl.float64))',
     'kept rows weigh 1/k, not 1/k_eff, when capped', KERNEL_TESTS),
    ('S9', 'kernels/selection.py', 'axis=0) / B).to(tl.float32))', 'axis=0) / k_eff).to(tl.float32))',
     'the full-batch mean divides by the kept count', KERNEL_TESTS),
    ('S10', 'kernels/selection.py', 'tl.where(total > 0, fraction, 1.0).to(tl.float32)', 'fraction.to(tl.float32)',
     'an all-zero batch reports a kept-loss fraction of 0', KERNEL_TESTS),
    ('S11', 'kernels/selection.py', 'tl.where(finite & (loss > 0), loss, 0.0)', 'tl.where(finite, loss, 0.0)',
     'negative losses (and -0.0) enter the order and the sums as they are', KERNEL_TESTS),
    ('S12', 'kernels/selection.py', 'tl.maximum((top_bits >> 23) & 0xFF, 1) - 127', '((top_bits >> 23) & 0xFF) - 127',
     'a subnormal largest loss gets the wrong quantum', KERNEL_TESTS),
    ('S13', 'kernels/selection.py', "tl.where(finite, clean.to(tl.int32, bitcast=True), 0x7F800000)",
     "clean.to(tl.int32, bitcast=True)", 'NaN/Inf losses sort last (dropped) instead of first (kept)', KERNEL_TESTS),
    ('S14', 'kernels/selection.py', 'k = n_bad + tl.sum(', 'k = tl.sum(',
     'the non-finite rows are not added to k', KERNEL_TESTS),
    ('S15', 'kernels/selection.py', 'kept = ok & (rank < k_eff)', 'kept = ok & (rank <= k_eff)',
     'one row too many gets a weight', KERNEL_TESTS),
    ('S16', 'kernels/selection.py', 'tl.sum(tl.where(kept, raw, 0.0), axis=0) / k_eff', 'tl.sum(tl.where(kept, raw, 0.0), axis=0) / k',
     'the kept mean divides by k, not k_eff', KERNEL_TESTS),
    ('S17', 'kernels/selection.py', '    p = p + p_lo\n', '',
     "p's last fp32 part dropped (p off by ~1e-16)", KERNEL_TESTS),
    ('S18', 'kernels/selection.py', 'shift = 51 - LOG2_BLOCK - exponent', 'shift = 48 - LOG2_BLOCK - exponent',
     'a quantum 8x coarser than needed', KERNEL_TESTS),
    # kernels/cross_entropy.py: fused per-sample loss and weighted backward
    ('C1', 'kernels/cross_entropy.py', 'sum_exp = sum_exp * tl.exp(m - m_new) +', 'sum_exp = sum_exp +',
     'the online log-sum-exp forgets to rescale across column blocks', KERNEL_TESTS),
    ('C2', 'kernels/cross_entropy.py', "x_or_ninf = tl.where(col_ok[None, :], x, float('-inf'))", 'x_or_ninf = x',
     'padding columns (0) enter the log-sum-exp', KERNEL_TESTS),
    ('C3', 'kernels/cross_entropy.py', 'smoothing * (m - sum_x / C)', 'smoothing * (m - sum_x / BLOCK_C)',
     'label smoothing averages over the padded block', KERNEL_TESTS),
    ('C4', 'kernels/cross_entropy.py', "loss = tl.where((y >= 0) & (y < C), loss, float('nan'))", 'pass',
     'a label outside 0..C-1 gives a number, not NaN', KERNEL_TESTS),
    ('C5', 'kernels/cross_entropy.py', '+ smoothing / C\n', '+ smoothing / BLOCK_C\n',
     "the backward's smoothing target over the padded block", KERNEL_TESTS),
    ('C6', 'kernels/cross_entropy.py', 'g = tl.where(w[:, None] != 0, g, 0.0)', 'pass',
     'weight-0 rows with NaN logits get NaN gradients', KERNEL_TESTS),
    ('C7', 'kernels/cross_entropy.py', 'scale = w * tl.load(grad_out_ptr)', 'scale = w',
     'the upstream gradient (the loss scale) ignored', KERNEL_TESTS),
    ('C8', 'kernels/cross_entropy.py', '(1 - smoothing) * (m - x_label)', '(m - x_label)',
     'the label term not scaled by 1 - s', KERNEL_TESTS),
    ('C9', 'kernels/cross_entropy.py', 'SMOOTHING=smoothing != 0', 'SMOOTHING=True',
     'the smoothing branch at s = 0: a -inf logit makes the loss NaN', KERNEL_TESTS),
    ('C10', 'kernels/cross_entropy.py', '    if logits.stride(1) != 1:\n        logits = logits.contiguous()\n', '',
     'column-strided logits read as if contiguous', KERNEL_TESTS),
    ('C11', 'kernels/cross_entropy.py', 'return torch.dot(weight, losses)', 'return losses.mean()',
     'the weighted loss value ignores the weights', KERNEL_TESTS),
    # blf_step.py: the step, the compact mode's count, the variants
    ('B1', 'blf_step.py', 'return min(self.batch_size, -(-wanted // bucket) * bucket)', 'return -(-wanted // bucket) * bucket',
     'the compact pass rounded up past the batch', BLF_TESTS),
    ('B2', 'blf_step.py', '-(-wanted // bucket) * bucket', 'wanted // bucket * bucket',
     'the kept size rounded down to the bucket (fewer rows than kept)', BLF_TESTS),
    ('B3', 'blf_step.py', "h['blf_round_to'], cap - self.n_bottom, fill)", "h['blf_round_to'], cap, fill)",
     'the bottom rows come on top of the cap', BLF_TESTS),
    ('B4', 'blf_step.py', '(rank >= n - n_bottom)', '(rank > n - n_bottom)',
     'one bottom row short of --blf-bottom', BLF_TESTS),
    ('B5', 'blf_step.py', '(sel.counts[0] + n_bottom).clamp(max=n)', 'sel.counts[0] + n_bottom',
     'k with bottom rows may exceed the batch (a false "truncated")', BLF_TESTS),
    ('B6', 'blf_step.py', 'k_eff = sel.counts[1]\n', 'k_eff = sel.counts[0]\n',
     'the random control keeps k rows, not the rows the pass trains', BLF_TESTS),
    ('B7', 'blf_step.py', '                break  # nothing newer than what we hold has completed\n', '',
     'the lagged count may go back to an older value', BLF_TESTS),
    ('B8', 'blf_step.py', '            bn.track_running_stats = False', '            bn.track_running_stats = True',
     "the compact pass's kept rows move BatchNorm's running statistics", BLF_TESTS),
    ('B9', 'blf_step.py', 'blf.count.push(sel.counts[0])', 'blf.count.push(sel.counts[1])',
     'the lagged count takes k_eff (the capped size), so the pass can never grow again', BLF_TESTS),
    ('B10', 'blf_step.py', "totals['truncated'] += sel.counts[0] > sel.counts[1]", "totals['truncated'] += sel.counts[0] >= sel.counts[1]",
     'every step is reported truncated', BLF_TESTS),
    ('B11', 'blf_step.py', 'return lam * losses + (1 - lam) * losses_b', 'return lam * losses + lam * losses_b',
     "the mixed per-sample loss's partner weight", BLF_TESTS),
    ('B12', 'blf_step.py', "clean = torch.where(torch.isfinite(raw), raw.clamp_min(0), 0.0)",
     "clean = torch.where(torch.isfinite(raw), raw, 0.0)", "negative losses enter the variants' kept-loss fraction", BLF_TESTS),
    ('B13', 'blf_step.py', "kept_mix = None if mix is None else (mix[0][rows], mix[1])", "kept_mix = mix",
     "the compact pass pairs its rows with the full batch's Mixup partners", BLF_TESTS),
    ('B14', 'blf_step.py', "totals['loss'] += sel.stats[1] * n", "totals['loss'] += sel.stats[2] * n",
     'the epoch train loss is the kept rows\' mean, not the batch\'s', BLF_TESTS),
    # data_gpu.py: augmentation on the device, Mixup/CutMix
    ('D1', 'data_gpu.py', 'torch.randint(0, max_offset + 1, (n,), device=padded.device, generator=gen)\n    dx',
     'torch.randint(0, max_offset, (n,), device=padded.device, generator=gen)\n    dx',
     'the crop never takes the last row offset', DATA_TESTS),
    ('D2', 'data_gpu.py', 'cols = (dx.view(n, 1, 1, 1)', 'cols = (dy.view(n, 1, 1, 1)',
     'the crop uses the row offset for the columns too', DATA_TESTS),
    ('D3', 'data_gpu.py', 'images.flip(3), images)', 'images.flip(2), images)',
     'the flip mirrors top-bottom', DATA_TESTS),
    ('D4', 'data_gpu.py', 'generator=gen) < 0.5)', 'generator=gen) < 0.4)',
     'the flip mirrors 40% of the images, not half', DATA_TESTS),
    ('D5', 'data_gpu.py', 'in_rows = (r >= top) & (r < top + size)', 'in_rows = (r >= top) & (r <= top + size)',
     'Cutout boxes one row too tall', DATA_TESTS),
    ('D6', 'data_gpu.py', 'cy = torch.randint(0, h, (n,)', 'cy = torch.randint(size // 2, h - size // 2, (n,)',
     'Cutout centres kept away from the borders (never clipped)', DATA_TESTS),
    ('D7', 'data_gpu.py', 'self.flip_mask[perm] ^ bool(self.epoch % 2)', 'self.flip_mask[perm]',
     'the alternating flip mirrors the same images every epoch', DATA_TESTS),
    ('D8', 'data_gpu.py', 'range(0, self.n_train - batch_size + 1, batch_size)', 'range(0, self.n_train - batch_size, batch_size)',
     'the last full batch of an epoch dropped', DATA_TESTS),
    ('D9', 'data_gpu.py', "F.pad(x, (crop_pad,) * 4, mode='reflect')", "F.pad(x, (crop_pad,) * 4)",
     'zero padding instead of reflect padding', DATA_TESTS),
    ('D10', 'data_gpu.py', 'x, y = self.train_padded[perm], self.train_y[perm]', 'x, y = self.train_padded[perm], self.train_y',
     'labels left unshuffled while the images are shuffled', DATA_TESTS),
    ('D11', 'data_gpu.py', 'lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)', 'pass',
     "CutMix's lambda not corrected for the clipped box", DATA_TESTS),
    ('D12', 'data_gpu.py', 'mixed = lam * x + (1 - lam) * partner', 'mixed = lam * x + lam * partner',
     "Mixup's partner weight", DATA_TESTS),
    # stats.py: what every claim's figures come from
    ('T1', 'stats.py', "'std': statistics.stdev(values)", "'std': statistics.pstdev(values)",
     'the population std (n) instead of the sample std (n - 1)', STATS_TESTS),
    ('T2', 'stats.py', 't = (statistics.fmean(xs) - mu) / (sd / math.sqrt(n))', 't = (statistics.fmean(xs) - mu) / (sd / math.sqrt(n - 1))',
     "the t statistic's standard error over n - 1", STATS_TESTS),
    ('T3', 'stats.py', 'return tail if t >= 0 else 1.0 - tail', 'return tail',
     'the t tail for a negative t', STATS_TESTS),
    ('T4', 'stats.py', "'median': statistics.median(values)", "'median': statistics.fmean(values)",
     'the median is the mean', STATS_TESTS),
    ('T5', 'stats.py', 'return t, t_sf(t, n - 1)', 'return t, t_sf(t, n)',
     'n degrees of freedom, not n - 1', STATS_TESTS),
    # schedules.py and optimizers.py: the step every recipe takes
    ('O1', 'schedules.py', 'v0 + (v1 - v0) * (t - t0) / (t1 - t0)', 'v0 + (v1 - v0) * (t - t0) / t1',
     'the interpolation divides by the knot, not the segment', OPT_TESTS),
    ('O2', 'schedules.py', "peak = hyp['epochs'], hyp['lr_peak'] * hyp['epochs']", "peak = hyp['epochs'], hyp['lr_peak']",
     "the lr's peak at a fixed epoch: the shape does not stretch with --epochs", OPT_TESTS),
    ('O3', 'schedules.py', "return round(hyp['epochs'] * steps_per_epoch)", "return int(hyp['epochs'] * steps_per_epoch)",
     'fractional epochs floored (9.9 epochs lose a step to float noise)', OPT_TESTS),
    ('O4', 'schedules.py', 'piecewise_linear(k, step / steps_per_epoch)', 'piecewise_linear(k, (step + 1) / steps_per_epoch)',
     "each step takes the next step's settings", OPT_TESTS),
    ('O5', 'optimizers.py', "(norms if isinstance(module, nn.modules.batchnorm._BatchNorm) or name == \"bias\" else weights)",
     "(norms if isinstance(module, nn.modules.batchnorm._BatchNorm) else weights)",
     'biases get the weights\' weight decay and lr', OPT_TESTS),
    ('O6', 'optimizers.py', "group['lr'] = lr * group['lr_scale'] / scale", "group['lr'] = lr * group['lr_scale']",
     'the lr not divided by the loss scale', OPT_TESTS),
    ('O7', 'optimizers.py', "wd = setting['weight_decay'] * group['wd_scale'] * scale", "wd = setting['weight_decay'] * group['wd_scale']",
     'the weight decay not multiplied by the loss scale', OPT_TESTS),
    ('O8', 'optimizers.py', "1 - group['lr'] * group['decoupled_wd']", "1 - group['decoupled_wd']",
     "decoupled decay without the lr factor", OPT_TESTS),
    ('O9', 'optimizers.py', '.clamp_min(1e-12)).clamp_max(1.0)', '.clamp_min(1e-12))',
     'AGC scales small gradients up, not only large ones down', OPT_TESTS),
    ('O10', 'optimizers.py', 'p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))', 'pass',
     "Muon's filter renormalisation left out", OPT_TESTS),
    ('O11', 'optimizers.py', 'alpha = self.decay ** self.every * (self.t / self.total) ** 3', 'alpha = self.decay ** self.every',
     "Lookahead's averaging as strong early as late", OPT_TESTS),
    ('O12', 'optimizers.py', "torch._foreach_lerp_(self.shadow, [t.detach().float() for t in self.tensors], 1 - self.decay)",
     "torch._foreach_lerp_(self.shadow, [t.detach().float() for t in self.tensors], self.decay)",
     "EMA's decay the wrong way round", OPT_TESTS),
    ('O13', 'optimizers.py', "return 1.0 if hyp['optimizer'] == 'adam' or hyp['precision'] == 'amp' else float(hyp['batch_size'])",
     "return 1.0", 'fp16 without a loss scale (gradients underflow)', OPT_TESTS),
    ('O14', 'optimizers.py', "group['betas'] = (setting['momentum'], group['betas'][1])", "pass",
     "Adam's beta1 not scheduled", OPT_TESTS),
    # summarize.py: the tables in results/
    ('M1', 'summarize.py', "epochs += [e for e in read_jsonl(os.path.join(rec, 'epochs.jsonl')) if e.get('seed') in seeds]",
     "epochs += read_jsonl(os.path.join(rec, 'epochs.jsonl'))", "a cut run's epochs enter the kept curve", SUMMARY_TESTS),
    ('M2', 'summarize.py', "0.94)[1] if len(runs) > 1", "0.94)[0] if len(runs) > 1",
     'the t statistic reported as the p-value', SUMMARY_TESTS),
    ('M3', 'summarize.py', "changed = [f for f in differing(codes) if all(f in c for c in codes)]", "changed = differing(codes)",
     'a file only some records imported counts as different code', SUMMARY_TESTS),
    ('M4', 'summarize.py', ".items() if n > 1)", ".items() if n > 2)",
     'a seed in two records is not named', SUMMARY_TESTS),
    ('M5', 'summarize.py', "kept_curve = [sum(v) / len(v) for _, v in sorted(by_epoch.items())]",
     "kept_curve = [max(v) for _, v in sorted(by_epoch.items())]", "the kept curve takes each epoch's largest run", SUMMARY_TESTS),
    # record.py: what every number's log is
    ('R1', 'record.py', "            os.mkdir(path)\n", "            os.makedirs(path, exist_ok=True)\n",
     'a second run in the same second writes into the first one\'s record', RECORD_TESTS),
    ('R2', 'record.py', "with open(os.path.join(self.path, name), 'a') as fh:", "with open(os.path.join(self.path, name), 'w') as fh:",
     "each run's line replaces the runs before it", RECORD_TESTS),
    ('R3', 'record.py', "            lines[row - 1] = lines[row - 1][:col]\n", "",
     "a comment edit changes the code's hash (reproduce.py reruns a stage for it)", RECORD_TESTS),
    ('R4', 'record.py', "if parts[0] not in ('..', 'tests')", "if parts[0] != '..'",
     "the tests' modules count as the code a run is made of", RECORD_TESTS),
    ('R5', 'record.py', "'--exclude-standard', '--', '*.py']", "'--exclude-standard', '--', '*.pyc']",
     "a new .py file not yet in git is left out of the record's git.diff", RECORD_TESTS),
    ('R6', 'record.py', "key=lambda r: r['seed'])", "key=lambda r: r['rank'])",
     "several ranks' runs written in rank order, not seed order", RECORD_TESTS),
    # reproduce.py: what runs on the lent GPU, what is resumed, what is pooled into a figure
    ('P1', 'reproduce.py', 'if blocks and blocks[-1][0] + blocks[-1][1] == s:', 'if blocks and blocks[-1][0] + blocks[-1][1] <= s:',
     'a gap between missing seeds is bridged: finished seeds run again', REPRODUCE_TESTS),
    ('P2', 'reproduce.py', "elif arg in ('--seed', '--runs', '--data-dir', '--out-dir'):", "elif arg in ('--seed', '--runs', '--out-dir'):",
     "the data folder's path counts as a setting: records made from another copy fail the stage", REPRODUCE_TESTS),
    ('P3', 'reproduce.py', 'changed = code_changed_since(record)', 'changed = []',
     'records of other code are pooled with the new ones', REPRODUCE_TESTS),
    ('P4', 'reproduce.py', '            set_aside(out, record, str(e), log)\n', '            raise StageFailed(str(e))\n',
     'a torn record fails the stage at every attempt instead of being set aside', REPRODUCE_TESTS),
    ('P5', 'reproduce.py', 'missing = [s for s in wanted if s not in finished]', 'missing = list(wanted)',
     'a resumed stage runs its finished seeds again', REPRODUCE_TESTS),
    ('P6', 'reproduce.py', '            if not changed:\n', '            if True:\n',
     'a completed stage is skipped although its code changed', REPRODUCE_TESTS),
    ('P7', 'reproduce.py', 'left < STAGES[name][2] <= args.budget_min', 'left < STAGES[name][2]',
     'a stage whose estimate exceeds a whole budget is deferred forever', REPRODUCE_TESTS),
    ('P8', 'reproduce.py', 'elif current == digest and (m := re.match(', 'elif (m := re.match(',
     'a GPU test that passed with other code is not run again after a fix', REPRODUCE_TESTS),
    ('P9', 'reproduce.py', '    if missing_data:\n', '    if False:\n',
     'GPU tests that skip for lack of data pass the tests stage', REPRODUCE_TESTS),
    ('P10', 'reproduce.py', "xfailed)', lines[-1])}", "xfailed)', lines[0])}",
     "the tests stage's counts come from the first line naming one, not pytest's closing line", REPRODUCE_TESTS),
    ('P11', 'reproduce.py', "== 'eval' and run != 'warmup':", "== 'eval':",
     "airbench's untimed warm-up run counts among its runs", REPRODUCE_TESTS),
    ('P12', 'reproduce.py', 'stop_after=ctx.seconds_left() / 3)', 'stop_after=ctx.seconds_left())',
     'a published script may take all the time left, none for our recipe', REPRODUCE_TESTS),
    ('P13', 'reproduce.py', "total = minutes + before.get('minutes_all_attempts', before.get('minutes', 0))", 'total = minutes',
     "a resumed stage's minutes forget its earlier attempts (the --list figures)", REPRODUCE_TESTS),
    ('P14', 'reproduce.py', 'if name not in (PACK, PACK + \'.part\'):', 'if name != PACK + \'.part\':',
     'each pack holds the previous pack, growing every stage', REPRODUCE_TESTS),
    ('P15', 'reproduce.py', 'if check and proc.returncode != 0:', 'if check and proc.returncode < 0:',
     'a command that exits with an error (not a signal) passes its stage', REPRODUCE_TESTS),
    ('P16', 'reproduce.py', "default='runs/reproduce', type=os.path.abspath,", "default='runs/reproduce',",
     'relative paths reach commands that run from the repository root', REPRODUCE_TESTS),
    ('P17', 'reproduce.py', 'for seed in seeds for name, flags in BLF_CONFIGS.items()]',
     'for name, flags in BLF_CONFIGS.items() for seed in seeds]',
     "the blf stage's seeds not interleaved: a drifting machine favours one configuration", REPRODUCE_TESTS),
    ('P18', 'reproduce.py', 'if set(args.stage or STAGES) - NEEDS_NO_DATA and not', 'if set(args.stage or STAGES) and not',
     "bench refuses to run before the data set is there (the GPU plan's first call)", REPRODUCE_TESTS),
    ('P19', 'reproduce.py', "(self.budget_end, 'budget')]", "(None, 'budget')]",
     'a running command ignores --budget-min', REPRODUCE_TESTS),
    ('P20', 'reproduce.py', '        proc.send_signal(signal.SIGINT)\n', '        proc.kill()\n',
     'a command out of time is killed, not stopped with Ctrl-C: its record does not close', REPRODUCE_TESTS),
    ('P21', 'reproduce.py', "    if group['pooling']:", '    if False:',
     'a figure rests on a group that pools what must not be pooled', REPRODUCE_TESTS),
    ('P22', 'reproduce.py', "for rel in glob.glob(pattern, root_dir=HERE)} - {'reproduce.py'}",
     "for rel in glob.glob(pattern, root_dir=HERE)}", 'an edit of reproduce.py reruns every completed stage', REPRODUCE_TESTS),
    ('P23', 'reproduce.py', "deselect = [arg for node in sorted(passed_before) for arg in ('--deselect', node)]", 'deselect = []',
     'GPU tests that passed in an earlier attempt run again', REPRODUCE_TESTS),
    ('P24', 'reproduce.py', 'made = sorted(folders() - before)', 'made = sorted(folders())',
     "bench or profile run again reads an earlier attempt's folder, or stops", REPRODUCE_TESTS),
    ('P25', 'reproduce.py', '                traceback.print_exc(file=log)\n', '                pass\n',
     "a stage that crashes leaves no traceback in its log", REPRODUCE_TESTS),
    ('P26', 'reproduce.py', '    if proc.poll() is None:\n        kill_tree(proc)\n', '    if proc.poll() is None:\n        proc.kill()\n        proc.wait()\n',
     "a command stopped after its grace leaves torchrun's workers running (each sits in a session of its own)", REPRODUCE_TESTS),
    # networks.py: ResNet-9 and its post 8 options, airbench94's net, precision, FLOPs
    ('N1', 'networks.py', 'var = ghosts.var(dim=(1, 3, 4), unbiased=False)', 'var = ghosts.var(dim=(1, 3, 4), unbiased=True)',
     'ghost BN normalises each sub-batch by its unbiased variance', NET_TESTS),
    ('N2', 'networks.py', 'unbiased = var * (self.ghost_size * h * w / (self.ghost_size * h * w - 1))', 'unbiased = var',
     "ghost BN's running variance without Bessel's correction", NET_TESTS),
    ('N3', 'networks.py', 'self.running_mean.lerp_(mean.mean(0), self.momentum)', 'self.running_mean.lerp_(mean.mean(0), 1 - self.momentum)',
     "ghost BN's running mean moves 0.9 of the way, not 0.1", NET_TESTS),
    ('N4', 'networks.py', 'return y.reshape(n, c, h, w).to(x.dtype)', 'return y.reshape(n, c, h, w)',
     'ghost BN hands fp32 activations to an fp16 net', NET_TESTS),
    ('N5', 'networks.py', '    if frozen_scale:  # Myrtle post 8: the scales stay at 1, only the biases learn\n        bn.weight.requires_grad_(False)\n',
     '', '--frozen-bn-scale ignored: the BN scales train', NET_TESTS),
    ('N6', 'networks.py', '[nn.MaxPool2d(2)] * pool + [norm(c_out), act()]', '[norm(c_out), act()] + [nn.MaxPool2d(2)] * pool',
     '--pool-before-bn pools after BN and the activation, as without it', NET_TESTS),
    ('N7', 'networks.py', '        return x + self.body(x)\n', '        return self.body(x)\n',
     "ResNet-9's residual blocks lose their skip connection", NET_TESTS),
    ('N8', 'networks.py', "'celu': lambda: nn.CELU(0.3)", "'celu': lambda: nn.CELU(1.0)",
     "CELU with torch's alpha 1, not post 8's 0.3", NET_TESTS),
    ('N9', 'networks.py', 'self.pool = nn.AdaptiveMaxPool2d(1)', 'self.pool = nn.AdaptiveAvgPool2d(1)',
     "ResNet-9's global pooling averages instead of taking the max", NET_TESTS),
    ('N10', 'networks.py', '            self.whiten.weight.requires_grad_(False)\n            self.prep', '            self.prep',
     "--whiten 3's whitening filters train", NET_TESTS),
    ('N11', 'networks.py', 'self.whiten.kernel_size[0], eps=1e-2, negated=False)', 'self.whiten.kernel_size[0], eps=5e-4, negated=False)',
     "--whiten 3 uses airbench's eps, not post 8's", NET_TESTS),
    ('N12', 'networks.py', 'filters = (eigenvectors / torch.sqrt(eigenvalues + eps))', 'filters = (eigenvectors / (torch.sqrt(eigenvalues) + eps))',
     'the whitening eps added after the square root', NET_TESTS),
    ('N13', 'networks.py', 'bn = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)', 'bn = nn.BatchNorm2d(channels, momentum=0.6, eps=1e-12)',
     "airbench's BN momentum 0.6 taken as torch's (it is 1 - torch's)", NET_TESTS),
    ('N14', 'networks.py', 'x = self.act(self.norm1(self.pool(self.conv1(x))))', 'x = self.act(self.pool(self.norm1(self.conv1(x))))',
     "airbench's conv group normalises before it pools", NET_TESTS),
    ('N15', 'networks.py', '                nn.init.dirac_(m.weight[:min(m.in_channels, m.out_channels)])\n', '                pass\n',
     "airbench's convolutions do not start as identities", NET_TESTS),
    ('N16', 'networks.py', '        self.whiten.bias.zero_()\n', '        pass\n',
     "airbench's whitening bias keeps its random initialisation", NET_TESTS),
    ('N17', 'networks.py', "total + (first if first_trains else 0) + 2 * sum(rest)", "total + (first if first_trains else 0) + sum(rest)",
     "the training FLOPs count one backward matmul, not two", NET_TESTS),
    ('N18', 'networks.py', '                m.float()\n', '                pass\n',
     'BatchNorm in the weights\' fp16, not fp32', NET_TESTS),
    ('N19', 'networks.py', 'return self.linear(self.dropout(self.pool(x).flatten(1))) * self.logit_scale',
     'return self.linear(self.dropout(self.pool(x).flatten(1)))', "ResNet-9's logits not scaled by 0.125", NET_TESTS),
    ('N20', 'networks.py', 'options.update({key: hyp[key] for key in RESNET9_OPTIONS})', 'options.update({})',
     "ResNet-9's options (post 8's tricks, dropout) never reach the network", NET_TESTS),
    # cli.py: what a run refuses before any work, and the values at each bound it must accept
    ('L1', 'cli.py', '(args.epochs >= 1,', '(args.epochs > 1,', '--epochs 1 refused', CLI_TESTS),
    ('L2', 'cli.py', '(0 <= args.lr_peak < 1,', '(0 <= args.lr_peak <= 1,', '--lr-peak 1 (no decay at all) accepted', CLI_TESTS),
    ('L3', 'cli.py', '(0 <= args.momentum < 1,', '(0 < args.momentum < 1,', '--momentum 0 (plain SGD) refused', CLI_TESTS),
    ('L4', 'cli.py', '(not args.ghost_bn or args.batch_size % args.ghost_bn == 0)', '(True)',
     '--ghost-bn that does not divide the batch accepted', CLI_TESTS),
    ('L5', 'cli.py', '(0 <= args.crop_pad <= 16,', '(0 <= args.crop_pad <= 32,', '--crop-pad beyond half the image accepted', CLI_TESTS),
    ('L6', 'cli.py', '(args.blf is None or 0 < args.blf <= 1,', '(args.blf is None or 0 <= args.blf <= 1,',
     '--blf 0 (keep nothing) accepted', CLI_TESTS),
    ('L7', 'cli.py', '(args.blf is None or 0 < args.blf <= 1,', '(args.blf is None or 0 < args.blf < 1,',
     '--blf 1 (keep every row, BLF\'s own control) refused', CLI_TESTS),
    ('L8', 'cli.py', '    if args.batch_size > n_train:', '    if args.batch_size >= n_train:',
     'a batch of the whole training set refused', CLI_TESTS),
    ('L9', 'cli.py', 'min_samples(args.blf_bottom, args.batch_size) >= args.batch_size', 'min_samples(args.blf_bottom, args.batch_size) > args.batch_size',
     '--blf-bottom that leaves no top row accepted', CLI_TESTS),
    ('L10', 'cli.py', 'args.batch_size <= MAX_BATCH,', 'args.batch_size < MAX_BATCH,',
     "--blf-impl triton refuses its own largest batch", CLI_TESTS),
    ('L11', 'cli.py', "args.precision in ('amp', 'fp32') or", "args.precision in ('amp',) or",
     '--optimizer adam --precision fp32 refused', CLI_TESTS),
    ('L12', 'cli.py', "(args.subset_control == 'none' or args.blf is not None,", "(True,",
     '--subset-control random without --blf (no subset size) accepted', CLI_TESTS),
    ('L13', 'cli.py', "(0 <= args.blf_min_samples <= 1,", "(0 <= args.blf_min_samples < 1,",
     '--blf-min-samples 1 (every row) refused', CLI_TESTS),
    ('L14', 'cli.py', "(args.n_train is None or 1 <= args.n_train <= 50000,", "(args.n_train is None or 1 <= args.n_train < 50000,",
     '--n-train 50000 (the whole set) refused', CLI_TESTS),
    # train.py: evaluation and TTA, the loss sums, the run's epochs, warm-up
    ('E1', 'train.py', 'views = [x] if level == 0 else [x, x.flip(3)]', 'views = [x] if level == 0 else [x, x.flip(2)]',
     'flip TTA mirrors the image upside down', LOOP_TESTS),
    ('E2', 'train.py', "padded = F.pad(x, (1, 1, 1, 1), mode='reflect')", "padded = F.pad(x, (1, 1, 1, 1), mode='replicate')",
     "TTA's shifted views repeat the edge instead of reflecting", LOOP_TESTS),
    ('E3', 'train.py', 'for shifted in (padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]):', 'for shifted in (padded[:, :, :-2, :-2], padded[:, :, 2:, :-2]):',
     "TTA's down-right view shifted down-left", LOOP_TESTS),
    ('E4', 'train.py', '    n = {0: 1, 1: 2, 2: 6}[level]', '    n = {0: 1, 1: 2, 2: 2}[level]',
     'TTA 2 averages only its first two views', LOOP_TESTS),
    ('E5', 'train.py', 'logits = sum(w * model(v).float() for w, v in zip(weights, views))', 'logits = sum(model(v).float() for w, v in zip(weights, views))',
     "TTA sums the views' logits instead of weighing them", LOOP_TESTS),
    ('E6', 'train.py', "    model.train()\n    return {'loss': loss", "    return {'loss': loss",
     'evaluation leaves the model in eval mode: the next epoch trains on running BN statistics', LOOP_TESTS),
    ('E7', 'train.py', 'return lam * loss + (1 - lam) * F.cross_entropy', 'return lam * loss + lam * F.cross_entropy',
     "Mixup's partner class weighs lam, not 1 - lam", LOOP_TESTS),
    ('E8', 'train.py', "totals['loss'] += loss.detach() * len(y)", "totals['loss'] += loss.detach()",
     "an epoch's train loss sums batch means, then divides by the samples", LOOP_TESTS),
    ('E9', 'train.py', "kept_loss_frac=totals['kept_loss_frac'].item() / steps", "kept_loss_frac=totals['kept_loss_frac'].item() / count",
     "an epoch's kept-loss fraction divided by its samples, not its steps", LOOP_TESTS),
    ('E10', 'train.py', "rows_trained=totals['rows_trained'] / count", "rows_trained=totals['rows_trained'] / steps",
     "an epoch's trained rows per step, not per sample", LOOP_TESTS),
    ('E11', 'train.py', "if whitening_bias(inner) is not None and epoch >= hyp['whiten_bias_epochs']:",
     "if whitening_bias(inner) is not None and epoch > hyp['whiten_bias_epochs']:",
     'the whitening bias trains an epoch longer than --whiten-bias-epochs', LOOP_TESTS),
    ('E12', 'train.py', "filtering = blf if blf is not None and epoch + 1 >= hyp['blf_start_epoch'] else None",
     "filtering = blf if blf is not None and epoch >= hyp['blf_start_epoch'] else None",
     'BLF starts an epoch after --blf-start-epoch', LOOP_TESTS),
    ('E13', 'train.py', "final = evaluate(ema.model() if ema else inner,", "final = evaluate(inner,",
     "the final accuracy is the raw weights', not EMA's", LOOP_TESTS),
    ('E14', 'train.py', '        if loss < self.best:', '        if loss <= self.best:',
     'an equal test loss counts as an improvement', LOOP_TESTS),
    ('E15', 'train.py', '    if lookahead is not None:\n        lookahead.finish()\n', '',
     'lookahead\'s final averaging skipped', LOOP_TESTS),
    ('E16', 'train.py', '            if average is not None:\n                average.restart()\n', '            pass\n',
     'EMA and lookahead start from the weights before whitening was set', LOOP_TESTS),
    ('E17', 'train.py', 'steps_per_epoch = data.n_train // global_batch', "steps_per_epoch = data.n_train // hyp['batch_size']",
     "a data-parallel run counts its epoch's steps by the rank's slice, not the global batch", LOOP_TESTS),
    ('E18', 'train.py', 'for n in {min(ebs, n_test), n_test % ebs or ebs}:', 'for n in {min(ebs, n_test)}:',
     'warm-up skips the last, partial evaluation batch: cuDNN tunes it on the clock', LOOP_TESTS),
    ('E19', 'train.py', '        total += seconds\n', '',
     "the run's time leaves out its epochs", LOOP_TESTS),
    ('E20', 'train.py', '                blf.fixed_size = size\n', '                pass\n',
     'warm-up trains no compact kept-batch size', LOOP_TESTS),
    ('E21', 'train.py', '    data.reseed(seed)  # the same', '    pass  # the same',
     "a run's augmentation depends on what ran before it", LOOP_TESTS),
    # train.py's warm-up: which kept-batch sizes get a step before the clock starts
    ('W1', 'train.py', "    if torch.device(device).type == 'cuda' or hyp['compile']:", "    if hyp['compile']:",
     'a GPU run without --compile warms one kept-batch size: Triton and cuDNN build the others on the clock', WARM_UP_TESTS),
    ('W2', 'train.py', "    if torch.device(device).type == 'cuda' or hyp['compile']:", "    if torch.device(device).type == 'cuda':",
     'a --compile run on the CPU compiles all but one kept-batch size on the clock', WARM_UP_TESTS),
    ('W3', 'train.py', "    if torch.device(device).type == 'cuda' or hyp['compile']:", '    if True:',
     'a CPU run pays seconds per kept-batch size in warm-up (a minute under the interpreter)', WARM_UP_TESTS),
    ('W4', 'train.py', '    return sizes[-1:]', '    return sizes[:1]',
     'a CPU run warms the smallest kept batch, not the whole batch', WARM_UP_TESTS),
    # ablation.py (profile.py) and bench_blf.py: how the profile and bench stages time and report
    ('A1', 'ablation.py', '    for _ in range(warmup):\n        step()\n    clock', '    clock',
     'profile.py times its first calls (cuDNN autotuning, Triton compiles) as steps', PROFILE_TESTS),
    ('A2', 'ablation.py', 'for a, b in zip(marks, marks[1:])]', 'for a, b in zip(marks[:1] * len(marks), marks[1:])]',
     'each step is timed from the first mark: the times grow, the median is half the run', PROFILE_TESTS),
    ('A3', 'ablation.py', "'min_ms': min(ms), 'max_ms': max(ms)", "'min_ms': ms[0], 'max_ms': ms[-1]",
     "the spread of a row is its first and last step, not its min and max", PROFILE_TESTS),
    ('A4', 'ablation.py', 'isinstance(child, (nn.BatchNorm2d, nn.ReLU))', 'isinstance(child, nn.BatchNorm2d)',
     'no_bn_relu keeps the ReLUs', PROFILE_TESTS),
    ('A5', 'ablation.py', "(F.cross_entropy(model(x).float(), y, label_smoothing=smoothing) * optimizers.loss_scale(hyp)).backward()",
     "F.cross_entropy(model(x).float(), y, label_smoothing=smoothing).backward()",
     "no_optimizer's backward leaves out the loss scale the real step multiplies in", PROFILE_TESTS),
    ('A6', 'ablation.py', "step = {'no_data': full_step, 'no_optimizer': no_optimizer,", "step = {'no_data': full_step, 'no_optimizer': full_step,",
     'no_optimizer still steps the optimizer: the optimizer share comes out near 0', PROFILE_TESTS),
    ('A7', 'ablation.py', "x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)",
     "x = x.contiguous(memory_format=torch.channels_last)",
     'the NCHW ablation feeds the NCHW model channels_last images', PROFILE_TESTS),
    ('A8', 'ablation.py', '    for epoch in range(epochs + 1):  # the first epoch is warm-up', '    for epoch in range(epochs):  # the first epoch is warm-up',
     'the full row times one epoch fewer than --epochs', PROFILE_TESTS),
    ('A9', 'ablation.py', '            per_step.append(seconds / steps)', '            per_step.append(seconds / (steps + 1))',
     "the full row divides an epoch by one step too many", PROFILE_TESTS),
    ('A10', 'ablation.py', "        if kind == 'no_bn_relu':\n", "        if kind == 'no_optimizer':\n",
     'BatchNorm and ReLU stripped from the wrong row', PROFILE_TESTS),
    ('A11', 'ablation.py', "            if mode == 'compact':  # visit", "            if mode == 'mask':  # visit",
     'the compact row builds its kept-batch shapes on the clock', PROFILE_TESTS),
    ('A12', 'ablation.py', "out['blf_' + mode]['kept'] = totals['kept'].item() / totals['count'].item()",
     "out['blf_' + mode]['kept'] = totals['kept'].item() / totals['count'].item() / totals['steps']",
     "the BLF rows' kept fraction divided by the steps again", PROFILE_TESTS),
    ('A13', 'ablation.py', "bench_blf.blf_work(backend, logits, y, hyp['blf'])", 'bench_blf.blf_work(backend, logits, y)',
     "the blf_kernels row selects at bench's 0.9, not at --blf", PROFILE_TESTS),
    ('A14', 'ablation.py', "'optimizer': m['no_data'] - m['no_optimizer'],", "'optimizer': m['no_data'] - m['no_bn_relu'],",
     'the optimizer share takes in BatchNorm and ReLU too', PROFILE_TESTS),
    ('A15', 'ablation.py', "'optimizer': ('no_data', 'no_optimizer'),", "'optimizer': ('no_data',),",
     "the optimizer share is judged against one row's spread only", PROFILE_TESTS),
    ('A16', 'ablation.py', '        torch.backends.cudnn.benchmark = benchmark  #', '        torch.backends.cudnn.benchmark = True  #',
     "'cudnn.benchmark off' leaves it on", PROFILE_TESTS),
    ('A17', 'ablation.py', '            torch.backends.cudnn.benchmark = saved\n', '            pass\n',
     "the ablations leave cudnn.benchmark off for everything timed after them", PROFILE_TESTS),
    ('A18', 'ablation.py', "channels_last=options.get('channels_last', True))", "channels_last=True)",
     'the NCHW ablation times channels_last images into an NCHW model', PROFILE_TESTS),
    ('A19', 'ablation.py', "'matmul_tflops': 2 * n ** 3 / matmul_s / 1e12", "'matmul_tflops': n ** 3 / matmul_s / 1e12",
     "the matmul rate counts a multiply-add as one FLOP: the floor is twice too high", PROFILE_TESTS),
    ('A20', 'ablation.py', "'copy_gbps': 2 * nbytes / copy_s / 1e9", "'copy_gbps': nbytes / copy_s / 1e9",
     'the copy bandwidth counts the read only', PROFILE_TESTS),
    ('A21', 'ablation.py', "(results[bs]['full']['median_ms'] * (50000 // bs) / 1000)", "(results[bs]['full']['median_ms'] * (args.n_train // bs) / 1000)",
     "the efficiency is of an epoch of --n-train images, not of 50,000", PROFILE_TESTS),
    ('A22', 'ablation.py', '        shares[bs] = shares_per_epoch(results[bs], 50000 // bs)', '        shares[bs] = shares_per_epoch(results[bs], args.n_train // bs)',
     "the shares are per --n-train images, not per epoch of 50,000", PROFILE_TESTS),
    ('A23', 'ablation.py', "        kernels.append((e.key, t / 1000 / steps))  # ms per step", "        kernels.append((e.key, t / 1000))  # ms per step",
     "torch.profiler's times are per 5 steps, labelled per step", PROFILE_TESTS),
    ('A24', 'ablation.py', "    base = ablations[0]['median_ms']\n", "    base = ablations[1]['median_ms']\n",
     "the ablations' ratios are to BatchNorm in fp16, not to the baseline", PROFILE_TESTS),
    ('A25', 'ablation.py', "(args.steps < 2, '--steps must be at least 2')", "(args.steps < 1, '--steps must be at least 2')",
     '--steps 1 accepted: no spread, no p20/p80', PROFILE_TESTS),
    ('A26', 'bench_blf.py', '        logits.grad = None  # a fresh', '        pass  # a fresh',
     "the bench's gradient accumulates over calls: an add kernel timed that training never runs", PROFILE_TESTS),
    ('A27', 'bench_blf.py', "    return quantiles([t * 1000 for t in ablation.time_steps(fn, device, reps, warmup)])",
     "    return quantiles([t for t in ablation.time_steps(fn, device, reps, warmup)])",
     'bench_blf reports seconds as milliseconds', PROFILE_TESTS),
    ('A28', 'bench_blf.py', "    return time_ms(lambda: train.train_step(model, opt, x, y, h, totals), device, reps)[0]",
     "    return time_ms(lambda: train.train_step(model, opt, x, y, h, totals), device, reps)[1]",
     "the step time is its 20th percentile, not its median: the overhead comes out high", PROFILE_TESTS),
    ('A30', 'bench_blf.py', "    if args.reps < 1:", "    if args.reps < 0:",
     '--reps 0 accepted: a crash with a traceback', PROFILE_TESTS),
    # distributed.py: several processes under torchrun (gloo on the CPU)
    ('G1', 'distributed.py', 'list(seeds)[self.rank::self.world]', 'list(seeds)[self.rank:]',
     'every rank trains the seeds from its own rank on: runs trained twice', DIST_TESTS),
    ('G2', 'distributed.py', 'self.data_parallel = data_parallel and world > 1', 'self.data_parallel = data_parallel',
     'a single process asked for --data-parallel wraps its model in DDP without a process group', DIST_TESTS),
    ('G3', 'distributed.py', 'return list(seeds) if self.data_parallel or not self.active else',
     'return list(seeds) if not self.active else',
     'a data-parallel job splits the seeds too: each rank trains a different run on its slice', DIST_TESTS),
    ('G4', 'distributed.py', '        if not self.active:\n            return [obj]', '        if True:\n            return [obj]',
     "rank 0's record holds only its own runs", DIST_TESTS),
    ('G5', 'distributed.py', '        start = self.rank * size\n', '        start = 0\n',
     'every rank trains the first slice of each global batch', DIST_TESTS),
    ('G6', 'distributed.py', '        size = len(y) // self.world\n', '        size = len(y) // self.world // 2\n',
     'each rank trains half its slice', DIST_TESTS),
    ('G7', 'distributed.py', '        if not self.data_parallel:\n            return model\n        ids',
     '        if True:\n            return model\n        ids',
     'no DistributedDataParallel: the ranks never average their gradients and drift apart', DIST_TESTS),
    ('G8', 'distributed.py', '    return int(os.environ.get(\'WORLD_SIZE\', \'1\'))', '    return int(os.environ.get(\'LOCAL_WORLD_SIZE\', \'1\'))',
     'the world is counted on one node only', DIST_TESTS),
    ('G9', 'distributed.py', '    return Group(rank, world, local, data_parallel), device_text',
     '    return Group(rank, world, local), device_text', '--data-parallel under torchrun ignored: the seeds are spread instead', DIST_TESTS),
    ('G10', 'distributed.py', '        if self.active:\n            dist.barrier()', '        if False:\n            dist.barrier()',
     "no barrier between a data-parallel run's epochs: rank 0's clock stops before the slowest rank", DIST_TESTS),
    ('G11', 'distributed.py', '    os._exit(code)\n', '    sys.exit(code)\n',
     "a torchrun rank goes through finalization, where gloo's worker threads can abort it", DIST_TESTS),
    ('G12', 'distributed.py', '    sys.stdout.flush()\n    sys.stderr.flush()\n    os._exit(code)', '    os._exit(code)',
     "a torchrun rank ends with its last output still in the buffers, lost", DIST_TESTS),
    # data_gpu.py: from disk to tensors (every accuracy rests on reading the right images and labels)
    ('F1', 'data_gpu.py', "np.uint8)).reshape(-1, 3, 32, 32)", "np.uint8)).reshape(-1, 32, 32, 3).permute(0, 3, 1, 2)",
     "the batches' rows read as HWC images: scrambled pixels", LOAD_TESTS),
    ('F2', 'data_gpu.py', '    test_x, test_y = _read_batches(folder, TEST_FILES)', '    test_x, test_y = _read_batches(folder, TRAIN_FILES[-1:])',
     'the test set is a training batch (10,000 images too): accuracy on seen images', LOAD_TESTS),
    ('F3', 'data_gpu.py', "        ok = (blob['version'] == CACHE_VERSION and _crc(data) == blob['crc']",
     "        ok = (blob['version'] == CACHE_VERSION",
     'a damaged cache is trusted', LOAD_TESTS),
    ('F4', 'data_gpu.py', "sig.append((name, st.st_size if st else -1, st.st_mtime_ns if st else -1))",
     "sig.append((name, st.st_size if st else -1, -1))",
     'a batch replaced by one of the same size leaves the cache stale', LOAD_TESTS),
    ('F5', 'data_gpu.py', "if int(y.min()) < 0 or int(y.max()) > 9:", "if int(y.min()) < 0 or int(y.max()) > 10:",
     'label 10 accepted: a damaged batch trains', LOAD_TESTS),
    ('F6', 'data_gpu.py', "    if len(train_x) != 50000 or len(test_x) != 10000:", "    if len(train_x) < 10000 or len(test_x) < 1000:",
     'a partial CIFAR-10 trains as if it were the full one', LOAD_TESTS),
    ('F7', 'data_gpu.py', "        train_x, train_y = data['train_x'][:n_train], data['train_y'][:n_train]",
     "        train_x, train_y = data['train_x'][-n_train if n_train else 0:], data['train_y'][-n_train if n_train else 0:]",
     '--n-train N takes the last N images, not the first', LOAD_TESTS),
    ('F8', 'data_gpu.py', "    return ((images_u8.float() - mean) / std).to(dtype)", "    return ((images_u8.float() - mean) / 255).to(dtype)",
     'the images are scaled by 255, not by their per-channel std', LOAD_TESTS),
    ('F9', 'data_gpu.py', "MEAN = (125.307, 122.950, 113.865)", "MEAN = (113.865, 122.950, 125.307)",
     "the channel means in BGR order", LOAD_TESTS),
    ('F10', 'data_gpu.py', "        os.replace(tmp, cache)\n", "        pass\n",
     'the cache is never written: every start reads and unpickles the batches again', LOAD_TESTS),
]


def run(cmd, cwd, timeout=None, env=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rev', default='HEAD', help='the commit under test')
    ap.add_argument('--only', nargs='+', help='only these mutant ids')
    ap.add_argument('--timeout', type=float, default=1200, help='seconds per mutant')
    args = ap.parse_args()
    repo = os.getcwd()
    rev = run(['git', 'rev-parse', '--short', args.rev], repo).stdout.strip()
    data = os.path.join(repo, 'data')
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONDONTWRITEBYTECODE='1')
    survived = 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, 'tree')
        subprocess.run(['git', 'worktree', 'add', '-q', '--detach', tree, rev], cwd=repo, check=True)
        try:
            if os.path.isdir(data):  # the tests' CIFAR-10 (tests/conftest.py looks in data/)
                os.symlink(data, os.path.join(tree, 'data'))
            print(f'# mutation check at {rev}, python {sys.version.split()[0]}; tests stop at the first failure (-x)')
            print(f'{"id":4} {"result":9} {"s":>6}  bug (file)  [first failing test]')
            for mid, path, old, new, bug, tests in MUTANTS:
                if args.only and mid not in args.only:
                    continue
                file = os.path.join(tree, path)
                with open(file) as fh:
                    original = fh.read()
                if original.count(old) != 1:
                    raise SystemExit(f'{mid}: the text to mutate occurs {original.count(old)} times in {path}')
                with open(file, 'w') as fh:
                    fh.write(original.replace(old, new))
                start = time.time()
                try:
                    for test_args in (tests if isinstance(tests[0], list) else [tests]):
                        out = run([sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', '-W', 'ignore',
                                   *test_args], tree, timeout=args.timeout, env=env)
                        code, text = out.returncode, out.stdout
                        if code != 0:
                            break
                except subprocess.TimeoutExpired:
                    code, text = 'timeout', ''
                finally:
                    with open(file, 'w') as fh:
                        fh.write(original)
                failed = [line.split(' - ')[0].split(' ', 1)[1] for line in text.splitlines()
                          if line.startswith(('FAILED ', 'ERROR '))]
                result = 'survived' if code == 0 else 'killed'
                survived += code == 0
                print(f'{mid:4} {result:9} {time.time() - start:6.0f}  {bug} ({path})  [{failed[0] if failed else code}]', flush=True)
        finally:
            subprocess.run(['git', 'worktree', 'remove', '--force', tree], cwd=repo)
    print(f'# {survived} survived')
    return 1 if survived else 0


if __name__ == '__main__':
    sys.exit(main())
