r"""MXQ-VAE on caption_digits, the offline synthetic Caption-MNIST (the default).

Sized to train both stages and score 1,000 generated pairs on a 2-core CPU in about 18 minutes.
Arguments:

  --config=configs/synthetic.py          32 px images, 24 tokens, a small model
  --config=configs/synthetic.py:long     the default with stage 1 trained twice as long (10,000
                                          steps: 24.5 dB; generated pairs' coherence 0.675 instead
                                          of 0.415); about 23 minutes
  --config=configs/synthetic.py:paper    the reference sizes of the design card (64 px, 64 tokens,
                                          8x8 + 8 = 72 joint codes, 256 x 128 codebook)
  --config=configs/synthetic.py:smoke    a tiny model and a few steps (tests, install checks)

Any field can be overridden on the command line: --config.vqvae.optim.num_steps=2000.
"""

import ml_collections

from mxq_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_lib.parse_variant(arg, allowed=("default", "long", "paper", "smoke"))
  config = config_lib.base_config()

  config.data.name = "caption_digits"
  config.data.image_size = 32  # px, square; must be a multiple of 8 (3 stride-2 convs).
  config.data.num_train = 20_000  # examples rendered for the train split.
  config.data.num_test = 2_000  # examples rendered for the test split.
  config.data.text_length = 24  # tokens per caption, BOS and EOS included.
  config.data.vocab_size = 96  # SentencePiece pieces, the 5 special ones included.

  vq = config.vqvae
  vq.image_channels = (16, 32, 64)  # channels of the three stride-2 convs.
  vq.res_channels = 64  # channels of the residual stack.
  vq.num_res_blocks = 1
  vq.embed_dim = 64  # D: fusion width and codebook vector size.
  vq.text_embed_dim = 32
  vq.text_channels = (48, 64, 64, 64)  # the four Conv1d widths.
  vq.text_kernel = 3  # 24 tokens -> 24 - 4 * (3 - 1) = 16 text codes; N = 4 * 4 + 16 = 32.
  vq.text_mix_hidden = 32
  vq.fusion_layers = 2
  vq.fusion_heads = 2
  vq.fusion_mlp_dim = 128
  vq.dropout = 0.0
  vq.codebook_size = 512

  vq.optim.batch_size = 32
  vq.optim.num_steps = 5_000
  vq.optim.learning_rate = 2e-3
  vq.optim.warmup_steps = 250

  prior = config.prior  # N = 32 codes of K = 512: a small GPT that trains in minutes on 2 cores.
  prior.num_layers = 4
  prior.num_heads = 4
  prior.dim = 128
  prior.mlp_dim = 512
  prior.dropout = 0.0  # 1,800 steps are under 6 epochs: no overfitting to fight yet.
  prior.optim.batch_size = 64
  prior.optim.num_steps = 1_800
  prior.optim.learning_rate = 2e-3
  prior.optim.warmup_steps = 100
  prior.optim.eval_every = 600
  prior.optim.checkpoint_every = 600

  if variant == "long":
    vq.optim.num_steps = 10_000  # 5,000 steps stop while the image PSNR is still rising.
    vq.optim.eval_every = 2_500
  elif variant == "paper":
    config_lib.apply_paper_sizes(config)
  elif variant == "smoke":
    config_lib.apply_smoke_sizes(config)
  return config
