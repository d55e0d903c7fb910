"""The image CNNs: a VQ-VAE-2 style encoder (side / 2^n) and its mirror-image decoder. NHWC.

n = len(channels) stride-2 convs; the reference has three (64 px -> an 8x8 code grid).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mxq_jax.models import layers, repeated

# PyTorch Conv2d(k=4, s=2, padding=1): halves the side exactly.
_DOWN_PADDING = ((1, 1), (1, 1))
# PyTorch ConvTranspose2d(k=4, s=2, padding=1) in lax terms (k - 1 - p = 2 on each side of the
# stride-dilated input): doubles the side exactly.
_UP_PADDING = ((2, 2), (2, 2))


class ResidualBlock(nnx.Module):
  """x + Conv1x1(ReLU(Conv3x3(ReLU(x)))), both convs without bias (the reference's block)."""

  def __init__(self, channels: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.conv3 = layers.Conv(channels, channels, (3, 3), padding="SAME", use_bias=False,
                          dtype=dtype, rngs=rngs)
    self.conv1 = layers.Conv(channels, channels, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    h_BxHxWxC = self.conv3(jax.nn.relu(x_BxHxWxC))
    h_BxHxWxC = self.conv1(jax.nn.relu(h_BxHxWxC))
    return x_BxHxWxC + h_BxHxWxC


class ResidualStack(nnx.Module):
  """`num_blocks` residual blocks in a row (`scan`: compiled once, models/repeated.py)."""

  def __init__(self, channels: int, num_blocks: int, *, dtype: jnp.dtype = jnp.float32,
               scan: bool = False, rngs: nnx.Rngs):
    self.scan = scan
    self.blocks = nnx.List(
        [ResidualBlock(channels, dtype=dtype, rngs=rngs) for _ in range(num_blocks)])

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    return repeated.apply(self.blocks, x_BxHxWxC, lambda block, x, _: block(x), scan=self.scan)


class ImageEncoder(nnx.Module):
  """Images [B, H, W, 3] -> feature grid [B, H/s, W/s, D], s = 2^len(channels)."""

  def __init__(self, channels: Sequence[int], res_channels: int, num_res_blocks: int,
               out_dim: int, *, dtype: jnp.dtype = jnp.float32, scan: bool = False,
               rngs: nnx.Rngs):
    conv = lambda cin, cout, k, **kw: layers.Conv(cin, cout, k, dtype=dtype, rngs=rngs, **kw)
    self.down = nnx.List([
        conv(cin, cout, (4, 4), strides=2, padding=_DOWN_PADDING)
        for cin, cout in zip((3, *channels[:-1]), channels)
    ])
    self.conv_in = conv(channels[-1], res_channels, (3, 3), padding="SAME")
    self.res = ResidualStack(res_channels, num_res_blocks, dtype=dtype, scan=scan, rngs=rngs)
    self.conv_out = conv(res_channels, out_dim, (1, 1))

  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    x = images_BxHxWx3
    for layer in self.down:
      x = jax.nn.relu(layer(x))
    x = self.res(self.conv_in(x))
    return self.conv_out(jax.nn.relu(x))  # [B, H/s, W/s, D]


class ImageDecoder(nnx.Module):
  """Feature grid [B, h, w, D] -> images [B, sh, sw, 3], normalized pixel space (no activation)."""

  def __init__(self, channels: Sequence[int], res_channels: int, num_res_blocks: int,
               in_dim: int, *, dtype: jnp.dtype = jnp.float32, scan: bool = False,
               rngs: nnx.Rngs):
    # Mirror of the encoder, whose last width is the residual width here (as in the
    # reference): res -> c[-2] -> ... -> c[0] -> 3.
    widths = (res_channels, *reversed(channels[:-1]), 3)
    self.conv_in = layers.Conv(in_dim, res_channels, (3, 3), padding="SAME", dtype=dtype, rngs=rngs)
    self.res = ResidualStack(res_channels, num_res_blocks, dtype=dtype, scan=scan, rngs=rngs)
    up = lambda cin, cout: layers.UpConv2x(cin, cout, (4, 4), strides=2, padding=_UP_PADDING,
                                           kernel_init=layers.kernel_init, dtype=dtype, rngs=rngs)
    self.up = nnx.List([up(cin, cout) for cin, cout in zip(widths[:-1], widths[1:])])

  def __call__(self, z_BxhxwxD: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.res(self.conv_in(z_BxhxwxD)))
    for layer in self.up[:-1]:
      x = jax.nn.relu(layer(x))
    return self.up[-1](x)  # [B, sh, sw, 3]
