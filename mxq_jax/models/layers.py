"""Convolutions with flax's default LeCun-normal kernels, drawn as matrices then reshaped.

Same distribution as `nnx.Conv`'s default (fan-in = receptive field x input channels), but
the random bits are rank 2: on XLA:CPU, partitionable threefry of rank > 2 compiles about five
times slower, which made model initialization dominate start-up and the test suite.
"""

import functools
import math

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


Conv = functools.partial(nnx.Conv, kernel_init=kernel_init)


# ------------------------------------------------------------- transposed convolutions
# `nnx.ConvTranspose` lowers to a convolution over an input dilated by the stride (and, for
# stride 1, padded by k - 1): XLA:CPU has no fast kernel for those forms, and their kernel
# gradients are slower still. These two compute the very same layers (same parameters, same
# shapes, numerically equal outputs and gradients) as ordinary stride-1 convolutions.

_NHWC = ("NHWC", "HWIO", "NHWC")


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
    bias = self.bias[...] if self.bias is not None else None
    x_BxHxWxC, kernel_4x4xCxO, bias = self.promote_dtype(
        (x_BxHxWxC, self.kernel[...], bias), dtype=self.dtype)
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
  with the same (unflipped) kernel."""

  def __call__(self, x_BxLxC: jax.Array) -> jax.Array:
    (k,) = self.kernel_size
    if self.strides not in (1, (1,), None) or self.padding != "VALID":
      raise ValueError("FullConv1d is a stride-1, VALID transposed convolution")
    bias = self.bias[...] if self.bias is not None else None
    x_BxLxC, kernel_KxCxO, bias = self.promote_dtype(
        (x_BxLxC, self.kernel[...], bias), dtype=self.dtype)
    padded_BxL2xC = jnp.pad(x_BxLxC, ((0, 0), (k - 1, k - 1), (0, 0)))
    y_BxL2xO = jax.lax.conv_general_dilated(
        padded_BxL2xC, kernel_KxCxO, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"),
        precision=self.precision)
    return y_BxL2xO if bias is None else y_BxL2xO + bias
