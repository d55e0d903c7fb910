"""The codes store: encoded once per stage-1 step, complete only with meta.json, read back in
the global order by any number of processes, refused for another stage-1 model."""

import json

import jax
import numpy as np
import pytest

from mxq_jax import config_lib, sharding
from mxq_jax.data import pipeline
from mxq_jax.training import codes as codes_lib, stage1, trainer as train_lib
from conftest import load_config


def random_split(config, name: str, n: int, seed: int) -> pipeline.Split:
  batch = stage1.random_batch(config, n, seed)
  images = np.random.default_rng(seed).integers(0, 256, batch["image"].shape, dtype=np.uint8)
  return pipeline.Split(name=name, images=images, tokens=batch["tokens"],
                        captions=np.array([""] * n, object), labels={}, num_global=n,
                        num_truncated=0)


def random_splits(config, num_train: int, num_test: int) -> pipeline.DataSplits:
  return pipeline.DataSplits(train=random_split(config, "train", num_train, 0),
                             test=random_split(config, "test", num_test, 1), tokenizer=None,
                             label_names={})


@pytest.fixture(scope="module")
def trained_stage1():
  """The smoke stage 1 after 4 train steps on random pairs: a data-initialized codebook."""
  config = load_config("synthetic", "smoke")
  mesh = sharding.make_mesh(config.mesh)
  task = stage1.make_task(config)
  _, shardings = train_lib.abstract_state(task, mesh)
  state = train_lib.init_state(task, 0, shardings)
  step = train_lib.make_train_step(task, mesh, shardings)
  learning_rate = train_lib.make_learning_rate(task, mesh)
  batch = jax.device_put(stage1.random_batch(config, config.vqvae.optim.batch_size),
                         sharding.batch_sharding(mesh))
  for _ in range(4):
    state, _ = step(state, batch, jax.random.key(0), learning_rate(state.step))
  assert int(state.step) == 4
  return config, mesh, state


def test_codes_are_written_once_and_read_back_as_encoded(tmp_path, trained_stage1):
  config, mesh, state = trained_stage1
  splits = random_splits(config, 40, 20)
  directory = codes_lib.encode_splits(config, str(tmp_path), mesh, splits, state, 7)
  assert directory == codes_lib.codes_dir(str(tmp_path), 7) and codes_lib.is_complete(directory)
  meta = codes_lib.read_meta(directory)
  assert meta["examples"] == {"train": 40, "test": 20} and meta["stage1_step"] == 7

  test_codes = codes_lib.load_codes(directory, "test")
  assert test_codes.shape == (20, config_lib.num_joint_codes(config))
  assert test_codes.min() >= 0 and test_codes.max() < config.vqvae.codebook_size
  # The same codes as encoding the batches on the fly (stage 2's other mode).
  stream = codes_lib.on_the_fly(config, mesh, state, pipeline.eval_batches(
      splits.test, 16, sharding.batch_sharding(mesh)))
  on_the_fly = np.concatenate([np.asarray(b["codes"]) for b in stream])[:20]
  np.testing.assert_array_equal(test_codes, on_the_fly)


def test_codes_of_several_processes_are_interleaved_back(tmp_path):
  # Process p wrote global examples p::2; a reader in one process gets the global order.
  for p in range(2):
    np.save(tmp_path / f"train-{p:05d}-of-00002.npy", np.arange(p, 7, 2)[:, None] * [1, 1])
  (tmp_path / "meta.json").write_text(json.dumps(
      {"seq_len": 2, "num_shards": 2, "examples": {"train": 7}}))
  np.testing.assert_array_equal(codes_lib.load_codes(str(tmp_path), "train")[:, 0], range(7))


def test_codes_of_another_stage1_model_are_refused(tmp_path, trained_stage1):
  config, mesh, state = trained_stage1
  splits = random_splits(config, 16, 16)
  directory = codes_lib.encode_splits(config, str(tmp_path), mesh, splits, state, 1)
  codes_lib.check_matches(directory, config)
  other = load_config("synthetic", "smoke")
  other.vqvae.codebook_size = 64
  with pytest.raises(config_lib.ConfigError, match="codebook_size: checkpoint 32 vs config 64"):
    codes_lib.check_matches(directory, other)


def test_a_directory_without_meta_json_is_incomplete(tmp_path, trained_stage1):
  config, mesh, state = trained_stage1
  directory = codes_lib.encode_splits(config, str(tmp_path), mesh, random_splits(config, 16, 16),
                                      state, 2)
  codes = codes_lib.load_codes(directory, "train")
  assert len(np.unique(codes)) > 1  # a trained codebook: the pairs get different codes.
  (tmp_path / "codes" / "stage1_step_2" / "meta.json").unlink()  # as if killed before it.
  assert not codes_lib.is_complete(directory)


def test_missing_shards_are_refused_with_the_fix(tmp_path):
  np.save(tmp_path / "train-00000-of-00002.npy", np.zeros((3, 2), np.uint16))
  (tmp_path / "meta.json").write_text(json.dumps(
      {"seq_len": 2, "num_shards": 2, "examples": {"train": 6}}))
  with pytest.raises(FileNotFoundError, match="1 train shards, meta.json says 2; delete"):
    codes_lib.load_codes(str(tmp_path), "train")


def test_storage_dtype_holds_every_code():
  assert codes_lib.storage_dtype(512) == np.uint16 and codes_lib.storage_dtype(2**16) == np.uint16
  assert codes_lib.storage_dtype(2**16 + 1) == np.int32
