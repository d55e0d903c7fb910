"""Two JAX processes on this machine (gloo collectives) train `:smoke` as one 4-device job.

Each process loads only its slice of the data and feeds it as its part of the global batch, and
writes its own shard of the codes; the checkpoints and codes they write together serve a single
process (on 8 devices) that carries on training the prior.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time

from conftest import REPO, load_config
from mxq_jax import run

WORKER = r"""
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2,
                           process_id=int(sys.argv[2]))
sys.path.insert(0, "tests")
from conftest import load_config
from mxq_jax import run
config = load_config("synthetic", "smoke")
config.data.data_dir = sys.argv[3]
metrics = run.train_and_evaluate(config, sys.argv[4])
assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
print("METRICS", metrics)
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_one_job(tmp_path, caplog):
  port, data_dir, workdir = free_port(), tmp_path / "tfds", tmp_path / "work"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             TF_CPP_MIN_LOG_LEVEL="2")
  procs = [subprocess.Popen(
      [sys.executable, "-c", WORKER, str(port), str(i), str(data_dir), str(workdir)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  deadline, outputs = time.monotonic() + 900, []  # generous: CI runs two test workers on 2 cores.
  for proc in procs:
    try:
      out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
    outputs.append((proc.returncode, out, err))
  # Every process's end of log: the one that failed first may be the one that waited.
  report = "\n".join(f"process {i} (exit {code}):\n{err[-2500:]}"
                      for i, (code, _, err) in enumerate(outputs))
  assert all(code == 0 and "METRICS" in out for code, out, _ in outputs), report
  for stage in ("stage1", "stage2"):
    metrics = json.loads((workdir / stage / "eval_metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["examples"] == 64  # both halves of the test split.
    assert sorted(os.listdir(workdir / stage / "checkpoints")) == ["3", "6"]
  assert sorted(os.listdir(workdir / "codes" / "stage1_step_6")) == [
      "meta.json", "test-00000-of-00002.npy", "test-00001-of-00002.npy",
      "train-00000-of-00002.npy", "train-00001-of-00002.npy"]

  # One process (this one, 8 devices) reopens the two-process workdir and trains the prior
  # further, on the codes both processes wrote.
  caplog.set_level(logging.INFO)
  config = load_config("synthetic", "smoke")
  config.data.data_dir = str(data_dir)
  config.prior.optim.num_steps = 8
  run.train_and_evaluate(config, str(workdir))
  assert "stages to run: stage2" in caplog.text
  assert "stage2: resumed from the checkpoint of step 6" in caplog.text
  metrics = json.loads((workdir / "stage2" / "eval_metrics.json").read_text())
  assert metrics["step"] == 8 and metrics["examples"] == 64
