"""Reads published weight files into numpy arrays, without torch or the safetensors package.

FID's Inception weights are a PyTorch state dict (`torch.save` of an OrderedDict of tensors),
CLIP's are a safetensors file; users should point the config at the files as downloaded. Both
formats are simple enough to read with the standard library and numpy:

- A `.pth` is one of two layouts (`torch/serialization.py`). Since torch 1.6 a zip archive
  (stored, not compressed) of `{archive}/data.pkl`, a pickle in which every tensor is
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and every storage a
  persistent id `('storage', torch.FloatStorage, key, location, numel)` whose bytes are the
  record `{archive}/data/{key}`; `{archive}/byteorder` says "little" or "big" (absent: little).
  Before 1.6 ("legacy"): five pickles in a row (magic number, protocol 1001, system info, the
  object with persistent ids `('storage', type, key, location, numel, view)`, the sorted storage
  keys), then each storage as an int64 element count and its little-endian bytes.
- A `.safetensors` is an 8-byte little-endian header length, a JSON header
  `{name: {dtype, shape, data_offsets}}` and the raw little-endian tensor bytes.

Unpickling runs no code from the file: only OrderedDict and torch's tensor and storage
constructors are resolved, to stand-ins that build numpy arrays; any other global is refused.
"""

import collections
import dataclasses
import json
import pickle
import struct
import zipfile

import numpy as np

from mxq_jax import config_lib, files

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "i8", "IntStorage": "i4",
    "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}
_SAFETENSORS_DTYPES = {
    "F64": "f8", "F32": "f4", "F16": "f2", "BF16": "bfloat16", "I64": "i8", "I32": "i4",
    "I16": "i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


class WeightFileError(config_lib.ConfigError):
  """A weight file that cannot be read or is not the one expected; one line, naming the file."""


def _dtype(name: str, byteorder: str = "<") -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # A JAX dependency; numpy has no bfloat16.
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name).newbyteorder(byteorder)


# ------------------------------------------------------------------------------ PyTorch .pth


@dataclasses.dataclass
class _StorageType:
  """What `torch.FloatStorage` (and the like) unpickles to: only its element type matters."""
  name: str


@dataclasses.dataclass
class _Storage:
  """A flat buffer of one dtype; legacy files fill `data` after the pickle, or `root` views it."""
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None
  root: "_Storage | None" = None
  root_offset: int = 0

  def array(self) -> np.ndarray:
    if self.root is not None:
      return self.root.array()[self.root_offset:self.root_offset + self.numel]
    return self.data


@dataclasses.dataclass
class _Tensor:
  """A strided view of a storage, made into an array once every storage has its bytes."""
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  def materialize(self) -> np.ndarray:
    flat = self.storage.array()
    last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride) if n > 0)
    if any(n == 0 for n in self.shape):
      return np.zeros(self.shape, flat.dtype)
    if not 0 <= self.offset <= last < len(flat):
      raise ValueError(f"a tensor reaches past its storage ({last} >= {len(flat)} elements)")
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], self.shape, tuple(s * flat.itemsize for s in self.stride))
    return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args) -> _Tensor:
  """Stands in for torch._utils._rebuild_tensor(_v2): the extra arguments are autograd state."""
  return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused_args):
  """Stands in for torch._utils._rebuild_parameter(_with_state): a Parameter is its tensor."""
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals a state dict needs; storages come from `load_storage`."""

  def __init__(self, file, load_storage=None):
    super().__init__(file, encoding="utf-8")
    self._load_storage = load_storage

  def find_class(self, module: str, name: str):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(f"it holds a {module}.{name}, not only tensors and dicts")
    return _ALLOWED_GLOBALS[(module, name)]

  def persistent_load(self, saved_id):
    if self._load_storage is None or not isinstance(saved_id, tuple) or saved_id[0] != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {saved_id!r:.60}")
    return self._load_storage(*saved_id[1:])


def _storage_dtype(storage_type, byteorder: str = "<") -> np.dtype:
  if not isinstance(storage_type, _StorageType):
    raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r:.60}")
  return _dtype(_STORAGE_DTYPES[storage_type.name], byteorder)


def _read_zip_pth(path: str):
  with files.open(path, "rb") as f, zipfile.ZipFile(f) as archive:
    names = archive.namelist()
    prefix = names[0].split("/")[0] + "/" if names and "/" in names[0] else ""
    if prefix + "data.pkl" not in names:
      raise ValueError("a zip archive without data.pkl")
    byteorder = "<"
    if prefix + "byteorder" in names:
      byteorder = "<" if archive.read(prefix + "byteorder").strip() == b"little" else ">"
    storages = {}

    def load_storage(storage_type, key, unused_location, numel):
      if key not in storages:
        dtype = _storage_dtype(storage_type, byteorder)
        data = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype)
        if len(data) < numel:
          raise ValueError(f"storage {key} holds {len(data)} of {numel} elements")
        storages[key] = _Storage(dtype, numel, data)
      return storages[key]

    with archive.open(prefix + "data.pkl") as pickled:
      return _RestrictedUnpickler(pickled, load_storage).load()


def _read_legacy_pth(path: str):
  with files.open(path, "rb") as f:
    header = [_RestrictedUnpickler(f).load() for _ in range(3)]
    if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
      raise ValueError("neither a zip archive nor a legacy torch.save file")
    if not header[2].get("little_endian", True):
      raise ValueError("a big-endian legacy file")
    storages = {}

    def load_storage(storage_type, key, unused_location, numel, view=None):
      if key not in storages:
        storages[key] = _Storage(_storage_dtype(storage_type), numel)
      if view is None:
        return storages[key]
      _, offset, view_numel = view
      return _Storage(storages[key].dtype, view_numel, root=storages[key], root_offset=offset)

    result = _RestrictedUnpickler(f, load_storage).load()
    for key in _RestrictedUnpickler(f).load():
      storage = storages[key]
      (numel,) = struct.unpack("<q", f.read(8))
      nbytes = numel * storage.dtype.itemsize
      storage.data = np.frombuffer(f.read(nbytes), storage.dtype)
      if len(storage.data) != numel:
        raise ValueError(f"the file ends inside storage {key}")
  return result


def _flat_tensors(obj, prefix: str = "") -> dict[str, np.ndarray]:
  """{dotted name: array} of every tensor in nested dicts (a state dict is already flat)."""
  if isinstance(obj, _Tensor):
    return {prefix: obj.materialize()}
  if isinstance(obj, dict):
    flat = {}
    for key, value in obj.items():
      flat.update(_flat_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
  return {}


def read_pth(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a PyTorch state dict file (zip or legacy layout), without torch.

  Raises WeightFileError (one line, naming the file) when it is missing or is not one.
  """
  if not files.is_file(path):
    raise WeightFileError(f"{path}: no such file")
  with files.open(path, "rb") as f:
    is_zip = f.read(4) == b"PK\x03\x04"
  try:
    result = _read_zip_pth(path) if is_zip else _read_legacy_pth(path)
    tensors = _flat_tensors(result)
  except (pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError, EOFError,
          struct.error, TypeError, AttributeError, IndexError) as error:
    reason = " ".join(str(error).split()) or type(error).__name__
    raise WeightFileError(f"{path}: not a readable PyTorch state dict ({reason})") from None
  if not tensors:
    raise WeightFileError(f"{path}: holds no tensors")
  return tensors


# ------------------------------------------------------------------------------- safetensors


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a .safetensors file (memory-mapped, read-only views).

  Raises WeightFileError (one line, naming the file) when it is missing or is not one.
  """
  if not files.is_file(path):
    raise WeightFileError(f"{path}: no such file")
  size = files.size(path)
  try:
    with files.open(path, "rb") as f:
      (header_size,) = struct.unpack("<Q", f.read(8))
      if header_size > size - 8:
        raise ValueError(f"header length {header_size} exceeds the file")
      header = json.loads(f.read(header_size))
      buffer = _tensor_bytes(path, f, 8 + header_size, size)
    tensors = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      dtype = _dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      begin, end = info["data_offsets"]
      shape = tuple(info["shape"])
      if not 0 <= begin <= end <= len(buffer) or end - begin != np.prod(shape) * dtype.itemsize:
        raise ValueError(f"{name}: offsets {begin}..{end} do not fit shape {shape}")
      tensors[name] = buffer[begin:end].view(dtype).reshape(shape)
  except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as error:
    reason = " ".join(str(error).split()) or type(error).__name__
    raise WeightFileError(f"{path}: not a readable safetensors file ({reason})") from None
  return tensors


def _tensor_bytes(path: str, f, offset: int, size: int) -> np.ndarray:
  """uint8 [size - offset]: the rest of the file `f`, memory-mapped where it is local."""
  if size <= offset:
    return np.zeros(0, np.uint8)
  if files.is_local(path):
    return np.memmap(path, np.uint8, mode="r", offset=offset)
  return np.frombuffer(f.read(), np.uint8)  # read-only, as the memory map.


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  """Writes {name: array} as a .safetensors file (the inverse of `read_safetensors`)."""
  names = {np.dtype(v).name: k for k, v in _SAFETENSORS_DTYPES.items() if v != "bfloat16"}
  names["bfloat16"] = "BF16"
  header, offset = {}, 0
  arrays = {name: np.asarray(value) for name, value in tensors.items()}
  for name, array in arrays.items():
    header[name] = {"dtype": names[array.dtype.name], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
  encoded = json.dumps(header).encode()
  encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes.
  def write(f):
    f.write(struct.pack("<Q", len(encoded)) + encoded)
    for array in arrays.values():
      f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C"))
  files.write_atomically(path, write)


# ------------------------------------------------------------------------------------ checks


def check_shapes(path: str, tensors: dict[str, np.ndarray],
                 expected: dict[str, tuple[int, ...]]) -> None:
  """Raises WeightFileError (one line) naming the first missing or misshapen tensor."""
  missing = [name for name in expected if name not in tensors]
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise WeightFileError(f"{path}: has no tensor {missing[0]!r}{more}")
  for name, shape in expected.items():
    if tuple(tensors[name].shape) != tuple(shape):
      raise WeightFileError(
          f"{path}: {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}")
