"""A training run's hold on its workdir: one run at a time, and no trace of a run that failed
before it started.

`hold(workdir)` wraps `run.train_and_evaluate`:
- a lock file, `{workdir}/.mxq_jax.lock` (host, PID, start time), created exclusively by process
  0 before anything else is written and removed on exit. A second run is refused with one line
  naming its holder; the lock of a process that no longer runs on this host is taken over with a
  warning (a run killed with SIGKILL cannot remove it).
- a first run (no config.json yet) that fails before it writes config.json removes whatever it
  created, so that the corrected command starts from the workdir as the user left it.

Locks need an exclusive create, so they are local-filesystem only: a `gs://` workdir is used
unlocked, with a warning.
"""

import contextlib
import json
import os
import shutil
import socket
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mxq_jax import config_lib, files

LOCK_NAME = ".mxq_jax.lock"
CONFIG_NAME = "config.json"


def record_config(workdir: str, config: dict) -> None:
  """{workdir}/config.json, which sample, evaluate and export rebuild the models from: the
  config of the latest run that ran a stage. A run with another config (a prior of another
  width trained into a copy of a stage-1 workdir, a stage trained for more steps) replaces it
  and keeps the earlier one as config.N.json, logging the fields that changed; a config that
  differs only in `stages` (what a run does, not what the workdir holds) writes nothing."""
  path = os.path.join(workdir, CONFIG_NAME)
  config = json.loads(json.dumps(config))  # as it reads back: tuples become lists.
  if files.exists(path):
    earlier = files.read_json(path)
    if dict(earlier, stages=None) == dict(config, stages=None):
      return
    kept = f"config.{len(files.glob(workdir, 'config.*.json')) + 1}.json"
    files.write_text(os.path.join(workdir, kept), files.read_text(path))
    old, new = config_lib.flat_fields(earlier), config_lib.flat_fields(config)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    logging.warning("%s: this run's config differs from the workdir's in %s; config.json now "
                    "holds this run's, the earlier one is kept as %s", workdir,
                    ", ".join(f"{k} ({old.get(k)} -> {new.get(k)})" for k in changed), kept)
  files.write_json(path, config)


class WorkdirBusy(config_lib.ConfigError):
  """Another run holds the workdir."""


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a reused PID apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _runs(holder: dict) -> bool:
  """Whether the lock's holder (a process of this host) still runs."""
  pid = holder.get("pid")
  if not isinstance(pid, int) or not files.process_runs(pid):
    return False
  started = _start_time(pid)
  return started is None or holder.get("start_time") in (None, started)


def _describe(holder: dict) -> str:
  return (f"PID {holder.get('pid')} on host {holder.get('host')}, "
          f"since {holder.get('started', 'an unknown time')}")


def _read_holder(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):  # a lock being written, or a torn one: no usable holder.
    return {}


def acquire(workdir: str) -> str:
  """Creates the workdir's lock (and the workdir); returns its path. WorkdirBusy when taken."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  for _ in range(2):  # a second try after taking over a stale lock.
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read_holder(path)
      if holder.get("host") != me["host"] or _runs(holder):
        raise WorkdirBusy(
            f"--workdir={workdir} is in use by another run ({_describe(holder)}); wait for it "
            f"to finish or stop it, or, if that run is gone, delete {path}") from None
      logging.warning("taking over the lock of a run that no longer runs (%s)",
                      _describe(holder))
      os.remove(path)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return path
  raise WorkdirBusy(f"could not lock --workdir={workdir}: another run took {path} meanwhile")


def _all_agree(ok: bool) -> bool:
  """Process 0's answer, on every process (the lock is only process 0's to take)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _undo_first_run(workdir: str, existed: bool, before: set[str]) -> None:
  """Removes what a first run created in `workdir` (and the workdir, if it made it)."""
  if not os.path.isdir(workdir) or os.path.exists(os.path.join(workdir, CONFIG_NAME)):
    return
  created = sorted(set(os.listdir(workdir)) - before - {LOCK_NAME})
  for name in created:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
  if created:
    logging.info("the run failed before it started: removed what it wrote in %s (%s)",
                 workdir, ", ".join(created))
  if not existed and not set(os.listdir(workdir)) - {LOCK_NAME}:
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def hold(workdir: str):
  """The workdir, locked for this run; a failed first run is undone (see the module doc)."""
  local = files.is_local(workdir)  # the lock and the undoing below use os: local only.
  if local and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"--workdir={workdir} is a file, not a directory; choose "
                                 "another --workdir")
  leader = jax.process_index() == 0
  existed = os.path.isdir(workdir) if local else True
  before = set(os.listdir(workdir)) if local and existed else set()
  lock_path, error = None, None
  if local and leader:
    try:
      lock_path = acquire(workdir)
    except WorkdirBusy as busy:
      error = busy
  elif not local and leader:
    logging.warning("%s is not on a local filesystem and is used unlocked: start one run per "
                    "workdir", workdir)
  if not _all_agree(error is None):
    raise error or WorkdirBusy(f"--workdir={workdir}: process 0 could not lock it")
  try:
    yield
  except BaseException:
    if local and leader:
      _undo_first_run(workdir, existed, before)
    raise
  finally:
    if lock_path is not None:
      with contextlib.suppress(FileNotFoundError):
        os.remove(lock_path)
      if not existed and os.path.isdir(workdir) and not os.listdir(workdir):
        os.rmdir(workdir)
