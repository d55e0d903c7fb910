"""Convolutions: flax's default LeCun-normal kernels drawn as matrices, and the codecs' fast forms.

Kernels: the same distribution as `nnx.Conv`'s default (fan-in = receptive field x input
channels), but the random bits are rank 2: on XLA:CPU, partitionable threefry of rank > 2
compiles about five times slower, which made model initialization dominate start-up and the
test suite.

Fast forms: subclasses of `nnx.Conv` / `nnx.ConvTranspose` with the same parameters that
compute the same layer as stride-1 convolutions or matmuls, whose forward and backward XLA
compiles well (`python -m mxq_jax.bench --parts=modules` measures each module). Where nothing
differentiates them (sampling, encoding, evaluation) some run in a form with a faster forward
and no backward to serve (`_inference_form`); training runs the same ops as without it.

Mixed precision (docs/precision.md): in a bfloat16 compute dtype the strided convs run as
matmuls too (`strided_conv_as_matmul`), `Embed` gathers from the fp32 table, and
`attention_fp32_softmax` keeps the attention softmax in fp32; in float32 all three compute
exactly what flax's layers do.
"""

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def as_matrix(init):
  """`init` drawn as a [prod(shape[:-1]), shape[-1]] matrix and reshaped.

  Exact for initializers whose scale depends only on fan-in = prod(shape[:-1]) (LeCun, He)
  or on nothing (normal(stddev)): conv kernels [*window, in, out], attention [D, heads, Dh].
  """
  def matrix_init(key, shape, dtype=jnp.float32):
    return init(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)
  return matrix_init


kernel_init = as_matrix(nnx.initializers.lecun_normal())


def _inference_form(inference: Callable, *, differentiable: Callable, num_static: int) -> Callable:
  """(x, kernel, *static) -> y: `differentiable`, forward and backward, wherever it is
  differentiated (training: the same ops as `differentiable` alone, so the same bits), and
  `inference`, the same function in another form, where it is not (sampling, encoding,
  evaluation). The two agree up to float32 summation order, not bitwise. `static`: hashable.

  The forms that train fastest on XLA:CPU (matmuls whose backward reuses the forward's
  operands) are not the ones that infer fastest (no copies for a backward that never comes).
  """
  layer = jax.custom_vjp(inference, nondiff_argnums=tuple(range(2, 2 + num_static)))

  def forward(x, kernel, *static):
    return jax.vjp(lambda x, kernel: differentiable(x, kernel, *static), x, kernel)

  def backward(*static_vjp_and_grad):
    *_, differentiable_vjp, grad = static_vjp_and_grad
    return differentiable_vjp(grad)

  layer.defvjp(forward, backward)
  return layer


# ------------------------------------------------------------- transposed convolutions
# `nnx.ConvTranspose` lowers to a convolution over an input dilated by the stride (and, for
# stride 1, padded by k - 1): XLA:CPU has no fast kernel for those forms, and their kernel
# gradients are slower still. These two compute the very same layers (same parameters, same
# shapes, numerically equal outputs and gradients) as ordinary stride-1 convolutions.


def _channels_last(num_spatial: int) -> tuple[str, str, str]:
  """Convolution dimension numbers of channels-last inputs and [*window, in, out] kernels."""
  if not 1 <= num_spatial <= 3:
    raise ValueError(f"convolutions over 1 to 3 spatial axes, got {num_spatial}")
  spatial = "DHW"[-num_spatial:]
  return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


def _promoted(layer, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """(input, kernel, bias or None) of a flax conv layer, in its compute dtype."""
  bias = layer.bias[...] if layer.bias is not None else None
  return layer.promote_dtype((x, layer.kernel[...], bias), dtype=layer.dtype)


# (kernel taps, input padding) of each output phase of a 4x4, stride-2 transposed convolution
# along one spatial axis: output row 2i + a reads input rows {i - 1, i} through kernel rows
# {0, 2} (a = 0) or rows {i, i + 1} through kernel rows {1, 3} (a = 1); columns alike.
_UP_PHASES = (((0, 2), (1, 0)), ((1, 3), (0, 1)))


def _interleave_phases(phases) -> jax.Array:
  """[[y_ab [B, H, W, O] for b in (0, 1)] for a in (0, 1)] -> [B, 2H, 2W, O] (depth-to-space)."""
  y_BxHx2xWx2xO = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
  batch, height, _, width, _, out = y_BxHx2xWx2xO.shape
  return y_BxHx2xWx2xO.reshape(batch, 2 * height, 2 * width, out)


def _up_conv_2x_by_phases(x_BxHxWxC: jax.Array, kernel_4x4xCxO: jax.Array,
                          precision=None) -> jax.Array:
  """Each output phase (a, b) a VALID 2x2 convolution of the input padded on the side it reads
  past: 4 convolutions, no zero taps, and a backward of convolutions XLA:CPU runs well."""
  # Taps (0, 2) or (1, 3): strided slices, whose gradient is a pad, not a scatter-add.
  return _interleave_phases([[jax.lax.conv_general_dilated(
      x_BxHxWxC, kernel_4x4xCxO[row_taps[0]::2, col_taps[0]::2], (1, 1), (row_pad, col_pad),
      dimension_numbers=_channels_last(2), precision=precision)
      for col_taps, col_pad in _UP_PHASES] for row_taps, row_pad in _UP_PHASES])


def _up_conv_2x_by_taps(x_BxHxWxC: jax.Array, kernel_4x4xCxO: jax.Array,
                        precision=None) -> jax.Array:
  """One matmul of every input pixel by all 16 taps, then each phase the sum of its 4 taps'
  shifted products: for few output channels (RGB) XLA:CPU's 2x2 convolutions run at a few
  percent of the matmul rate, and this form about 4x faster."""
  batch, height, width, channels = x_BxHxWxC.shape
  out = kernel_4x4xCxO.shape[-1]
  y = jnp.dot(x_BxHxWxC.reshape(-1, channels),
              kernel_4x4xCxO.transpose(2, 0, 1, 3).reshape(channels, 16 * out), precision=precision)
  y_BxH2xW2x4x4xO = jnp.pad(y.reshape(batch, height, width, 4, 4, out),
                            ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
  def phase(row_taps, row_pad, col_taps, col_pad):
    # Tap r of this phase reads input row i + r - pad_before: padded row i + r + 1 - pad_before.
    return sum(y_BxH2xW2x4x4xO[:, r + 1 - row_pad[0]:r + 1 - row_pad[0] + height,
                               c + 1 - col_pad[0]:c + 1 - col_pad[0] + width, tap_r, tap_c]
               for r, tap_r in enumerate(row_taps) for c, tap_c in enumerate(col_taps))
  return _interleave_phases([[phase(*row, *col) for col in _UP_PHASES] for row in _UP_PHASES])


def _up_conv_2x_inference(x_BxHxWxC: jax.Array, kernel_4x4xCxO: jax.Array,
                          precision=None) -> jax.Array:
  few_outputs = kernel_4x4xCxO.shape[-1] <= 4  # the image decoder's last layer (RGB).
  form = _up_conv_2x_by_taps if few_outputs else _up_conv_2x_by_phases
  return form(x_BxHxWxC, kernel_4x4xCxO, precision)


up_conv_2x = _inference_form(_up_conv_2x_inference, differentiable=_up_conv_2x_by_phases,
                             num_static=1)


class UpConv2x(nnx.ConvTranspose):
  """`nnx.ConvTranspose` of a 4x4 kernel, stride 2, padding (2, 2) (PyTorch's
  ConvTranspose2d(k=4, s=2, p=1)), as four 2x2 stride-1 convolutions and depth-to-space
  (`up_conv_2x`: at inference, for RGB outputs, one matmul and shifted sums instead)."""

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    if tuple(self.kernel_size) != (4, 4) or self.strides not in (2, (2, 2)) or (
        self.padding != ((2, 2), (2, 2))):
      raise ValueError("UpConv2x is a 4x4, stride-2, padding-(2, 2) transposed convolution")
    x_BxHxWxC, kernel_4x4xCxO, bias = _promoted(self, x_BxHxWxC)
    y_Bx2Hx2WxO = up_conv_2x(x_BxHxWxC, kernel_4x4xCxO, self.precision)
    return y_Bx2Hx2WxO if bias is None else y_Bx2Hx2WxO + bias


class FullConv1d(nnx.ConvTranspose):
  """`nnx.ConvTranspose` of kernel k, stride 1, padding "VALID" (lengthens by k - 1), as the
  ordinary convolution it is: the input zero-padded by k - 1 on each side, then a VALID conv
  with the same (unflipped) kernel, trained as a matmul (`conv_as_matmul`; `stride1_conv`).

  (Tried and slower on XLA:CPU: one matmul to every tap then an overlap-add, which skips the
  zero rows' multiplications but has a 1.5x slower backward at the reference sizes.)"""

  def __call__(self, x_BxLxC: jax.Array) -> jax.Array:
    (k,) = self.kernel_size
    if self.strides not in (1, (1,), None) or self.padding != "VALID":
      raise ValueError("FullConv1d is a stride-1, VALID transposed convolution")
    x_BxLxC, kernel_KxCxO, bias = _promoted(self, x_BxLxC)
    y_BxL2xO = stride1_conv(x_BxLxC, kernel_KxCxO, ((k - 1, k - 1),), self.precision)
    return y_BxL2xO if bias is None else y_BxL2xO + bias


# ---------------------------------------------------------- stride-1 convolutions as matmuls


def _padding_pairs(padding, window: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """`nnx.Conv`'s padding ("SAME", "VALID" or (lo, hi) pairs) as (lo, hi) per spatial axis
  (hashable: a static argument of `stride1_conv`)."""
  if padding == "VALID":
    return ((0, 0),) * len(window)
  if padding == "SAME":  # stride 1: XLA puts the odd pad element after.
    return tuple(((k - 1) // 2, k // 2) for k in window)
  if isinstance(padding, int):
    return ((padding, padding),) * len(window)
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def conv_as_matmul(x_BxSxC: jax.Array, kernel_WxCxO: jax.Array,
                   padding_pairs: Sequence[tuple[int, int]], precision=None) -> jax.Array:
  """A stride-1 convolution over any number of spatial axes S as one matmul over the shifted
  windows of the padded input (im2col): [B, *S', prod(window) * C] @ [prod(window) * C, O].

  The same FLOPs as the convolution; its gradients are matmuls and slice-adds. On XLA:CPU, at
  the reference sizes, a k = 15 text conv over 22 positions trains about 12x faster this way
  (446 -> 36 ms forward+backward, `python -m mxq_jax.bench --parts=modules`: XLA's gradients
  of a long kernel over a short sequence are slow), and using it for the 3x3 and 1x1 convs too
  made the whole stage-1 step 1.11-1.16x faster (interleaved runs, README "Against the
  authors' PyTorch").
  """
  window, (channels, out) = kernel_WxCxO.shape[:-2], kernel_WxCxO.shape[-2:]
  x = jnp.pad(x_BxSxC, ((0, 0), *padding_pairs, (0, 0)))
  out_sides = [side - k + 1 for side, k in zip(x.shape[1:-1], window)]
  windows = jnp.stack([
      x[(slice(None), *(slice(o, o + n) for o, n in zip(offset, out_sides)))]
      for offset in itertools.product(*map(range, window))
  ], axis=-2)  # [B, *S', prod(window), C], offsets in the kernel's row-major order.
  windows = windows.reshape(*windows.shape[:-2], math.prod(window) * channels)
  return jnp.dot(windows, kernel_WxCxO.reshape(-1, out), precision=precision)


def _stride1_conv_inference(x_BxSxC: jax.Array, kernel_WxCxO: jax.Array,
                            padding_pairs: tuple[tuple[int, int], ...],
                            precision=None) -> jax.Array:
  window = kernel_WxCxO.shape[:-2]
  # A 1x1 window is a matmul already (im2col copies nothing). A window longer than the input
  # (the text decoder's first layer: 8 positions, k = 15) sends XLA:CPU's convolution down a
  # path 6-60x slower than the matmul.
  if math.prod(window) == 1 or any(side < k for side, k in zip(x_BxSxC.shape[1:-1], window)):
    return conv_as_matmul(x_BxSxC, kernel_WxCxO, padding_pairs, precision)
  return jax.lax.conv_general_dilated(
      x_BxSxC, kernel_WxCxO, (1,) * len(window), padding_pairs,
      dimension_numbers=_channels_last(len(window)), precision=precision)


# (x [B, *S, C], kernel [*W, C, O], padding pairs (hashable), precision) -> [B, *S', O]: the
# stride-1 convolution of `conv_as_matmul`, which it is under differentiation. Undifferentiated,
# a window larger than 1x1 runs as XLA's own convolution, which does not materialize the
# [B, *S', prod(window) * C] windows: at the reference sizes and batch 256 on XLA:CPU, each such
# layer's forward 1.4-2.9x faster (`python -m mxq_jax.bench --parts=modules`).
stride1_conv = _inference_form(_stride1_conv_inference, differentiable=conv_as_matmul,
                               num_static=2)


def strided_conv_as_matmul(x_BxSxC: jax.Array, kernel_WxCxO: jax.Array,
                           strides: Sequence[int], padding_pairs: Sequence[tuple[int, int]],
                           precision=None) -> jax.Array:
  """A convolution of stride s whose window is a multiple of s on every axis (the encoders'
  4x4 stride-2 convs) as a stride-1 one: over the space-to-depth blocks of the padded input
  (s x s pixels -> one position of s*s*C channels) with the kernel folded alike (4x4xCxO ->
  2x2x4CxO), computed by `conv_as_matmul`.

  Its gradients are matmuls and slice-adds: no kernel-dilated weight gradient and no
  input-dilated input gradient, the forms a strided convolution's backward lowers to and for
  which GPUs have no fast bf16 kernel (docs/precision.md)."""
  window, (channels, out) = kernel_WxCxO.shape[:-2], kernel_WxCxO.shape[-2:]
  x = jnp.pad(x_BxSxC, ((0, 0), *padding_pairs, (0, 0)))
  out_sides = [(side - k) // s + 1 for side, k, s in zip(x.shape[1:-1], window, strides)]
  # Rows past the last window are never read: keep s * (out - 1) + k of them.
  x = x[(slice(None), *(slice(0, s * (o - 1) + k)
                        for o, k, s in zip(out_sides, window, strides)))]
  n = len(window)
  blocks = [d for side, s in zip(x.shape[1:-1], strides) for d in (side // s, s)]
  x = x.reshape(x.shape[0], *blocks, channels)  # [B, S1/s1, s1, S2/s2, s2, ..., C]
  x = x.transpose(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
  x = x.reshape(*x.shape[:n + 1], -1)  # [B, *S/s, prod(s) * C], within-block order (s.., C).
  taps = [d for k, s in zip(window, strides) for d in (k // s, s)]
  kernel = kernel_WxCxO.reshape(*taps, channels, out)
  kernel = kernel.transpose(*range(0, 2 * n, 2), *range(1, 2 * n, 2), 2 * n, 2 * n + 1)
  kernel = kernel.reshape(*kernel.shape[:n], -1, out)  # [*W/s, prod(s) * C, O]
  return conv_as_matmul(x, kernel, [(0, 0)] * n, precision)


class MatmulConv(nnx.Conv):
  """`nnx.Conv`, the same parameters and layer, computed by `stride1_conv` when it is of
  stride 1, undilated, ungrouped and unmasked (any window; SAME, VALID or explicit padding),
  and by flax otherwise (the encoders' stride-2 convs, whose gradients XLA:CPU runs well).

  In a reduced-precision compute dtype (bfloat16) a strided conv whose window the stride
  divides, with explicit or VALID padding, runs as `strided_conv_as_matmul` instead: the same
  layer without dilated convolutions in its gradients. float32 keeps flax's convolution, so
  float32 results (the shipped model's, every CPU run's) are unchanged to the bit.
  """

  def __call__(self, x_BxSxC: jax.Array) -> jax.Array:
    n = len(self.kernel_size)
    ones = (None, 1, (1,) * n)
    strides = (self.strides,) * n if isinstance(self.strides, int) else self.strides
    plain = self.kernel_dilation in ones and self.input_dilation in ones and (
        self.feature_group_count == 1) and self.mask is None
    padding_ok = not isinstance(self.padding, str) or self.padding in ("SAME", "VALID")
    if plain and padding_ok and self.strides in ones:
      x_BxSxC, kernel, bias = _promoted(self, x_BxSxC)
      y_BxSxO = stride1_conv(x_BxSxC, kernel, _padding_pairs(self.padding, self.kernel_size),
                             self.precision)
    elif plain and self.padding != "SAME" and padding_ok and _reduced(self.dtype) and all(
        k % s == 0 for k, s in zip(self.kernel_size, strides)):
      x_BxSxC, kernel, bias = _promoted(self, x_BxSxC)
      y_BxSxO = strided_conv_as_matmul(x_BxSxC, kernel, strides,
                                       _padding_pairs(self.padding, self.kernel_size),
                                       self.precision)
    else:
      return super().__call__(x_BxSxC)  # strided in fp32, dilated or masked: flax's conv.
    return y_BxSxO if bias is None else y_BxSxO + bias


def _reduced(dtype) -> bool:
  """A compute dtype narrower than float32 (bfloat16, float16)."""
  return dtype is not None and jnp.dtype(dtype).itemsize < 4


# ------------------------------------------------------------------ mixed-precision helpers


class Embed(nnx.Embed):
  """`nnx.Embed` that looks rows up in the float32 table and casts the rows, not the table, to
  the compute dtype: the same values, and in bfloat16 the table's gradient is a float32
  scatter-add (flax casts the table first, so its gradient is a bfloat16 scatter-add, a slow
  path on GPUs). float32: the very same look-up as flax's."""

  def __call__(self, inputs: jax.Array) -> jax.Array:
    if not jnp.issubdtype(inputs.dtype, jnp.integer) or self.num_embeddings == 1:
      return super().__call__(inputs)
    rows = jnp.take(self.embedding[...], inputs, axis=0)
    return rows if self.dtype is None else rows.astype(self.dtype)


def attention_fp32_softmax(query, key, value, *, dtype=None, dropout_rate=0.0,
                           deterministic=False, dropout_rng=None, broadcast_dropout=True,
                           module=None, mask=None, precision=None, **kwargs):
  """An `attention_fn` for `nnx.MultiHeadAttention`: flax's `dot_product_attention`, except
  that in a reduced-precision dtype with dropout the logits and softmax are float32 (flax's
  own path takes the softmax in the compute dtype; without dropout flax calls
  `jax.nn.dot_product_attention`, whose softmax is float32 already). float32: flax's, as is."""
  compute = jnp.dtype(dtype or query.dtype)
  if not _reduced(compute) or (dropout_rate == 0.0 and module is None) or (
      mask is not None or kwargs.get("is_causal") or module is not None):
    return nnx.dot_product_attention(
        query, key, value, dtype=dtype, dropout_rate=dropout_rate, deterministic=deterministic,
        dropout_rng=dropout_rng, broadcast_dropout=broadcast_dropout, module=module,
        mask=mask, precision=precision, **kwargs)
  query, key, value = (x.astype(compute) for x in (query, key, value))
  query = query / jnp.sqrt(query.shape[-1]).astype(compute)
  logits = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision,
                      preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits).astype(compute)
  if not deterministic and dropout_rate > 0.0:
    keep_prob = 1.0 - dropout_rate
    shape = (*(1,) * (key.ndim - 2), *weights.shape[-2:]) if broadcast_dropout else weights.shape
    keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    weights = weights * (keep.astype(compute) / jnp.asarray(keep_prob, compute))
  return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


Conv = functools.partial(MatmulConv, kernel_init=kernel_init)
