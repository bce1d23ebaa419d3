#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one run (about 6 minutes on one H100
# or H200): BERT-large in bf16 at seq 128 and 512, unpacked and packed, with
# cuDNN flash attention (no attention dropout; the fused kernels have none),
# plus BERT-base at seq 128 beside it. Needs only jax, flax and optax: run it
# from a checkout on a bare GPU image,
#
#   bash benchmarks/gpu.sh [OUT_DIR]
#
# Each run's log goes to OUT_DIR (default ./gpu_benchmarks) and its JSON line
# to OUT_DIR/results.jsonl.
set -euo pipefail
out="${1:-gpu_benchmarks}"
mkdir -p -- "$out"
cd -- "$(dirname -- "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c 'import jax; print(jax.__version__, jax.devices())' | tee "$out/devices.txt"

run() {
  local name="$1"
  shift
  python benchmarks/train_step.py --peer=false --dtype=bfloat16 \
    --attention=cudnn --attention_dropout=0 --rounds=1 --warmup=2 --steps=10 \
    "$@" 2>&1 | tee "$out/$name.log"
  tail -n 1 "$out/$name.log" >> "$out/results.jsonl"
}

run large_128 --size=large --seq_len=128 --batch_size=256
run large_128_packed --size=large --seq_len=128 --batch_size=256 --packed
run large_512 --size=large --seq_len=512 --batch_size=64 --predictions=80
run large_512_packed --size=large --seq_len=512 --batch_size=64 \
  --predictions=80 --packed
run base_128 --size=base --seq_len=128 --batch_size=256
