r"""Throughput of training and generation: `python -m mxq_jax.bench --config=configs/synthetic.py`.

Prints one JSON object (`mxq_jax/bench_lib.py` says what it holds): the train steps of both
stages, the sampler at each --sampler_batches size beside the uncached baseline, and with
--parts=modules each submodule's forward and forward+backward time and share of the
train step (a table on stderr too), with --parts=input the input pipeline, with
--parts=precision the float32 and bfloat16 train steps' compiled programs side by side (a
table on stderr too; --topology=v5e:2x2 also compiles them for a TPU slice, docs/precision.md).
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from mxq_jax import cli, module_bench

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps after the warm-up step.")
flags.DEFINE_list("sampler_batches", ["1", "64", "256"], "Batch sizes of the cached sampler.")
flags.DEFINE_float("min_seconds", 2.0, "Each sampler measurement repeats calls for this long.")
flags.DEFINE_list("parts", ["train", "sampler"],
                  "What to measure: train (steps), modules (each submodule's share of the "
                  "train step), sampler, input (the data pipeline), precision (the fp32 and "
                  "bf16 train steps' programs, no timing).")
flags.DEFINE_list("stages", ["stage1", "stage2"],
                  "--parts=train,modules: whose train steps to measure.")
flags.DEFINE_integer("module_depth", 1, "--parts=modules: submodule levels to time "
                     "(1: the model's direct children; 2: also theirs).")
flags.DEFINE_string("workdir", None, "--parts=input: where the tokenizer goes.")
flags.DEFINE_integer("input_batches", 50, "--parts=input: timed training batches.")
flags.DEFINE_string("topology", None, "--parts=precision: also compile for this TPU slice "
                    "(v5e:2x2, v5litepod-8, ...; needs libtpu, pip install -e '.[aot]').")
flags.mark_flags_as_required(["config"])


def benchmark() -> dict:
  from mxq_jax import bench_lib
  return bench_lib.run_benchmarks(
      FLAGS.config, parts=FLAGS.parts, steps=FLAGS.steps,
      sampler_batches=[int(b) for b in FLAGS.sampler_batches], min_seconds=FLAGS.min_seconds,
      workdir=FLAGS.workdir, input_batches=FLAGS.input_batches,
      module_depth=FLAGS.module_depth, topology=FLAGS.topology, stages=FLAGS.stages)


def main(argv):
  cli.check_no_arguments(argv)
  cli.start(compilation_cache=False)  # it reports compile times.
  report = cli.run(benchmark)
  for stage in ("stage1", "stage2"):
    if f"{stage}_modules" in report:
      print(module_bench.format_table(stage, report[f"{stage}_modules"]), file=sys.stderr)
  if "precision" in report:
    from mxq_jax import hlo_report
    print(hlo_report.format_table(report["precision"]), file=sys.stderr)
  json.dump(report, sys.stdout, indent=2)
  print()


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
