"""coco_captions from fixture trees in COCO's 2014 and 2017 layouts."""

import json
import time

import manual_layouts as layouts
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mxq_jax.data import coco
from mxq_jax.data import manual_data

YEARS = (2014, 2017)


def _data_config(data_dir, manual_dir, year=2014):
  return ml_collections.ConfigDict(dict(
      name="coco", data_dir=str(data_dir), manual_dir=str(manual_dir), split="official",
      crop_to_bbox=False, coco_year=year))


def _read(builder, split) -> dict[str, dict]:
  data = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  return {example["name"].decode(): example for example in data}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("coco_manual")
  for year in YEARS:  # side by side, as both releases extract.
    layouts.write_coco(root, year)
  return root


@pytest.fixture(scope="module")
def built(manual_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("coco_tfds")
  return {year: coco.build(_data_config(data_dir, manual_dir, year)) for year in YEARS}


@pytest.mark.parametrize("year", YEARS)
def test_splits_captions_and_images(built, year):
  builder = built[year]
  assert builder.builder_config.name == str(year)
  for split in ("train", "test"):
    examples = _read(builder, split)
    kept = [spec for spec in layouts.SPECS if spec.kept and spec.train == (split == "train")]
    assert set(examples) == {layouts.coco_name(spec, year) for spec in kept}
    assert builder.info.splits[split].num_examples == len(kept)
    for spec in kept:
      example = examples[layouts.coco_name(spec, year)]
      # All the image's annotations, in file order although the file interleaves images.
      assert [c.decode() for c in example["captions"]] == layouts.captions_of("coco", spec)
      assert example["label"] == -1
      width, height = spec.size
      assert example["image"].shape == (height, width, 3) and example["image"].dtype == np.uint8


@pytest.mark.parametrize("year", YEARS)
def test_report_counts_and_file(built, year):
  builder = built[year]
  report = manual_data.read_report(builder)
  assert report == json.loads(open(f"{builder.data_dir}/build_report.json").read())
  assert report["config"] == str(year)
  for split in ("train", "test"):
    specs = [spec for spec in layouts.SPECS if spec.train == (split == "train")]
    counts = report["splits"][split]
    assert counts["kept"] == sum(spec.kept for spec in specs)
    skipped = {}
    for spec in specs:
      if layouts.skip_reason(spec):
        skipped.setdefault(layouts.skip_reason(spec), []).append(layouts.coco_name(spec, year))
    assert {reason: tally["names"] for reason, tally in counts["skipped"].items()} == skipped
    # COCO has five captions an image: the 3-caption one counts, the 10-caption ones do not.
    assert counts["shortened"]["names"] == [
        layouts.coco_name(spec, year) for spec in specs if spec.kept and spec.captions < 5]


def test_layout_errors_are_fast_and_actionable(tmp_path):
  only_2014 = layouts.write_coco(tmp_path / "manual", 2014)
  start = time.perf_counter()
  with pytest.raises(manual_data.LayoutError) as error:
    coco.build(_data_config(tmp_path / "tfds", only_2014, 2017))
  assert time.perf_counter() - start < 1.0
  message = str(error.value)
  assert "\n" not in message and "annotations/captions_train2017.json" in message
  assert "coco_captions" in message and "--config.data.manual_dir=DIR" in message
  assert "cocodataset.org" in message


def test_unknown_year_is_refused(tmp_path):
  with pytest.raises(ValueError, match="coco_year"):
    coco.build(_data_config(tmp_path, tmp_path, 2015))
