"""A run's context: what every stage of one run shares, computed once and handed down.

The config, the workdir, the mesh, the data (loaded on first use), the stage-1 step whose codes
the prior models, and the trained models: a state that this run trained is kept as it is, one
it did not is restored from its checkpoint the first time a stage asks for it, and never again.

`for_training` opens the context of `python -m mxq_jax.main`; `for_trained_workdir` that of the
commands that read a finished workdir (`sample`, `evaluate`), whose prior's checkpoint record
names the stage-1 step.
"""

import dataclasses
import functools
import os
from typing import TYPE_CHECKING

import jax
import ml_collections

from mxq_jax import config_lib, files, sharding
from mxq_jax.data import tokenizer as tokenizer_lib
from mxq_jax.training import checkpoints, stage1, stage2, trainer as trainer_lib

if TYPE_CHECKING:  # the data pipeline imports TensorFlow: only where data is read.
  from mxq_jax.data import pipeline


@dataclasses.dataclass
class RunContext:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  stage1_step: int | None  # the stage-1 checkpoint the prior models; None: there is none yet.
  # Trained or restored states by task name ("stage1", "stage2", "classifier").
  states: dict[str, trainer_lib.TrainState] = dataclasses.field(default_factory=dict)
  steps: dict[str, int] = dataclasses.field(default_factory=dict)  # their steps.

  @functools.cached_property
  def data(self) -> "pipeline.DataSplits":
    """Both splits and the tokenizer, built and loaded on first use."""
    from mxq_jax.data import pipeline  # TensorFlow: `sample` reads no data and never loads it.
    return pipeline.load_splits(self.config, self.workdir)

  @functools.cached_property
  def tokenizer(self) -> tokenizer_lib.Tokenizer:
    """The workdir's tokenizer: the data's when loaded, else read from the workdir alone."""
    if "data" in self.__dict__:  # cached_property stores the loaded data there.
      return self.data.tokenizer
    return tokenizer_lib.Tokenizer.load(os.path.join(self.workdir, "tokenizer.model"))

  @functools.cached_property
  def stage1_task(self) -> trainer_lib.Task:
    """The MXQ-VAE's task, for restoring and using it (training adds previews)."""
    return stage1.make_task(self.config)

  @functools.cached_property
  def stage2_task(self) -> trainer_lib.Task:
    return stage2.make_task(self.config, self.stage1_step)

  def keep(self, name: str, state: trainer_lib.TrainState, step: int) -> None:
    """Hands a state this run trained to the later stages, which then restore nothing."""
    self.states[name], self.steps[name] = state, step

  def state(self, task: trainer_lib.Task, step: int | None = None) -> trainer_lib.TrainState:
    """The task's state: kept by this run, or restored from `step` (default: latest) once."""
    if task.name not in self.states:
      self.keep(task.name, *trainer_lib.restore_trained(task, self.workdir, self.mesh, step))
    return self.states[task.name]

  def stage1_state(self) -> trainer_lib.TrainState:
    return self.state(self.stage1_task, self.stage1_step)

  def prior_state(self) -> trainer_lib.TrainState:
    return self.state(self.stage2_task)

  def prior_step(self) -> int:
    """The step of the prior the pairs come from: kept by this run, else the latest (0: none)."""
    if "stage2" in self.steps:
      return self.steps["stage2"]
    return checkpoints.latest_step(checkpoints.checkpoint_dir(self.workdir, "stage2")) or 0

  def metrics(self, name: str) -> dict:
    """A training task's last test-split metrics ({workdir}/{name}/eval_metrics.json)."""
    return files.read_json(os.path.join(self.workdir, name, "eval_metrics.json"))


def _stage1_step_for_training(config: ml_collections.ConfigDict, workdir: str) -> int | None:
  """The end of stage-1 training when this run trains stage 1, else the latest checkpoint."""
  if "stage1" in config_lib.parse_stages(config.stages):
    return config.vqvae.optim.num_steps
  return checkpoints.latest_step(checkpoints.checkpoint_dir(workdir, "stage1"))


def for_training(config: ml_collections.ConfigDict, workdir: str) -> RunContext:
  """The context of a training run, after every check that can fail before anything is
  written: the config, the mesh, and the workdir's checkpoints against this config."""
  config_lib.validate(config, jax.device_count())
  context = RunContext(config, workdir, sharding.make_mesh(config.mesh),
                       _stage1_step_for_training(config, workdir))
  checkpoints.check_directory(checkpoints.checkpoint_dir(workdir, "stage1"),
                              context.stage1_task.checkpoint_signature)
  stages = config_lib.parse_stages(config.stages)
  if "encode" in stages or "stage2" in stages:
    if context.stage1_step is None:
      raise config_lib.ConfigError(
          f"config.stages={config.stages!r} needs a trained stage 1, and {workdir} has no "
          "stage-1 checkpoint; add stage1 to config.stages")
    if "stage2" in stages:
      checkpoints.check_directory(checkpoints.checkpoint_dir(workdir, "stage2"),
                                  context.stage2_task.checkpoint_signature)
  return context


def for_trained_workdir(workdir: str) -> RunContext:
  """The context of a finished workdir: its config.json, the stage-1 step its prior models.

  ConfigError (one line) when the workdir holds no config or no prior checkpoint.
  """
  config_path = os.path.join(workdir, "config.json")
  if not files.exists(config_path):
    raise config_lib.ConfigError(
        f"--workdir={workdir} holds no config.json: it is not a workdir trained by "
        "`python -m mxq_jax.main`")
  config = config_lib.from_json_file(config_path)
  prior_dir = checkpoints.checkpoint_dir(workdir, "stage2")
  meta = checkpoints.read_latest_meta(prior_dir)
  if meta is None:
    raise config_lib.ConfigError(
        f"{prior_dir} holds no prior checkpoint; train stage 2 first with "
        f"`python -m mxq_jax.main --config=... --workdir={workdir}`")
  return RunContext(config, workdir, sharding.make_inference_mesh(config.mesh),
                    meta["signature"]["stage1_step"])


def restore_for_sampling(context: RunContext):
  """(prior state, stage-1 state): the prior's latest checkpoint and the stage-1 checkpoint
  whose codes it models; a workdir that cannot provide the latter is refused in one line."""
  prior = context.prior_state()
  try:
    return prior, context.stage1_state()
  except config_lib.ConfigError as error:
    raise config_lib.ConfigError(
        f"the prior (stage2 step {context.steps['stage2']}) models the codes of stage-1 step "
        f"{context.stage1_step}, which this workdir cannot provide: {error}") from None
