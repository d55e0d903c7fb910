"""Training-input masking (pure JAX, runs inside the jitted train step).

Stage 1 sees a masked pair and must reconstruct the whole one: patches of the image are zeroed
and caption tokens replaced by the mask id. Both draw WITHOUT replacement (ranks of uniform
noise), so the masked fraction is exact per example; every patch may be chosen (the
reference's sampling with replacement that never picks the last patch is not copied).
Counts are round-half-up: floor(ratio * n + 0.5).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _ranks(noise_BxM: jax.Array) -> jax.Array:
  """Rank of each entry within its row (0 = smallest): a uniform random permutation."""
  return jnp.argsort(jnp.argsort(noise_BxM, axis=-1), axis=-1)


def num_masked(ratio: float, count):
  """How many of `count` items a ratio masks (round half up; works on ints and arrays)."""
  return jnp.floor(ratio * jnp.asarray(count, jnp.float32) + 0.5).astype(jnp.int32)


def mask_image_patches(key: jax.Array, images_BxHxWxC: jax.Array, patch: int,
                       ratio: float) -> jax.Array:
  """Zeroes round(ratio * num_patches) distinct patch x patch squares per example."""
  batch, height, width, _ = images_BxHxWxC.shape
  if height % patch or width % patch:
    raise ValueError(f"patch={patch} must divide the image size {height}x{width}")
  gh, gw = height // patch, width // patch
  count = num_masked(ratio, gh * gw)
  noise_BxP = jax.random.uniform(key, (batch, gh * gw))
  masked_BxP = _ranks(noise_BxP) < count
  masked_BxHxW = jnp.repeat(jnp.repeat(masked_BxP.reshape(batch, gh, gw), patch, axis=1),
                            patch, axis=2)
  return jnp.where(masked_BxHxW[..., None], jnp.zeros_like(images_BxHxWxC), images_BxHxWxC)


def mask_tokens(key: jax.Array, tokens_BxL: jax.Array, ratio: float, mask_id: int,
                special_ids: Sequence[int] = (0, 2, 3)) -> jax.Array:
  """Replaces round(ratio * real tokens) distinct real tokens per example by `mask_id`.

  Real tokens are all but `special_ids` (PAD=0, BOS=2, EOS=3 of mxq_jax/data/tokenizer.py);
  those are never masked.
  """
  real_BxL = ~jnp.isin(tokens_BxL, jnp.asarray(special_ids, tokens_BxL.dtype))
  count_B = num_masked(ratio, jnp.sum(real_BxL, axis=-1))
  # Special positions get noise 2 > any uniform draw, so real tokens take ranks 0..n_real-1.
  noise_BxL = jnp.where(real_BxL, jax.random.uniform(key, tokens_BxL.shape), 2.0)
  masked_BxL = (_ranks(noise_BxL) < count_B[:, None]) & real_BxL
  return jnp.where(masked_BxL, jnp.asarray(mask_id, tokens_BxL.dtype), tokens_BxL)
