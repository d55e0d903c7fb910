"""`train_and_evaluate(config, workdir)`: runs the stages a workdir still needs, in order."""

import json
import os

import jax
import ml_collections
from absl import logging

from mxq_jax import checkpointing, config_lib, sharding, stage1, train_lib
from mxq_jax.data import pipeline


def preflight(config: ml_collections.ConfigDict, workdir: str) -> jax.sharding.Mesh:
  """Every check that can fail before anything is written to the workdir."""
  config_lib.validate(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  checkpointing.check_directory(checkpointing.checkpoint_dir(workdir, "stage1"),
                                stage1.model_signature(config))
  return mesh


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains stage 1 (resuming where the workdir left off); returns its test-split metrics."""
  mesh = preflight(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path) and jax.process_index() == 0:
    train_lib.write_json_atomically(config_path, config.to_dict())

  splits = pipeline.load_splits(config, workdir)
  stage = stage1.make_stage(config, splits.tokenizer)
  batch_sharding = sharding.batch_sharding(mesh)
  batch_size = config.vqvae.optim.batch_size
  _, metrics = train_lib.train_stage(
      stage, workdir=workdir, mesh=mesh, seed=config.seed,
      train_batches=lambda start: pipeline.train_batches(
          splits.train, batch_size, config.seed, start, batch_sharding,
          shuffle_buffer=config.data.shuffle_buffer),
      eval_batches=lambda: pipeline.eval_batches(splits.test, batch_size, batch_sharding))

  logging.info("stage1 test metrics: %s", json.dumps(metrics))
  return metrics
