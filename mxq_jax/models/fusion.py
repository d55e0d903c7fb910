"""The fusion encoder: a BERT-style (post-LN) Transformer over image then text positions.

Full bidirectional attention, so every joint position sees both modalities before it is
quantized. The reference (HF BertEncoder fed the CNN features) adds no position or modality
embeddings; `position_embeddings=True` adds learned ones before the first layer.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mxq_jax.models import layers, repeated

# BERT's initializer and LayerNorm epsilon (HF `initializer_range`, `layer_norm_eps`).
_INIT = layers.as_matrix(nnx.initializers.normal(0.02))  # rank-2 draws: see layers.py.
_LN_EPS = 1e-12


class FusionLayer(nnx.Module):
  """x = LN(x + Drop(Attn(x))); x = LN(x + Drop(W2 GELU(W1 x)))."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float, *,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.attn = nnx.MultiHeadAttention(
        num_heads, dim, dropout_rate=dropout, decode=False, dtype=dtype, kernel_init=_INIT,
        attention_fn=layers.attention_fp32_softmax,  # the softmax in fp32 under bf16.
        rngs=rngs, keep_rngs=False)  # dropout keys come at call time, not from stored state.
    self.ln_attn = nnx.LayerNorm(dim, epsilon=_LN_EPS, dtype=dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(dim, mlp_dim, dtype=dtype, kernel_init=_INIT, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_dim, dim, dtype=dtype, kernel_init=_INIT, rngs=rngs)
    self.ln_mlp = nnx.LayerNorm(dim, epsilon=_LN_EPS, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x_BxNxD: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    det = not train
    h = self.attn(x_BxNxD, deterministic=det, rngs=rngs)
    x_BxNxD = self.ln_attn(x_BxNxD + self.dropout(h, deterministic=det, rngs=rngs))
    h = self.mlp_out(jax.nn.gelu(self.mlp_in(x_BxNxD), approximate=False))  # BERT: exact GELU.
    return self.ln_mlp(x_BxNxD + self.dropout(h, deterministic=det, rngs=rngs))


class FusionEncoder(nnx.Module):
  """[B, N, D] joint features (image positions first, then text) -> [B, N, D]."""

  def __init__(self, dim: int, num_layers: int, num_heads: int, mlp_dim: int, dropout: float,
               *, num_image: int, num_text: int, position_embeddings: bool,
               dtype: jnp.dtype = jnp.float32, scan: bool = False, rngs: nnx.Rngs):
    self.scan = scan
    self.dropout = dropout
    self.num_image = num_image
    self.num_text = num_text
    self.position_embeddings = position_embeddings
    if position_embeddings:
      self.pos_NxD = nnx.Param(_INIT(rngs.params(), (num_image + num_text, dim)))
      self.modality_2xD = nnx.Param(_INIT(rngs.params(), (2, dim)))  # 0: image, 1: text.
    self.layers = nnx.List([
        FusionLayer(dim, num_heads, mlp_dim, dropout, dtype=dtype, rngs=rngs)
        for _ in range(num_layers)
    ])

  def __call__(self, x_BxNxD: jax.Array, *, train: bool,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    if self.position_embeddings:
      modality_N = jnp.repeat(jnp.array([0, 1]), jnp.array([self.num_image, self.num_text]),
                              total_repeat_length=self.num_image + self.num_text)
      extra_NxD = self.pos_NxD[...] + self.modality_2xD[...][modality_N]
      x_BxNxD = x_BxNxD + extra_NxD.astype(x_BxNxD.dtype)
    draws = train and self.dropout > 0  # else no layer uses a key.
    return repeated.apply(self.layers, x_BxNxD,
                          lambda layer, x, keys: layer(x, train=train, rngs=keys),
                          scan=self.scan, rngs=rngs if draws else None)
