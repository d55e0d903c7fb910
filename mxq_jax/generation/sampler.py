"""Generation: ancestral sampling of joint codes from the prior, decoded to pixels and tokens.

`make_sampler` compiles ONE program from (prior variables, stage-1 variables, key, top_p,
temperature, image_temperature) to codes, uint8 images and token ids: `lax.scan`s over the N
code positions with an explicit KV cache, then the codebook look-up and both cross decoders.
The batch is sharded over the mesh's batch axes; top-k and the batch size fix shapes (static),
everything else is traced, so a new key or a new top_p / temperature reuses the compiled
program. The image
codes may take their own temperature: a pair's content is mostly decided by its caption codes
(text first), and a colder image keeps the picture faithful to them.

`generate_codes_uncached` decodes without a cache (a full forward over the whole prefix for
every new code); it is the bench's baseline and the cache's oracle. (The authors' sampler, HF
`generate`, keeps a KV cache too; `shared/anchors/authors_pytorch/` measures it.)
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mxq_jax import config_lib, sharding
from mxq_jax.data import normalization
from mxq_jax.generation import filters
from mxq_jax.training import stage1, stage2, trainer as trainer_lib
from mxq_jax.models import mxq_vae, prior as prior_lib

Variables = tuple[nnx.State, nnx.State]  # (params, model_state) of a model.


def variables_of(state: trainer_lib.TrainState) -> Variables:
  """What a trained model needs for inference: no optimizer state."""
  return state.params, state.model_state


def _position_key(key: jax.Array, position: jax.Array) -> jax.Array:
  # One key per position, the same in cached and uncached decoding: equal logits, equal codes.
  return jax.random.fold_in(key, position)


def _temperature_at(temperature, seq_len: int, position: jax.Array) -> jax.Array:
  """A scalar temperature, or position's entry of a per-position one [N]."""
  return jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (seq_len,))[position]


def generate_codes(prior: prior_lib.Prior, key: jax.Array, batch_size: int, *, top_k: int,
                   top_p, temperature, constrain: Callable = lambda x: x,
                   unroll: bool = False, positions_per_scan: int = 16) -> jax.Array:
  """int32 [B, N]: codes sampled one position at a time, each step reading the KV cache.

  One `lax.scan` per `positions_per_scan` positions, whose cache holds only the slots those
  positions can read: attention then does not stream the whole [B, H, N + 1, head_dim] cache from
  memory at every early position (at the reference sizes on a CPU, sampling ~10% faster). The
  codes are those of one scan over a full cache (tests/generation/test_sampler.py); on some CPUs
  attention over fewer slots rounds differently in the last fp32 bit, which could move a draw
  that lies on a boundary between two codes.
  `temperature`: a scalar, or f32 [N], one per position of the prior's order.
  `constrain` places the batch-major carry on the mesh (a sharding constraint) or is identity.
  `unroll` writes out every position (for XLA's cost analysis, which counts a loop body once).
  """
  if positions_per_scan < 1:
    raise ValueError(f"positions_per_scan must be >= 1, got {positions_per_scan}.")
  token_B = constrain(jnp.full((batch_size,), prior.bos, jnp.int32))
  cache = prior.init_cache(batch_size, length=0)

  def step(carry, position):
    token_B, cache = carry
    logits_BxK, cache = prior.decode_step(token_B, position, cache)
    code_B = filters.sample_codes(
        _position_key(key, position), logits_BxK, top_k=top_k, top_p=top_p,
        temperature=_temperature_at(temperature, prior.seq_len, position))
    return (code_B, cache), code_B

  codes = []
  for start in range(0, prior.seq_len, positions_per_scan):
    stop = min(start + positions_per_scan, prior.seq_len)
    cache = jax.tree.map(constrain, prior_lib.grow_cache(cache, stop))  # Slots 0..stop-1.
    (token_B, cache), codes_SxB = jax.lax.scan(step, (token_B, cache), jnp.arange(start, stop),
                                               unroll=unroll)
    codes.append(codes_SxB)
  return jnp.concatenate(codes).T


def generate_codes_uncached(prior: prior_lib.Prior, key: jax.Array, batch_size: int, *,
                            top_k: int, top_p, temperature,
                            constrain: Callable = lambda x: x, unroll: bool = False) -> jax.Array:
  """int32 [B, N] like `generate_codes`, recomputing the whole prefix for every code."""
  n = prior.seq_len
  tokens_BxT = constrain(jnp.full((batch_size, n + 1), prior.bos, jnp.int32))

  def step(position, tokens_BxT):
    # Positions after `position` hold BOS placeholders; causal attention never reads them.
    logits_BxK = prior(tokens_BxT[:, :n], train=False)[:, position]
    code_B = filters.sample_codes(_position_key(key, position), logits_BxK, top_k=top_k,
                                   top_p=top_p, temperature=_temperature_at(temperature, n,
                                                                             position))
    return tokens_BxT.at[:, position + 1].set(code_B)

  return jax.lax.fori_loop(0, n, step, tokens_BxT, unroll=unroll)[:, 1:]


def decode_pairs(vae: mxq_vae.MXQVAE, codes_BxN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Codes -> (uint8 images [B, H, W, 3], token ids [B, L]) through both cross decoders."""
  images_BxHxWx3, logits_BxLxV = vae.decode(codes_BxN)
  pixels = jnp.round(normalization.denormalize_images(images_BxHxWx3) * 255.0)
  return pixels.astype(jnp.uint8), jnp.argmax(logits_BxLxV, axis=-1).astype(jnp.int32)


def make_sampler(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
                 batch_size: int, top_k: int, cached: bool = True, unroll: bool = False):
  """Jitted (prior vars, stage-1 vars, key, top_p, temperature[, image_temperature]) ->
  {'codes', 'images', 'tokens'}; image_temperature (default: temperature) for the image codes.

  The graph definitions come from the config; the variables are the restored states'
  (`variables_of`). Outputs are sharded over the batch. `cached=False`: the uncached
  baseline; `unroll`: for cost analysis only.
  """
  config_lib.check_divisible_batch(batch_size, mesh.devices.size, "batch_size")
  prior_graphdef = stage2.make_task(config, stage1_step=0).graphdef
  vae_graphdef = stage1.make_task(config).graphdef
  batch_sharding = sharding.batch_sharding(mesh)
  constrain = lambda x: jax.lax.with_sharding_constraint(x, batch_sharding)
  generate = generate_codes if cached else generate_codes_uncached
  # The prior generates in its own order; the decoders read stage-1 order (image, then text).
  to_stage1_order = np.argsort(config_lib.prior_code_order(config))
  # Which of the prior's positions hold image codes (stage-1 positions [0, g*g)).
  is_image_N = config_lib.prior_code_order(config) < config_lib.image_grid_size(config) ** 2

  def sample(prior_vars: Variables, vae_vars: Variables, key: jax.Array, top_p, temperature,
             image_temperature=None):
    prior = nnx.merge(prior_graphdef, *prior_vars)
    if image_temperature is not None:
      temperature = jnp.where(is_image_N, image_temperature, temperature)
    codes_BxN = generate(prior, key, batch_size, top_k=top_k, top_p=top_p,
                         temperature=temperature, constrain=constrain,
                         unroll=unroll)[:, to_stage1_order]
    images, tokens = decode_pairs(nnx.merge(vae_graphdef, *vae_vars), codes_BxN)
    return {"codes": codes_BxN, "images": images, "tokens": tokens}

  return jax.jit(sample, out_shardings=batch_sharding)
