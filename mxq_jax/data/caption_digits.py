"""caption_digits: an offline TFDS dataset of coloured digits with template captions.

A stand-in for the paper's Caption-MNIST that needs no download: each example is one digit
0-9 drawn with Pillow's bundled scalable font in a named colour, at a named position and size,
on black, with jitter (scale, rotation, offset), plus a caption stating those four attributes.
Everything is a pure function of (seed, split, index), so two builds are identical.

  import mxq_jax.data.caption_digits  # registers the builder
  builder = tfds.builder("caption_digits", config=CaptionDigitsConfig(...), data_dir=...)
"""

import functools
import random
import time

from absl import logging
from etils import epath
import numpy as np
from PIL import Image, ImageDraw, ImageFont
import tensorflow_datasets as tfds

from mxq_jax.data import caption_attributes as attrs


_SUPERSAMPLE = 4  # render at 4x and downsample with a box filter: clean antialiased strokes.
_SCALE_JITTER = (0.85, 1.15)  # x the size's scale.
_MAX_ROTATION_DEG = 12.0
_MAX_OFFSET = 0.06  # of the image side, in x and y.
_SPLIT_IDS = {"train": 0, "test": 1}


@functools.lru_cache(maxsize=None)
def _font(size_px: int) -> ImageFont.FreeTypeFont:
  return ImageFont.load_default(size=size_px)


@functools.lru_cache(maxsize=None)
def _glyph_height_ratio() -> float:
  """Digit ink height / font size of the bundled font (about 0.72)."""
  font = _font(200)
  heights = [font.getbbox(str(d))[3] - font.getbbox(str(d))[1] for d in range(10)]
  return float(np.mean(heights)) / 200


def sample_attributes(rng: random.Random, digit: int | None = None) -> dict:
  """The attributes, caption and jitter of one example, drawn from `rng` in a fixed order.

  digit: the example's digit where its source fixes it (Caption-MNIST: MNIST's label). A digit
  is drawn either way, so every later draw is the same function of the rng's key.
  """
  drawn_digit = rng.randrange(10)
  digit = drawn_digit if digit is None else int(digit)
  color = rng.choice(attrs.COLOR_NAMES)
  position = rng.choice(attrs.POSITION_NAMES)
  size = rng.choice(attrs.SIZE_NAMES)
  template = rng.randrange(attrs.NUM_TEMPLATES)
  caption = attrs.make_caption(digit, color, position, size, template, rng)
  jitter = dict(
      scale=rng.uniform(*_SCALE_JITTER),
      rotation=rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG),
      offset=(rng.uniform(-_MAX_OFFSET, _MAX_OFFSET), rng.uniform(-_MAX_OFFSET, _MAX_OFFSET)))
  return dict(digit=digit, color=color, position=position, size=size, template=template,
              caption=caption, jitter=jitter)


def example_attributes(seed: int, split: str, index: int) -> dict:
  """The attributes, caption and jitter of one example: a pure function of its key."""
  # A str seed hashes stably (sha512), unlike hash() of a tuple across interpreter runs.
  return sample_attributes(random.Random(f"caption_digits/{seed}/{split}/{index}"))


def glyph_height(size: str, image_size: int, scale: float = 1.0) -> float:
  """The digit's ink height in supersampled pixels: the size's fraction of the side, jittered."""
  return attrs.SIZES[attrs.SIZE_NAMES.index(size)].scale * scale * image_size * _SUPERSAMPLE


def place_and_tint(glyph: Image.Image, color: str, position: str, image_size: int,
                   offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
  """uint8 [image_size, image_size, 3]: a supersampled ink glyph ("L") coloured on black.

  The glyph's ink box is centred on the position's anchor plus `offset` (fractions of the side),
  then moved inside the image if it sticks out; the canvas is box-filtered down to image_size
  (antialiasing) and the ink, as alpha over black, scales the colour.
  """
  side = image_size * _SUPERSAMPLE
  glyph = glyph.crop(glyph.getbbox())  # tight ink box, so the clamp below is exact.
  if max(glyph.size) > side:  # cannot happen with the sizes above; keep the digit whole anyway.
    glyph.thumbnail((side, side), Image.LANCZOS)
  anchor = attrs.POSITIONS[attrs.POSITION_NAMES.index(position)].anchor
  w, h = glyph.size
  x = int(round((anchor[0] + offset[0]) * side - w / 2))
  y = int(round((anchor[1] + offset[1]) * side - h / 2))
  x, y = min(max(x, 0), side - w), min(max(y, 0), side - h)
  mask = Image.new("L", (side, side))
  mask.paste(glyph, (x, y))
  mask = mask.resize((image_size, image_size), Image.BOX)  # antialiased downsample.
  rgb = np.asarray(attrs.COLORS[attrs.COLOR_NAMES.index(color)].rgb, np.float32)
  ink = np.asarray(mask, np.float32)[..., None] / 255.0
  return np.round(ink * rgb).astype(np.uint8)


def render_digit(digit: int, color: str, position: str, size: str, image_size: int,
                 scale: float = 1.0, rotation: float = 0.0,
                 offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
  """uint8 [image_size, image_size, 3]: the digit's ink, coloured, on black, fully inside."""
  font = _font(max(4, round(glyph_height(size, image_size, scale) / _glyph_height_ratio())))
  left, top, right, bottom = font.getbbox(str(digit))
  glyph = Image.new("L", (right - left + 4, bottom - top + 4))
  ImageDraw.Draw(glyph).text((2 - left, 2 - top), str(digit), fill=255, font=font)
  glyph = glyph.rotate(rotation, resample=Image.BILINEAR, expand=True)  # 4x: bilinear is enough.
  return place_and_tint(glyph, color, position, image_size, offset)


def features(image_size: int) -> tfds.features.FeaturesDict:
  """The features of a captioned-digit example; Caption-MNIST stores the same ones."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(image_size, image_size, 3)),
      "caption": tfds.features.Text(),
      "digit": tfds.features.ClassLabel(names=list(attrs.DIGIT_NAMES)),
      "color": tfds.features.ClassLabel(names=list(attrs.COLOR_NAMES)),
      "position": tfds.features.ClassLabel(names=list(attrs.POSITION_NAMES)),
      "size": tfds.features.ClassLabel(names=list(attrs.SIZE_NAMES)),
      "template": tfds.features.Scalar(dtype=np.int32),
  })


def encode_labels(example: dict) -> dict:
  """The example with its attribute names replaced by their ClassLabel indices."""
  return dict(example, color=attrs.COLOR_NAMES.index(example["color"]),
              position=attrs.POSITION_NAMES.index(example["position"]),
              size=attrs.SIZE_NAMES.index(example["size"]))


def render_example(seed: int, split: str, index: int, image_size: int) -> dict:
  """One example, as the builder stores it (image uint8 [H, W, 3], caption, labels)."""
  example = example_attributes(seed, split, index)
  image = render_digit(example["digit"], example["color"], example["position"], example["size"],
                       image_size, **example.pop("jitter"))
  return dict(example, image=image)


class CaptionDigitsConfig(tfds.core.BuilderConfig):
  """Image side, split sizes and renderer seed; the name spells all four out."""

  def __init__(self, *, image_size: int = 32, num_train: int = 20_000, num_test: int = 2_000,
               seed: int = 0, **kwargs):
    name = f"{image_size}px_{num_train}_{num_test}_seed{seed}"
    super().__init__(name=name, description=f"caption_digits {name}", **kwargs)
    self.image_size = image_size
    self.num_train = num_train
    self.num_test = num_test
    self.seed = seed


class CaptionDigits(tfds.core.GeneratorBasedBuilder):
  """Coloured digits with captions, rendered offline (name: caption_digits)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [CaptionDigitsConfig()]
  # TFDS 4.9 finds this file through `importlib_resources`, which its wheel does not require
  # on Python >= 3.9; naming the file directly avoids that import (and any checksum look-up).
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=features(self.builder_config.image_size))

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is rendered locally.
    config = self.builder_config
    return {"train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test)}

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    start = time.perf_counter()
    for index in range(num_examples):
      yield index, encode_labels(render_example(config.seed, split, index, config.image_size))
      if (index + 1) % 5_000 == 0:
        logging.info("caption_digits %s: rendered %d/%d (%.0f images/s)", split, index + 1,
                     num_examples, (index + 1) / (time.perf_counter() - start))


def registered_config(builder_class, config: tfds.core.BuilderConfig) -> tfds.core.BuilderConfig:
  """The registered config of the same name if there is one, else `config`."""
  for registered in builder_class.BUILDER_CONFIGS:
    if registered.name == config.name:
      return registered  # TFDS refuses an equal copy of a registered config: it wants this one.
  return config


def prepare_builder(name: str, config: tfds.core.BuilderConfig,
                    data_dir: str) -> tfds.core.DatasetBuilder:
  """tfds.builder(name, config) in data_dir ("" = TFDS's default), rendered first if missing."""
  builder = tfds.builder(name, config=config, data_dir=data_dir or None)
  if not builder.is_prepared():
    start = time.perf_counter()
    logging.info("%s: rendering %s into %s", name, builder.builder_config.name, builder.data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
    logging.info("%s: built in %.1f s", name, time.perf_counter() - start)
  return builder


def config_from_data(data_config) -> CaptionDigitsConfig:
  """The builder config that `config.data` asks for."""
  return registered_config(CaptionDigits, CaptionDigitsConfig(
      image_size=data_config.image_size, num_train=data_config.num_train,
      num_test=data_config.num_test, seed=data_config.dataset_seed))


def build_caption_digits(data_config) -> tfds.core.DatasetBuilder:
  """The caption_digits builder of `config.data`, rendered and written first if missing."""
  return prepare_builder("caption_digits", config_from_data(data_config), data_config.data_dir)
