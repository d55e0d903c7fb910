"""A jitted function over many host inputs in batches of one shape, so that it compiles once."""

from collections.abc import Callable

import jax
import numpy as np


def map_in_fixed_batches(fn: Callable, *arrays_N: np.ndarray, batch_size: int):
  """fn over consecutive chunks of `batch_size` rows of `arrays_N`; the result on the host.

  `fn(*chunks)` returns a pytree of arrays with the batch first; the result is that pytree over
  all N rows. The last chunk is padded to `batch_size` with copies of its first row (real
  inputs, so no function sees an input it could not meet, like an all-zero image) and its
  padding is cut from the output: rows never influence one another.
  """
  n = len(arrays_N[0])
  outputs = []
  for start in range(0, n, batch_size):
    chunks = [np.asarray(a[start:start + batch_size]) for a in arrays_N]
    real = len(chunks[0])
    padded = [np.concatenate([c, np.repeat(c[:1], batch_size - real, axis=0)])
              if real < batch_size else c for c in chunks]
    outputs.append(jax.tree.map(lambda x: np.asarray(x)[:real], jax.device_get(fn(*padded))))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
