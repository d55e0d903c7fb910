r"""Throughput of the train steps: `python -m mxq_jax.bench --config=configs/synthetic.py`.

Prints one JSON object: for each stage, the compile time, steady-state steps/s and examples/s
of the jitted, sharded train step on random batches of the configured shapes (the input
pipeline is measured separately), its model FLOPs from XLA's cost analysis, the achieved FLOP/s
as a fraction of this machine's dense matmul FLOP/s measured in the same run, and peak memory.
"""

import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from mxq_jax import config_lib, sharding, stage1, train_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps after the warm-up step.")
flags.mark_flags_as_required(["config"])


def matmul_flops_per_sec(dtype: str, repeats: int = 10) -> float:
  """Dense matmul FLOP/s of the default device in the model's compute dtype: the yardstick."""
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  out.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - start)


def _flops(analysis) -> float | None:
  if isinstance(analysis, (list, tuple)):  # older jax returns one dict per device program.
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and analysis.get("flops") else None


def cost_flops(step_fn, *args) -> float | None:
  """FLOPs of one step from XLA's cost analysis of the unoptimized HLO: backend-independent.

  Where the backend offers no such analysis (GPU), the same program is lowered for the CPU,
  whose analysis counts every convolution (a GPU compilation's cuDNN calls would count zero).
  """
  flops = _flops(step_fn.lower(*args).cost_analysis())
  if flops is None:
    try:
      flops = _flops(step_fn.trace(*args).lower(lowering_platforms=("cpu",)).cost_analysis())
    except Exception as error:  # an unusual backend: report no FLOPs rather than fail.
      print(f"bench: no FLOP count ({type(error).__name__}: {error})", file=sys.stderr)
  if flops is None:
    print("bench: XLA gave no FLOP count on this backend; run the bench on CPU for the "
          "(backend-independent) step FLOPs", file=sys.stderr)
  return flops


def peak_memory_bytes() -> dict[str, int]:
  stats = jax.devices()[0].memory_stats() or {}
  peak = {"host_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  if "peak_bytes_in_use" in stats:
    peak["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  return peak


def bench_train_step(stage: train_lib.Stage, batch: dict, mesh, steps: int,
                     peak_flops: float) -> dict:
  _, shardings = train_lib.abstract_state(stage, mesh)
  state = train_lib.init_state(stage, 0, shardings)
  step_fn = train_lib.make_train_step(stage, mesh, shardings)
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  key = jax.random.key(0)

  start = time.perf_counter()
  compiled = step_fn.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - start
  flops = cost_flops(step_fn, state, batch, key)

  state, metrics = compiled(state, batch, key)  # warm-up (first-run allocations).
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  batch_size = stage.optim.batch_size
  result = {
      "compile_s": round(compile_s, 2),
      "steps_per_s": round(1.0 / seconds, 3),
      "examples_per_s": round(batch_size / seconds, 1),
      "batch_size": batch_size,
      "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
  }
  if flops:
    result["step_gflops"] = round(flops / 1e9, 2)
    result["achieved_flops_fraction_of_matmul"] = round(flops / seconds / peak_flops, 4)
  return result


def main(argv):
  del argv
  config = FLAGS.config
  config_lib.validate(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  peak_flops = matmul_flops_per_sec(config.vqvae.dtype)
  report = {
      "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "compute_dtype": config.vqvae.dtype,
      "matmul_gflops_per_s": round(peak_flops / 1e9, 1),
      "stage1_train_step": bench_train_step(
          stage1.make_stage(config),
          stage1.random_batch(config, config.vqvae.optim.batch_size), mesh, FLAGS.steps,
          peak_flops),
  }
  report["peak_memory"] = peak_memory_bytes()
  json.dump(report, sys.stdout, indent=2)
  print()


if __name__ == "__main__":
  app.run(main)
