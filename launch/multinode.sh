#!/bin/bash
# Multi-node GPU training without a scheduler: run this on every node, one
# process per node with all its GPUs, naming the coordinator (process 0's
# host and a free port), the number of processes and this one's id.
#
#   COORDINATOR=10.0.0.1:8476 NUM_PROCESSES=2 PROCESS_ID=0 \
#     launch/multinode.sh --config=configs/bert_base.py:phase=1 \
#     --workdir=/shared/runs/base1
#
# Arguments are passed through "$@" (quoted), never re-parsed by a shell.
set -euo pipefail
: "${COORDINATOR:?set COORDINATOR=HOST:PORT of process 0}"
: "${NUM_PROCESSES:?set NUM_PROCESSES to the number of nodes}"
: "${PROCESS_ID:?set PROCESS_ID to the index of this node, 0 to NUM_PROCESSES-1}"
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m bertjax.train \
  --coordinator_address="$COORDINATOR" --num_processes="$NUM_PROCESSES" \
  --process_id="$PROCESS_ID" "$@"
