r"""Scores generated pairs: `python -m mxq_jax.evaluate --workdir=DIR --samples=OUT`.

OUT is a directory written by `python -m mxq_jax.sample`. The figures go to OUT/metrics.json
(replaced on every run: it is derived from OUT), to stdout, and to TensorBoard under
DIR/evaluate (tagged generated/NAME, at the prior's step). On every dataset:

  novelty             captions that are not copies of a training caption (first captions)
  stage1_test_*       stage 1's own test metrics (PSNR, token accuracy, codebook usage and
                      perplexity), as its training last wrote them

On the real datasets (cub, flowers, coco): FID and CLIP score, when config.evaluation names the
weight files (`mxq_jax.metrics.real_data`); each one it has no weights for is skipped with a
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

import json
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that `run` can import this module."""
  flags.DEFINE_string("workdir", None, "A workdir trained by `python -m mxq_jax.main`.")
  flags.DEFINE_string("samples", None, "A directory written by `python -m mxq_jax.sample`.")
  flags.mark_flags_as_required(["workdir", "samples"])


def _label_ids(parsed: dict | None) -> dict | None:
  """Parser output (names) -> the dataset's ClassLabel ids."""
  from mxq_jax.data import caption_attributes as attrs
  if parsed is None:
    return None
  return {"digit": parsed["digit"], "color": attrs.COLOR_NAMES.index(parsed["color"]),
          "position": attrs.POSITION_NAMES.index(parsed["position"]),
          "size": attrs.SIZE_NAMES.index(parsed["size"])}


def samples_jsonl(samples_dir: str) -> str:
  """The path of a `mxq_jax.sample` directory's samples.jsonl; ConfigError when it has none."""
  from mxq_jax import config_lib
  path = os.path.join(samples_dir, "samples.jsonl")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(
        f"--samples={samples_dir} holds no samples.jsonl; write one with "
        "`python -m mxq_jax.sample --workdir=... --outdir=...`")
  return path


def read_samples(samples_dir: str):
  """(uint8 images [n, S, S, 3], captions) of a `mxq_jax.sample` output directory."""
  import numpy as np
  from PIL import Image
  with open(samples_jsonl(samples_dir)) as f:
    records = [json.loads(line) for line in f]
  images = np.stack([np.asarray(Image.open(os.path.join(samples_dir, r["image"])).convert("RGB"))
                     for r in records])
  return images, [r["caption"] for r in records]


def trained_classifier(config, workdir: str, mesh, splits):
  """The classifier's reader, training it first if the workdir has none; checks its accuracy."""
  from mxq_jax import classifier, config_lib, sharding, train_lib
  from mxq_jax.data import pipeline
  stage = classifier.make_stage(config)
  optim = stage.optim
  batch_sharding = sharding.batch_sharding(mesh)
  labelled = lambda split: {"image": split.images,
                            **{name: split.labels[name] for name in classifier.ATTRIBUTES}}
  state, accuracy = train_lib.train_stage(
      stage, workdir=workdir, mesh=mesh, seed=config.seed + 2,
      train_batches=lambda start: pipeline.array_train_batches(
          labelled(splits.train), optim.batch_size, config.seed + 2, start, batch_sharding,
          transform=pipeline.normalize_image_batch),
      eval_batches=lambda: pipeline.array_eval_batches(
          labelled(splits.test), splits.test.num_global, optim.batch_size, batch_sharding,
          transform=pipeline.normalize_image_batch))
  weakest = min((v, k) for k, v in accuracy.items() if k.endswith("_accuracy"))
  if weakest[0] < config.evaluation.min_classifier_accuracy:
    raise config_lib.ConfigError(
        f"the attribute classifier's held-out {weakest[1]} is {weakest[0]:.4f}, below "
        f"config.evaluation.min_classifier_accuracy={config.evaluation.min_classifier_accuracy}"
        f"; raise config.evaluation.classifier_optim.num_steps and delete {workdir}/classifier")
  return classifier.make_reader(config, state), accuracy


def _masked_inputs(images_uint8, tokens, condition: str):
  """Stage-1 inputs for a reconstruction `condition`: "pair" (both as given), "caption_only"
  (the image fully masked: zeros in normalized space, as the training masks patches) or
  "image_only" (every caption piece replaced by the mask id; BOS, EOS and PAD kept)."""
  import jax.numpy as jnp
  from mxq_jax.data import normalization, tokenizer
  images = normalization.normalize_images(images_uint8)
  if condition == "caption_only":
    images = jnp.zeros_like(images)
  if condition == "image_only":
    special = jnp.isin(tokens, jnp.asarray([tokenizer.PAD_ID, tokenizer.BOS_ID, tokenizer.EOS_ID]))
    tokens = jnp.where(special, tokens, tokenizer.MASK_ID)
  return images, tokens


# Reconstruction conditions and the half of the pair each one is scored on (its prefix).
_RECONSTRUCTIONS = {"pair": "stage1", "caption_only": "from_caption", "image_only": "from_image"}


def stage1_reconstruction_agreement(config, workdir: str, mesh, splits, read) -> dict:
  """How often stage 1's reconstruction of a test pair keeps each true attribute.

  The classifier reads each reconstructed image, the parser each reconstructed caption (eval
  mode, the latest stage-1 checkpoint), for the pair rebuilt from both halves
  (stage1_{image,caption}_{attr}_kept: a ceiling for generated pairs, since the prior can only
  pick codes that stage 1 decodes; stage1_pair_kept: every attribute of both halves), and
  cross-modally: the image rebuilt from the caption alone (from_caption_image_{attr}_kept) and
  the caption from the image alone (from_image_caption_{attr}_kept).
  """
  import functools
  import numpy as np
  from flax import nnx
  from mxq_jax import classifier, sampler, stage1, train_lib
  from mxq_jax.data import caption_attributes
  stage = stage1.make_stage(config)
  state, _ = train_lib.restore_trained(stage, workdir, mesh)
  model = train_lib.merge_model(train_lib.graphdef_of(stage), state)

  @functools.partial(nnx.jit, static_argnames="condition")
  def reconstruct(model, images_uint8, tokens, condition):
    codes = model.encode(*_masked_inputs(images_uint8, tokens, condition))
    return sampler.decode_pairs(model, codes)

  test = splits.test
  result = {}
  for condition, prefix in _RECONSTRUCTIONS.items():
    images, tokens = train_lib.map_in_fixed_batches(
        lambda i, t: reconstruct(model, i, t, condition), test.images, test.tokens,
        batch_size=250)
    image_attributes, _ = read(images)
    parsed = [_label_ids(caption_attributes.parse_caption(c))
              for c in splits.tokenizer.decode_batch(tokens)]
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


def attribute_metrics(config, workdir: str, mesh, splits, images, captions) -> dict:
  """The attribute datasets' metrics (module docstring) of generated images and captions."""
  import numpy as np
  from mxq_jax import classifier, pair_metrics
  from mxq_jax.data import caption_attributes
  read, classifier_accuracy = trained_classifier(config, workdir, mesh, splits)
  image_attributes, features = read(images)
  _, test_features = read(splits.test.images)
  parsed = [_label_ids(caption_attributes.parse_caption(c)) for c in captions]
  return {
      **pair_metrics.coherence(parsed, image_attributes),
      "caption_validity": pair_metrics.caption_validity(parsed),
      **pair_metrics.attribute_tvd(image_attributes, splits.train.labels,
                                   classifier.ATTRIBUTES),
      "combinations": len(pair_metrics.combinations(image_attributes)),
      "combinations_possible": int(np.prod(list(classifier.ATTRIBUTES.values()))),
      "feature_fid": pair_metrics.feature_frechet_distance(features, test_features),
      **{f"classifier_{k}": v for k, v in classifier_accuracy.items() if k.endswith("accuracy")},
      **stage1_reconstruction_agreement(config, workdir, mesh, splits, read),
  }


def photo_metrics(config, splits, images, captions) -> dict:
  """Real datasets: FID and CLIP score where config.evaluation names their weights."""
  from mxq_jax.metrics import real_data
  return real_data.fid_and_clip(config, images, captions, splits.test.images)


def write_tensorboard(workdir: str, metrics: dict) -> None:
  """The numeric metrics to {workdir}/evaluate's TensorBoard log, at the prior's latest step."""
  import jax
  from clu import metric_writers
  from mxq_jax import checkpointing
  step = checkpointing.latest_step(checkpointing.checkpoint_dir(workdir, "stage2")) or 0
  writer = metric_writers.create_default_writer(
      os.path.join(workdir, "evaluate"), just_logging=jax.process_index() > 0)
  writer.write_scalars(step, {f"generated/{k}": v for k, v in metrics.items()
                              if isinstance(v, (int, float))})
  writer.flush()
  writer.close()


def evaluate_samples(config, workdir: str, samples_dir: str, mesh, splits) -> dict:
  """Every metric of the module docstring, also written to {samples_dir}/metrics.json and to
  TensorBoard ({workdir}/evaluate)."""
  import jax
  from mxq_jax import pair_metrics, train_lib
  from mxq_jax.data import pipeline
  images, captions = read_samples(samples_dir)
  if images.shape[1] != config.data.image_size:
    raise ValueError(f"{samples_dir} holds {images.shape[1]} px images; the workdir's model "
                     f"makes {config.data.image_size} px")
  stage1_test = train_lib.read_json(os.path.join(workdir, "stage1", "eval_metrics.json"))
  metrics = {
      "pairs": len(captions),
      "novelty": pair_metrics.novelty(captions, list(splits.train.captions)),
      **{f"stage1_test_{k}": v for k, v in stage1_test.items() if k not in ("step", "examples")},
  }
  if config.data.name in pipeline.ATTRIBUTE_DATASETS:
    metrics.update(attribute_metrics(config, workdir, mesh, splits, images, captions))
  else:
    metrics.update(photo_metrics(config, splits, images, captions))
  if jax.process_index() == 0:
    train_lib.write_json_atomically(os.path.join(samples_dir, "metrics.json"), metrics)
  write_tensorboard(workdir, metrics)
  return metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from mxq_jax import cli, config_lib, sharding
  logging.get_absl_handler().addFilter(cli.OwnInfoOnly())
  cli.initialize_distributed()
  try:
    config_path = os.path.join(FLAGS.workdir, "config.json")
    if not os.path.isfile(config_path):
      raise config_lib.ConfigError(
          f"--workdir={FLAGS.workdir} holds no config.json: it is not a workdir trained by "
          "`python -m mxq_jax.main`")
    config = config_lib.from_json_file(config_path)
    samples_jsonl(FLAGS.samples)  # its one-line error comes before any slow work.
    from mxq_jax.data import pipeline
    mesh = sharding.make_mesh(config.mesh)
    splits = pipeline.load_splits(config, FLAGS.workdir)
    metrics = evaluate_samples(config, FLAGS.workdir, FLAGS.samples, mesh, splits)
  except config_lib.ConfigError as error:
    logging.flush()
    sys.exit(f"mxq_jax: error: {error}")
  print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
  define_flags()
  from mxq_jax import cli
  app.run(main, flags_parser=cli.parse_flags)
