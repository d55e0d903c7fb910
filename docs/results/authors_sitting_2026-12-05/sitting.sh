#!/bin/bash
# One sitting, interleaved: A = the authors' PyTorch (authors_bench.py of the shared harness, rebuilt
# as its README says, in $ANCHOR_ROOT), B = mxq_jax (python -m mxq_jax.bench, this checkout's .venv),
# at configs/synthetic.py:paper, batch 32. Usage: ANCHOR_ROOT=DIR sitting.sh 1 2   (round numbers)
# One JSON line per run in $ANCHOR_ROOT/results/sitting_MMDD_HHMM.jsonl; aggregate.py tabulates it.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
H=${ANCHOR_HARNESS:-$PWD/../shared/anchors/authors_pytorch}; R=${ANCHOR_ROOT:?set ANCHOR_ROOT (README of the harness)}
A="timeout 900 $R/tvenv/bin/python $H/authors_bench.py --authors_dir=$R/authors --batch=32 --steps=5 --warmup=1"
B="timeout 900 .venv/bin/python -m mxq_jax.bench --config=configs/synthetic.py:paper --steps=5 --config.vqvae.optim.batch_size=32 --config.prior.optim.batch_size=32"
mkdir -p $R/results; out=$R/results/sitting_$(date +%m%d_%H%M).jsonl
run() { local tag=$1; shift; echo "[$(date +%T)] $tag" >&2; local load=$(cut -d' ' -f1 /proc/loadavg)
  local res; res=$( "$@" 2>>$R/results/stderr.txt | python3 -c "import sys,json; t=sys.stdin.read(); i=t.find('{'); d=json.loads(t[i:]) if i>=0 else {'error':'no json'}; print(json.dumps(d))" )
  echo "{\"tag\": \"$tag\", \"round\": $ROUND, \"load1\": $load, \"result\": $res}" >> $out; }
for ROUND in "$@"; do
  run A_matmul $A --part=matmul
  run A_stage1_t2 $A --part=stage1
  run B_stage1_v96 $B --parts=train --stages=stage1
  run A_stage1_t1 $A --part=stage1 --threads=1
  run B_stage1_v30522 $B --parts=train --stages=stage1 --config.data.vocab_size=30522
  run A_prior_t2 $A --part=prior
  run B_stage2 $B --parts=train --stages=stage2
  run A_prior_t1 $A --part=prior --threads=1
  run A_sample_t1 $A --part=sample --threads=1 --samples=5
  run B_sampler $B --parts=sampler --sampler_batches=1,256 --min_seconds=0
  run A_sample_t2 $A --part=sample --samples=5
done
echo "[$(date +%T)] done $out" >&2
