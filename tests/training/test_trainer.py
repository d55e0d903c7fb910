"""The shared training machinery, exercised on the stage-1 model at smoke size."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mxq_jax import config_lib, sharding
from mxq_jax.training import checkpoints as checkpointing, optimizer as optimizer_lib, stage1
from mxq_jax.training import trainer as train_lib
from conftest import load_config


def place(batch, mesh):
  return jax.device_put(batch, sharding.batch_sharding(mesh))


def run_steps(config, mesh, batch, num_steps: int):
  stage = stage1.make_task(config)
  _, shardings = train_lib.abstract_state(stage, mesh, config.seed)
  state = train_lib.init_state(stage, config.seed, shardings)
  step = train_lib.make_train_step(stage, mesh, shardings)
  learning_rate = train_lib.make_learning_rate(stage, mesh)
  key = jax.random.key(config.seed)
  losses = []
  for _ in range(num_steps):
    state, metrics = step(state, place(batch, mesh), key, learning_rate(state.step))
    losses.append(float(metrics["loss"]))
  return state, losses


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
  config = load_config("synthetic", "smoke")
  config.vqvae.optim.update(learning_rate=3e-3, warmup_steps=1, num_steps=40)
  mesh = sharding.make_mesh(config.mesh)  # the default mesh: the step most tests compile.
  # Two distinct pairs, eight copies each: memorizable in a few steps, masking differs per copy.
  batch = jax.tree.map(lambda x: np.tile(x, (8,) + (1,) * (x.ndim - 1)),
                       stage1.random_batch(config, 2))
  _, losses = run_steps(config, mesh, batch, 40)
  assert all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("data,fsdp", [(8, 1), (2, 4)])
def test_sharded_step_matches_one_device(data, fsdp, monkeypatch):
  """Same loss and parameters on 8 devices (data-parallel, or fsdp-sharded) as on 1."""
  monkeypatch.setattr(sharding, "FSDP_MIN_SIZE", 256)  # so that smoke-size kernels shard.
  config = load_config("synthetic", "smoke")
  # A large Adam eps keeps updates linear in tiny gradients: with eps=1e-8 a gradient of 1e-9
  # whose sign depends on summation order would move its parameter by a whole +-lr.
  config.vqvae.optim.update(warmup_steps=1, eps=1e-3)
  config.vqvae.dropout = 0.1  # dropout masks must not depend on the layout either.
  batch = stage1.random_batch(config, 16)
  one = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  state_1, losses_1 = run_steps(config, one, batch, 3)

  config.mesh.fsdp = fsdp
  mesh = sharding.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": data, "fsdp": fsdp}
  state_n, losses_n = run_steps(config, mesh, batch, 3)

  # Tolerance: float32 reductions are summed in another order when split over devices.
  np.testing.assert_allclose(losses_n, losses_1, rtol=1e-5)
  flat_1 = jax.tree.leaves(jax.device_get(state_1.params))
  flat_n = jax.tree.leaves(jax.device_get(state_n.params))
  assert len(flat_1) == len(flat_n)
  for a, b in zip(flat_1, flat_n):
    # Tolerance: a sixth of one step's size (lr = 3e-4). Summing in another order can flip
    # the nearest code of a near-tie, which changes a few gradients by more than rounding.
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=5e-5)
  if fsdp > 1:  # the fsdp mesh really shards the large parameters.
    specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state_n.params)]
    assert any("fsdp" in spec for spec in specs), specs


STEPS = 3  # this file's Trainer runs: a few steps, seconds each at :smoke size.


def test_one_compiled_step_serves_every_schedule():
  """The step takes its learning rate as an argument, from the schedule's own small program:
  another step budget, warm-up or peak rate (an extended run, a rate sweep) compiles no new
  train step, and the persistent compilation cache serves it."""
  programs = set()
  for steps, warmup, peak in [(STEPS, 2, 3e-4), (5_000, 250, 2e-3)]:
    config = load_config("synthetic", "smoke")
    config.vqvae.optim.update(num_steps=steps, warmup_steps=warmup, learning_rate=peak)
    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
    task = stage1.make_task(config)
    abstract, shardings = train_lib.abstract_state(task, mesh)
    rate = train_lib.make_learning_rate(task, mesh)
    programs.add(train_lib.make_train_step(task, mesh, shardings).lower(
        abstract, stage1.random_batch(config, 16), jax.random.key(0),
        rate(jnp.int32(0))).as_text())
    for step in (0, 1, warmup, steps - 1):  # rel: the warm-up's cancellation, eager vs jit.
      assert float(rate(jnp.int32(step))) == pytest.approx(
          float(optimizer_lib.learning_rate_schedule(config.vqvae.optim)(step)), rel=1e-4)
  assert len(programs) == 1


def fit_stage1(config, workdir: str, mesh, train_batches):
  """Stage 1 trained by the Trainer from `train_batches`: (state, test metrics)."""
  trainer = train_lib.Trainer(stage1.make_task(config), workdir=workdir, mesh=mesh, seed=0)
  return trainer.fit(train_batches)


def test_checkpoint_restore_and_continue(tmp_path):
  config = load_config("synthetic", "smoke")
  config.vqvae.optim.update(num_steps=STEPS, checkpoint_every=2, log_every=2)
  mesh = sharding.make_mesh(config.mesh)
  batch = stage1.random_batch(config, config.vqvae.optim.batch_size)
  batches = lambda start: iter([place(batch, mesh)] * 100)
  stage = stage1.make_task(config)
  workdir = str(tmp_path)

  state, _ = train_lib.Trainer(stage, workdir=workdir, mesh=mesh, seed=0).fit(
      batches)
  assert int(state.step) == STEPS
  manager = checkpointing.make_manager(os.path.join(workdir, "stage1", "checkpoints"), 2)
  assert manager.all_steps() == [2, STEPS]
  abstract, _ = train_lib.abstract_state(stage, mesh)
  restored = checkpointing.restore(manager, STEPS, abstract)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  manager.close()

  # Asking for more steps continues from the last one, not from scratch.
  config.vqvae.optim.num_steps = 6
  starts = []
  def recording_batches(start):
    starts.append(start)
    return batches(start)
  state, _ = fit_stage1(config, workdir, mesh, recording_batches)
  assert starts == [STEPS] and int(state.step) == 6


def test_incompatible_checkpoint_is_refused_and_nothing_written(tmp_path):
  config = load_config("synthetic", "smoke")
  config.vqvae.optim.update(num_steps=STEPS, checkpoint_every=2)
  mesh = sharding.make_mesh(config.mesh)
  batch = stage1.random_batch(config, config.vqvae.optim.batch_size)
  fit_stage1(config, str(tmp_path), mesh, lambda start: iter([place(batch, mesh)] * 10))
  before = sorted(str(p) + str(p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))

  config.vqvae.embed_dim = 32
  with pytest.raises(config_lib.ConfigError, match="embed_dim: checkpoint 16 vs config 32"):
    fit_stage1(config, str(tmp_path), mesh, lambda start: iter([]))
  # Clipping off changes the optimizer state's tree: refused too, not taken for damage (which
  # would move every checkpoint aside and train from step 0).
  config.vqvae.embed_dim = 16
  config.vqvae.optim.grad_clip_norm = 0.0
  with pytest.raises(config_lib.ConfigError,
                     match="optimizer: checkpoint 'clip_by_global_norm, adamw' vs config 'adamw'"):
    fit_stage1(config, str(tmp_path), mesh, lambda start: iter([]))
  after = sorted(str(p) + str(p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
  assert before == after


def test_nan_loss_stops_with_a_clear_error(tmp_path):
  config = load_config("synthetic", "smoke")
  config.vqvae.optim.update(num_steps=STEPS, log_every=1)
  mesh = sharding.make_mesh(config.mesh)
  batch = stage1.random_batch(config, config.vqvae.optim.batch_size)
  batch["image"][:] = np.nan
  with pytest.raises(FloatingPointError, match="the loss is nan at step 1"):
    fit_stage1(config, str(tmp_path), mesh, lambda start: iter([place(batch, mesh)] * 10))
  manager = checkpointing.make_manager(str(tmp_path / "stage1" / "checkpoints"), 2)
  assert manager.latest_step() is None  # no NaN state was checkpointed.


def test_psnr_and_text_accuracy_on_known_cases():
  target = jnp.zeros((2, 4, 4, 3))
  from mxq_jax.data import pipeline
  # A reconstruction off by 0.1 in [0, 1] pixel space everywhere: MSE 0.01 -> 20 dB.
  shifted = pipeline.normalize_images(
      np.clip(pipeline.denormalize_images(np.zeros((2, 4, 4, 3))) + 0.1, 0, 1) * 255.0)
  psnr = stage1.psnr_per_image(jnp.asarray(shifted), target)
  np.testing.assert_allclose(psnr, 20.0, atol=0.3)  # 8-bit round trip of the target.

  tokens = jnp.array([[2, 7, 8, 3, 0, 0]])
  logits = jax.nn.one_hot(jnp.array([[2, 7, 9, 3, 5, 5]]), 10) * 50.0
  _, accuracy = stage1.text_loss_and_accuracy(logits, tokens)
  assert float(accuracy) == pytest.approx(0.75)  # pads are ignored; 3 of 4 real tokens.


def test_a_profile_is_written_when_the_config_asks_for_one(tmp_path):
  config = load_config("synthetic", "smoke")
  config.vqvae.optim.update(num_steps=STEPS, profile_steps=2,
                            profile_first_step=1)
  mesh = sharding.make_mesh(config.mesh)
  batch = stage1.random_batch(config, config.vqvae.optim.batch_size)
  fit_stage1(config, str(tmp_path), mesh, lambda start: iter([place(batch, mesh)] * 10))
  traces = list((tmp_path / "stage1").rglob("*.xplane.pb"))
  assert traces, sorted(str(p) for p in (tmp_path / "stage1").rglob("*"))
