"""The real captioned-image datasets (cub, flowers, coco), prepared once at a training size.

Their TFDS builders (`cub`, `flowers`, `coco` modules) store the published photos at full
resolution with all their captions. Training reads each split once at config.data.image_size:
`prepare` resizes every image (shorter side to the size, antialiased) and center-crops it,
once, and caches the result beside the TFDS data:

  {builder.data_dir}/prepared/{split}-{size}px.npy    uint8 [n, size, size, 3]
  {builder.data_dir}/prepared/{split}-captions.json   every image's captions, in TFDS order

Both files are written to a temporary name and renamed, so a cache that exists is complete.
"""

import importlib
import json
import os
import time

from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mxq_jax import files
from mxq_jax.host_tensorflow import tf

# config.data.name -> the module whose build(data_config) prepares the TFDS builder.
_BUILDER_MODULES = {"cub": "mxq_jax.data.cub", "flowers": "mxq_jax.data.flowers",
                    "coco": "mxq_jax.data.coco"}
CAPTIONED_DATASETS = tuple(_BUILDER_MODULES)
SPLITS = ("train", "test")


def build(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The dataset's TFDS builder, built from config.data.manual_dir on first use."""
  return importlib.import_module(_BUILDER_MODULES[data_config.name]).build(data_config)


def log_build_report(builder: tfds.core.DatasetBuilder) -> None:
  """What the build skipped or shortened, and why, so that it is seen at training start."""
  from mxq_jax.data import manual_data  # pylint: disable=g-import-not-at-top
  report = manual_data.read_report(builder)
  if report is None:
    logging.warning("data %s: no build report at %s", builder.name, builder.data_dir)
  else:
    manual_data.BuildReport.from_dict(report).log()


def resize_and_center_crop(image_HxWx3: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [size, size, 3]: shorter side to `size` (antialiased), center."""
  hw = tf.cast(tf.shape(image_HxWx3)[:2], tf.float32)
  scale = size / tf.reduce_min(hw)
  new_hw = tf.maximum(tf.cast(tf.math.round(hw * scale), tf.int32), size)
  resized = tf.image.resize(image_HxWx3, new_hw, method="bilinear", antialias=True)
  top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
  cropped = resized[top:top + size, left:left + size]
  return tf.cast(tf.clip_by_value(tf.math.round(cropped), 0, 255), tf.uint8)


def _paths(builder: tfds.core.DatasetBuilder, split: str, size: int) -> tuple[str, str]:
  directory = os.path.join(builder.data_dir, "prepared")
  return (os.path.join(directory, f"{split}-{size}px.npy"),
          os.path.join(directory, f"{split}-captions.json"))


def _prepare_split(builder: tfds.core.DatasetBuilder, split: str, size: int) -> None:
  images_path, captions_path = _paths(builder, split, size)
  num = builder.info.splits[split].num_examples
  start = time.perf_counter()
  ds = (builder.as_dataset(split=split, shuffle_files=False)
        .map(lambda ex: (resize_and_center_crop(ex["image"], size), ex["captions"]),
             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE))
  images = np.empty((num, size, size, 3), np.uint8)
  captions = []
  for i, (image, texts) in enumerate(ds.as_numpy_iterator()):
    images[i] = image
    captions.append([t.decode("utf-8") for t in texts])
  if len(captions) != num:
    raise ValueError(f"{builder.name} {split}: read {len(captions)} examples, TFDS says {num}")
  files.save_npy(images_path, images)
  files.write_text(captions_path, json.dumps(captions))
  seconds = time.perf_counter() - start
  logging.info("data %s %s: prepared %d images at %d px in %.1f s (%.0f images/s) -> %s",
               builder.name, split, num, size, seconds, num / max(seconds, 1e-9), images_path)


def prepare(builder: tfds.core.DatasetBuilder, size: int) -> None:
  """Writes the size-px cache of both splits unless it exists."""
  for split in SPLITS:
    images_path, captions_path = _paths(builder, split, size)
    if not (files.exists(images_path) and files.exists(captions_path)):
      _prepare_split(builder, split, size)


def load(builder: tfds.core.DatasetBuilder, split: str,
         size: int) -> tuple[np.ndarray, list[list[str]]]:
  """(images uint8 [n, size, size, 3], every image's captions) from the cache `prepare` wrote."""
  images_path, captions_path = _paths(builder, split, size)
  images = files.load_npy(images_path)
  captions = json.loads(files.read_bytes(captions_path))
  if len(captions) != len(images):
    raise ValueError(f"{os.path.dirname(images_path)}: {len(images)} images but "
                     f"{len(captions)} caption lists; delete the directory to prepare it again")
  return images, captions
