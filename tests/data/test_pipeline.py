"""load_splits, normalization, and the sharded train/eval batch streams (8 fake CPU devices)."""

import os

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from mxq_jax import config_lib
from mxq_jax.data import caption_attributes as attrs
from mxq_jax.data import pipeline
from mxq_jax.data import tokenizer as tokenizer_lib

BATCH = 8  # global; one example per fake device.


@pytest.fixture(scope="module")
def sharding():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  return NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))


def _config(data_dir):
  config = config_lib.base_config()
  config.data.update(data_dir=str(data_dir), image_size=16, num_train=40, num_test=12,
                     text_length=40, vocab_size=64)
  return config


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("workdir")
  config = _config(tmp_path_factory.mktemp("tfds"))
  return pipeline.load_splits(config, str(workdir)), workdir


def _synthetic_split(n, seed=0):
  """A split whose token row i starts with i, so batches reveal which examples they hold."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((n, 6), np.int32)
  tokens[:, 0] = np.arange(n)
  return pipeline.Split(
      name="synthetic", images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
      tokens=tokens, captions=np.array([str(i) for i in range(n)], dtype=object),
      labels={key: np.zeros(n, np.int64) for key in pipeline.LABEL_KEYS}, num_global=n,
      num_truncated=0)


def _indices(batches, num):
  return [np.asarray(next(batches)["tokens"])[:, 0].tolist() for _ in range(num)]


def test_load_splits(loaded):
  splits, workdir = loaded
  train, test = splits.train, splits.test
  assert train.images.shape == (40, 16, 16, 3) and train.images.dtype == np.uint8
  assert test.images.shape == (12, 16, 16, 3) and test.num_global == 12
  assert train.tokens.shape == (40, 40) and train.tokens.dtype == np.int32
  assert train.num_truncated == 0 and test.num_truncated == 0
  assert os.path.exists(workdir / "tokenizer.model") and splits.tokenizer.vocab_size == 64
  assert splits.label_names["color"] == attrs.COLOR_NAMES
  for split in (train, test):
    for i in range(split.num_examples):
      assert splits.tokenizer.decode(split.tokens[i]) == split.captions[i]
      parsed = attrs.parse_caption(split.captions[i])
      assert parsed["digit"] == split.labels["digit"][i]
      assert parsed["size"] == attrs.SIZE_NAMES[split.labels["size"][i]]
  assert len({image.tobytes() for image in train.images}) == 40


def test_load_splits_reuses_files_and_checks_config(loaded, tmp_path):
  splits, workdir = loaded
  config = _config(tmp_path / "tfds2")  # rebuilt elsewhere: the renderer is deterministic.
  again = pipeline.load_splits(config, str(workdir))
  np.testing.assert_array_equal(again.train.images, splits.train.images)
  np.testing.assert_array_equal(again.test.tokens, splits.test.tokens)
  config.data.vocab_size = 60
  with pytest.raises(ValueError, match="config.data.vocab_size=60"):
    pipeline.load_splits(config, str(workdir))
  config.data.name = "mnist"
  with pytest.raises(ValueError, match="caption_digits"):
    pipeline.load_splits(config, str(workdir))


def test_normalize_round_trip():
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  for normalized in (pipeline.normalize_images(images),
                     pipeline.normalize_images(jnp.asarray(images))):
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(np.asarray(pipeline.denormalize_images(normalized)),
                               images / 255.0, atol=1e-6)
  mean_pixel = np.round(pipeline.IMAGENET_MEAN * 255).astype(np.uint8)
  np.testing.assert_allclose(pipeline.normalize_images(mean_pixel), 0.0, atol=0.01)
  assert pipeline.denormalize_images(np.full(3, 100.0, np.float32)).max() == 1.0


def test_train_batches_layout(loaded, sharding):
  split = loaded[0].train
  batch = next(pipeline.train_batches(split, BATCH, seed=0, start_step=0, sharding=sharding))
  assert set(batch) == {"image", "tokens"}
  image, tokens = batch["image"], batch["tokens"]
  assert image.shape == (BATCH, 16, 16, 3) and image.dtype == jnp.float32
  assert tokens.shape == (BATCH, 40) and tokens.dtype == jnp.int32
  for array in (image, tokens):
    assert array.sharding == sharding
    assert len(array.addressable_shards) == 8
    assert all(shard.data.shape[0] == 1 for shard in array.addressable_shards)
  # Each row is a real example: its image is the normalized image of its caption's example.
  rows = {row.tobytes(): i for i, row in enumerate(split.tokens)}
  for b in range(BATCH):
    i = rows[np.asarray(tokens)[b].tobytes()]
    np.testing.assert_allclose(np.asarray(image)[b], pipeline.normalize_images(split.images[i]),
                               atol=1e-6)


def test_train_batches_epochs_are_reshuffled_permutations(sharding):
  split = _synthetic_split(40)
  batches = pipeline.train_batches(split, BATCH, seed=3, start_step=0, sharding=sharding)
  epochs = [sum(_indices(batches, 5), []) for _ in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(40))
  assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(40))
  # Images travel with their tokens.
  batch = next(pipeline.train_batches(split, BATCH, seed=3, start_step=0, sharding=sharding))
  idx = np.asarray(batch["tokens"])[:, 0]
  np.testing.assert_allclose(np.asarray(batch["image"]),
                             pipeline.normalize_images(split.images[idx]), atol=1e-6)


def test_train_batches_deterministic_per_seed(sharding):
  split = _synthetic_split(40)
  make = lambda seed: pipeline.train_batches(split, BATCH, seed, 0, sharding)
  assert _indices(make(0), 6) == _indices(make(0), 6)
  assert _indices(make(0), 6) != _indices(make(1), 6)


@pytest.mark.parametrize("n,shuffle_buffer,start_step", [(40, None, 7), (44, None, 6),
                                                         (44, 10, 11), (88, None, 11)])
def test_train_batches_resume_exactly(sharding, n, shuffle_buffer, start_step):
  # 44 examples, 8 per batch: batches straddle epochs and resume lands mid-epoch.
  split = _synthetic_split(n)
  fresh = _indices(pipeline.train_batches(split, BATCH, 5, 0, sharding, shuffle_buffer),
                   start_step + 8)
  resumed = _indices(pipeline.train_batches(split, BATCH, 5, start_step, sharding,
                                            shuffle_buffer), 8)
  assert resumed == fresh[start_step:]


def test_train_batches_rejects_bad_sizes(sharding):
  with pytest.raises(ValueError, match="fewer than"):
    next(pipeline.train_batches(_synthetic_split(4), BATCH, 0, 0, sharding))


def test_eval_batches_cover_every_example_once(loaded, sharding):
  split = loaded[0].test  # 12 examples: one full batch and one with 4 real rows.
  batches = list(pipeline.eval_batches(split, BATCH, sharding))
  assert len(batches) == 2
  for batch in batches:
    assert set(batch) == {"image", "tokens", "valid"}
    assert batch["valid"].dtype == jnp.float32 and batch["valid"].sharding == sharding
    assert batch["image"].shape == (BATCH, 16, 16, 3) and batch["tokens"].shape == (BATCH, 40)
  valid = np.concatenate([np.asarray(b["valid"]) for b in batches])
  np.testing.assert_array_equal(valid, [1.0] * 12 + [0.0] * 4)
  tokens = np.concatenate([np.asarray(b["tokens"]) for b in batches])
  np.testing.assert_array_equal(tokens[:12], split.tokens)  # in order, each once.
  assert (tokens[12:] == tokenizer_lib.PAD_ID).all()
  images = np.concatenate([np.asarray(b["image"]) for b in batches])
  np.testing.assert_allclose(images[:12], pipeline.normalize_images(split.images), atol=1e-6)


def _multi_caption_split(n, counts):
  """Image i has counts[i] captions; caption c's tokens start with (i, c); image i is all i."""
  tokens = np.zeros((n, max(counts), 6), np.int32)
  for i, count in enumerate(counts):
    tokens[i, :count, 0], tokens[i, :count, 1] = i, np.arange(count)
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 8, 8, 3))
  images = images.copy()
  images[:, :, 0] = 255  # a marked left column shows a flip.
  return pipeline.Split(
      name="multi", images=images, tokens=tokens[:, 0],
      captions=np.array([str(i) for i in range(n)], dtype=object), labels={}, num_global=n,
      num_truncated=0, all_tokens=tokens, num_captions=np.array(counts, np.int32))


def _pairs(batches, num):
  """(image index, caption index, flipped) of each example of num batches."""
  out = []
  for _ in range(num):
    batch = next(batches)
    tokens, images = np.asarray(batch["tokens"]), np.asarray(batch["image"])
    left_bright = images[:, :, 0].mean(axis=(1, 2)) > images[:, :, -1].mean(axis=(1, 2))
    out += list(zip(tokens[:, 0].tolist(), tokens[:, 1].tolist(), (~left_bright).tolist()))
  return out


def test_train_batches_draw_a_caption_per_image_per_epoch_and_resume_exactly(sharding):
  counts = [1, 2, 3, 10, 5, 10, 4, 7]
  split = _multi_caption_split(8, counts)  # one epoch = one batch of 8 images.
  make = lambda start: pipeline.train_batches(split, BATCH, 3, start, sharding, random_flip=True)
  pairs = _pairs(make(0), 60)
  for i, c, _ in pairs:
    assert 0 <= c < counts[i]
  per_image = {i: [c for j, c, _ in pairs if j == i] for i in range(8)}
  assert all(len(cs) == 60 for cs in per_image.values())  # every image once per epoch.
  assert set(per_image[0]) == {0} and set(per_image[1]) == {0, 1}
  assert set(per_image[3]) == set(range(10))  # 60 draws of 10 captions: all appear.
  assert 0.3 < np.mean([flipped for *_, flipped in pairs]) < 0.7
  assert _pairs(make(17), 5) == pairs[17 * 8:22 * 8]  # resume: epoch 17 on, as a fresh stream.
  first = _pairs(pipeline.train_batches(split, BATCH, 3, 0, sharding, random_caption=False), 5)
  assert {c for _, c, _ in first} == {0} and not any(f for *_, f in first)
