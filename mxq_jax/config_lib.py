"""The config schema: every field, its unit and default, and the checks run before training.

`base_config()` holds the reference values of the design card (`shared/design/mxq-vae.md`);
files in `configs/` start from it, change what their experiment needs and apply the size tables
of `configs/common.py` (`apply_table`). `validate` turns a bad value into one `ConfigError` line
that says what is wrong and how to fix it; its checks are the rows of `FIELD_RULES`,
`OPTIM_RULES`, `SAMPLING_RULES` and `CROSS_RULES`. `mxq_vae_config` is the one place the
stage-1 model's typed config is read from a ConfigDict.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import operator
import os
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import ml_collections

from mxq_jax import files

if TYPE_CHECKING:
  from mxq_jax.models import codebooks, mxq_vae


class ConfigError(ValueError):
  """A config value that cannot work; the message says which field and what to do."""


def parse_variant(arg: str | None, allowed: tuple[str, ...]) -> str:
  """The `:ARG` of `--config=configs/NAME.py:ARG`, checked against the variants a file offers."""
  variant = arg or "default"
  if variant not in allowed:
    raise ConfigError(f"unknown config argument {variant!r}; use one of {', '.join(allowed)}")
  return variant


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """Optimizer and loop settings; stage 1 and stage 2 each own one (same schema, same code)."""
  optim = ml_collections.ConfigDict(dict(
      batch_size=384,  # examples per step, global (all devices and hosts together).
      num_steps=20_000,  # optimizer steps.
      learning_rate=3e-4,  # peak AdamW learning rate.
      warmup_steps=1_000,  # linear warm-up steps, then cosine decay to end_lr_fraction * peak.
      end_lr_fraction=0.01,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=5e-4,  # AdamW decoupled weight decay (the reference's value).
      grad_clip_norm=1.0,  # global-norm clipping; 0 turns it off.
      log_every=100,  # steps between training-metric writes.
      eval_every=1_000,  # steps between test-split evaluations (0: only at the end).
      checkpoint_every=1_000,  # steps between checkpoints (a final one is always written).
      keep_checkpoints=2,  # most recent checkpoints kept on disk.
      # A TensorBoard profile (clu periodic_actions.Profile) of this many steps, from step
      # profile_first_step of the run (counted from where it resumed); 0: no profile.
      profile_steps=0,
      profile_first_step=10,
  ))
  optim.update(overrides)
  return optim


def base_config() -> ml_collections.ConfigDict:
  """Every field the code reads, at the reference (Caption-MNIST, 64 px) values."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds parameter init, data order, masking and dropout.

  config.data = ml_collections.ConfigDict(dict(
      name="caption_digits",  # TFDS builder name (caption_digits is built offline).
      data_dir="",  # TFDS data directory; "" means TFDS's default (~/tensorflow_datasets).
      image_size=64,  # px, square.
      # caption_digits: examples rendered per split; caption_mnist: MNIST's first examples
      # used (0, or more than MNIST has: all of them).
      num_train=60_000,
      num_test=10_000,
      dataset_seed=0,  # caption_digits, caption_mnist: seed of each example's attributes.
      text_length=64,  # tokens per caption, BOS and EOS included.
      vocab_size=128,  # SentencePiece vocabulary, the special pieces included.
      shuffle_buffer=20_000,  # examples; the in-memory datasets use their whole size if smaller.
      # Real datasets (cub, flowers, coco): the folder holding the files as their publishers
      # ship them (README, "Datasets"); "" means TFDS's own {data_dir}/downloads/manual.
      manual_dir="",
      split="official",  # cub, flowers: "official" image split or "class" (Reed et al.'s).
      crop_to_bbox=False,  # cub: crop each image to its bird's bounding box.
      coco_year=2014,  # coco: 2014 (train2014/val2014) or 2017 layout.
      # Images with several captions: "random" draws one per image per epoch (an epoch is an
      # epoch of images); "first" always takes the first.
      caption_choice="random",
      lowercase=True,  # lowercase captions before tokenizing (real datasets).
      random_flip=False,  # flip training images left-right (never on datasets whose captions
                          # name positions, like caption_digits).
  ))

  config.masking = ml_collections.ConfigDict(dict(
      image_patch=8,  # px: side of the square patches the image is cut into.
      image_ratio=0.3,  # fraction of patches zeroed in a training input.
      text_ratio=0.3,  # fraction of real (non-pad) tokens replaced by the mask id.
  ))

  config.vqvae = ml_collections.ConfigDict(dict(
      # Image CNN: three stride-2 4x4 convs, one 3x3 conv, residual stack, 1x1 conv to D.
      image_channels=(64, 128, 256),
      res_channels=256,
      num_res_blocks=6,
      # Text 1-D CNN: embedding, four VALID convs of one kernel, 1x1 conv to D.
      text_embed_dim=128,
      text_channels=(224, 320, 416, 512),  # widths of the four Conv1d after the embedding.
      text_kernel=15,  # 64 tokens -> 64 - 4 * (15 - 1) = 8 text positions.
      # A ReLU between the text decoder's two 1x1 convs (widths[-1] -> text_embed_dim ->
      # vocabulary): a per-position MLP to the logits. The reference has none (two linear maps).
      text_head_relu=True,
      # Fusion: a BERT-style post-LN Transformer encoder over image then text positions.
      embed_dim=128,  # D: fusion width, codebook vector size.
      fusion_layers=4,
      fusion_heads=2,
      fusion_mlp_dim=512,
      dropout=0.1,
      position_embeddings=True,  # learned position + modality embeddings (reference: False).
      # Shared codebook.
      codebook_size=256,  # K.
      beta=0.25,  # commitment weight.
      codebook_update="ema",  # "ema" (moving averages) or "gradient" (the reference).
      codebook_init="data",  # "data": encoder outputs of the first batch; "uniform": U(-1/K, 1/K).
      codebook_l2_normalize=False,  # match unit vectors (cosine similarity; ViT-VQGAN).
      ema_decay=0.99,  # codebook_update="ema" only.
      dead_code_restart=True,  # codebook_update="ema" only: re-seed codes unused for a while.
      dead_code_threshold=0.03,  # restart a code when its EMA use per batch falls below this.
      # Cross decoding: the text mixer's hidden width over positions (32 at 64 px, 128 at 128 px).
      text_mix_hidden=32,
      # "routing": the position mixers start by passing each modality's own positions through
      # (plus small noise) and learn the cross-modal mixing; "random": the reference's init.
      cross_mixer_init="routing",
      # Ablations of the paper's design (mxq_jax/ablations.py): "transformer" fuses the two
      # modalities before quantization, "none" quantizes each modality's features as encoded.
      fusion="transformer",
      codebooks="shared",  # "shared": one codebook for both modalities; "separate": one each.
      # "joint": each decoder reads all N code positions (cross decoding); "own": only its
      # own modality's positions.
      decoder_inputs="joint",
      dtype="float32",  # compute dtype ("bfloat16" on accelerators); parameters stay float32.
      # Compile each repeated block once (residual blocks, fusion layers: a lax.scan over their
      # stacked parameters): minutes less compiling at the paper's sizes; the same parameters
      # and arithmetic, only dropout draws its keys differently (mxq_jax/models/repeated.py).
      scan_layers=False,
  ))
  config.vqvae.optim = optim_config()

  # Stage 2: a GPT-2 style prior over the N joint codes (BOS = K, then codes).
  config.prior = ml_collections.ConfigDict(dict(
      num_layers=8,
      num_heads=8,
      dim=512,  # width of the residual stream.
      mlp_dim=2048,  # 4 x dim, GPT-2's ratio.
      dropout=0.1,  # on embeddings, attention probabilities and residual branches.
      dtype="float32",  # compute dtype ("bfloat16" on accelerators); parameters stay float32.
      scan_layers=False,  # compile the prior's layers once (as vqvae.scan_layers).
      # The order the prior generates the joint codes in: "text_first" (the caption's codes,
      # which carry the pair's content in few positions, then the image grid in raster order)
      # or "image_first" (the reference: the image grid, then the text positions).
      code_order="text_first",
      # Dims of each attention head whose queries and keys turn with the image code's row and
      # column (2-D rotary embeddings: image-to-image attention by offset in the grid, so a
      # shape learned at one place serves all); a multiple of 4, at most dim / num_heads.
      # 0: learned absolute positions only (they stay either way).
      grid_rotary_dims=0,
      # False: the frozen stage-1 model encodes both splits once, into {workdir}/codes/;
      # True: each training batch is encoded inside the input stream (no files, more compute).
      encode_on_the_fly=False,
  ))
  config.prior.optim = optim_config(batch_size=384, num_steps=20_000, learning_rate=3e-4,
                                    warmup_steps=1_000, weight_decay=0.01)

  # Ancestral sampling (the reference's settings): the defaults of `mxq_jax.sample`.
  config.sampling = ml_collections.ConfigDict(dict(
      top_k=10,  # keep the k most likely codes (>= 1; codebook_size or more: no top-k).
      top_p=1.0,  # keep the smallest set of codes whose probability reaches p; 1.0: off.
      temperature=1.0,  # logits are divided by it (< 1 sharper, > 1 flatter).
      # The image codes' own temperature; None: `temperature`. The caption's codes carry the
      # pair's content (its diversity), the image's codes render it: a colder image is more
      # faithful to its caption.
      image_temperature=ml_collections.config_dict.placeholder(float),
      batch_size=256,  # pairs generated per compiled call.
  ))

  # Evaluation of generated pairs (caption_digits): an attribute classifier reads the images,
  # a parser reads the captions (`mxq_jax.evaluate`).
  config.evaluation = ml_collections.ConfigDict(dict(
      num_samples=1_000,  # pairs generated and scored by the evaluate stage.
      min_classifier_accuracy=0.99,  # held-out accuracy per attribute the classifier must reach.
      # Real datasets: FID and CLIP score from local weight files (README, "FID and CLIP score");
      # "" skips the metric with a logged note.
      inception_weights="",  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth.
      clip_dir="",  # a local copy of huggingface.co/openai/clip-vit-base-patch32.
  ))
  # caption_digits' attributes are easy to see: 1,500 steps reached 0.998-1.0 held out, and the
  # loss had flattened long before.
  config.evaluation.classifier_optim = optim_config(
      batch_size=128, num_steps=1_000, learning_rate=2e-3, warmup_steps=50, eval_every=0,
      log_every=100, checkpoint_every=1_000, keep_checkpoints=1)

  # What `main` runs, in order; each step skips what the workdir already holds.
  # "stage1": train the MXQ-VAE; "encode": write the joint codes of both splits (skipped when
  # config.prior.encode_on_the_fly); "stage2": train the prior; "evaluate": generate
  # config.evaluation.num_samples pairs into {workdir}/samples and score them.
  config.stages = "stage1,encode,stage2,evaluate"

  config.mesh = ml_collections.ConfigDict(dict(
      data=-1,  # devices on the batch axis; -1 takes all devices fsdp leaves.
      fsdp=1,  # devices that shard parameters and optimizer state (1: replicated).
  ))
  return config


# ------------------------------------------------------------------------------------ presets


def _field(tree, path: str):
  """tree["a"]["b"] for path "a.b" (a ConfigDict or nested mappings)."""
  return functools.reduce(operator.getitem, path.split("."), tree)


def flat_fields(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested config as dotted fields ({"vqvae.embed_dim": 16, ...}, as `apply_table` takes
  them): scalars as they are, others as str (TensorBoard hparams, config diffs)."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      flat.update(flat_fields(value, f"{prefix}{key}."))
    else:
      scalar = isinstance(value, (bool, int, float, str))
      flat[f"{prefix}{key}"] = value if scalar else str(value)
  return flat


def apply_table(config: ml_collections.ConfigDict, table: Mapping[str, Any]) -> None:
  """Sets each dotted field of `table` ({"vqvae.embed_dim": 16, ...}) on `config`, in order.

  A table only changes fields of the schema: a name `base_config()` lacks raises ConfigError
  (an unlocked ConfigDict would silently grow it).
  """
  for path, value in table.items():
    parent, _, name = path.rpartition(".")
    try:
      node = _field(config, parent) if parent else config
    except KeyError:
      node = None
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ConfigError(f"{path}: no such config field (base_config in mxq_jax/config_lib.py "
                        "lists them)")
    node[name] = value


def load_beside(config_file: str | os.PathLike, name: str) -> types.ModuleType:
  """Module NAME.py from the folder of `config_file` (a config file passes its `__file__`).

  configs/ is no package and config files are loaded by path (ml_collections' config_flags,
  tests/conftest.py), so `import common` would depend on the working directory; the file's own
  location does not.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"mxq_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def from_json_file(path: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (`{workdir}/config.json`), lists back to tuples.

  Fields added to the schema after the workdir was written take today's defaults; where that
  changes a model's shape or meaning, its checkpoint's recorded signature no longer matches and
  restoring it is refused.
  """
  data = json.loads(files.read_text(path))

  def merge(config: ml_collections.ConfigDict, stored: dict) -> None:
    for key, value in stored.items():
      if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
        merge(config[key], value)
      else:
        config[key] = tuple(value) if isinstance(value, list) else value

  config = base_config()
  merge(config, data)
  return config


# ------------------------------------------------------------------------------- derived sizes


def image_downsampling(config: ml_collections.ConfigDict) -> int:
  """Image side / code grid side: each of the len(image_channels) stride-2 convs halves it."""
  return 2 ** len(config.vqvae.image_channels)


def image_grid_size(config: ml_collections.ConfigDict) -> int:
  """Side of the image code grid (the reference: 64 px / 8 = 8)."""
  return config.data.image_size // image_downsampling(config)


def text_positions(config: ml_collections.ConfigDict) -> int:
  """Text code positions: four VALID convs of kernel k shorten L by 4 (k - 1)."""
  return config.data.text_length - 4 * (config.vqvae.text_kernel - 1)


def num_joint_codes(config: ml_collections.ConfigDict) -> int:
  """N: image grid positions, then text positions."""
  return image_grid_size(config) ** 2 + text_positions(config)


def code_vocabulary_size(config: ml_collections.ConfigDict) -> int:
  """Ids the joint codes take (the prior's vocabulary, BOS excluded): K with one shared
  codebook, 2K with one per modality (`models.codebooks.ModalityQuantizers`)."""
  per_codebook = config.vqvae.codebook_size
  return 2 * per_codebook if config.vqvae.codebooks == "separate" else per_codebook


def prior_code_order(config: ml_collections.ConfigDict):
  """The permutation from stage-1 code positions (image grid, then text) to the prior's order."""
  import numpy as np
  num_image = image_grid_size(config) ** 2
  positions = np.arange(num_joint_codes(config))
  if config.prior.code_order == "text_first":
    return np.concatenate([positions[num_image:], positions[:num_image]])
  return positions


# ------------------------------------------------------------------------------ model configs
# The models take typed configs (mxq_jax/models imports nothing else of the package); these
# read them from the ConfigDict. The model packages are imported here, not at the top, so that
# loading a config file does not import jax.


def unrolled(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with every repeated block unrolled (scan_layers off): the same model and state,
  as XLA's cost analysis must see it (it counts a scanned loop's body once)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.vqvae.scan_layers = config.prior.scan_layers = False
  return config


def quantizer_config(config: ml_collections.ConfigDict) -> codebooks.QuantizerConfig:
  """config.vqvae's codebook settings."""
  from mxq_jax.models import codebooks
  vq = config.vqvae
  return codebooks.QuantizerConfig(
      codebook_size=vq.codebook_size, codebooks=vq.codebooks, update=vq.codebook_update,
      init=vq.codebook_init, ema_decay=vq.ema_decay, dead_code_restart=vq.dead_code_restart,
      dead_code_threshold=vq.dead_code_threshold, l2_normalize=vq.codebook_l2_normalize)


def mxq_vae_config(config: ml_collections.ConfigDict) -> mxq_vae.MXQVAEConfig:
  """The stage-1 model's sizes and switches: config.vqvae, config.data's vocabulary and the
  code geometry of `image_grid_size` and `text_positions`."""
  from mxq_jax.models import mxq_vae
  vq = config.vqvae
  return mxq_vae.MXQVAEConfig(
      grid_size=image_grid_size(config), text_positions=text_positions(config),
      vocab_size=config.data.vocab_size, image_channels=tuple(vq.image_channels),
      res_channels=vq.res_channels, num_res_blocks=vq.num_res_blocks,
      text_embed_dim=vq.text_embed_dim, text_channels=tuple(vq.text_channels),
      text_kernel=vq.text_kernel, text_head_relu=vq.text_head_relu, embed_dim=vq.embed_dim,
      fusion=vq.fusion, fusion_layers=vq.fusion_layers, fusion_heads=vq.fusion_heads,
      fusion_mlp_dim=vq.fusion_mlp_dim, dropout=vq.dropout,
      position_embeddings=vq.position_embeddings, quantizer=quantizer_config(config),
      decoder_inputs=vq.decoder_inputs, cross_mixer_init=vq.cross_mixer_init,
      text_mix_hidden=vq.text_mix_hidden, dtype=vq.dtype, scan_layers=vq.scan_layers)


# ---------------------------------------------------------------------------------- validation
# Each check is one row. A field row (field, ok(value), fix) fails as the one line
# f"{prefix}{field}={value}{fix}", the prefix naming the setting as the user typed it
# ("config." or "--"); a cross-field row (ok(config), message(config)) fails with its message.
# Field rows run first, so cross-field rows may rely on them (divisors >= 1).

FieldRule = tuple[str, Callable[[Any], bool], str]


def _at_least(low: int, note: str = "") -> tuple[Callable[[Any], bool], str]:
  return (lambda value: value >= low), f" must be >= {low}{note}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
  return (lambda value: value in choices), f": use {' or '.join(map(repr, choices))}"


_POSITIVE = ((lambda value: value > 0), " must be > 0")
_FRACTION = ((lambda value: 0.0 <= value < 1.0), " must be in [0, 1)")
_DTYPES = _one_of("float32", "bfloat16")

FIELD_RULES: tuple[FieldRule, ...] = (
    ("vqvae.image_channels", lambda value: 1 <= len(value) <= 5,
     ": give 1 to 5 widths, one per stride-2 conv (the reference has 3)"),
    ("vqvae.text_channels", lambda value: len(value) == 4,
     ": give 4 widths, one per VALID Conv1d (as the reference)"),
    ("data.vocab_size", lambda value: value >= 16, " is too small; use at least 16"),
    ("data.split", *_one_of("official", "class")),
    ("data.caption_choice", *_one_of("random", "first")),
    ("masking.image_patch", *_at_least(1)),
    ("masking.image_ratio", *_FRACTION),
    ("masking.text_ratio", *_FRACTION),
    ("vqvae.fusion_heads", *_at_least(1)),
    ("vqvae.codebook_update", *_one_of("ema", "gradient")),
    ("vqvae.codebook_init", *_one_of("data", "uniform")),
    ("vqvae.cross_mixer_init", *_one_of("random", "routing")),
    ("vqvae.fusion", *_one_of("transformer", "none")),
    ("vqvae.codebooks", *_one_of("shared", "separate")),
    ("vqvae.decoder_inputs", *_one_of("joint", "own")),
    ("vqvae.dtype", *_DTYPES),
    ("prior.num_layers", *_at_least(1)),
    ("prior.num_heads", *_at_least(1)),
    ("prior.dim", *_at_least(1)),
    ("prior.mlp_dim", *_at_least(1)),
    ("prior.dropout", *_FRACTION),
    ("prior.dtype", *_DTYPES),
    ("prior.code_order", *_one_of("image_first", "text_first")),
    ("prior.grid_rotary_dims", *_at_least(0)),
    ("mesh.fsdp", *_at_least(1)),
    ("evaluation.num_samples", *_at_least(1)),
)

# Every `optim_config()` that `validate` checks, and the rows of each (relative to it).
OPTIMS = ("vqvae.optim", "prior.optim", "evaluation.classifier_optim")
OPTIM_RULES: tuple[FieldRule, ...] = (
    ("num_steps", *_at_least(1)),
    ("batch_size", *_at_least(1)),
    ("learning_rate", *_POSITIVE),
    ("warmup_steps", *_at_least(0)),
    ("log_every", *_at_least(1)),
    ("eval_every", *_at_least(0, " (0: only at the end)")),
    ("checkpoint_every", *_at_least(1, " (a final checkpoint is always written)")),
    ("keep_checkpoints", *_at_least(1)),
)

# config.sampling, or the sampling flags of `mxq_jax.sample` (relative names).
SAMPLING_RULES: tuple[FieldRule, ...] = (
    ("top_k", *_at_least(1, " (the codebook size or more: no top-k)")),
    ("top_p", lambda value: 0.0 < value <= 1.0, " must be in (0, 1]; 1.0 turns top-p off"),
    ("temperature", *_POSITIVE),
    ("image_temperature", lambda value: value is None or value > 0.0, " must be > 0"),
)


class CrossRule(NamedTuple):
  ok: Callable[[ml_collections.ConfigDict], bool]
  message: Callable[[ml_collections.ConfigDict], str]


def _divisible(field: str, by: str) -> CrossRule:
  return CrossRule(
      lambda c: _field(c, field) % _field(c, by) == 0,
      lambda c: f"config.{field}={_field(c, field)} must be divisible by config.{by}="
                f"{_field(c, by)}")


CROSS_RULES: tuple[CrossRule, ...] = (
    CrossRule(
        lambda c: c.data.image_size > 0 and c.data.image_size % image_downsampling(c) == 0,
        lambda c: f"config.data.image_size={c.data.image_size} must be a positive multiple of "
                  f"{image_downsampling(c)}: the image encoder halves it "
                  f"{len(c.vqvae.image_channels)} times (len(config.vqvae.image_channels))"),
    CrossRule(
        lambda c: c.data.image_size % c.masking.image_patch == 0,
        lambda c: f"config.masking.image_patch={c.masking.image_patch} must divide "
                  f"config.data.image_size={c.data.image_size}"),
    CrossRule(
        lambda c: text_positions(c) >= 1,
        lambda c: f"config.data.text_length={c.data.text_length} is too short for "
                  f"config.vqvae.text_kernel={c.vqvae.text_kernel}: four VALID convs need "
                  f"text_length > {4 * (c.vqvae.text_kernel - 1)}; raise text_length or lower "
                  "text_kernel"),
    _divisible("vqvae.embed_dim", "vqvae.fusion_heads"),
    CrossRule(
        lambda c: c.vqvae.codebook_update != "gradient" or not (
            c.vqvae.dead_code_restart or c.vqvae.codebook_init == "data"),
        lambda c: "config.vqvae.dead_code_restart and codebook_init='data' need "
                  "codebook_update='ema'; set --config.vqvae.codebook_update=ema, or "
                  "dead_code_restart=False and codebook_init=uniform for the reference's "
                  "gradient codebook"),
    CrossRule(
        lambda c: c.vqvae.cross_mixer_init != "routing"
        or c.vqvae.text_mix_hidden >= 2 * text_positions(c),
        lambda c: f"config.vqvae.cross_mixer_init='routing' needs config.vqvae.text_mix_hidden "
                  f">= {2 * text_positions(c)} (2 x the text positions); raise it or use "
                  "'random'"),
    _divisible("prior.dim", "prior.num_heads"),
    CrossRule(
        lambda c: c.prior.grid_rotary_dims % 4 == 0
        and c.prior.grid_rotary_dims <= c.prior.dim // c.prior.num_heads,
        lambda c: f"config.prior.grid_rotary_dims={c.prior.grid_rotary_dims} must be a multiple "
                  f"of 4 and at most the head dim, prior.dim / prior.num_heads = "
                  f"{c.prior.dim // c.prior.num_heads}"),
)


def _show(value) -> str:
  """A value as the user would type it: strings quoted, sequences as tuples."""
  if isinstance(value, str):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return str(tuple(value))
  return str(value)


def _check_fields(tree, rules: tuple[FieldRule, ...], prefix: str) -> None:
  for field, ok, fix in rules:
    value = _field(tree, field)
    if not ok(value):
      raise ConfigError(f"{prefix}{field}={_show(value)}{fix}")


def check_divisible_batch(batch_size: int, num_devices: int | None, where: str) -> None:
  """Raises ConfigError unless a global batch (examples per step) splits over the devices.

  `where` names the setting as the user typed it ("config.vqvae.optim.batch_size",
  "--batch_size"); num_devices None or 0 skips the check.
  """
  if num_devices and batch_size % num_devices:
    raise ConfigError(f"{where}={batch_size} must be divisible by the {num_devices} devices of "
                      "the mesh; pick a multiple")


def evaluation_batch_size(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """The sampler's batch in a run's evaluate stage: config.sampling.batch_size, no more than
  the pairs asked for, rounded down to a multiple of the devices (at least one a device)."""
  batch_size = min(config.sampling.batch_size, config.evaluation.num_samples)
  return max(batch_size - batch_size % num_devices, num_devices)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError (one line: field, value, fix) for a config that cannot train.

  num_devices: the devices every global batch is split over (None: not checked).
  """
  _check_fields(config, FIELD_RULES, "config.")
  for path in OPTIMS:
    optim = _field(config, path)
    _check_fields(optim, OPTIM_RULES, f"config.{path}.")
    check_divisible_batch(optim.batch_size, num_devices, f"config.{path}.batch_size")
  for rule in CROSS_RULES:
    if not rule.ok(config):
      raise ConfigError(rule.message(config))
  _check_fields(config.sampling, SAMPLING_RULES, "config.sampling.")
  parse_stages(config.stages)


def validate_sampling(top_k: int, top_p: float, temperature: float, prefix: str = "--",
                      image_temperature: float | None = None) -> None:
  """Sampling settings; `prefix` names them as the user typed them (flags or config fields)."""
  _check_fields(dict(top_k=top_k, top_p=top_p, temperature=temperature,
                     image_temperature=image_temperature), SAMPLING_RULES, prefix)


STAGES = ("stage1", "encode", "stage2", "evaluate")


def parse_stages(stages: str) -> tuple[str, ...]:
  """config.stages ("stage1,encode,stage2" or a subset) -> the names, in run order."""
  names = tuple(name.strip() for name in stages.split(",") if name.strip())
  unknown = [name for name in names if name not in STAGES]
  if unknown or not names:
    raise ConfigError(
        f"config.stages={stages!r}: use a comma-separated subset of {','.join(STAGES)}")
  return tuple(name for name in STAGES if name in names)
