# results/README's two GPU calls, at toy size on the CPU (--smoke --device cpu appended), then a
# resume from the pack unpacked as it will be committed (results/nvidia-h200/reproduce/).
set -x
rm -rf /tmp/sim && mkdir -p /tmp/sim/OUT1 /tmp/sim/OUT2 /tmp/sim/results/nvidia-h200
export PYTHONUNBUFFERED=1
timeout 240 python3 reproduce.py --out /tmp/sim/reproduce --copy-pack-to /tmp/sim/OUT1 --budget-min 3 --stage bench --smoke --device cpu; echo "call 1 rc=$?"; ls /tmp/sim/OUT1
timeout 540 python3 reproduce.py --data-dir data --out /tmp/sim/reproduce --copy-pack-to /tmp/sim/OUT2 --budget-min 8 --smoke --device cpu; echo "call 2 rc=$?"; ls -la /tmp/sim/OUT2
tar xzf /tmp/sim/OUT2/reproduce.tgz -C /tmp/sim/results/nvidia-h200 && du -sh /tmp/sim/results/nvidia-h200/reproduce
rm -rf /tmp/sim/reproduce && cp -r /tmp/sim/results/nvidia-h200/reproduce /tmp/sim/
python3 reproduce.py --data-dir data --out /tmp/sim/reproduce --smoke --device cpu; echo "resume rc=$?"
