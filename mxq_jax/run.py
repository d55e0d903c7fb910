"""`train_and_evaluate(config, workdir)`: runs the stages a workdir still needs, in order.

config.stages selects from stage1 (train the MXQ-VAE), encode (the joint codes of both splits,
once), stage2 (train the prior) and evaluate (generate pairs into {workdir}/samples and score
them). Each one resumes or skips from what the workdir holds, so the same command continues an
interrupted run and does nothing on a finished one. The stages share one `RunContext`: the data
is loaded once, and each model is trained or restored once and handed to the later stages.
"""

import json
import os
from collections.abc import Callable

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from mxq_jax import config_lib, context as context_lib, files, sharding, workdir as workdir_lib
from mxq_jax.evaluation import evaluator
from mxq_jax.generation import generate
from mxq_jax.training import checkpoints, codes as codes_lib, stage1, trainer as trainer_lib
# Not the input pipeline: it imports TensorFlow (about 5 s), so the stages that read data import
# it, and a finished workdir's "nothing to do" or a refused config take 2-3 s.

RunContext = context_lib.RunContext
TRAINED_STAGES = ("stage1", "stage2")  # the stages with test-split metrics.


def samples_dir(workdir: str) -> str:
  """Where the evaluate stage writes its generated pairs and their metrics.json."""
  return os.path.join(workdir, "samples")


def _is_trained(context: RunContext, name: str, optim: ml_collections.ConfigDict) -> bool:
  step = checkpoints.latest_step(checkpoints.checkpoint_dir(context.workdir, name))
  return step is not None and step >= optim.num_steps


def _generated_by(context: RunContext) -> dict:
  """What the evaluate stage's pairs come from: the prior's step, how many, the seed and the
  sampling settings (kept in its metrics.json)."""
  config = context.config
  return {"stage2_step": context.prior_step(), "num_samples": config.evaluation.num_samples,
          "seed": config.seed, **generate.sampling_settings(config)}


def _is_evaluated(context: RunContext) -> bool:
  """metrics.json exists and was made by today's prior and settings (one written before they
  were recorded counts as current)."""
  path = os.path.join(samples_dir(context.workdir), evaluator.METRICS_NAME)
  if not files.exists(path):
    return False
  generated_by = json.loads(files.read_text(path)).get("generated_by")
  return generated_by is None or generated_by == _generated_by(context)


def pending_stages(context: RunContext) -> list[str]:
  """The selected stages that still have work to do, in order."""
  config, step = context.config, context.stage1_step
  done = {
      "stage1": _is_trained(context, "stage1", config.vqvae.optim),
      "encode": config.prior.encode_on_the_fly or (
          step is not None
          and codes_lib.is_complete(codes_lib.codes_dir(context.workdir, step))),
      "stage2": _is_trained(context, "stage2", config.prior.optim),
  }
  # A prior still to train makes new pairs to score.
  done["evaluate"] = done["stage2"] and _is_evaluated(context)
  return [name for name in config_lib.parse_stages(config.stages) if not done[name]]


# -------------------------------------------------------------------------------- the stages


def _fit(context: RunContext, task: trainer_lib.Task, seed: int, train_batches,
         eval_batches) -> dict[str, float]:
  """Trains `task`, hands its final state to the later stages; returns its test metrics."""
  trainer = trainer_lib.Trainer(task, workdir=context.workdir, mesh=context.mesh, seed=seed,
                                hparams=context.config.to_dict())
  state, metrics = trainer.fit(train_batches, eval_batches)
  context.keep(task.name, state, int(state.step))
  return metrics


def train_stage1(context: RunContext) -> dict[str, float]:
  """The MXQ-VAE on masked pairs of the training split; scored on the test split."""
  from mxq_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config, splits = context.config, context.data
  batch_size, batch_sharding = config.vqvae.optim.batch_size, sharding.batch_sharding(context.mesh)
  return _fit(
      context, stage1.make_task(config, splits.tokenizer), config.seed,  # with previews.
      train_batches=lambda start: pipeline.train_batches(
          splits.train, batch_size, config.seed, start, batch_sharding,
          **pipeline.train_options(config.data)),
      eval_batches=lambda: pipeline.eval_batches(splits.test, batch_size, batch_sharding))


def encode(context: RunContext) -> None:
  """The frozen stage-1 model's joint codes of both splits, into the workdir, once."""
  codes_lib.encode_splits(context.config, context.workdir, context.mesh, context.data,
                          context.stage1_state(), context.stage1_step)


def _prior_batches(context: RunContext, seed: int) -> tuple[Callable, Callable]:
  """(train_batches, eval_batches) of codes: stored ones, or encoded per batch on the fly."""
  from mxq_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config, batch_size = context.config, context.config.prior.optim.batch_size
  batch_sharding = sharding.batch_sharding(context.mesh)
  if config.prior.encode_on_the_fly:
    pairs_to_codes = lambda pairs: codes_lib.on_the_fly(config, context.mesh,
                                                        context.stage1_state(), pairs)
    return (lambda start: pairs_to_codes(pipeline.train_batches(
                context.data.train, batch_size, seed, start, batch_sharding,
                **pipeline.train_options(config.data))),
            lambda: pairs_to_codes(pipeline.eval_batches(context.data.test, batch_size,
                                                         batch_sharding)))
  directory = codes_lib.codes_dir(context.workdir, context.stage1_step)
  codes_lib.check_matches(directory, config)
  train_codes = {"codes": codes_lib.load_codes(directory, "train")}
  test_codes = {"codes": codes_lib.load_codes(directory, "test")}
  num_test = codes_lib.read_meta(directory)["examples"]["test"]
  return (lambda start: pipeline.array_train_batches(
              train_codes, batch_size, seed, start, batch_sharding,
              shuffle_buffer=config.data.shuffle_buffer, name="train codes"),
          lambda: pipeline.array_eval_batches(test_codes, num_test, batch_size, batch_sharding))


def train_stage2(context: RunContext) -> dict[str, float]:
  """The prior over the stage-1 codes; scored by its test-split NLL."""
  seed = context.config.seed + 1  # its own data order and dropout, not stage 1's.
  return _fit(context, context.stage2_task, seed, *_prior_batches(context, seed))


def evaluate(context: RunContext) -> dict[str, float]:
  """Generates config.evaluation.num_samples pairs (config.sampling) and scores them."""
  config, outdir = context.config, samples_dir(context.workdir)
  batch_size = config_lib.evaluation_batch_size(config, jax.device_count())
  summary = generate.generate_pairs(
      context, outdir, num_samples=config.evaluation.num_samples, batch_size=batch_size,
      seed=config.seed, overwrite=True)  # our own directory, incomplete (no metrics.json).
  multihost_utils.sync_global_devices("mxq_jax evaluate: samples written")
  logging.info("evaluate: generated %d pairs in %.1f s (%.1f pairs/s)", summary["pairs"],
               summary["seconds"], summary["pairs_per_s"])
  return evaluator.evaluate_samples(context, outdir, generated_by=_generated_by(context))


STAGES: dict[str, Callable[[RunContext], dict | None]] = {
    "stage1": train_stage1, "encode": encode, "stage2": train_stage2, "evaluate": evaluate}


def _check_enough_examples(context: RunContext) -> None:
  """Refuses (one line) a train split smaller than a batch, before anything is trained."""
  config, num = context.config, context.data.train.num_examples
  for field, optim in (("vqvae.optim", config.vqvae.optim), ("prior.optim", config.prior.optim),
                       ("evaluation.classifier_optim", config.evaluation.classifier_optim)):
    per_process = optim.batch_size // jax.process_count()
    if num < per_process:
      raise config_lib.ConfigError(
          f"the train split of {config.data.name} has {num} usable examples per process, "
          f"fewer than a batch (config.{field}.batch_size={optim.batch_size}); lower the "
          "batch size or add data")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Runs the pending stages; returns the metrics of each stage that ran, and the test
  metrics of the selected training stages that did not.

  The workdir is locked for the run (`workdir.hold`); config.json (`workdir.record_config`) is
  written only once the checks, the data and the tokenizer succeeded, and a first run that
  fails before that leaves the workdir as it found it.
  """
  context = context_lib.for_training(config, workdir)
  with workdir_lib.hold(workdir):
    pending = pending_stages(context)
    selected = config_lib.parse_stages(config.stages)
    if not pending:
      logging.info("%s: every selected stage (%s) is done; nothing to do", workdir,
                   ",".join(selected))
      return {name: context.metrics(name) for name in selected if name in TRAINED_STAGES}
    if set(pending) - {"stage2"} or config.prior.encode_on_the_fly:  # stages that read data.
      _check_enough_examples(context)
    if jax.process_index() == 0:
      workdir_lib.record_config(workdir, config.to_dict())
    logging.info("stages to run: %s", ",".join(pending))
    results = {}
    for name in pending:
      metrics = STAGES[name](context)
      if metrics is not None:
        results[name] = metrics
  for name in selected:
    if name in TRAINED_STAGES and name not in results:
      results[name] = context.metrics(name)
  logging.info("test metrics: %s", json.dumps(results))
  return results
