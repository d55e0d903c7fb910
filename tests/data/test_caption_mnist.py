"""caption_mnist over a mocked MNIST: features, labels = captions = MNIST's digit, colour, place.

MNIST is never downloaded: `load_mnist` runs under `tfds.testing.mock_data`, whose mnist yields
white font-drawn digits (caption_digits' renderer) with known labels, so glyph shapes and
labels are meaningful. The mock is entered around the MNIST read only; caption_mnist itself is
really built and written (mock_data would also stub its download_and_prepare and data_dir).
"""

import colorsys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mxq_jax import config_lib
from mxq_jax.data import caption_attributes as attrs
from mxq_jax.data import caption_digits
from mxq_jax.data import caption_mnist
from conftest import load_config

SIZE = 32
NUM_MOCK = {"train": 30, "test": 12}  # examples in the mocked MNIST splits.


def _fake_labels(split: str) -> np.ndarray:
  n, step = NUM_MOCK[split], {"train": 3, "test": 7}[split]
  return (np.arange(n) * step + 1) % 10


def _fake_mnist(self, split, **kwargs):
  """mock_data's as_dataset_fn: mnist's features, a white centred digit per label."""
  del self, kwargs
  labels = _fake_labels(split)
  images = np.stack([
      caption_digits.render_digit(int(d), "white", "center", "large", 28, rotation=i % 7 - 3.0)
      [..., :1] for i, d in enumerate(labels)])
  return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels.astype(np.int64)})


def _under_mock_data(load_mnist):
  """load_mnist, reading the mocked mnist; the mock lasts for the read only."""
  def load_mocked(split, data_dir):
    with tfds.testing.mock_data(num_examples=NUM_MOCK[split], as_dataset_fn=_fake_mnist):
      return load_mnist(split, data_dir)
  return load_mocked


@pytest.fixture(autouse=True)
def mocked_mnist(monkeypatch):
  monkeypatch.setattr(caption_mnist, "load_mnist", _under_mock_data(caption_mnist.load_mnist))


def _data_config(data_dir, seed=0, num_train=0, num_test=0):
  return ml_collections.ConfigDict(dict(
      name="caption_mnist", data_dir=str(data_dir), image_size=SIZE, num_train=num_train,
      num_test=num_test, dataset_seed=seed))


def _read(builder, split):
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:  # the autouse fixture is per test; this is not.
    patch.setattr(caption_mnist, "load_mnist", _under_mock_data(caption_mnist.load_mnist))
    builder = caption_mnist.build_caption_mnist(_data_config(tmp_path_factory.mktemp("a")))
  return builder, _read(builder, "train"), _read(builder, "test")


def test_mocked_mnist_reads_as_arrays():
  images, labels = caption_mnist.load_mnist("test", "/nonexistent")
  assert images.shape == (NUM_MOCK["test"], 28, 28) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, _fake_labels("test"))


def test_builds_with_caption_digits_features(built):
  builder, train, test = built
  # num_train = num_test = 0: all of MNIST, named by MNIST's sizes; the mock has fewer.
  assert builder.builder_config.name == f"{SIZE}px_60000_10000_seed0"
  assert builder.info.splits["train"].num_examples == NUM_MOCK["train"]
  assert builder.info.splits["test"].num_examples == NUM_MOCK["test"]
  assert train["image"].shape == (NUM_MOCK["train"], SIZE, SIZE, 3)
  assert train["image"].dtype == np.uint8 and test["image"].shape[1:] == (SIZE, SIZE, 3)
  ours, theirs = builder.info.features, caption_digits.features(SIZE)
  assert set(ours.keys()) == set(theirs.keys())
  for key in ("digit", "color", "position", "size"):
    assert ours[key].names == theirs[key].names
  again = tfds.builder("caption_mnist", config=builder.builder_config,
                       data_dir=builder.data_dir.split("/caption_mnist/")[0])
  assert again.is_prepared()


def test_digit_is_mnist_label_and_captions_parse(built):
  _, train, test = built
  for split, data in (("train", train), ("test", test)):
    np.testing.assert_array_equal(data["digit"], _fake_labels(split))
    for i, caption in enumerate(data["caption"]):
      parsed = attrs.parse_caption(caption.decode())
      assert parsed is not None, caption
      assert parsed["digit"] == data["digit"][i]
      assert parsed["color"] == attrs.COLOR_NAMES[data["color"][i]]
      assert parsed["position"] == attrs.POSITION_NAMES[data["position"][i]]
      assert parsed["size"] == attrs.SIZE_NAMES[data["size"][i]]
      assert parsed["template"] == data["template"][i]


def test_deterministic_for_a_seed_and_limited_by_num_train(built, tmp_path):
  _, train, _ = built
  same = caption_mnist.build_caption_mnist(_data_config(tmp_path / "b", num_train=10))
  assert same.builder_config.name == f"{SIZE}px_10_10000_seed0"
  again = _read(same, "train")
  assert len(again["image"]) == 10
  np.testing.assert_array_equal(again["image"], train["image"][:10])
  np.testing.assert_array_equal(again["caption"], train["caption"][:10])
  other = _read(caption_mnist.build_caption_mnist(_data_config(tmp_path / "c", seed=1)), "train")
  assert not np.array_equal(other["image"], train["image"])
  np.testing.assert_array_equal(other["digit"], train["digit"])  # MNIST's labels, whatever seed.


def test_attributes_follow_the_caption_digits_scheme():
  a = caption_mnist.example_attributes(0, "train", 5, digit=2)
  b = caption_mnist.example_attributes(0, "train", 5, digit=7)
  assert (a["digit"], b["digit"]) == (2, 7)
  # The label replaces only the digit: every other draw is the same.
  assert {k: v for k, v in a.items() if k not in ("digit", "caption")} == \
         {k: v for k, v in b.items() if k not in ("digit", "caption")}
  assert set(a) == set(caption_digits.example_attributes(0, "train", 5))


def _hue(rgb) -> float:
  return colorsys.rgb_to_hsv(*(np.asarray(rgb, np.float64) / 255.0))[0]


def test_images_in_the_named_colour(built):
  _, train, test = built
  for data in (train, test):
    for image, color in zip(data["image"], data["color"]):
      bright = image.max(-1) > 0.5 * image.max()
      mean = image[bright].astype(np.float64).mean(0)
      # The nearest palette colour, by direction in RGB (brightness aside), is the named one.
      palette = np.asarray([c.rgb for c in attrs.COLORS], np.float64)
      cosine = palette @ mean / np.linalg.norm(palette, axis=1) / np.linalg.norm(mean)
      assert cosine.argmax() == color
      rgb = attrs.COLORS[color].rgb
      if max(rgb) - min(rgb) > 100:  # saturated colours: the same hue.
        assert abs(_hue(mean) - _hue(rgb)) % 1.0 < 0.03 or abs(_hue(mean) - _hue(rgb)) > 0.97


def _assert_in_region(image, position):
  ys, xs = np.nonzero(image.max(axis=-1) > 0)
  anchor = attrs.POSITIONS[attrs.POSITION_NAMES.index(position)].anchor
  side = image.shape[0]
  for centre, a in ((xs.mean() / side, anchor[0]), (ys.mean() / side, anchor[1])):
    if a < 0.5:
      assert centre < 0.5
    elif a > 0.5:
      assert centre > 0.5
    else:
      assert 0.35 < centre < 0.65


def test_stored_images_centroid_in_the_named_position(built):
  _, train, test = built
  for data in (train, test):
    for image, position in zip(data["image"], data["position"]):
      _assert_in_region(image, attrs.POSITION_NAMES[position])


@pytest.mark.parametrize("position", attrs.POSITION_NAMES)
def test_render_position_inside_and_antialiased(position):
  glyph = caption_digits.render_digit(8, "white", "center", "large", 28)[..., 0]
  for size in attrs.SIZE_NAMES:
    for offset in ((0.06, -0.06), (-0.06, 0.06)):
      image = caption_mnist.render_mnist_digit(glyph, "green", position, size, SIZE, scale=1.15,
                                               offset=offset)
      _assert_in_region(image, position)
      # Whole: the same ink wherever it is placed (clamped inside, never cut).
      centre = caption_mnist.render_mnist_digit(glyph, "green", "center", size, SIZE, scale=1.15)
      assert abs(int(image.sum()) - int(centre.sum())) < 0.03 * centre.sum()
      # Antialiased: edge pixels between black and full ink.
      green = image[..., 1]
      assert ((green > 0) & (green < 150)).sum() > 5 and green.max() >= 190


def test_sizes_scale_the_glyph():
  glyph = caption_digits.render_digit(0, "white", "center", "large", 28)[..., 0]
  heights = {}
  for size in attrs.SIZE_NAMES:
    ink = caption_mnist.render_mnist_digit(glyph, "white", "center", size, 64).max(-1) > 60
    rows = np.nonzero(ink.any(axis=1))[0]
    heights[size] = (rows[-1] - rows[0] + 1) / 64
  for size in attrs.SIZE_NAMES:  # the longer side (here the height) is the size's fraction.
    assert abs(heights[size] - attrs.SIZES[attrs.SIZE_NAMES.index(size)].scale) < 0.05


def test_num_examples_zero_or_too_many_means_all():
  assert caption_mnist.num_examples("train", 0) == 60_000
  assert caption_mnist.num_examples("train", 100_000) == 60_000
  assert caption_mnist.num_examples("test", 500) == 500


@pytest.mark.parametrize("arg", [None, "smoke"])
def test_mnist_configs_validate(arg):
  config = load_config("mnist", arg)
  config_lib.validate(config)
  assert config.data.name == "caption_mnist" and not config.data.random_flip
  assert config.data.vocab_size <= 96  # the most unigram pieces the caption scheme allows.
  if arg is None:
    assert (config.data.image_size, config.data.text_length) == (64, 64)
    assert config_lib.num_joint_codes(config) == 8 * 8 + 8
    assert (config.vqvae.codebook_size, config.vqvae.embed_dim) == (256, 128)
    config_lib.validate(config, num_devices=8)  # a TPU v5e-8's batch split.
