"""Orbax checkpoints of a stage: the train state plus a JSON record of what made it.

Orbax writes each step to a temporary directory and renames it when complete, so a crash
mid-save leaves nothing that `latest_step()` would trust. The JSON record holds the config
fields that fix the shapes of the state (`signature`); restoring into a different model is
refused before anything is written.
"""

import json
import os

import orbax.checkpoint as ocp

from mxq_jax import config_lib


def checkpoint_dir(workdir: str, stage_name: str) -> str:
  """Where a stage's checkpoints live: `{workdir}/{stage_name}/checkpoints`."""
  return os.path.join(workdir, stage_name, "checkpoints")


def make_manager(directory: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options, item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Starts an (asynchronous) save of `state` at `step`; `meta` must be JSON-serializable."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


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


def open_read_only(directory: str) -> ocp.CheckpointManager | None:
  """A manager that never writes, or None when `directory` does not exist."""
  if not os.path.isdir(directory):
    return None
  return ocp.CheckpointManager(os.path.abspath(directory),
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
  """The JSON record of `directory`'s latest checkpoint (never creating it), or None."""
  manager = open_read_only(directory)
  if manager is None:
    return None
  try:
    return read_meta(manager)
  finally:
    manager.close()


def check_directory(directory: str, signature: dict) -> None:
  """Reads (never creates) `directory`'s latest checkpoint record and checks it matches."""
  check_compatible(read_latest_meta(directory), signature, directory)


# Signature fields added after checkpoints were first written, with the value every older
# checkpoint (which lacks the field) implicitly had: at that value they compare as absent.
LATER_FIELDS = {"fusion": "transformer", "codebooks": "shared", "decoder_inputs": "joint"}


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
  diffs = [f"{key}: checkpoint {saved.get(key)!r} vs config {current.get(key)!r}"
           for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
  if diffs:
    raise config_lib.ConfigError(
        f"{directory} holds checkpoints of a different model ({'; '.join(diffs[:3])}"
        f"{'; ...' if len(diffs) > 3 else ''}); use a new --workdir, or the config that wrote it")
