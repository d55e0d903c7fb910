"""Training that survives what clusters do to it: SIGKILL, SIGTERM and Ctrl-C at random steps,
a damaged checkpoint, a full disk. Each ends bitwise equal to an uninterrupted run."""

import errno
import logging
import os
import random
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import prior_run
from mxq_jax import cli, interrupts
from mxq_jax.training import checkpoints

SCRIPT = os.path.join(os.path.dirname(__file__), "prior_run.py")
NUM_STEPS = 40


def steps_of(workdir) -> list[int]:
  directory = workdir / "stage2" / "checkpoints"
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def assert_equal_leaves(got: dict, want: dict) -> None:
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=f"leaf {key}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The final state's leaves of a run that nothing interrupted (in this process)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  return prior_run.leaves(prior_run.train(str(workdir), NUM_STEPS))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Run:
  """prior_run.py in a subprocess, stopped by `signum` once it draws batch `at_batch`."""

  def __init__(self, workdir, out):
    self.workdir, self.out = workdir, out

  def start(self, *distributed: str, devices: int = 8) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, SCRIPT, str(self.workdir), str(NUM_STEPS), str(self.out), *distributed],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"))

  def interrupt(self, signum: int, at_batch: int) -> tuple[int, str]:
    proc = self.start()
    for line in proc.stdout:
      if line.strip() == f"batch {at_batch}":
        proc.send_signal(signum)
        break
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr

  def finish(self) -> str:
    proc = self.start()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def test_killed_stopped_and_resumed_runs_end_as_an_uninterrupted_one(tmp_path, uninterrupted):
  """SIGKILL at 3 seeded random moments, then SIGTERM, each run resumed from the last: the
  final state is bitwise the uninterrupted run's. (Ctrl-C sets the same flag as SIGTERM, with
  exit status 130: tests/test_cli.py and the in-process test below.)"""
  workdir, run = tmp_path / "work", Run(tmp_path / "work", tmp_path / "final.npz")
  moments = sorted(random.Random(0).sample(range(2, NUM_STEPS - 8), 3))
  done = 0
  for at_batch in moments:
    returncode, stderr = run.interrupt(signal.SIGKILL, max(at_batch, done + 1))
    assert returncode == -signal.SIGKILL, stderr[-2000:]
    done = max(steps_of(workdir) or [0])

  # SIGTERM: the step in flight is finished and saved, and the run exits 0.
  returncode, stderr = run.interrupt(signal.SIGTERM, done + 3)
  assert returncode == 0, stderr[-3000:]
  stopped_at = steps_of(workdir)[-1]
  assert stopped_at >= done + 2, (done, steps_of(workdir))
  assert (f"stage2: saved step {stopped_at} and stopped on SIGTERM; rerun the same command to "
          "resume") in stderr

  stderr = run.finish()
  assert f"resumed from the checkpoint of step {stopped_at}" in stderr
  assert_equal_leaves(dict(np.load(run.out)), uninterrupted)


def stop_at_batch(monkeypatch, stop_step: int, signal_name: str = "SIGTERM") -> None:
  """Makes prior_run's batches request a stop (as the signal's handler does) when batch
  `stop_step` is drawn."""
  original_batches = prior_run.pipeline.array_train_batches

  def stopping(*args, **kwargs):
    for step, batch in enumerate(original_batches(*args, **kwargs), args[3] + 1):
      if step == stop_step:
        interrupts.request(signal_name)
      yield batch
  monkeypatch.setattr(prior_run.pipeline, "array_train_batches", stopping)


def test_ctrl_c_saves_the_step_in_flight_and_exits_130(tmp_path, monkeypatch, caplog):
  stop_at_batch(monkeypatch, 6, "SIGINT")
  with pytest.raises(SystemExit) as exit_info:
    cli.run(lambda: prior_run.train(str(tmp_path), NUM_STEPS))
  assert exit_info.value.code == 130
  assert steps_of(tmp_path) == [4, 6]
  assert "stage2: saved step 6 and stopped on SIGINT; rerun the same command" in caplog.text


def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_one_before_resumed(
    tmp_path, uninterrupted, caplog, monkeypatch):
  caplog.set_level(logging.INFO)
  workdir = tmp_path / "work"
  stop_at_batch(monkeypatch, 12)
  with interrupts.handling_stop_signals(), pytest.raises(interrupts.Stopped):
    prior_run.train(str(workdir), NUM_STEPS)
  monkeypatch.undo()
  assert steps_of(workdir) == [8, 12]
  data_files = sorted((workdir / "stage2/checkpoints/12/state/ocdbt.process_0/d").iterdir(),
                      key=lambda p: -p.stat().st_size)  # the arrays' bytes, largest first.
  with open(data_files[0], "r+b") as f:  # truncated, as by a crash of the file system.
    f.truncate(100)

  state = prior_run.train(str(workdir), NUM_STEPS)
  assert_equal_leaves(prior_run.leaves(state), uninterrupted)
  moved = os.listdir(workdir / "stage2" / "damaged_checkpoints")
  assert len(moved) == 1 and moved[0].startswith("12-")
  assert "the checkpoint of step 12 does not restore" in caplog.text
  assert "resumed from the checkpoint of step 8" in caplog.text


@pytest.fixture
def small_disk(tmp_path):
  """(directory, fill): a 3 MiB tmpfs, and a function that fills it up."""
  mount = tmp_path / "disk"
  mount.mkdir()
  mounted = not os.environ.get("MXQ_TEST_NO_TMPFS") and subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
      capture_output=True).returncode == 0  # root, or a container that allows it.
  filler = mount / "filler"

  def fill():
    try:
      with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to fail at close.
        while True:
          f.write(b"\0" * 65536)
    except OSError as error:
      assert error.errno == errno.ENOSPC
  yield mount, fill, mounted, filler
  if mounted:
    subprocess.run(["umount", str(mount)], check=True)


def test_a_failed_save_stops_at_once_and_a_rerun_resumes(small_disk, uninterrupted,
                                                          monkeypatch):
  mount, fill, mounted, filler = small_disk
  workdir = mount / "work"
  if not mounted:  # no tmpfs allowed here: the write error is injected at the same point.
    real_save = checkpoints.ocp.CheckpointManager.save

    def failing_save(self, step, *args, **kwargs):
      if filler.exists():
        raise OSError(errno.ENOSPC, "No space left on device", str(workdir))
      return real_save(self, step, *args, **kwargs)
    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", failing_save)
    fill = lambda: filler.write_bytes(b"x")  # noqa: E731

  original_batches = prior_run.pipeline.array_train_batches

  filled = []

  def filling_at_batch_6(*args, **kwargs):  # the disk fills between the saves of 4 and 8.
    for step, batch in enumerate(original_batches(*args, **kwargs), args[3] + 1):
      if step == 6 and not filled:
        fill()
        filled.append(step)
      yield batch
  monkeypatch.setattr(prior_run.pipeline, "array_train_batches", filling_at_batch_6)

  with pytest.raises(checkpoints.CheckpointError) as error:
    prior_run.train(str(workdir), NUM_STEPS)
  message = str(error.value)
  assert "\n" not in message
  assert "could not save the checkpoint of step 8" in message and "ENOSPC" in message
  assert "it resumes from step 4" in message
  assert steps_of(workdir) == [4]  # nothing half-written beside it.
  assert os.listdir(workdir / "stage2" / "checkpoints") == ["4"]

  filler.unlink()  # space freed: the same command resumes and ends as if nothing happened.
  state = prior_run.train(str(workdir), NUM_STEPS)
  assert_equal_leaves(prior_run.leaves(state), uninterrupted)
