"""map_in_fixed_batches: one shape for every call, outputs trimmed, padding from real rows."""

import numpy as np

from mxq_jax.evaluation import batching


def test_map_in_fixed_batches_pads_to_one_shape_and_trims():
  seen = []

  def fn(a, b):
    seen.append(np.array(a))
    return {"sum": a + b[:, 0]}, a * 2

  a, b = np.arange(1, 11), np.arange(20).reshape(10, 2)
  out, doubled = batching.map_in_fixed_batches(fn, a, b, batch_size=4)
  np.testing.assert_array_equal(out["sum"], a + b[:, 0])
  np.testing.assert_array_equal(doubled, a * 2)
  assert [x.shape for x in seen] == [(4,)] * 3  # the last chunk of 2 was padded to 4.
  # The padding repeats the chunk's first row (a real input), never zeros.
  np.testing.assert_array_equal(seen[-1], [9, 10, 9, 9])


def test_a_batch_larger_than_the_inputs_is_one_padded_call():
  calls = []
  out = batching.map_in_fixed_batches(lambda x: calls.append(x.shape) or x + 1.0,
                                      np.ones((3, 2), np.float32), batch_size=8)
  assert calls == [(8, 2)] and out.shape == (3, 2) and out.dtype == np.float32
  np.testing.assert_array_equal(out, 2.0)
