"""A training command in miniature, for the tests that kill, stop and resume one.

`python tests/training/prior_run.py WORKDIR NUM_STEPS OUT.npz [PORT PROCESS_ID]` trains the :smoke prior on fixed
random codes through the project's Trainer and `cli.run` (so signals are handled as in every
command), printing "batch N" as each batch is drawn (a little slowed down, so that a signal
lands mid-training), and writes the final state's leaves to OUT.npz. With PORT and PROCESS_ID
it is one of two `jax.distributed` processes (gloo, 127.0.0.1) training one job.
"""

import sys
import time

import jax
import numpy as np
from absl import logging

from mxq_jax import cli, config_lib, sharding
from mxq_jax.data import pipeline
from mxq_jax.training import stage2, trainer as trainer_lib

sys.path.insert(0, __file__.rsplit("/training/", 1)[0])  # tests/, for conftest.load_config.
from conftest import load_config  # noqa: E402

CHECKPOINT_EVERY = 4
SECONDS_PER_BATCH = 0.05


def config_and_codes(num_steps: int):
  config = load_config("synthetic", "smoke")
  config.prior.optim.update(num_steps=num_steps, checkpoint_every=CHECKPOINT_EVERY,
                            log_every=2, eval_every=0, keep_checkpoints=2)
  config.prior.dropout = 0.1  # the per-step keys must resume too.
  num_codes, length = config_lib.code_vocabulary_size(config), config_lib.num_joint_codes(config)
  codes = np.random.default_rng(0).integers(0, num_codes, (64, length), dtype=np.int32)
  return config, codes


def train(workdir: str, num_steps: int) -> trainer_lib.TrainState:
  """One process on one device; or, under jax.distributed, every process's devices, each
  process feeding its own half of the codes."""
  config, codes = config_and_codes(num_steps)
  devices = jax.devices() if jax.process_count() > 1 else jax.devices()[:1]
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  task = stage2.make_task(config, stage1_step=1)
  local_codes = codes[jax.process_index()::jax.process_count()]

  def train_batches(start: int):
    batches = pipeline.array_train_batches(
        {"codes": local_codes}, config.prior.optim.batch_size, config.seed, start,
        sharding.batch_sharding(mesh))
    for step, batch in enumerate(batches, start + 1):
      print(f"batch {step}", flush=True)
      time.sleep(SECONDS_PER_BATCH)
      yield batch

  trainer = trainer_lib.Trainer(task, workdir=workdir, mesh=mesh, seed=config.seed)
  return trainer.fit(train_batches)[0]


def leaves(state: trainer_lib.TrainState) -> dict[str, np.ndarray]:
  return {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}


def main(workdir: str, num_steps: str, out: str, port: str = "", process_id: str = "") -> None:
  if port:  # one of two processes on this machine, as the multi-process tests run them.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2,
                               process_id=int(process_id))
  logging.set_verbosity(logging.INFO)
  state = cli.run(lambda: train(workdir, int(num_steps)))
  np.savez(out, **leaves(state))


if __name__ == "__main__":
  main(*sys.argv[1:])
