r"""Will the run fit the TPU slice? `python -m mxq_jax.aot --config=CONFIG --topology=TYPE`.

On any CPU host (a laptop, the TPU VM's worker 0 before training), compiles ahead of time every
program `python -m mxq_jax.main --config=...` would run on that TPU slice, with the run's mesh
and shardings, and prints one JSON line per program: compile seconds, GFLOPs, and per-chip
argument, output, temporary and peak MiB against the chip's HBM (`mxq_jax/aot_lib.py`). A
program that does not fit ends it with one line: its peak, its largest arguments, and the
config changes that would fit. Needs libtpu: `pip install -e '.[aot]'`.

--topology takes gcloud's accelerator types (v4-8, v5litepod-8, v5litepod-16, v5p-8, v6e-8,
...) or libtpu's topology names (v5e:2x4, v4:2x2x1).
"""

import json

from absl import app, flags
from ml_collections import config_flags

from mxq_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("topology", None, "The TPU slice: v5litepod-8, v4-8, v5p-8, v6e-8, "
                    "v5litepod-16, ... (gcloud's names) or v5e:2x4 (libtpu's).")
flags.mark_flags_as_required(["config", "topology"])


def check_fit() -> list[dict]:
  from mxq_jax import aot_lib
  tpu = aot_lib.parse_slice(FLAGS.topology)
  return aot_lib.check_fit(FLAGS.config, tpu,
                           report=lambda result: print(json.dumps(result), flush=True))


def main(argv):
  cli.check_no_arguments(argv)
  # One process compiles for the whole slice, and reports how long each program took.
  cli.start(distributed=False, compilation_cache=False)
  cli.run(check_fit)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
