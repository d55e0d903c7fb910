"""Stage 1: the MXQ-VAE objective, its test-split evaluation and previews, as a `trainer.Task`.

Training inputs are masked here, inside the jitted step (image patches zeroed, caption tokens
replaced by the mask id), and the loss asks for the whole, unmasked pair. Masking on the device
from the step's key keeps the data iterator free of random state, so resuming is exact.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from mxq_jax import config_lib
from mxq_jax.training import masking, trainer as trainer_lib
from mxq_jax.data import normalization, tokenizer as tokenizer_lib
from mxq_jax.models import mxq_vae

NUM_PREVIEWS = 8  # test pairs shown as original / reconstruction in TensorBoard.


def model_signature(config: ml_collections.ConfigDict) -> dict:
  """The config fields that fix the stage-1 state's shapes (checked against checkpoints)."""
  # scan_layers changes how the blocks compile, not the state.
  vq = {k: v for k, v in config.vqvae.to_dict().items() if k not in ("optim", "scan_layers")}
  return dict(vq, image_size=config.data.image_size, text_length=config.data.text_length,
              vocab_size=config.data.vocab_size)


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> mxq_vae.MXQVAE:
  return mxq_vae.MXQVAE(config_lib.mxq_vae_config(config), rngs=rngs)


# ------------------------------------------------------------------------------ the metrics


def psnr_per_image(reconstruction_BxHxWxC: jax.Array, target_BxHxWxC: jax.Array) -> jax.Array:
  """PSNR in dB of each image, in [0, 1] pixel space (the reconstruction clipped to it)."""
  recon = normalization.denormalize_images(reconstruction_BxHxWxC)  # clipped to [0, 1].
  target = normalization.denormalize_images(target_BxHxWxC)
  mse = jnp.mean(jnp.square(recon - target), axis=(1, 2, 3))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def text_loss_and_accuracy(logits_BxLxV: jax.Array, tokens_BxL: jax.Array):
  """Cross-entropy and token accuracy over the real (non-pad) target positions."""
  real = (tokens_BxL != tokenizer_lib.PAD_ID).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxLxV.astype(jnp.float32), tokens_BxL)
  correct = (jnp.argmax(logits_BxLxV, axis=-1) == tokens_BxL).astype(jnp.float32)
  count = jnp.maximum(real.sum(), 1.0)
  return (ce * real).sum() / count, (correct * real).sum() / count


def random_batch(config: ml_collections.ConfigDict, batch_size: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of the configured shapes without data: normal pixels, captions of random length.

  For benchmarks and tests: tokens are BOS, random pieces, EOS, then PAD.
  """
  rng = np.random.default_rng(seed)
  size, length = config.data.image_size, config.data.text_length
  tokens_BxL = np.full((batch_size, length), tokenizer_lib.PAD_ID, np.int32)
  for row in tokens_BxL:
    n = rng.integers(length // 2, length - 1)  # pieces; BOS and EOS make n + 2 <= length.
    row[0], row[n + 1] = tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID
    row[1:n + 1] = rng.integers(tokenizer_lib.NUM_SPECIAL, config.data.vocab_size, size=n)
  images = rng.normal(size=(batch_size, size, size, 3)).astype(np.float32)
  return {"image": images, "tokens": tokens_BxL}


# ------------------------------------------------------------------------------- the stage


def loss_fn(config: ml_collections.ConfigDict, model: mxq_vae.MXQVAE, batch, key: jax.Array):
  image_key, text_key, model_key = jax.random.split(key, 3)
  images_in = masking.mask_image_patches(
      image_key, batch["image"], config.masking.image_patch, config.masking.image_ratio)
  tokens_in = masking.mask_tokens(
      text_key, batch["tokens"], config.masking.text_ratio, tokenizer_lib.MASK_ID,
      (tokenizer_lib.PAD_ID, tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID))
  out = model(images_in, tokens_in, train=True, rngs=nnx.Rngs(model_key))

  image_loss = jnp.mean(jnp.square(out.images.astype(jnp.float32) - batch["image"]))
  text_loss, token_accuracy = text_loss_and_accuracy(out.text_logits, batch["tokens"])
  q = out.quantizer
  loss = image_loss + text_loss + q.codebook_loss + config.vqvae.beta * q.commitment_loss
  return loss, {
      "image_mse": image_loss, "text_ce": text_loss, "codebook_loss": q.codebook_loss,
      "commitment_loss": q.commitment_loss, "token_accuracy": token_accuracy,
      "psnr": psnr_per_image(out.images, batch["image"]).mean(),
      "codebook_usage": q.usage, "codebook_perplexity": q.perplexity,
  }


def eval_fn(config: ml_collections.ConfigDict, model: mxq_vae.MXQVAE, batch):
  """Sums over the real examples of one test batch (unmasked inputs, eval mode)."""
  out = model(batch["image"], batch["tokens"], train=False)
  valid_B = batch["valid"]
  real_BxL = (batch["tokens"] != tokenizer_lib.PAD_ID) * valid_B[:, None]
  correct_BxL = jnp.argmax(out.text_logits, axis=-1) == batch["tokens"]
  exact_B = jnp.all(correct_BxL | (batch["tokens"] == tokenizer_lib.PAD_ID), axis=1)
  # Over the code vocabulary: K ids, or 2K with one codebook per modality.
  histogram_K = jnp.zeros(config_lib.code_vocabulary_size(config), jnp.float32).at[out.codes].add(
      jnp.broadcast_to(valid_B[:, None], out.codes.shape))
  return {
      "examples": valid_B.sum(),
      "psnr": (psnr_per_image(out.images, batch["image"]) * valid_B).sum(),
      "tokens": real_BxL.sum(),
      "correct_tokens": (correct_BxL * real_BxL).sum(),
      "exact_captions": (exact_B * valid_B).sum(),
      "code_histogram": histogram_K,
  }


def summarize_eval(sums: dict[str, np.ndarray]) -> dict[str, float]:
  histogram = sums["code_histogram"]
  probs = histogram / max(histogram.sum(), 1.0)
  entropy = -np.sum(probs * np.log(np.where(probs > 0, probs, 1.0)))
  return {
      "psnr": float(sums["psnr"] / sums["examples"]),
      "token_accuracy": float(sums["correct_tokens"] / sums["tokens"]),
      "caption_exact_match": float(sums["exact_captions"] / sums["examples"]),
      "codebook_usage": float(np.mean(histogram > 0)),
      "codebook_perplexity": float(np.exp(entropy)),
      "examples": float(sums["examples"]),
  }


def make_previewer(tokenizer: tokenizer_lib.Tokenizer):
  """Writes a grid of test images (top row) over their reconstructions, and captions."""

  @nnx.jit
  def reconstruct(model, images, tokens):
    out = model(images, tokens, train=False)
    return out.images, jnp.argmax(out.text_logits, axis=-1)

  def write_previews(model, batch, writer, step: int) -> None:
    images = batch["image"][:NUM_PREVIEWS]
    tokens = batch["tokens"][:NUM_PREVIEWS]
    recon, predicted = jax.device_get(reconstruct(model, images, tokens))
    images = np.asarray(normalization.denormalize_images(jax.device_get(images)))
    recon = np.asarray(normalization.denormalize_images(recon))
    grid = np.concatenate([np.concatenate(list(images), axis=1),
                           np.concatenate(list(recon), axis=1)], axis=0)
    writer.write_images(step, {"reconstructions": grid[None]})
    lines = [f"{tokenizer.decode(t)!r} -> {tokenizer.decode(p)!r}"
             for t, p in zip(jax.device_get(tokens), predicted)]
    writer.write_texts(step, {"captions": "\n\n".join(lines)})

  return write_previews


def make_task(config: ml_collections.ConfigDict,
              tokenizer: tokenizer_lib.Tokenizer | None = None) -> trainer_lib.Task:
  return trainer_lib.Task(
      name="stage1",
      optim=config.vqvae.optim,
      build_model=lambda rngs: build_model(config, rngs),
      loss_fn=lambda model, batch, key: loss_fn(config, model, batch, key),
      eval_fn=lambda model, batch: eval_fn(config, model, batch),
      summarize_eval=summarize_eval,
      signature=model_signature(config),
      write_previews=make_previewer(tokenizer) if tokenizer else None,
  )
