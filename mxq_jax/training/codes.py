"""The joint codes of the frozen stage-1 model: encoded once into the workdir, read by stage 2.

Layout, versioned by the stage-1 checkpoint step that produced the codes:

  {workdir}/codes/stage1_step_{S}/{split}-{p:05d}-of-{P:05d}.npy   process p's examples
  {workdir}/codes/stage1_step_{S}/meta.json                         written last: "complete"

Each process encodes and writes its own slice of a split (unmasked inputs, eval mode); process 0
writes meta.json after all shards are on disk, so a directory without it is never trusted and
is simply re-encoded. Readers take every shard and keep their own slice, so the codes serve any
number of processes. `on_the_fly` is the alternative that writes nothing.
"""

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mxq_jax import config_lib, files, interrupts, sharding
from mxq_jax.training import checkpoints, stage1, trainer as trainer_lib

if TYPE_CHECKING:  # the data pipeline imports TensorFlow: only where data is read.
  from mxq_jax.data import pipeline

FORMAT_VERSION = 1
SPLITS = ("train", "test")


def codes_dir(workdir: str, stage1_step: int) -> str:
  return os.path.join(workdir, "codes", f"stage1_step_{stage1_step}")


def storage_dtype(num_codes: int) -> np.dtype:
  return np.dtype(np.uint16 if num_codes <= 2**16 else np.int32)


def make_encode_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """Jitted (stage-1 state, {'image', 'tokens', ...}) -> int32 codes [B, N], batch-sharded."""
  graphdef = stage1.make_task(config).graphdef

  def encode(state: trainer_lib.TrainState, batch) -> jax.Array:
    return trainer_lib.merge_model(graphdef, state).encode(batch["image"], batch["tokens"])

  return jax.jit(encode, out_shardings=sharding.batch_sharding(mesh))


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order (each row once)."""
  shards = {s.index[0].start or 0: s.data for s in array.addressable_shards}
  return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])


def is_complete(directory: str) -> bool:
  return files.exists(os.path.join(directory, "meta.json"))


def encode_splits(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                  splits: "pipeline.DataSplits", state: trainer_lib.TrainState,
                  stage1_step: int) -> str:
  """Writes the codes of both splits for the stage-1 `state` of `stage1_step`; returns the dir."""
  from mxq_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  directory = codes_dir(workdir, stage1_step)
  encode = make_encode_step(config, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  batch_size = config.vqvae.optim.batch_size
  dtype = storage_dtype(config_lib.code_vocabulary_size(config))
  start = time.perf_counter()
  for split in (splits.train, splits.test):
    rows = []
    for batch in pipeline.eval_batches(split, batch_size, batch_sharding):
      # Codes are written whole per split or not at all: a rerun encodes again (seconds).
      interrupts.check(f"encode: stopped with the {split.name} codes unwritten")
      rows.append(local_rows(encode(state, batch)))
    codes_nxN = np.concatenate(rows)[:split.num_examples].astype(dtype)
    name = f"{split.name}-{jax.process_index():05d}-of-{jax.process_count():05d}.npy"
    files.save_npy(os.path.join(directory, name), codes_nxN)
  multihost_utils.sync_global_devices("mxq_jax codes: shards written")
  if jax.process_index() == 0:
    files.write_json(os.path.join(directory, "meta.json"), {
        "format": FORMAT_VERSION,
        "stage1_step": stage1_step,
        "stage1_signature": stage1.model_signature(config),
        "num_codes": config_lib.code_vocabulary_size(config),
        "seq_len": config_lib.num_joint_codes(config),
        "examples": {split.name: split.num_global for split in (splits.train, splits.test)},
        "num_shards": jax.process_count(),
    })
  multihost_utils.sync_global_devices("mxq_jax codes: meta written")
  logging.info("encode: wrote the codes of %d train and %d test pairs to %s in %.1f s",
               splits.train.num_global, splits.test.num_global, directory,
               time.perf_counter() - start)
  return directory


def read_meta(directory: str) -> dict:
  return files.read_json(os.path.join(directory, "meta.json"))


def check_matches(directory: str, config: ml_collections.ConfigDict) -> None:
  """Refuses (one line) codes written by another stage-1 model or in another format."""
  meta = read_meta(directory)
  saved = {"format": meta.get("format"), **meta.get("stage1_signature", {})}
  checkpoints.check_compatible(
      {"signature": saved}, {"format": FORMAT_VERSION, **stage1.model_signature(config)},
      directory)


def load_codes(directory: str, split: str) -> np.ndarray:
  """This process's slice (examples p::P) of a split's codes, int32 [n, N]."""
  meta = read_meta(directory)
  paths = files.glob(directory, f"{split}-*-of-*.npy")
  if len(paths) != meta["num_shards"]:
    raise FileNotFoundError(
        f"{directory}: {len(paths)} {split} shards, meta.json says {meta['num_shards']}; "
        "delete the directory to re-encode")
  # Shard p holds global examples p::P; interleave back to the global order, then re-slice.
  shards = [files.load_npy(path) for path in paths]
  codes = np.empty((sum(len(s) for s in shards), meta["seq_len"]), np.int32)
  for p, shard in enumerate(shards):
    codes[p::len(shards)] = shard
  if len(codes) != meta["examples"][split]:
    raise ValueError(f"{directory}: {len(codes)} {split} codes, meta.json says "
                     f"{meta['examples'][split]}; delete the directory to re-encode")
  return codes[jax.process_index()::jax.process_count()]


def on_the_fly(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               state: trainer_lib.TrainState, pairs: Iterator[dict]) -> Iterator[dict]:
  """Stage-2 batches {'codes', ['valid']} encoded from a stream of stage-1 batches as they come."""
  encode = make_encode_step(config, mesh)
  for batch in pairs:
    out = {"codes": encode(state, batch)}
    if "valid" in batch:
      out["valid"] = batch["valid"]
    yield out
