"""Stage 2: the prior's objective: teacher forcing, a falling loss, its test summary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax import config_lib, sharding
from mxq_jax.training import stage2, trainer as train_lib
from conftest import integers, load_config


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
  stage = stage2.make_task(config, stage1_step=0)
  mesh = sharding.make_mesh(config.mesh)
  _, shardings = train_lib.abstract_state(stage, mesh)
  state = train_lib.init_state(stage, 0, shardings)
  step = train_lib.make_train_step(stage, mesh, shardings)
  learning_rate = train_lib.make_learning_rate(stage, mesh)
  n = config_lib.num_joint_codes(config)
  codes = integers(1, (16, n), config.vqvae.codebook_size)
  batch = jax.device_put({"codes": codes}, sharding.batch_sharding(mesh))
  losses = []
  for _ in range(60):
    state, metrics = step(state, batch, jax.random.key(0), learning_rate(state.step))
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
