"""Size presets shared by the configs: tables of dotted config field -> value.

A config file reaches this one through its own location (configs/ is no package, and config
files are loaded by path), then applies a table on top of `config_lib.base_config()`:

  common = config_lib.load_beside(__file__, "common")
  config_lib.apply_table(config, common.SMOKE_SIZES)

Tables are applied in order and a later one wins; every field they name exists in the schema
(`mxq_jax/config_lib.py`, where each field's unit is documented).
"""

# The reference sizes of the design card (shared/design/mxq-vae.md), which are also
# `base_config()`'s: 64 px, 64 tokens, an 8x8 grid + 8 text positions = 72 joint codes, a
# 256 x 128 codebook, 6 residual blocks.
PAPER_SIZES = {
    "data.image_size": 64,
    "data.text_length": 64,
    "vqvae.image_channels": (64, 128, 256),
    "vqvae.res_channels": 256,
    "vqvae.num_res_blocks": 6,
    "vqvae.text_embed_dim": 128,
    "vqvae.text_channels": (224, 320, 416, 512),
    "vqvae.text_kernel": 15,  # 64 - 4 * (15 - 1) = 8 text positions.
    "vqvae.embed_dim": 128,
    "vqvae.fusion_layers": 4,
    "vqvae.fusion_heads": 2,
    "vqvae.fusion_mlp_dim": 512,
    "vqvae.dropout": 0.1,
    "vqvae.codebook_size": 256,
    "vqvae.text_mix_hidden": 32,
    "vqvae.optim.batch_size": 384,  # the authors' batch.
    "prior.num_layers": 8,
    "prior.num_heads": 8,
    "prior.dim": 512,
    "prior.mlp_dim": 2048,
    "prior.dropout": 0.1,
    "prior.optim.batch_size": 384,
}

# The paper's birds/flowers sizes: the reference networks at 128 px. Three stride-2 convs give
# a 16x16 grid; four VALID convs of kernel 16 turn 80 tokens into 20 text positions (16x16 + 20
# = 276 joint codes); the text mixer's hidden width is 128 at this size (design card).
PHOTO_SIZES = {
    **PAPER_SIZES,
    "data.image_size": 128,
    "data.text_length": 80,
    "vqvae.text_kernel": 16,
    "vqvae.text_mix_hidden": 128,
    "masking.image_patch": 16,  # the same 8x8 patch grid the 64 px reference masks.
}

# cub, flowers, coco: photos with several captions each, at the paper's 128 px sizes.
PHOTO_DATASET = {
    **PHOTO_SIZES,
    "data.caption_choice": "random",  # an epoch is an epoch of images, a caption each.
    "data.random_flip": True,  # the captions describe birds and flowers, not sides.
    "data.lowercase": True,
    # Stored codes would pair each image with its first caption only; encoding each batch as it
    # comes lets the prior see every caption (the encoder is a fraction of a prior step here).
    "prior.encode_on_the_fly": True,
    "evaluation.num_samples": 1_000,
    # One GPU or a TPU v5e-8 (16 a chip). On an H200 stage 1 took 10.0 GB in fp32, 6.8 in
    # bf16 at this batch (README, "Train-step throughput").
    "vqvae.optim.batch_size": 128,
    "prior.optim.batch_size": 128,
    # Each repeated block compiled once (models/repeated.py): the cub:v5e-8 prior's train step
    # compiled for a v5e-8 in 29 s instead of 64 s, stage 1's in 79 s instead of 91 s (its
    # convolutions dominate), `python -m mxq_jax.aot` on a 2-core CPU (README, "Sharding").
    "vqvae.scan_layers": True,
    "prior.scan_layers": True,
}

# A tiny model and a few steps: enough to exercise every code path in seconds (tests, install
# checks). 16 px, 24 tokens (k = 5): a 2x2 grid + 8 text positions = 12 joint codes.
SMOKE_SIZES = {
    "data.image_size": 16,
    "masking.image_patch": 8,
    "data.num_train": 256,
    "data.num_test": 64,
    "data.text_length": 24,
    "data.vocab_size": 96,  # caption_digits' captions fit 24 tokens at this vocabulary.
    "vqvae.image_channels": (8, 16, 16),
    "vqvae.res_channels": 16,
    "vqvae.num_res_blocks": 1,
    "vqvae.text_embed_dim": 16,
    "vqvae.text_channels": (16, 16, 16, 16),
    "vqvae.text_kernel": 5,
    "vqvae.embed_dim": 16,
    "vqvae.fusion_layers": 1,
    "vqvae.fusion_heads": 2,
    "vqvae.fusion_mlp_dim": 32,
    "vqvae.codebook_size": 32,
    "vqvae.text_mix_hidden": 16,  # routing init: at least 2 x the 8 text positions.
    "vqvae.optim.batch_size": 16,
    "vqvae.optim.num_steps": 6,
    "vqvae.optim.warmup_steps": 2,
    "vqvae.optim.log_every": 2,
    "vqvae.optim.eval_every": 0,
    "vqvae.optim.checkpoint_every": 3,
    "prior.num_layers": 1,
    "prior.num_heads": 2,
    "prior.dim": 32,
    "prior.mlp_dim": 64,
    "prior.optim.batch_size": 16,
    "prior.optim.num_steps": 6,
    "prior.optim.warmup_steps": 2,
    "prior.optim.log_every": 2,
    "prior.optim.eval_every": 0,
    "prior.optim.checkpoint_every": 3,
    "sampling.batch_size": 16,
    "evaluation.num_samples": 32,
    "evaluation.min_classifier_accuracy": 0.0,  # 6 steps cannot make a reliable classifier.
    "evaluation.classifier_optim.batch_size": 16,
    "evaluation.classifier_optim.num_steps": 6,
    "evaluation.classifier_optim.warmup_steps": 2,
    "evaluation.classifier_optim.log_every": 2,
    "evaluation.classifier_optim.checkpoint_every": 6,
}

# The photo datasets' smoke variant: a directory laid out like the real downloads, with a few
# images (tests).
PHOTO_SMOKE_SIZES = {
    **SMOKE_SIZES,
    "data.vocab_size": 48,  # few enough pieces for a few dozen captions to fill.
}


# ------------------------------------------------------------------------- photo datasets

# bf16 compute (parameters and Adam state stay fp32): 1.70x the fp32 step rate for CUB's stage 1
# on an H200 (README, "Train-step throughput"); what accelerators should train with.
BF16 = {"vqvae.dtype": "bfloat16", "prior.dtype": "bfloat16"}

# The slices people rent, at the paper sizes (global batches; the mesh stays data-parallel, which
# suits 26M parameters). Each fits by `python -m mxq_jax.aot` (its table in the README).
SLICES = {
    # One GPU: 128 pairs a step, 6.8 GB and 46 steps/s for stage 1 on an H200.
    "gpu": BF16,
    # A TPU v5e-8, one host of 8 chips with 16 GiB each: the same 128 (16 a chip).
    "v5e-8": BF16,
    # A TPU v5e-32, 8 hosts of 4 chips: the authors' batch, 384 (12 a chip).
    "v5e-32": {**BF16, "vqvae.optim.batch_size": 384, "prior.optim.batch_size": 384},
}

# What each `:ARG` applies last.
PHOTO_VARIANTS = {"default": {}, "smoke": PHOTO_SMOKE_SIZES, **SLICES}


def photo_config(arg: str | None, dataset_fields: dict):
  """cub, flowers, coco: `base_config()`, PHOTO_DATASET (128 px, 80 tokens, 276 codes), the
  dataset's own fields, then the `:ARG` variant (smoke: a tiny model at 16 px, a few steps;
  gpu, v5e-8, v5e-32: the batch and precision for that hardware, SLICES)."""
  from mxq_jax import config_lib  # pylint: disable=g-import-not-at-top
  variant = config_lib.parse_variant(arg, allowed=tuple(PHOTO_VARIANTS))
  config = config_lib.base_config()
  for table in (PHOTO_DATASET, dataset_fields, PHOTO_VARIANTS[variant]):
    config_lib.apply_table(config, table)
  return config
