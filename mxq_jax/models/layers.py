"""Convolutions: flax's default LeCun-normal kernels drawn as matrices, and the codecs' fast forms.

Kernels: the same distribution as `nnx.Conv`'s default (fan-in = receptive field x input
channels), but the random bits are rank 2: on XLA:CPU, partitionable threefry of rank > 2
compiles about five times slower, which made model initialization dominate start-up and the
test suite.

Fast forms: subclasses of `nnx.Conv` / `nnx.ConvTranspose` with the same parameters that
compute the same layer as stride-1 convolutions or matmuls, whose forward and backward XLA
compiles well (`python -m mxq_jax.bench --parts=modules` measures each module).
"""

import functools
import itertools
import math
from collections.abc import Sequence

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


# ------------------------------------------------------------- transposed convolutions
# `nnx.ConvTranspose` lowers to a convolution over an input dilated by the stride (and, for
# stride 1, padded by k - 1): XLA:CPU has no fast kernel for those forms, and their kernel
# gradients are slower still. These two compute the very same layers (same parameters, same
# shapes, numerically equal outputs and gradients) as ordinary stride-1 convolutions.

_NHWC = ("NHWC", "HWIO", "NHWC")


def _promoted(layer, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """(input, kernel, bias or None) of a flax conv layer, in its compute dtype."""
  bias = layer.bias[...] if layer.bias is not None else None
  return layer.promote_dtype((x, layer.kernel[...], bias), dtype=layer.dtype)


class UpConv2x(nnx.ConvTranspose):
  """`nnx.ConvTranspose` of a 4x4 kernel, stride 2, padding (2, 2) (PyTorch's
  ConvTranspose2d(k=4, s=2, p=1)), as four 2x2 stride-1 convolutions and depth-to-space.

  Output row 2i + a reads input rows {i - 1, i} through kernel rows {0, 2} (a = 0) or rows
  {i, i + 1} through kernel rows {1, 3} (a = 1); columns alike. Each (a, b) phase is a VALID
  2x2 convolution of the input padded on the side it reads past.
  """

  # (kernel taps, input padding) of each output phase along one spatial axis.
  _PHASES = (((0, 2), (1, 0)), ((1, 3), (0, 1)))

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    if tuple(self.kernel_size) != (4, 4) or self.strides not in (2, (2, 2)) or (
        self.padding != ((2, 2), (2, 2))):
      raise ValueError("UpConv2x is a 4x4, stride-2, padding-(2, 2) transposed convolution")
    x_BxHxWxC, kernel_4x4xCxO, bias = _promoted(self, x_BxHxWxC)
    batch, height, width, _ = x_BxHxWxC.shape
    rows = []
    for row_taps, row_pad in self._PHASES:
      phases = []
      for col_taps, col_pad in self._PHASES:
        k_2x2xCxO = kernel_4x4xCxO[jnp.array(row_taps)][:, jnp.array(col_taps)]
        phases.append(jax.lax.conv_general_dilated(
            x_BxHxWxC, k_2x2xCxO, (1, 1), (row_pad, col_pad), dimension_numbers=_NHWC,
            precision=self.precision))
      rows.append(jnp.stack(phases, axis=3))  # [B, H, W, 2 (b), O]
    y_BxHx2xWx2xO = jnp.stack(rows, axis=2)
    y_Bx2Hx2WxO = y_BxHx2xWx2xO.reshape(batch, 2 * height, 2 * width, -1)
    return y_Bx2Hx2WxO if bias is None else y_Bx2Hx2WxO + bias


class FullConv1d(nnx.ConvTranspose):
  """`nnx.ConvTranspose` of kernel k, stride 1, padding "VALID" (lengthens by k - 1), as the
  ordinary convolution it is: the input zero-padded by k - 1 on each side, then a VALID conv
  with the same (unflipped) kernel, computed as a matmul (`conv_as_matmul`).

  (Tried and slower on XLA:CPU: one matmul to every tap then an overlap-add, which skips the
  zero rows' multiplications but has a 1.5x slower backward at the reference sizes.)"""

  def __call__(self, x_BxLxC: jax.Array) -> jax.Array:
    (k,) = self.kernel_size
    if self.strides not in (1, (1,), None) or self.padding != "VALID":
      raise ValueError("FullConv1d is a stride-1, VALID transposed convolution")
    x_BxLxC, kernel_KxCxO, bias = _promoted(self, x_BxLxC)
    y_BxL2xO = conv_as_matmul(x_BxLxC, kernel_KxCxO, [(k - 1, k - 1)], self.precision)
    return y_BxL2xO if bias is None else y_BxL2xO + bias


# ---------------------------------------------------------- stride-1 convolutions as matmuls


def _padding_pairs(padding, window: Sequence[int]) -> list[tuple[int, int]]:
  """`nnx.Conv`'s padding ("SAME", "VALID" or (lo, hi) pairs) as (lo, hi) per spatial axis."""
  if padding == "VALID":
    return [(0, 0)] * len(window)
  if padding == "SAME":  # stride 1: XLA puts the odd pad element after.
    return [((k - 1) // 2, k // 2) for k in window]
  if isinstance(padding, int):
    return [(padding, padding)] * len(window)
  return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


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


class MatmulConv(nnx.Conv):
  """`nnx.Conv`, the same parameters and layer, computed by `conv_as_matmul` when it is of
  stride 1, undilated, ungrouped and unmasked (any window; SAME, VALID or explicit padding),
  and by flax otherwise (the encoders' stride-2 convs, whose gradients XLA:CPU runs well)."""

  def __call__(self, x_BxSxC: jax.Array) -> jax.Array:
    ones = (None, 1, (1,) * len(self.kernel_size))
    if self.strides not in ones or self.kernel_dilation not in ones or (
        self.input_dilation not in ones) or self.feature_group_count != 1 or (
        isinstance(self.padding, str) and self.padding not in ("SAME", "VALID")) or (
        self.mask is not None):
      return super().__call__(x_BxSxC)  # strided, dilated or masked: flax's convolution.
    x_BxSxC, kernel, bias = _promoted(self, x_BxSxC)
    y_BxSxO = conv_as_matmul(x_BxSxC, kernel, _padding_pairs(self.padding, self.kernel_size),
                             self.precision)
    return y_BxSxO if bias is None else y_BxSxO + bias


Conv = functools.partial(MatmulConv, kernel_init=kernel_init)
