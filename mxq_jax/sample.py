r"""Generates image-caption pairs from a trained workdir, or from a model the package ships.

  python -m mxq_jax.sample --workdir=DIR --outdir=OUT --num_samples=1000 [--batch_size=256]
  python -m mxq_jax.sample --pretrained=caption_digits --outdir=OUT   (no training needed)
      [--seed=0] [--top_k=K] [--top_p=P] [--temperature=T] [--image_temperature=T] [--overwrite]

Writes OUT/images/00000.png ..., OUT/samples.jsonl (one pair a line: id, caption, token ids,
codes, seed and settings) and OUT/grid.png (the first pairs, each image over its caption).
Everything is written to a sibling directory first and renamed into place at the end, and an
existing non-empty OUT is refused unless --overwrite. The models, config and tokenizer come from
the workdir. Sampling flags left unset take the workdir's config.sampling: the reference's
settings (top-k 10, top-p 1.0, temperature 1.0) unless the config changes them;
--image_temperature (unset there too: --temperature) applies to the image codes only.
"""

from absl import app, flags

from mxq_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir trained by `python -m mxq_jax.main`.")
flags.DEFINE_string("pretrained", None, "Instead of --workdir: a model shipped with the package "
                    "(caption_digits) or a directory written by `python -m mxq_jax.export`.")
flags.DEFINE_string("outdir", None, "Directory for the generated pairs (must be new or empty).")
flags.DEFINE_integer("num_samples", 64, "Pairs to generate.", lower_bound=1)
flags.DEFINE_integer("batch_size", 256, "Pairs per compiled call; a multiple of the devices.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed: the same seed and settings give the same pairs.")
# Sampling settings: unset, each takes the workdir's config.sampling value.
flags.DEFINE_integer("top_k", None, "Sample from the k most likely codes (>= 1).")
flags.DEFINE_float("top_p", None, "Sample from the smallest set of codes whose mass reaches p.")
flags.DEFINE_float("temperature", None, "Divides the logits (> 0): < 1 sharper, > 1 flatter.")
flags.DEFINE_float("image_temperature", None,
                   "The image codes' temperature (> 0); unset in the config too: --temperature.")
flags.DEFINE_integer("grid_size", 64, "Pairs shown in grid.png (the first ones); 0: no grid.png.",
                     lower_bound=0)
flags.DEFINE_bool("overwrite", False, "Replace the contents of a non-empty --outdir.")
flags.mark_flags_as_required(["outdir"])
flags.register_multi_flags_validator(
    ["workdir", "pretrained"], lambda given: (given["workdir"] is None) != (
        given["pretrained"] is None),
    message="give one of --workdir (a trained workdir) or --pretrained (caption_digits)")


def check_sampling_flags() -> None:
  """The sampling flags given, checked before start-up and before the workdir is read (the
  config's settings are checked once it is read)."""
  from mxq_jax import config_lib
  neutral = {"top_k": 1, "top_p": 1.0, "temperature": 1.0, "image_temperature": None}
  config_lib.validate_sampling(**{name: value if FLAGS[name].value is None else FLAGS[name].value
                                  for name, value in neutral.items()})


def generate() -> dict:
  from mxq_jax import context
  from mxq_jax.generation import generate as generate_lib
  given = {name: FLAGS[name].value for name in generate_lib.SETTINGS}
  if FLAGS.pretrained:
    from mxq_jax import pretrained
    run_context = pretrained.load(FLAGS.pretrained)
  else:
    run_context = context.for_trained_workdir(FLAGS.workdir)
  return generate_lib.generate_pairs(
      run_context, FLAGS.outdir, num_samples=FLAGS.num_samples,
      batch_size=FLAGS.batch_size, seed=FLAGS.seed, overwrite=FLAGS.overwrite,
      grid_size=FLAGS.grid_size, **given)


def main(argv):
  cli.check_no_arguments(argv)
  cli.check_flags(check_sampling_flags)
  cli.start()
  summary = cli.run(generate)
  print(f"wrote {summary['pairs']} pairs to {FLAGS.outdir} in {summary['seconds']} s: "
        f"{summary['pairs_per_s']} pairs/s (first batch, compilation included: "
        f"{summary['first_batch_s_compile_included']} s)")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
