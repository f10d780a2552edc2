#!/bin/bash
# One GPU: build the offline corpus, train the tokenizer, run engine/train.py for a short budget
# (warms the compile cache, as the 2nd..Nth experiment of a population finds it), then the full one.
# Usage on the GPU machine, from the repository root (wheels from ../shared/device/pack_wheels.sh in .whl):
#   OUT=/tmp/out MAKE_CORPUS=path/to/make_corpus.py bash bench/gpu/engine.sh
set -u
source bench/gpu/setup.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
export PYTHONPATH=.:/tmp/site
AUTORESEARCH_TIME_BUDGET=${SHORT:-15} python3 engine/train.py > $OUT/short.log 2>&1; echo "short rc=$?"
grep -A30 "^---$" $OUT/short.log || tail -30 $OUT/short.log
AUTORESEARCH_TIME_BUDGET=${BUDGET:-300} python3 engine/train.py > $OUT/full.log 2>&1; echo "full rc=$?"
head -8 $OUT/full.log; grep -A30 "^---$" $OUT/full.log || tail -30 $OUT/full.log
