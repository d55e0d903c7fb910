"""Stage 2: the prior's objective trains, and the codes are stored, read back and checked."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax import codes as codes_lib, config_lib, sharding, stage1, stage2, train_lib
from mxq_jax.data import pipeline
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
  config = load_config("synthetic", "smoke")
  mesh = sharding.make_mesh(config.mesh)
  _, shardings = train_lib.abstract_state(stage1.make_stage(config), mesh)
  return config, mesh, train_lib.init_state(stage1.make_stage(config), 0, shardings)


def test_teacher_forcing_shifts_in_bos():
  config = load_config("synthetic", "smoke")
  prior = stage2.build_model(config, nnx.Rngs(0))
  codes = jnp.array([[5, 6, 7]])
  np.testing.assert_array_equal(stage2.teacher_forcing_inputs(prior, codes),
                                [[config.vqvae.codebook_size, 5, 6]])


def test_prior_loss_falls_on_a_fixed_batch():
  config = load_config("synthetic", "smoke")
  config.prior.dropout = 0.0
  config.prior.optim.update(learning_rate=1e-2, warmup_steps=1, num_steps=60)
  stage = stage2.make_stage(config, stage1_step=0)
  mesh = sharding.make_mesh(config.mesh)
  _, shardings = train_lib.abstract_state(stage, mesh)
  state = train_lib.init_state(stage, 0, shardings)
  step = train_lib.make_train_step(stage, mesh, shardings)
  n = config_lib.num_joint_codes(config)
  codes = jax.random.randint(jax.random.key(1), (16, n), 0, config.vqvae.codebook_size)
  batch = jax.device_put({"codes": codes}, sharding.batch_sharding(mesh))
  losses = []
  for _ in range(60):
    state, metrics = step(state, batch, jax.random.key(0))
    losses.append(float(metrics["loss"]))
  assert losses[0] == pytest.approx(np.log(config.vqvae.codebook_size), rel=0.05)
  assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_eval_summary_in_nats_bits_and_perplexity():
  sums = {"examples": np.float32(4), "nll": np.float32(4 * 10 * np.log(2)),
          "correct": np.float32(20)}
  summary = stage2.summarize_eval(sums, seq_len=10)
  assert summary["bits_per_pair"] == pytest.approx(10.0)
  assert summary["perplexity"] == pytest.approx(2.0)
  assert summary["accuracy"] == pytest.approx(0.5)


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
