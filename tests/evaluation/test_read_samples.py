"""`evaluate` on a damaged samples directory: one line naming the file and the line."""

import json

import numpy as np
import pytest
from PIL import Image

from mxq_jax import config_lib
from mxq_jax.evaluation import evaluator


def write_samples(directory, num: int) -> None:
  (directory / "images").mkdir(parents=True)
  lines = []
  for i in range(num):
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(directory / f"images/{i:05d}.png")
    lines.append(json.dumps({"id": i, "caption": f"caption {i}", "image": f"images/{i:05d}.png"}))
  (directory / "samples.jsonl").write_text("\n".join(lines) + "\n")


def test_reads_images_and_captions(tmp_path):
  write_samples(tmp_path, 3)
  images, captions = evaluator.read_samples(str(tmp_path))
  assert images.shape == (3, 8, 8, 3) and captions == ["caption 0", "caption 1", "caption 2"]
  assert images[2].max() == 2


def test_a_truncated_samples_jsonl_names_the_file_and_line(tmp_path):
  write_samples(tmp_path, 3)
  path = tmp_path / "samples.jsonl"
  path.write_text(path.read_text()[:-20])  # as if the copy was cut short.
  with pytest.raises(config_lib.ConfigError, match=rf"{path}, line 3: not a pair record"):
    evaluator.read_samples(str(tmp_path))


def test_a_missing_image_names_it(tmp_path):
  write_samples(tmp_path, 2)
  (tmp_path / "images/00001.png").unlink()
  with pytest.raises(config_lib.ConfigError, match="cannot read the image images/00001.png"):
    evaluator.read_samples(str(tmp_path))


def test_no_pairs_or_mixed_sizes_are_one_line(tmp_path):
  write_samples(tmp_path / "empty", 0)
  (tmp_path / "empty" / "samples.jsonl").write_text("")  # a run that wrote no pair.
  with pytest.raises(config_lib.ConfigError, match="samples.jsonl lists no pairs; regenerate"):
    evaluator.read_samples(str(tmp_path / "empty"))
  write_samples(tmp_path / "mixed", 2)
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "mixed/images/00001.png")
  with pytest.raises(config_lib.ConfigError, match="lists images of several sizes"):
    evaluator.read_samples(str(tmp_path / "mixed"))
