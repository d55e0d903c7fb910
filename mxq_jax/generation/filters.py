"""Next-code sampling: temperature, top-k and top-p as small pure functions over logits.

Applied in Hugging Face `generate`'s order (temperature, then top-k, then top-p), so that our
samples follow the reference's settings. A filtered-out code gets logit -inf. `top_k` is static
(it fixes a shape); `top_p` and `temperature` may be traced, so changing them recompiles nothing.

`sample_codes` draws from the same distribution as filtering the full logits, but works on the
k candidates `lax.top_k` returns, already sorted: top-p then needs no sort of all K logits (on
a CPU, that sort at every position made the sampler ten times slower).
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


def nucleus_of_sorted(sorted_BxK: jax.Array, p: jax.Array | float) -> jax.Array:
  """bool [B, K]: which of the descending-sorted logits the top-p (nucleus) set keeps.

  A code is kept when the mass of the codes more likely than it is still below p, so the most
  likely code is always kept. p >= 1 keeps everything (no rounding can drop a tail code).
  """
  probs_BxK = jax.nn.softmax(sorted_BxK.astype(jnp.float32), axis=-1)
  mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
  return (mass_before_BxK < p) | (p >= 1.0)


def top_p_filter(logits_BxK: jax.Array, p: jax.Array | float) -> jax.Array:
  """Keeps the smallest set of most likely codes whose probability reaches p (nucleus)."""
  sorted_BxK = jnp.sort(logits_BxK, axis=-1)[..., ::-1]
  num_kept_Bx1 = jnp.sum(nucleus_of_sorted(sorted_BxK, p), axis=-1, keepdims=True)
  cutoff_Bx1 = jnp.take_along_axis(sorted_BxK, num_kept_Bx1 - 1, axis=-1)
  return jnp.where(logits_BxK < cutoff_Bx1, _REMOVED, logits_BxK)


def sample_codes(key: jax.Array, logits_BxK: jax.Array, *, top_k: int,
                 top_p: jax.Array | float, temperature: jax.Array | float) -> jax.Array:
  """One code per row, int32 [B], from the tempered, top-k, then top-p filtered distribution.

  top_k >= K means no top-k (then all K logits are sorted). Exact ties at the k-th logit are
  broken by `lax.top_k`'s order rather than all kept: a measure-zero difference for float logits.
  """
  logits_BxK = apply_temperature(logits_BxK.astype(jnp.float32), temperature)
  candidates_Bxk, codes_Bxk = jax.lax.top_k(logits_BxK, min(top_k, logits_BxK.shape[-1]))
  candidates_Bxk = jnp.where(nucleus_of_sorted(candidates_Bxk, top_p), candidates_Bxk, _REMOVED)
  choice_Bx1 = jax.random.categorical(key, candidates_Bxk, axis=-1)[:, None]
  return jnp.take_along_axis(codes_Bxk, choice_Bx1, axis=-1)[:, 0].astype(jnp.int32)
