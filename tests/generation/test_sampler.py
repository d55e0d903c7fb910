"""The jitted sampler: cache vs. no cache, determinism, ranges, sharding, no recompilation."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax import config_lib, sharding
from mxq_jax.generation import sampler
from mxq_jax.training import stage1, stage2, trainer as train_lib
from conftest import load_config

BATCH = 16


def make_setup(config):
  mesh = sharding.make_mesh(config.mesh)  # all 8 fake devices on the batch axis.
  states = []
  for task in (stage2.make_task(config, stage1_step=0), stage1.make_task(config)):
    _, shardings = train_lib.abstract_state(task, mesh)
    states.append(sampler.variables_of(train_lib.init_state(task, 0, shardings)))
  # A random prior is nearly uniform; sharpen its head so that samples depend on the prefix.
  params = states[0][0]
  params["head"]["kernel"][...] = params["head"]["kernel"][...] * 50.0
  return config, mesh, states[0], states[1]


@pytest.fixture(scope="module")
def setup():
  return make_setup(load_config("synthetic", "smoke"))


def sample(setup, seed, *, cached=True, top_k=10, top_p=1.0, temperature=1.0, mesh=None):
  config, default_mesh, prior_vars, vae_vars = setup
  fn = sampler.make_sampler(config, mesh or default_mesh, batch_size=BATCH, top_k=top_k,
                            cached=cached)
  return fn, fn(prior_vars, vae_vars, jax.random.key(seed), top_p, temperature)


def test_shapes_dtypes_and_ranges(setup):
  config = setup[0]
  _, out = sample(setup, 0)
  n, size = config_lib.num_joint_codes(config), config.data.image_size
  assert out["codes"].shape == (BATCH, n) and out["codes"].dtype == jnp.int32
  assert out["images"].shape == (BATCH, size, size, 3) and out["images"].dtype == jnp.uint8
  assert out["tokens"].shape == (BATCH, config.data.text_length)
  codes = np.asarray(out["codes"])
  assert codes.min() >= 0 and codes.max() < config.vqvae.codebook_size
  assert np.asarray(out["tokens"]).max() < config.data.vocab_size


def test_cached_and_uncached_decoding_draw_the_same_codes(setup):
  # Same key per position and the same logits (to float rounding): the same samples.
  _, cached = sample(setup, 3, cached=True, top_k=1000)
  _, uncached = sample(setup, 3, cached=False, top_k=1000)
  same = np.mean(np.asarray(cached["codes"]) == np.asarray(uncached["codes"]))
  assert same > 0.99, same  # a near-tie flipped by rounding may change a code, and its suffix.


def test_a_grid_rotary_prior_samples_the_same_codes_cached_and_uncached():
  # The rotary tables follow each code's grid place through the prior's order and the cache.
  config = load_config("synthetic", "smoke")
  config.prior.grid_rotary_dims = 16
  rotary = make_setup(config)
  _, cached = sample(rotary, 3, cached=True, top_k=1000)
  _, uncached = sample(rotary, 3, cached=False, top_k=1000)
  assert np.mean(np.asarray(cached["codes"]) == np.asarray(uncached["codes"])) > 0.99


def test_same_seed_same_samples_other_seed_other_samples(setup):
  _, a = sample(setup, 1)
  _, b = sample(setup, 1)
  _, c = sample(setup, 2)
  np.testing.assert_array_equal(a["codes"], b["codes"])
  np.testing.assert_array_equal(a["images"], b["images"])
  assert np.mean(np.asarray(a["codes"]) != np.asarray(c["codes"])) > 0.5


def test_top_k_one_is_greedy_and_ignores_the_key(setup):
  _, a = sample(setup, 1, top_k=1)
  _, b = sample(setup, 2, top_k=1)
  np.testing.assert_array_equal(a["codes"], b["codes"])
  assert len({tuple(row) for row in np.asarray(a["codes"])}) == 1  # one greedy sequence.


def test_image_temperature_applies_to_the_image_codes_only(setup):
  config, mesh, prior_vars, vae_vars = setup
  fn = sampler.make_sampler(config, mesh, batch_size=BATCH, top_k=1000)
  num_image = config_lib.image_grid_size(config) ** 2  # stage-1 order: image codes first.
  draw = lambda seed, *temperatures: np.asarray(fn(
      prior_vars, vae_vars, jax.random.key(seed), 1.0, *map(jnp.float32, temperatures))["codes"])
  cold_text = [draw(seed, 1e-4, 1.0) for seed in (1, 2)]  # text greedy, image sampled.
  np.testing.assert_array_equal(cold_text[0][:, num_image:], cold_text[1][:, num_image:])
  assert np.mean(cold_text[0][:, :num_image] != cold_text[1][:, :num_image]) > 0.3
  cold_image = [draw(seed, 1.0, 1e-4) for seed in (1, 2)]  # text sampled, image greedy.
  assert np.mean(cold_image[0][:, num_image:] != cold_image[1][:, num_image:]) > 0.3
  np.testing.assert_array_equal(draw(3, 0.7, 0.7), draw(3, 0.7))  # equal: as if not given.


@contextlib.contextmanager
def traces_of(function_name: str):
  """The list of times `function_name` is traced by jit while the block runs (jax.monitoring)."""
  traced = []

  def listener(event: str, duration: float, **kwargs) -> None:
    del duration
    if event == "/jax/core/compile/jaxpr_trace_duration" and kwargs.get("fun_name") == (
        function_name):
      traced.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield traced
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_new_key_and_settings_reuse_the_compiled_program(setup):
  config, mesh, prior_vars, vae_vars = setup
  fn = sampler.make_sampler(config, mesh, batch_size=BATCH, top_k=10)
  with traces_of("sample") as traced:
    for seed, top_p, temperature in [(0, 1.0, 1.0), (1, 0.9, 1.0), (2, 0.5, 0.7)]:
      jax.block_until_ready(fn(prior_vars, vae_vars, jax.random.key(seed), jnp.float32(top_p),
                               jnp.float32(temperature)))
  assert len(traced) == 1  # traced (and compiled) for the first call only.
  with traces_of("sample") as traced:  # the listener sees a new program: it can fail.
    sampler.make_sampler(config, mesh, batch_size=2 * BATCH, top_k=10)(
        prior_vars, vae_vars, jax.random.key(0), jnp.float32(1.0), jnp.float32(1.0))
  assert len(traced) == 1


def test_batch_is_sharded_and_matches_one_device(setup):
  config, mesh, prior_vars, vae_vars = setup
  _, out = sample(setup, 5)
  assert out["codes"].sharding.spec == sharding.batch_sharding(mesh).spec
  assert len({s.index[0].start for s in out["images"].addressable_shards}) == jax.device_count()
  one_device = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  one = jax.device_put((prior_vars, vae_vars), sharding.replicated(one_device))
  fn = sampler.make_sampler(config, one_device, batch_size=BATCH, top_k=10)
  single = fn(*one, jax.random.key(5), 1.0, 1.0)
  np.testing.assert_array_equal(out["codes"], single["codes"])


def test_batch_must_divide_the_devices(setup):
  config, mesh = setup[0], setup[1]
  with pytest.raises(ValueError, match="divisible by the 8 devices"):
    sampler.make_sampler(config, mesh, batch_size=12, top_k=10)


def test_codes_do_not_depend_on_how_many_positions_each_scan_decodes(setup):
  # Scans over growing caches are an optimization: bitwise the codes of one scan. Each scan
  # length is a program of its own; n = 12 at :smoke: scans of 5, 5, 2 (a short last one) and
  # four of 3 (caches grown at other places) against one of 12.
  config, _, prior_vars, _ = setup
  prior = nnx.merge(stage2.make_task(config, 0).graphdef, *prior_vars)
  n = prior.seq_len
  codes = {per_scan: np.asarray(sampler.generate_codes(
      prior, jax.random.key(5), BATCH, top_k=10, top_p=1.0, temperature=1.0,
      positions_per_scan=per_scan)) for per_scan in (n, 5, 3)}
  assert codes[n].shape == (BATCH, n) and n > 5 and n % 5 and not n % 3
  np.testing.assert_array_equal(codes[5], codes[n])
  np.testing.assert_array_equal(codes[3], codes[n])


def test_text_first_prior_codes_come_back_in_stage1_order(setup):
  config, mesh, prior_vars, vae_vars = setup
  config = config.copy_and_resolve_references()
  config.prior.code_order = "text_first"
  order = config_lib.prior_code_order(config)
  num_image = config_lib.image_grid_size(config) ** 2
  np.testing.assert_array_equal(order[:config_lib.text_positions(config)],
                                np.arange(num_image, config_lib.num_joint_codes(config)))
  out = sampler.make_sampler(config, mesh, batch_size=BATCH, top_k=10)(
      prior_vars, vae_vars, jax.random.key(4), 1.0, 1.0)
  prior = nnx.merge(stage2.make_task(config, 0).graphdef, *prior_vars)
  in_prior_order = sampler.generate_codes(prior, jax.random.key(4), BATCH, top_k=10, top_p=1.0,
                                          temperature=1.0)
  np.testing.assert_array_equal(np.asarray(out["codes"])[:, order], in_prior_order)
  images, tokens = sampler.decode_pairs(
      nnx.merge(stage1.make_task(config).graphdef, *vae_vars), out["codes"])
  np.testing.assert_array_equal(out["tokens"], tokens)
