"""The text 1-D CNNs: tokens [B, L] -> [B, L - 4(k-1), D] and back to per-position logits."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mxq_jax.models import layers


class TextEncoder(nnx.Module):
  """Embedding, four VALID Conv1d of kernel k (ReLU each), Conv1x1 to D.

  Each VALID conv shortens the sequence by k - 1: 64 tokens -> 8 positions at k = 15.
  """

  def __init__(self, vocab_size: int, embed_dim: int, channels: Sequence[int], kernel: int,
               out_dim: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    # Trained from scratch, like the reference, but initialized N(0, 1) (torch.nn.Embedding's
    # default): the reference's table is BERT's word embeddings, N(0, 0.02^2) with a PAD row
    # held at zero (padding_idx).
    self.embed = layers.Embed(vocab_size, embed_dim, dtype=dtype,
                           embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
    widths = (embed_dim, *channels)
    self.convs = nnx.List([
        layers.Conv(cin, cout, (kernel,), padding="VALID", dtype=dtype, rngs=rngs)
        for cin, cout in zip(widths[:-1], widths[1:])
    ])
    self.conv_out = layers.Conv(widths[-1], out_dim, (1,), dtype=dtype, rngs=rngs)

  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    x_BxLxE = self.embed(tokens_BxL)
    for conv in self.convs:
      x_BxLxE = jax.nn.relu(conv(x_BxLxE))
    return self.conv_out(x_BxLxE)  # [B, L - 4(k-1), D]


class TextDecoder(nnx.Module):
  """The encoder's mirror: four VALID ConvTranspose1d (each lengthens by k - 1), two Conv1x1.

  Non-autoregressive: one row of vocabulary logits per token position, [B, L, V]. `head_relu`:
  a ReLU between the two Conv1x1 (the reference has none: two linear maps in a row).
  """

  def __init__(self, vocab_size: int, embed_dim: int, channels: Sequence[int], kernel: int,
               in_dim: int, *, head_relu: bool = True, dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.head_relu = head_relu
    widths = (in_dim, *reversed(channels))  # D -> 512 -> 416 -> 320 -> 224 at the reference.
    self.convs = nnx.List([
        layers.FullConv1d(cin, cout, (kernel,), padding="VALID", kernel_init=layers.kernel_init,
                          dtype=dtype, rngs=rngs)
        for cin, cout in zip(widths[:-1], widths[1:])
    ])
    self.conv_embed = layers.Conv(widths[-1], embed_dim, (1,), dtype=dtype, rngs=rngs)
    self.conv_logits = layers.Conv(embed_dim, vocab_size, (1,), dtype=dtype, rngs=rngs)

  def __call__(self, z_BxTxD: jax.Array) -> jax.Array:
    x = z_BxTxD
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    x = self.conv_embed(x)
    if self.head_relu:
      x = jax.nn.relu(x)
    return self.conv_logits(x)  # [B, T + 4(k-1), V]
