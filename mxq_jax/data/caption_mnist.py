"""caption_mnist: the paper's Caption-MNIST, real MNIST digits coloured, placed and captioned.

Each example is one MNIST digit (TFDS `mnist`, in its stored order) drawn in a named colour, at a
named position and size, on black, with a caption stating those four attributes. The attribute
scheme is caption_digits' own (same sampling, same features, same captions, same placement), so
the attribute classifier and the caption parser apply unchanged; only the glyph differs, and the
digit is MNIST's label instead of a drawn one. The paper coloured its digits white, red, green,
blue...; we keep caption_attributes' eight colours.

Example i of a split is a pure function of (seed, split, i) and MNIST's example i: its
attributes and jitter come from an rng keyed by (seed, split, i), as in caption_digits, and it
is stored as the split's i-th example (no TFDS shuffling). num_train/num_test take MNIST's first
examples; 0, or more than MNIST has, takes all of them.

  import mxq_jax.data.caption_mnist  # registers the builder
  builder = build_caption_mnist(config.data)  # reads MNIST from config.data.data_dir (or
                                              # downloads it there) and writes caption_mnist.
"""

import os
import random
import time

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mxq_jax.data import caption_digits  # also hides GPUs from TensorFlow.

MNIST_SIZES = {"train": 60_000, "test": 10_000}  # examples per split of TFDS mnist 3.0.1.


def example_attributes(seed: int, split: str, index: int, digit: int) -> dict:
  """Attributes, caption and jitter of example `index`, whose MNIST label is `digit`."""
  # Keyed apart from caption_digits, so the two datasets' draws are independent.
  rng = random.Random(f"caption_mnist/{seed}/{split}/{index}")
  return caption_digits.sample_attributes(rng, digit=digit)


def render_mnist_digit(glyph_28x28: np.ndarray, color: str, position: str, size: str,
                       image_size: int, scale: float = 1.0,
                       offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
  """uint8 [image_size, image_size, 3]: an MNIST glyph (uint8 [28, 28]) tinted and placed.

  MNIST fits each digit's longer side to 20 px; that side becomes the size's height (jittered
  by `scale`), so the many digits taller than wide get caption_digits' height exactly and wide
  ones stay inside the image. No rotation: handwriting already slants every which way.
  """
  glyph = Image.fromarray(np.asarray(glyph_28x28, np.uint8).reshape(28, 28), "L")
  glyph = glyph.crop(glyph.getbbox())  # the ink box.
  zoom = caption_digits.glyph_height(size, image_size, scale) / max(glyph.size)
  # Upsampled onto caption_digits' supersampled canvas, whose box-filtered downsample
  # antialiases the result; bicubic keeps MNIST's soft stroke edges smooth.
  glyph = glyph.resize((max(1, round(glyph.width * zoom)), max(1, round(glyph.height * zoom))),
                       Image.BICUBIC)
  return caption_digits.place_and_tint(glyph, color, position, image_size, offset)


def render_example(seed: int, split: str, index: int, image_size: int, glyph_28x28: np.ndarray,
                   label: int) -> dict:
  """One example, as the builder stores it (image uint8 [H, W, 3], caption, labels)."""
  example = example_attributes(seed, split, index, label)
  jitter = example.pop("jitter")
  image = render_mnist_digit(glyph_28x28, example["color"], example["position"], example["size"],
                             image_size, scale=jitter["scale"], offset=jitter["offset"])
  return dict(example, image=image)


def load_mnist(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """MNIST's split in its stored order: images uint8 [n, 28, 28], labels int64 [n].

  Downloads and prepares TFDS mnist into data_dir first if it is not there.
  """
  dataset = tfds.load("mnist:3.*.*", split=split, data_dir=data_dir, shuffle_files=False)
  # Chunks, not batch_size=-1: that sizes one batch from the split's recorded size, which a
  # mocked mnist (tfds.testing.mock_data) does not have.
  chunks = list(tfds.as_numpy(dataset.batch(10_000)))
  images = np.concatenate([c["image"] for c in chunks]).reshape(-1, 28, 28)
  return images, np.concatenate([c["label"] for c in chunks])


def num_examples(split: str, requested: int) -> int:
  """How many of MNIST's split to use: `requested`, where 0 or more than MNIST has means all."""
  available = MNIST_SIZES[split]
  return available if requested <= 0 else min(requested, available)


class CaptionMnistConfig(tfds.core.BuilderConfig):
  """Image side, split sizes (clipped to MNIST's) and attribute seed; the name spells them out."""

  def __init__(self, *, image_size: int = 64, num_train: int = 0, num_test: int = 0,
               seed: int = 0, **kwargs):
    num_train, num_test = num_examples("train", num_train), num_examples("test", num_test)
    name = f"{image_size}px_{num_train}_{num_test}_seed{seed}"
    super().__init__(name=name, description=f"caption_mnist {name}", **kwargs)
    self.image_size = image_size
    self.num_train = num_train
    self.num_test = num_test
    self.seed = seed


class CaptionMnist(tfds.core.GeneratorBasedBuilder):
  """MNIST digits, coloured, placed and captioned (name: caption_mnist)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [CaptionMnistConfig()]  # the whole of MNIST at 64 px, the paper's size.
  code_path = epath.Path(__file__)  # as caption_digits: no importlib_resources look-up.

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=caption_digits.features(self.builder_config.image_size),
                                 homepage="http://yann.lecun.com/exdb/mnist/",
                                 # Stored in MNIST's order (TFDS would shuffle by key hash):
                                 # example i is MNIST's example i, checkably.
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # MNIST comes through its own TFDS builder, in the same data_dir.
    config = self.builder_config
    return {"train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test)}

  def _generate_examples(self, split: str, count: int):
    config = self.builder_config
    images, labels = load_mnist(split, os.fspath(self.data_dir_root))
    count = min(count, len(labels))  # MNIST's own sizes, except under tfds.testing.mock_data.
    start = time.perf_counter()
    for index in range(count):
      example = render_example(config.seed, split, index, config.image_size, images[index],
                               labels[index])
      yield index, caption_digits.encode_labels(example)
      if (index + 1) % 10_000 == 0:
        logging.info("caption_mnist %s: rendered %d/%d (%.0f images/s)", split, index + 1, count,
                     (index + 1) / (time.perf_counter() - start))


def config_from_data(data_config) -> CaptionMnistConfig:
  """The builder config that `config.data` asks for (num_train/num_test 0: all of MNIST)."""
  return caption_digits.registered_config(CaptionMnist, CaptionMnistConfig(
      image_size=data_config.image_size, num_train=data_config.num_train,
      num_test=data_config.num_test, seed=data_config.dataset_seed))


def build_caption_mnist(data_config) -> tfds.core.DatasetBuilder:
  """The caption_mnist builder of `config.data`, rendered and written first if missing."""
  return caption_digits.prepare_builder("caption_mnist", config_from_data(data_config),
                                        data_config.data_dir)
