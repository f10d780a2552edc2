#!/bin/bash
# Does a training find the compile cache that an earlier run warmed? One plain training warms it;
# then one training per GPU starts in this shell's environment, then in a population worker's, then
# a short population round runs. Inductor's cache logging (TORCH_LOGS, which trainings inherit)
# goes into each log, and each phase's logs are counted: FX-graph and AOTAutograd cache hits and
# misses, compile and eval seconds. The logs come back in $OUT/compile_cache_logs.tgz; on a miss
# they hold each graph's cache-key components, and bench/cache_key_diff.py prints which differ
# from the warm-up's.
#   OUT=/tmp/out MAKE_CORPUS=path/to/make_corpus.py bash bench/gpu/compile_cache.sh
set -u
source bench/gpu/setup.sh
export TORCH_LOGS="+torch._inductor.codecache,+torch._functorch._aot_autograd.autograd_cache"
LOGS=/tmp/compile_cache_logs && rm -rf $LOGS && mkdir -p $LOGS
G=$(nvidia-smi -L | wc -l)

counts() {  # one line per log: cache hits and misses, compile and eval seconds
  for f in "$@"; do
    printf '%-28s fx hit %2d miss %2d | aot hit %2d miss %2d | %s\n' "$(basename $(dirname $f))/$(basename $f)" \
      "$(grep -ac 'fx graph cache hit' $f)" "$(grep -ac 'fx graph cache miss' $f)" \
      "$(grep -ac 'AOTAutograd cache hit' $f)" "$(grep -ac 'AOTAutograd cache miss' $f)" \
      "$(grep -aE '^(compile|eval)_seconds' $f | tr -s ' ' | tr '\n' ' ')"
  done
}
phase() {  # name, concurrent_start arguments: run it, keep its logs under $LOGS/name
  local name=$1; shift
  PYTHONPATH=.:/tmp/site python3 bench/concurrent_start.py --budget 3 --json $OUT/compile_cache.jsonl --label "$name" "$@" > $LOGS/$name.out
  mkdir -p $LOGS/$name && cp $(python3 -c "import json,sys; print(' '.join(r['log'] for r in json.loads(open(sys.argv[1]).readlines()[-1])['runs']))" $OUT/compile_cache.jsonl) $LOGS/$name/
  echo "== $name: $(head -1 $LOGS/$name.out)"; counts $LOGS/$name/*.log
}
phase warm-up --gpus 1
phase plain --gpus $G
phase population-env --gpus $G --population-env

rm -rf /tmp/proj && mkdir /tmp/proj && cp -r prepare engine population bench program.md pyproject.toml app.py /tmp/proj/
(cd /tmp/proj && git init -q && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm seed) || exit 1
(cd /tmp/proj && PYTHONPATH=/tmp/proj:/tmp/site timeout 300 python3 -m population --workers $G --budget 3 \
   --max-experiments $G --run cc > $LOGS/round.out 2>&1)
echo "== population round (exit $?): $(grep -c . $LOGS/round.out) lines of driver output"
mkdir -p $LOGS/round && for d in /tmp/proj/runs/cc/experiments/*/; do cp $d/run.log $LOGS/round/exp$(basename $d).log; done
counts $LOGS/round/*.log
for log in $LOGS/population-env/run0.log $LOGS/round/exp0.log; do
  echo "== cache key: warm-up against $(basename $(dirname $log))"; python3 bench/cache_key_diff.py $LOGS/warm-up/run0.log $log
done
tar czf $OUT/compile_cache_logs.tgz -C /tmp compile_cache_logs
