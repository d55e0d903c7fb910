"""The project's own files (JSON records, codes, tokenizer, caches, samples), on any filesystem.

Every file the project reads or writes goes through this module: paths are `etils.epath` paths,
so local directories and `gs://` alike (the libraries that write their own files, Orbax for
checkpoints, TFDS for datasets and TensorBoard's writer, take `gs://` paths themselves).

Writers go through `write_atomically`: the bytes go to a uniquely named sibling, which is then
renamed over the target, so a reader never sees half a file and several processes may write
the same file at once. Object stores have no atomic rename: on `gs://` the rename is a copy and
a delete, but an object only appears once its upload is complete, so a reader there too sees the
old file or the new one, never part of one; what a crash can leave is a temporary sibling.
"""

import json
import os
import uuid
from collections.abc import Callable
from typing import BinaryIO, IO

import numpy as np
from etils import epath

PathLike = str | epath.PathLike


def is_local(path: PathLike) -> bool:
  """Whether `path` is on this host's filesystem (no `scheme://` prefix, as `gs://` has)."""
  return "://" not in os.fspath(path)


def absolute(path: PathLike) -> str:
  """`path` made absolute; a `gs://` path already is (os.path.abspath would mangle it)."""
  return os.path.abspath(path) if is_local(path) else os.fspath(path)


# ------------------------------------------------------------------------------- writing


def write_atomically(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write(f)` on a temporary sibling of `path` (parents created), then renames it.

  A `write` that raises leaves nothing: not `path`, and not the sibling (which on `gs://` the
  closing of the file has uploaded, part-written).
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f"{path.name}.tmp-{uuid.uuid4().hex}"
  try:
    with tmp.open("wb") as f:
      write(f)
    tmp.replace(path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_bytes(path: PathLike, data: bytes, atomic: bool = True) -> None:
  """`data` at `path`; `atomic=False` writes in place, for files of a directory that is only
  published whole (one upload per object on `gs://`, instead of an upload, a copy and a delete)."""
  if atomic:
    write_atomically(path, lambda f: f.write(data))
  else:
    epath.Path(path).write_bytes(data)


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, payload: dict) -> None:
  """`payload` as indented JSON with sorted keys (stable bytes for the same content)."""
  write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def save_npy(path: PathLike, array: np.ndarray) -> None:
  write_atomically(path, lambda f: np.save(f, array))


# ------------------------------------------------------------------------------- reading


def open(path: PathLike, mode: str = "r") -> IO:  # pylint: disable=redefined-builtin
  """The file at `path`, as the builtin `open(path, mode)` would give it on a local disk."""
  return epath.Path(path).open(mode)


def read_bytes(path: PathLike) -> bytes:
  return epath.Path(path).read_bytes()


def read_text(path: PathLike) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path: PathLike) -> dict:
  """The JSON object at `path`, or {} when there is no such file."""
  path = epath.Path(path)
  return json.loads(path.read_text()) if path.exists() else {}


def load_npy(path: PathLike) -> np.ndarray:
  with open(path, "rb") as f:
    return np.load(f)


# ------------------------------------------------------------------------------- the tree


def exists(path: PathLike) -> bool:
  return epath.Path(path).exists()


def is_dir(path: PathLike) -> bool:
  return epath.Path(path).is_dir()


def is_file(path: PathLike) -> bool:
  return epath.Path(path).is_file()


def size(path: PathLike) -> int:
  """The file's length in bytes."""
  return epath.Path(path).stat().length


def makedirs(path: PathLike, exist_ok: bool = True) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=exist_ok)


def listdir(path: PathLike) -> list[str]:
  """The names in directory `path`, sorted; [] when it is no directory."""
  path = epath.Path(path)
  return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def glob(directory: PathLike, pattern: str) -> list[str]:
  """The paths in `directory` whose names match `pattern` (fnmatch), sorted."""
  return sorted(os.fspath(p) for p in epath.Path(directory).glob(pattern))


def remove(path: PathLike) -> None:
  """Deletes a file, or a directory and all it holds; nothing when there is none."""
  path = epath.Path(path)
  if path.is_dir():
    path.rmtree(missing_ok=True)
  else:
    path.unlink(missing_ok=True)


def rename(src: PathLike, dst: PathLike) -> None:
  """Moves file or directory `src` to `dst`, which must not exist. Atomic on a local disk; on
  `gs://` a directory moves object by object (a crash can leave part of it at each end)."""
  epath.Path(src).rename(dst)


def copy_tree(src: PathLike, dst: PathLike) -> None:
  """Copies directory `src` and everything in it to `dst` (parents created)."""
  src, dst = epath.Path(src), epath.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      child.copy(dst / child.name)


def process_runs(pid: int) -> bool:
  """Whether process `pid` of this host still runs (its leftovers are then not stale)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's.
    return True
  return True
