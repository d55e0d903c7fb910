"""Output shapes of every module at the reference and config sizes, traced without compute."""


import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mxq_jax import config_lib
from mxq_jax.models.fusion import FusionEncoder
from mxq_jax.models.image_codec import ImageDecoder, ImageEncoder
from mxq_jax.models.mxq_vae import MXQVAE, count_params
from mxq_jax.models.quantizer import Quantizer
from mxq_jax.models.text_codec import TextDecoder, TextEncoder

from conftest import load_config

B = 2


def abstract_model(config):
  """The MXQ-VAE of `config`, shapes only."""
  return nnx.eval_shape(lambda: MXQVAE(config_lib.mxq_vae_config(config), rngs=nnx.Rngs(0)))


def synthetic(arg=None):
  return load_config("synthetic", arg)


def variant(image_size, text_length, kernel, mix_hidden):
  config = config_lib.base_config()
  config.data.image_size, config.data.text_length = image_size, text_length
  config.vqvae.text_kernel, config.vqvae.text_mix_hidden = kernel, mix_hidden
  return config


def spec(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


def test_reference_module_shapes():
  """The design card's table: 64 px, 64 tokens (k = 15), D = 128, K = 256, vocab 128."""
  vq = config_lib.base_config().vqvae
  image = (tuple(vq.image_channels), vq.res_channels, vq.num_res_blocks, 128)
  text = (128, vq.text_embed_dim, tuple(vq.text_channels), vq.text_kernel, 128)
  rngs = lambda: nnx.Rngs(0)
  shape = lambda fn, *args: jax.eval_shape(fn, *args).shape

  assert shape(lambda x: ImageEncoder(*image, rngs=rngs())(x), spec((B, 64, 64, 3))) == (
      B, 8, 8, 128)
  assert shape(lambda z: ImageDecoder(*image, rngs=rngs())(z), spec((B, 8, 8, 128))) == (
      B, 64, 64, 3)
  assert shape(lambda t: TextEncoder(*text, rngs=rngs())(t), spec((B, 64), jnp.int32)) == (
      B, 8, 128)
  assert shape(lambda z: TextDecoder(*text, rngs=rngs())(z), spec((B, 8, 128))) == (B, 64, 128)
  fusion = lambda z: FusionEncoder(128, 4, 2, 512, 0.1, num_image=64, num_text=8,
                                   position_embeddings=False, rngs=rngs())(
                                       z, train=True, rngs=nnx.Rngs(1))
  assert shape(fusion, spec((B, 72, 128))) == (B, 72, 128)
  out = jax.eval_shape(
      lambda z: Quantizer(256, 128, rngs=rngs())(z, train=True), spec((B, 72, 128)))
  assert out.quantized.shape == (B, 72, 128) and out.codes.shape == (B, 72)
  assert out.codes.dtype == jnp.int32
  assert all(getattr(out, f).shape == () for f in
             ("codebook_loss", "commitment_loss", "perplexity", "usage"))


@pytest.mark.parametrize("name, config, n_image, n_text", [
    ("reference", config_lib.base_config(), 64, 8),
    ("synthetic", synthetic(), 64, 16),
    ("synthetic:paper", synthetic("paper"), 64, 8),
    ("synthetic:smoke", synthetic("smoke"), 4, 8),
    ("128px/68 tokens", variant(128, 68, 14, 128), 256, 16),
    ("128px/80 tokens", variant(128, 80, 16, 128), 256, 20),
])
def test_mxq_vae_shapes(name, config, n_image, n_text):
  size, length, vocab = config.data.image_size, config.data.text_length, config.data.vocab_size
  n = config_lib.num_joint_codes(config)
  assert n == n_image + n_text, name
  model = abstract_model(config)
  graphdef, state = nnx.split(model)
  images, tokens = spec((B, size, size, 3)), spec((B, length), jnp.int32)

  def forward(state, images, tokens):
    model = nnx.merge(graphdef, state)
    return model(images, tokens, train=True, rngs=nnx.Rngs(1))

  out = jax.eval_shape(forward, state, images, tokens)
  assert out.images.shape == (B, size, size, 3) and out.images.dtype == jnp.float32
  assert out.text_logits.shape == (B, length, vocab)
  assert out.codes.shape == (B, n) and out.codes.dtype == jnp.int32
  assert out.quantizer.quantized.shape == (B, n, config.vqvae.embed_dim)

  encode = lambda s, i, t: nnx.merge(graphdef, s).encode(i, t)
  codes = jax.eval_shape(encode, state, images, tokens)
  assert codes.shape == (B, n) and codes.dtype == jnp.int32
  decoded = jax.eval_shape(lambda s, c: nnx.merge(graphdef, s).decode(c), state, codes)
  assert decoded[0].shape == (B, size, size, 3) and decoded[1].shape == (B, length, vocab)


def test_reference_parameter_count():
  config = config_lib.base_config()
  count = lambda c: count_params(abstract_model(c))
  total = count(config)
  print(f"reference MXQ-VAE parameters: {total:,}")
  assert 20_000_000 < total < 30_000_000  # Two ~5M image CNNs, two ~7M text CNNs, 0.8M fusion.
  # Position (72) + modality (2) embeddings; a gradient codebook adds K x D trainable values.
  config.vqvae.position_embeddings = False
  assert total - count(config) == (72 + 2) * 128
  config.vqvae.update(codebook_update="gradient", codebook_init="uniform",
                      dead_code_restart=False)
  assert count(config) == total - 74 * 128 + 256 * 128


def test_bfloat16_compute_float32_params():
  config = synthetic("smoke")
  config.vqvae.dtype = "bfloat16"
  model = abstract_model(config)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  graphdef, state = nnx.split(model)
  size, length = config.data.image_size, config.data.text_length
  features = jax.eval_shape(
      lambda s, i, t: nnx.merge(graphdef, s).features(i, t, train=False), state,
      spec((B, size, size, 3)), spec((B, length), jnp.int32))
  assert features.dtype == jnp.bfloat16


@pytest.mark.parametrize("channels,grid", [((8,), 16), ((8, 16), 8), ((8, 16, 16), 4),
                                           ((8, 8, 16, 16), 2)])
def test_image_codec_depth_follows_the_channel_list(channels, grid):
  """len(image_channels) stride-2 convs: 32 px -> a 32 / 2^n grid, and the decoder back."""
  config = synthetic("smoke")
  config.data.image_size = 32
  config.vqvae.image_channels = channels
  config_lib.validate(config)
  assert config_lib.image_grid_size(config) == grid
  sizes = (channels, 16, 1, 24)
  z = jax.eval_shape(lambda x: ImageEncoder(*sizes, rngs=nnx.Rngs(0))(x), spec((B, 32, 32, 3)))
  assert z.shape == (B, grid, grid, 24)
  assert jax.eval_shape(lambda z: ImageDecoder(*sizes, rngs=nnx.Rngs(0))(z), z).shape == (
      B, 32, 32, 3)
  config.data.image_size = 24  # not a multiple of 2^4 = 16.
  if len(channels) == 4:
    with pytest.raises(config_lib.ConfigError, match="multiple of 16"):
      config_lib.validate(config)
