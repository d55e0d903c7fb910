"""caption_digits: builds offline, deterministic per seed, images distinct, labels = captions."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mxq_jax.data import caption_attributes as attrs
from mxq_jax.data import caption_digits

SIZE = 16


def _data_config(data_dir, seed=0, num_train=40, num_test=8):
  return ml_collections.ConfigDict(dict(
      name="caption_digits", data_dir=str(data_dir), image_size=SIZE, num_train=num_train,
      num_test=num_test, dataset_seed=seed))


def _read(builder, split):
  return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  builder = caption_digits.build_caption_digits(_data_config(tmp_path_factory.mktemp("a")))
  return builder, _read(builder, "train"), _read(builder, "test")


def test_builds_offline_with_features(built):
  builder, train, test = built
  assert builder.builder_config.name == f"{SIZE}px_40_8_seed0"
  assert builder.info.splits["train"].num_examples == 40
  assert builder.info.splits["test"].num_examples == 8
  assert train["image"].shape == (40, SIZE, SIZE, 3) and train["image"].dtype == np.uint8
  assert test["image"].shape == (8, SIZE, SIZE, 3)
  assert builder.info.features["color"].names == list(attrs.COLOR_NAMES)
  # The registered name works through tfds.builder, and reuses the prepared files.
  again = tfds.builder("caption_digits", config=builder.builder_config,
                       data_dir=builder.data_dir.split("/caption_digits/")[0])
  assert again.is_prepared()


def test_deterministic_for_a_seed(built, tmp_path):
  _, train, test = built
  other_dir = caption_digits.build_caption_digits(_data_config(tmp_path / "b"))
  np.testing.assert_array_equal(_read(other_dir, "train")["image"], train["image"])
  np.testing.assert_array_equal(_read(other_dir, "test")["caption"], test["caption"])
  other_seed = caption_digits.build_caption_digits(_data_config(tmp_path / "c", seed=1))
  assert not np.array_equal(_read(other_seed, "train")["image"], train["image"])


def test_images_distinct_and_splits_differ(built):
  _, train, test = built
  everything = np.concatenate([train["image"], test["image"]])
  assert len({image.tobytes() for image in everything}) == len(everything)
  # Every image has ink.
  assert (everything.reshape(len(everything), -1).max(axis=1) > 100).all()


def test_labels_match_captions(built):
  _, train, test = built
  for data in (train, test):
    for i in range(len(data["caption"])):
      parsed = attrs.parse_caption(data["caption"][i].decode())
      assert parsed is not None, data["caption"][i]
      assert parsed["digit"] == data["digit"][i]
      assert parsed["color"] == attrs.COLOR_NAMES[data["color"][i]]
      assert parsed["position"] == attrs.POSITION_NAMES[data["position"][i]]
      assert parsed["size"] == attrs.SIZE_NAMES[data["size"][i]]
      assert parsed["template"] == data["template"][i]


@pytest.mark.parametrize("position", attrs.POSITION_NAMES)
def test_render_colour_position_and_inside(position):
  big = 32
  for size in attrs.SIZE_NAMES:
    image = caption_digits.render_digit(8, "red", position, size, big, scale=1.15,
                                        rotation=12.0, offset=(0.06, -0.06))
    ink = image.max(axis=-1) > 0
    ys, xs = np.nonzero(ink)
    # The named colour: red channel dominates wherever there is ink.
    assert (image[..., 0][ink] >= image[..., 1][ink]).all() and image[..., 0].max() > 200
    # The named position: the ink's centre lies in the anchor's half of the image.
    anchor = attrs.POSITIONS[attrs.POSITION_NAMES.index(position)].anchor
    cy, cx = ys.mean() / big, xs.mean() / big
    for centre, a in ((cx, anchor[0]), (cy, anchor[1])):
      if a < 0.5:
        assert centre < 0.5
      elif a > 0.5:
        assert centre > 0.5
      else:
        assert 0.35 < centre < 0.65


def test_sizes_differ():
  areas = {size: (caption_digits.render_digit(0, "white", "center", size, 32).max(-1) > 60).sum()
           for size in attrs.SIZE_NAMES}
  assert areas["large"] > 1.8 * areas["small"]


def test_digit_stays_whole_at_the_border():
  # Clamping moves the digit inside instead of cutting it: same ink as at the centre.
  kwargs = dict(scale=1.15, rotation=0.0)
  corner = caption_digits.render_digit(1, "white", "top left", "large", 32,
                                       offset=(-0.06, -0.06), **kwargs)
  center = caption_digits.render_digit(1, "white", "center", "large", 32, **kwargs)
  assert abs(int(corner.sum()) - int(center.sum())) < 0.03 * center.sum()
