"""Which codebook each joint position is quantized against (config.vqvae.codebooks).

'shared' (the paper): one `Quantizer` of K codes for every position, code ids in [0, K).
'separate' (an ablation): `ModalityQuantizers`, one codebook of K codes for the image positions
and another of K for the text positions. Its ids form one vocabulary of 2K: image codes keep
their index in [0, K), text codes are offset by K into [K, 2K). Every consumer of the ids (the
prior, the stored codes, the code histograms) reads the vocabulary size from
`code_vocabulary_size` and works unchanged.

Why K each (vocabulary 2K) rather than K/2 each (vocabulary K): the ablation asks whether
SHARING one code space matters, so the bottleneck must stay the same. With K per codebook each
position still chooses among K codes (log2 K bits, as with the shared codebook), so stage 1 is
not handicapped; K/2 each would take one bit from every position and confound sharing with
capacity. The price is a prior softmax of 2K ids, of which each position only ever uses its
modality's K (the prior learns that quickly: the ranges never mix in the training codes).
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mxq_jax.models.quantizer import Quantizer, QuantizerOutput, code_statistics


def code_vocabulary_size(config: ml_collections.ConfigDict) -> int:
  """Ids the joint codes take (the prior's vocabulary, BOS excluded): K shared, 2K separate."""
  per_codebook = config.vqvae.codebook_size
  return 2 * per_codebook if config.vqvae.codebooks == "separate" else per_codebook


def _vectors_KxD(quantizer: Quantizer) -> jax.Array:
  """Every code vector of a quantizer, as `lookup` returns them (normalized if configured)."""
  return quantizer.lookup(jnp.arange(quantizer.num_codes))


class ModalityQuantizers(nnx.Module):
  """Image positions [0, I) against `image`'s K codes, text positions against `text`'s K.

  Same interface as `Quantizer` (`num_codes` is the 2K vocabulary). Each codebook keeps its
  own EMA statistics and dead-code restarts, fed only by its modality's positions.
  """

  def __init__(self, num_image: int, num_codes: int, dim: int, *, rngs: nnx.Rngs,
               **quantizer_kwargs):
    self.num_image = num_image
    self.per_codebook = num_codes
    self.num_codes = 2 * num_codes
    self.image = Quantizer(num_codes, dim, rngs=rngs, **quantizer_kwargs)
    self.text = Quantizer(num_codes, dim, rngs=rngs, **quantizer_kwargs)

  def lookup(self, codes: jax.Array) -> jax.Array:
    """Ids [...] in [0, 2K) -> code vectors [..., D] (float32).

    One table of both codebooks, so an id decodes to the same vector at any position: a prior
    sample that puts an image id at a text position still decodes, as it would with a shared
    codebook (a trained prior essentially never does).
    """
    table_2KxD = jnp.concatenate([_vectors_KxD(self.image), _vectors_KxD(self.text)])
    return jnp.take(table_2KxD, codes, axis=0)

  def __call__(self, z_BxNxD: jax.Array, *, train: bool,
               rngs: nnx.Rngs | None = None) -> QuantizerOutput:
    num_image, length = self.num_image, z_BxNxD.shape[1]
    image = self.image(z_BxNxD[:, :num_image], train=train, rngs=rngs)
    text = self.text(z_BxNxD[:, num_image:], train=train, rngs=rngs)
    codes_BxN = jnp.concatenate([image.codes, text.codes + self.per_codebook], axis=1)
    # Position-weighted means: the same MSE over all N positions that one codebook reports.
    mean = lambda a, b: (num_image * a + (length - num_image) * b) / length
    # Statistics over the 2K vocabulary: usage is the fraction of all 2K codes in use, and the
    # perplexity that of the joint histogram, the distribution the prior has to model.
    perplexity, usage = code_statistics(codes_BxN.reshape(-1), self.num_codes)
    return QuantizerOutput(
        quantized=jnp.concatenate([image.quantized, text.quantized], axis=1), codes=codes_BxN,
        codebook_loss=mean(image.codebook_loss, text.codebook_loss),
        commitment_loss=mean(image.commitment_loss, text.commitment_loss),
        perplexity=perplexity, usage=usage)


def make_quantizer(config: ml_collections.ConfigDict, num_image: int, *,
                   rngs: nnx.Rngs) -> Quantizer | ModalityQuantizers:
  """The quantizer config.vqvae.codebooks asks for, with config.vqvae's codebook settings."""
  vq = config.vqvae
  kwargs = dict(update=vq.codebook_update, init=vq.codebook_init, ema_decay=vq.ema_decay,
                dead_code_restart=vq.dead_code_restart,
                dead_code_threshold=vq.dead_code_threshold,
                l2_normalize=vq.codebook_l2_normalize, rngs=rngs)
  if vq.codebooks == "separate":
    return ModalityQuantizers(num_image, vq.codebook_size, vq.embed_dim, **kwargs)
  return Quantizer(vq.codebook_size, vq.embed_dim, **kwargs)
