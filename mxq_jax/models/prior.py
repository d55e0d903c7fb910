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

Optionally (`grid_rotary_dims`) the first dims of every head's queries and keys are rotated by
the image-grid row and column of the code they stand for (2-D RoPE): image-to-image attention
then depends on the codes' offset in the grid, not on where the digit happens to lie, so what
the prior learns of a shape at one place serves every other. The learned absolute positions
stay: they say where things are. A query stands for the code it predicts, a key for the code
it holds (its input token); text codes and BOS are not rotated.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
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


@struct.dataclass
class Rotation:
  """cos and sin of the rotary angles of some positions, [T, R/2] each, for queries and keys."""
  q_cos: jax.Array
  q_sin: jax.Array
  k_cos: jax.Array
  k_sin: jax.Array

  def at(self, position: jax.Array) -> 'Rotation':
    """One (traced) position's row of each table: [1, R/2]."""
    return jax.tree.map(lambda t: jax.lax.dynamic_slice_in_dim(t, position, 1, axis=0), self)


def grid_rotation(grid_rows_N, grid_cols_N, rotary_dims: int) -> Rotation:
  """The rotary tables of positions 0..N (BOS + N codes) from each code's grid row and column
  (-1: a text code, not rotated). Half of the R/2 angle pairs turn with the row, half with the
  column, at frequencies pi/2, pi/4, ...: distinct for every offset within a 2^(R/4) grid."""
  rows_N, cols_N = np.asarray(grid_rows_N), np.asarray(grid_cols_N)
  frequencies_F = np.pi * 0.5 ** np.arange(1, rotary_dims // 4 + 1)
  on_grid_N = (rows_N >= 0)[:, None]
  angles_NxR2 = np.where(on_grid_N, np.concatenate(
      [rows_N[:, None] * frequencies_F, cols_N[:, None] * frequencies_F], axis=1), 0.0)
  none_1xR2 = np.zeros((1, rotary_dims // 2))
  # Input position p predicts code p and holds code p - 1 (p = 0: BOS); position N predicts none.
  q_angles = np.concatenate([angles_NxR2, none_1xR2])
  k_angles = np.concatenate([none_1xR2, angles_NxR2])
  table = lambda a: jnp.asarray(a, jnp.float32)
  return Rotation(q_cos=table(np.cos(q_angles)), q_sin=table(np.sin(q_angles)),
                  k_cos=table(np.cos(k_angles)), k_sin=table(np.sin(k_angles)))


def _rotate(x_BxTxHxK: jax.Array, cos_TxR2: jax.Array, sin_TxR2: jax.Array) -> jax.Array:
  """Rotates the pairs (x[i], x[i + R/2]) of the first R dims by the angles; the rest as is."""
  half = cos_TxR2.shape[-1]
  x1, x2, rest = (x_BxTxHxK[..., :half], x_BxTxHxK[..., half:2 * half],
                  x_BxTxHxK[..., 2 * half:])
  cos, sin = (t[None, :, None, :].astype(x_BxTxHxK.dtype) for t in (cos_TxR2, sin_TxR2))
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], axis=-1)


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

  def qkv(self, x_BxTxD: jax.Array,
          rotation: Rotation | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    q, k = self._heads(self.q(x_BxTxD)), self._heads(self.k(x_BxTxD))
    if rotation is not None:
      q, k = _rotate(q, rotation.q_cos, rotation.q_sin), _rotate(k, rotation.k_cos, rotation.k_sin)
    return q, k, self._heads(self.v(x_BxTxD))

  def combine(self, probs_BxHxTxS: jax.Array, values: jax.Array, *, train: bool,
              rngs: nnx.Rngs | None, layout: str = _TOKEN_MAJOR) -> jax.Array:
    probs_BxHxTxS = self.attn_dropout(probs_BxHxTxS, deterministic=not train, rngs=rngs)
    out_BxTxHxK = jnp.einsum(f'bhts,{layout}->bthk', probs_BxHxTxS.astype(values.dtype), values)
    return self.out(out_BxTxHxK.reshape(*out_BxTxHxK.shape[:2], -1))

  def __call__(self, x_BxTxD: jax.Array, *, train: bool, rngs: nnx.Rngs | None,
               rotation: Rotation | None = None) -> jax.Array:
    q, k, v = self.qkv(x_BxTxD, rotation)
    t = x_BxTxD.shape[1]
    mask_TxT = jnp.tril(jnp.ones((t, t), bool))
    return self.combine(_attention_probs(q, k, mask_TxT), v, train=train, rngs=rngs)

  def decode(self, x_Bx1xD: jax.Array, position: jax.Array, cache: LayerCache,
             rotation: Rotation | None = None) -> tuple[jax.Array, LayerCache]:
    """One position: write its k, v at `position`, attend to positions <= `position`.
    `rotation`: that position's row of the tables, if any."""
    q_Bx1xHxK, k_Bx1xHxK, v_Bx1xHxK = self.qkv(x_Bx1xD, rotation)
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

  def __call__(self, x_BxTxD: jax.Array, *, train: bool, rngs: nnx.Rngs | None,
               rotation: Rotation | None = None) -> jax.Array:
    h = self.attn(self.ln_attn(x_BxTxD), train=train, rngs=rngs, rotation=rotation)
    x_BxTxD = x_BxTxD + self.dropout(h, deterministic=not train, rngs=rngs)
    return self.mlp(x_BxTxD, train=train, rngs=rngs)

  def decode(self, x_Bx1xD: jax.Array, position: jax.Array, cache: LayerCache,
             rotation: Rotation | None = None) -> tuple[jax.Array, LayerCache]:
    h, cache = self.attn.decode(self.ln_attn(x_Bx1xD), position, cache, rotation)
    return self.mlp(x_Bx1xD + h, train=False, rngs=None), cache


class Prior(nnx.Module):
  """[B, T] tokens (BOS, then codes; T <= seq_len + 1) -> [B, T, num_codes] next-code logits.

  `grid_rows`, `grid_cols`: each code's place in the image grid, in the prior's order (-1 for
  a text code), as tuples; with `grid_rotary_dims` > 0 that many dims of each head turn with it.
  """

  def __init__(self, *, num_codes: int, seq_len: int, num_layers: int, num_heads: int, dim: int,
               mlp_dim: int, dropout: float, dtype: jnp.dtype = jnp.float32,
               scan_layers: bool = False, grid_rotary_dims: int = 0,
               grid_rows: tuple[int, ...] = (), grid_cols: tuple[int, ...] = (),
               rngs: nnx.Rngs):
    self.num_codes = num_codes
    self.scan_layers = scan_layers  # training's forward; decoding is per layer (its cache).
    self.dropout = dropout
    self.bos = num_codes
    self.seq_len = seq_len
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.dtype = dtype
    if grid_rotary_dims and (grid_rotary_dims % 4 or grid_rotary_dims > self.head_dim
                             or len(grid_rows) != seq_len or len(grid_cols) != seq_len):
      raise ValueError(f'grid_rotary_dims {grid_rotary_dims} must be a multiple of 4 and at most '
                       f'the head dim {self.head_dim}, with a grid place for each of {seq_len} '
                       'codes.')
    self.grid_rotary_dims = grid_rotary_dims
    self.grid_rows, self.grid_cols = tuple(grid_rows), tuple(grid_cols)  # static: hashable.
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

  def _rotation(self) -> Rotation | None:
    """Every position's rotary tables (constants of the compiled program), or None."""
    if not self.grid_rotary_dims:
      return None
    return grid_rotation(self.grid_rows, self.grid_cols, self.grid_rotary_dims)

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
    rotation = self._rotation()
    if rotation is not None:
      rotation = jax.tree.map(lambda table: table[:t], rotation)
    x_BxTxD = repeated.apply(self.blocks, x_BxTxD,
                             lambda block, x, keys: block(x, train=train, rngs=keys,
                                                          rotation=rotation),
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
    rotation = self._rotation()
    rotation = None if rotation is None else rotation.at(position)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache, strict=True):
      x_Bx1xD, layer_cache = block.decode(x_Bx1xD, position, layer_cache, rotation)
      new_cache.append(layer_cache)
    return self._logits(x_Bx1xD)[:, 0], tuple(new_cache)
