"""MXQ-VAE, stage 1: image + caption -> one joint code sequence -> image + caption.

images -> ImageEncoder -> [B, g*g, D] \
                                        concat -> FusionEncoder -> Quantizer -> codes [B, N]
tokens -> TextEncoder  -> [B, T, D]   /
codes -> codebook vectors [B, N, D] -> image mixer (N -> g*g over positions) -> ImageDecoder
                                    -> text mixer  (N -> h -> T over positions) -> TextDecoder

Masking of the inputs happens in the train step (`mxq_jax.training.masking`): the model
reconstructs whatever pair it is given, and the loss compares it with the unmasked originals.

The model reads a typed `MXQVAEConfig` (`mxq_jax.config_lib.mxq_vae_config` builds it from
config.vqvae and config.data). Ablations of the design (the paper's model: fusion="transformer",
codebooks="shared", decoder_inputs="joint"):
  fusion="none":          no FusionEncoder; each modality's encoder features are quantized as
                          encoded, so an image code depends on the image alone (and a text code
                          on the caption alone).
  codebooks="separate":   one codebook per modality (`codebooks.ModalityQuantizers`; text ids
                          offset by K, a vocabulary of 2K).
  decoder_inputs="own":   the image mixer reads only the g*g image positions (g*g -> g*g) and
                          the text mixer only the T text positions (T -> h -> T): no cross
                          decoding.
"""

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from mxq_jax.models import codebooks
from mxq_jax.models.fusion import FusionEncoder
from mxq_jax.models.image_codec import ImageDecoder, ImageEncoder
from mxq_jax.models.quantizer import QuantizerOutput
from mxq_jax.models.text_codec import TextDecoder, TextEncoder


@dataclasses.dataclass(frozen=True)
class MXQVAEConfig:
  """Sizes and switches of the stage-1 model (the fields of config.vqvae, units there).

  The code geometry is given, not derived: `mxq_jax.config_lib` computes it from the image
  size and caption length (`image_grid_size`, `text_positions`), in one place.
  """
  grid_size: int  # g: side of the image code grid, image side / 2 ** len(image_channels).
  text_positions: int  # T: text code positions, text_length - 4 (text_kernel - 1).
  vocab_size: int  # V: SentencePiece pieces.
  # Image CNN: len(image_channels) stride-2 4x4 convs, a 3x3 conv, residual stack, 1x1 to D.
  image_channels: tuple[int, ...]
  res_channels: int
  num_res_blocks: int
  # Text 1-D CNN: embedding, four VALID convs of text_kernel, 1x1 conv to D.
  text_embed_dim: int
  text_channels: tuple[int, ...]
  text_kernel: int
  text_head_relu: bool  # a ReLU between the text decoder's two 1x1 convs (reference: none).
  embed_dim: int  # D: fusion width and code vector size.
  # Fusion: a post-LN Transformer over image then text positions, or "none" (no fusion).
  fusion: Literal["transformer", "none"]
  fusion_layers: int
  fusion_heads: int
  fusion_mlp_dim: int
  dropout: float  # fusion dropout rate.
  position_embeddings: bool  # learned position + modality embeddings before the fusion.
  quantizer: codebooks.QuantizerConfig
  # Cross decoding: each decoder's position mixer reads all N positions ("joint") or only its
  # modality's ("own"); "routing" starts the mixers by passing those positions through.
  decoder_inputs: Literal["joint", "own"]
  cross_mixer_init: Literal["routing", "random"]
  text_mix_hidden: int  # h: the text mixer's hidden width over positions.
  dtype: str  # compute dtype, "float32" or "bfloat16"; parameters stay float32.
  scan_layers: bool = False  # repeated blocks compiled once (models/repeated.py).


@flax.struct.dataclass
class StageOneOutput:
  """One stage-1 forward pass (all arrays float32 except codes)."""
  images: jax.Array  # [B, H, W, 3] reconstruction, normalized pixel space.
  text_logits: jax.Array  # [B, L, V] per-position vocabulary logits.
  codes: jax.Array  # [B, N] int32 joint codes: image grid (row-major) first, then text.
  quantizer: QuantizerOutput  # losses and codebook statistics.


def routing_kernels(widths: tuple[int, ...], first: int) -> list[jax.Array]:
  """Kernels that route input positions [first, first + M) to the M outputs, unchanged.

  One layer: the identity on those positions. Two layers with a ReLU between: each routed
  position gets a +x and a -x hidden unit, recombined as relu(x) - relu(-x) = x (needs
  hidden >= 2M). Every other weight is zero.
  """
  outputs = widths[-1]
  eye_MxM = jnp.eye(outputs, dtype=jnp.float32)
  if len(widths) == 2:
    return [jnp.zeros(widths, jnp.float32).at[first:first + outputs].set(eye_MxM)]
  n, hidden, _ = widths
  if hidden < 2 * outputs:
    raise ValueError(f"identity routing needs text_mix_hidden >= 2 x {outputs} positions")
  signs_Mx2M = jnp.kron(eye_MxM, jnp.array([[1.0, -1.0]]))
  first_NxH = jnp.zeros((n, hidden)).at[first:first + outputs, :2 * outputs].set(signs_Mx2M)
  second_HxM = jnp.zeros((hidden, outputs)).at[:2 * outputs].set(signs_Mx2M.T)
  return [first_NxH, second_HxM]


class PositionMixer(nnx.Module):
  """Linear maps over the position axis, shared by all D channels: [B, N, D] -> [B, M, D].

  `widths` = (N, M) is the reference image mixer; (N, h, M) adds a hidden layer with a ReLU
  (the reference text mixer). `route_from`: start the kernels as `routing_kernels` (each
  decoder first reads its own modality's positions, in place) plus 0.1 x the default random
  init, instead of the reference's random mixing of all positions.
  """

  def __init__(self, widths: tuple[int, ...], *, route_from: int | None = None,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.layers = nnx.List([
        nnx.Linear(n_in, n_out, dtype=dtype, rngs=rngs)
        for n_in, n_out in zip(widths[:-1], widths[1:])
    ])
    if route_from is not None:
      for layer, routing in zip(self.layers, routing_kernels(widths, route_from)):
        layer.kernel[...] = routing + 0.1 * layer.kernel[...]

  def __call__(self, z_BxNxD: jax.Array) -> jax.Array:
    x_BxDxN = jnp.swapaxes(z_BxNxD, 1, 2)  # Positions last, so Linear mixes positions.
    for i, layer in enumerate(self.layers):
      x_BxDxN = layer(x_BxDxN)
      if i < len(self.layers) - 1:
        x_BxDxN = jax.nn.relu(x_BxDxN)
    return jnp.swapaxes(x_BxDxN, 1, 2)


class MXQVAE(nnx.Module):
  """The stage-1 model: [B, H, W, 3] images and [B, L] tokens <-> [B, N] joint codes."""

  def __init__(self, config: MXQVAEConfig, *, rngs: nnx.Rngs):
    # Submodules are built in this order on purpose: each draws its initial parameters from
    # `rngs` in turn, so the order fixes every initial value.
    dtype = jnp.dtype(config.dtype)
    self.compute_dtype = dtype
    dim = config.embed_dim
    self.grid = config.grid_size
    self.num_image = self.grid**2
    self.num_text = config.text_positions
    self.own_decoder_inputs = config.decoder_inputs == "own"
    image_sizes = (config.image_channels, config.res_channels, config.num_res_blocks, dim)
    text_sizes = (config.vocab_size, config.text_embed_dim, config.text_channels,
                  config.text_kernel, dim)

    scan = config.scan_layers
    self.image_encoder = ImageEncoder(*image_sizes, dtype=dtype, scan=scan, rngs=rngs)
    self.text_encoder = TextEncoder(*text_sizes, dtype=dtype, rngs=rngs)
    # fusion="none": no Transformer; each modality is quantized as encoded.
    fused = config.fusion == "transformer"
    self.fusion = FusionEncoder(
        dim, config.fusion_layers, config.fusion_heads, config.fusion_mlp_dim, config.dropout,
        num_image=self.num_image, num_text=self.num_text,
        position_embeddings=config.position_embeddings, dtype=dtype, scan=scan,
        rngs=rngs) if fused else None
    self.quantizer = codebooks.make_quantizer(config.quantizer, dim, self.num_image, rngs=rngs)
    # Each mixer reads all N joint positions (cross decoding) or, decoder_inputs="own", only
    # its own modality's; the routing init passes that modality's positions through.
    num_positions, own = self.num_image + self.num_text, self.own_decoder_inputs
    text_first = 0 if own else self.num_image
    routed = config.cross_mixer_init == "routing"
    self.image_mixer = PositionMixer((self.num_image if own else num_positions, self.num_image),
                                     route_from=0 if routed else None, dtype=dtype, rngs=rngs)
    self.text_mixer = PositionMixer(
        (self.num_text if own else num_positions, config.text_mix_hidden, self.num_text),
        route_from=text_first if routed else None, dtype=dtype, rngs=rngs)
    self.image_decoder = ImageDecoder(*image_sizes, dtype=dtype, scan=scan, rngs=rngs)
    self.text_decoder = TextDecoder(*text_sizes, head_relu=config.text_head_relu, dtype=dtype,
                                    rngs=rngs)

  @property
  def num_codes(self) -> int:
    """Ids the codes take: K, or 2K with codebooks="separate" (the prior's vocabulary)."""
    return self.quantizer.num_codes

  def features(self, images_BxHxWx3: jax.Array, tokens_BxL: jax.Array, *, train: bool,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Pre-quantization features z [B, N, D]: fused, or (fusion="none") as encoded."""
    zi_BxGxGxD = self.image_encoder(images_BxHxWx3)
    zi_BxIxD = zi_BxGxGxD.reshape(zi_BxGxGxD.shape[0], self.num_image, -1)
    zt_BxTxD = self.text_encoder(tokens_BxL)
    z_BxNxD = jnp.concatenate([zi_BxIxD, zt_BxTxD.astype(zi_BxIxD.dtype)], axis=1)
    if self.fusion is None:
      return z_BxNxD
    return self.fusion(z_BxNxD, train=train, rngs=rngs)

  def decode_vectors(self, zq_BxNxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Code vectors [B, N, D] -> (images [B, H, W, 3], text logits [B, L, V]), float32."""
    # Cast once (a no-op in float32): both mixers read the codes, and the sum of their input
    # gradients is then in the compute dtype too.
    zq_BxNxD = zq_BxNxD.astype(self.compute_dtype)
    image_in, text_in = zq_BxNxD, zq_BxNxD
    if self.own_decoder_inputs:
      image_in, text_in = zq_BxNxD[:, :self.num_image], zq_BxNxD[:, self.num_image:]
    zi_BxIxD = self.image_mixer(image_in)
    zi_BxGxGxD = zi_BxIxD.reshape(zi_BxIxD.shape[0], self.grid, self.grid, -1)
    images_BxHxWx3 = self.image_decoder(zi_BxGxGxD)
    logits_BxLxV = self.text_decoder(self.text_mixer(text_in))
    return images_BxHxWx3.astype(jnp.float32), logits_BxLxV.astype(jnp.float32)

  def __call__(self, images_BxHxWx3: jax.Array, tokens_BxL: jax.Array, *, train: bool,
               rngs: nnx.Rngs | None = None) -> StageOneOutput:
    """Encode, quantize, decode. train=True: dropout on and EMA codebook updates (needs rngs)."""
    z_BxNxD = self.features(images_BxHxWx3, tokens_BxL, train=train, rngs=rngs)
    q = self.quantizer(z_BxNxD, train=train, rngs=rngs)
    images, logits = self.decode_vectors(q.quantized)
    return StageOneOutput(images=images, text_logits=logits, codes=q.codes, quantizer=q)

  def encode(self, images_BxHxWx3: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """Joint codes [B, N] of a pair, in eval mode (no dropout, no codebook update)."""
    z_BxNxD = self.features(images_BxHxWx3, tokens_BxL, train=False)
    return self.quantizer(z_BxNxD, train=False).codes

  def decode(self, codes_BxN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Joint codes [B, N] -> (images [B, H, W, 3], text logits [B, L, V])."""
    return self.decode_vectors(self.quantizer.lookup(codes_BxN))


def count_params(model: nnx.Module) -> int:
  """Number of trainable (nnx.Param) scalars; EMA codebook state is not counted."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
