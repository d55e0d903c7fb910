"""Pixel normalization (ImageNet mean/std, as the reference), free of TensorFlow imports.

The model, its losses and the benchmark import this; only the input pipeline needs TF.
"""

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_images(images_uint8):
  """uint8 [..., 3] in [0, 255] -> float32, ImageNet mean/std normalized (numpy, jax or tf)."""
  if hasattr(images_uint8, "astype"):  # numpy or jax
    images = images_uint8.astype(np.float32)
  else:  # a tf.Tensor inside a tf.data map
    import tensorflow as tf
    images = tf.cast(images_uint8, tf.float32)
  return (images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def denormalize_images(images):
  """The inverse of normalize_images, as floats clipped to [0, 1] (numpy or jax)."""
  return (images * IMAGENET_STD + IMAGENET_MEAN).clip(0.0, 1.0)
