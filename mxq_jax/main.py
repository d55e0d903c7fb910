r"""Trains MXQ-VAE: `python -m mxq_jax.main --config=configs/synthetic.py --workdir=DIR`.

Runs the stages of config.stages that the workdir does not hold yet (`run.train_and_evaluate`).
Running it again with the same workdir resumes from the latest checkpoint. Override any config
field on the command line, e.g. `--config.vqvae.optim.num_steps=2000`.
"""

from absl import app, flags
from ml_collections import config_flags

from mxq_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the tokenizer.")
config_flags.DEFINE_config_file(
    "config", None, "Experiment config: configs/NAME.py, or configs/NAME.py:smoke.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.check_no_arguments(argv)
  cli.start()
  from mxq_jax import run  # after start-up: jax.distributed before anything touches JAX.
  cli.run(lambda: run.train_and_evaluate(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
