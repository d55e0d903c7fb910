"""The stage-1 model on a tiny config: a jitted functional train step, dropout, encode/decode."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mxq_jax import config_lib
from mxq_jax.models.mxq_vae import MXQVAE, count_params
from conftest import REPO, integers, normal

common = config_lib.load_beside(REPO / "configs" / "common.py", "common")


def tiny_config(update="ema"):
  config = config_lib.base_config()
  config_lib.apply_table(config, common.SMOKE_SIZES)  # 16 px, 24 tokens (k = 5): N = 4 + 8 = 12.
  config.vqvae.dropout = 0.1
  if update == "gradient":
    config.vqvae.update(codebook_update="gradient", codebook_init="uniform",
                        dead_code_restart=False)
  return config


def build(config):
  return MXQVAE(config_lib.mxq_vae_config(config), rngs=nnx.Rngs(0))


def batch(config, seed=0):
  size, length = config.data.image_size, config.data.text_length
  images = normal(seed, (4, size, size, 3))
  tokens = integers(seed + 1, (4, length), config.data.vocab_size)
  return images, tokens


def make_train_step(graphdef, beta):
  """What the trainer does: merge, call, split; value_and_grad over the nnx.Param state only.

  `copy=True` matters: without it merge reuses the Variables of `rest`, which belong to the
  jit trace, and the EMA write inside the grad trace raises flax's TraceContextError.
  """

  @jax.jit
  def step(params, rest, images, tokens, key):

    def loss_fn(params):
      model = nnx.merge(graphdef, params, rest, copy=True)
      out = model(images, tokens, train=True, rngs=nnx.Rngs(key))
      q = out.quantizer
      loss = (jnp.mean((out.images - images) ** 2)
              + optax.softmax_cross_entropy_with_integer_labels(out.text_logits, tokens).mean()
              + q.codebook_loss + beta * q.commitment_loss)
      _, _, new_rest = nnx.split(model, nnx.Param, ...)
      return loss, (new_rest, out)

    (loss, (new_rest, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, new_rest, out

  return step


@pytest.mark.parametrize("update", ["ema", "gradient"])
def test_jitted_train_step_value_and_grad(update):
  config = tiny_config(update)
  model = build(config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  step = make_train_step(graphdef, config.vqvae.beta)
  images, tokens = batch(config)

  loss, grads, new_rest, out = step(params, rest, images, tokens, jax.random.key(1))
  grads = jax.tree.map(np.asarray, grads)  # Checked in numpy: no per-leaf XLA compiles.
  assert np.isfinite(float(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Every trainable part gets a gradient (the encoders through the straight-through estimator).
  for part in ("image_encoder", "text_encoder", "fusion", "image_mixer", "text_mixer",
               "image_decoder", "text_decoder"):
    assert sum(np.abs(g).sum() for g in jax.tree.leaves(grads[part])) > 0, part
  assert out.codes.shape == (4, config_lib.num_joint_codes(config))

  if update == "ema":
    assert "quantizer" not in params  # The optimizer never sees the EMA codebook.
    assert not bool(rest["quantizer"]["initialized"][...])
    assert bool(new_rest["quantizer"]["initialized"][...])  # Seeded from this batch.
    assert not np.allclose(new_rest["quantizer"]["codebook"][...],
                           rest["quantizer"]["codebook"][...])
    loss2, _, rest2, _ = step(params, new_rest, images, tokens, jax.random.key(2))
    assert np.isfinite(float(loss2))
    assert not np.allclose(rest2["quantizer"]["cluster_size"][...],
                           new_rest["quantizer"]["cluster_size"][...])
  else:
    assert np.abs(grads["quantizer"]["codebook"][...]).sum() > 0
  assert count_params(model) == sum(x.size for x in jax.tree.leaves(params))


def test_dropout_uses_the_default_stream_of_call_time_rngs():
  config = tiny_config("gradient")  # No codebook writes: every call starts from one state.
  model = build(config)
  images, tokens = batch(config)
  features = nnx.jit(lambda m, key, train: m.features(images, tokens, train=train,
                                                      rngs=nnx.Rngs(key)), static_argnums=2)
  run = lambda seed: np.asarray(features(model, jax.random.key(seed), True))
  np.testing.assert_array_equal(run(1), run(1))  # Same key, same dropout masks.
  assert not np.allclose(run(1), run(2))  # nnx.Rngs(key)'s default stream drives dropout.
  eval_z = np.asarray(features(model, jax.random.key(1), False))
  assert not np.allclose(run(1), eval_z)
  np.testing.assert_array_equal(eval_z, features(model, jax.random.key(2), False))


def test_encode_decode_match_the_forward_pass():
  config = tiny_config("ema")
  model = build(config)
  images, tokens = batch(config)

  @nnx.jit
  def run(model):
    model(images, tokens, train=True, rngs=nnx.Rngs(1))  # Seeds the codebook from data.
    out = model(images, tokens, train=False)
    codes = model.encode(images, tokens)
    return out, codes, model.decode(codes)

  out, codes, (decoded_images, decoded_logits) = run(model)
  assert bool(model.quantizer.initialized[...])  # nnx.jit carried the state write back.
  np.testing.assert_array_equal(codes, out.codes)
  np.testing.assert_allclose(decoded_images, out.images, atol=1e-5)
  np.testing.assert_allclose(decoded_logits, out.text_logits, atol=1e-5)



@pytest.mark.parametrize("head_relu", [True, False])
def test_the_text_heads_relu_is_the_switch(head_relu):
  """vqvae.text_head_relu=False is the reference's text head: two linear 1x1 convs in a row."""
  config = tiny_config()
  config.vqvae.text_head_relu = head_relu
  decoder = build(config).text_decoder
  z = normal(0, (2, 8, config.vqvae.embed_dim))
  hidden = z
  for conv in decoder.convs:
    hidden = jax.nn.relu(conv(hidden))
  pre_activation = decoder.conv_embed(hidden)
  assert float(jnp.min(pre_activation)) < 0  # so the ReLU would change something.
  head_input = jax.nn.relu(pre_activation) if head_relu else pre_activation
  np.testing.assert_allclose(decoder(z), decoder.conv_logits(head_input), rtol=1e-6, atol=1e-6)

def test_routing_kernels_pass_each_modality_through():
  from mxq_jax.models.mxq_vae import routing_kernels
  rng = np.random.default_rng(0)
  x_NxD = rng.normal(size=(7, 5)).astype(np.float32)  # 4 image positions, then 3 text ones.
  (image_NxM,) = routing_kernels((7, 4), first=0)
  np.testing.assert_allclose(image_NxM.T @ x_NxD, x_NxD[:4])
  first_NxH, second_HxM = routing_kernels((7, 6, 3), first=4)
  hidden_HxD = np.maximum(first_NxH.T @ x_NxD, 0.0)  # the ReLU between the two layers.
  np.testing.assert_allclose(second_HxM.T @ hidden_HxD, x_NxD[4:], atol=1e-6)
  with pytest.raises(ValueError, match="text_mix_hidden >= 2 x 3"):
    routing_kernels((7, 5, 3), first=4)


def test_models_import_nothing_else_of_the_package():
  """mxq_jax/models/ takes typed configs: of the package it imports only its own modules."""
  import ast
  import pathlib
  from mxq_jax.models import mxq_vae
  for path in sorted(pathlib.Path(mxq_vae.__file__).parent.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [f"{node.module}.{alias.name}" for alias in node.names]
      else:
        continue
      for name in names:
        assert not name.startswith("mxq_jax.") or name.startswith("mxq_jax.models."), (
            path.name, name)
