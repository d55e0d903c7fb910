r"""Throughput of training and generation: `python -m mxq_jax.bench --config=configs/synthetic.py`.

Prints one JSON object (`mxq_jax/bench_lib.py` says what it holds): the train steps of both
stages, the sampler at each --sampler_batches size beside the reference-style baseline, and with
--parts=input the input pipeline.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from mxq_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps after the warm-up step.")
flags.DEFINE_list("sampler_batches", ["1", "64", "256"], "Batch sizes of the cached sampler.")
flags.DEFINE_float("min_seconds", 2.0, "Each sampler measurement repeats calls for this long.")
flags.DEFINE_list("parts", ["train", "sampler"],
                  "What to measure: train (steps), sampler, input (the data pipeline).")
flags.DEFINE_string("workdir", None, "--parts=input: where the tokenizer goes.")
flags.DEFINE_integer("input_batches", 50, "--parts=input: timed training batches.")
flags.mark_flags_as_required(["config"])


def benchmark() -> dict:
  from mxq_jax import bench_lib
  return bench_lib.run_benchmarks(
      FLAGS.config, parts=FLAGS.parts, steps=FLAGS.steps,
      sampler_batches=[int(b) for b in FLAGS.sampler_batches], min_seconds=FLAGS.min_seconds,
      workdir=FLAGS.workdir, input_batches=FLAGS.input_batches)


def main(argv):
  cli.check_no_arguments(argv)
  cli.start()
  json.dump(cli.run(benchmark), sys.stdout, indent=2)
  print()


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
