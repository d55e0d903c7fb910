"""Convolutions with flax's default LeCun-normal kernels, drawn as matrices then reshaped.

Same distribution as `nnx.Conv`'s default (fan-in = receptive field x input channels), but
the random bits are rank 2: on XLA:CPU, partitionable threefry of rank > 2 compiles about five
times slower, which made model initialization dominate start-up and the test suite.
"""

import functools
import math

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
ConvTranspose = functools.partial(nnx.ConvTranspose, kernel_init=kernel_init)
