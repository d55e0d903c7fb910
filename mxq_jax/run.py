"""`train_and_evaluate(config, workdir)`: runs the stages a workdir still needs, in order.

config.stages selects from stage1 (train the MXQ-VAE), encode (the joint codes of both splits,
once), stage2 (train the prior) and evaluate (generate pairs into {workdir}/samples and score
them). Each one resumes or skips from what the workdir holds, so
the same command continues an interrupted run and does nothing on a finished one.
"""

import functools
import json
import os

import jax
import ml_collections
from jax.experimental import multihost_utils
from absl import logging

from mxq_jax import checkpointing, codes as codes_lib, config_lib, sharding, stage1, stage2
from mxq_jax import train_lib
from mxq_jax.data import pipeline


def stage1_step_for_prior(config: ml_collections.ConfigDict, workdir: str) -> int | None:
  """The stage-1 checkpoint step whose codes the prior models: the end of stage-1 training
  when this run trains stage 1, otherwise the latest stage-1 checkpoint (None: none yet)."""
  if "stage1" in config_lib.parse_stages(config.stages):
    return config.vqvae.optim.num_steps
  return checkpointing.latest_step(checkpointing.checkpoint_dir(workdir, "stage1"))


def preflight(config: ml_collections.ConfigDict, workdir: str) -> jax.sharding.Mesh:
  """Every check that can fail before anything is written to the workdir."""
  config_lib.validate(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  checkpointing.check_directory(checkpointing.checkpoint_dir(workdir, "stage1"),
                                stage1.model_signature(config))
  stages = config_lib.parse_stages(config.stages)
  if "encode" in stages or "stage2" in stages:
    stage1_step = stage1_step_for_prior(config, workdir)
    if stage1_step is None:
      raise config_lib.ConfigError(
          f"config.stages={config.stages!r} needs a trained stage 1, and {workdir} has no "
          "stage-1 checkpoint; add stage1 to config.stages")
    if "stage2" in stages:
      checkpointing.check_directory(checkpointing.checkpoint_dir(workdir, "stage2"),
                                    stage2.model_signature(config, stage1_step))
  return mesh


def samples_dir(workdir: str) -> str:
  """Where the evaluate stage writes its generated pairs and their metrics.json."""
  return os.path.join(workdir, "samples")


def _is_trained(workdir: str, stage_name: str, optim: ml_collections.ConfigDict) -> bool:
  step = checkpointing.latest_step(checkpointing.checkpoint_dir(workdir, stage_name))
  return step is not None and step >= optim.num_steps


def pending_stages(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """The selected stages that still have work to do, in order."""
  stage1_step = stage1_step_for_prior(config, workdir)
  done = {
      "stage1": _is_trained(workdir, "stage1", config.vqvae.optim),
      "encode": config.prior.encode_on_the_fly or (
          stage1_step is not None
          and codes_lib.is_complete(codes_lib.codes_dir(workdir, stage1_step))),
      "stage2": _is_trained(workdir, "stage2", config.prior.optim),
      "evaluate": os.path.exists(os.path.join(samples_dir(workdir), "metrics.json")),
  }
  return [name for name in config_lib.parse_stages(config.stages) if not done[name]]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Runs the pending stages; returns each selected training stage's test-split metrics."""
  mesh = preflight(config, workdir)
  pending = pending_stages(config, workdir)
  metrics_of = lambda name: train_lib.read_json(os.path.join(workdir, name, "eval_metrics.json"))
  selected = config_lib.parse_stages(config.stages)
  if not pending:
    logging.info("%s: every selected stage (%s) is done; nothing to do", workdir,
                 ",".join(selected))
    return {name: metrics_of(name) for name in selected if name in ("stage1", "stage2")}

  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path) and jax.process_index() == 0:
    train_lib.write_json_atomically(config_path, config.to_dict())
  logging.info("stages to run: %s", ",".join(pending))

  splits = functools.cache(lambda: pipeline.load_splits(config, workdir))
  batch_sharding = sharding.batch_sharding(mesh)
  results = {}
  if "stage1" in pending:
    results["stage1"] = train_stage1(config, workdir, mesh, splits())
  if "encode" in pending or "stage2" in pending:
    stage1_step = stage1_step_for_prior(config, workdir)
    stage1_state, _ = train_lib.restore_trained(stage1.make_stage(config), workdir, mesh,
                                                stage1_step)
    if "encode" in pending:
      codes_lib.encode_splits(config, workdir, mesh, splits(), stage1_state, stage1_step)
    if "stage2" in pending:
      results["stage2"] = train_stage2(config, workdir, mesh, splits, stage1_state, stage1_step,
                                       batch_sharding)
  if "evaluate" in pending:
    results["evaluate"] = evaluate_samples(config, workdir, mesh, splits)
  for name in selected:
    if name in ("stage1", "stage2") and name not in results:
      results[name] = metrics_of(name)
  logging.info("test metrics: %s", json.dumps(results))
  return results


def train_stage1(config, workdir, mesh, splits: pipeline.DataSplits) -> dict[str, float]:
  stage = stage1.make_stage(config, splits.tokenizer)
  batch_sharding = sharding.batch_sharding(mesh)
  batch_size = config.vqvae.optim.batch_size
  _, metrics = train_lib.train_stage(
      stage, workdir=workdir, mesh=mesh, seed=config.seed,
      train_batches=lambda start: pipeline.train_batches(
          splits.train, batch_size, config.seed, start, batch_sharding,
          **pipeline.train_options(config.data)),
      eval_batches=lambda: pipeline.eval_batches(splits.test, batch_size, batch_sharding))
  return metrics


def train_stage2(config, workdir, mesh, splits, stage1_state, stage1_step: int,
                 batch_sharding) -> dict[str, float]:
  """The prior, on stored codes or (config.prior.encode_on_the_fly) on codes encoded per batch."""
  batch_size = config.prior.optim.batch_size
  seed = config.seed + 1  # its own data order and dropout, not stage 1's.
  if config.prior.encode_on_the_fly:
    train_batches = lambda start: codes_lib.on_the_fly(config, mesh, stage1_state, (
        pipeline.train_batches(splits().train, batch_size, seed, start, batch_sharding,
                               **pipeline.train_options(config.data))))
    eval_batches = lambda: codes_lib.on_the_fly(config, mesh, stage1_state, (
        pipeline.eval_batches(splits().test, batch_size, batch_sharding)))
  else:
    directory = codes_lib.codes_dir(workdir, stage1_step)
    codes_lib.check_matches(directory, config)
    train_codes = {"codes": codes_lib.load_codes(directory, "train")}
    test_codes = {"codes": codes_lib.load_codes(directory, "test")}
    num_test = codes_lib.read_meta(directory)["examples"]["test"]
    train_batches = lambda start: pipeline.array_train_batches(
        train_codes, batch_size, seed, start, batch_sharding,
        shuffle_buffer=config.data.shuffle_buffer, name="train codes")
    eval_batches = lambda: pipeline.array_eval_batches(
        test_codes, num_test, batch_size, batch_sharding)
  _, metrics = train_lib.train_stage(
      stage2.make_stage(config, stage1_step), workdir=workdir, mesh=mesh, seed=seed,
      train_batches=train_batches, eval_batches=eval_batches)
  return metrics


def evaluate_samples(config, workdir: str, mesh, splits) -> dict[str, float]:
  """Generates config.evaluation.num_samples pairs (config.sampling) and scores them."""
  from mxq_jax import evaluate, sample
  outdir = samples_dir(workdir)
  s = config.sampling
  batch_size = min(s.batch_size, config.evaluation.num_samples)
  batch_size -= batch_size % jax.device_count()
  summary = sample.generate(workdir, outdir, num_samples=config.evaluation.num_samples,
                            batch_size=max(batch_size, jax.device_count()), seed=config.seed,
                            top_k=s.top_k, top_p=s.top_p, temperature=s.temperature,
                            image_temperature=s.image_temperature,
                            overwrite=True)  # our own directory, incomplete (no metrics.json).
  multihost_utils.sync_global_devices("mxq_jax evaluate: samples written")
  logging.info("evaluate: generated %d pairs in %.1f s (%.1f pairs/s)", summary["pairs"],
               summary["seconds"], summary["pairs_per_s"])
  metrics = evaluate.evaluate_samples(config, workdir, outdir, mesh, splits())
  logging.info("evaluate: %s", json.dumps(metrics))
  return metrics
