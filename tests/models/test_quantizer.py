"""The shared codebook: nearest code, straight-through, losses, statistics, EMA, init, restart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax.models import quantizer as quantizer_lib
from mxq_jax.models.quantizer import CodebookState, Quantizer
from conftest import normal

# Four 2-D codes far enough apart that hand-made inputs have an obvious nearest one.
CODEBOOK = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], np.float32)


def make(update="gradient", init="uniform", restart=False, decay=0.5, threshold=0.03,
         codebook=CODEBOOK):
  q = Quantizer(codebook.shape[0], codebook.shape[1], update=update, init=init, ema_decay=decay,
                dead_code_restart=restart, dead_code_threshold=threshold, rngs=nnx.Rngs(0))
  q.codebook[...] = jnp.asarray(codebook)
  if update == "ema":
    q.embed_sum[...] = jnp.asarray(codebook)  # Consistent with cluster_size = 1.
  return q


def test_nearest_code_on_hand_made_codebook():
  q = make()
  z = jnp.array([[[0.9, 0.1], [0.1, 0.2], [4.0, 4.0], [0.2, 0.8], [0.6, -0.1]]])
  out = q(z, train=False)
  np.testing.assert_array_equal(out.codes, [[1, 0, 3, 2, 1]])
  assert out.codes.dtype == jnp.int32
  np.testing.assert_allclose(q.lookup(out.codes), CODEBOOK[[[1, 0, 3, 2, 1]]])


def test_straight_through_gradient_is_identity():
  q = make()
  z = normal(0, (2, 5, 2))
  w = normal(1, (2, 5, 2))
  grad = jax.grad(lambda z: jnp.sum(q(z, train=False).quantized * w))(z)
  np.testing.assert_array_equal(grad, w)
  # And the forward value is the code vector itself.
  out = q(z, train=False)
  np.testing.assert_allclose(out.quantized, CODEBOOK[np.asarray(out.codes)], atol=1e-6)


def test_losses_on_hand_made_case():
  q = make()
  z = jnp.array([[[0.9, 0.1], [0.0, 1.3]]])  # Codes 1 and 2; squared errors .01+.01, .09.
  out = q(z, train=False)
  np.testing.assert_allclose(out.codebook_loss, (0.01 + 0.01 + 0.09) / 4, rtol=1e-5)
  np.testing.assert_allclose(out.commitment_loss, (0.01 + 0.01 + 0.09) / 4, rtol=1e-5)
  # Commitment pulls z only; the codebook loss reaches only the codebook (gradient mode).
  g_commit = jax.grad(lambda z: q(z, train=False).commitment_loss)(z)
  np.testing.assert_allclose(g_commit, 2 * (z - CODEBOOK[[[1, 2]]]) / 4, rtol=1e-5)
  g_codebook_z = jax.grad(lambda z: q(z, train=False).codebook_loss)(z)
  np.testing.assert_array_equal(g_codebook_z, 0.0)
  graphdef, params = nnx.split(q, nnx.Param)

  def codebook_loss(params):
    return nnx.merge(graphdef, params)(z, train=False).codebook_loss

  g_cb = np.asarray(jax.grad(codebook_loss)(params)["codebook"][...])
  np.testing.assert_allclose(g_cb[1], 2 * (CODEBOOK[1] - np.array([0.9, 0.1])) / 4, rtol=1e-5)
  np.testing.assert_array_equal(g_cb[[0, 3]], 0.0)  # Unused codes get no gradient.


def test_perplexity_and_usage_on_hand_made_case():
  q = make()
  z = jnp.array([[[0.0, 0.1], [0.1, 0.0], [1.0, 0.1], [0.9, 0.0]]])  # Codes 0, 0, 1, 1.
  out = q(z, train=False)
  np.testing.assert_allclose(out.perplexity, 2.0, rtol=1e-6)  # Two equally likely codes.
  np.testing.assert_allclose(out.usage, 0.5)  # 2 of 4 codes.
  out = q(jnp.array([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]]), train=False)
  np.testing.assert_allclose(out.perplexity, 4.0, rtol=1e-6)
  np.testing.assert_allclose(out.usage, 1.0)


def test_ema_update_moves_used_codes_toward_their_vectors():
  q = make(update="ema", decay=0.5)
  z = jnp.array([[[1.4, 0.4], [1.6, 0.6], [0.1, 0.0]]])  # Two on code 1 (mean 1.5, .5), one on 0.
  before = np.asarray(q.codebook[...])
  q(z, train=False)
  np.testing.assert_array_equal(q.codebook[...], before)  # Eval never writes.
  out = q(z, train=True)
  np.testing.assert_array_equal(out.codes, [[1, 1, 0]])
  after = np.asarray(q.codebook[...])
  # cluster_size_1 = .5 * 1 + .5 * 2 = 1.5; embed_sum_1 = .5 * (1, 0) + .5 * (3, 1) = (2, .5).
  np.testing.assert_allclose(after[1], [2.0 / 1.5, 0.5 / 1.5], rtol=1e-3)
  np.testing.assert_allclose(q.cluster_size[...], [1.0, 1.5, 0.5, 0.5])
  mean_1 = np.array([1.5, 0.5])
  assert np.linalg.norm(after[1] - mean_1) < np.linalg.norm(before[1] - mean_1)
  np.testing.assert_allclose(after[[2, 3]], before[[2, 3]], atol=1e-4)  # Unused: unchanged.
  assert not isinstance(q.codebook, nnx.Param)
  assert isinstance(q.codebook, CodebookState)
  assert not nnx.state(q, nnx.Param)  # Nothing for the optimizer in EMA mode.


def test_data_init_seeds_codebook_from_inputs():
  q = Quantizer(4, 3, update="ema", init="data", rngs=nnx.Rngs(0))
  z = normal(3, (2, 4, 3)) * 10  # 8 rows, far from U(-1/4, 1/4).
  q(z, train=False)
  assert not bool(q.initialized[...])  # Only a train call seeds.
  out = q(z, train=True, rngs=nnx.Rngs(1))
  assert bool(q.initialized[...])
  # This batch was quantized against the seeds, so every quantized vector is an input row,
  # and the 4 seeded rows quantize to themselves: 4 positions with zero error.
  rows = np.asarray(z).reshape(-1, 3)
  quantized = np.asarray(out.quantized).reshape(-1, 3)
  assert all(np.any(np.all(np.isclose(rows, v, atol=1e-5), axis=1)) for v in quantized)
  exact = np.all(np.isclose(rows, quantized, atol=1e-5), axis=1)
  assert exact.sum() == 4
  np.testing.assert_allclose(float(out.usage), 1.0)  # Each seed is nearest to itself.


def test_data_init_seeds_are_distinct_input_rows():
  q = Quantizer(4, 3, update="ema", init="data", ema_decay=0.999, rngs=nnx.Rngs(0))
  z = normal(3, (2, 4, 3)) * 10
  q(z, train=True, rngs=nnx.Rngs(1))
  # With decay .999 the EMA step barely moves the seeds: each is (close to) an input row.
  rows = np.asarray(z).reshape(-1, 3)
  codebook = np.asarray(q.codebook[...])
  nearest = np.argmin(((codebook[:, None] - rows[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_allclose(codebook, rows[nearest], atol=0.05)
  assert len(set(nearest.tolist())) == 4  # Drawn without replacement.
  # A second train call does not re-seed.
  first = codebook.copy()
  q(z + 100.0, train=True, rngs=nnx.Rngs(2))
  assert np.abs(np.asarray(q.codebook[...]) - first).max() < 1.0


def test_dead_code_restart_replaces_unused_codes():
  far = CODEBOOK.copy()
  far[3] = [100.0, 100.0]  # Never the nearest code.
  q = make(update="ema", restart=True, decay=0.5, threshold=0.6, codebook=far)
  z = jnp.array([[[0.1, 0.0], [1.1, 0.0], [0.0, 0.9], [0.9, 0.2]]])
  expected_size, expected_sum, expected_codebook = quantizer_lib.ema_update(
      jnp.ones(4), jnp.asarray(far), jnp.array([0, 1, 2, 1]), z.reshape(-1, 2), 0.5)
  q(z, train=True, rngs=nnx.Rngs(0))
  codebook = np.asarray(q.codebook[...])
  rows = np.asarray(z).reshape(-1, 2)
  assert np.any(np.all(np.isclose(rows, codebook[3]), axis=1))  # Re-seeded from the batch.
  assert float(q.cluster_size[...][3]) == 1.0
  np.testing.assert_allclose(codebook[:3], expected_codebook[:3], rtol=1e-5)  # Live: kept.
  np.testing.assert_allclose(q.cluster_size[...][:3], expected_size[:3])


def test_codes_in_range_and_jit():
  q = Quantizer(16, 8, update="ema", init="data", dead_code_restart=True, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(q)

  @jax.jit
  def step(state, z, key):
    q = nnx.merge(graphdef, state)
    out = q(z, train=True, rngs=nnx.Rngs(key))
    return out, nnx.state(q)

  z = normal(0, (4, 6, 8))
  out, state = step(state, z, jax.random.key(1))
  out, state = step(state, z, jax.random.key(2))
  assert out.codes.shape == (4, 6) and out.codes.dtype == jnp.int32
  assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 16
  assert 1.0 <= float(out.perplexity) <= 16.0 and 0.0 < float(out.usage) <= 1.0
  assert bool(state["initialized"][...])


def test_bad_options_raise():
  with pytest.raises(ValueError, match="need update='ema'"):
    Quantizer(4, 2, update="gradient", init="data", rngs=nnx.Rngs(0))
  q = Quantizer(4, 2, update="ema", init="data", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs `rngs`"):
    q(jnp.zeros((1, 2, 2)), train=True)


@pytest.mark.parametrize("codebooks", ["shared", "separate"])
def test_make_quantizer_follows_the_typed_config(codebooks):
  from mxq_jax.models.codebooks import ModalityQuantizers, QuantizerConfig, make_quantizer
  config = QuantizerConfig(codebook_size=8, codebooks=codebooks, update="ema", init="uniform",
                           ema_decay=0.9, dead_code_restart=True, dead_code_threshold=0.1,
                           l2_normalize=True)
  q = make_quantizer(config, 4, num_image=3, rngs=nnx.Rngs(0))
  if codebooks == "separate":
    assert isinstance(q, ModalityQuantizers) and q.num_codes == 16 and q.num_image == 3
    parts = [q.image, q.text]
  else:
    assert isinstance(q, Quantizer) and q.num_codes == 8
    parts = [q]
  for part in parts:
    assert (part.num_codes, part.dim, part.update, part.init, part.ema_decay,
            part.dead_code_restart, part.dead_code_threshold, part.l2_normalize) == (
                8, 4, "ema", "uniform", 0.9, True, 0.1, True)
