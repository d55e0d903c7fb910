"""TensorFlow as the project uses it: on the host only (tf.data, TFDS, clu's TensorBoard
writers), and imported only by the work that needs it (`sample` never imports it: 5-7 s of
start-up saved).

JAX owns the accelerators. Importing this module hides GPUs and TPUs from TensorFlow, which
initializes its devices (a build with GPU support takes most of the GPU's memory) at its first
op, not at import: every project module that runs TensorFlow, or TFDS or clu's writers, imports
it through here first (`from mxq_jax.host_tensorflow import tf`).
"""

import tensorflow as tf


def _hide_accelerators() -> None:
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:  # TF already initialized its devices: too late to change, harmless.
      pass


_hide_accelerators()
