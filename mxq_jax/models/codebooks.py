"""Which codebook each joint position is quantized against (config.vqvae.codebooks).

'shared' (the paper): one `Quantizer` of K codes for every position, code ids in [0, K).
'separate' (an ablation): `ModalityQuantizers`, one codebook of K codes for the image positions
and another of K for the text positions. Its ids form one vocabulary of 2K: image codes keep
their index in [0, K), text codes are offset by K into [K, 2K). Every consumer of the ids (the
prior, the stored codes, the code histograms) reads the vocabulary size from
`mxq_jax.config_lib.code_vocabulary_size` and works unchanged.

Why K each (vocabulary 2K) rather than K/2 each (vocabulary K): the ablation asks whether
SHARING one code space matters, so the bottleneck must stay the same. With K per codebook each
position still chooses among K codes (log2 K bits, as with the shared codebook), so stage 1 is
not handicapped; K/2 each would take one bit from every position and confound sharing with
capacity. The price is a prior softmax of 2K ids, of which each position only ever uses its
modality's K (the prior learns that quickly: the ranges never mix in the training codes).
"""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from mxq_jax.models.quantizer import Quantizer, QuantizerOutput, code_statistics


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
  """The codebook settings (`mxq_jax.config_lib.quantizer_config` reads them from config.vqvae).

  The code vector size D is the model's (`make_quantizer`'s `dim`).
  """
  codebook_size: int  # K: codes per codebook.
  codebooks: Literal["shared", "separate"]  # one codebook for every position, or one each.
  update: Literal["ema", "gradient"]  # moving averages, or the codebook loss's gradient.
  init: Literal["data", "uniform"]  # first batch's encoder outputs, or U(-1/K, 1/K).
  ema_decay: float  # update="ema" only.
  dead_code_restart: bool  # update="ema" only: re-seed codes unused for a while.
  dead_code_threshold: float  # EMA assignments per batch under which a code is restarted.
  l2_normalize: bool  # match unit vectors (cosine similarity).


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


def make_quantizer(config: QuantizerConfig, dim: int, num_image: int, *,
                   rngs: nnx.Rngs) -> Quantizer | ModalityQuantizers:
  """The quantizer `config.codebooks` asks for: codes of `dim` values; with "separate", the
  first `num_image` positions are quantized against the image codebook."""
  kwargs = dict(update=config.update, init=config.init, ema_decay=config.ema_decay,
                dead_code_restart=config.dead_code_restart,
                dead_code_threshold=config.dead_code_threshold,
                l2_normalize=config.l2_normalize, rngs=rngs)
  if config.codebooks == "separate":
    return ModalityQuantizers(num_image, config.codebook_size, dim, **kwargs)
  return Quantizer(config.codebook_size, dim, **kwargs)
