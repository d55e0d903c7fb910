"""Temperature, top-k and top-p: each filter against hand-made distributions with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mxq_jax.generation import filters as sampling
from conftest import normal

PROBS = np.array([0.05, 0.5, 0.15, 0.3], np.float32)  # sorted: 1 (.5), 3 (.3), 2 (.15), 0 (.05).
LOGITS = jnp.log(jnp.asarray(PROBS))[None]


def kept(filtered_1xK) -> set[int]:
  return set(np.flatnonzero(np.isfinite(np.asarray(filtered_1xK[0]))).tolist())


@pytest.mark.parametrize("p, expected", [
    (0.3, {1}), (0.5, {1}), (0.51, {1, 3}), (0.8, {1, 3}), (0.81, {1, 3, 2}),
    (0.95, {1, 3, 2}), (0.96, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_that_reaches_p(p, expected):
  assert kept(sampling.top_p_filter(LOGITS, p)) == expected


def test_top_p_keeps_the_kept_logits_unchanged_and_works_row_by_row():
  logits = jnp.stack([LOGITS[0], LOGITS[0][::-1]])
  filtered = sampling.top_p_filter(logits, 0.8)
  np.testing.assert_array_equal(np.isfinite(filtered[0]), [False, True, False, True])
  np.testing.assert_array_equal(np.isfinite(filtered[1]), [True, False, True, False])
  np.testing.assert_allclose(filtered[0, 1], LOGITS[0, 1])


@pytest.mark.parametrize("k, expected", [(1, {1}), (2, {1, 3}), (3, {1, 2, 3}), (4, {0, 1, 2, 3}),
                                         (100, {0, 1, 2, 3})])
def test_top_k_keeps_the_k_most_likely(k, expected):
  assert kept(sampling.top_k_filter(LOGITS, k)) == expected


def test_top_k_one_is_greedy_whatever_the_key():
  logits = normal(0, (64, 50))
  for seed in range(3):
    codes = sampling.sample_codes(jax.random.key(seed), logits, top_k=1, top_p=1.0,
                                  temperature=1.0)
    np.testing.assert_array_equal(codes, jnp.argmax(logits, axis=-1))


def test_temperature_divides_the_logits():
  np.testing.assert_allclose(sampling.apply_temperature(LOGITS, 0.5), LOGITS * 2.0)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_frequencies_follow_the_tempered_distribution(temperature):
  n = 20_000
  logits = jnp.broadcast_to(LOGITS, (n, 4))
  codes = sampling.sample_codes(jax.random.key(1), logits, top_k=4, top_p=1.0,
                                temperature=temperature)
  expected = PROBS ** (1 / temperature) / np.sum(PROBS ** (1 / temperature))
  observed = np.bincount(np.asarray(codes), minlength=4) / n
  # 4 binomial standard errors at n = 20,000 are at most 0.015.
  np.testing.assert_allclose(observed, expected, atol=0.015)


def test_top_p_sampling_never_draws_a_filtered_code():
  logits = jnp.broadcast_to(LOGITS, (5_000, 4))
  codes = sampling.sample_codes(jax.random.key(2), logits, top_k=4, top_p=0.8, temperature=1.0)
  assert set(np.unique(np.asarray(codes)).tolist()) == {1, 3}
  # Renormalized over the kept set: 0.5 / 0.8 and 0.3 / 0.8.
  assert abs(np.mean(np.asarray(codes) == 1) - 0.625) < 0.03


@pytest.mark.parametrize("top_k, top_p, temperature",
                         [(6, 0.9, 0.7), (3, 1.0, 1.5), (12, 0.6, 1.0)])
def test_sampled_codes_follow_the_fully_filtered_distribution(top_k, top_p, temperature):
  """sample_codes (top-p over its k sorted candidates) draws what filtering all K logits in
  Hugging Face's order gives: top_k_filter and top_p_filter are its oracle."""
  n, logits_1xK = 40_000, jnp.asarray(normal(3, (1, 12)))
  filtered = sampling.top_p_filter(
      sampling.top_k_filter(sampling.apply_temperature(logits_1xK, temperature), top_k), top_p)
  expected = np.asarray(jax.nn.softmax(filtered[0]))
  codes = sampling.sample_codes(jax.random.key(4), jnp.broadcast_to(logits_1xK, (n, 12)),
                                top_k=top_k, top_p=top_p, temperature=temperature)
  observed = np.bincount(np.asarray(codes), minlength=12) / n
  assert set(np.flatnonzero(observed)) <= set(np.flatnonzero(expected))  # nothing filtered.
  # 4 binomial standard errors at n = 40,000 are at most 0.01.
  np.testing.assert_allclose(observed, expected, atol=0.01)
