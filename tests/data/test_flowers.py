"""flowers_captions from a fixture tree in Oxford-102's layout; and its .mat reader."""

import json
import shutil
import time

import manual_layouts as layouts
import ml_collections
import numpy as np
import pytest
import scipy.io  # a dependency of jax: here only to check read_mat against the reference.
import tensorflow_datasets as tfds

from mxq_jax.data import flowers
from mxq_jax.data import manual_data

CONFIGS = ("official", "class")


def _data_config(data_dir, manual_dir, split="official"):
  return ml_collections.ConfigDict(dict(
      name="flowers", data_dir=str(data_dir), manual_dir=str(manual_dir), split=split,
      crop_to_bbox=False, coco_year=2014))


def _read(builder, split) -> dict[str, dict]:
  data = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  return {example["name"].decode(): example for example in data}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  return layouts.write_flowers(tmp_path_factory.mktemp("flowers_manual"))


@pytest.fixture(scope="module")
def built(manual_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("flowers_tfds")
  return {name: flowers.build(_data_config(data_dir, manual_dir, name)) for name in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS)
def test_split_membership_and_counts(built, config):
  builder = built[config]
  assert builder.builder_config.name == config
  for split in ("train", "test"):
    # "official": trnid and valid both train (the fixture puts train images in both).
    expected = {layouts.flowers_name(spec) for spec in layouts.SPECS
                if spec.kept and layouts.in_train(spec, config) == (split == "train")}
    assert set(_read(builder, split)) == expected
    assert builder.info.splits[split].num_examples == len(expected)


def test_captions_labels_and_rgb_images(built):
  builder = built["class"]
  examples = {**_read(builder, "train"), **_read(builder, "test")}
  names = builder.info.features["label"].names
  assert len(set(names)) == 102 and names[0] == "pink primrose"
  for spec in layouts.SPECS:
    if spec.kept:
      example = examples[layouts.flowers_name(spec)]
      assert [c.decode() for c in example["captions"]] == layouts.captions_of("flowers", spec)
      assert example["label"] == spec.label
      width, height = spec.size
      assert example["image"].shape == (height, width, 3)
      assert example["image"].dtype == np.uint8


@pytest.mark.parametrize("config", CONFIGS)
def test_report_counts_and_file(built, config):
  builder = built[config]
  report = manual_data.read_report(builder)
  assert report == json.loads(open(f"{builder.data_dir}/build_report.json").read())
  for split in ("train", "test"):
    specs = [spec for spec in layouts.SPECS
             if layouts.in_train(spec, config) == (split == "train")]
    counts = report["splits"][split]
    assert counts["kept"] == sum(spec.kept for spec in specs)
    skipped = {}
    for spec in specs:
      if layouts.skip_reason(spec):
        skipped[layouts.skip_reason(spec)] = skipped.get(layouts.skip_reason(spec), 0) + 1
    assert {reason: tally["count"] for reason, tally in counts["skipped"].items()} == skipped
    assert counts["shortened"]["names"] == [
        layouts.flowers_name(spec) for spec in specs if spec.kept and spec.captions < 10]


def test_layout_errors_are_fast_and_actionable(manual_dir, tmp_path):
  partial = tmp_path / "partial"
  shutil.copytree(manual_dir, partial)
  (partial / "setid.mat").unlink()
  for split, missing in (("official", "setid.mat"), ("class", None)):
    config = _data_config(tmp_path / "tfds", partial, split)
    if missing is None:
      flowers.build(config)  # "class" does not need setid.mat.
      continue
    start = time.perf_counter()
    with pytest.raises(manual_data.LayoutError) as error:
      flowers.build(config)
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert "\n" not in message and str(partial / missing) in message
    assert "flowers_captions" in message and "--config.data.manual_dir=DIR" in message
    assert "robots.ox.ac.uk" in message


# ------------------------------------------------------------------------------ read_mat
def _random_arrays():
  rng = np.random.default_rng(0)
  return {"doubles": rng.normal(size=(3, 5)),
          "bytes": rng.integers(0, 256, (1, 7)).astype(np.uint8),
          "shorts": rng.integers(0, 9000, (4, 2)).astype(np.uint16),
          "ints": rng.integers(-5, 5, (2, 3)).astype(np.int32), "row": np.arange(1.0, 9.0)[None]}


@pytest.mark.parametrize("compress", [False, True])
def test_read_mat_reads_what_scipy_writes(tmp_path, compress):
  arrays = _random_arrays()
  path = tmp_path / "a.mat"
  scipy.io.savemat(path, {**arrays, "text": "skipped", "cell": np.array([[1, "a"]], object)},
                   do_compression=compress)
  read = flowers.read_mat(str(path))
  assert set(read) == set(arrays)  # chars and cells are left out.
  for name, array in arrays.items():
    assert read[name].dtype == array.dtype and read[name].shape == array.shape
    np.testing.assert_array_equal(read[name], array)


def test_read_mat_widens_narrow_storage_like_scipy(manual_dir):
  for name in ("imagelabels.mat", "setid.mat"):
    ours = flowers.read_mat(str(manual_dir / name))
    reference = scipy.io.loadmat(manual_dir / name, mat_dtype=True)  # MATLAB class dtypes.
    for key, array in ours.items():
      assert array.dtype == reference[key].dtype
      np.testing.assert_array_equal(array, reference[key])
  labels = flowers.read_mat(str(manual_dir / "imagelabels.mat"))["labels"]
  assert labels.dtype == np.float64 and labels.shape == (1, len(layouts.SPECS))


def test_read_mat_rejects_other_files(tmp_path):
  path = tmp_path / "b.mat"
  path.write_bytes(b"\x89HDF\r\n" + b"\0" * 200)
  with pytest.raises(ValueError, match="MATLAB"):
    flowers.read_mat(str(path))
