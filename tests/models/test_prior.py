"""The stage-2 prior: cached decoding, causality, shapes, and that it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mxq_jax.models.prior import LayerCache, Prior, grow_cache

NUM_CODES = 13
SEQ_LEN = 9
BATCH = 3


def make(dropout: float = 0.0, seed: int = 0) -> Prior:
  return Prior(num_codes=NUM_CODES, seq_len=SEQ_LEN, num_layers=2, num_heads=2, dim=16,
               mlp_dim=32, dropout=dropout, rngs=nnx.Rngs(params=seed))


def tokens(seed: int = 0, batch: int = BATCH) -> jax.Array:
  """BOS followed by SEQ_LEN random codes, [batch, SEQ_LEN + 1]."""
  codes = jax.random.randint(jax.random.key(seed), (batch, SEQ_LEN), 0, NUM_CODES)
  return jnp.concatenate([jnp.full((batch, 1), NUM_CODES, codes.dtype), codes], axis=1)


@pytest.fixture(scope='module')
def model() -> Prior:
  # Dropout > 0 on purpose: train=False and decode_step must both ignore it.
  return make(dropout=0.1)


def test_cached_decoding_equals_full_forward(model):
  tokens_BxT = tokens(1)
  graphdef, state = nnx.split(model)

  @jax.jit
  def decode_all(state, tokens_BxT):
    prior = nnx.merge(graphdef, state)

    def step(cache, position):  # position is traced: the real sampler's situation.
      logits_BxK, cache = prior.decode_step(tokens_BxT[:, position], position, cache)
      return cache, logits_BxK

    cache = prior.init_cache(tokens_BxT.shape[0], jnp.float32)
    cache, logits_TxBxK = jax.lax.scan(step, cache, jnp.arange(tokens_BxT.shape[1]))
    return jnp.swapaxes(logits_TxBxK, 0, 1), cache

  cached_BxTxK, cache = decode_all(state, tokens_BxT)
  full_BxTxK = model(tokens_BxT, train=False)
  assert cached_BxTxK.dtype == full_BxTxK.dtype == jnp.float32
  np.testing.assert_allclose(cached_BxTxK, full_BxTxK, atol=1e-5, rtol=1e-5)
  # The cache holds every position's keys, and they were written (not left at zero).
  assert len(cache) == 2 and isinstance(cache[0], LayerCache)
  assert cache[0].k.shape == (BATCH, 2, SEQ_LEN + 1, 8)
  assert np.all(np.abs(np.asarray(cache[-1].v)).sum(axis=(0, 1, 3)) > 0)


def test_decode_step_ignores_cache_slots_after_position(model):
  # Garbage in not-yet-written slots must not leak into the logits.
  tokens_BxT = tokens(2)
  cache = model.init_cache(BATCH, jnp.float32)
  dirty = jax.tree.map(lambda a: a + 7.0, cache)
  clean_logits, _ = model.decode_step(tokens_BxT[:, 0], jnp.int32(0), cache)
  dirty_logits, _ = model.decode_step(tokens_BxT[:, 0], jnp.int32(0), dirty)
  np.testing.assert_allclose(clean_logits, dirty_logits, atol=1e-6)


def test_a_short_cache_grown_slot_by_slot_gives_the_full_caches_logits(model):
  # The sampler starts from an empty cache and grows it as positions need slots.
  tokens_BxT = tokens(4)
  full = model.init_cache(BATCH, jnp.float32)
  short = model.init_cache(BATCH, jnp.float32, length=0)
  for position in range(SEQ_LEN):
    short = grow_cache(short, position + 1)
    full_logits, full = model.decode_step(tokens_BxT[:, position], jnp.int32(position), full)
    short_logits, short = model.decode_step(tokens_BxT[:, position], jnp.int32(position), short)
    np.testing.assert_allclose(short_logits, full_logits, atol=1e-6)
  assert short[0].k.shape == (BATCH, 2, SEQ_LEN, 8)
  np.testing.assert_array_equal(short[-1].v, full[-1].v[:, :, :SEQ_LEN])


def test_causality(model):
  tokens_BxT = tokens(3)
  t = 5
  changed = tokens_BxT.at[:, t].set((tokens_BxT[:, t] + 1) % NUM_CODES)
  before = model(tokens_BxT, train=False)
  after = model(changed, train=False)
  np.testing.assert_allclose(before[:, :t], after[:, :t], atol=1e-6)
  # ...and it does change the logits from position t on (the model is not blind to it).
  assert np.abs(np.asarray(before[:, t:] - after[:, t:])).max() > 1e-4


def test_shapes_and_head(model):
  tokens_BxT = tokens(4)
  assert model(tokens_BxT, train=False).shape == (BATCH, SEQ_LEN + 1, NUM_CODES)
  # Shorter prefixes work too (positions are sliced, not assumed full length).
  assert model(tokens_BxT[:, :4], train=False).shape == (BATCH, 4, NUM_CODES)
  # Vocabulary is codes + BOS; the head predicts codes only.
  assert model.token_embed.embedding.shape == (NUM_CODES + 1, 16)
  assert model.head.kernel.shape == (16, NUM_CODES)
  assert model.pos_PxD.shape == (SEQ_LEN + 1, 16)
  with pytest.raises(ValueError):
    model(jnp.zeros((1, SEQ_LEN + 2), jnp.int32), train=False)


def test_dropout_only_in_training(model):
  tokens_BxT = tokens(5)
  a = model(tokens_BxT, train=True, rngs=nnx.Rngs(dropout=0))
  b = model(tokens_BxT, train=True, rngs=nnx.Rngs(dropout=1))
  assert np.abs(np.asarray(a - b)).max() > 1e-4
  np.testing.assert_array_equal(model(tokens_BxT, train=False), model(tokens_BxT, train=False))


def test_adamw_lowers_next_token_loss():
  model = make(dropout=0.1, seed=1)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(3e-3, weight_decay=5e-4)
  opt_state = tx.init(params)
  tokens_BxT = tokens(6, batch=8)

  def loss_fn(params, rest, key, train):
    prior = nnx.merge(graphdef, params, rest)
    logits_BxTxK = prior(tokens_BxT[:, :-1], train=train, rngs=nnx.Rngs(dropout=key))
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxK, tokens_BxT[:, 1:]).mean()

  @jax.jit
  def train_step(params, opt_state, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, key, True)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  eval_loss = jax.jit(lambda params: loss_fn(params, rest, jax.random.key(0), False))
  initial = float(eval_loss(params))
  assert abs(initial - np.log(NUM_CODES)) < 0.2  # Small init: near-uniform predictions.
  for i in range(40):
    params, opt_state, _ = train_step(params, opt_state, jax.random.key(i))
  final = float(eval_loss(params))
  assert final < 0.6 * initial, (initial, final)
