"""Next-code sampling: temperature, top-k and top-p as small pure functions over logits.

Applied in Hugging Face `generate`'s order (temperature, then top-k, then top-p), so that our
samples follow the reference's settings. A filtered-out code gets logit -inf. `top_k` is static
(it fixes a shape); `top_p` and `temperature` may be traced, so changing them recompiles nothing.
"""

import jax
import jax.numpy as jnp

_REMOVED = -jnp.inf


def apply_temperature(logits_BxK: jax.Array, temperature: jax.Array | float) -> jax.Array:
  return logits_BxK / temperature


def top_k_filter(logits_BxK: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits of each row (and any tied with the k-th); k >= K keeps all."""
  if k >= logits_BxK.shape[-1]:
    return logits_BxK
  kth_largest_Bx1 = jax.lax.top_k(logits_BxK, k)[0][..., -1:]
  return jnp.where(logits_BxK < kth_largest_Bx1, _REMOVED, logits_BxK)


def top_p_filter(logits_BxK: jax.Array, p: jax.Array | float) -> jax.Array:
  """Keeps the smallest set of most likely codes whose probability reaches p (nucleus).

  A code is kept when the mass of the codes more likely than it is still below p, so the most
  likely code is always kept. p >= 1 keeps everything (no rounding can drop a tail code).
  """
  sorted_BxK = jnp.sort(logits_BxK, axis=-1)[..., ::-1]
  probs_BxK = jax.nn.softmax(sorted_BxK.astype(jnp.float32), axis=-1)
  mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
  num_kept_Bx1 = jnp.sum(mass_before_BxK < p, axis=-1, keepdims=True)
  cutoff_Bx1 = jnp.take_along_axis(sorted_BxK, num_kept_Bx1 - 1, axis=-1)
  filtered = jnp.where(logits_BxK < cutoff_Bx1, _REMOVED, logits_BxK)
  return jnp.where(p >= 1.0, logits_BxK, filtered)


def sample_codes(key: jax.Array, logits_BxK: jax.Array, *, top_k: int,
                 top_p: jax.Array | float, temperature: jax.Array | float) -> jax.Array:
  """One code per row, int32 [B], from the filtered distribution."""
  logits_BxK = apply_temperature(logits_BxK.astype(jnp.float32), temperature)
  logits_BxK = top_p_filter(top_k_filter(logits_BxK, top_k), top_p)
  return jax.random.categorical(key, logits_BxK, axis=-1).astype(jnp.int32)
