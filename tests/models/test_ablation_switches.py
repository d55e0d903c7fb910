"""The ablation switches of the stage-1 model (config.vqvae.fusion, codebooks, decoder_inputs)."""

import jax
import numpy as np
import pytest
from flax import nnx

from mxq_jax import ablation_lib as ablations, config_lib, sharding
from mxq_jax.models.mxq_vae import MXQVAE
from mxq_jax.training import checkpoints, codes as codes_lib, stage1, stage2, trainer
from conftest import integers, load_config, normal

B = 4


def variant(name: str):
  """configs/synthetic.py:smoke (N = 4 image + 8 text positions, K = 32) as the variant."""
  return ablations.variant_config(load_config("synthetic", "smoke"),
                                  ablations.variants()[name], seed=0)


def build(config):
  return MXQVAE(config_lib.mxq_vae_config(config), rngs=nnx.Rngs(0))


def pair(config, seed=0):
  size, length = config.data.image_size, config.data.text_length
  images = normal(seed, (B, size, size, 3))
  tokens = integers(seed + 1, (B, length), config.data.vocab_size)
  return images, tokens


def split_positions(config):
  num_image = config_lib.image_grid_size(config) ** 2
  return num_image, config_lib.num_joint_codes(config) - num_image


@pytest.mark.parametrize("name", list(ablations.variants()))
def test_forward_shapes(name):
  config = variant(name)
  images, tokens = pair(config)
  out = jax.eval_shape(lambda: build(config)(
      images, tokens, train=True, rngs=nnx.Rngs(1)))
  n, d = config_lib.num_joint_codes(config), config.vqvae.embed_dim
  assert out.images.shape == images.shape
  assert out.text_logits.shape == (*tokens.shape, config.data.vocab_size)
  assert out.codes.shape == (B, n) and out.quantizer.quantized.shape == (B, n, d)


@pytest.mark.parametrize("name", ["no_masking", "separate_no_fusion", "own_decoders"])
def test_variant_trains(name):
  """A few train steps on a fixed batch lower the loss (mxq_vae: tests/training/test_trainer.py)."""
  config = variant(name)
  # num_steps sets the cosine schedule: the lr stays near its peak for the 30 steps run.
  config.vqvae.optim.update(learning_rate=3e-3, warmup_steps=1, num_steps=1_000)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  task = stage1.make_task(config)
  _, shardings = trainer.abstract_state(task, mesh)
  state = trainer.init_state(task, 0, shardings)
  step = trainer.make_train_step(task, mesh, shardings)
  learning_rate = trainer.make_learning_rate(task, mesh)
  batch = jax.tree.map(lambda x: np.tile(x, (8,) + (1,) * (x.ndim - 1)),
                       stage1.random_batch(config, 2))
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch, jax.random.key(0), learning_rate(state.step))
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:3]), losses
  assert 0.0 < float(metrics["codebook_usage"]) <= 1.0


def perturbed(codes, start, stop, num_codes):
  """codes with positions [start, stop) moved to other ids of the vocabulary."""
  moved = np.array(codes)
  moved[:, start:stop] = (moved[:, start:stop] + 7) % num_codes
  return moved


@pytest.mark.parametrize("name,cross", [("own_decoders", False), ("mxq_vae", True)])
def test_own_decoders_read_only_their_modality(name, cross):
  config = variant(name)
  model = build(config)
  num_image, num_text = split_positions(config)
  k = model.num_codes
  codes = integers(1, (B, num_image + num_text), k)
  decode = nnx.jit(lambda model, codes: model.decode(codes))
  images, logits = decode(model, codes)
  images_t, logits_t = decode(model, perturbed(codes, num_image, num_image + num_text, k))
  images_i, logits_i = decode(model, perturbed(codes, 0, num_image, k))
  assert not np.allclose(logits_t, logits) and not np.allclose(images_i, images)
  if cross:  # the joint decoders do read the other modality's codes.
    assert not np.allclose(images_t, images) and not np.allclose(logits_i, logits)
  else:
    np.testing.assert_array_equal(images_t, images)
    np.testing.assert_array_equal(logits_i, logits)


@pytest.mark.parametrize("name,fused", [("separate_no_fusion", False), ("mxq_vae", True)])
def test_without_fusion_each_modality_is_encoded_alone(name, fused):
  config = variant(name)
  model = build(config)
  num_image, _ = split_positions(config)
  images, tokens = pair(config, 0)
  other_images, other_tokens = pair(config, 1)
  features_fn = nnx.jit(lambda model, i, t: model.features(i, t, train=False))
  features = lambda i, t: np.asarray(features_fn(model, i, t))
  z = features(images, tokens)
  z_other_text = features(images, other_tokens)
  z_other_image = features(other_images, tokens)
  assert not np.allclose(z_other_text[:, num_image:], z[:, num_image:])
  if fused:
    assert not np.allclose(z_other_text[:, :num_image], z[:, :num_image])
    assert not np.allclose(z_other_image[:, num_image:], z[:, num_image:])
  else:
    assert model.fusion is None and "fusion" not in nnx.state(model)
    np.testing.assert_array_equal(z_other_text[:, :num_image], z[:, :num_image])
    np.testing.assert_array_equal(z_other_image[:, num_image:], z[:, num_image:])


def test_separate_codebooks_give_each_modality_its_own_id_range():
  config = variant("separate_no_fusion")
  k = config.vqvae.codebook_size
  model = build(config)
  assert model.num_codes == config_lib.code_vocabulary_size(config) == 2 * k
  num_image, _ = split_positions(config)
  images, tokens = pair(config)
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.quantizer)))

  @nnx.jit
  def run(model):
    trained = model(images, tokens, train=True, rngs=nnx.Rngs(1))  # seeds both codebooks.
    z = model.features(images, tokens, train=False)
    out = model(images, tokens, train=False)
    return trained, z, out, model.decode(out.codes)

  trained, z, out, (decoded_images, decoded_logits) = run(model)
  codes = np.asarray(out.codes)
  assert 0 <= codes[:, :num_image].min() and codes[:, :num_image].max() < k
  assert k <= codes[:, num_image:].min() and codes[:, num_image:].max() < 2 * k
  # Each codebook has its own EMA state, moved by its own modality's positions.
  after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.quantizer)))
  for modality in ("image", "text"):
    assert not np.allclose(after[modality]["codebook"], before[modality]["codebook"])
  # One id table: decoding the codes is the forward pass, and the losses are over all N.
  np.testing.assert_allclose(decoded_images, out.images, atol=1e-5)
  np.testing.assert_allclose(decoded_logits, out.text_logits, atol=1e-5)
  vectors = np.asarray(model.quantizer.lookup(out.codes))
  np.testing.assert_allclose(out.quantizer.codebook_loss, np.mean((vectors - z) ** 2), rtol=1e-5)
  # Statistics over the 2K vocabulary.
  np.testing.assert_allclose(out.quantizer.usage, len(np.unique(codes)) / (2 * k))
  assert 1.0 <= float(trained.quantizer.perplexity) <= len(np.unique(trained.codes))


def test_vocabulary_reaches_the_prior_and_the_stored_codes():
  shared, separate = variant("mxq_vae"), variant("separate_no_fusion")
  k = shared.vqvae.codebook_size
  assert config_lib.code_vocabulary_size(shared) == k
  prior = stage2.build_model(separate, nnx.Rngs(0))
  assert prior.num_codes == 2 * k and prior.bos == 2 * k
  assert stage2.model_signature(separate, 6)["num_codes"] == 2 * k
  assert stage2.model_signature(shared, 6)["num_codes"] == k
  assert codes_lib.storage_dtype(2 * k) == np.uint16


def test_variant_signatures_refuse_each_others_checkpoints():
  """Models of another shape are refused; no_masking trains the same model as mxq_vae."""
  signatures = {name: stage1.model_signature(variant(name)) for name in ablations.variants()}
  assert signatures["no_masking"] == signatures["mxq_vae"]
  for name in ("separate_no_fusion", "own_decoders"):
    with pytest.raises(config_lib.ConfigError, match="different model"):
      checkpoints.check_compatible({"signature": signatures["mxq_vae"]}, signatures[name],
                                     "dir")
  with pytest.raises(config_lib.ConfigError, match="decoder_inputs"):
    checkpoints.check_compatible({"signature": signatures["own_decoders"]},
                                   signatures["separate_no_fusion"], "dir")


def test_checkpoints_older_than_the_switches_still_match_the_default_model():
  """A signature without the later fields is the design's default model, nested ones too."""
  current = stage1.model_signature(variant("mxq_vae"))
  older = {k: v for k, v in current.items() if k not in checkpoints.LATER_FIELDS}
  checkpoints.check_compatible({"signature": older}, current, "dir")
  checkpoints.check_compatible({"signature": current}, older, "dir")
  checkpoints.check_compatible({"signature": {"stage1": older}}, {"stage1": current}, "dir")
  with pytest.raises(config_lib.ConfigError, match="fusion"):
    checkpoints.check_compatible({"signature": older},
                                   stage1.model_signature(variant("separate_no_fusion")), "dir")
