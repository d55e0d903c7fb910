r"""Throughput of training and generation, the library of `python -m mxq_jax.bench`.

`run_benchmarks` returns one report with, on random models of the configured sizes:
- for each stage's jitted, sharded train step, on random batches of the configured shapes (the
  input pipeline is measured separately): compile time, steady-state steps/s and examples/s;
- for the sampler (codes, then pixels and tokens, one compiled program), at each
  --sampler_batches size: compile time and pairs/s; and the same for an uncached baseline
  (batch 1, no KV cache, a full forward over the prefix for every new code), with the
  ratio of the largest cached batch's pairs/s to the baseline's;
- each program's model FLOPs from XLA's cost analysis and the achieved FLOP/s as a fraction of
  this machine's dense matmul FLOP/s, measured in the same run; peak memory;
- with --parts=modules: each stage's train step, then every submodule's forward and
  forward+backward time and share of the step (`mxq_jax/module_bench.py`);
- with --parts=input (and --workdir for the tokenizer): the input pipeline on the configured
  dataset, reading and preparing it if needed (that time too), then stage 1's training
  stream in examples/s, to compare with the train step's examples/s;
- with --parts=precision (no timing): the stage-1 and prior train steps compiled in float32
  and in bfloat16, side by side: FLOPs, bytes accessed, converts, convolution forms, dots,
  scatters, and the bf16 program's float32 ops by reason (`mxq_jax/hlo_report.py`), for this
  backend and, with --topology, for a TPU slice's compile-only devices.
"""

import resource
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mxq_jax import config_lib, module_bench, sharding
from mxq_jax.generation import sampler
from mxq_jax.training import stage1, stage2, trainer as trainer_lib

PARTS = ("train", "modules", "sampler", "input", "precision")


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


# Dense bf16 peak FLOP/s per chip, from the vendors' datasheets (H100/H200 SXM: 989 TFLOP/s;
# TPU v4 275, v5e 197, v5p 459, v6e 918): the denominator of MFU, whatever the compute dtype.
CHIP_BF16_PEAK_FLOPS = {
    "NVIDIA H200": 989e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12,
}


def chip_peak_flops() -> float | None:
  """The bf16 datasheet peak of this job's chips together (None: an unlisted device)."""
  peak = CHIP_BF16_PEAK_FLOPS.get(jax.devices()[0].device_kind)
  return peak * jax.device_count() if peak else None


def flops_of(analysis) -> float | None:
  if isinstance(analysis, (list, tuple)):  # older jax returns one dict per device program.
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and analysis.get("flops") else None


def cpu_flops(build: Callable, mesh_config, *args) -> float | None:
  """FLOPs of `build(mesh)(*args)` from XLA's cost analysis of the unoptimized program, lowered
  (not compiled) for one CPU device from the arguments' shapes.

  Backend-independent and the same on every machine: the program before partitioning is the
  global one, a GPU's analysis would count no cuDNN convolution, and JAX's GPU backend gives
  none at all.
  """
  try:
    mesh = sharding.make_mesh(mesh_config, jax.devices("cpu")[:1])
    shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x, args)
    return flops_of(build(mesh).lower(*shapes).cost_analysis())
  except Exception as error:  # no CPU backend (JAX_PLATFORMS): report no FLOPs rather than fail.
    print(f"bench: no FLOP count ({type(error).__name__}: {error})", file=sys.stderr)
    return None


def train_step_flops(task: trainer_lib.Task, mesh_config, state, batch, key,
                     learning_rate) -> float | None:
  """`cpu_flops` of `task`'s train step (pass the unrolled task: XLA counts a scanned loop's
  body once)."""
  return cpu_flops(lambda mesh: trainer_lib.make_train_step(
      task, mesh, trainer_lib.abstract_state(task, mesh)[1]), mesh_config, state, batch, key,
      learning_rate)


def peak_memory_bytes() -> dict[str, int]:
  stats = jax.devices()[0].memory_stats() or {}
  peak = {"host_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  if "peak_bytes_in_use" in stats:
    peak["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  return peak


def bench_train_step(task: trainer_lib.Task, batch: dict, mesh, steps: int,
                     peak_flops: float, unrolled_task: trainer_lib.Task,
                     mesh_config: ml_collections.ConfigDict
                     ) -> tuple[dict, trainer_lib.TrainState]:
  """(compile time, steps/s and FLOP rates of `task`'s train step; the state it ends with).
  XLA counts a scanned loop's body once, so the FLOPs come from `unrolled_task` (the same
  model, scan_layers off), lowered but not compiled."""
  _, shardings = trainer_lib.abstract_state(task, mesh)
  state = trainer_lib.init_state(task, 0, shardings)
  step_fn = trainer_lib.make_train_step(task, mesh, shardings)
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  key = jax.random.key(0)
  # One rate for every timed step: its value does not change the work of a step.
  learning_rate = trainer_lib.make_learning_rate(task, mesh)(state.step)

  start = time.perf_counter()
  compiled = step_fn.lower(state, batch, key, learning_rate).compile()
  compile_s = time.perf_counter() - start
  flops = train_step_flops(unrolled_task, mesh_config, state, batch, key, learning_rate)

  state, metrics = compiled(state, batch, key, learning_rate)  # warm-up (first-run allocations).
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, key, learning_rate)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  batch_size = task.optim.batch_size
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
    if chip_peak_flops():
      result["mfu_of_chip_bf16_peak"] = round(flops / seconds / chip_peak_flops(), 4)
  return result, state


def random_codes_batch(config, batch_size: int) -> dict:
  """Uniform random joint codes of the configured shape, as `stage1.random_batch` (NumPy)."""
  shape = (batch_size, config_lib.num_joint_codes(config))
  vocabulary = config_lib.code_vocabulary_size(config)
  return {"codes": np.random.default_rng(0).integers(0, vocabulary, shape, dtype=np.int32)}


def _time_calls(fn, min_seconds: float) -> float:
  """Seconds per call of fn() (blocking), over at least two calls and min_seconds."""
  calls, start = 0, time.perf_counter()
  while calls < 2 or time.perf_counter() - start < min_seconds:
    jax.block_until_ready(fn(calls))
    calls += 1
  return (time.perf_counter() - start) / calls


def bench_sampler(config, mesh, variables, batch_size: int, *, cached: bool, top_k: int,
                  peak_flops: float, min_seconds: float) -> dict:
  """Pairs/s of one sampler program (codes + decoding), steady state, new key each call."""
  make = lambda unroll: sampler.make_sampler(config, mesh, batch_size=batch_size, top_k=top_k,
                                              cached=cached, unroll=unroll)
  sample_fn, key = make(False), jax.random.key(0)
  args = (*variables, key, 1.0, 1.0)
  start = time.perf_counter()
  compiled = sample_fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  # XLA counts a loop body once: the FLOPs come from the unrolled program (lowered only).
  flops = cpu_flops(lambda cpu_mesh: sampler.make_sampler(
      config, cpu_mesh, batch_size=batch_size, top_k=top_k, cached=cached, unroll=True),
      config.mesh, *args)
  jax.block_until_ready(compiled(*args))  # warm-up.
  seconds = _time_calls(
      lambda i: compiled(*variables, jax.random.fold_in(key, i), 1.0, 1.0), min_seconds)
  result = {"batch_size": batch_size, "kv_cache": cached, "compile_s": round(compile_s, 2),
            "pairs_per_s": round(batch_size / seconds, 2)}
  if flops:
    result["gflops_per_call"] = round(flops / 1e9, 3)
    result["achieved_flops_fraction_of_matmul"] = round(flops / seconds / peak_flops, 4)
  return result


def bench_samplers(config, mesh, peak_flops: float, batch_sizes: Sequence[int],
                   min_seconds: float) -> dict:
  """The cached sampler at each --sampler_batches size, and the uncached baseline."""
  variables = []
  for task in (stage2.make_task(config, stage1_step=0), stage1.make_task(config)):
    _, shardings = trainer_lib.abstract_state(task, mesh)
    variables.append(sampler.variables_of(trainer_lib.init_state(task, 0, shardings)))
  common = dict(top_k=config.sampling.top_k, peak_flops=peak_flops,
                min_seconds=min_seconds)
  one_device = (sharding.make_mesh(config.mesh, jax.devices()[:1]),
                jax.device_put(variables, jax.devices()[0]))
  # A batch that the devices do not divide (batch 1 on 8 chips) runs on one device.
  on = lambda b: (mesh, variables) if b % jax.device_count() == 0 else one_device
  samplers = [bench_sampler(config, *on(b), b, cached=True, **common) for b in batch_sizes]
  baseline = bench_sampler(config, *one_device, 1, cached=False, **common)
  return {
      "sampler": samplers,
      "sampler_uncached_baseline": baseline,
      "sampler_speedup_vs_baseline": round(samplers[-1]["pairs_per_s"]
                                           / baseline["pairs_per_s"], 1),
  }


def bench_input(config, mesh, workdir: str, num_batches: int) -> dict:
  """Load (building and preparing if needed), then time stage 1's training stream."""
  from mxq_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  splits = pipeline.load_splits(config, workdir)
  load_seconds = time.perf_counter() - start
  batch_size = config.vqvae.optim.batch_size
  batches = pipeline.train_batches(splits.train, batch_size, config.seed, 0,
                                   sharding.batch_sharding(mesh),
                                   **pipeline.train_options(config.data))
  jax.block_until_ready(next(batches))  # tf.data start-up and the first batch.
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(batches)
  jax.block_until_ready(batch)
  seconds = time.perf_counter() - start
  return {"dataset": config.data.name, "image_size": config.data.image_size,
          "train_images": splits.train.num_global, "load_s": round(load_seconds, 1),
          "batch_size": batch_size,
          "train_examples_per_s": round(num_batches * batch_size / seconds, 1)}


def bench_precision(config, mesh, topology: str | None) -> dict:
  """`hlo_report.precision_report` for this backend and, given a topology, a TPU slice."""
  from mxq_jax import aot_lib, hlo_report  # pylint: disable=g-import-not-at-top
  tpu_mesh = None
  if topology:
    tpu = aot_lib.parse_slice(topology)
    devices = aot_lib.compile_only_devices(tpu)
    config_lib.validate(config, len(devices))
    tpu_mesh = sharding.make_mesh(config.mesh, devices=devices)
  return hlo_report.precision_report(config, mesh, where=f"compiled_{jax.default_backend()}",
                                     tpu_mesh=tpu_mesh, tpu_name=f"compiled_tpu_{topology}")


def run_benchmarks(config: ml_collections.ConfigDict, *, parts: Sequence[str], steps: int,
                   sampler_batches: Sequence[int], min_seconds: float,
                   workdir: str | None = None, input_batches: int = 50,
                   module_depth: int = 1, topology: str | None = None,
                   stages: Sequence[str] = ("stage1", "stage2")) -> dict:
  """The report of the module docstring for the `parts` asked (train, modules, sampler,
  input, precision)."""
  config_lib.validate(config, jax.device_count())
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise config_lib.ConfigError(f"--parts: unknown {', '.join(unknown)}; choose from "
                                 f"{', '.join(PARTS)}")
  if "input" in parts and not workdir:
    raise config_lib.ConfigError("--parts=input needs --workdir (the tokenizer is written there)")
  if unknown := sorted(set(stages) - {"stage1", "stage2"}):
    raise config_lib.ConfigError(f"--stages: unknown {', '.join(unknown)}; choose from "
                                 "stage1, stage2")
  if topology and "precision" not in parts:
    raise config_lib.ConfigError("--topology is for --parts=precision")
  mesh = sharding.make_mesh(config.mesh)
  report = {
      "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "backend": jax.default_backend(),
      "jax": jax.__version__,
      "compute_dtype": config.vqvae.dtype,
  }
  if set(parts) & {"train", "modules", "sampler"}:
    peak_flops = matmul_flops_per_sec(config.vqvae.dtype)
    report["matmul_gflops_per_s"] = round(peak_flops / 1e9, 1)
    if chip_peak_flops():
      report["chip_bf16_peak_tflops"] = round(chip_peak_flops() / 1e12, 1)
  if "train" in parts or "modules" in parts:
    unrolled = config_lib.unrolled(config)
    tasks = {
        "stage1": (stage1.make_task(config), stage1.make_task(unrolled),
                   stage1.random_batch(config, config.vqvae.optim.batch_size)),
        "stage2": (stage2.make_task(config, stage1_step=0),
                   stage2.make_task(unrolled, stage1_step=0),
                   random_codes_batch(config, config.prior.optim.batch_size)),
    }
    for name in stages:
      task, unrolled_task, batch = tasks[name]
      report[f"{name}_train_step"], state = bench_train_step(
          task, batch, mesh, steps, peak_flops, unrolled_task, config.mesh)
      if "modules" in parts:  # the modules of the benched model: no second init to compile.
        step_seconds = 1.0 / report[f"{name}_train_step"]["steps_per_s"]
        report[f"{name}_modules"] = module_bench.bench_modules(
            task, state, batch, step_seconds, module_depth, min_seconds)
      del state
  if "sampler" in parts:
    report.update(bench_samplers(config, mesh, peak_flops, sampler_batches, min_seconds))
  if "input" in parts:
    report["input"] = bench_input(config, mesh, workdir, input_batches)
  if "precision" in parts:
    report["precision"] = bench_precision(config, mesh, topology)
  report["peak_memory"] = peak_memory_bytes()
  return report
