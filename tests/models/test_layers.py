"""The codecs' rewritten convolutions are the same layers as flax's: the decoders' transposed
convolutions as `nnx.ConvTranspose`, the stride-1 convolutions as matmuls (`MatmulConv`) as `nnx.Conv`. Same
parameters, equal outputs and gradients at the reference sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax.models import layers


def outputs_and_grads(model, x):
  loss = lambda m, x: jnp.sum(jnp.sin(m(x)))  # a non-linear loss: every output matters.
  y = model(x)
  _, (grad_model, grad_x) = nnx.value_and_grad(loss, argnums=(0, 1))(model, x)
  return y, grad_model["kernel"][...], grad_model["bias"][...], grad_x


def assert_same_layer(reference, rewritten, x):
  kernel, bias = reference.kernel[...], reference.bias[...]
  np.testing.assert_array_equal(rewritten.kernel[...], kernel)  # same init, same shapes.
  np.testing.assert_array_equal(rewritten.bias[...], bias)
  rewritten.bias[...] = reference.bias[...] = jax.random.normal(jax.random.key(3), bias.shape)
  for want, got in zip(outputs_and_grads(reference, x), outputs_and_grads(rewritten, x)):
    assert want.shape == got.shape
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


# The reference image decoder's up-convolutions: 8x8 x 256 -> 16 x 128 -> 32 x 64 -> 64 x 3.
@pytest.mark.parametrize("cin, cout, side", [(256, 128, 8), (128, 64, 16), (64, 3, 32)])
def test_up_conv_2x_is_the_transposed_convolution(cin, cout, side):
  kwargs = dict(kernel_size=(4, 4), strides=2, padding=((2, 2), (2, 2)),
                kernel_init=layers.kernel_init)
  reference = nnx.ConvTranspose(cin, cout, **kwargs, rngs=nnx.Rngs(0))
  rewritten = layers.UpConv2x(cin, cout, **kwargs, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, side, side, cin))
  assert rewritten(x).shape == (2, 2 * side, 2 * side, cout)
  assert_same_layer(reference, rewritten, x)


# The reference text decoder: 8 positions x 128 -> 22 x 512 -> 36 x 416 -> 50 x 320 -> 64 x 224.
@pytest.mark.parametrize("cin, cout, length", [(128, 512, 8), (512, 416, 22), (416, 320, 36),
                                               (320, 224, 50)])
def test_full_conv_1d_is_the_transposed_convolution(cin, cout, length):
  kwargs = dict(kernel_size=(15,), padding="VALID", kernel_init=layers.kernel_init)
  reference = nnx.ConvTranspose(cin, cout, **kwargs, rngs=nnx.Rngs(0))
  rewritten = layers.FullConv1d(cin, cout, **kwargs, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, length, cin))
  assert rewritten(x).shape == (2, length + 14, cout)
  assert_same_layer(reference, rewritten, x)


# The reference text encoder: 64 tokens x 128 -> 50 x 224 -> 36 x 320 -> 22 x 416 -> 8 x 512.
@pytest.mark.parametrize("cin, cout, length", [(128, 224, 64), (224, 320, 50), (320, 416, 36),
                                               (416, 512, 22)])
def test_matmul_conv_is_the_1d_convolution(cin, cout, length):
  kwargs = dict(kernel_size=(15,), padding="VALID", kernel_init=layers.kernel_init)
  reference = nnx.Conv(cin, cout, **kwargs, rngs=nnx.Rngs(0))
  rewritten = layers.MatmulConv(cin, cout, **kwargs, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, length, cin))
  assert rewritten(x).shape == (2, length - 14, cout)
  assert_same_layer(reference, rewritten, x)


# The residual blocks' 3x3 SAME convs at the reference 8x8 grid, an even window's uneven SAME
# padding, explicit padding, and a strided conv (which stays flax's).
@pytest.mark.parametrize("window, padding, strides", [
    ((3, 3), "SAME", 1), ((1, 1), "VALID", 1), ((4, 2), "SAME", 1),
    ((3, 3), ((2, 0), (1, 1)), 1), ((4, 4), ((1, 1), (1, 1)), 2)])
def test_matmul_conv_is_the_2d_convolution(window, padding, strides):
  kwargs = dict(kernel_size=window, padding=padding, strides=strides,
                kernel_init=layers.kernel_init)
  reference = nnx.Conv(256, 64, **kwargs, rngs=nnx.Rngs(0))
  rewritten = layers.MatmulConv(256, 64, **kwargs, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 256))
  assert rewritten(x).shape == reference(x).shape
  assert_same_layer(reference, rewritten, x)


def test_other_transposed_convolutions_are_refused():
  wrong = layers.UpConv2x(4, 4, kernel_size=(3, 3), strides=2, padding=((2, 2), (2, 2)),
                          rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="4x4, stride-2"):
    wrong(jnp.zeros((1, 4, 4, 4)))
  with pytest.raises(ValueError, match="stride-1, VALID"):
    layers.FullConv1d(4, 4, kernel_size=(3,), padding="SAME", rngs=nnx.Rngs(0))(
        jnp.zeros((1, 5, 4)))
