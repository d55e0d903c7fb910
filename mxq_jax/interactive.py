"""A trained model in a Python session (the notebooks, Colab): load it, sample, score, look.

  model = interactive.load("caption_digits")   # a shipped model, a bundle dir or a workdir
  pairs = model.sample(64, seed=0, temperature=1.0, image_temperature=0.5, top_k=10)
  interactive.show_grid(pairs)                  # a captioned grid
  model.score(pairs)["coherence"]               # caption_digits / caption_mnist only

Pairs stay in memory; they are the pairs `python -m mxq_jax.sample` writes for the same seed and
batch size (the same sampler, keys and decoding). A sampler is compiled once per (batch size,
top-k); the seed, the temperatures and top-p are traced, so changing them compiles nothing.
"""

import dataclasses
import functools
import logging as std_logging
import math
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import logging as absl_logging
from flax import nnx

from mxq_jax import cli, config_lib, context as context_lib, files, pretrained
from mxq_jax.data import caption_attributes, pipeline
from mxq_jax.evaluation import batching, classifier, evaluator, pair_metrics
from mxq_jax.generation import generate, sampler, writer
from mxq_jax.training import trainer as trainer_lib


# ----------------------------------------------------------------------- set-up helpers


def accelerator() -> dict:
  """What this runtime computes on: platform ("cpu", "gpu", "tpu"), device kind and count."""
  devices = jax.devices()
  return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "device_count": len(devices)}


class _NotebookLines(cli.OwnInfoOnly):
  """The commands' log lines less clu's echo of every hyperparameter and scalar ("[Hyper...",
  "[100] train/loss=..."): the Trainer's own lines already say the step, loss and metrics."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    echo = "/clu/" in record.pathname and record.getMessage().startswith("[")
    return super().filter(record) and not echo


def show_progress() -> None:
  """Logs in a notebook as the commands do on a terminal: the project's INFO lines (steps,
  losses, steps/s, ETA), only the warnings of libraries."""
  cli.start(distributed=False)
  handler = std_logging.StreamHandler(sys.stdout)
  handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  handler.addFilter(_NotebookLines())
  root = std_logging.getLogger()
  root.handlers = [handler]  # libraries' basicConfig handlers print everything, unfiltered.
  root.setLevel(std_logging.INFO)
  absl_logging.set_verbosity(absl_logging.INFO)


def load_config(path: str) -> ml_collections.ConfigDict:
  """`configs/NAME.py[:ARG]` as `--config=` loads it: the file's get_config(ARG)."""
  path, _, arg = str(path).partition(":")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"config file {path} does not exist; give configs/NAME.py")
  module = config_lib.load_beside(path, os.path.splitext(os.path.basename(path))[0])
  return module.get_config(arg or None)


def training_curves(workdir: str, task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps, values)} of the scalars a task ("stage1", "stage2") logged to TensorBoard
  (local or gs://)."""
  from mxq_jax.host_tensorflow import tf  # reads the event files clu's writer wrote.
  curves: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(workdir, task, "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        scalar = np.asarray(tf.make_ndarray(value.tensor) if value.HasField("tensor")
                            else value.simple_value)
        if scalar.ndim == 0 and np.issubdtype(scalar.dtype, np.number):  # not text or images.
          curves.setdefault(value.tag, []).append((event.step, float(scalar)))
  return {tag: tuple(np.array(column) for column in zip(*sorted(points)))
          for tag, points in curves.items()}


# The panels of `plot_training_curves`: (task, TensorBoard tag, title).
CURVES = (("stage1", "train/loss", "stage 1 training loss"),
          ("stage1", "eval/psnr", "stage 1 test PSNR (dB)"),
          ("stage2", "train/loss", "prior training loss (nats/code)"),
          ("stage2", "eval/nll_per_code", "prior test NLL (nats/code)"))


def plot_training_curves(workdir: str, panels=CURVES):
  """A matplotlib figure of a workdir's training curves, a panel per (task, tag, title)."""
  import matplotlib.pyplot as plt
  curves = {task: training_curves(workdir, task) for task in {task for task, _, _ in panels}}
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
  for ax, (task, tag, title) in zip(axes[0], panels):
    steps, values = curves[task][tag]
    ax.plot(steps, values, marker="o" if len(steps) < 10 else None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
  fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------- pairs


@dataclasses.dataclass(frozen=True)
class Pairs:
  """Generated pairs in memory: uint8 images [N, H, W, 3], token ids [N, L], joint codes
  [N, N_codes] (stage-1 order), and the decoded captions."""
  images: np.ndarray
  tokens: np.ndarray
  codes: np.ndarray
  captions: list[str]
  settings: dict

  def __len__(self) -> int:
    return len(self.captions)

  def __getitem__(self, index) -> "Pairs":
    rows = np.arange(len(self))[index]
    return Pairs(self.images[rows], self.tokens[rows], self.codes[rows],
                 [self.captions[i] for i in np.atleast_1d(rows)], self.settings)


def show_images(images_NxHxWx3: np.ndarray, captions, columns: int = 8):
  """uint8 images, upscaled, each with its caption below, as one PIL image (a notebook shows
  it as the cell's value)."""
  from PIL import Image
  return Image.fromarray(writer.captioned_grid(np.asarray(images_NxHxWx3), list(captions),
                                               columns=columns))


def show_grid(pairs: Pairs, columns: int = 8):
  """The pairs as a captioned grid (`show_images`)."""
  return show_images(pairs.images, pairs.captions, columns)


# ----------------------------------------------------------------------------- the model


class Model:
  """A trained MXQ-VAE and its prior (and, on the attribute datasets, the classifier that
  scores their pairs), from a workdir or a bundle; states are restored once."""

  def __init__(self, context: context_lib.RunContext):
    self.context = context
    self._samplers = {}

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.context.config

  @functools.cached_property
  def _variables(self):
    prior_state, vae_state = context_lib.restore_for_sampling(self.context)
    return sampler.variables_of(prior_state), sampler.variables_of(vae_state)

  def _sampler(self, batch_size: int, top_k: int):
    if (batch_size, top_k) not in self._samplers:
      self._samplers[batch_size, top_k] = sampler.make_sampler(
          self.config, self.context.mesh, batch_size=batch_size, top_k=top_k)
    return self._samplers[batch_size, top_k]

  def compilations(self) -> int:
    """How many sampler programs this model compiled: one per (batch size, top-k) used."""
    return sum(fn._cache_size() for fn in self._samplers.values())  # pylint: disable=protected-access

  def default_batch_size(self, num_pairs: int) -> int:
    """The pairs asked for, rounded up to the devices, at most config.sampling.batch_size."""
    devices = self.context.mesh.devices.size
    batch_size = min(num_pairs, self.config.sampling.batch_size)
    return max(math.ceil(batch_size / devices) * devices, devices)

  def sample(self, num_pairs: int = 64, *, seed: int = 0, batch_size: int | None = None,
             top_k: int | None = None, top_p: float | None = None,
             temperature: float | None = None, image_temperature: float | None = None) -> Pairs:
    """`num_pairs` pairs; settings left None take the model's config.sampling values."""
    settings = generate.sampling_settings(
        self.config, top_k=top_k, top_p=top_p, temperature=temperature,
        image_temperature=image_temperature)
    config_lib.validate_sampling(**settings, prefix="")
    batch_size = batch_size or self.default_batch_size(num_pairs)
    config_lib.check_divisible_batch(batch_size, self.context.mesh.devices.size, "batch_size")
    batches = list(generate.sample_batches(
        self._sampler(batch_size, settings["top_k"]), self._variables, jax.random.key(seed),
        generate.traced_settings(settings), math.ceil(num_pairs / batch_size)))
    images, tokens, codes = (np.concatenate([b[name] for b in batches])[:num_pairs]
                             for name in ("images", "tokens", "codes"))
    return Pairs(images, tokens, codes, self.context.tokenizer.decode_batch(tokens),
                 {"seed": seed, **settings})

  # ----------------------------------------------------- scoring (attribute datasets)

  @functools.cached_property
  def read_attributes(self):
    """uint8 images -> ({attribute: ids}, features): the bundle's classifier, or the workdir's
    (trained there first, about a minute on a CPU, if the workdir has none)."""
    if self.config.data.name not in pipeline.ATTRIBUTE_DATASETS:
      raise config_lib.ConfigError(
          f"{self.config.data.name} has no attribute classifier: attribute scores exist for "
          f"{', '.join(pipeline.ATTRIBUTE_DATASETS)} only")
    if pretrained.CLASSIFIER in self.context.states:
      return pretrained.classifier_reader(self.context)
    return evaluator.trained_classifier(self.context)[0]

  def score(self, pairs: Pairs) -> dict:
    """Coherence, per-attribute agreement and caption validity of the pairs (the evaluation's
    definitions), with what each caption says and what the classifier sees in each image."""
    image_attributes, _ = self.read_attributes(pairs.images)
    parsed = evaluator.parse_captions(pairs.captions)
    return {**pair_metrics.coherence(parsed, image_attributes),
            "caption_validity": pair_metrics.caption_validity(parsed),
            "image_attributes": image_attributes, "caption_attributes": parsed}

  def pair_agreement(self, scores: dict) -> np.ndarray:
    """int [N]: how many attributes each pair's caption and image agree on (-1: the caption
    does not parse)."""
    seen = scores["image_attributes"]
    return np.array([-1 if said is None else sum(int(said[name] == seen[name][i])
                                                 for name in classifier.ATTRIBUTES)
                     for i, said in enumerate(scores["caption_attributes"])])

  # ------------------------------------------------------ stage 1 on the test split

  def _test_split(self, num_examples: int):
    test = self.context.data.test
    return test.images[:num_examples], test.tokens[:num_examples]

  def reconstruct(self, num_examples: int = 16, condition: str = "pair") -> dict:
    """Stage 1 on the first test pairs: {'images', 'captions'} given and reconstructed
    ('reconstructed_images', 'reconstructed_captions'); `condition` as the evaluation's
    (`pair`, `caption_only`, `image_only`)."""
    model = trainer_lib.merge_model(self.context.stage1_task.graphdef,
                                    self.context.stage1_state())
    images, tokens = self._test_split(num_examples)
    out_images, out_tokens = evaluator.reconstruct(model, images, tokens, condition)
    decode = self.context.tokenizer.decode_batch
    return {"images": np.asarray(images), "captions": decode(np.asarray(tokens)),
            "reconstructed_images": np.asarray(out_images),
            "reconstructed_captions": decode(np.asarray(out_tokens))}

  def codebook_counts(self, num_examples: int = 2000, batch_size: int = 250) -> np.ndarray:
    """int [K]: how often stage 1 picks each code over the first test pairs' joint codes."""
    model = trainer_lib.merge_model(self.context.stage1_task.graphdef,
                                    self.context.stage1_state())
    encode = nnx.jit(lambda m, i, t: m.encode(*evaluator.masked_inputs(i, t, "pair")))
    codes = batching.map_in_fixed_batches(lambda i, t: encode(model, i, t),
                                          *self._test_split(num_examples),
                                          batch_size=min(batch_size, num_examples))
    return np.bincount(codes.ravel(), minlength=config_lib.code_vocabulary_size(self.config))


def seen_in_image(scores: dict, index: int) -> str:
  """What the classifier sees in pair `index`'s image, in the captions' words."""
  names = {"digit": caption_attributes.DIGIT_NAMES, "color": caption_attributes.COLOR_NAMES,
           "position": caption_attributes.POSITION_NAMES, "size": caption_attributes.SIZE_NAMES}
  seen = scores["image_attributes"]
  return ", ".join(names[name][seen[name][index]] for name in classifier.ATTRIBUTES)


def confusion(scores: dict, attribute: str) -> np.ndarray:
  """int [C, C]: rows what the captions say, columns what the classifier sees in the images,
  over the pairs whose caption parses (`Model.score`'s output)."""
  size = classifier.ATTRIBUTES[attribute]
  counts = np.zeros((size, size), np.int64)
  for said, seen in zip(scores["caption_attributes"], scores["image_attributes"][attribute]):
    if said is not None:
      counts[said[attribute], seen] += 1
  return counts


def load(source: str, *, data_dir: str | None = None, **data_overrides) -> Model:
  """A model from a shipped name (`caption_digits`), a bundle directory (`mxq_jax.export`) or a
  trained workdir (local, a mounted Drive, gs://).

  data_dir, data_overrides: where and how the test split is built when `reconstruct` or
  `codebook_counts` first need it (default: the model's own config.data).
  """
  is_workdir = files.exists(os.path.join(source, "config.json")) and not files.exists(
      os.path.join(source, "bundle.json"))
  if is_workdir:
    context = context_lib.for_trained_workdir(source)
  else:
    context = pretrained.load(source)
  if data_dir is not None or data_overrides:
    context.config.data.update(data_dir=data_dir or context.config.data.data_dir,
                               **data_overrides)
  return Model(context)

