"""One training machinery for both stages: state, sharded jitted step, loop, checkpoints, metrics.

A `Stage` says what differs between stage 1 (the MXQ-VAE) and stage 2 (the prior): how to build
the model, its loss, its evaluation. Everything else (the pure `train_step` under `jax.jit` with
explicit NamedShardings, AdamW, Orbax checkpoints, clu metrics, NaN guard, resumption) is here,
written once.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from mxq_jax import checkpointing, config_lib, optim as optim_lib, sharding

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: nnx.State  # the nnx.Param variables, trained by the optimizer.
  opt_state: optax.OptState
  model_state: nnx.State  # every other variable (e.g. the EMA codebook), updated by the forward.


@dataclasses.dataclass(frozen=True)
class Stage:
  """The parts of a training stage that are not shared machinery."""
  name: str  # subdirectory of the workdir and metric namespace, e.g. "stage1".
  optim: ml_collections.ConfigDict  # config_lib.optim_config() schema.
  build_model: Callable[[nnx.Rngs], nnx.Module]
  # (model, batch, key) -> (scalar loss, scalar metrics); runs inside the jitted train step.
  loss_fn: Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, Metrics]]
  # (model, batch with a 'valid' mask) -> per-batch sums; jitted; summed over the test split.
  eval_fn: Callable[[nnx.Module, Batch], Metrics]
  # host side: summed eval outputs -> scalar metrics.
  summarize_eval: Callable[[dict[str, np.ndarray]], dict[str, float]]
  # config fields that fix the shapes of the state; a checkpoint must match them.
  signature: dict[str, Any]
  # optional, host side: (model, first eval batch, writer, step) -> writes images or texts.
  write_previews: Callable[[nnx.Module, Batch, Any, int], None] | None = None


# ---------------------------------------------------------------------------------- the state


def _init_fn(stage: Stage, optimizer: optax.GradientTransformation, seed: int):
  def init() -> TrainState:
    model = stage.build_model(nnx.Rngs(params=seed))
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), model_state=model_state)
  return init


def graphdef_of(stage: Stage) -> nnx.GraphDef:
  """The static structure of the stage's model, without allocating its parameters."""
  abstract_model = nnx.eval_shape(lambda: stage.build_model(nnx.Rngs(params=0)))
  return nnx.split(abstract_model, nnx.Param, ...)[0]


def abstract_state(stage: Stage, mesh: jax.sharding.Mesh, seed: int = 0):
  """(shape-only state with shardings attached, the shardings) for restore and jit."""
  optimizer = optim_lib.make_optimizer(stage.optim)
  shapes = jax.eval_shape(_init_fn(stage, optimizer, seed))
  shardings = sharding.state_shardings(shapes, mesh)
  with_shardings = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return with_shardings, shardings


def init_state(stage: Stage, seed: int, shardings) -> TrainState:
  """A fresh state, created directly in its sharded layout (never whole on one device)."""
  optimizer = optim_lib.make_optimizer(stage.optim)
  return jax.jit(_init_fn(stage, optimizer, seed), out_shardings=shardings)()


def restore_trained(stage: Stage, workdir: str, mesh: jax.sharding.Mesh,
                    step: int | None = None) -> tuple[TrainState, int]:
  """(state, step) of a stage's checkpoint (default: latest), for use after training.

  Raises ConfigError (one line) when the checkpoint is missing or of a different model.
  """
  directory = checkpointing.checkpoint_dir(workdir, stage.name)
  manager = checkpointing.open_read_only(directory)
  available = [] if manager is None else list(manager.all_steps())
  if not available or (step is not None and step not in available):
    if manager is not None:
      manager.close()
    wanted = "no checkpoint" if step is None else f"no checkpoint of step {step}"
    raise config_lib.ConfigError(
        f"{directory} holds {wanted} (found: {sorted(available) or 'none'}); train it with "
        f"`python -m mxq_jax.main --config=... --workdir={workdir}`")
  step = max(available) if step is None else step
  try:
    checkpointing.check_compatible(checkpointing.read_meta(manager, step), stage.signature,
                                   directory)
    abstract, _ = abstract_state(stage, mesh)
    return checkpointing.restore(manager, step, abstract), step
  finally:
    manager.close()


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  return nnx.merge(graphdef, state.params, state.model_state)


# ------------------------------------------------------------------------------- the steps


def make_train_step(stage: Stage, mesh: jax.sharding.Mesh, state_shardings):
  """The jitted, sharded step: (state, batch, key) -> (state, metrics). State is donated."""
  graphdef = graphdef_of(stage)
  optimizer = optim_lib.make_optimizer(stage.optim)
  schedule = optim_lib.learning_rate_schedule(stage.optim)

  def train_step(state: TrainState, batch: Batch, key: jax.Array):
    step_key = jax.random.fold_in(key, state.step)

    def objective(params):
      # copy=True: fresh Variables owned by this trace, so the forward may update them.
      model = nnx.merge(graphdef, params, state.model_state, copy=True)
      loss, metrics = stage.loss_fn(model, batch, step_key)
      _, _, model_state = nnx.split(model, nnx.Param, ...)
      return loss, (metrics, model_state)

    (loss, (metrics, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state.step))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           model_state=model_state)
    return new_state, metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(
      train_step,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0)


def make_eval_step(stage: Stage, mesh: jax.sharding.Mesh, state_shardings):
  graphdef = graphdef_of(stage)

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    return stage.eval_fn(merge_model(graphdef, state), batch)

  return jax.jit(eval_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def evaluate(stage: Stage, eval_step, state: TrainState, batches: Iterator[Batch]):
  """Sums `eval_step` over one pass of `batches` and summarizes on the host."""
  totals = None
  for batch in batches:
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError(f"{stage.name}: the evaluation split is empty")
  return stage.summarize_eval(jax.device_get(totals))


def map_in_fixed_batches(fn: Callable, *arrays_N: np.ndarray, batch_size: int):
  """fn over host arrays in zero-padded chunks of one shape (one compilation), outputs trimmed.

  `fn(*chunks)` returns a pytree of arrays with the batch first; the result is that pytree
  over all N rows, on the host.
  """
  n = len(arrays_N[0])
  outputs = []
  for start in range(0, n, batch_size):
    chunks = [a[start:start + batch_size] for a in arrays_N]
    real = len(chunks[0])
    padded = [np.pad(c, [(0, batch_size - real)] + [(0, 0)] * (c.ndim - 1)) for c in chunks]
    outputs.append(jax.tree.map(lambda x: x[:real], jax.device_get(fn(*padded))))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


# -------------------------------------------------------------------------------- the loop


def write_json_atomically(path: str, payload: dict) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
      f"{seconds // 60}m{seconds % 60:02d}s")


def _mean_metrics(history: list[dict[str, np.ndarray]]) -> dict[str, float]:
  return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def train_stage(
    stage: Stage,
    *,
    workdir: str,
    mesh: jax.sharding.Mesh,
    seed: int,
    train_batches: Callable[[int], Iterator[Batch]],
    eval_batches: Callable[[], Iterator[Batch]] | None = None,
) -> tuple[TrainState, dict[str, float]]:
  """Trains `stage` to `stage.optim.num_steps`, resuming from its latest checkpoint.

  Returns the final state and the final evaluation's metrics (also in
  `{workdir}/{stage.name}/eval_metrics.json`; empty without `eval_batches`).

  `train_batches(start_step)` must yield the same batches a fresh iterator yields from
  `start_step` on: the step number is the whole data-iterator state that a checkpoint stores.
  """
  optim = stage.optim
  stage_dir = os.path.join(workdir, stage.name)
  manager = checkpointing.make_manager(checkpointing.checkpoint_dir(workdir, stage.name),
                                       optim.keep_checkpoints)
  checkpointing.check_compatible(checkpointing.read_meta(manager), stage.signature, stage_dir)
  abstract, shardings = abstract_state(stage, mesh, seed)

  latest = manager.latest_step()
  if latest is None:
    state = init_state(stage, seed, shardings)
  else:
    state = checkpointing.restore(manager, latest, abstract)
    logging.info("%s: resumed from the checkpoint of step %d", stage.name, latest)
  start_step = int(state.step)
  graphdef = graphdef_of(stage)
  model_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("%s: %s parameters, mesh %s", stage.name, f"{model_params:,}", dict(mesh.shape))
  metrics_path = os.path.join(stage_dir, "eval_metrics.json")
  if start_step >= optim.num_steps:
    logging.info("%s: already trained (%d/%d steps); nothing to do", stage.name, start_step,
                 optim.num_steps)
    manager.close()
    return state, read_json(metrics_path)

  from clu import metric_writers  # here: clu's writers import TensorFlow, the step doesn't.
  writer = metric_writers.create_default_writer(
      stage_dir, just_logging=jax.process_index() > 0, asynchronous=True)
  train_step = make_train_step(stage, mesh, shardings)
  eval_step = make_eval_step(stage, mesh, shardings) if eval_batches else None
  meta = {"stage": stage.name, "signature": stage.signature}
  key = jax.random.key(seed)

  final_metrics = {}

  def run_eval(step: int) -> None:
    if eval_step is None:
      return
    scalars = evaluate(stage, eval_step, state, eval_batches())
    final_metrics.clear()
    final_metrics.update(scalars, step=step)
    if jax.process_index() == 0:
      write_json_atomically(metrics_path, final_metrics)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in scalars.items()})
    if stage.write_previews is not None:
      stage.write_previews(merge_model(graphdef, state), next(eval_batches()), writer, step)
    logging.info("%s: eval at step %d: %s", stage.name, step,
                 ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

  batches = train_batches(start_step)
  history: list[dict[str, np.ndarray]] = []
  pending = None  # metrics of the step in flight: fetched after the next one is dispatched.
  # Throughput is measured between log points, from the end of the first (compiling) step.
  interval_start, interval_first_step = time.perf_counter(), start_step + 1
  logging.info("%s: training steps %d..%d", stage.name, start_step, optim.num_steps)
  for step in range(start_step + 1, optim.num_steps + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      state, metrics = train_step(state, next(batches), key)
    if pending is not None:
      history.append(jax.device_get(pending))
    pending = metrics
    if step == start_step + 1:
      jax.block_until_ready(metrics)
      logging.info("%s: first step (compilation included) took %.1f s", stage.name,
                   time.perf_counter() - interval_start)
      interval_start = time.perf_counter()

    is_last = step == optim.num_steps
    will_save = step % optim.checkpoint_every == 0 or is_last
    # Metrics are also checked before every save, so that no NaN state is ever checkpointed.
    if step % optim.log_every == 0 or will_save:
      history.append(jax.device_get(pending))
      pending = None
      scalars = _mean_metrics(history)
      history = []
      if not math.isfinite(scalars["loss"]):
        manager.wait_until_finished()
        raise FloatingPointError(
            f"{stage.name}: the loss is {scalars['loss']} at step {step}; lower "
            f"config.*.optim.learning_rate (now {optim.learning_rate}) and rerun: training "
            f"resumes from the last good checkpoint (step {manager.latest_step()})")
      now = time.perf_counter()
      steps_per_sec = max(step - interval_first_step, 1) / max(now - interval_start, 1e-9)
      interval_start, interval_first_step = now, step
      scalars |= {"steps_per_sec": steps_per_sec,
                  "examples_per_sec": steps_per_sec * optim.batch_size}
      writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
      eta = (optim.num_steps - step) / max(steps_per_sec, 1e-9)
      logging.info("%s: step %d/%d (%.0f%%) loss %.4f, %.2f steps/s, ETA %s", stage.name, step,
                   optim.num_steps, 100 * step / optim.num_steps, scalars["loss"],
                   steps_per_sec, _format_duration(eta))
    will_eval = (optim.eval_every and step % optim.eval_every == 0) or is_last
    if will_eval:
      run_eval(step)
    if will_save:
      checkpointing.save(manager, step, state, meta)
    if will_eval or will_save:  # keep evaluation and saving out of the steps/s figure.
      interval_start, interval_first_step = time.perf_counter(), step

  # Flush TensorBoard's writer before the input pipeline is torn down: tearing down a tf.data
  # iterator while TensorFlow's summary writer holds unflushed events stalled for 10-30 s.
  writer.flush()
  if hasattr(batches, "close"):  # a generator: stop its prefetching now, not at garbage time.
    batches.close()
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return state, final_metrics
