"""Runs a jitted function over many inputs in batches of one size, so that it compiles once."""

import numpy as np


def batched(fn, inputs_N: np.ndarray, batch_size: int) -> np.ndarray:
  """fn over consecutive batches of inputs, concatenated as float64 [N, ...].

  The last batch is padded with copies of its first row to `batch_size` and its padding cut from
  the output: every call then has the same shape, and rows never influence one another.
  """
  outputs = []
  for start in range(0, len(inputs_N), batch_size):
    batch = np.asarray(inputs_N[start:start + batch_size])
    real = len(batch)
    if real < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - real, axis=0)])
    outputs.append(np.asarray(fn(batch), np.float64)[:real])
  return np.concatenate(outputs)
