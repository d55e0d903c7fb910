"""Repeated blocks compiled once (models/repeated.py): with scan_layers the residual stack, the
fusion layers and the prior's layers compute what they compute unrolled, from the same
parameters, and the compiled step holds each stack's block once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax.models import fusion, image_codec, prior as prior_lib
from conftest import integers, normal

LAYERS = 2


def _fusion(scan, dropout=0.0):
  return fusion.FusionEncoder(16, LAYERS, 2, 32, dropout, num_image=4, num_text=3,
                              position_embeddings=True, scan=scan, rngs=nnx.Rngs(0))


def _residual(scan, dropout=None):
  return image_codec.ResidualStack(8, LAYERS, scan=scan, rngs=nnx.Rngs(0))


def _prior(scan, dropout=0.0):
  return prior_lib.Prior(num_codes=11, seq_len=7, num_layers=LAYERS, num_heads=2, dim=16,
                         mlp_dim=32, dropout=dropout, scan_layers=scan, rngs=nnx.Rngs(0))


STACKS = {  # (build, input, forward)
    "fusion": (_fusion, normal(1, (2, 7, 16)),
               lambda m, x, **kw: m(x, **kw)),
    "residual": (_residual, normal(1, (2, 4, 4, 8)), lambda m, x, **kw: m(x)),
    "prior": (_prior, integers(1, (2, 8), 12),
              lambda m, x, **kw: m(x, **kw)),
}


def _loss(model, x, forward):
  return jnp.sum(forward(model, x, train=False) ** 2)


@pytest.mark.parametrize("name", STACKS)
def test_a_scanned_stack_computes_the_unrolled_one(name):
  build, x, forward = STACKS[name]
  unrolled, scanned = build(scan=False), build(scan=True)
  # The same parameters, by path: checkpoints and bundles load either way.
  state_unrolled, state_scanned = nnx.state(unrolled), nnx.state(scanned)
  assert jax.tree.structure(state_unrolled) == jax.tree.structure(state_scanned)
  for a, b in zip(jax.tree.leaves(state_unrolled), jax.tree.leaves(state_scanned)):
    np.testing.assert_array_equal(a, b)
  grad = lambda m: nnx.jit(nnx.value_and_grad(_loss), static_argnums=2)(m, x, forward)
  (loss_u, grads_u), (loss_s, grads_s) = grad(unrolled), grad(scanned)
  np.testing.assert_allclose(loss_s, loss_u, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_u), jax.tree.leaves(grads_s)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", STACKS)
def test_the_scanned_program_holds_one_block(name):
  build, x, forward = STACKS[name]
  program = lambda m: nnx.jit(lambda m, x: forward(m, x, train=False)).lower(m, x).as_text()
  unrolled, scanned = program(build(scan=False)), program(build(scan=True))
  # Every matmul and convolution of a block appears LAYERS times unrolled, once scanned, in
  # the loop's body; the rest appears in both alike.
  heavy_ops = lambda text: text.count("dot_general") + text.count("stablehlo.convolution")
  per_block = (heavy_ops(unrolled) - heavy_ops(scanned)) / (LAYERS - 1)
  assert per_block >= 2 and per_block == int(per_block)
  assert "stablehlo.while" in scanned and "stablehlo.while" not in unrolled


@pytest.mark.parametrize("name", ["fusion", "prior"])
def test_scanned_dropout_draws_a_key_per_layer(name):
  build, x, forward = STACKS[name]
  model = build(scan=True, dropout=0.5)
  run = lambda seed: forward(model, x, train=True, rngs=nnx.Rngs(dropout=seed))
  np.testing.assert_array_equal(run(0), run(0))  # deterministic in its key,
  assert not np.allclose(run(0), run(1))  # and the key matters.
  assert not np.allclose(run(0), forward(model, x, train=False))  # dropout is on.
