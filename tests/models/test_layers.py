"""The codecs' rewritten convolutions are the same layers as flax's: the decoders' transposed
convolutions as `nnx.ConvTranspose`, the stride-1 convolutions as matmuls (`MatmulConv`) as
`nnx.Conv`. Same parameters, equal outputs and gradients at the reference sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax.models import layers
from conftest import normal


@nnx.jit  # one program: op by op, each of the many small ops would compile on its own.
def outputs_and_grads(model, x):
  loss = lambda m, x: jnp.sum(jnp.sin(m(x)))  # a non-linear loss: every output matters.
  y = model(x)
  _, (grad_model, grad_x) = nnx.value_and_grad(loss, argnums=(0, 1))(model, x)
  return y, grad_model["kernel"][...], grad_model["bias"][...], grad_x


def assert_same_layer(reference, rewritten, x):
  kernel, bias = reference.kernel[...], reference.bias[...]
  np.testing.assert_array_equal(rewritten.kernel[...], kernel)  # same init, same shapes.
  np.testing.assert_array_equal(rewritten.bias[...], bias)
  rewritten.bias[...] = reference.bias[...] = normal(3, bias.shape)
  for want, got in zip(outputs_and_grads(reference, x), outputs_and_grads(rewritten, x)):
    assert want.shape == got.shape
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


UP = dict(kernel_size=(4, 4), strides=2, padding=((2, 2), (2, 2)))  # doubles the side.
K15 = dict(kernel_size=(15,), padding="VALID")  # -14 positions; transposed, +14.
CASES = [
    # The reference image decoder's up-convolutions: 8x8 x 256 -> 16 x 128 -> 32 x 64 -> 64 x 3.
    *[(nnx.ConvTranspose, layers.UpConv2x, UP, (2, side, side, cin), cout)
      for cin, cout, side in [(256, 128, 8), (128, 64, 16), (64, 3, 32)]],
    # The reference text decoder: 8 positions x 128 -> 22 x 512 -> 36 x 416 -> 50 x 320 -> 64.
    *[(nnx.ConvTranspose, layers.FullConv1d, K15, (2, length, cin), cout)
      for cin, cout, length in [(128, 512, 8), (512, 416, 22), (416, 320, 36), (320, 224, 50)]],
    # The reference text encoder: 64 tokens x 128 -> 50 x 224 -> 36 x 320 -> 22 x 416 -> 8.
    *[(nnx.Conv, layers.MatmulConv, K15, (2, length, cin), cout)
      for cin, cout, length in [(128, 224, 64), (224, 320, 50), (320, 416, 36), (416, 512, 22)]],
    # The residual blocks' 3x3 SAME convs at the reference 8x8 grid, an even window's uneven
    # SAME padding, explicit padding, and a strided conv (which stays flax's).
    *[(nnx.Conv, layers.MatmulConv, dict(kernel_size=window, padding=padding, strides=strides),
       (2, 8, 8, 256), 64)
      for window, padding, strides in [((3, 3), "SAME", 1), ((1, 1), "VALID", 1),
                                       ((4, 2), "SAME", 1), ((3, 3), ((2, 0), (1, 1)), 1),
                                       ((4, 4), ((1, 1), (1, 1)), 2)]],
    # A masked kernel stays flax's too.
    (nnx.Conv, layers.MatmulConv,
     dict(kernel_size=(3, 3), padding="SAME",
          mask=np.tril(np.ones((3, 3, 8, 4), np.float32), k=-1)),
     (2, 8, 8, 8), 4),
]


def lecun_normal_from_numpy(key, shape, dtype=jnp.float32):
  """layers.kernel_init's distribution, drawn by NumPy: jax.random would compile a program for
  each kernel shape, and a layer's arithmetic does not depend on where its weights came from."""
  del key
  return jnp.asarray(normal(0, shape) / np.sqrt(np.prod(shape[:-1])), dtype)


@pytest.mark.parametrize("reference_cls, rewritten_cls, kwargs, shape, cout", CASES)
def test_rewritten_layer_is_flax_layer(reference_cls, rewritten_cls, kwargs, shape, cout):
  kwargs = dict(kwargs, kernel_init=lecun_normal_from_numpy)
  reference = reference_cls(shape[-1], cout, **kwargs, rngs=nnx.Rngs(0))
  rewritten = rewritten_cls(shape[-1], cout, **kwargs, rngs=nnx.Rngs(0))
  x = normal(1, shape)
  assert_same_layer(reference, rewritten, x)


def test_other_transposed_convolutions_are_refused():
  wrong = layers.UpConv2x(4, 4, kernel_size=(3, 3), strides=2, padding=((2, 2), (2, 2)),
                          rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="4x4, stride-2"):
    wrong(jnp.zeros((1, 4, 4, 4)))
  with pytest.raises(ValueError, match="stride-1, VALID"):
    layers.FullConv1d(4, 4, kernel_size=(3,), padding="SAME", rngs=nnx.Rngs(0))(
        jnp.zeros((1, 5, 4)))


# ------------------------------------------- inference forms: the same layers, faster forward

def _stride1(padding_pairs):
  """(stride1_conv, conv_as_matmul) with this padding bound."""
  return (functools.partial(layers.stride1_conv, padding_pairs=padding_pairs, precision=None),
          functools.partial(layers.conv_as_matmul, padding_pairs=padding_pairs))


_UP_2X = (functools.partial(layers.up_conv_2x, precision=None), layers._up_conv_2x_by_phases)

# ((layer, its differentiable form), input shape, kernel shape, the HLO op that the layer's
# undifferentiated forward must run on: XLA's convolution, or a matmul).
INFERENCE_FORMS = [
    (_stride1(((14, 14),)), (2, 22, 16), (15, 16, 8), "convolution"),  # text decoder's 2nd.
    (_stride1(((14, 14),)), (2, 8, 16), (15, 16, 8), "dot"),  # its 1st: window > input.
    (_stride1(((1, 1), (1, 1))), (2, 8, 8, 16), (3, 3, 16, 8), "convolution"),  # res blocks.
    (_stride1(((0, 0), (0, 0))), (2, 8, 8, 16), (1, 1, 16, 8), "dot"),
    (_UP_2X, (2, 8, 8, 16), (4, 4, 16, 8), "convolution"),  # an up-conv's four phases.
    (_UP_2X, (2, 8, 8, 16), (4, 4, 16, 3), "dot"),  # RGB out: one matmul by all 16 taps.
]


@pytest.mark.parametrize("forms, x_shape, kernel_shape, inference_op", INFERENCE_FORMS)
def test_inference_form_runs_only_undifferentiated(forms, x_shape, kernel_shape, inference_op):
  layer, differentiable = forms
  x = normal(1, x_shape)
  kernel = normal(2, kernel_shape) / 8
  # Under differentiation (training): the differentiable form's values and gradients, bitwise.
  train = lambda f: jax.jit(jax.value_and_grad(
      lambda x, kernel: jnp.sum(jnp.sin(f(x, kernel))), argnums=(0, 1)))(x, kernel)
  for want, got in zip(jax.tree.leaves(train(differentiable)), jax.tree.leaves(train(layer))):
    np.testing.assert_array_equal(got, want)
  # Undifferentiated: the same layer, computed on the op its form chose.
  hlo = jax.jit(layer).lower(x, kernel).as_text(dialect="hlo")
  ops = {op for op in ("convolution", "dot") if f" {op}(" in hlo}
  assert ops == {inference_op}, ops
  want = differentiable(x, kernel)
  np.testing.assert_allclose(jax.jit(layer)(x, kernel), want, rtol=0,
                             atol=2e-6 * float(np.abs(want).max()))


# ------------------------------------------------------------------- the bf16 forms (precision)


@functools.partial(jax.jit, static_argnums=0)
def conv_outputs_and_grads(conv, x, kernel):
  loss = lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel)))
  return conv(x, kernel), *jax.grad(loss, argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize("shape, window, strides, padding, cout", [
    ((2, 32, 32, 3), (4, 4), (2, 2), ((1, 1), (1, 1)), 32),  # the encoders' convs.
    ((1, 16, 16, 32), (4, 4), (2, 2), ((1, 1), (1, 1)), 64),
    ((2, 15, 13, 8), (4, 4), (2, 2), ((1, 1), (1, 1)), 4),  # odd sides: trailing rows unread.
    ((2, 20, 5), (6,), (3,), ((2, 1),), 7),  # 1-D, stride 3.
    ((2, 9, 9, 4), (2, 4), (2, 2), ((0, 0), (0, 0)), 4),  # VALID, unequal window.
])
def test_strided_conv_as_matmul_is_the_strided_conv(shape, window, strides, padding, cout):
  x = normal(1, shape)
  kernel = normal(2, (*window, shape[-1], cout)) / 8
  spatial = "".join("DHW"[-len(window):])
  numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  reference = lambda x, k: jax.lax.conv_general_dilated(x, k, strides, padding,
                                                        dimension_numbers=numbers)
  rewritten = lambda x, k: layers.strided_conv_as_matmul(x, k, strides, padding)
  for want, got in zip(conv_outputs_and_grads(reference, x, kernel),
                       conv_outputs_and_grads(rewritten, x, kernel)):
    assert want.shape == got.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))


def test_bf16_layers_lower_without_dilated_convolutions_or_bf16_scatters():
  """In bf16 the encoder's strided conv is a matmul (no dilated convs in its gradients), the
  decoder's up-conv slices its kernel (no scatter-add), the embedding reads the fp32 table."""
  bf16 = lambda: dict(dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  down = layers.MatmulConv(8, 16, (4, 4), strides=2, padding=((1, 1), (1, 1)),
                           kernel_init=layers.kernel_init, **bf16())
  up = layers.UpConv2x(16, 4, (4, 4), strides=2, padding=((2, 2), (2, 2)), **bf16())
  embed = layers.Embed(96, 8, **bf16())
  x = normal(1, (2, 8, 8, 8))
  tokens = jnp.arange(24).reshape(2, 12)

  def loss(models, x):
    down, up, embed = models
    return jnp.sum(up(down(x)).astype(jnp.float32)) + jnp.sum(embed(tokens).astype(jnp.float32))

  hlo = jax.jit(nnx.grad(loss)).lower((down, up, embed), x).as_text(dialect="hlo")
  convolutions = [line for line in hlo.splitlines() if " convolution(" in line]
  assert convolutions and all("bf16[" in line for line in convolutions)  # up's stride-1 convs.
  assert not any("lhs_dilate" in line or "rhs_dilate" in line for line in convolutions)
  scatters = [line for line in hlo.splitlines() if " scatter(" in line]
  assert scatters and not any("= bf16[" in line for line in scatters)  # embedding: fp32 table.
  # The same layers as flax's in bf16, to bf16's precision.
  reference = nnx.Conv(8, 16, (4, 4), strides=2, padding=((1, 1), (1, 1)),
                       kernel_init=layers.kernel_init, **bf16())
  np.testing.assert_allclose(np.asarray(down(x), np.float32),
                             np.asarray(reference(x), np.float32), atol=0.05, rtol=0.02)
  np.testing.assert_array_equal(np.asarray(embed(tokens), np.float32),
                                np.asarray(nnx.Embed(96, 8, **bf16())(tokens), np.float32))


def test_fp32_layers_keep_flax_forms():
  """float32 keeps flax's strided convolution (the shipped model's arithmetic, to the bit)."""
  down = layers.MatmulConv(8, 16, (4, 4), strides=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
  hlo = jax.jit(lambda x: down(x)).lower(jnp.zeros((2, 8, 8, 8))).as_text(dialect="hlo")
  assert "stride=2x2" in hlo
