"""The stage-2 prior: cached decoding, causality, shapes, and that it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mxq_jax.models.prior import LayerCache, Prior, _rotate, grid_rotation, grow_cache
from conftest import integers

NUM_CODES = 13
SEQ_LEN = 9
BATCH = 3
# Text first: 3 text codes (not on the grid), then a 2x3 image grid in raster order.
GRID_ROWS = (-1, -1, -1, 0, 0, 0, 1, 1, 1)
GRID_COLS = (-1, -1, -1, 0, 1, 2, 0, 1, 2)


def make(dropout: float = 0.0, seed: int = 0, grid_rotary_dims: int = 0) -> Prior:
  return Prior(num_codes=NUM_CODES, seq_len=SEQ_LEN, num_layers=2, num_heads=2, dim=16,
               mlp_dim=32, dropout=dropout, grid_rotary_dims=grid_rotary_dims,
               grid_rows=GRID_ROWS, grid_cols=GRID_COLS, rngs=nnx.Rngs(params=seed))


def tokens(seed: int = 0, batch: int = BATCH) -> jax.Array:
  """BOS followed by SEQ_LEN random codes, [batch, SEQ_LEN + 1]."""
  codes = integers(seed, (batch, SEQ_LEN), NUM_CODES)
  return jnp.concatenate([jnp.full((batch, 1), NUM_CODES, codes.dtype), codes], axis=1)


@pytest.fixture(scope='module', params=[0, 8], ids=['absolute', 'grid_rotary'])
def model(request) -> Prior:
  # Dropout > 0 on purpose: train=False and decode_step must both ignore it.
  return make(dropout=0.1, grid_rotary_dims=request.param)


def _rotated_dot(rotation, q_K, k_K, query_position, key_position) -> float:
  """q . k after the model's rotation turned q at one input position and k at another."""
  turn = lambda x_K, cos, sin, p: _rotate(jnp.asarray(x_K)[None, None, None], cos[p:p + 1],
                                          sin[p:p + 1])[0, 0, 0]
  q = turn(q_K, rotation.q_cos, rotation.q_sin, query_position)
  k = turn(k_K, rotation.k_cos, rotation.k_sin, key_position)
  return float(q @ k)


def test_grid_rotation_makes_image_attention_depend_on_the_offset_only():
  rows, cols = (-1, 0, 0, 0, 1, 1, 1, 2, 2, 2), (-1, 0, 1, 2, 0, 1, 2, 0, 1, 2)  # text, 3x3.
  rotation = grid_rotation(rows, cols, rotary_dims=8)
  q_K, k_K = np.random.default_rng(0).normal(size=(2, 12))
  # Input position p predicts code p and holds code p - 1 (position 0: BOS).
  q_at = lambda row, col: [p for p in range(len(rows)) if (rows[p], cols[p]) == (row, col)][0]
  k_at = lambda row, col: q_at(row, col) + 1
  # A query for (1, 1) and a key holding (0, 1), one row above: the same score as the pair
  # (2, 2) / (1, 2), and as (1, 0) / (0, 0)...
  above = [_rotated_dot(rotation, q_K, k_K, q_at(r, c), k_at(r - 1, c))
           for r, c in [(1, 1), (2, 2), (1, 0), (2, 0)]]
  np.testing.assert_allclose(above, above[0], rtol=1e-5)
  # ...and other offsets give other scores (it is not blind to the place).
  assert abs(_rotated_dot(rotation, q_K, k_K, q_at(1, 1), k_at(0, 0)) - above[0]) > 1e-3
  # BOS's key and the text code's query are not turned at all.
  assert _rotated_dot(rotation, q_K, k_K, 0, 0) == pytest.approx(float(q_K @ k_K), rel=1e-5)
  # One row per input position (BOS + every code), rotary_dims / 2 angles in each.
  assert rotation.q_cos.shape == rotation.k_sin.shape == (len(rows) + 1, 4)


def test_grid_rotation_changes_the_model_but_not_its_parameters():
  plain, rotary = make(), make(grid_rotary_dims=8)
  shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
  assert shapes(plain) == shapes(rotary)  # checkpoints of either load into the other's shapes.
  tokens_BxT = tokens(5)
  assert np.abs(np.asarray(plain(tokens_BxT, train=False) - rotary(tokens_BxT, train=False))
                ).max() > 1e-5


def test_grid_rotary_dims_must_fit_the_head():
  with pytest.raises(ValueError, match='multiple of 4'):
    make(grid_rotary_dims=6)
  with pytest.raises(ValueError, match='head dim 8'):
    make(grid_rotary_dims=12)


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
  # Growing keeps every written slot in place: the first layer's keys and values (projections
  # of the tokens alone) are the full cache's to the bit. Later layers read attention over
  # fewer slots, whose sums may round differently on some CPUs: equal within fp32 rounding.
  np.testing.assert_array_equal(short[0].k, full[0].k[:, :, :SEQ_LEN])
  np.testing.assert_array_equal(short[0].v, full[0].v[:, :, :SEQ_LEN])
  np.testing.assert_allclose(short[-1].v, full[-1].v[:, :, :SEQ_LEN], rtol=1e-5, atol=1e-7)


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
