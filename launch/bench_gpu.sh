#!/usr/bin/env bash
# The GPU measurements issue 13 asks for, in one command on one GPU (about 8 minutes on an H200):
# the train steps at the reference sizes in fp32 and in bf16 compute, with steps/s and MFU
# against the chip's bf16 peak (`python -m mxq_jax.bench`, random batches, no data needed).
#
#   launch/bench_gpu.sh [OUTDIR]     (default: bench_gpu_out/; one JSON report per run there)
#
# Needs jax with its GPU plugin, flax, optax, orbax-checkpoint, ml-collections, sentencepiece,
# etils: the bench imports neither TensorFlow nor TFDS, so a JAX-only GPU image will do.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench_gpu_out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.csv"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

BF16=(--config.vqvae.dtype=bfloat16 --config.prior.dtype=bfloat16)
bench() {  # bench NAME SECONDS ARGS...: one report, NAME.json; its log goes to bench.log.
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$out/bench.log"
  timeout "$limit" python3 -m mxq_jax.bench --parts=train --steps=30 "$@" \
      > "$out/$name.json" 2>> "$out/bench.log"
  echo "== $name: exit $?" | tee -a "$out/bench.log"
  python3 - "$out/$name.json" <<'EOF'
import json, sys
try:
  report = json.load(open(sys.argv[1]))
except ValueError:
  sys.exit(print("  (no report)"))
for stage in ("stage1", "stage2"):
  if (step := report.get(f"{stage}_train_step")):
    print(f"  {stage}: {step['steps_per_s']} steps/s, {step['examples_per_s']} ex/s, "
          f"compile {step['compile_s']} s, {step.get('step_gflops')} GFLOP/step, "
          f"MFU {step.get('mfu_of_chip_bf16_peak')}")
print(f"  matmul {report['matmul_gflops_per_s']} GFLOP/s, peak memory {report['peak_memory']}")
EOF
}
# The paper's sizes (64 px), batch 384; bf16 first: its ratio to fp32 is the question.
bench paper_bf16 170 --config=configs/synthetic.py:paper "${BF16[@]}"
bench paper_fp32 150 --config=configs/synthetic.py:paper
# CUB at its paper size (128 px, 276 codes), batch 128: stage 1, the step MFU is asked of.
bench cub_bf16 130 --config=configs/cub.py --stages=stage1 "${BF16[@]}"
bench cub_fp32 110 --config=configs/cub.py --stages=stage1
