# results/README's two GPU calls, at toy size on the CPU (--smoke --device cpu appended; the stand-in
# tests/fake_airbench/airbench94.py for the published scripts), then a
# resume from the pack unpacked as it will be committed (results/<machine folder>/reproduce/).
set -x
G=$(python3 -c "import reproduce; print(reproduce.machine_folder(reproduce.machine('cpu')['device']))")
rm -rf /tmp/sim && mkdir -p /tmp/sim/OUT1 /tmp/sim/OUT2 /tmp/sim/results/$G
export PYTHONUNBUFFERED=1
timeout 240 python3 reproduce.py --out /tmp/sim/reproduce --copy-pack-to /tmp/sim/OUT1 --budget-min 3 --stage bench --smoke --device cpu; echo "call 1 rc=$?"; ls /tmp/sim/OUT1
timeout 540 python3 reproduce.py --data-dir data --out /tmp/sim/reproduce --copy-pack-to /tmp/sim/OUT2 --budget-min 8 --smoke --device cpu --airbench tests/fake_airbench/airbench94.py; echo "call 2 rc=$?"; ls -la /tmp/sim/OUT2
tar xzf /tmp/sim/OUT2/reproduce.tgz -C /tmp/sim/results/$G && du -sh /tmp/sim/results/$G/reproduce
rm -rf /tmp/sim/reproduce && cp -r /tmp/sim/results/$G/reproduce /tmp/sim/
python3 reproduce.py --data-dir data --out /tmp/sim/reproduce --smoke --device cpu; echo "resume rc=$?"
# The next GPU session, after a commit that changed code train.py does not import (a test file and
# bench_blf.py): its two calls from the committed records. bench and the tests run again, bench into a
# second folder beside the first; the training stages reuse every record (no seed runs again).
git worktree add -q --detach /tmp/sim/tree HEAD && ln -s "$PWD/data" /tmp/sim/tree/data
echo '_SIMULATED_CHANGE = 1' >> /tmp/sim/tree/tests/test_blf.py; echo '_SIMULATED_CHANGE = 1' >> /tmp/sim/tree/bench_blf.py
rm -rf /tmp/sim/reproduce /tmp/sim/OUT1/* /tmp/sim/OUT2/* && cp -r /tmp/sim/results/$G/reproduce /tmp/sim/
(cd /tmp/sim/tree && timeout 240 python3 reproduce.py --out /tmp/sim/reproduce --copy-pack-to /tmp/sim/OUT1 --budget-min 3 --stage bench --smoke --device cpu); echo "next call 1 rc=$?"
(cd /tmp/sim/tree && timeout 540 python3 reproduce.py --data-dir data --out /tmp/sim/reproduce --copy-pack-to /tmp/sim/OUT2 --budget-min 8 --smoke --device cpu --airbench tests/fake_airbench/airbench94.py); echo "next call 2 rc=$?"
ls /tmp/sim/reproduce/bench/bench; grep -h '^# resumed' /tmp/sim/reproduce/*/log.txt | wc -l; ls /tmp/sim/reproduce/*/*/set-aside 2>/dev/null | wc -l
git worktree remove --force /tmp/sim/tree
# The next session lent another machine (here: machine.json says an H200 made the records): it stops
# at once with one line, rc 2, and writes nothing, rather than pool two machines' times.
python3 -c "import json; p='/tmp/sim/reproduce/machine.json'; m=json.load(open(p)); json.dump({**m, 'device': 'NVIDIA H200'}, open(p, 'w'))"
timeout 240 python3 reproduce.py --out /tmp/sim/reproduce --copy-pack-to /tmp/sim/OUT1 --budget-min 3 --stage bench --smoke --device cpu; echo "other machine rc=$?"
