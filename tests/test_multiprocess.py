"""Two JAX processes on this machine (gloo collectives) train `:smoke` as one 4-device job.

Each process loads only its slice of the data and feeds it as its part of the global batch;
the checkpoints they write together restore in a single process.
"""

import json
import os
import socket
import subprocess
import sys

from conftest import REPO

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


def test_two_processes_train_one_job(tmp_path):
  port, data_dir, workdir = free_port(), tmp_path / "tfds", tmp_path / "work"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             TF_CPP_MIN_LOG_LEVEL="2")
  procs = [subprocess.Popen(
      [sys.executable, "-c", WORKER, str(port), str(i), str(data_dir), str(workdir)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=420)
      outputs.append((proc.returncode, out, err))
  finally:
    for proc in procs:
      proc.kill()
  for code, out, err in outputs:
    assert code == 0, err[-3000:]
    assert "METRICS" in out
  metrics = json.loads((workdir / "stage1" / "eval_metrics.json").read_text())
  assert metrics["step"] == 6 and metrics["examples"] == 64  # both halves of the test split.
  assert sorted(os.listdir(workdir / "stage1" / "checkpoints")) == ["3", "6"]

  # One process (one device) reopens the two-process workdir: it finds the job finished.
  single = subprocess.run(
      [sys.executable, "-m", "mxq_jax.main", "--config=configs/synthetic.py:smoke",
       f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"],
      cwd=REPO, env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
      capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  assert "resumed from the checkpoint of step 6" in single.stderr
