"""Generating pairs into a directory: what `python -m mxq_jax.sample` and the evaluate stage run.

The trained models come from the run's context (restored once); the jitted sampler draws a batch
of joint codes and decodes them to pixels and tokens in one program, with the next batch in
flight while the host writes the previous one out (`writer.PairWriter`: nothing appears at the
output directory until every pair is written).
"""

import math
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mxq_jax import config_lib, context as context_lib, interrupts
from mxq_jax.data import tokenizer as tokenizer_lib
from mxq_jax.generation import sampler, writer

SETTINGS = ("top_k", "top_p", "temperature", "image_temperature")


def sampling_settings(config: ml_collections.ConfigDict, **given) -> dict:
  """top_k, top_p, temperature, image_temperature: the given ones, the config's for None."""
  settings = {name: config.sampling[name] if given.get(name) is None else given[name]
              for name in SETTINGS}
  if settings["image_temperature"] is None:
    settings["image_temperature"] = settings["temperature"]
  return settings


def traced_settings(settings: dict) -> list[jax.Array]:
  """The sampler's traced arguments (top_p, temperature, image_temperature): changing them
  compiles nothing."""
  return [jnp.float32(settings[name]) for name in ("top_p", "temperature", "image_temperature")]


def through_eos(ids_L) -> list[int]:
  """Token ids up to and including the first EOS (all of them if there is none)."""
  ids = [int(i) for i in ids_L]
  return ids[:ids.index(tokenizer_lib.EOS_ID) + 1] if tokenizer_lib.EOS_ID in ids else ids


def sample_batches(sample_fn, variables, key: jax.Array, traced, num_batches: int
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Each batch's outputs on the host (all processes' rows); batch b + 1 is dispatched before
  batch b is fetched, so the devices never wait for the host."""
  call = lambda b: sample_fn(*variables, jax.random.fold_in(key, b), *traced)
  in_flight = call(0)
  for b in range(num_batches):
    out = in_flight
    if b + 1 < num_batches:
      in_flight = call(b + 1)
    yield {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
           for k, v in out.items()}


def generate_pairs(context: context_lib.RunContext, outdir: str, *, num_samples: int,
                   batch_size: int, seed: int, overwrite: bool = False, grid_size: int = 64,
                   **given_settings) -> dict:
  """Generates and writes `num_samples` pairs; returns a summary (counts, seconds, pairs/s).

  Sampling settings (SETTINGS) left None take the workdir's config.sampling values.
  """
  if num_samples < 1:
    raise config_lib.ConfigError(f"num_samples={num_samples}: generate at least 1 pair")
  config = context.config
  settings = sampling_settings(config, **given_settings)
  config_lib.validate_sampling(**settings)
  config_lib.check_divisible_batch(batch_size, jax.device_count(), "--batch_size")
  writer_process = jax.process_index() == 0
  if writer_process:  # refuse a non-empty outdir before the (slow) restore.
    writer.check_outdir(outdir, overwrite)
  prior_state, vae_state = context_lib.restore_for_sampling(context)
  logging.info("sampling from the prior of step %d over the stage-1 codes of step %d",
               context.steps["stage2"], context.stage1_step)

  sample_fn = sampler.make_sampler(config, context.mesh, batch_size=batch_size,
                                   top_k=settings["top_k"])
  variables = (sampler.variables_of(prior_state), sampler.variables_of(vae_state))
  traced = traced_settings(settings)
  settings = {"seed": seed, **settings}
  num_batches = math.ceil(num_samples / batch_size)
  pairs = (writer.PairWriter(outdir, overwrite=overwrite, total=num_samples,
                             grid_size=grid_size) if writer_process else None)
  start, first_batch_s = time.perf_counter(), None
  try:
    for b, out in enumerate(sample_batches(sample_fn, variables, jax.random.key(seed), traced,
                                           num_batches)):
      interrupts.check(f"sample: stopped after {b * batch_size} of {num_samples} pairs, "
                       f"with nothing written to {outdir},")
      if first_batch_s is None:  # compilation included.
        first_batch_s = time.perf_counter() - start
      keep = min(batch_size, num_samples - b * batch_size)
      captions = context.tokenizer.decode_batch(out["tokens"][:keep])
      if pairs:
        first = b * batch_size
        pairs.add_batch(out["images"][:keep], [
            {"id": first + i, "caption": captions[i], "image": pairs.image_name(first + i),
             "tokens": through_eos(out["tokens"][i]), "codes": out["codes"][i], "batch": b,
             **settings} for i in range(keep)])
    seconds = time.perf_counter() - start
    summary = {
        "pairs": num_samples, "batch_size": batch_size, "seconds": round(seconds, 2),
        "pairs_per_s": round(num_samples / seconds, 2),
        "first_batch_s_compile_included": round(first_batch_s, 2),
        "stage1_step": context.stage1_step, "stage2_step": context.steps["stage2"], **settings,
    }
    if num_batches > 1:
      steady = (num_samples - batch_size) / max(seconds - first_batch_s, 1e-9)
      summary["pairs_per_s_after_first_batch"] = round(steady, 2)
    if pairs:
      pairs.publish()
  except BaseException:
    if pairs:
      pairs.discard()  # outdir keeps what it held; no staging directory is left behind.
    raise
  return summary
