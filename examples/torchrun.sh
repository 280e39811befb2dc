#!/usr/bin/env bash
# Run the generate job under torchrun: one rank per GPU on each node.
#
# Each rank reads RANK, WORLD_SIZE and LOCAL_RANK, binds GPU LOCAL_RANK, makes its share
# of the prompts and appends to OUT/manifest-rank<RANK>.jsonl. Run the same command again
# with --resume to finish a job that was stopped or killed.
#
#   one node:   examples/torchrun.sh prompts.txt /shared/runs/a
#   two nodes:  NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 examples/torchrun.sh ...   (on node0)
#               NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 examples/torchrun.sh ...   (on node1)
#   CPU only:   NPROC_PER_NODE=2 examples/torchrun.sh prompts.txt runs/a
set -euo pipefail

PROMPTS=${1:?usage: torchrun.sh PROMPTS OUT [safeinfer generate options...]}
OUT=${2:?usage: torchrun.sh PROMPTS OUT [safeinfer generate options...]}
shift 2

NPROC_PER_NODE=${NPROC_PER_NODE:-gpu}   # "gpu": one rank per visible GPU
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

# The job needs no process group, so the store that torchrun's agents start on
# MASTER_ADDR:MASTER_PORT is used only to start the ranks together.
exec torchrun \
    --nnodes "$NNODES" \
    --node-rank "$NODE_RANK" \
    --nproc-per-node "$NPROC_PER_NODE" \
    --master-addr "$MASTER_ADDR" \
    --master-port "$MASTER_PORT" \
    -m safeinfer generate "$PROMPTS" --out "$OUT" "$@"
