"""Input pipeline: TFDS splits in host memory, caption tokens, sharded global batches.

The datasets are small (tens of thousands of 32-64 px images), so each split is read once into
numpy and each process keeps its own slice. Training batches come from tf.data (a seeded
shuffle per epoch, exact resume at any step); evaluation batches are one ordered, padded pass.
Both yield global jax.Arrays laid out by the caller's NamedSharding (batch axis sharded).
"""

from collections.abc import Callable, Iterator
import dataclasses
import math
import os
import time
from typing import TypeVar

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mxq_jax.data import caption_attributes
from mxq_jax.data import caption_digits
from mxq_jax.data import tokenizer as tokenizer_lib
from mxq_jax.data.normalization import (  # re-exported: the pipeline's public API.
    IMAGENET_MEAN, IMAGENET_STD, denormalize_images, normalize_images)

caption_digits.hide_gpus_from_tensorflow()  # tf.data runs on the host, never on a GPU.

SUPPORTED_DATASETS = ("caption_digits",)
LABEL_KEYS = ("digit", "color", "position", "size", "template")
_MAX_EPOCHS = 2**40  # "forever" for the training stream.

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split, this process's slice of it, in host memory."""

  name: str
  images: np.ndarray  # uint8 [n, H, W, 3].
  tokens: np.ndarray  # int32 [n, text_length]: BOS + pieces + EOS + PAD.
  captions: np.ndarray  # str (object) [n].
  labels: dict[str, np.ndarray]  # int64 [n] each, keys LABEL_KEYS (for evaluation).
  num_global: int  # examples over all processes.
  num_truncated: int  # captions over all processes cut to fit text_length.

  @property
  def num_examples(self) -> int:
    return len(self.images)


@dataclasses.dataclass(frozen=True)
class DataSplits:
  train: Split
  test: Split
  tokenizer: tokenizer_lib.Tokenizer
  label_names: dict[str, tuple[str, ...]]  # ClassLabel names of the labels that have them.


def _process_zero_first(fn: Callable[[], T], name: str) -> T:
  """fn() on process 0, then on the others: one writer for files on a shared disk."""
  if jax.process_count() == 1:
    return fn()
  result = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(name)
  return result if jax.process_index() == 0 else fn()


def _read_split(builder: tfds.core.DatasetBuilder, name: str) -> dict[str, np.ndarray]:
  data = tfds.as_numpy(builder.as_dataset(split=name, batch_size=-1, shuffle_files=False))
  data["caption"] = np.array([c.decode("utf-8") for c in data["caption"]], dtype=object)
  return data


def _make_split(name: str, data: dict[str, np.ndarray], tokenizer: tokenizer_lib.Tokenizer,
                text_length: int) -> Split:
  tokens, num_truncated = tokenizer.encode(list(data["caption"]), text_length)
  n = len(tokens)
  if num_truncated:
    logging.warning("data %s: %d of %d captions are longer than config.data.text_length=%d "
                    "tokens and were cut (EOS kept); raise text_length or vocab_size to avoid it",
                    name, num_truncated, n, text_length)
  else:
    logging.info("data %s: %d examples, no caption truncated at %d tokens", name, n, text_length)
  mine = slice(jax.process_index(), None, jax.process_count())
  return Split(
      name=name, images=data["image"][mine], tokens=tokens[mine], captions=data["caption"][mine],
      labels={key: data[key][mine] for key in LABEL_KEYS}, num_global=n,
      num_truncated=num_truncated)


def load_splits(config: ml_collections.ConfigDict, workdir: str) -> DataSplits:
  """Train and test splits of config.data, with the tokenizer at {workdir}/tokenizer.model.

  Builds the dataset if needed, trains the tokenizer on the train captions (or reuses it).
  """
  data_config = config.data
  if data_config.name not in SUPPORTED_DATASETS:
    raise ValueError(f"config.data.name={data_config.name!r} is not supported; use one of "
                     f"{', '.join(SUPPORTED_DATASETS)}")
  start = time.perf_counter()
  builder = _process_zero_first(lambda: caption_digits.build_caption_digits(data_config),
                                "mxq_jax data: dataset built")
  raw = {name: _read_split(builder, name) for name in ("train", "test")}
  tokenizer = _process_zero_first(
      lambda: tokenizer_lib.load_or_train(os.path.join(workdir, "tokenizer.model"),
                                          raw["train"]["caption"], data_config.vocab_size,
                                          required_chars=caption_attributes.alphabet()),
      "mxq_jax data: tokenizer written")
  splits = {name: _make_split(name, raw[name], tokenizer, data_config.text_length)
            for name in raw}
  features = builder.info.features
  label_names = {key: tuple(features[key].names) for key in LABEL_KEYS
                 if isinstance(features[key], tfds.features.ClassLabel)}
  logging.info("data: loaded %s (train %d, test %d; %d per process) in %.1f s",
               builder.builder_config.name, splits["train"].num_global,
               splits["test"].num_global, splits["train"].num_examples,
               time.perf_counter() - start)
  return DataSplits(train=splits["train"], test=splits["test"], tokenizer=tokenizer,
                    label_names=label_names)


def _local_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch size {global_batch_size} must be divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def _to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in batch.items()}


def _index_stream(num_examples: int, shuffle_buffer: int, seed: int,
                  first_epoch: int) -> tf.data.Dataset:
  """Example indices, epoch after epoch from first_epoch, each epoch shuffled by (seed, epoch).

  A seed per epoch (not one reshuffling iterator) makes epoch e's order a pure function of
  (seed, e): resuming starts at the right epoch directly instead of replaying the ones before.
  """
  def one_epoch(epoch):
    return tf.data.Dataset.range(num_examples).shuffle(
        shuffle_buffer, seed=tf.constant(seed, tf.int64) * 1_000_003 + epoch)
  return tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(one_epoch)


def array_train_batches(arrays: dict[str, np.ndarray], global_batch_size: int, seed: int,
                        start_step: int, sharding: jax.sharding.Sharding,
                        shuffle_buffer: int | None = None, transform: Callable | None = None,
                        name: str = "train") -> Iterator[dict[str, jax.Array]]:
  """Endless shuffled batches of this process's `arrays` (same first dimension), as global arrays.

  B = global_batch_size, sharded by `sharding`. The stream is a pure function of (seed, this
  process's data): from start_step it yields exactly what a fresh stream yields from its
  start_step-th batch on. shuffle_buffer: examples (None or more than the data: all of it).
  `transform` maps a dict of tf batches to another (inside tf.data, in parallel).
  """
  local_batch = _local_batch_size(global_batch_size)
  n = len(next(iter(arrays.values())))
  if n < local_batch:
    raise ValueError(f"split {name} has {n} examples per process, fewer than the "
                     f"per-process batch {local_batch}")
  buffer = n if shuffle_buffer is None else max(1, min(shuffle_buffer, n))
  first_epoch, offset = divmod(start_step * local_batch, n)
  tensors = {key: tf.constant(value) for key, value in arrays.items()}

  def gather(indices_B):
    batch = {key: tf.gather(value, indices_B) for key, value in tensors.items()}
    return transform(batch) if transform else batch

  ds = (_index_stream(n, buffer, seed, first_epoch)
        .skip(offset)
        .batch(local_batch, drop_remainder=True)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE))
  for batch in ds.as_numpy_iterator():
    yield _to_global(batch, sharding)


def array_eval_batches(arrays: dict[str, np.ndarray], num_global: int, global_batch_size: int,
                       sharding: jax.sharding.Sharding, transform: Callable | None = None
                       ) -> Iterator[dict[str, jax.Array]]:
  """One ordered pass over this process's `arrays`, plus 'valid': f32 [B] (1 real, 0 padding).

  The last batch is zero-padded to full size; every process yields the same number of batches
  (num_global: examples over all processes).
  """
  local_batch = _local_batch_size(global_batch_size)
  most_per_process = math.ceil(num_global / jax.process_count())
  for start in range(0, most_per_process, local_batch):
    batch = {key: value[start:start + local_batch] for key, value in arrays.items()}
    real = len(next(iter(batch.values())))
    pad = local_batch - real
    batch = {key: np.pad(value, [(0, pad)] + [(0, 0)] * (value.ndim - 1))
             for key, value in batch.items()}
    batch = transform(batch) if transform else batch
    batch["valid"] = np.pad(np.ones(real, np.float32), [(0, pad)])
    yield _to_global(batch, sharding)


def normalize_image_batch(batch: dict) -> dict:
  return dict(batch, image=normalize_images(batch["image"]))


def train_batches(split: Split, global_batch_size: int, seed: int, start_step: int,
                  sharding: jax.sharding.Sharding,
                  shuffle_buffer: int | None = None) -> Iterator[dict[str, jax.Array]]:
  """Endless training pairs {'image': f32 [B, H, W, 3] normalized, 'tokens': i32 [B, L]}."""
  return array_train_batches({"image": split.images, "tokens": split.tokens}, global_batch_size,
                             seed, start_step, sharding, shuffle_buffer, normalize_image_batch,
                             split.name)


def eval_batches(split: Split, global_batch_size: int,
                 sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  """One ordered pass of pairs: {'image', 'tokens', 'valid'}; PAD (0) tokens in padding rows."""
  assert tokenizer_lib.PAD_ID == 0  # zero padding of the token rows is PAD.
  return array_eval_batches({"image": split.images, "tokens": split.tokens}, split.num_global,
                            global_batch_size, sharding, normalize_image_batch)
