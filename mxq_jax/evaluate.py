r"""Scores generated pairs: `python -m mxq_jax.evaluate --workdir=DIR --samples=OUT`.

OUT is a directory written by `python -m mxq_jax.sample`. The figures go to OUT/metrics.json
(replaced on every run: it is derived from OUT), to stdout, and to TensorBoard under
DIR/evaluate. Every metric is described in `mxq_jax/evaluation/evaluator.py`.
"""

import json

from absl import app, flags

from mxq_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir trained by `python -m mxq_jax.main`.")
flags.DEFINE_string("samples", None, "A directory written by `python -m mxq_jax.sample`.")
flags.mark_flags_as_required(["workdir", "samples"])


def evaluate() -> dict:
  from mxq_jax import context
  from mxq_jax.evaluation import evaluator
  run_context = context.for_trained_workdir(FLAGS.workdir)
  evaluator.samples_jsonl(FLAGS.samples)  # its one-line error comes before any slow work.
  return evaluator.evaluate_samples(run_context, FLAGS.samples)


def main(argv):
  cli.check_no_arguments(argv)
  cli.start()
  print(json.dumps(cli.run(evaluate), indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
