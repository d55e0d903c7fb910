"""One run per workdir, and no trace of a run that failed before it started."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mxq_jax import config_lib, run, workdir as workdir_lib


def snapshot(path) -> list[str]:
  return sorted(f"{p}:{p.stat().st_mtime_ns}" for p in path.rglob("*"))


def write_lock(workdir, pid: int) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / workdir_lib.LOCK_NAME).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": pid, "started": "2026-12-03 10:00:00"}))


def test_the_lock_is_held_during_the_run_and_removed_after(tmp_path):
  workdir = tmp_path / "work"
  with workdir_lib.hold(str(workdir)):
    holder = json.loads((workdir / workdir_lib.LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    (workdir / "config.json").write_text("{}")  # the run started.
  assert os.listdir(workdir) == ["config.json"]


def test_a_second_run_is_refused_in_one_line_and_writes_nothing(tmp_path, smoke_config):
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    workdir = tmp_path / "work"
    write_lock(workdir, other.pid)
    before = snapshot(workdir)
    with pytest.raises(workdir_lib.WorkdirBusy) as error:
      run.train_and_evaluate(smoke_config, str(workdir))
    message = str(error.value)
    assert "\n" not in message
    assert f"is in use by another run (PID {other.pid} on host {socket.gethostname()}" in message
    assert snapshot(workdir) == before
  finally:
    other.kill()
    other.wait()


def test_the_lock_of_a_run_that_died_is_taken_over(tmp_path, caplog):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  workdir = tmp_path / "work"
  write_lock(workdir, int(dead.stdout))
  with workdir_lib.hold(str(workdir)):
    assert json.loads((workdir / workdir_lib.LOCK_NAME).read_text())["pid"] == os.getpid()
  assert f"taking over the lock of a run that no longer runs (PID {int(dead.stdout)}" in (
      caplog.text)


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("mine")
  with pytest.raises(config_lib.ConfigError, match="is a file, not a directory"):
    with workdir_lib.hold(str(path)):
      pass
  assert path.read_text() == "mine"


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_first_run_leaves_the_workdir_as_it_found_it(tmp_path, smoke_config, existed):
  """Too many SentencePiece pieces fail after the data was built and the tokenizer tried."""
  workdir = tmp_path / "work"
  if existed:
    workdir.mkdir()
    (workdir / "notes.txt").write_text("the user's")
  before = snapshot(tmp_path / "work") if existed else None
  smoke_config.data.vocab_size = 5000
  with pytest.raises(config_lib.ConfigError, match="vocab_size=5000 is more pieces"):
    run.train_and_evaluate(smoke_config, str(workdir))
  if existed:
    assert snapshot(workdir) == before
  else:
    assert not workdir.exists()


def test_a_train_split_smaller_than_a_batch_is_refused_before_training(tmp_path,
                                                                      smoke_config):
  smoke_config.data.num_train = 12  # fewer than :smoke's batch of 16.
  smoke_config.data.vocab_size = 60  # what 12 captions can make.
  with pytest.raises(config_lib.ConfigError,
                     match=r"has 12 usable examples per process, fewer than a batch "
                           r"\(config.vqvae.optim.batch_size=16\)"):
    run.train_and_evaluate(smoke_config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()
