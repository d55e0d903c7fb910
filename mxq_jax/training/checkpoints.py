"""Orbax checkpoints of a stage: the train state plus a JSON record of what made it.

Orbax writes each step to a temporary directory and renames it when complete, so a crash
mid-save leaves nothing that `latest_step()` would trust. The JSON record holds the config
fields that fix the shapes of the state (`signature`); restoring into a different model is
refused before anything is written.

Saves are synchronous: a save that fails (a full disk, a read-only directory) stops the run at
that step with one line naming the cause (`CheckpointError`), instead of surfacing, or being
logged and dropped, in a background thread while training goes on. At :smoke sizes training
waits 0.2-1.2 s a save (1 to 8 devices), once every `checkpoint_every` steps.

A checkpoint that does not restore (a truncated file, a deleted record) is moved aside to
`{stage}/damaged_checkpoints/` with one warning, and the newest one that restores is used.
"""

import errno
import contextlib
import json
import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from mxq_jax import config_lib, files


class CheckpointError(config_lib.ConfigError):
  """A checkpoint directory that cannot be written or read; one line, with what to do."""


def checkpoint_dir(workdir: str, stage_name: str) -> str:
  """Where a stage's checkpoints live: `{workdir}/{stage_name}/checkpoints`."""
  return os.path.join(workdir, stage_name, "checkpoints")


def _check_gcs_client(directory: str) -> None:
  """Orbax lists a `gs://` checkpoint directory with the google-cloud-storage client, which it
  does not install: say so in one line rather than with its ImportError."""
  if not directory.startswith("gs://"):
    return
  try:
    from google.cloud import storage  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise CheckpointError(f"checkpoints in {directory} need the google-cloud-storage package: "
                          "pip install -e '.[gcs]'") from None


def _save_replicated_arrays_whole() -> None:
  """Each replicated array is written whole by its first replica.

  Orbax's default on CPU and TPU splits a replicated array among its replicas, each writing a
  slice: the first save then compiles one slicing program per array shape (232 in
  test_remote_paths' 8-device :smoke run; a warm-cache 8-device :smoke main run took 28 and
  37 s with them, 18 and 21 s without, on 2 cores). The state here is small (25M parameters
  at the paper sizes): the split saves nothing worth that.
  A process-wide registration (Orbax's TypeHandler registry has no per-manager setting for
  StandardSave); it changes how arrays are written, not what is written or restored.
  """
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def make_manager(directory: str, keep: int) -> ocp.CheckpointManager:
  _save_replicated_arrays_whole()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  _check_gcs_client(directory)
  try:
    return ocp.CheckpointManager(
        files.absolute(directory), options=options, item_names=("state", "meta"))
  except Exception as error:  # e.g. a read-only workdir: orbax creates the directory here.
    raise CheckpointError(f"cannot create the checkpoint directory {directory} "
                          f"({cause(error)}); fix its permissions or choose another "
                          "--workdir") from error


def cause(error: BaseException) -> str:
  """The root of an error chain in a few words: the OSError's message where there is one."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      code = errno.errorcode.get(seen.errno, "OSError")
      return f"{code}: {seen.strerror}" + (f": {seen.filename}" if seen.filename else "")
    seen = seen.__cause__ or seen.__context__
  first_line = (str(error).strip().splitlines() or [""])[0].split(". See ")[0][:160]
  return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _remove_unfinished(directory: str) -> None:
  """Deletes orbax's temporary directories of saves that never completed."""
  for name in files.listdir(directory):
    if ".orbax-checkpoint-tmp" in name:
      with contextlib.suppress(OSError):
        files.remove(os.path.join(directory, name))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Saves `state` at `step` (`meta` JSON-serializable); CheckpointError, with nothing
  half-written left behind, when the save fails."""
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
  except Exception as error:
    directory = str(manager.directory)
    if jax.process_index() == 0:
      _remove_unfinished(directory)
    last = manager.latest_step()
    raise CheckpointError(
        f"could not save the checkpoint of step {step} in {directory} ({cause(error)}); free "
        "space or fix the permissions, then rerun the same command: it resumes from "
        + (f"step {last}" if last is not None else "the start")) from error


def read_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict | None:
  """The JSON record of `step` (default: latest), or None when there is no checkpoint."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores `step` into the structure, dtypes and shardings of `abstract_state`."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored.state


def _quarantine(directory: str, step: int) -> str:
  """Moves the step's checkpoint out of orbax's sight, into `{stage}/damaged_checkpoints`."""
  destination = os.path.join(os.path.dirname(files.absolute(directory)), "damaged_checkpoints",
                             f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  if jax.process_index() == 0:
    files.makedirs(os.path.dirname(destination))
    files.rename(os.path.join(directory, str(step)), destination)
  if jax.process_count() > 1:  # no host looks for the next checkpoint before the move.
    multihost_utils.sync_global_devices(f"mxq_jax checkpoints: step {step} moved aside")
  return destination


def restore_newest(manager: ocp.CheckpointManager, abstract_state, signature: dict,
                   move_damaged: bool, steps: list[int] | None = None) -> tuple[object, int]:
  """(state, step) of the newest of `steps` (default: all) that restores and matches
  `signature`; a damaged one is named in a warning and, with `move_damaged`, moved aside.

  CheckpointError (one line) when none restores; ConfigError for another model's checkpoint.
  """
  directory = str(manager.directory)
  candidates = sorted(manager.all_steps() if steps is None else steps, reverse=True)
  failures = []
  for step in candidates:
    try:
      meta = read_meta(manager, step)
    except Exception as error:  # a damaged record: this checkpoint cannot be trusted.
      failed = error
    else:
      check_compatible(meta, signature, directory)
      try:
        state = restore(manager, step, abstract_state)
      except Exception as error:
        failed = error
      else:
        if failures and move_damaged:
          manager.reload()  # forget the steps moved aside.
        return state, step
    failures.append(f"step {step}: {cause(failed)}")
    moved = _quarantine(directory, step) if move_damaged else None
    logging.warning("%s: the checkpoint of step %d does not restore (%s)%s", directory, step,
                    cause(failed), f"; moved it to {moved}" if moved else "")
  if move_damaged:
    manager.reload()
  raise CheckpointError(
      f"{directory}: no checkpoint restores ({'; '.join(failures) or 'none found'})"
      + ("; the damaged ones were moved to damaged_checkpoints/ beside it: rerun to train "
         "from the start" if move_damaged and failures else ""))


def open_read_only(directory: str) -> ocp.CheckpointManager | None:
  """A manager that never writes, or None when `directory` does not exist."""
  if not files.is_dir(directory):
    return None
  _check_gcs_client(directory)
  return ocp.CheckpointManager(files.absolute(directory),
                               options=ocp.CheckpointManagerOptions(create=False, read_only=True))


def latest_step(directory: str) -> int | None:
  """The step of the newest complete checkpoint in `directory`, or None."""
  manager = open_read_only(directory)
  if manager is None:
    return None
  try:
    return manager.latest_step()
  finally:
    manager.close()


def read_latest_meta(directory: str) -> dict | None:
  """The JSON record of `directory`'s newest readable checkpoint (never creating it), or None."""
  manager = open_read_only(directory)
  if manager is None:
    return None
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return read_meta(manager, step)
      except Exception:  # damaged: `restore_newest` names it when the state is restored.
        continue
    return None
  finally:
    manager.close()


def check_directory(directory: str, signature: dict) -> None:
  """Reads (never creates) `directory`'s latest checkpoint record and checks it matches."""
  check_compatible(read_latest_meta(directory), signature, directory)


# Signature fields added after checkpoints were first written, with the value every older
# checkpoint (which lacks the field) implicitly had: at that value they compare as absent.
LATER_FIELDS = {"fusion": "transformer", "codebooks": "shared", "decoder_inputs": "joint",
                "grid_rotary_dims": 0, "text_head_relu": True}


# Recorded by checkpoints written since it was added: older ones are not checked for it.
RECORDED_LATER = ("optimizer",)


def _unrecorded_dropped(current: dict, saved: dict) -> dict:
  """`current` without the RECORDED_LATER keys that `saved` lacks, at every level."""
  return {k: _unrecorded_dropped(v, saved[k])
          if isinstance(v, dict) and isinstance(saved.get(k), dict) else v
          for k, v in current.items() if not (k in RECORDED_LATER and k not in saved)}


def _canonical(signature: dict) -> dict:
  """JSON's view (tuples become lists), without LATER_FIELDS at their implicit values."""
  def strip(value):
    if isinstance(value, dict):
      return {k: strip(v) for k, v in value.items()
              if not (k in LATER_FIELDS and LATER_FIELDS[k] == v)}
    return value
  return strip(json.loads(json.dumps(signature)))


def check_compatible(saved_meta: dict | None, signature: dict, directory: str) -> None:
  """Refuses (ConfigError, one line) a checkpoint written for differently shaped state."""
  if saved_meta is None:
    return
  saved, current = _canonical(saved_meta.get("signature", {})), _canonical(signature)
  current = _unrecorded_dropped(current, saved)
  diffs = [f"{key}: checkpoint {saved.get(key)!r} vs config {current.get(key)!r}"
           for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
  if diffs:
    raise config_lib.ConfigError(
        f"{directory} holds checkpoints of a different model ({'; '.join(diffs[:3])}"
        f"{'; ...' if len(diffs) > 3 else ''}); use a new --workdir, or the config that wrote it")
