"""cub_captions from a fixture tree in CUB's layout; and the shared helpers of manual_data.

Every expectation comes from manual_layouts.SPECS: which images survive, in which split, with
which captions, at which size, and what the build report counts.
"""

import importlib
import io
import json
import shutil
import time

import manual_layouts as layouts
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from mxq_jax.data import cub
from mxq_jax.data import manual_data

CONFIGS = ("official", "class", "official_bbox")


def _data_config(data_dir, manual_dir, split="official", crop_to_bbox=False):
  return ml_collections.ConfigDict(dict(
      name="cub", data_dir=str(data_dir), manual_dir=str(manual_dir), split=split,
      crop_to_bbox=crop_to_bbox, coco_year=2014))


def _read(builder, split, **kwargs) -> dict[str, dict]:
  """The split's examples by name."""
  data = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False, **kwargs))
  return {example["name"].decode(): example for example in data}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  return layouts.write_cub(tmp_path_factory.mktemp("cub_manual"))


@pytest.fixture(scope="module")
def built(manual_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("cub_tfds")
  return {name: cub.build(_data_config(data_dir, manual_dir, name.split("_")[0],
                                       name.endswith("_bbox")))
          for name in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS)
def test_split_membership_and_counts(built, config):
  builder = built[config]
  assert builder.builder_config.name == config
  split = config.split("_")[0]
  for name in ("train", "test"):
    expected = {layouts.cub_name(spec) for spec in layouts.SPECS
                if spec.kept and layouts.in_train(spec, split) == (name == "train")}
    assert set(_read(builder, name)) == expected
    assert builder.info.splits[name].num_examples == len(expected)


def test_captions_labels_and_rgb_images(built):
  builder = built["official"]
  examples = {**_read(builder, "train"), **_read(builder, "test")}
  names = builder.info.features["label"].names
  assert len(names) == 200 and names[0] == "001.Black_footed_Albatross"
  assert names[199] == "200.Common_Yellowthroat"
  for spec in layouts.SPECS:
    if not spec.kept:
      continue
    example = examples[layouts.cub_name(spec)]
    # All the captions of the file, in order, stripped, case kept.
    assert [c.decode() for c in example["captions"]] == layouts.captions_of("cub", spec)
    assert example["label"] == layouts.cub_label(spec)
    width, height = spec.size
    assert example["image"].shape == (height, width, 3)  # original size, always RGB.
    assert example["image"].dtype == np.uint8
    if spec.kind == "gray":
      spread = example["image"].astype(int).max(-1) - example["image"].astype(int).min(-1)
      assert spread.max() <= 2


def test_rgb_jpegs_are_stored_as_they_are(built, manual_dir):
  raw = _read(built["official"], "train", decoders={"image": tfds.decode.SkipDecoding()})
  spec = layouts.SPECS[0]
  assert raw[layouts.cub_name(spec)]["image"] == (manual_dir / layouts.cub_name(spec)).read_bytes()


def test_bbox_crop(built):
  examples = {**_read(built["official_bbox"], "train"), **_read(built["official_bbox"], "test")}
  assert examples[layouts.cub_name(layouts.SPECS[0])]["image"].shape == (12, 20, 3)
  # x 10.4..40.6, y 0.6..40.5 in a 50x40 image: columns 10..40, all 40 rows.
  assert examples[layouts.cub_name(layouts.SPECS[8])]["image"].shape == (40, 31, 3)
  assert examples[layouts.cub_name(layouts.SPECS[1])]["image"].shape == (9, 12, 3)


@pytest.mark.parametrize("config", ("official", "class"))
def test_report_counts_and_file(built, config):
  builder = built[config]
  report = manual_data.read_report(builder)
  assert report == json.loads(open(f"{builder.data_dir}/build_report.json").read())
  assert report["dataset"] == "cub_captions" and report["config"] == config
  for split in ("train", "test"):
    specs = [spec for spec in layouts.SPECS
             if layouts.in_train(spec, config) == (split == "train")]
    counts = report["splits"][split]
    assert counts["kept"] == sum(spec.kept for spec in specs)
    skipped = {}
    for spec in specs:
      reason = layouts.skip_reason(spec)
      if reason:
        skipped.setdefault(reason, []).append(layouts.cub_name(spec))
    assert {reason: tally["names"] for reason, tally in counts["skipped"].items()} == skipped
    assert {reason: tally["count"] for reason, tally in counts["skipped"].items()} == {
        reason: len(names) for reason, names in skipped.items()}
    assert counts["shortened"]["names"] == [
        layouts.cub_name(spec) for spec in specs if spec.kept and spec.captions < 10]


def test_prepared_dataset_is_reused_without_manual_files(built, tmp_path):
  builder = built["official"]
  report = manual_data.read_report(builder)
  data_dir = builder.data_dir.split("/cub_captions/")[0]
  again = cub.build(_data_config(data_dir, tmp_path / "gone"))
  assert again.is_prepared() and manual_data.read_report(again) == report
  # The registered name finds it too.
  assert tfds.builder("cub_captions/official", data_dir=data_dir).is_prepared()


def _assert_fast_layout_error(data_config, missing: str):
  start = time.perf_counter()
  with pytest.raises(manual_data.LayoutError) as error:
    cub.build(data_config)
  assert time.perf_counter() - start < 1.0
  message = str(error.value)
  assert "\n" not in message and missing in message
  assert "cub_captions" in message and "--config.data.manual_dir=DIR" in message
  assert "vision.caltech.edu" in message and "cvpr2016_cub" in message


def test_layout_errors_are_fast_and_actionable(manual_dir, tmp_path):
  _assert_fast_layout_error(_data_config(tmp_path / "tfds", tmp_path / "nowhere"),
                            str(tmp_path / "nowhere"))
  partial = tmp_path / "partial"
  shutil.copytree(manual_dir, partial)
  (partial / "CUB_200_2011" / "bounding_boxes.txt").unlink()
  (partial / "cvpr2016_cub" / "testclasses.txt").unlink()
  cub.build(_data_config(tmp_path / "tfds", partial))  # "official" needs neither.
  _assert_fast_layout_error(_data_config(tmp_path / "tfds", partial, crop_to_bbox=True),
                            "CUB_200_2011/bounding_boxes.txt")
  _assert_fast_layout_error(_data_config(tmp_path / "tfds", partial, split="class"),
                            "cvpr2016_cub/testclasses.txt")


def test_reimported_module_builds_in_another_dir(manual_dir, tmp_path):
  module = importlib.reload(cub)
  builder = module.build(_data_config(tmp_path / "tfds", manual_dir, split="class"))
  assert builder.info.splits["test"].num_examples == sum(
      spec.kept and spec.label == 2 for spec in layouts.SPECS)


# ------------------------------------------------------------------------------ manual_data
def _encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                      ("P", "PNG"), ("RGB", "JPEG"), ("LA", "PNG")])
def test_load_rgb_converts_modes(tmp_path, mode, fmt):
  pixels = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
  path = tmp_path / "image.jpg"
  path.write_bytes(_encoded(Image.fromarray(pixels).convert(mode), fmt))
  image = manual_data.load_rgb(str(path))
  assert image.shape == (6, 9, 3) and image.dtype == np.uint8
  cropped = manual_data.load_rgb(str(path), (1.5, 2.0, 3.0, 2.5))
  assert cropped.shape == (3, 4, 3)  # rows 2..4, columns 1..4.


def test_load_rgb_transparent_pixels_become_white(tmp_path):
  path = tmp_path / "clear.png"
  path.write_bytes(_encoded(Image.new("RGBA", (3, 2), (10, 20, 30, 0)), "PNG"))
  assert (manual_data.load_rgb(str(path)) == 255).all()


def test_bad_images_raise_bad_image(tmp_path):
  jpeg = _encoded(Image.fromarray(
      np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
  for i, data in enumerate([jpeg[:len(jpeg) // 2], jpeg[:-200], b"", b"GIF89a garbage"]):
    path = tmp_path / f"bad{i}.jpg"
    path.write_bytes(data)
    with pytest.raises(manual_data.BadImage):
      manual_data.load_rgb(str(path))
  with pytest.raises(FileNotFoundError):
    manual_data.load_rgb(str(tmp_path / "absent.jpg"))


def test_crop_box_stays_inside():
  assert manual_data.crop_box((0.0, 0.0, 10.0, 5.0), 10, 5) == (0, 0, 10, 5)
  assert manual_data.crop_box((-3.0, 2.2, 100.0, 0.1), 10, 5) == (0, 2, 10, 3)
  assert manual_data.crop_box((12.0, 9.0, 4.0, 4.0), 10, 5) == (9, 4, 10, 5)


def test_read_captions_strips(tmp_path):
  path = tmp_path / "c.txt"
  path.write_bytes(b"A Bird  \r\n\r\n  two\t\n\n\xe9t\xe9\n")  # CRLF, blanks, Latin-1.
  assert manual_data.read_captions(str(path)) == ["A Bird", "two", "\xe9t\xe9"]


def test_report_write_is_atomic_and_logs(tmp_path):
  report = manual_data.BuildReport("x", "y")
  report.keep("train", "a", 3, 10)
  report.skip("train", manual_data.UNREADABLE_IMAGE, "b")
  path = tmp_path / "report.json"
  path.write_text("old")
  report.write(str(path))
  assert json.loads(path.read_text())["splits"]["train"]["shortened"] == {
      "count": 1, "names": ["a"]}
  assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
  assert "unreadable_image 1 (e.g. b)" in report.summary("train")
  report.log()
