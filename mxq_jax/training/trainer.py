"""One Trainer for every training task: stage 1 (the MXQ-VAE), stage 2 (the prior), and the
evaluation's attribute classifier.

A `Task` says what differs between them: how to build the model, its loss, its evaluation.
Everything else is written once here: the pure `train_step` under `jax.jit` with explicit
NamedShardings (state donated), AdamW, Orbax checkpoints with exact resumption, clu metric
writers with `ReportProgress` (steps/s, ETA) and `Profile`, the NaN guard.
"""

import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from mxq_jax import config_lib, files, interrupts, sharding
from mxq_jax.training import checkpoints, optimizer as optimizer_lib

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: nnx.State  # the nnx.Param variables, trained by the optimizer.
  opt_state: optax.OptState
  model_state: nnx.State  # every other variable (e.g. the EMA codebook), updated by the forward.


@dataclasses.dataclass(frozen=True)
class Task:
  """What one training task trains and how it is scored; the Trainer does the rest."""
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

  # Derived once per task (cached on the instance), shared by every step and restore.
  @functools.cached_property
  def graphdef(self) -> nnx.GraphDef:
    """The static structure of the task's model, without allocating its parameters."""
    abstract_model = nnx.eval_shape(lambda: self.build_model(nnx.Rngs(params=0)))
    return nnx.split(abstract_model, nnx.Param, ...)[0]

  @functools.cached_property
  def checkpoint_signature(self) -> dict[str, Any]:
    """What a checkpoint of this task must match: `signature` and the optimizer state's layout."""
    return dict(self.signature, optimizer=optimizer_lib.state_layout(self.optim))

  @functools.cached_property
  def optimizer(self) -> optax.GradientTransformation:
    return optimizer_lib.make_optimizer(self.optim)

  @functools.cached_property
  def learning_rate(self) -> optax.Schedule:
    return optimizer_lib.learning_rate_schedule(self.optim)


# ---------------------------------------------------------------------------------- the state


def _init_fn(task: Task, seed: int):
  def init() -> TrainState:
    model = task.build_model(nnx.Rngs(params=seed))
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=task.optimizer.init(params), model_state=model_state)
  return init


def abstract_state(task: Task, mesh: jax.sharding.Mesh, seed: int = 0):
  """(shape-only state with shardings attached, the shardings) for restore and jit."""
  shapes = jax.eval_shape(_init_fn(task, seed))
  shardings = sharding.state_shardings(shapes, mesh)
  with_shardings = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return with_shardings, shardings


def init_state(task: Task, seed: int, shardings) -> TrainState:
  """A fresh state, created directly in its sharded layout (never whole on one device)."""
  return jax.jit(_init_fn(task, seed), out_shardings=shardings)()


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  return nnx.merge(graphdef, state.params, state.model_state)


def restore_trained(task: Task, workdir: str, mesh: jax.sharding.Mesh,
                    step: int | None = None) -> tuple[TrainState, int]:
  """(state, step) of a task's checkpoint (default: latest), for use after training.

  Raises ConfigError (one line) when the checkpoint is missing or of a different model.
  """
  directory = checkpoints.checkpoint_dir(workdir, task.name)
  manager = checkpoints.open_read_only(directory)
  available = [] if manager is None else list(manager.all_steps())
  if not available or (step is not None and step not in available):
    if manager is not None:
      manager.close()
    wanted = "no checkpoint" if step is None else f"no checkpoint of step {step}"
    raise config_lib.ConfigError(
        f"{directory} holds {wanted} (found: {sorted(available) or 'none'}); train it with "
        f"`python -m mxq_jax.main --config=... --workdir={workdir}`")
  try:
    return checkpoints.restore_newest(manager, abstract_state(task, mesh)[0],
                                      task.checkpoint_signature,
                                      move_damaged=False,
                                      steps=None if step is None else [step])
  finally:
    manager.close()


# ------------------------------------------------------------------------------- the steps


def make_learning_rate(task: Task, mesh: jax.sharding.Mesh):
  """The jitted schedule: step -> the task's learning rate at that step (a scalar).

  A program of its own, a few scalar ops, that the train step takes the rate from: the train
  step holds no schedule constants, so one compiled step (and its persistent-cache entry)
  serves any step budget, warm-up and peak rate.
  """
  replicated = sharding.replicated(mesh)
  return jax.jit(task.learning_rate, in_shardings=replicated, out_shardings=replicated)


def make_train_step(task: Task, mesh: jax.sharding.Mesh, state_shardings):
  """The jitted, sharded step: (state, batch, key, learning rate) -> (state, metrics), the
  rate from `make_learning_rate` at `state.step`. State is donated."""
  graphdef = task.graphdef

  def train_step(state: TrainState, batch: Batch, key: jax.Array, learning_rate: jax.Array):
    step_key = jax.random.fold_in(key, state.step)
    # The task's optimizer, its schedule replaced by this step's rate: the same updates and the
    # same state (AdamW's schedule count included), without the schedule's constants.
    optimizer = optimizer_lib.make_optimizer(task.optim, lambda count: learning_rate)

    def objective(params):
      # copy=True: fresh Variables owned by this trace, so the forward may update them.
      model = nnx.merge(graphdef, params, state.model_state, copy=True)
      loss, metrics = task.loss_fn(model, batch, step_key)
      _, _, model_state = nnx.split(model, nnx.Param, ...)
      return loss, (metrics, model_state)

    (loss, (metrics, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=learning_rate)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           model_state=model_state)
    return new_state, metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(
      train_step,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated, replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0)


def make_eval_step(task: Task, mesh: jax.sharding.Mesh, state_shardings):
  graphdef = task.graphdef

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    return task.eval_fn(merge_model(graphdef, state), batch)

  return jax.jit(eval_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def _mean_metrics(history: list[dict[str, np.ndarray]]) -> dict[str, float]:
  return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


# -------------------------------------------------------------------------------- the trainer


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
  """A barrier of every process through JAX's coordination service (a no-op in one process).

  Unlike `multihost_utils.sync_global_devices`, it runs no collective, so it sets up no
  communicator and is not bounded by a communicator's set-up timeout. `name` must be unique.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


class Trainer:
  """Trains one `Task` to `task.optim.num_steps`, resuming from its latest checkpoint.

  Built once per task; holds what every step shares: the graph definition, the state's
  shardings, the jitted train and eval steps. `fit` opens the checkpoint manager and the
  writer of `{workdir}/{task.name}`, and closes them when it returns.
  """

  def __init__(self, task: Task, *, workdir: str, mesh: jax.sharding.Mesh, seed: int,
               hparams: Mapping[str, Any] | None = None):
    self.task, self.mesh, self.seed = task, mesh, seed
    self.hparams = hparams
    self.directory = os.path.join(workdir, task.name)
    self.checkpoint_dir = checkpoints.checkpoint_dir(workdir, task.name)
    self.metrics_path = os.path.join(self.directory, "eval_metrics.json")
    self.abstract_state, self.state_shardings = abstract_state(task, mesh, seed)
    self.train_step = make_train_step(task, mesh, self.state_shardings)
    self.learning_rate = make_learning_rate(task, mesh)
    self.eval_step = make_eval_step(task, mesh, self.state_shardings)
    self.key = jax.random.key(seed)

  def evaluate(self, state: TrainState, batches: Iterator[Batch]) -> dict[str, float]:
    """Sums the eval step over one pass of `batches` and summarizes on the host."""
    totals = None
    for batch in batches:
      sums = self.eval_step(state, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
      raise ValueError(f"{self.task.name}: the evaluation split is empty")
    return self.task.summarize_eval(jax.device_get(totals))

  def fit(self, train_batches: Callable[[int], Iterator[Batch]],
          eval_batches: Callable[[], Iterator[Batch]] | None = None
          ) -> tuple[TrainState, dict[str, float]]:
    """(final state, final test metrics, also in eval_metrics.json; {} without eval_batches).

    `train_batches(start_step)` must yield the batches a fresh iterator yields from
    `start_step` on: the step number is the whole data-iterator state a checkpoint stores.
    """
    task, optim = self.task, self.task.optim
    manager = checkpoints.make_manager(self.checkpoint_dir, optim.keep_checkpoints)
    state = self._restore_or_init(manager)
    start = int(state.step)
    if start >= optim.num_steps:
      logging.info("%s: already trained (%d/%d steps); nothing to do", task.name, start,
                   optim.num_steps)
      manager.close()
      return state, files.read_json(self.metrics_path)

    # clu's writers run TensorFlow: off the accelerators first.
    from mxq_jax import host_tensorflow  # pylint: disable=unused-import
    from clu import metric_writers, periodic_actions
    writer = metric_writers.create_default_writer(
        self.directory, just_logging=jax.process_index() > 0, asynchronous=True)
    if self.hparams is not None and start == 0:
      writer.write_hparams(config_lib.flat_fields(self.hparams))
    progress = periodic_actions.ReportProgress(
        num_train_steps=optim.num_steps, writer=writer, every_steps=optim.log_every,
        every_secs=None)
    hooks = [progress]
    if optim.profile_steps:
      hooks.append(periodic_actions.Profile(
          logdir=self.directory, num_profile_steps=optim.profile_steps,
          profile_duration_ms=None, first_profile=start + optim.profile_first_step,
          every_secs=None))

    batches = train_batches(start)
    try:
      state, final_metrics = self._train_loop(state, start, batches, eval_batches, manager,
                                              writer, progress, hooks)
    finally:
      # Flush TensorBoard's writer before the input pipeline is torn down: tearing down a
      # tf.data iterator while TensorFlow's summary writer holds unflushed events stalled for
      # 10-30 s.
      writer.flush()
      if hasattr(batches, "close"):  # a generator: stop its prefetching now, not at gc time.
        batches.close()
      manager.close()
      writer.close()
    return state, final_metrics

  def _train_loop(self, state, start, batches, eval_batches, manager, writer, progress, hooks):
    """Steps start+1..num_steps; saves and raises `interrupts.Stopped` on a stop signal."""
    task, optim = self.task, self.task.optim
    final_metrics = {}
    if interrupts.requested():  # before the first step: nothing new to save.
      raise interrupts.Stopped(interrupts.requested(),
                              f"{task.name}: stopped at step {start} (nothing new to save)")
    history, pending = [], None  # pending: the step in flight, fetched after the next dispatch.
    first_batch = next(batches)
    self._compile_train_step(state, first_batch)
    batches = itertools.chain([first_batch], batches)
    logging.info("%s: training steps %d..%d", task.name, start, optim.num_steps)
    for step in range(start + 1, optim.num_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = self.train_step(state, next(batches), self.key,
                                         self.learning_rate(state.step))
      if pending is not None:
        history.append(jax.device_get(pending))
      pending = metrics
      for hook in hooks:
        hook(step)
      stop_signal = interrupts.should_stop()
      is_last = step == optim.num_steps
      will_save = step % optim.checkpoint_every == 0 or is_last or stop_signal
      # Also before every save, so that no NaN state is ever checkpointed.
      if step % optim.log_every == 0 or will_save:
        history, pending = history + [jax.device_get(pending)], None
        self._log_train(step, _mean_metrics(history), writer, manager)
        history = []
      if eval_batches is not None and (is_last or (
          optim.eval_every and step % optim.eval_every == 0)):
        with progress.timed("eval"):
          final_metrics = self._run_eval(state, step, eval_batches, writer)
      if will_save:
        with progress.timed("checkpoint"):
          checkpoints.save(manager, step, state, {"stage": task.name,
                                                  "signature": task.checkpoint_signature})
      if stop_signal and not is_last:
        raise interrupts.Stopped(stop_signal, f"{task.name}: saved step {step} and stopped")
    return state, final_metrics

  def _compile_train_step(self, state: TrainState, batch) -> None:
    """Compiles the train step before the first step (jit keeps it: the loop's calls reuse it).

    In a multi-process run the processes then wait for each other at a coordination-service
    barrier (no collective), so that the step's collectives start together: a process whose
    compile ran late (a busy host) would otherwise time out the others' set-up of the
    collective communicators (gloo on CPU gives it 30 s).
    """
    start = time.perf_counter()
    self.train_step.lower(state, batch, self.key, self.learning_rate(state.step)).compile()
    logging.info("%s: train step compiled in %.1f s", self.task.name, time.perf_counter() - start)
    wait_for_all_processes(f"mxq_jax {self.task.name}: step {int(state.step)} compiled")

  def _restore_or_init(self, manager) -> TrainState:
    """The newest checkpoint that restores (damaged ones moved aside), else a fresh state."""
    if manager.all_steps():
      try:
        state, step = checkpoints.restore_newest(manager, self.abstract_state,
                                                 self.task.checkpoint_signature,
                                                 move_damaged=True)
        logging.info("%s: resumed from the checkpoint of step %d", self.task.name, step)
        return self._log_size(state)
      except checkpoints.CheckpointError as error:  # every one was damaged and moved aside.
        logging.warning("%s: training from step 0: %s", self.task.name, error)
    return self._log_size(init_state(self.task, self.seed, self.state_shardings))

  def _log_size(self, state: TrainState) -> TrainState:
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("%s: %s parameters, mesh %s", self.task.name, f"{num_params:,}",
                 dict(self.mesh.shape))
    return state

  def _log_train(self, step: int, scalars: dict[str, float], writer, manager) -> None:
    """Writes the mean training metrics since the last log; stops on a non-finite loss."""
    name, optim = self.task.name, self.task.optim
    if not math.isfinite(scalars["loss"]):
      manager.wait_until_finished()
      last = manager.latest_step()
      raise FloatingPointError(
          f"{name}: the loss is {scalars['loss']} at step {step}; lower "
          f"config.*.optim.learning_rate (now {optim.learning_rate}) and rerun: training "
          + (f"resumes from the last good checkpoint (step {last})" if last is not None
             else "starts again from step 0 (no checkpoint was saved yet)"))
    writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
    logging.info("%s: step %d/%d (%.0f%%) loss %.4f", name, step, optim.num_steps,
                 100 * step / optim.num_steps, scalars["loss"])

  def _run_eval(self, state: TrainState, step: int, eval_batches, writer) -> dict[str, float]:
    scalars = self.evaluate(state, eval_batches())
    if jax.process_index() == 0:
      files.write_json(self.metrics_path, dict(scalars, step=step))
    writer.write_scalars(step, {f"eval/{k}": v for k, v in scalars.items()})
    if self.task.write_previews is not None:
      self.task.write_previews(merge_model(self.task.graphdef, state), next(eval_batches()), writer,
                               step)
    logging.info("%s: eval at step %d: %s", self.task.name, step,
                 ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    return dict(scalars, step=step)
