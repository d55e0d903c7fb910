"""Input pipeline: TFDS splits in host memory, caption tokens, sharded global batches.

Each split is read once into numpy at the configured image size (the real datasets through
`prepared`, which caches their resized, center-cropped images beside the TFDS data) and each
process keeps its own slice. Training batches come from tf.data (a seeded shuffle per epoch,
exact resume at any step), which also draws one of an image's captions per epoch and flips
images when configured; evaluation batches are one ordered, padded pass over each image with
its first caption. Both yield global jax.Arrays laid out by the caller's NamedSharding.
"""

from collections.abc import Callable, Iterator
import dataclasses
import functools
import math
import os
import time
from typing import TypeVar

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mxq_jax import files
from mxq_jax.host_tensorflow import tf
from mxq_jax.data import caption_attributes
from mxq_jax.data import caption_digits
from mxq_jax.data import prepared
from mxq_jax.data import tokenizer as tokenizer_lib
from mxq_jax.data.normalization import (  # re-exported: the pipeline's public API.
    IMAGENET_MEAN, IMAGENET_STD, denormalize_images, normalize_images)

# Datasets whose examples carry caption_attributes labels (the evaluation's classifier and
# parser apply), and real datasets of photos with several captions each.
ATTRIBUTE_DATASETS = ("caption_digits", "caption_mnist")
SUPPORTED_DATASETS = ATTRIBUTE_DATASETS + prepared.CAPTIONED_DATASETS
LABEL_KEYS = ("digit", "color", "position", "size", "template")
_MAX_EPOCHS = 2**40  # "forever" for the training stream.

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split, this process's slice of it, in host memory."""

  name: str
  images: np.ndarray  # uint8 [n, H, W, 3].
  tokens: np.ndarray  # int32 [n, text_length]: the first caption, BOS + pieces + EOS + PAD.
  captions: np.ndarray  # str (object) [n]: the first caption of each image.
  labels: dict[str, np.ndarray]  # int64 [n] each, keys LABEL_KEYS (attribute datasets only).
  num_global: int  # examples over all processes.
  num_truncated: int  # captions over all processes cut to fit text_length.
  # Images with several captions (None when each has one): every caption's tokens, PAD rows
  # past an image's count, and the count.
  all_tokens: np.ndarray | None = None  # int32 [n, C, text_length].
  num_captions: np.ndarray | None = None  # int32 [n], in [1, C].
  all_captions: tuple[str, ...] | None = None  # every caption of the n images, in order.

  @property
  def every_caption(self) -> tuple[str, ...]:
    """All captions of this slice's images (novelty is scored against every one of them)."""
    return self.all_captions if self.all_captions is not None else tuple(self.captions)

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


@dataclasses.dataclass(frozen=True)
class _RawSplit:
  """A whole split as read from TFDS, before tokenizing and slicing per process."""
  images: np.ndarray  # uint8 [n, S, S, 3].
  captions: list[list[str]]  # every caption of each image, >= 1 each.
  labels: dict[str, np.ndarray]  # int64 [n] each (attribute datasets; {} otherwise).


def _read_attribute_split(builder: tfds.core.DatasetBuilder, name: str) -> _RawSplit:
  data = tfds.as_numpy(builder.as_dataset(split=name, batch_size=-1, shuffle_files=False))
  return _RawSplit(images=data["image"],
                   captions=[[c.decode("utf-8")] for c in data["caption"]],
                   labels={key: data[key] for key in LABEL_KEYS})


def _read_captioned_split(builder: tfds.core.DatasetBuilder, name: str,
                          data_config: ml_collections.ConfigDict) -> _RawSplit:
  images, captions = prepared.load(builder, name, data_config.image_size)
  normalize = (lambda c: " ".join(c.lower().split())) if data_config.lowercase else str.strip
  return _RawSplit(images=images, captions=[[normalize(c) for c in cs] for cs in captions],
                   labels={})


def _tokenize_all(tokenizer: tokenizer_lib.Tokenizer, captions: list[list[str]],
                  text_length: int) -> tuple[np.ndarray, np.ndarray, int]:
  """(tokens int32 [n, C, L], counts int32 [n], captions truncated): PAD rows past a count."""
  counts_n = np.array([len(cs) for cs in captions], np.int32)
  flat, num_truncated = tokenizer.encode([c for cs in captions for c in cs], text_length)
  tokens_nxCxL = np.full((len(captions), counts_n.max(initial=1), text_length),
                         tokenizer_lib.PAD_ID, np.int32)
  rows_n = np.repeat(np.arange(len(captions)), counts_n)
  columns_n = np.arange(len(flat)) - np.repeat(np.cumsum(counts_n) - counts_n, counts_n)
  tokens_nxCxL[rows_n, columns_n] = flat
  return tokens_nxCxL, counts_n, num_truncated


def _make_split(name: str, raw: _RawSplit, tokenizer: tokenizer_lib.Tokenizer,
                text_length: int) -> Split:
  all_tokens, counts, num_truncated = _tokenize_all(tokenizer, raw.captions, text_length)
  n, num_total = len(counts), int(counts.sum())
  if num_truncated:
    logging.warning("data %s: %d of %d captions are longer than config.data.text_length=%d "
                    "tokens and were cut (EOS kept); raise text_length or vocab_size to avoid it",
                    name, num_truncated, num_total, text_length)
  else:
    logging.info("data %s: %d images, %d captions, none truncated at %d tokens", name, n,
                 num_total, text_length)
  mine = slice(jax.process_index(), None, jax.process_count())
  several = all_tokens.shape[1] > 1
  return Split(
      name=name, images=raw.images[mine], tokens=all_tokens[mine, 0],
      captions=np.array([cs[0] for cs in raw.captions], dtype=object)[mine],
      labels={key: value[mine] for key, value in raw.labels.items()}, num_global=n,
      num_truncated=num_truncated,
      all_tokens=all_tokens[mine] if several else None,
      num_captions=counts[mine] if several else None,
      all_captions=tuple(c for cs in raw.captions[mine] for c in cs) if several else None)


def _build(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  if data_config.name == "caption_digits":
    return caption_digits.build_caption_digits(data_config)
  if data_config.name == "caption_mnist":
    from mxq_jax.data import caption_mnist  # pylint: disable=g-import-not-at-top
    return caption_mnist.build_caption_mnist(data_config)
  return prepared.build(data_config)


def _tokenizer(data_config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
               train_captions: list[list[str]], workdir: str) -> tokenizer_lib.Tokenizer:
  """The workdir's tokenizer, else the dataset's (trained once, beside the TFDS data) copied in.

  The copy in the workdir is what the model was trained with: it stays, whatever happens to
  the data directory.
  """
  workdir_path = os.path.join(workdir, "tokenizer.model")
  if not files.exists(workdir_path):
    variant = f"{data_config.vocab_size}{'-lower' if data_config.lowercase else ''}"
    if data_config.name in ATTRIBUTE_DATASETS:
      variant = str(data_config.vocab_size)  # their captions are lowercase already.
    dataset_path = os.path.join(builder.data_dir, f"tokenizer-{variant}.model")
    required = caption_attributes.alphabet() if data_config.name in ATTRIBUTE_DATASETS else ""
    tokenizer_lib.load_or_train(dataset_path, [c for cs in train_captions for c in cs],
                                data_config.vocab_size, required_chars=required)
    files.write_bytes(workdir_path, files.read_bytes(dataset_path))
  return tokenizer_lib.load_or_train(workdir_path, (), data_config.vocab_size)


def load_splits(config: ml_collections.ConfigDict, workdir: str) -> DataSplits:
  """Train and test splits of config.data, with the tokenizer at {workdir}/tokenizer.model.

  Builds (or prepares) the dataset if needed and trains its tokenizer on the train captions,
  or reuses both.
  """
  data_config = config.data
  if data_config.name not in SUPPORTED_DATASETS:
    raise ValueError(f"config.data.name={data_config.name!r} is not supported; use one of "
                     f"{', '.join(SUPPORTED_DATASETS)}")
  start = time.perf_counter()
  builder = _process_zero_first(lambda: _build(data_config), "mxq_jax data: dataset built")
  if data_config.name in ATTRIBUTE_DATASETS:
    raw = {name: _read_attribute_split(builder, name) for name in ("train", "test")}
  else:
    prepared.log_build_report(builder)
    # One writer for the resized-image cache, then everyone reads it.
    _process_zero_first(lambda: prepared.prepare(builder, data_config.image_size),
                        "mxq_jax data: images prepared")
    raw = {name: _read_captioned_split(builder, name, data_config) for name in ("train", "test")}
  tokenizer = _process_zero_first(
      lambda: _tokenizer(data_config, builder, raw["train"].captions, workdir),
      "mxq_jax data: tokenizer written")
  splits = {name: _make_split(name, raw[name], tokenizer, data_config.text_length)
            for name in raw}
  features = builder.info.features
  label_names = {key: tuple(features[key].names) for key in raw["train"].labels
                 if isinstance(features[key], tfds.features.ClassLabel)}
  logging.info("data: loaded %s/%s (train %d, test %d; %d per process) in %.1f s",
               builder.name, builder.builder_config.name, splits["train"].num_global,
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


def _index_stream(num_examples: int, shuffle_buffer: int, seed: int, first_epoch: int,
                  num_uniforms: int = 0) -> tf.data.Dataset:
  """(index, uniforms f32 [num_uniforms]) per example, epoch after epoch from first_epoch.

  Each epoch is shuffled by (seed, epoch), and example i's uniforms in epoch e (its random
  caption, its flip) are drawn from (seed, e) too: a seed per epoch (not one reshuffling
  iterator) makes epoch e a pure function of (seed, e), so resuming starts at the right epoch
  directly instead of replaying the ones before.
  """
  def one_epoch(epoch):
    epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + epoch
    uniforms_nxR = tf.random.stateless_uniform(
        (num_examples, num_uniforms), seed=tf.stack([epoch_seed, tf.constant(7, tf.int64)]))
    return tf.data.Dataset.from_tensor_slices(
        (tf.range(num_examples, dtype=tf.int64), uniforms_nxR)).shuffle(
            shuffle_buffer, seed=epoch_seed)
  return tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(one_epoch)


def array_train_batches(arrays: dict[str, np.ndarray], global_batch_size: int, seed: int,
                        start_step: int, sharding: jax.sharding.Sharding,
                        shuffle_buffer: int | None = None, transform: Callable | None = None,
                        name: str = "train",
                        num_uniforms: int = 0) -> Iterator[dict[str, jax.Array]]:
  """Endless shuffled batches of this process's `arrays` (same first dimension), as global arrays.

  B = global_batch_size, sharded by `sharding`. The stream is a pure function of (seed, this
  process's data): from start_step it yields exactly what a fresh stream yields from its
  start_step-th batch on. shuffle_buffer: examples (None or more than the data: all of it).
  `transform` maps a dict of tf batches to another (inside tf.data, in parallel); with
  num_uniforms > 0 it is called as transform(batch, uniforms f32 [B, num_uniforms]), the
  per-example random numbers of this epoch.
  """
  local_batch = _local_batch_size(global_batch_size)
  n = len(next(iter(arrays.values())))
  if n < local_batch:
    raise ValueError(f"split {name} has {n} examples per process, fewer than the "
                     f"per-process batch {local_batch}")
  buffer = n if shuffle_buffer is None else max(1, min(shuffle_buffer, n))
  first_epoch, offset = divmod(start_step * local_batch, n)
  tensors = {key: tf.constant(value) for key, value in arrays.items()}

  def gather(indices_B, uniforms_BxR):
    batch = {key: tf.gather(value, indices_B) for key, value in tensors.items()}
    if not transform:
      return batch
    return transform(batch, uniforms_BxR) if num_uniforms else transform(batch)

  ds = (_index_stream(n, buffer, seed, first_epoch, num_uniforms)
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


def choose_caption_and_flip(batch: dict, uniforms_Bx2, *, random_caption: bool,
                            random_flip: bool) -> dict:
  """A training pair per image: one of its captions (uniform over its count) and an image
  flipped left-right with probability 1/2, from the example's two uniforms of this epoch."""
  image, uniform_caption, uniform_flip = batch["image"], uniforms_Bx2[:, 0], uniforms_Bx2[:, 1]
  if random_flip:
    flip_B = uniform_flip < 0.5
    image = tf.where(flip_B[:, None, None, None], tf.reverse(image, axis=[2]), image)
  if "all_tokens" not in batch:
    return {"image": image, "tokens": batch["tokens"]}
  count_B = batch["num_captions"]
  if random_caption:  # min(): a uniform of exactly 1 - eps times the count must stay in range.
    choice_B = tf.minimum(tf.cast(uniform_caption * tf.cast(count_B, tf.float32), tf.int32),
                          count_B - 1)
  else:
    choice_B = tf.zeros_like(count_B)
  tokens = tf.gather(batch["all_tokens"], choice_B, axis=1, batch_dims=1)
  return {"image": image, "tokens": tokens}


def train_options(data_config: ml_collections.ConfigDict) -> dict:
  """train_batches' keyword arguments from config.data."""
  return dict(shuffle_buffer=data_config.shuffle_buffer,
              random_caption=data_config.caption_choice == "random",
              random_flip=data_config.random_flip)


def train_batches(split: Split, global_batch_size: int, seed: int, start_step: int,
                  sharding: jax.sharding.Sharding, shuffle_buffer: int | None = None,
                  random_caption: bool = True,
                  random_flip: bool = False) -> Iterator[dict[str, jax.Array]]:
  """Endless training pairs {'image': f32 [B, H, W, 3] normalized, 'tokens': i32 [B, L]}.

  Images with several captions: random_caption draws one per image per epoch (else the first).
  random_flip: flip images left-right with probability 1/2.
  """
  if split.all_tokens is None and not random_flip:  # one caption, no augmentation.
    return array_train_batches({"image": split.images, "tokens": split.tokens},
                               global_batch_size, seed, start_step, sharding, shuffle_buffer,
                               normalize_image_batch, split.name)
  arrays = {"image": split.images}
  if split.all_tokens is None:
    arrays["tokens"] = split.tokens
  else:
    arrays.update(all_tokens=split.all_tokens, num_captions=split.num_captions)
  choose = functools.partial(choose_caption_and_flip, random_caption=random_caption,
                             random_flip=random_flip)
  return array_train_batches(arrays, global_batch_size, seed, start_step, sharding,
                             shuffle_buffer, lambda b, u: normalize_image_batch(choose(b, u)),
                             split.name, num_uniforms=2)


def eval_batches(split: Split, global_batch_size: int,
                 sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  """One ordered pass of pairs: {'image', 'tokens', 'valid'}; PAD (0) tokens in padding rows."""
  assert tokenizer_lib.PAD_ID == 0  # zero padding of the token rows is PAD.
  return array_eval_batches({"image": split.images, "tokens": split.tokens}, split.num_global,
                            global_batch_size, sharding, normalize_image_batch)
