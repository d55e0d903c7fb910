"""AdamW with linear warm-up and cosine decay, from a stage's `optim` config (same for both)."""

import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=optim.learning_rate,
      warmup_steps=min(optim.warmup_steps, optim.num_steps),
      decay_steps=max(optim.num_steps, optim.warmup_steps + 1),
      end_value=optim.learning_rate * optim.end_lr_fraction,
  )


def state_layout(optim: ml_collections.ConfigDict) -> str:
  """The tree of the optimizer state `make_optimizer` builds, in words: clipping on or off
  changes it (a checkpoint written with the other restores nothing); every other field changes
  only values."""
  return "clip_by_global_norm, adamw" if optim.grad_clip_norm > 0 else "adamw"


def make_optimizer(optim: ml_collections.ConfigDict,
                   schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
  """AdamW by `optim`, with `schedule` (step count -> rate) in place of its own if given."""
  adamw = optax.adamw(
      schedule or learning_rate_schedule(optim), b1=optim.b1, b2=optim.b2, eps=optim.eps,
      weight_decay=optim.weight_decay)
  if optim.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), adamw)
  return adamw
