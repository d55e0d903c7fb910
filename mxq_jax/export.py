r"""Writes a trained workdir's models as a pretrained bundle (`mxq_jax/pretrained.py`).

  python -m mxq_jax.export --workdir=W --outdir=mxq_jax/pretrained_models/caption_digits

Inference variables only (no optimizer state), with the config, the tokenizer and the metrics
the workdir scored; `python -m mxq_jax.sample --pretrained=OUTDIR` samples from it.
"""

import json

from absl import app, flags

from mxq_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir trained by `python -m mxq_jax.main`.")
flags.DEFINE_string("outdir", None, "Where the bundle goes (must be new or empty).")
flags.mark_flags_as_required(["workdir", "outdir"])


def main(argv):
  cli.check_no_arguments(argv)
  cli.start()
  from mxq_jax import pretrained
  record = cli.run(lambda: pretrained.export(FLAGS.workdir, FLAGS.outdir))
  print(json.dumps(record["steps"]))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
