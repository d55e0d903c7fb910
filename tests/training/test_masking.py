"""Training-input masking: exact counts, whole patches, no replacement, specials never masked."""

import jax
import jax.numpy as jnp
import numpy as np

from mxq_jax.training import masking

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4


def patches(images, patch):
  """[B, H, W, C] -> [B, P, patch * patch * C]."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), -1)


def test_image_masking_zeroes_an_exact_number_of_whole_patches():
  images = np.random.default_rng(0).uniform(0.1, 1.0, (6, 32, 32, 3)).astype(np.float32)
  masked = jax.jit(masking.mask_image_patches, static_argnums=(2, 3))(
      jax.random.key(1), images, 8, 0.3)
  orig_p, masked_p = np.asarray(patches(images, 8)), np.asarray(patches(masked, 8))
  zero = np.all(masked_p == 0, axis=-1)
  untouched = np.all(masked_p == orig_p, axis=-1)
  assert np.all(zero | untouched)  # Whole patches: zeroed entirely or left exactly as they were.
  np.testing.assert_array_equal(zero.sum(-1), round(0.3 * 16))  # 5 distinct patches each.
  assert len({tuple(row) for row in zero}) > 1  # Each example draws its own patches.


def test_image_masking_reaches_every_patch_including_the_last():
  images = jnp.ones((256, 16, 16, 1))
  masked = masking.mask_image_patches(jax.random.key(2), images, 8, 0.3)  # 4 patches, 1 masked.
  zero = np.all(np.asarray(patches(masked, 8)) == 0, axis=-1)
  np.testing.assert_array_equal(zero.sum(-1), 1)
  assert np.all(zero.sum(0) > 0)  # The reference never picks the last patch; we do.


def test_image_masking_ratio_zero_and_determinism():
  images = np.random.default_rng(0).uniform(0.0, 1.0, (2, 16, 16, 3)).astype(np.float32)
  np.testing.assert_array_equal(masking.mask_image_patches(jax.random.key(0), images, 4, 0.0),
                                images)
  a = masking.mask_image_patches(jax.random.key(5), images, 4, 0.5)
  b = masking.mask_image_patches(jax.random.key(5), images, 4, 0.5)
  c = masking.mask_image_patches(jax.random.key(6), images, 4, 0.5)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def make_tokens():
  rows = [
      [BOS] + list(range(5, 15)) + [EOS] + [PAD] * 4,  # 10 real tokens.
      [BOS, 7, UNK, 9, 11, 12, 13, EOS] + [PAD] * 8,  # 6 real, UNK included.
      [BOS, EOS] + [PAD] * 14,  # None.
      [BOS] + list(range(20, 34)) + [EOS],  # 14 real.
  ]
  return jnp.array(rows, jnp.int32)


def test_token_masking_counts_and_positions():
  tokens = make_tokens()
  out = np.asarray(jax.jit(masking.mask_tokens, static_argnums=(2, 3))(
      jax.random.key(0), tokens, 0.3, MASK))
  tokens = np.asarray(tokens)
  real = ~np.isin(tokens, [PAD, BOS, EOS])
  changed = out != tokens
  np.testing.assert_array_equal(changed.sum(-1), [3, 2, 0, 4])  # round(.3 * [10, 6, 0, 14]).
  assert not np.any(changed & ~real)  # PAD, BOS, EOS never masked.
  np.testing.assert_array_equal(out[changed], MASK)
  np.testing.assert_array_equal(out[~changed], tokens[~changed])  # The rest untouched.


def test_token_masking_without_replacement_and_any_real_position():
  tokens = jnp.tile(make_tokens()[:1], (512, 1))
  out = np.asarray(masking.mask_tokens(jax.random.key(3), tokens, 0.5, MASK))
  changed = out != np.asarray(tokens)
  np.testing.assert_array_equal(changed.sum(-1), 5)  # 5 distinct of 10 in every row.
  real_positions = np.arange(1, 11)
  assert np.all(changed[:, real_positions].sum(0) > 0)  # Every real position can be drawn.


def test_token_masking_deterministic_for_a_key():
  tokens = make_tokens()
  a = masking.mask_tokens(jax.random.key(1), tokens, 0.3, MASK)
  b = masking.mask_tokens(jax.random.key(1), tokens, 0.3, MASK)
  np.testing.assert_array_equal(a, b)
  outs = {np.asarray(masking.mask_tokens(jax.random.key(k), tokens, 0.3, MASK)).tobytes()
          for k in range(5)}
  assert len(outs) > 1
