"""Accuracy against time: the published CIFAR-10 speedruns (shared ANCHORS, each on its own GPU) and,
when a reproduce.py output folder is given, this repo's recipes as measured there.

    python results/recipes/plot.py                        # the published points only
    python results/recipes/plot.py runs/reproduce         # + ours, from its core, recipes and fast stages

Writes results/recipes/accuracy_vs_time.png. Published times come from different GPUs (V100,
A100); only points on the same GPU compare directly, and the legend says which is which.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, accuracy %, seconds, GPU): ANCHORS.md, "Time to 94%"
PUBLISHED = [
    ('Myrtle ResNet-9 (post 4)', 94.1, 79.0, 'V100'),
    ('Myrtle bag of tricks (post 8)', 94.1, 26.0, 'V100'),
    ('post 8 re-run (cifar10-zoo)', 94.09, 15.0, 'A100'),
    ('hlb-CIFAR10 v0.7', 94.0, 6.2, 'A100'),
    ('airbench94', 94.01, 3.83, 'A100'),
    ('airbench94 compiled', 94.01, 3.09, 'A100'),
    ('airbench94_muon', 94.01, 2.59, 'A100'),
    ('hiverge', 94.007, 2.015, 'A100'),
]


def ours(out):
    """(label, accuracy %, median seconds, n, GPU name) for each group a reproduce.py folder measured."""
    gpu = 'GPU'
    summary = os.path.join(out, 'summary.md')
    if os.path.exists(summary):
        gpu = open(summary).read().split('\n')[2].split(' | ')[0] or gpu
    points = []
    for stage, groups in (('core', {'default': 'myrtle'}), ('recipes', None), ('fast', None)):
        path = os.path.join(out, stage, 'done.json')
        if not os.path.exists(path):
            continue
        done = json.load(open(path))
        if done.get('status') != 'ok':
            continue
        for name, fig in done['figures'].items():
            if groups is None or name in groups:
                label = (groups or {}).get(name, name)
                points.append((label, 100 * fig['acc']['mean'], fig['time_s']['median'], fig['acc']['n'], gpu))
    return points


def main(argv):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for gpu, marker in (('V100', 's'), ('A100', 'o')):
        pts = [p for p in PUBLISHED if p[3] == gpu]
        ax.scatter([p[2] for p in pts], [p[1] for p in pts], marker=marker, facecolors='none', edgecolors='tab:gray',
                   label=f'published ({gpu})')
        for i, (name, acc, sec, _) in enumerate(pts):  # staggered, so that neighbours' names do not overlap
            ax.annotate(name, (sec, acc), textcoords='offset points', xytext=(4, (6, -12, 18)[i % 3]), fontsize=7,
                        color='tab:gray')
    measured = ours(argv[0]) if argv else []
    if measured:
        ax.scatter([p[2] for p in measured], [p[1] for p in measured], color='tab:red', label=f'this repo ({measured[0][4]})')
        for name, acc, sec, n, _ in measured:
            ax.annotate(f'{name} (n={n})', (sec, acc), textcoords='offset points', xytext=(4, -10), fontsize=7, color='tab:red')
    ax.axhline(94.0, color='k', lw=0.5, ls='--')
    ax.set_xscale('log')
    ticks = [2, 3, 5, 10, 20, 50, 100]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xticks([], minor=True)
    ax.set_ylim(93.5, 94.5)
    ax.set_xlabel('time per run, s (log scale; each point on its own GPU)')
    ax.set_ylabel('mean test accuracy, %')
    ax.set_title('CIFAR-10 to 94%' + ('' if measured else ': published points only (nothing measured here yet)'))
    ax.legend(fontsize=8)
    path = os.path.join(HERE, 'accuracy_vs_time.png')
    fig.savefig(path, dpi=120, bbox_inches='tight')
    print(f'wrote {path} ({len(measured)} measured point(s))')


if __name__ == '__main__':
    main(sys.argv[1:])
