r"""MXQ-VAE on Caption-MNIST (caption_mnist): real MNIST digits, coloured, placed, captioned.

The paper's sizes: 64 px images, 64-token captions, 8x8 image + 8 text = 72 joint codes, a
256 x 128 codebook. MNIST (60,000 train / 10,000 test) is read with TFDS from config.data.data_dir
(downloaded there on first use) and caption_mnist is written beside it. Arguments:

  --config=configs/mnist.py          the paper's sizes, all of MNIST
  --config=configs/mnist.py:smoke    a tiny model, 256 + 64 examples at 16 px, a few steps

Batches are global (all devices together) and the mesh is data-parallel:
  * one GPU: as is, 384 pairs per step (the authors' batch) at 64 px; add
    --config.vqvae.dtype=bfloat16 --config.prior.dtype=bfloat16 for speed.
  * TPU v5e-8 (8 chips, 16 GB each): as is. mesh.data=-1 spreads the 384 over the 8 chips (48
    each); the model (tens of millions of parameters) stays replicated (mesh.fsdp=1). Use
    bfloat16 as above, and a gs:// data_dir and workdir that every host reads.

Any field can be overridden on the command line: --config.vqvae.optim.num_steps=2000.
"""

import ml_collections

from mxq_jax import config_lib

common = config_lib.load_beside(__file__, "common")  # configs/common.py: the size tables.

# What each `:ARG` applies last; smoke keeps the dataset (256 + 64 examples at 16 px).
VARIANTS = {"default": {}, "smoke": common.SMOKE_SIZES}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_lib.parse_variant(arg, allowed=tuple(VARIANTS))
  config = config_lib.base_config()
  # 64 px, 64 tokens, 72 codes, 256 x 128 codebook (base_config's own sizes, stated here).
  config_lib.apply_table(config, common.PAPER_SIZES)

  config.data.name = "caption_mnist"
  config.data.num_train = 0  # MNIST train examples used; 0 (or more than 60,000): all.
  config.data.num_test = 0  # MNIST test examples used; 0 (or more than 10,000): all.
  config.data.dataset_seed = 0  # seeds each example's colour, position, size, caption, jitter.
  # SentencePiece pieces, the 5 special ones included: the caption scheme's few words make at
  # most 96 unigram pieces (measured on 60,000 captions), and captions take <= 24 tokens.
  config.data.vocab_size = 96
  config.data.random_flip = False  # captions name positions: a flip would contradict them.

  config.mesh.data = -1  # devices on the batch axis: all (1 GPU, or a v5e-8's 8 chips).
  config.mesh.fsdp = 1  # parameters replicated: the model is small.

  # Handwriting is harder to read than a font: the attribute classifier gets about 9 epochs
  # (font digits needed 1,000 steps) before its 0.99 held-out accuracy per attribute is checked.
  config.evaluation.classifier_optim.num_steps = 4_000

  config_lib.apply_table(config, VARIANTS[variant])
  return config
