"""The evaluation's eyes: a small CNN that reads a caption_digits image's attributes.

Trained by the project on the training split (`mxq_jax.evaluation`), it reads every generated
image: one softmax head per attribute (digit, colour, position, size). Position is spatial, so
the features are flattened, not pooled. The penultimate layer is the feature space of
`feature_fid` (a Fréchet distance there, never called FID).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mxq_jax.models import layers


class AttributeClassifier(nnx.Module):
  """uint8-normalized images [B, S, S, 3] -> ({attribute: logits [B, classes]}, features [B, F])."""

  def __init__(self, image_size: int, num_classes: dict[str, int], *, channels=(32, 64, 64),
               feature_dim: int = 128, rngs: nnx.Rngs):
    self.convs = nnx.List([
        layers.Conv(c_in, c_out, (3, 3), strides=(2, 2) if i else (1, 1), padding="SAME",
                    rngs=rngs)
        for i, (c_in, c_out) in enumerate(zip((3, *channels[:-1]), channels))])
    side = image_size // 2 ** (len(channels) - 1)
    self.features = nnx.Linear(side * side * channels[-1], feature_dim,
                               kernel_init=layers.kernel_init, rngs=rngs)
    self.heads = nnx.Dict({name: nnx.Linear(feature_dim, n, kernel_init=layers.kernel_init,
                                            rngs=rngs)
                           for name, n in num_classes.items()})

  def __call__(self, images_BxSxSx3: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    x = images_BxSxSx3
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    features_BxF = jax.nn.relu(self.features(x.reshape(x.shape[0], -1)))
    logits = {name: head(features_BxF).astype(jnp.float32) for name, head in self.heads.items()}
    return logits, features_BxF
