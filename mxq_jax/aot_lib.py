"""Ahead-of-time fit check: every program of a run, compiled for a TPU slice on any CPU host.

libtpu compiles for a TPU topology without the chips (`jax.experimental.topologies`, as
maxtext's train_compile.py does). The mesh of `config.mesh` is built over the slice's
compile-only devices and each program the run executes is lowered with the shardings the run
uses and shape-only arguments (`jax.ShapeDtypeStruct`), so nothing is allocated: the stage-1 and
prior train and eval steps, the encoder, the sampler at the evaluation's batch, and the
attribute classifier's step where the dataset has one.

XLA's memory analysis is per chip (SPMD: every chip runs the same program on its shard); the
peak is arguments + outputs + temporaries - donated aliases, the figure maxtext reports.
"""

import dataclasses
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mxq_jax import bench_lib, config_lib, sharding
from mxq_jax.data import pipeline
from mxq_jax.evaluation import classifier
from mxq_jax.generation import sampler
from mxq_jax.training import codes as codes_lib, stage1, stage2, trainer as trainer_lib

GiB = 2**30

# libtpu on a host without TPUs: no metadata server to ask, one (local) worker; these keep its
# start-up quiet and fast. JAX itself runs on the CPU (the topology is compile-only).
QUIET_LIBTPU_ENV = {
    "JAX_PLATFORMS": "cpu",
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_ID": "0",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",  # another libtpu process (a second check) may be running.
}


@dataclasses.dataclass(frozen=True)
class Generation:
  libtpu_name: str  # the prefix libtpu's topology names use: "v5e" in "v5e:2x4".
  cores_per_chip_in_name: int  # gcloud's v4-8 and v5p-8 count TensorCores (2 a chip).
  megacore: bool  # one JAX device per chip spanning its two TensorCores.
  hbm_gib: int  # per chip (Cloud TPU system architecture pages).
  chips_per_host: int  # on multi-host slices.


GENERATIONS = {
    "v4": Generation("v4", 2, True, 32, 4),
    "v5p": Generation("v5", 2, True, 95, 4),
    "v5litepod": Generation("v5e", 1, False, 16, 4),
    "v6e": Generation("v6e", 1, False, 32, 4),
}
GENERATIONS["v5e"] = GENERATIONS["v5litepod"]
BY_LIBTPU_NAME = {g.libtpu_name: g for g in GENERATIONS.values()}

# Chips -> the slice's shape (Cloud TPU docs' topology tables).
SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
             256: (16, 16)}
SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  name: str  # as asked: "v5litepod-8" or "v5e:2x4".
  generation: Generation
  shape: tuple[int, ...]  # chips along each axis of the slice.

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def topology_name(self) -> str:
    return f"{self.generation.libtpu_name}:{'x'.join(map(str, self.shape))}"

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    """Single-host slices (v5e/v6e up to 8 chips, v4/v5p 4) hold every chip on one host."""
    shape3 = (*self.shape, 1, 1)[:3]
    if self.chips <= max(self.generation.chips_per_host, 8 if len(self.shape) == 2 else 4):
      return shape3
    return (2, 2, 1)

  @property
  def hosts(self) -> int:
    return self.chips // math.prod(self.chips_per_host_bounds)

  @property
  def hbm_bytes(self) -> int:
    return self.generation.hbm_gib * GiB


def parse_slice(name: str) -> TpuSlice:
  """`v5litepod-8`, `v4-8`, `v5p-8`, `v6e-8` (gcloud's accelerator types) or `v5e:2x4`."""
  gcloud = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name)
  if gcloud:
    generation = GENERATIONS[gcloud.group(1)]
    chips, remainder = divmod(int(gcloud.group(2)), generation.cores_per_chip_in_name)
    shapes = SHAPES_3D if generation.megacore else SHAPES_2D
    if remainder or chips not in shapes:
      known = ", ".join(f"{gcloud.group(1)}-{c * generation.cores_per_chip_in_name}"
                        for c in shapes)
      raise config_lib.ConfigError(
          f"--topology={name}: no {gcloud.group(1)} slice of that size is known here; choose "
          f"from {known} or give the shape, e.g. --topology={generation.libtpu_name}:2x4")
    return TpuSlice(name, generation, shapes[chips])
  direct = re.fullmatch(r"(v4|v5|v5e|v6e):(\d+(?:x\d+){1,2})", name)
  if direct:
    generation = BY_LIBTPU_NAME[direct.group(1)]
    shape = tuple(int(d) for d in direct.group(2).split("x"))
    if len(shape) != (3 if generation.megacore else 2):
      raise config_lib.ConfigError(
          f"--topology={name}: {direct.group(1)} slices have "
          f"{3 if generation.megacore else 2} dimensions, e.g. "
          f"{direct.group(1)}:{'2x2x1' if generation.megacore else '2x4'}")
    return TpuSlice(name, generation, shape)
  raise config_lib.ConfigError(
      f"--topology={name}: not a TPU type; give one as gcloud names it (v4-8, v5litepod-8, "
      "v5litepod-16, v5p-8, v6e-8, ...) or a libtpu topology (v5e:2x4, v4:2x2x1)")


def compile_only_devices(tpu: TpuSlice) -> list:
  """The slice's devices, compile-only (libtpu, no chips needed); ConfigError without libtpu."""
  for key, value in QUIET_LIBTPU_ENV.items():
    os.environ.setdefault(key, value)
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", tpu.name)
  from jax.experimental import topologies
  try:
    import libtpu  # noqa: F401  (only to say clearly that it is missing)
  except ImportError:
    raise config_lib.ConfigError(
        "python -m mxq_jax.aot compiles with libtpu, which is not installed; "
        "pip install -e '.[aot]'") from None
  options = {"chip_config_name": "megacore"} if tpu.generation.megacore else {}
  return topologies.get_topology_desc(
      platform="tpu", topology_name=tpu.topology_name, num_slices=1,
      chips_per_host_bounds=tpu.chips_per_host_bounds, **options).devices


# ----------------------------------------------------------------------------- the programs


@dataclasses.dataclass(frozen=True)
class Program:
  name: str  # "stage1/train", "sampler", ...
  fn: Callable  # a jitted function.
  args: tuple  # ShapeDtypeStructs with the run's shardings.
  arg_names: tuple[str, ...]  # what each argument is, for the report ("state", "batch").
  batch_field: str  # the config field of its global batch, for advice.


def _batch(example: dict[str, np.ndarray], batch_size: int, mesh, *, valid: bool) -> dict:
  """Shape-only global batch like `example`'s (leading dim replaced), batch-sharded."""
  shapes = {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype)
            for k, v in example.items()}
  if valid:  # eval batches mark padding rows (pipeline.array_eval_batches).
    shapes["valid"] = jax.ShapeDtypeStruct((batch_size,), np.float32)
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
          for k, v in shapes.items()}


def _scalar(mesh, dtype=jnp.float32):
  return jax.ShapeDtypeStruct((), dtype, sharding=sharding.replicated(mesh))


def _key(mesh):
  key = jax.eval_shape(lambda: jax.random.key(0))
  return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))


def _task_programs(task: trainer_lib.Task, example: dict, mesh,
                   batch_field: str) -> tuple[list[Program], Any]:
  """The task's train and eval steps, and its shape-only state."""
  state, shardings = trainer_lib.abstract_state(task, mesh)
  batch_size = task.optim.batch_size
  found = [Program(f"{task.name}/train", trainer_lib.make_train_step(task, mesh, shardings),
                   (state, _batch(example, batch_size, mesh, valid=False), _key(mesh),
                    _scalar(mesh)),
                   ("state", "batch", "key", "learning_rate"), batch_field),
           Program(f"{task.name}/eval", trainer_lib.make_eval_step(task, mesh, shardings),
                   (state, _batch(example, batch_size, mesh, valid=True)),
                   ("state", "batch"), batch_field)]
  return found, state


def run_programs(config: ml_collections.ConfigDict, mesh, *, num_devices: int | None = None,
                 unroll_sampler: bool = False) -> list[Program]:
  """What `python -m mxq_jax.main` compiles for `config.stages` on `mesh`, shape-only.

  num_devices: the devices the run's sampler batch is rounded for (default: the mesh's);
  unroll_sampler: its decoding loop written out, for XLA's cost analysis only.
  """
  stages = config_lib.parse_stages(config.stages)
  pairs = stage1.random_batch(config, 1)
  codes = {"codes": np.zeros((1, config_lib.num_joint_codes(config)), np.int32)}
  found, stage1_state = _task_programs(stage1.make_task(config), pairs, mesh,
                                       "vqvae.optim.batch_size")
  prior_programs, prior_state = _task_programs(stage2.make_task(config, stage1_step=0), codes,
                                               mesh, "prior.optim.batch_size")
  if "stage1" not in stages:
    found = []
  if "encode" in stages or config.prior.encode_on_the_fly and "stage2" in stages:
    found.append(Program(
        "encode", codes_lib.make_encode_step(config, mesh),
        (stage1_state, _batch(pairs, config.vqvae.optim.batch_size, mesh, valid=True)),
        ("stage1_state", "batch"), "vqvae.optim.batch_size"))
  if "stage2" in stages:
    found += prior_programs
  if "evaluate" in stages:
    batch_size = config_lib.evaluation_batch_size(config, num_devices or mesh.devices.size)
    found.append(Program(
        "sampler",
        sampler.make_sampler(config, mesh, batch_size=batch_size, top_k=config.sampling.top_k,
                             unroll=unroll_sampler),
        (sampler.variables_of(prior_state), sampler.variables_of(stage1_state), _key(mesh),
         _scalar(mesh), _scalar(mesh), _scalar(mesh)),
        ("prior", "vae", "key", "top_p", "temperature", "image_temperature"),
        "sampling.batch_size"))
    if config.data.name in pipeline.ATTRIBUTE_DATASETS:
      images = {"image": pairs["image"],
                **{name: np.zeros((1,), np.int32) for name in classifier.ATTRIBUTES}}
      found += _task_programs(classifier.make_task(config), images, mesh,
                              "evaluation.classifier_optim.batch_size")[0]
  return found


# ------------------------------------------------------------------------------ the report


def _per_chip_bytes(x) -> int:
  shard_shape = x.sharding.shard_shape(x.shape)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return math.prod(shard_shape) * 8  # a threefry key: two uint32.
  return math.prod(shard_shape) * np.dtype(x.dtype).itemsize


def largest_arguments(program: Program, count: int | None = 3) -> list[tuple[str, int]]:
  """(path, per-chip bytes) of the program's largest arguments (all of them: count=None)."""
  sized = [(name + jax.tree_util.keystr(path), _per_chip_bytes(x))
           for name, arg in zip(program.arg_names, program.args)
           for path, x in jax.tree_util.tree_leaves_with_path(arg) if hasattr(x, "sharding")]
  return sorted(sized, key=lambda item: -item[1])[:count]


def global_flops(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, float | None]:
  """Each program's FLOPs a call, all chips together: XLA's cost analysis of the global program
  lowered (not compiled) for one CPU device, every repeated block and the sampler's loop
  unrolled. The compiled TPU program's own count is per chip and counts a loop body once."""
  cpu_mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)),
                                jax.devices("cpu")[:1])
  programs = run_programs(config_lib.unrolled(config), cpu_mesh, num_devices=num_devices,
                          unroll_sampler=True)
  return {p.name: bench_lib.flops_of(p.fn.lower(*p.args).cost_analysis()) for p in programs}


def compile_program(program: Program, hbm_bytes: int, flops: float | None = None) -> dict:
  """Compiles `program` and reports its time, `flops` (global_flops) and per-chip memory
  against the HBM."""
  start = time.perf_counter()
  try:
    compiled = program.fn.lower(*program.args).compile()
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    return _out_of_memory_report(program, time.perf_counter() - start, str(error), hbm_bytes)
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  return _report(program, seconds, hbm_bytes, gflops=None if flops is None else flops / 1e9,
                 arguments=memory.argument_size_in_bytes, outputs=memory.output_size_in_bytes,
                 temporaries=memory.temp_size_in_bytes, aliases=memory.alias_size_in_bytes)


def _report(program: Program, seconds: float, hbm_bytes: int, *, gflops, arguments, outputs,
            temporaries, aliases, **extra) -> dict:
  """One program's line: sizes in MiB per chip (None: unknown), peak against the HBM."""
  peak = arguments + (outputs or 0) + temporaries - (aliases or 0)
  mib = lambda size: None if size is None else round(size / 2**20, 1)
  return {
      "program": program.name,
      "compile_s": round(seconds, 1),
      "gflops": None if gflops is None else float(f"{gflops:.4g}"),
      "argument_mib": mib(arguments),
      "output_mib": mib(outputs),
      "temp_mib": mib(temporaries),
      "alias_mib": mib(aliases),
      "peak_mib": mib(peak),
      "hbm_mib": round(hbm_bytes / 2**20),
      "fraction_of_hbm": round(peak / hbm_bytes, 4),
      "fits": peak <= hbm_bytes,
      **extra,
  }


def _mib_or_kib(size: int) -> str:
  return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _out_of_memory_report(program: Program, seconds: float, error: str, hbm_bytes: int) -> dict:
  """The report of a program the TPU compiler refused: it stops at the temporaries, so the
  arguments come from their shardings and the outputs (the donated state) are taken as
  aliased."""
  found = re.search(r"memory required for .*? \(([\d.]+)([KMGT])\) exceeds", error)
  temp = float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")
  arguments = sum(size for _, size in largest_arguments(program, count=None))
  report = _report(program, seconds, hbm_bytes, gflops=None, arguments=arguments, outputs=None,
                   temporaries=temp, aliases=None,
                   compiler=error.strip().splitlines()[0][:300])
  return dict(report, fits=False)  # refused by the compiler, whatever the estimate says.


def does_not_fit_message(program: Program, report: dict, config: ml_collections.ConfigDict,
                         num_devices: int) -> str:
  """One line: the program, its peak against the HBM, its largest arguments, what would fit."""
  field = program.batch_field
  section, *rest = field.split(".")
  batch_size = config[section]
  for part in rest:
    batch_size = batch_size[part]
  # Temporaries (activations) scale with the batch; arguments and outputs (the state) do not.
  room = (report["hbm_mib"] - report["argument_mib"] - (report["output_mib"] or 0)
          + (report["alias_mib"] or 0))
  advice = []
  if report["temp_mib"] > 0 and room > 0:
    fitting = int(batch_size * room / report["temp_mib"]) // num_devices * num_devices
    if fitting >= num_devices:
      advice.append(f"--config.{field}={fitting} (about what the temporaries allow)")
  if config.mesh.fsdp < num_devices and report["argument_mib"] > report["hbm_mib"] / 4:
    advice.append(f"--config.mesh.fsdp={num_devices} (shards the state over every chip)")
  largest = ", ".join(f"{path} {_mib_or_kib(size)}" for path, size in largest_arguments(program))
  return (f"{program.name} does not fit: {report['peak_mib']:.0f} MiB a chip against "
          f"{report['hbm_mib']} MiB of HBM (temporaries {report['temp_mib']:.0f} MiB; largest "
          f"arguments: {largest}); try {' or '.join(advice) or 'a smaller model'}")


def check_fit(config: ml_collections.ConfigDict, tpu: TpuSlice, devices: Sequence | None = None,
              report: Callable[[dict], None] = print) -> list[dict]:
  """Compiles every program of the run for `tpu`, reporting each; ConfigError (one line) at the
  first that does not fit."""
  devices = compile_only_devices(tpu) if devices is None else devices
  config_lib.validate(config, len(devices))
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  flops = global_flops(config, len(devices))
  results = []
  for program in run_programs(config, mesh):
    result = {"topology": tpu.name, "chips": tpu.chips, "hosts": tpu.hosts,
              "mesh": dict(mesh.shape),
              **compile_program(program, tpu.hbm_bytes, flops.get(program.name))}
    report(result)
    results.append(result)
    if not result["fits"]:
      raise config_lib.ConfigError(does_not_fit_message(program, result, config, len(devices)))
  return results
