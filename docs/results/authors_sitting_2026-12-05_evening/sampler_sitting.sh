#!/bin/bash
# Interleaved, three rounds: the authors' batch-1 sampler (1 thread, their best), mxq_jax's batch-256
# sampler at this checkout (B_new) and at a worktree of the commit before (B_old), at
# configs/synthetic.py:paper. From the repository root:
#   git worktree add /tmp/old e87cb82~1
#   ANCHOR_ROOT=DIR OLD=/tmp/old docs/results/authors_sitting_2026-12-05_evening/sampler_sitting.sh
# (ANCHOR_ROOT as for sitting.sh: the authors' code and its venv, built as the harness README says.)
R=${ANCHOR_ROOT:?set ANCHOR_ROOT}; OLD=${OLD:?a worktree of the commit before}
H=${ANCHOR_HARNESS:-$PWD/../shared/anchors/authors_pytorch}
mkdir -p $R/results; out=$R/results/sampler_sitting_$(date +%m%d_%H%M).jsonl
A="timeout 900 $R/tvenv/bin/python $H/authors_bench.py --authors_dir=$R/authors --batch=32 --steps=5 --warmup=1 --part=sample --threads=1 --samples=5"
B="timeout 900 $PWD/.venv/bin/python -m mxq_jax.bench --config=configs/synthetic.py:paper --parts=sampler --sampler_batches=256 --min_seconds=20"
run() { local tag=$1 dir=$2; shift 2; echo "[$(date +%T)] $tag" >&2
  local res; res=$(cd $dir && "$@" 2>/dev/null | python3 -c "import sys,json; t=sys.stdin.read(); i=t.find('{'); print(json.dumps(json.loads(t[i:]) if i>=0 else {'error':'no json'}))")
  echo "{\"tag\": \"$tag\", \"round\": $ROUND, \"result\": $res}" >> $out; }
for ROUND in 1 2 3; do
  run A_sample_t1 $PWD $A
  run B_new $PWD $B
  run B_old $OLD $B
done
echo "[$(date +%T)] done $out" >&2
