"""Pair metrics on hand-made cases with known answers, and the Fréchet distance's closed form."""

import jax
import numpy as np
import pytest

from mxq_jax.evaluation import evaluator, pair_metrics
from mxq_jax.data import caption_attributes as attrs, tokenizer
from mxq_jax.evaluation.evaluator import label_ids as _label_ids

NUM_CLASSES = {"digit": 10, "color": 8, "position": 5, "size": 2}


def random_attributes(n: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {name: rng.integers(0, k, n) for name, k in NUM_CLASSES.items()}


def captions_of(attributes, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  n = len(attributes["digit"])
  return [attrs.make_caption(int(attributes["digit"][i]), attrs.COLOR_NAMES[attributes["color"][i]],
                             attrs.POSITION_NAMES[attributes["position"][i]],
                             attrs.SIZE_NAMES[attributes["size"][i]], int(rng.integers(6)),
                             int(rng.integers(8)))
          for i in range(n)]


def parse_all(captions):
  return [_label_ids(attrs.parse_caption(c)) for c in captions]


def test_a_perfectly_coherent_set_scores_one():
  images = random_attributes(500, 0)
  metrics = pair_metrics.coherence(parse_all(captions_of(images)), images)
  assert metrics["coherence"] == 1.0
  assert all(metrics[f"{name}_agreement"] == 1.0 for name in NUM_CLASSES)


def test_a_shuffled_set_scores_near_chance():
  images = random_attributes(2000, 1)
  parsed = parse_all(captions_of(images))
  shuffled = {name: np.random.default_rng(2).permutation(v) for name, v in images.items()}
  metrics = pair_metrics.coherence(parsed, shuffled)
  chance = np.prod([1 / k for k in NUM_CLASSES.values()])  # 1 / 800.
  assert metrics["coherence"] < 10 * chance
  for name, k in NUM_CLASSES.items():
    assert metrics[f"{name}_agreement"] == pytest.approx(1 / k, abs=0.04)


def test_unparseable_captions_count_against_coherence_and_validity():
  images = random_attributes(4, 3)
  captions = captions_of(images)
  captions[1] = "a red blob somewhere"
  parsed = parse_all(captions)
  assert pair_metrics.caption_validity(parsed) == 0.75
  assert pair_metrics.coherence(parsed, images)["coherence"] == 0.75
  assert pair_metrics.coherence([None] * 4, images)["coherence"] == 0.0


def test_total_variation_known_values():
  assert pair_metrics.total_variation([1, 1], [1, 1]) == 0.0
  assert pair_metrics.total_variation([1, 0], [0, 1]) == 1.0
  assert pair_metrics.total_variation([3, 1], [1, 1]) == pytest.approx(0.25)
  same = random_attributes(1000, 4)
  assert pair_metrics.attribute_tvd(same, same, NUM_CLASSES)["attribute_tvd"] == 0.0
  only_zeros = {name: np.zeros(10, int) for name in NUM_CLASSES}
  tvd = pair_metrics.attribute_tvd(only_zeros, random_attributes(100_000, 5), NUM_CLASSES)
  assert tvd["size_tvd"] == pytest.approx(0.5, abs=0.01)
  assert tvd["digit_tvd"] == pytest.approx(0.9, abs=0.01)


def test_combinations_count_distinct_joint_values():
  a = {"digit": np.array([1, 1, 2]), "color": np.array([0, 0, 0])}
  assert pair_metrics.combinations(a) == {(0, 1), (0, 2)}


def test_frechet_distance_of_gaussians_matches_the_closed_form():
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
  assert pair_metrics.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]),
                                       np.array([[1.0]])) == pytest.approx(4.0 + 1.0)
  # Diagonal covariances: the sum over dimensions.
  rng = np.random.default_rng(6)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = rng.uniform(0.5, 2.0, 5), rng.uniform(0.5, 2.0, 5)
  expected = np.sum((mu1 - mu2) ** 2 + (np.sqrt(s1) - np.sqrt(s2)) ** 2)
  assert pair_metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(
      expected)
  # A full covariance against itself, rotated: distance zero only for the same Gaussian.
  a = rng.normal(size=(5, 5))
  sigma = a @ a.T + np.eye(5)
  assert pair_metrics.frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0.0, abs=1e-6)


def test_feature_frechet_distance_estimates_the_gaussians_distance():
  rng = np.random.default_rng(7)
  a = rng.normal(0.0, 1.0, size=(20_000, 3))
  b = rng.normal(1.0, 2.0, size=(20_000, 3))
  expected = 3 * (1.0 + (1.0 - 2.0) ** 2)
  assert pair_metrics.feature_frechet_distance(a, b) == pytest.approx(expected, rel=0.05)


def test_novelty_counts_captions_not_in_the_training_set():
  train = ["a small red 1 in the top left", "a large blue 2 in the center"]
  assert pair_metrics.novelty(["A small red 1 in the  top left", "a small red 2 in the top left"],
                              train) == 0.5


def test_reconstruction_inputs_under_a_traced_condition_are_the_named_ones():
  """One compiled program serves the three reconstruction conditions: traced, the condition's
  index selects exactly the inputs its name gives (the image zeroed in normalized space, or
  every caption piece masked with BOS, EOS and PAD kept)."""
  images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  tokens = np.array([[2, 9, 17, 3, 0, 0], [2, 30, 3, 0, 0, 0]], np.int32)
  named = jax.jit(evaluator.masked_inputs, static_argnums=2)  # a program per condition.
  traced = jax.jit(evaluator.masked_inputs)
  for index, condition in enumerate(evaluator.CONDITIONS):
    want_images, want_tokens = named(images, tokens, condition)
    got_images, got_tokens = traced(images, tokens, np.int32(index))
    np.testing.assert_array_equal(got_images, want_images)
    np.testing.assert_array_equal(got_tokens, want_tokens)
  _, tokens_only = evaluator.masked_inputs(images, tokens, "image_only")
  np.testing.assert_array_equal(tokens_only, [[2, tokenizer.MASK_ID, tokenizer.MASK_ID, 3, 0, 0],
                                              [2, tokenizer.MASK_ID, 3, 0, 0, 0]])
  assert not np.any(evaluator.masked_inputs(images, tokens, "caption_only")[0])
  with pytest.raises(ValueError, match="unknown reconstruction condition 'both'"):
    evaluator.reconstruct(None, images, tokens, "both")
