"""The config schema: every field, its unit and default, and the checks run before training.

`base_config()` holds the reference values of the design card (`shared/design/mxq-vae.md`);
files in `configs/` start from it and change what their experiment needs. `validate` turns a
bad value into one `ConfigError` line that says what is wrong and how to fix it.
"""

import ml_collections


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
      # The order the prior generates the joint codes in: "text_first" (the caption's codes,
      # which carry the pair's content in few positions, then the image grid in raster order)
      # or "image_first" (the reference: the image grid, then the text positions).
      code_order="text_first",
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
      # Real datasets: FID and CLIP score from local weight files (README, "Evaluation");
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


def apply_paper_sizes(config: ml_collections.ConfigDict) -> None:
  """The reference sizes: 64 px, 64 tokens, 72 joint codes, 256 x 128 codebook, 6 res blocks."""
  reference = base_config()
  config.data.image_size = reference.data.image_size
  config.data.text_length = reference.data.text_length
  for key in ("image_channels", "res_channels", "num_res_blocks", "text_embed_dim",
              "text_channels", "text_kernel", "embed_dim", "fusion_layers", "fusion_heads",
              "fusion_mlp_dim", "dropout", "codebook_size", "text_mix_hidden"):
    config.vqvae[key] = reference.vqvae[key]
  config.vqvae.optim.batch_size = reference.vqvae.optim.batch_size  # 384, the authors' batch.
  for key in ("num_layers", "num_heads", "dim", "mlp_dim", "dropout"):
    config.prior[key] = reference.prior[key]
  config.prior.optim.batch_size = reference.prior.optim.batch_size


def apply_photo_sizes(config: ml_collections.ConfigDict) -> None:
  """The paper's birds/flowers sizes: 128 px, 80 tokens, 16x16 + 20 = 276 joint codes.

  The reference networks at 128 px: three stride-2 convs give the 16x16 grid; four VALID
  convs of kernel 16 turn 80 tokens into 20 text positions; the text mixer's hidden width is
  128 at this size (design card).
  """
  apply_paper_sizes(config)
  config.data.image_size = 128
  config.data.text_length = 80
  config.vqvae.text_kernel = 16
  config.vqvae.text_mix_hidden = 128
  config.masking.image_patch = 16  # the same 8x8 patch grid the 64 px reference masks.


def photo_dataset_config(name: str, variant: str) -> ml_collections.ConfigDict:
  """cub, flowers, coco: photos with several captions each, at the paper's 128 px sizes.

  variant "smoke": the tiny model and steps of `apply_smoke_sizes`, for a directory laid out
  like the real downloads (tests use a few images).
  """
  config = base_config()
  apply_photo_sizes(config)
  config.data.name = name
  config.data.caption_choice = "random"  # an epoch is an epoch of images, a caption each.
  config.data.random_flip = True  # the captions describe birds and flowers, not sides.
  config.data.lowercase = True
  # Stored codes would pair each image with its first caption only; encoding each batch as it
  # comes lets the prior see every caption (the encoder is a fraction of a prior step here).
  config.prior.encode_on_the_fly = True
  config.evaluation.num_samples = 1_000
  if variant == "smoke":
    apply_smoke_sizes(config)
    config.data.vocab_size = 48  # few enough pieces for a few dozen captions to fill.
  return config


def apply_smoke_sizes(config: ml_collections.ConfigDict) -> None:
  """A tiny model and a few steps: enough to exercise every code path in seconds."""
  config.data.image_size = 16
  config.masking.image_patch = base_config().masking.image_patch
  config.data.num_train = 256
  config.data.num_test = 64
  config.data.text_length = 24
  config.data.vocab_size = 96  # caption_digits' captions fit 24 tokens at this vocabulary.
  vq = config.vqvae
  vq.image_channels = (8, 16, 16)
  vq.res_channels = 16
  vq.num_res_blocks = 1
  vq.text_embed_dim = 16
  vq.text_channels = (16, 16, 16, 16)
  vq.text_kernel = 5
  vq.embed_dim = 16
  vq.fusion_layers = 1
  vq.fusion_heads = 2
  vq.fusion_mlp_dim = 32
  vq.codebook_size = 32
  vq.text_mix_hidden = 16  # routing init: at least 2 x the 8 text positions.
  vq.optim.update(batch_size=16, num_steps=6, warmup_steps=2, log_every=2, eval_every=0,
                  checkpoint_every=3)
  config.prior.update(num_layers=1, num_heads=2, dim=32, mlp_dim=64)
  config.prior.optim.update(batch_size=16, num_steps=6, warmup_steps=2, log_every=2,
                            eval_every=0, checkpoint_every=3)
  config.sampling.batch_size = 16
  config.evaluation.num_samples = 32
  config.evaluation.min_classifier_accuracy = 0.0  # 6 steps cannot make a reliable classifier.
  config.evaluation.classifier_optim.update(batch_size=16, num_steps=6, warmup_steps=2,
                                            log_every=2, checkpoint_every=6)


def from_json_file(path: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (`{workdir}/config.json`), lists back to tuples.

  Fields added to the schema after the workdir was written take today's defaults; where that
  changes a model's shape or meaning, its checkpoint's recorded signature no longer matches and
  restoring it is refused.
  """
  import json
  with open(path) as f:
    data = json.load(f)

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


def prior_code_order(config: ml_collections.ConfigDict):
  """The permutation from stage-1 code positions (image grid, then text) to the prior's order."""
  import numpy as np
  num_image = image_grid_size(config) ** 2
  positions = np.arange(num_joint_codes(config))
  if config.prior.code_order == "text_first":
    return np.concatenate([positions[num_image:], positions[:num_image]])
  return positions


# ---------------------------------------------------------------------------------- validation


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError (one line: field, value, fix) for a config that cannot train."""
  data, vq, masking = config.data, config.vqvae, config.masking
  if not 1 <= len(vq.image_channels) <= 5:
    raise ConfigError(
        f"config.vqvae.image_channels={tuple(vq.image_channels)}: give 1 to 5 widths, one per "
        "stride-2 conv (the reference has 3)")
  scale = image_downsampling(config)
  if data.image_size <= 0 or data.image_size % scale:
    raise ConfigError(
        f"config.data.image_size={data.image_size} must be a positive multiple of {scale}: the "
        f"image encoder halves it {len(vq.image_channels)} times (len(config.vqvae."
        "image_channels))")
  if data.image_size % masking.image_patch:
    raise ConfigError(
        f"config.masking.image_patch={masking.image_patch} must divide "
        f"config.data.image_size={data.image_size}")
  if text_positions(config) < 1:
    raise ConfigError(
        f"config.data.text_length={data.text_length} is too short for "
        f"config.vqvae.text_kernel={vq.text_kernel}: four VALID convs need text_length > "
        f"{4 * (vq.text_kernel - 1)}; raise text_length or lower text_kernel")
  if data.vocab_size < 16:
    raise ConfigError(f"config.data.vocab_size={data.vocab_size} is too small; use at least 16")
  for name in ("image_ratio", "text_ratio"):
    if not 0.0 <= masking[name] < 1.0:
      raise ConfigError(f"config.masking.{name}={masking[name]} must be in [0, 1)")
  if vq.embed_dim % vq.fusion_heads:
    raise ConfigError(
        f"config.vqvae.embed_dim={vq.embed_dim} must be divisible by "
        f"config.vqvae.fusion_heads={vq.fusion_heads}")
  if vq.codebook_update not in ("ema", "gradient"):
    raise ConfigError(
        f"config.vqvae.codebook_update={vq.codebook_update!r}: use 'ema' or 'gradient'")
  if vq.codebook_init not in ("data", "uniform"):
    raise ConfigError(f"config.vqvae.codebook_init={vq.codebook_init!r}: use 'data' or 'uniform'")
  if vq.codebook_update == "gradient" and (vq.dead_code_restart or vq.codebook_init == "data"):
    raise ConfigError(
        "config.vqvae.dead_code_restart and codebook_init='data' need codebook_update='ema'; "
        "set --config.vqvae.codebook_update=ema, or dead_code_restart=False and "
        "codebook_init=uniform for the reference's gradient codebook")
  if vq.cross_mixer_init not in ("random", "routing"):
    raise ConfigError(
        f"config.vqvae.cross_mixer_init={vq.cross_mixer_init!r}: use 'random' or 'routing'")
  if vq.cross_mixer_init == "routing" and vq.text_mix_hidden < 2 * text_positions(config):
    raise ConfigError(
        f"config.vqvae.cross_mixer_init='routing' needs config.vqvae.text_mix_hidden >= "
        f"{2 * text_positions(config)} (2 x the text positions); raise it or use 'random'")
  for name, allowed in (("fusion", ("transformer", "none")), ("codebooks", ("shared", "separate")),
                        ("decoder_inputs", ("joint", "own"))):
    if vq[name] not in allowed:
      raise ConfigError(f"config.vqvae.{name}={vq[name]!r}: use {' or '.join(map(repr, allowed))}")
  if data.split not in ("official", "class"):
    raise ConfigError(f"config.data.split={data.split!r}: use 'official' or 'class'")
  if data.caption_choice not in ("random", "first"):
    raise ConfigError(f"config.data.caption_choice={data.caption_choice!r}: use 'random' or 'first'")
  if vq.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"config.vqvae.dtype={vq.dtype!r}: use 'float32' or 'bfloat16'")
  validate_optim(vq.optim, "config.vqvae.optim", num_devices)
  validate_prior(config, num_devices)
  validate_sampling(config.sampling.top_k, config.sampling.top_p, config.sampling.temperature,
                    "config.sampling.", config.sampling.image_temperature)
  parse_stages(config.stages)
  if config.mesh.fsdp < 1:
    raise ConfigError(f"config.mesh.fsdp={config.mesh.fsdp} must be >= 1")


def validate_optim(optim: ml_collections.ConfigDict, where: str, num_devices: int | None) -> None:
  if optim.num_steps < 1:
    raise ConfigError(f"{where}.num_steps={optim.num_steps} must be >= 1")
  if optim.batch_size < 1:
    raise ConfigError(f"{where}.batch_size={optim.batch_size} must be >= 1")
  if num_devices and optim.batch_size % num_devices:
    raise ConfigError(
        f"{where}.batch_size={optim.batch_size} must be divisible by the {num_devices} devices "
        "of the mesh; pick a multiple")
  if optim.learning_rate <= 0:
    raise ConfigError(f"{where}.learning_rate={optim.learning_rate} must be > 0")


def validate_prior(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
  prior = config.prior
  if prior.num_layers < 1 or prior.dim < 1 or prior.mlp_dim < 1:
    raise ConfigError("config.prior.num_layers, dim and mlp_dim must be >= 1")
  if prior.num_heads < 1 or prior.dim % prior.num_heads:
    raise ConfigError(
        f"config.prior.dim={prior.dim} must be divisible by config.prior.num_heads="
        f"{prior.num_heads}")
  if not 0.0 <= prior.dropout < 1.0:
    raise ConfigError(f"config.prior.dropout={prior.dropout} must be in [0, 1)")
  if prior.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"config.prior.dtype={prior.dtype!r}: use 'float32' or 'bfloat16'")
  if prior.code_order not in ("image_first", "text_first"):
    raise ConfigError(
        f"config.prior.code_order={prior.code_order!r}: use 'image_first' or 'text_first'")
  validate_optim(prior.optim, "config.prior.optim", num_devices)


def validate_sampling(top_k: int, top_p: float, temperature: float, prefix: str = "--",
                      image_temperature: float | None = None) -> None:
  """Sampling settings; `prefix` names them as the user typed them (flags or config fields)."""
  if top_k < 1:
    raise ConfigError(f"{prefix}top_k={top_k} must be >= 1 (the codebook size or more: no top-k)")
  if not 0.0 < top_p <= 1.0:
    raise ConfigError(f"{prefix}top_p={top_p} must be in (0, 1]; 1.0 turns top-p off")
  if not temperature > 0.0:
    raise ConfigError(f"{prefix}temperature={temperature} must be > 0")
  if image_temperature is not None and not image_temperature > 0.0:
    raise ConfigError(f"{prefix}image_temperature={image_temperature} must be > 0")


STAGES = ("stage1", "encode", "stage2", "evaluate")


def parse_stages(stages: str) -> tuple[str, ...]:
  """config.stages ("stage1,encode,stage2" or a subset) -> the names, in run order."""
  names = tuple(name.strip() for name in stages.split(",") if name.strip())
  unknown = [name for name in names if name not in STAGES]
  if unknown or not names:
    raise ConfigError(
        f"config.stages={stages!r}: use a comma-separated subset of {','.join(STAGES)}")
  return tuple(name for name in STAGES if name in names)
