r"""Trains, scores and tabulates the paper's ablations (`mxq_jax/ablation_lib.py` says more).

  python -m mxq_jax.ablations --config=configs/synthetic.py --workdir=DIR \
      [--seeds=0,1] [--variants=mxq_vae,no_masking,separate_no_fusion,own_decoders]

Writes DIR/<variant>/seed_<s>/ (one workdir per run) and DIR/ablations.md; rerunning the same
command resumes unfinished runs and skips finished ones.
"""

import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from mxq_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory holding one workdir per variant and seed.")
config_flags.DEFINE_config_file(
    "config", None, "Experiment config every variant starts from: configs/NAME.py[:ARG].",
    lock_config=True)
flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed) each variant is trained with.")
flags.DEFINE_list("variants", None, "Variants to run (default: all of them).")
flags.mark_flags_as_required(["config", "workdir"])


def run_ablations() -> str:
  from mxq_jax import ablation_lib
  names, seeds = ablation_lib.parse_selection(FLAGS.variants, FLAGS.seeds)
  command = " ".join(["python -m mxq_jax.ablations", *map(shlex.quote, sys.argv[1:])])
  return ablation_lib.run_ablations(FLAGS.config, FLAGS.workdir, names, seeds, command)


def main(argv):
  cli.check_no_arguments(argv)
  cli.start()
  print(cli.run(run_ablations))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
