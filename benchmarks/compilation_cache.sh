#!/usr/bin/env bash
# A short `bertjax.train` run's wall time with JAX's compilation cache off
# and warm, alternated over two rounds, after one run that fills the cache.
#
#   benchmarks/compilation_cache.sh configs/bert_tiny.py 10
#   benchmarks/compilation_cache.sh configs/bert_base.py 2 \
#     --config.batch_size=8 --config.eval_steps=1
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG STEPS [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
config=$1 steps=$2
shift 2
extra=("$@")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

run() {  # run CACHE_DIR: one run in a fresh workdir; prints its seconds
  rm -rf "$scratch/run"
  local start
  start=$(date +%s.%N)
  python -m bertjax.train --config="$config" --workdir="$scratch/run" \
    --config.num_train_steps="$steps" --compilation_cache_dir="$1" \
    "${extra[@]}" >"$scratch/log" 2>&1 || {
    tail -3 "$scratch/log" >&2
    exit 1
  }
  python -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" \
    "$(date +%s.%N)" "$start"
}

run "$scratch/cache" >/dev/null
for round in 1 2; do
  echo "round $round: cache off $(run '') s, warm $(run "$scratch/cache") s"
done
