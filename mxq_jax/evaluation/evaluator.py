r"""Scores generated pairs: the library behind `python -m mxq_jax.evaluate` and the evaluate stage.

OUT is a directory written by `python -m mxq_jax.sample` (or the evaluate stage). The figures
go to OUT/metrics.json (replaced on every run: it is derived from OUT), to stdout, and to
TensorBoard under DIR/evaluate (tagged generated/NAME, at the prior's step). On every dataset:

  novelty             captions that are not copies of a training caption (any of an image's)
  stage1_test_*       stage 1's own test metrics (PSNR, token accuracy, codebook usage and
                      perplexity), as its training last wrote them

On the real datasets (cub, flowers, coco): FID and CLIP score, when config.evaluation names the
weight files (`evaluation.real_data`); each one it has no weights for is skipped with a
logged note, never reported as a number.

On caption_digits and caption_mnist, the attribute classifier (trained once into
DIR/classifier/, its held-out accuracy per attribute checked) reads every generated image and
the template parser reads every caption:

  coherence           pairs whose caption parses and names the image's attributes, of all pairs
  {attr}_agreement    per attribute, over the pairs whose caption parses
  caption_validity    captions that parse (follow a template, each attribute named once)
  attribute_tvd       mean total-variation distance of the generated images' attribute
                      marginals from the training split's ({attr}_tvd: each one)
  combinations        distinct (digit, colour, position, size) combinations among the images
  feature_fid         Fréchet distance between generated and test images in the classifier's
                      feature space (not FID: no Inception network is involved)
  stage1_{image,caption}_{attr}_kept
                      test pairs whose stage-1 reconstruction keeps the true attribute (read
                      by the classifier, or the parser): the ceiling stage 1 sets on coherence;
                      stage1_pair_kept: every attribute of both halves kept
  from_caption_image_{attr}_kept, from_image_caption_{attr}_kept
                      cross-modal reconstruction: the image rebuilt from the caption alone
                      (image fully masked), the caption from the image alone (caption masked)
"""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from mxq_jax import config_lib, context as context_lib, files, sharding
from mxq_jax.data import caption_attributes, normalization, tokenizer
from mxq_jax.evaluation import batching, classifier, pair_metrics, real_data
from mxq_jax.generation import sampler
from mxq_jax.training import trainer as trainer_lib

METRICS_NAME = "metrics.json"


def samples_jsonl(samples_dir: str) -> str:
  """The path of a `mxq_jax.sample` directory's samples.jsonl; ConfigError when it has none."""
  path = os.path.join(samples_dir, "samples.jsonl")
  if not files.is_file(path):
    raise config_lib.ConfigError(
        f"--samples={samples_dir} holds no samples.jsonl; write one with "
        "`python -m mxq_jax.sample --workdir=... --outdir=...`")
  return path


def read_samples(samples_dir: str) -> tuple[np.ndarray, list[str]]:
  """(uint8 images [n, S, S, 3], captions) of a `mxq_jax.sample` output directory."""
  path = samples_jsonl(samples_dir)
  records = []
  with files.open(path) as f:
    for number, line in enumerate(f, 1):
      try:
        record = json.loads(line)
        records.append((record["image"], record["caption"]))
      except (ValueError, KeyError, TypeError) as error:
        raise config_lib.ConfigError(
            f"{path}, line {number}: not a pair record ({type(error).__name__}: {error}); "
            "regenerate the directory with `python -m mxq_jax.sample`") from None
  images = []
  for image, _ in records:
    try:
      data = files.read_bytes(os.path.join(samples_dir, image))  # Pillow reads local files only.
      images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    except OSError as error:
      raise config_lib.ConfigError(
          f"{samples_dir}: cannot read the image {image} ({error}); regenerate the directory "
          "with `python -m mxq_jax.sample`") from None
  if not images or len({image.shape for image in images}) > 1:
    listed = "no pairs" if not images else "images of several sizes"
    raise config_lib.ConfigError(f"{samples_dir}: samples.jsonl lists {listed}; regenerate the "
                                 "directory with `python -m mxq_jax.sample`")
  return np.stack(images), [caption for _, caption in records]


def label_ids(parsed: dict | None) -> dict | None:
  """Caption parser output (names) -> the dataset's ClassLabel ids."""
  attrs = caption_attributes
  if parsed is None:
    return None
  return {"digit": parsed["digit"], "color": attrs.COLOR_NAMES.index(parsed["color"]),
          "position": attrs.POSITION_NAMES.index(parsed["position"]),
          "size": attrs.SIZE_NAMES.index(parsed["size"])}


def parse_captions(captions) -> list[dict | None]:
  return [label_ids(caption_attributes.parse_caption(c)) for c in captions]


# ------------------------------------------------------------------------ the classifier


def trained_classifier(context: context_lib.RunContext):
  """(the classifier's reader, its held-out accuracy), training it first if the workdir has
  none; refuses (ConfigError) a classifier below config.evaluation.min_classifier_accuracy."""
  from mxq_jax.data import pipeline  # TensorFlow, where data is read (mxq_jax/run.py).
  config, splits = context.config, context.data
  task = classifier.make_task(config)
  batch_sharding = sharding.batch_sharding(context.mesh)
  seed = config.seed + 2  # its own init and data order, not the stages'.
  labelled = lambda split: {"image": split.images,
                            **{name: split.labels[name] for name in classifier.ATTRIBUTES}}
  trainer = trainer_lib.Trainer(task, workdir=context.workdir, mesh=context.mesh, seed=seed)
  state, accuracy = trainer.fit(
      train_batches=lambda start: pipeline.array_train_batches(
          labelled(splits.train), task.optim.batch_size, seed, start, batch_sharding,
          transform=pipeline.normalize_image_batch),
      eval_batches=lambda: pipeline.array_eval_batches(
          labelled(splits.test), splits.test.num_global, task.optim.batch_size, batch_sharding,
          transform=pipeline.normalize_image_batch))
  weakest = min((v, k) for k, v in accuracy.items() if k.endswith("_accuracy"))
  minimum = config.evaluation.min_classifier_accuracy
  if weakest[0] < minimum:
    raise config_lib.ConfigError(
        f"the attribute classifier's held-out {weakest[1]} is {weakest[0]:.4f}, below "
        f"config.evaluation.min_classifier_accuracy={minimum}; raise "
        f"config.evaluation.classifier_optim.num_steps and delete {context.workdir}/classifier")
  return classifier.make_reader(config, state), accuracy


# ------------------------------------------------------------- stage-1 reconstructions


# Reconstruction conditions and the half of the pair each one is scored on (its prefix).
RECONSTRUCTIONS = {"pair": "stage1", "caption_only": "from_caption", "image_only": "from_image"}
# Each condition's index in `reconstruct`'s one compiled program.
CONDITIONS = tuple(RECONSTRUCTIONS)


def masked_inputs(images_uint8, tokens, condition):
  """Stage-1 inputs for a reconstruction `condition`: "pair" (both as given), "caption_only"
  (the image fully masked: zeros in normalized space, as the training masks patches) or
  "image_only" (every caption piece replaced by the mask id; BOS, EOS and PAD kept).

  `condition` is a name of CONDITIONS or, traced, its index: `jnp.where` then selects the same
  values, so that one program serves all three conditions instead of one program each.
  """
  index = CONDITIONS.index(condition) if isinstance(condition, str) else condition
  images = normalization.normalize_images(images_uint8)
  images = jnp.where(index == CONDITIONS.index("caption_only"), jnp.zeros_like(images), images)
  special = jnp.isin(tokens, jnp.asarray([tokenizer.PAD_ID, tokenizer.BOS_ID, tokenizer.EOS_ID]))
  tokens = jnp.where((index == CONDITIONS.index("image_only")) & ~special, tokenizer.MASK_ID,
                     tokens)
  return images, tokens


@nnx.jit
def _reconstruct(model, images_uint8, tokens, condition_index):
  codes = model.encode(*masked_inputs(images_uint8, tokens, condition_index))
  return sampler.decode_pairs(model, codes)


def reconstruct(model, images_uint8, tokens, condition: str):
  """Stage 1's (uint8 images, token ids) of pairs encoded under `condition` (masked_inputs)."""
  if condition not in CONDITIONS:
    raise ValueError(f"unknown reconstruction condition {condition!r}; use one of {CONDITIONS}")
  return _reconstruct(model, images_uint8, tokens,
                      jnp.asarray(CONDITIONS.index(condition), jnp.int32))


def stage1_reconstruction_agreement(context: context_lib.RunContext, read) -> dict:
  """How often stage 1's reconstruction of a test pair keeps each true attribute.

  The classifier reads each reconstructed image, the parser each reconstructed caption (eval
  mode, the stage-1 checkpoint the prior models), for the pair rebuilt from both halves
  (stage1_{image,caption}_{attr}_kept: a ceiling for generated pairs, since the prior can only
  pick codes that stage 1 decodes; stage1_pair_kept: every attribute of both halves), and
  cross-modally: the image rebuilt from the caption alone (from_caption_image_{attr}_kept) and
  the caption from the image alone (from_image_caption_{attr}_kept).
  """
  model = trainer_lib.merge_model(context.stage1_task.graphdef, context.stage1_state())
  test = context.data.test
  result = {}
  for condition, prefix in RECONSTRUCTIONS.items():
    images, tokens = batching.map_in_fixed_batches(
        lambda i, t: reconstruct(model, i, t, condition), test.images, test.tokens,
        batch_size=250)
    image_attributes, _ = read(images)
    parsed = parse_captions(context.data.tokenizer.decode_batch(tokens))
    image_kept = {name: image_attributes[name] == test.labels[name]
                  for name in classifier.ATTRIBUTES}
    caption_kept = {name: np.array([p is not None and p[name] == t
                                    for p, t in zip(parsed, test.labels[name])])
                    for name in classifier.ATTRIBUTES}
    for name in classifier.ATTRIBUTES:
      if condition != "image_only":
        result[f"{prefix}_image_{name}_kept"] = float(np.mean(image_kept[name]))
      if condition != "caption_only":
        result[f"{prefix}_caption_{name}_kept"] = float(np.mean(caption_kept[name]))
    if condition == "pair":
      result["stage1_pair_kept"] = float(np.mean(np.all(
          [*image_kept.values(), *caption_kept.values()], axis=0)))
  return result


# ---------------------------------------------------------------------------- the metrics


def attribute_metrics(context: context_lib.RunContext, images, captions) -> dict:
  """The attribute datasets' metrics (module docstring) of generated images and captions."""
  splits = context.data
  read, classifier_accuracy = trained_classifier(context)
  image_attributes, features = read(images)
  _, test_features = read(splits.test.images)
  parsed = parse_captions(captions)
  return {
      **pair_metrics.coherence(parsed, image_attributes),
      "caption_validity": pair_metrics.caption_validity(parsed),
      **pair_metrics.attribute_tvd(image_attributes, splits.train.labels,
                                   classifier.ATTRIBUTES),
      "combinations": len(pair_metrics.combinations(image_attributes)),
      "combinations_possible": int(np.prod(list(classifier.ATTRIBUTES.values()))),
      "feature_fid": pair_metrics.feature_frechet_distance(features, test_features),
      **{f"classifier_{k}": v for k, v in classifier_accuracy.items() if k.endswith("accuracy")},
      **stage1_reconstruction_agreement(context, read),
  }


def write_tensorboard(context: context_lib.RunContext, metrics: dict) -> None:
  """The numeric metrics to {workdir}/evaluate's TensorBoard log, at the prior's step."""
  # clu's writers run TensorFlow: off the accelerators first.
  from mxq_jax import host_tensorflow  # pylint: disable=unused-import
  from clu import metric_writers
  writer = metric_writers.create_default_writer(
      os.path.join(context.workdir, "evaluate"), just_logging=jax.process_index() > 0)
  writer.write_scalars(context.prior_step(), {
      f"generated/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
  writer.flush()
  writer.close()


def evaluate_samples(context: context_lib.RunContext, samples_dir: str,
                     generated_by: dict | None = None) -> dict:
  """Every metric of the module docstring, also written to {samples_dir}/metrics.json and to
  TensorBoard ({workdir}/evaluate); `generated_by` (what made the pairs) goes with them."""
  config, splits = context.config, context.data
  images, captions = read_samples(samples_dir)
  if images.shape[1] != config.data.image_size:
    raise config_lib.ConfigError(
        f"{samples_dir} holds {images.shape[1]} px images; the workdir's model makes "
        f"{config.data.image_size} px")
  metrics = {
      "pairs": len(captions),
      "novelty": pair_metrics.novelty(captions, list(splits.train.every_caption)),
      **{f"stage1_test_{k}": v for k, v in context.metrics("stage1").items()
         if k not in ("step", "examples")},
  }
  from mxq_jax.data import pipeline  # TensorFlow, where data is read (mxq_jax/run.py).
  if config.data.name in pipeline.ATTRIBUTE_DATASETS:
    metrics.update(attribute_metrics(context, images, captions))
  else:
    metrics.update(real_data.fid_and_clip(config, images, captions, splits.test.images))
  if generated_by is not None:
    metrics["generated_by"] = generated_by
  if jax.process_index() == 0:
    files.write_json(os.path.join(samples_dir, METRICS_NAME), metrics)
  write_tensorboard(context, metrics)
  logging.info("evaluate: %s", json.dumps(metrics))
  return metrics
