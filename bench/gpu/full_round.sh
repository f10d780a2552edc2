#!/bin/bash
# One full-budget round on the GPUs of one machine: the compile cache warmed by a 3 s run (as the
# 2nd..Nth round of a population finds it), then python -m population with one experiment per GPU at
# the real 300 s budget, then bench/population_report.py.
#   OUT=/tmp/out MAKE_CORPUS=path/to/make_corpus.py bash bench/gpu/full_round.sh
set -u
t0=$(date +%s)
source bench/gpu/setup.sh
git --version || exit 1
# warm-up as a plain run from this shell: the trainings must find what it cached (their environment
# differs; bench/gpu/compile_cache.sh checks the cache hits)
PYTHONPATH=.:/tmp/site python3 bench/concurrent_start.py --gpus 1 --budget 3 --label warm-up | tail -3
echo "setup_seconds: $(( $(date +%s) - t0 ))"
rm -rf /tmp/proj && mkdir /tmp/proj && cp -r prepare engine population bench program.md pyproject.toml app.py /tmp/proj/
cd /tmp/proj && git init -q && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm seed || exit 1
export PYTHONPATH=/tmp/proj:/tmp/site
G=$(nvidia-smi -L | wc -l)
(while sleep 5; do echo "$(date +%s) $(cut -d' ' -f1-3 /proc/loadavg)"; done) > $OUT/loadavg.log &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT   # or it holds the output pipe open: `| tee` would never end
timeout ${T_ROUND:-420} python3 -m population --workers $G --budget ${BUDGET:-300} --max-experiments $G --run full 2>&1 | tee $OUT/full.log | grep -v "^\s*$"
python3 bench/population_report.py runs/full --json $OUT/full.json
tar czf $OUT/full_runs.tgz runs/full/events.jsonl runs/full/run.json runs/full/results.tsv runs/full/experiments 2>/dev/null
echo "total_seconds: $(( $(date +%s) - t0 ))"
