# Sourced by the other bench/gpu scripts, from the repository root, on a bare GPU machine: installs
# the wheels its image lacks (.whl, from ../shared/device/pack_wheels.sh), sets the cache and the
# offline settings, builds the offline corpus (MAKE_CORPUS, default .devbench/make_corpus.py) and
# trains the tokenizer on it. Needs OUT. Leaves PYTHONPATH=/tmp/site and AUTORESEARCH_CACHE=/tmp/arcache.
set -u
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export AUTORESEARCH_CACHE=/tmp/arcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
setup_t0=$(date +%s)
python3 ${MAKE_CORPUS:-.devbench/make_corpus.py} $AUTORESEARCH_CACHE/data | tail -1
python3 -m prepare --num-shards $(ls $AUTORESEARCH_CACHE/data | grep -vc 06542) 2>&1 | grep -v "it/s\|doc/s\|file/s" | tail -1
echo "prepare_seconds: $(( $(date +%s) - setup_t0 ))"
