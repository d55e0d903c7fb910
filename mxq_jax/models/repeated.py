"""Repeated blocks (residual blocks, fusion layers, prior layers), applied in turn.

Unrolled, XLA compiles every block of a stack separately: the `:paper` and photo-size programs
then take minutes to compile for a TPU slice. With `scan=True` the blocks' states are stacked
at call time and `lax.scan` runs one block's program over them, so each stack compiles once
(maxtext's `scan_layers`). The blocks stay separate modules with their own parameters:
checkpoints, bundles and the sampler's per-layer KV cache are the same either way.

The same arithmetic in both forms; what differs with `scan=True` is the dropout: each block draws
from its own key, split from one draw of `rngs.dropout()`, instead of drawing in turn.
"""

from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

Block = TypeVar("Block", bound=nnx.Module)


def apply(blocks: Sequence[Block], x: jax.Array,
          call: Callable[[Block, jax.Array, nnx.Rngs | None], jax.Array], *, scan: bool,
          rngs: nnx.Rngs | None = None) -> jax.Array:
  """x through `call(block, x, rngs)` for each block in order; blocks of one structure."""
  if not scan or len(blocks) < 2:
    for block in blocks:
      x = call(block, x, rngs)
    return x
  graphdef, _ = nnx.split(blocks[0])
  states = [nnx.split(block)[1] for block in blocks]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  keys = None if rngs is None else jax.random.split(rngs.dropout(), len(blocks))

  def body(x, state_and_key):
    state, key = state_and_key
    block_rngs = None if key is None else nnx.Rngs(dropout=key)
    return call(nnx.merge(graphdef, state), x, block_rngs), None

  x, _ = jax.lax.scan(body, x, (stacked, keys))
  return x
