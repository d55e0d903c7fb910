r"""Generates image-caption pairs from a trained workdir.

  python -m mxq_jax.sample --workdir=DIR --outdir=OUT --num_samples=1000 [--batch_size=256]
      [--seed=0] [--top_k=K] [--top_p=P] [--temperature=T] [--image_temperature=T] [--overwrite]

Writes OUT/images/00000.png ..., OUT/samples.jsonl (one pair a line: id, caption, token ids,
codes, seed and settings) and OUT/grid.png (the first pairs, each image over its caption).
Everything is written to a sibling directory first and renamed into place at the end, and an
existing non-empty OUT is refused unless --overwrite. The models, config and tokenizer come from
the workdir. Sampling flags left unset take the workdir's config.sampling: the reference's
settings (top-k 10, top-p 1.0, temperature 1.0) unless the config changes them;
--image_temperature (unset there too: --temperature) applies to the image codes only.
"""

import math
import os
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that `run` can import this module."""
  flags.DEFINE_string("workdir", None, "A workdir trained by `python -m mxq_jax.main`.")
  flags.DEFINE_string("outdir", None, "Directory for the generated pairs (must be new or empty).")
  flags.DEFINE_integer("num_samples", 64, "Pairs to generate.")
  flags.DEFINE_integer("batch_size", 256, "Pairs per compiled call; a multiple of the devices.")
  flags.DEFINE_integer("seed", 0, "Seed: the same seed and settings give the same pairs.")
  # Sampling settings: unset, each takes the workdir's config.sampling value.
  flags.DEFINE_integer("top_k", None, "Sample from the k most likely codes (>= 1).")
  flags.DEFINE_float("top_p", None, "Sample from the smallest set of codes whose mass reaches p.")
  flags.DEFINE_float("temperature", None, "Divides the logits (> 0): < 1 sharper, > 1 flatter.")
  flags.DEFINE_float("image_temperature", None,
                     "The image codes' temperature (> 0); unset in the config too: --temperature.")
  flags.DEFINE_integer("grid_size", 64, "Pairs shown in grid.png (the first ones).")
  flags.DEFINE_bool("overwrite", False, "Replace the contents of a non-empty --outdir.")
  flags.mark_flags_as_required(["workdir", "outdir"])


def check_flags() -> None:
  """One-line errors for settings that cannot work, before anything is loaded."""
  from mxq_jax import config_lib
  # The sampling flags given (the others come from the workdir's config, checked later).
  neutral = {"top_k": 1, "top_p": 1.0, "temperature": 1.0, "image_temperature": None}
  config_lib.validate_sampling(**{name: default if FLAGS[name].value is None
                                  else FLAGS[name].value for name, default in neutral.items()})
  for name in ("num_samples", "batch_size"):
    if FLAGS[name].value < 1:
      raise config_lib.ConfigError(f"--{name}={FLAGS[name].value} must be >= 1")
  if not os.path.isfile(os.path.join(FLAGS.workdir, "config.json")):
    raise config_lib.ConfigError(
        f"--workdir={FLAGS.workdir} holds no config.json: it is not a workdir trained by "
        "`python -m mxq_jax.main`")


def restore_models(config, workdir: str, mesh):
  """(prior variables, stage-1 variables, stage-1 step, stage-2 step) from the checkpoints.

  The stage-1 checkpoint is the one whose codes the prior was trained on (its record says
  which); any other is refused.
  """
  from mxq_jax import checkpointing, config_lib, sampler, stage1, stage2, train_lib
  prior_dir = checkpointing.checkpoint_dir(workdir, "stage2")
  manager = checkpointing.open_read_only(prior_dir)
  meta = None if manager is None else checkpointing.read_meta(manager)
  if manager is not None:
    manager.close()
  if meta is None:
    raise config_lib.ConfigError(
        f"{prior_dir} holds no prior checkpoint; train stage 2 first with "
        f"`python -m mxq_jax.main --config=... --workdir={workdir}`")
  stage1_step = meta["signature"]["stage1_step"]
  prior_state, prior_step = train_lib.restore_trained(
      stage2.make_stage(config, stage1_step), workdir, mesh)
  try:
    vae_state, _ = train_lib.restore_trained(stage1.make_stage(config), workdir, mesh,
                                             stage1_step)
  except config_lib.ConfigError as error:
    raise config_lib.ConfigError(
        f"the prior (stage2 step {prior_step}) models the codes of stage-1 step {stage1_step}, "
        f"which this workdir cannot provide: {error}") from None
  return (sampler.variables_of(prior_state), sampler.variables_of(vae_state), stage1_step,
          prior_step)


def sampling_settings(config, **given) -> dict:
  """top_k, top_p, temperature, image_temperature: the given ones, the config's for None."""
  settings = {name: config.sampling[name] if given.get(name) is None else given[name]
              for name in ("top_k", "top_p", "temperature", "image_temperature")}
  if settings["image_temperature"] is None:
    settings["image_temperature"] = settings["temperature"]
  return settings


def generate(workdir: str, outdir: str, *, num_samples: int, batch_size: int, seed: int,
             top_k: int | None = None, top_p: float | None = None,
             temperature: float | None = None, image_temperature: float | None = None,
             overwrite: bool = False, grid_size: int = 64) -> dict:
  """Generates and writes the pairs; returns a summary (counts, seconds, pairs/s).

  Sampling settings left None take the workdir's config.sampling values.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.experimental import multihost_utils
  from mxq_jax import config_lib, sample_writer, sampler, sharding
  from mxq_jax.data import tokenizer as tokenizer_lib

  config = config_lib.from_json_file(os.path.join(workdir, "config.json"))
  settings = sampling_settings(config, top_k=top_k, top_p=top_p, temperature=temperature,
                               image_temperature=image_temperature)
  config_lib.validate_sampling(**settings)
  mesh = sharding.make_mesh(config.mesh)
  if batch_size % jax.device_count():
    raise config_lib.ConfigError(f"--batch_size={batch_size} must be divisible by the "
                                 f"{jax.device_count()} devices; pick a multiple")
  writer_process = jax.process_index() == 0
  # Refuse a non-empty outdir before the (slow) restore; the staging dir is created after it.
  if writer_process:
    sample_writer.check_outdir(outdir, overwrite)
  prior_vars, vae_vars, stage1_step, prior_step = restore_models(config, workdir, mesh)
  tokenizer = tokenizer_lib.Tokenizer.load(os.path.join(workdir, "tokenizer.model"))
  logging.info("sampling from the prior of step %d over the stage-1 codes of step %d",
               prior_step, stage1_step)

  sample_fn = sampler.make_sampler(config, mesh, batch_size=batch_size, top_k=settings["top_k"])
  traced = [jnp.float32(settings[name])
            for name in ("top_p", "temperature", "image_temperature")]
  key = jax.random.key(seed)
  settings = {"seed": seed, **settings}
  num_batches = math.ceil(num_samples / batch_size)

  staging = sample_writer.open_staging_dir(outdir, overwrite) if writer_process else None
  if staging:
    os.makedirs(os.path.join(staging, "images"))
  progress = sample_writer.Progress(num_samples, "sample") if writer_process else None
  records, grid_images, grid_captions = [], [], []
  start = time.perf_counter()
  first_batch_s = None
  # One batch in flight while the previous one is written out.
  in_flight = sample_fn(prior_vars, vae_vars, jax.random.fold_in(key, 0), *traced)
  for b in range(num_batches):
    out = in_flight
    if b + 1 < num_batches:
      in_flight = sample_fn(prior_vars, vae_vars, jax.random.fold_in(key, b + 1), *traced)
    out = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
           for k, v in out.items()}
    if first_batch_s is None:
      first_batch_s = time.perf_counter() - start
    keep = min(batch_size, num_samples - b * batch_size)
    captions = tokenizer.decode_batch(out["tokens"][:keep])
    if staging:
      for i in range(keep):
        index = b * batch_size + i
        sample_writer.save_png(os.path.join(staging, "images", f"{index:05d}.png"),
                               out["images"][i])
        records.append({"id": index, "caption": captions[i], "image": f"images/{index:05d}.png",
                        "tokens": _through_eos(out["tokens"][i]), "codes": out["codes"][i],
                        "batch": b, **settings})
      take = max(0, min(keep, grid_size - len(grid_images)))
      grid_images.extend(out["images"][:take])
      grid_captions.extend(captions[:take])
      progress.update(keep)
  seconds = time.perf_counter() - start
  summary = {
      "pairs": num_samples, "batch_size": batch_size, "seconds": round(seconds, 2),
      "pairs_per_s": round(num_samples / seconds, 2),
      "first_batch_s_compile_included": round(first_batch_s, 2),
      "stage1_step": stage1_step, "stage2_step": prior_step, **settings,
  }
  if num_batches > 1:
    steady = (num_samples - batch_size) / max(seconds - first_batch_s, 1e-9)
    summary["pairs_per_s_after_first_batch"] = round(steady, 2)
  if staging:
    progress.close()
    sample_writer.write_jsonl(os.path.join(staging, "samples.jsonl"), records)
    sample_writer.save_png(os.path.join(staging, "grid.png"),
                           sample_writer.captioned_grid(np.stack(grid_images), grid_captions))
    sample_writer.publish(staging, outdir)
  return summary


def _through_eos(ids_L) -> list[int]:
  """Token ids up to and including the first EOS (all of them if there is none)."""
  from mxq_jax.data import tokenizer as tokenizer_lib
  ids = [int(i) for i in ids_L]
  return ids[:ids.index(tokenizer_lib.EOS_ID) + 1] if tokenizer_lib.EOS_ID in ids else ids


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from mxq_jax import cli, config_lib, sample_writer
  logging.get_absl_handler().addFilter(cli.OwnInfoOnly())
  cli.initialize_distributed()
  try:
    check_flags()
    summary = generate(FLAGS.workdir, FLAGS.outdir, num_samples=FLAGS.num_samples,
                       batch_size=FLAGS.batch_size, seed=FLAGS.seed, top_k=FLAGS.top_k,
                       top_p=FLAGS.top_p, temperature=FLAGS.temperature,
                       image_temperature=FLAGS.image_temperature, overwrite=FLAGS.overwrite,
                       grid_size=FLAGS.grid_size)
  except (config_lib.ConfigError, sample_writer.OutdirError) as error:
    logging.flush()
    sys.exit(f"mxq_jax: error: {error}")
  print(f"wrote {summary['pairs']} pairs to {FLAGS.outdir} in {summary['seconds']} s: "
        f"{summary['pairs_per_s']} pairs/s (first batch, compilation included: "
        f"{summary['first_batch_s_compile_included']} s)")


if __name__ == "__main__":
  define_flags()
  from mxq_jax import cli
  app.run(main, flags_parser=cli.parse_flags)
