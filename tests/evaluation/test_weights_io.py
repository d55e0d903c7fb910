"""The .pth and safetensors readers on files laid out as torch and Hugging Face write them."""

import json
import os
import pickle
import pickletools
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

import weight_files
from mxq_jax import config_lib
from mxq_jax.evaluation import weights_io


def mixed_state_dict() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      "conv.weight": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
      "bn.num_batches_tracked": np.array(7, np.int64),
      "half": rng.standard_normal(5).astype(np.float16),
      "double": rng.standard_normal((2, 2)),
      "mask": np.array([True, False, True]),
      "ids": np.arange(-3, 3, dtype=np.int32),
      "pixels": np.arange(6, dtype=np.uint8).reshape(2, 3),
  }


def assert_same_tensors(got: dict, want: dict) -> None:
  assert list(got) == list(want)
  for name, array in want.items():
    assert got[name].dtype == array.dtype, name
    assert got[name].shape == array.shape, name
    np.testing.assert_array_equal(got[name], array)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_round_trip(tmp_path, legacy):
  path = str(tmp_path / "weights.pth")
  weight_files.write_pth(path, mixed_state_dict(), legacy=legacy)
  assert_same_tensors(weights_io.read_pth(path), mixed_state_dict())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_tensors_viewing_one_storage(tmp_path, legacy):
  storage = np.arange(12, dtype=np.float32)
  path = str(tmp_path / "views.pth")
  weight_files.write_pth(path, {
      "matrix": (storage, 0, (3, 4), (4, 1)),
      "transposed": (storage, 0, (4, 3), (1, 4)),  # as torch saves w.t() without a copy.
      "row": (storage, 4, (4,), (1,)),
      "column": (storage, 2, (3,), (4,)),
  }, legacy=legacy)
  tensors = weights_io.read_pth(path)
  np.testing.assert_array_equal(tensors["matrix"], storage.reshape(3, 4))
  np.testing.assert_array_equal(tensors["transposed"], storage.reshape(3, 4).T)
  np.testing.assert_array_equal(tensors["row"], storage[4:8])
  np.testing.assert_array_equal(tensors["column"], storage.reshape(3, 4)[:, 2])


def test_zip_writer_lays_records_out_as_torch_does(tmp_path):
  """Checks the test writer against the format description, so the reader's tests mean it."""
  path = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
  weight_files.write_pth(path, mixed_state_dict())
  folder = "pt_inception-2015-12-05-6726825d/"
  with open(path, "rb") as f:
    raw = f.read()
  with zipfile.ZipFile(path) as archive:
    infos = archive.infolist()
    assert infos[0].filename == folder + "data.pkl"
    assert all(info.filename.startswith(folder) for info in infos)
    assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
    assert archive.read(folder + "version") == b"3\n"
    assert archive.read(folder + "byteorder") == b"little"
    for info in infos:  # Local header: 30 bytes, name length at 26, extra length at 28.
      start = info.header_offset
      name_len, extra_len = struct.unpack("<HH", raw[start + 26:start + 30])
      assert (start + 30 + name_len + extra_len) % 64 == 0, info.filename
    ops = list(pickletools.genops(archive.read(folder + "data.pkl")))
  assert ops[0][0].name == "PROTO" and ops[0][1] == 2
  globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
  assert {"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
          "torch FloatStorage", "torch LongStorage"} <= globals_
  assert any(op.name == "BINPERSID" for op, _, _ in ops)


def test_pth_that_would_run_code_is_refused(tmp_path):
  marker = tmp_path / "pwned"

  class Exploit:
    def __reduce__(self):
      return (os.mkdir, (str(marker),))

  path = str(tmp_path / "exploit.pth")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("exploit/data.pkl", pickle.dumps({"w": Exploit()}, protocol=2))
  with pytest.raises(weights_io.WeightFileError, match="not only tensors and dicts") as error:
    weights_io.read_pth(path)
  assert not marker.exists()
  assert "\n" not in str(error.value) and path in str(error.value)


def test_missing_or_foreign_pth_is_a_one_line_config_error(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="no such file"):
    weights_io.read_pth(str(tmp_path / "absent.pth"))
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"\x00not a checkpoint" * 10)
  with pytest.raises(config_lib.ConfigError, match="not a readable PyTorch state dict") as error:
    weights_io.read_pth(str(garbage))
  assert "\n" not in str(error.value) and str(garbage) in str(error.value)
  truncated = tmp_path / "truncated.pth"
  weight_files.write_pth(str(truncated), mixed_state_dict(), legacy=True)
  truncated.write_bytes(truncated.read_bytes()[:-20])
  with pytest.raises(config_lib.ConfigError, match="not a readable PyTorch state dict"):
    weights_io.read_pth(str(truncated))


def test_safetensors_round_trip_and_layout(tmp_path):
  tensors = {**mixed_state_dict(),
             "brain": np.array([1.5, -2.25, 3.0], ml_dtypes.bfloat16),
             "logit_scale": np.array(4.6, np.float32)}
  path = str(tmp_path / "model.safetensors")
  weights_io.write_safetensors(path, tensors)
  assert_same_tensors(weights_io.read_safetensors(path), tensors)
  with open(path, "rb") as f:
    (header_size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_size))
  assert header["logit_scale"] == {"dtype": "F32", "shape": [],
                                   "data_offsets": header["logit_scale"]["data_offsets"]}
  assert header["brain"]["dtype"] == "BF16" and header["mask"]["dtype"] == "BOOL"
  ends = sorted(tuple(info["data_offsets"]) for info in header.values())
  assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ends, ends[1:]))


def test_bad_safetensors_is_a_one_line_config_error(tmp_path):
  path = tmp_path / "model.safetensors"
  weights_io.write_safetensors(str(path), {"w": np.ones((4, 4), np.float32)})
  path.write_bytes(path.read_bytes()[:-8])
  with pytest.raises(config_lib.ConfigError, match="not a readable safetensors file") as error:
    weights_io.read_safetensors(str(path))
  assert "\n" not in str(error.value)


def test_check_shapes_names_the_first_problem():
  tensors = {"a": np.zeros((2, 3)), "b": np.zeros(4)}
  weights_io.check_shapes("f.pth", tensors, {"a": (2, 3), "b": (4,)})
  with pytest.raises(config_lib.ConfigError, match=r"f.pth: has no tensor 'c' \(and 1 more\)"):
    weights_io.check_shapes("f.pth", tensors, {"a": (2, 3), "c": (1,), "d": (1,)})
  with pytest.raises(config_lib.ConfigError,
                     match=r"f.pth: 'a' has shape \(2, 3\), expected \(3, 2\)"):
    weights_io.check_shapes("f.pth", tensors, {"a": (3, 2)})
