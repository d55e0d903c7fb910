"""Stage 2: the prior over joint codes, next-code cross-entropy, as a `trainer.Task`.

A batch is {'codes': int32 [B, N]} of the frozen stage-1 model (read from `{workdir}/codes/`, or
encoded on the fly by `codes.on_the_fly`), in stage-1 order (image grid, then text). The prior
models them in config.prior.code_order: it reads BOS then codes[:-1] and predicts every code, so
position t's logits score code t.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from mxq_jax import config_lib
from mxq_jax.training import stage1, trainer as trainer_lib
from mxq_jax.models import prior as prior_lib


def model_signature(config: ml_collections.ConfigDict, stage1_step: int) -> dict:
  """What fixes the prior's state, and the stage-1 model (and step) whose codes it models.

  A prior is only meaningful with the codebook it was trained on: a checkpoint of another
  stage-1 model, or of the same one at another step, is refused.
  """
  fields = {k: v for k, v in config.prior.to_dict().items()
            if k not in ("optim", "encode_on_the_fly", "scan_layers")}
  return dict(fields, num_codes=config_lib.code_vocabulary_size(config),
              seq_len=config_lib.num_joint_codes(config), stage1_step=stage1_step,
              stage1=stage1.model_signature(config))


def grid_places(config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(rows, cols): each code's place in the image grid, in the prior's order; -1 for text."""
  side = config_lib.image_grid_size(config)
  stage1_places = ([divmod(i, side) for i in range(side * side)]  # stage-1 order: image, text.
                   + [(-1, -1)] * config_lib.text_positions(config))
  rows, cols = zip(*(stage1_places[i] for i in config_lib.prior_code_order(config)))
  return tuple(map(int, rows)), tuple(map(int, cols))


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> prior_lib.Prior:
  p = config.prior
  rows, cols = grid_places(config)
  return prior_lib.Prior(
      num_codes=config_lib.code_vocabulary_size(config),
      seq_len=config_lib.num_joint_codes(config),
      num_layers=p.num_layers, num_heads=p.num_heads, dim=p.dim, mlp_dim=p.mlp_dim,
      dropout=p.dropout, dtype=jnp.dtype(p.dtype), scan_layers=p.scan_layers,
      grid_rotary_dims=p.grid_rotary_dims, grid_rows=rows, grid_cols=cols, rngs=rngs)


def teacher_forcing_inputs(prior: prior_lib.Prior, codes_BxN: jax.Array) -> jax.Array:
  """BOS, then every code but the last: [B, N]."""
  bos_Bx1 = jnp.full((codes_BxN.shape[0], 1), prior.bos, codes_BxN.dtype)
  return jnp.concatenate([bos_Bx1, codes_BxN[:, :-1]], axis=1)


def next_code_losses(prior: prior_lib.Prior, codes_BxN: jax.Array, *, train: bool,
                     rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy in nats, 1 where the argmax is right), both [B, N]."""
  logits_BxNxK = prior(teacher_forcing_inputs(prior, codes_BxN), train=train, rngs=rngs)
  ce_BxN = optax.softmax_cross_entropy_with_integer_labels(logits_BxNxK, codes_BxN)
  correct_BxN = (jnp.argmax(logits_BxNxK, axis=-1) == codes_BxN).astype(jnp.float32)
  return ce_BxN, correct_BxN


def loss_fn(order_N: np.ndarray, model: prior_lib.Prior, batch, key: jax.Array):
  ce_BxN, correct_BxN = next_code_losses(model, batch["codes"][:, order_N], train=True,
                                         rngs=nnx.Rngs(dropout=key))
  return ce_BxN.mean(), {"accuracy": correct_BxN.mean()}


def eval_fn(order_N: np.ndarray, model: prior_lib.Prior, batch):
  """Sums over the real examples of one test batch (eval mode: no dropout)."""
  ce_BxN, correct_BxN = next_code_losses(model, batch["codes"][:, order_N], train=False)
  valid_B = batch["valid"]
  return {
      "examples": valid_B.sum(),
      "nll": (ce_BxN.sum(axis=1) * valid_B).sum(),
      "correct": (correct_BxN.sum(axis=1) * valid_B).sum(),
  }


def summarize_eval(sums: dict[str, np.ndarray], seq_len: int) -> dict[str, float]:
  nll_per_pair = float(sums["nll"] / sums["examples"])
  return {
      "nll_per_code": nll_per_pair / seq_len,  # nats.
      "perplexity": math.exp(nll_per_pair / seq_len),
      "bits_per_pair": nll_per_pair / math.log(2),
      "accuracy": float(sums["correct"] / (sums["examples"] * seq_len)),
      "examples": float(sums["examples"]),
  }


def make_task(config: ml_collections.ConfigDict, stage1_step: int) -> trainer_lib.Task:
  seq_len = config_lib.num_joint_codes(config)
  order_N = config_lib.prior_code_order(config)
  return trainer_lib.Task(
      name="stage2",
      optim=config.prior.optim,
      build_model=lambda rngs: build_model(config, rngs),
      loss_fn=lambda model, batch, key: loss_fn(order_N, model, batch, key),
      eval_fn=lambda model, batch: eval_fn(order_N, model, batch),
      summarize_eval=lambda sums: summarize_eval(sums, seq_len),
      signature=model_signature(config, stage1_step),
  )
