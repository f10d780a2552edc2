#!/bin/bash
# End to end on the GPUs of one machine: offline corpus -> python -m prepare -> python -m population
# --workers N with the mutator and a short budget -> bench/population_report.py -> the store opened by
# the app's own loader; then the one-GPU fallback (4 workers sharing GPU 0).
# Usage on the GPU machine, from the repository root (wheels from ../shared/device/pack_wheels.sh in .whl):
#   OUT=/tmp/out MAKE_CORPUS=path/to/make_corpus.py bash bench/gpu/population.sh
set -u
t0=$(date +%s)
source bench/gpu/setup.sh
if ! command -v git >/dev/null; then   # a carried Debian git, for images without one
  for f in .devbench/debs/*.deb; do dpkg -x "$f" /tmp/gitroot; done
  export PATH=/tmp/gitroot/usr/bin:$PATH GIT_EXEC_PATH=/tmp/gitroot/usr/lib/git-core
  export LD_LIBRARY_PATH=/tmp/gitroot/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
git --version || exit 1
nvidia-smi --query-gpu=index,name --format=csv,noheader; nproc

# The run repository: the project as a git repository of its own (its HEAD is the seed).
rm -rf /tmp/proj && mkdir /tmp/proj && cp -r prepare engine population bench program.md pyproject.toml app.py /tmp/proj/
cd /tmp/proj && git init -q && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm seed || exit 1
export PYTHONPATH=/tmp/proj:/tmp/site

G=$(nvidia-smi -L | wc -l)
timeout ${T_MULTI:-300} python3 -m population --workers $G --budget ${BUDGET:-40} --max-experiments ${N_MULTI:-8} --run multi 2>&1 | tee $OUT/multi.log | grep -v "^\s*$"
python3 bench/population_report.py runs/multi --json $OUT/multi.json
python3 -c "
from population.lineage_view import load_run
run = load_run('runs/multi'); f = run.frame
print('app loader:', len(f), 'rows from', run.source, '| metric', run.metric, '| notes', run.notes)
print(f[['id', 'member', 'parent_id', 'status', run.metric, 'description']].to_string(index=False))
" 2>&1 | tail -2

CUDA_VISIBLE_DEVICES=0 AUTORESEARCH_EVAL_TOKENS=${FALLBACK_EVAL_TOKENS:-2097152} timeout ${T_ONE:-200} \
  python3 -m population --workers 4 --budget ${BUDGET_ONE:-10} --max-experiments ${N_ONE:-5} --noise-runs 1 --run one 2>&1 | tee $OUT/one.log | grep -v "^\s*$"
python3 bench/population_report.py runs/one --json $OUT/one.json
tar czf $OUT/runs.tgz runs/multi/events.jsonl runs/multi/run.json runs/multi/results.tsv runs/multi/lineage.parquet \
  runs/one/events.jsonl runs/one/run.json runs/one/results.tsv 2>/dev/null
echo "total_seconds: $(( $(date +%s) - t0 ))"
