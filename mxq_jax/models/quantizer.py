"""The shared codebook: nearest-code quantization with a straight-through gradient.

Two ways to learn the codebook (config.vqvae.codebook_update):
  'gradient': the reference; the codebook is an `nnx.Param`, moved by the codebook loss.
  'ema':      VQ-VAE-2 moving averages with Laplace smoothing. The codebook and its statistics
              are `CodebookState` variables (not `nnx.Param`: the optimizer never sees them),
              written in place by every `train=True` call; a functional train step collects
              them with `nnx.split` after the call. Optional extras: seeding the codebook from
              the first batch's encoder outputs, and re-seeding codes that fell out of use.
"""

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

_LAPLACE_EPS = 1e-5  # Laplace smoothing of the EMA cluster sizes (VQ-VAE-2 / sonnet).


class CodebookState(nnx.Variable):
  """Codebook state written by the quantizer itself, not by the optimizer."""


@flax.struct.dataclass
class QuantizerOutput:
  """What one quantizer call returns. Losses are unweighted: the caller applies beta."""
  quantized: jax.Array  # [B, N, D] straight-through: z + sg(z_q - z), float32.
  codes: jax.Array  # [B, N] int32 in [0, K).
  codebook_loss: jax.Array  # scalar MSE(z_q, sg(z)); no gradient to anything in 'ema' mode.
  commitment_loss: jax.Array  # scalar MSE(z, sg(z_q)).
  perplexity: jax.Array  # scalar exp(entropy) of the batch's code histogram, in [1, K].
  usage: jax.Array  # scalar fraction of the K codes used at least once in the batch.


def nearest_codes(z_MxD: jax.Array, codebook_KxD: jax.Array) -> jax.Array:
  """Index of the squared-L2 nearest code per row, via |z|^2 - 2 z.e + |e|^2."""
  dots_MxK = jnp.dot(z_MxD, codebook_KxD.T, precision=jax.lax.Precision.HIGHEST)
  dist_MxK = (jnp.sum(z_MxD**2, -1, keepdims=True) - 2.0 * dots_MxK
              + jnp.sum(codebook_KxD**2, -1)[None, :])
  return jnp.argmin(dist_MxK, axis=-1).astype(jnp.int32)


def code_statistics(codes_M: jax.Array, num_codes: int) -> tuple[jax.Array, jax.Array]:
  """(perplexity, usage) of a batch of codes."""
  counts_K = jnp.bincount(codes_M, length=num_codes).astype(jnp.float32)
  probs_K = counts_K / codes_M.shape[0]
  entropy = -jnp.sum(jnp.where(probs_K > 0, probs_K * jnp.log(jnp.maximum(probs_K, 1e-30)), 0.0))
  return jnp.exp(entropy), jnp.mean((counts_K > 0).astype(jnp.float32))


def random_rows(key: jax.Array, z_MxD: jax.Array, num: int) -> jax.Array:
  """`num` rows of z drawn at random, distinct whenever there are enough rows."""
  rows = z_MxD.shape[0]
  idx = jax.random.choice(key, rows, (num,), replace=rows < num)
  return z_MxD[idx]


def ema_update(cluster_size_K: jax.Array, embed_sum_KxD: jax.Array, codes_M: jax.Array,
               z_MxD: jax.Array, decay: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One VQ-VAE-2 EMA step: (cluster_size, embed_sum, codebook), Laplace-smoothed."""
  num_codes = cluster_size_K.shape[0]
  onehot_MxK = jax.nn.one_hot(codes_M, num_codes, dtype=jnp.float32)
  counts_K = jnp.sum(onehot_MxK, axis=0)
  sums_KxD = jnp.dot(onehot_MxK.T, z_MxD, precision=jax.lax.Precision.HIGHEST)
  cluster_size_K = decay * cluster_size_K + (1.0 - decay) * counts_K
  embed_sum_KxD = decay * embed_sum_KxD + (1.0 - decay) * sums_KxD
  # Laplace smoothing keeps rarely used codes from dividing by ~0.
  total = jnp.sum(cluster_size_K)
  smoothed_K = (cluster_size_K + _LAPLACE_EPS) / (total + num_codes * _LAPLACE_EPS) * total
  return cluster_size_K, embed_sum_KxD, embed_sum_KxD / smoothed_K[:, None]


class Quantizer(nnx.Module):
  """K codes of size D, shared by every joint position.

  EMA statistics: `cluster_size` is the moving average of assignments per batch and
  `embed_sum` that of the summed assigned vectors; codebook = embed_sum / smoothed cluster_size.
  Both start (and restart) at 1 assignment on the code itself, so an unused code decays to
  `dead_code_threshold` (assignments per batch) after log(1/threshold) / (1 - decay) steps
  (about 350 at 0.03 and 0.99) before it is re-seeded.
  """

  def __init__(self, num_codes: int, dim: int, *, update: str = "gradient",
               init: str = "uniform", ema_decay: float = 0.99, dead_code_restart: bool = False,
               dead_code_threshold: float = 0.03, l2_normalize: bool = False,
               rngs: nnx.Rngs):
    if update not in ("ema", "gradient"):
      raise ValueError(f"update={update!r}: use 'ema' or 'gradient'")
    if init not in ("data", "uniform"):
      raise ValueError(f"init={init!r}: use 'data' or 'uniform'")
    if update == "gradient" and (init == "data" or dead_code_restart):
      raise ValueError("init='data' and dead_code_restart need update='ema'")
    self.num_codes = num_codes
    self.dim = dim
    self.update = update
    self.init = init
    self.ema_decay = ema_decay
    self.dead_code_restart = dead_code_restart
    self.dead_code_threshold = dead_code_threshold
    self.l2_normalize = l2_normalize

    codebook_KxD = jax.random.uniform(
        rngs.params(), (num_codes, dim), jnp.float32, -1.0 / num_codes, 1.0 / num_codes)
    if update == "gradient":
      self.codebook = nnx.Param(codebook_KxD)
    else:
      self.codebook = CodebookState(codebook_KxD)
      self.cluster_size = CodebookState(jnp.ones((num_codes,), jnp.float32))
      self.embed_sum = CodebookState(codebook_KxD)
      # False until the first train call has seeded the codebook from data (init='data').
      self.initialized = CodebookState(jnp.array(init != "data"))

  def _normalized(self, x: jax.Array) -> jax.Array:
    """Unit rows when l2_normalize (cosine-similarity codes, as in ViT-VQGAN), else x."""
    if not self.l2_normalize:
      return x
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x**2, -1, keepdims=True), 1e-12))

  def lookup(self, codes: jax.Array) -> jax.Array:
    """Codes [...] -> code vectors [..., D] (float32)."""
    return jnp.take(self._normalized(self.codebook[...]), codes, axis=0)

  def __call__(self, z_BxNxD: jax.Array, *, train: bool,
               rngs: nnx.Rngs | None = None) -> QuantizerOutput:
    batch, length, dim = z_BxNxD.shape
    z_BxNxD = self._normalized(z_BxNxD.astype(jnp.float32))  # Distances etc. in float32.
    codebook_KxD = self._normalized(self.codebook[...])
    writes_state = train and self.update == "ema"
    needs_key = writes_state and (self.init == "data" or self.dead_code_restart)
    if needs_key and rngs is None:
      raise ValueError("a train=True call of an 'ema' quantizer with data init or dead-code "
                       "restart needs `rngs` (random encoder outputs seed the codes)")
    z_MxD = jax.lax.stop_gradient(z_BxNxD).reshape(batch * length, dim)

    if writes_state and self.init == "data":
      # Before the first update, seed every code with an encoder output of this batch.
      fresh = ~self.initialized[...]
      seeds_KxD = random_rows(rngs["codebook"](), z_MxD, self.num_codes)
      codebook_KxD = jnp.where(fresh, seeds_KxD, codebook_KxD)
      self.cluster_size[...] = jnp.where(fresh, 1.0, self.cluster_size[...])
      self.embed_sum[...] = jnp.where(fresh, seeds_KxD, self.embed_sum[...])
      self.initialized[...] = jnp.array(True)

    codes_M = nearest_codes(z_MxD, jax.lax.stop_gradient(codebook_KxD))
    codes_BxN = codes_M.reshape(batch, length)
    zq_BxNxD = jnp.take(codebook_KxD, codes_BxN, axis=0)
    codebook_loss = jnp.mean((zq_BxNxD - jax.lax.stop_gradient(z_BxNxD))**2)
    commitment_loss = jnp.mean((z_BxNxD - jax.lax.stop_gradient(zq_BxNxD))**2)
    quantized_BxNxD = z_BxNxD + jax.lax.stop_gradient(zq_BxNxD - z_BxNxD)
    perplexity, usage = code_statistics(codes_M, self.num_codes)

    if writes_state:
      cluster_size_K, embed_sum_KxD, codebook_KxD = ema_update(
          self.cluster_size[...], self.embed_sum[...], codes_M, z_MxD, self.ema_decay)
      if self.dead_code_restart:
        # Jit-friendly restart: every code is replaced by a fresh seed where it is dead.
        dead_K = cluster_size_K < self.dead_code_threshold
        seeds_KxD = random_rows(rngs["codebook"](), z_MxD, self.num_codes)
        codebook_KxD = jnp.where(dead_K[:, None], seeds_KxD, codebook_KxD)
        embed_sum_KxD = jnp.where(dead_K[:, None], seeds_KxD, embed_sum_KxD)
        cluster_size_K = jnp.where(dead_K, 1.0, cluster_size_K)
      self.cluster_size[...] = cluster_size_K
      self.embed_sum[...] = embed_sum_KxD
      self.codebook[...] = codebook_KxD

    return QuantizerOutput(
        quantized=quantized_BxNxD, codes=codes_BxN, codebook_loss=codebook_loss,
        commitment_loss=commitment_loss, perplexity=perplexity, usage=usage)
