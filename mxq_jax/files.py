"""The project's own files (JSON records, codes, tokenizer, caches), written whole or not at all.

Every writer goes through `write_atomically`: the bytes go to a uniquely named sibling, which is
then renamed over the target, so a reader never sees half a file and several processes may write
the same file at once. Paths are `etils.epath` paths: local directories and `gs://` alike.
"""

import json
import os
import uuid
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
from etils import epath

PathLike = str | epath.PathLike


def write_atomically(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write(f)` on a temporary sibling of `path` (parents created), then renames it."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f"{path.name}.tmp-{uuid.uuid4().hex}"
  with tmp.open("wb") as f:
    write(f)
  tmp.replace(path)


def write_bytes(path: PathLike, data: bytes) -> None:
  write_atomically(path, lambda f: f.write(data))


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, payload: dict) -> None:
  """`payload` as indented JSON with sorted keys (stable bytes for the same content)."""
  write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def read_json(path: PathLike) -> dict:
  """The JSON object at `path`, or {} when there is no such file."""
  path = epath.Path(path)
  return json.loads(path.read_text()) if path.exists() else {}


def exists(path: PathLike) -> bool:
  return epath.Path(path).exists()


def save_npy(path: PathLike, array: np.ndarray) -> None:
  write_atomically(path, lambda f: np.save(f, array))


def process_runs(pid: int) -> bool:
  """Whether process `pid` of this host still runs (its leftovers are then not stale)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's.
    return True
  return True
