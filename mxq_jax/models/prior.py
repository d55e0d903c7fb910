"""The stage-2 prior: a GPT-2 style decoder-only Transformer over joint code sequences.

Input is BOS (id = num_codes) followed by codes; position t predicts code t (the code after
input token t), so the head has num_codes outputs and BOS is never a target. Attention is
written out (not `nnx.MultiHeadAttention(decode=True)`) so that the KV cache is an explicit
pytree passed in and out of `decode_step`: nothing position-dependent lives in module state,
and the step runs inside `lax.scan`/`lax.while_loop` with a traced position.

The cache is head-major, [B, H, S, head_dim], so that both attention matmuls of a decoded
position read it batched over (B, H) as it lies. Token-major (the projections' own [B, S, H,
head_dim], which training keeps) made XLA transpose the whole cache at every position: the
sampler ran about 1.6x slower at the reference sizes on a CPU.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from mxq_jax.models import layers, repeated

# GPT-2's initializer and LayerNorm epsilon (HF `initializer_range`, `layer_norm_epsilon`).
_STDDEV = 0.02
_INIT = layers.as_matrix(nnx.initializers.normal(_STDDEV))  # rank-2 draws: see layers.py.
_LN_EPS = 1e-5


@struct.dataclass
class LayerCache:
  """One layer's keys and values, [B, heads, slots, head_dim]: slot s holds position s."""
  k: jax.Array
  v: jax.Array


Cache = tuple[LayerCache, ...]  # One per layer.

# einsum subscripts of keys and values: as projected (training) or as cached (decoding).
_TOKEN_MAJOR = 'bshk'
_HEAD_MAJOR = 'bhsk'


def _attention_probs(q_BxTxHxK: jax.Array, keys: jax.Array, mask_TxS: jax.Array, *,
                     layout: str = _TOKEN_MAJOR) -> jax.Array:
  """Masked softmax over keys (laid out as `layout` says), [B, H, T, S]; logits and softmax in
  float32 whatever the dtype."""
  scale = 1.0 / math.sqrt(q_BxTxHxK.shape[-1])
  logits_BxHxTxS = jnp.einsum(f'bthk,{layout}->bhts', q_BxTxHxK, keys,
                              preferred_element_type=jnp.float32) * scale
  logits_BxHxTxS = jnp.where(mask_TxS, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_BxHxTxS, axis=-1)


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention with separate q, k, v projections (GPT-2's c_attn, split)."""

  def __init__(self, dim: int, num_heads: int, dropout: float, *, out_init,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'dim {dim} is not a multiple of num_heads {num_heads}.')
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    # [D, D] kernels reshaped to heads after the matmul: rank-2 params, fast init on CPU.
    self.q = nnx.Linear(dim, dim, dtype=dtype, kernel_init=_INIT, rngs=rngs)
    self.k = nnx.Linear(dim, dim, dtype=dtype, kernel_init=_INIT, rngs=rngs)
    self.v = nnx.Linear(dim, dim, dtype=dtype, kernel_init=_INIT, rngs=rngs)
    self.out = nnx.Linear(dim, dim, dtype=dtype, kernel_init=out_init, rngs=rngs)
    self.attn_dropout = nnx.Dropout(dropout)

  def _heads(self, x_BxTxD: jax.Array) -> jax.Array:
    return x_BxTxD.reshape(*x_BxTxD.shape[:2], self.num_heads, self.head_dim)

  def qkv(self, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return self._heads(self.q(x_BxTxD)), self._heads(self.k(x_BxTxD)), self._heads(self.v(x_BxTxD))

  def combine(self, probs_BxHxTxS: jax.Array, values: jax.Array, *, train: bool,
              rngs: nnx.Rngs | None, layout: str = _TOKEN_MAJOR) -> jax.Array:
    probs_BxHxTxS = self.attn_dropout(probs_BxHxTxS, deterministic=not train, rngs=rngs)
    out_BxTxHxK = jnp.einsum(f'bhts,{layout}->bthk', probs_BxHxTxS.astype(values.dtype), values)
    return self.out(out_BxTxHxK.reshape(*out_BxTxHxK.shape[:2], -1))

  def __call__(self, x_BxTxD: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    q, k, v = self.qkv(x_BxTxD)
    t = x_BxTxD.shape[1]
    mask_TxT = jnp.tril(jnp.ones((t, t), bool))
    return self.combine(_attention_probs(q, k, mask_TxT), v, train=train, rngs=rngs)

  def decode(self, x_Bx1xD: jax.Array, position: jax.Array,
             cache: LayerCache) -> tuple[jax.Array, LayerCache]:
    """One position: write its k, v at `position`, attend to positions <= `position`."""
    q_Bx1xHxK, k_Bx1xHxK, v_Bx1xHxK = self.qkv(x_Bx1xD)
    write = lambda cached_BxHxSxK, new_Bx1xHxK: jax.lax.dynamic_update_slice(
        cached_BxHxSxK, new_Bx1xHxK.transpose(0, 2, 1, 3).astype(cached_BxHxSxK.dtype),
        (0, 0, position, 0))
    cache = LayerCache(k=write(cache.k, k_Bx1xHxK), v=write(cache.v, v_Bx1xHxK))
    # Slots past `position` hold zeros (or stale values): masked, never read.
    mask_1xS = (jnp.arange(cache.k.shape[2]) <= position)[None, :]
    dtype = q_Bx1xHxK.dtype
    probs = _attention_probs(q_Bx1xHxK, cache.k.astype(dtype), mask_1xS, layout=_HEAD_MAJOR)
    return self.combine(probs, cache.v.astype(dtype), train=False, rngs=None,
                        layout=_HEAD_MAJOR), cache


def grow_cache(cache: Cache, length: int) -> Cache:
  """The cache with zero slots appended up to `length`: written slots keep their place."""
  def grow(cached_BxHxSxK: jax.Array) -> jax.Array:
    return jnp.pad(cached_BxHxSxK, ((0, 0), (0, 0), (0, length - cached_BxHxSxK.shape[2]), (0, 0)))
  return jax.tree.map(grow, cache)


class Block(nnx.Module):
  """Pre-LN: x = x + Drop(Attn(LN(x))); x = x + Drop(W2 GELU(W1 LN(x)))."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float, *, out_init,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.ln_attn = nnx.LayerNorm(dim, epsilon=_LN_EPS, dtype=dtype, rngs=rngs)
    self.attn = CausalSelfAttention(dim, num_heads, dropout, out_init=out_init, dtype=dtype,
                                    rngs=rngs)
    self.ln_mlp = nnx.LayerNorm(dim, epsilon=_LN_EPS, dtype=dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(dim, mlp_dim, dtype=dtype, kernel_init=_INIT, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_dim, dim, dtype=dtype, kernel_init=out_init, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def mlp(self, x_BxTxD: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    h = self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln_mlp(x_BxTxD)), approximate=True))  # gelu_new.
    return x_BxTxD + self.dropout(h, deterministic=not train, rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    h = self.attn(self.ln_attn(x_BxTxD), train=train, rngs=rngs)
    x_BxTxD = x_BxTxD + self.dropout(h, deterministic=not train, rngs=rngs)
    return self.mlp(x_BxTxD, train=train, rngs=rngs)

  def decode(self, x_Bx1xD: jax.Array, position: jax.Array,
             cache: LayerCache) -> tuple[jax.Array, LayerCache]:
    h, cache = self.attn.decode(self.ln_attn(x_Bx1xD), position, cache)
    return self.mlp(x_Bx1xD + h, train=False, rngs=None), cache


class Prior(nnx.Module):
  """[B, T] tokens (BOS, then codes; T <= seq_len + 1) -> [B, T, num_codes] next-code logits."""

  def __init__(self, *, num_codes: int, seq_len: int, num_layers: int, num_heads: int, dim: int,
               mlp_dim: int, dropout: float, dtype: jnp.dtype = jnp.float32,
               scan_layers: bool = False, rngs: nnx.Rngs):
    self.num_codes = num_codes
    self.scan_layers = scan_layers  # training's forward; decoding is per layer (its cache).
    self.dropout = dropout
    self.bos = num_codes
    self.seq_len = seq_len
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.dtype = dtype
    self.token_embed = layers.Embed(num_codes + 1, dim, dtype=dtype, embedding_init=_INIT,
                                   rngs=rngs)
    self.pos_PxD = nnx.Param(_INIT(rngs.params(), (seq_len + 1, dim)))  # BOS + N codes.
    # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 L).
    out_init = layers.as_matrix(nnx.initializers.normal(_STDDEV / math.sqrt(2 * num_layers)))
    self.blocks = nnx.List([
        Block(dim, num_heads, mlp_dim, dropout, out_init=out_init, dtype=dtype, rngs=rngs)
        for _ in range(num_layers)
    ])
    self.ln_final = nnx.LayerNorm(dim, epsilon=_LN_EPS, dtype=dtype, rngs=rngs)
    # Codes only: BOS is never a target. GPT-2 ties this to the embedding; here it is separate.
    self.head = nnx.Linear(dim, num_codes, use_bias=False, dtype=dtype, kernel_init=_INIT,
                           rngs=rngs)
    self.embed_dropout = nnx.Dropout(dropout)

  def _logits(self, x_BxTxD: jax.Array) -> jax.Array:
    return self.head(self.ln_final(x_BxTxD)).astype(jnp.float32)

  def __call__(self, tokens_BxT: jax.Array, *, train: bool,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    t = tokens_BxT.shape[1]
    if t > self.seq_len + 1:
      raise ValueError(f'{t} tokens, more than BOS + seq_len = {self.seq_len + 1}.')
    x_BxTxD = self.token_embed(tokens_BxT) + self.pos_PxD[:t].astype(self.dtype)
    x_BxTxD = self.embed_dropout(x_BxTxD, deterministic=not train, rngs=rngs)
    draws = train and self.dropout > 0  # else no block uses a key.
    x_BxTxD = repeated.apply(self.blocks, x_BxTxD,
                             lambda block, x, keys: block(x, train=train, rngs=keys),
                             scan=self.scan_layers, rngs=rngs if draws else None)
    return self._logits(x_BxTxD)

  def init_cache(self, batch: int, dtype: jnp.dtype | None = None, *,
                 length: int | None = None) -> Cache:
    """Zeros for every layer's k and v, [batch, heads, length, head_dim]; `length` slots
    (default seq_len + 1, every position) serve positions < length."""
    length = self.seq_len + 1 if length is None else length
    shape = (batch, self.num_heads, length, self.head_dim)
    dtype = self.dtype if dtype is None else dtype
    return tuple(LayerCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
                 for _ in self.blocks)

  def decode_step(self, token_B: jax.Array, position: jax.Array,
                  cache: Cache) -> tuple[jax.Array, Cache]:
    """Token at `position` (0 = BOS) -> logits [B, num_codes] for the code after it.

    Inference only (no dropout). `position` may be traced (int32 scalar); the caller keeps
    it < seq_len + 1 (dynamic_update_slice would clamp an out-of-range write silently).
    """
    position = jnp.asarray(position, jnp.int32)
    pos_1xD = jax.lax.dynamic_slice_in_dim(self.pos_PxD[...], position, 1, axis=0)
    x_Bx1xD = self.token_embed(token_B[:, None]) + pos_1xD.astype(self.dtype)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache, strict=True):
      x_Bx1xD, layer_cache = block.decode(x_Bx1xD, position, layer_cache)
      new_cache.append(layer_cache)
    return self._logits(x_Bx1xD)[:, 0], tuple(new_cache)
