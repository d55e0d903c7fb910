"""The attribute classifier as a `trainer.Task`: trained once per workdir, then a reader.

It learns digit, colour, position and size from the training split's labels, by the same train
machinery as the two model stages (checkpoints under `{workdir}/classifier/`), and reports its
held-out accuracy per attribute: the evaluation trusts it only above
config.evaluation.min_classifier_accuracy.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from mxq_jax.evaluation import batching
from mxq_jax.training import trainer as trainer_lib
from mxq_jax.data import caption_attributes, normalization
from mxq_jax.models import attribute_classifier

ATTRIBUTES = {
    "digit": len(caption_attributes.DIGITS),
    "color": len(caption_attributes.COLORS),
    "position": len(caption_attributes.POSITIONS),
    "size": len(caption_attributes.SIZES),
}


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs):
  return attribute_classifier.AttributeClassifier(config.data.image_size, ATTRIBUTES,
                                                  channels=(16, 32, 32), rngs=rngs)


def loss_fn(model, batch, key: jax.Array):
  del key  # deterministic: no dropout, no augmentation.
  logits, _ = model(batch["image"])
  losses = {name: optax.softmax_cross_entropy_with_integer_labels(logits[name], batch[name]).mean()
            for name in ATTRIBUTES}
  accuracy = {f"{name}_accuracy": jnp.mean(jnp.argmax(logits[name], -1) == batch[name])
              for name in ATTRIBUTES}
  return sum(losses.values()), accuracy


def eval_fn(model, batch):
  logits, _ = model(batch["image"])
  valid_B = batch["valid"]
  sums = {name: ((jnp.argmax(logits[name], -1) == batch[name]) * valid_B).sum()
          for name in ATTRIBUTES}
  return dict(sums, examples=valid_B.sum())


def summarize_eval(sums: dict[str, np.ndarray]) -> dict[str, float]:
  return {f"{name}_accuracy": float(sums[name] / sums["examples"]) for name in ATTRIBUTES}


def make_task(config: ml_collections.ConfigDict) -> trainer_lib.Task:
  return trainer_lib.Task(
      name="classifier",
      optim=config.evaluation.classifier_optim,
      build_model=lambda rngs: build_model(config, rngs),
      loss_fn=loss_fn,
      eval_fn=eval_fn,
      summarize_eval=summarize_eval,
      signature={"image_size": config.data.image_size, "attributes": ATTRIBUTES,
                 "dataset": config.data.name},
  )


def make_reader(config: ml_collections.ConfigDict, state: trainer_lib.TrainState):
  """uint8 images [B, S, S, 3] -> ({attribute: int [B]}, features [B, F]), jitted."""
  model = trainer_lib.merge_model(make_task(config).graphdef, state)

  @nnx.jit
  def read(model, images_uint8):
    logits, features = model(normalization.normalize_images(images_uint8))
    return {name: jnp.argmax(value, -1) for name, value in logits.items()}, features

  def read_all(images_NxSxSx3: np.ndarray, batch_size: int = 256):
    return batching.map_in_fixed_batches(lambda chunk: read(model, chunk), images_NxSxSx3,
                                          batch_size=batch_size)

  return read_all
