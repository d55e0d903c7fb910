r"""Trains MXQ-VAE: `python -m mxq_jax.main --config=configs/synthetic.py --workdir=DIR`.

Running it again with the same workdir resumes from the latest checkpoint. Override any config
field on the command line, e.g. `--config.vqvae.optim.num_steps=2000`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mxq_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the tokenizer.")
config_flags.DEFINE_config_file(
    "config", None, "Experiment config: configs/NAME.py, or configs/NAME.py:smoke.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.get_absl_handler().addFilter(cli.OwnInfoOnly())
  import tensorflow as tf  # the input pipeline only: keep it off the accelerators.
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU")

  cli.initialize_distributed()
  from mxq_jax import config_lib, run
  try:
    run.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except config_lib.ConfigError as error:
    logging.flush()
    sys.exit(f"mxq_jax: error: {error}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
