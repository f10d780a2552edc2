#!/bin/bash
# What a training spends outside its budget (startup, compile from a warm cache, evaluation), alone
# and with one training per GPU starting at once, as a population round does: with inductor's
# default compile-worker pool (started at the first compile, min(32, cores) processes each) and
# with each of SETTINGS (comma-separated parts: NAME=VALUE added to every training's environment,
# `population` to start from the environment a population worker builds; default: TORCH_WARM_POOL=0,
# the pool started only if a kernel has to be compiled), REPS times. With PROFILE=1, then where the
# startup of one training goes (cProfile of engine/train.py's module and main).
#   OUT=/tmp/out MAKE_CORPUS=path/to/make_corpus.py [SETTINGS="default population population,A=1"] [REPS=2] bash bench/gpu/startup.sh
set -u
source bench/gpu/setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | uniq -c; nproc
export PYTHONPATH=.:/tmp/site
G=$(nvidia-smi -L | wc -l)
echo "cold cache, one training:"
AUTORESEARCH_TIME_BUDGET=2 python3 engine/train.py 2>&1 | grep -E "^(startup|compile|eval)_seconds"
for rep in $(seq ${REPS:-2}); do
  for setting in ${SETTINGS:-default TORCH_WARM_POOL=0}; do
    envarg=()
    IFS=, read -ra parts <<< "$setting"
    for part in "${parts[@]}"; do
      case "$part" in default) ;; population) envarg+=(--population-env) ;; *) envarg+=(--env "$part") ;; esac
    done
    python3 bench/concurrent_start.py --gpus 1 --budget 2 "${envarg[@]}" --label "$setting alone" --json $OUT/startup.jsonl | sed -n '1,2p;$p'
    if [ "$G" -gt 1 ]; then
      python3 bench/concurrent_start.py --gpus $G --budget 2 "${envarg[@]}" --label "$setting x$G" --json $OUT/startup.jsonl | sed -n '1,2p;$p'
    fi
  done
done
[ "${PROFILE:-0}" = 1 ] || exit 0
AUTORESEARCH_TIME_BUDGET=2 timeout 180 python3 -m cProfile -o $OUT/startup.prof engine/train.py > /dev/null 2>&1
python3 - "$OUT/startup.prof" <<'EOF'
import pstats, sys
stats = pstats.Stats(sys.argv[1])
stats.sort_stats("cumulative").print_callees(r"train\.py:\d+\((main|<module>)\)")
EOF
