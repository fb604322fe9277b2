"""A pytest plugin for seeing how xdist spreads the files over its workers: each worker appends a
line per test phase to /tmp/tl/<worker>.txt: the wall time at its end, the phase, its seconds,
the test id. Logged: every call and teardown, and a setup only when it failed or skipped (so a
module fixture's setup shows only in the gap before its file's first line).

    mkdir -p /tmp/tl && TRITON_INTERPRET=1 PYTHONPATH=results/cpu-checks/durations \
        python -m pytest -q -p timeline_plugin -n auto --dist loadfile
"""
import os
import time


def pytest_runtest_logreport(report):
    if report.when == 'setup' and report.outcome == 'passed':
        return
    worker = os.environ.get('PYTEST_XDIST_WORKER', 'main')
    with open(f'/tmp/tl/{worker}.txt', 'a') as fh:
        fh.write(f'{time.time():.1f} {report.when} {report.duration:.1f} {report.nodeid}\n')
