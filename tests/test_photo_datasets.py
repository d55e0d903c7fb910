"""The real-data configs (cub, flowers, coco) end to end on fixture trees in the published layouts.

`python -m mxq_jax.main --config=configs/cub.py:smoke --config.data.manual_dir=DIR` trains both
stages and evaluates; flowers and coco go through the same pipeline, checked up to the
training batches. A missing dataset fails fast with the advice.
"""

import json
import os

import jax
import numpy as np
import pytest

from mxq_jax import config_lib, run
from mxq_jax.data import manual_data, pipeline, prepared
from conftest import load_config
from data import manual_layouts
from test_main import run_main

SPECS = manual_layouts.plain_specs(48)  # 32 train and 16 test images, ten captions each.
WRITERS = {"cub": manual_layouts.write_cub, "flowers": manual_layouts.write_flowers,
           "coco": lambda root, specs: manual_layouts.write_coco(root, 2014, specs)}


def _smoke_config(name, tmp_path):
  config = load_config(name, "smoke")
  manual_dir = WRITERS[name](tmp_path / "manual", SPECS)
  config.data.update(manual_dir=str(manual_dir), data_dir=str(tmp_path / "tfds"))
  return config


@pytest.mark.parametrize("name", ["flowers", "coco"])
def test_load_splits_and_train_batches(name, tmp_path):
  config = _smoke_config(name, tmp_path)
  splits = pipeline.load_splits(config, str(tmp_path / "work"))
  train, test = splits.train, splits.test
  assert (train.num_global, test.num_global) == (32, 16)
  assert train.images.shape == (32, 16, 16, 3) and train.images.dtype == np.uint8
  assert train.all_tokens.shape == (32, 10, config.data.text_length)
  np.testing.assert_array_equal(train.num_captions, 10)
  np.testing.assert_array_equal(train.tokens, train.all_tokens[:, 0])
  # Novelty is scored against all ten captions of each image, in order, not only the first.
  assert len(train.every_caption) == 320 and len(set(train.every_caption[:10])) == 10
  assert train.every_caption[0::10] == tuple(train.captions)
  assert train.captions[0] == train.captions[0].lower()  # config.data.lowercase.
  assert os.path.exists(tmp_path / "work" / "tokenizer.model")
  sharding = jax.sharding.NamedSharding(jax.make_mesh((8,), ("data",)),
                                        jax.sharding.PartitionSpec("data"))
  batch = next(pipeline.train_batches(train, 16, 0, 0, sharding,
                                      **pipeline.train_options(config.data)))
  assert batch["image"].shape == (16, 16, 16, 3) and batch["tokens"].shape == (16, 24)


def test_paper_configs_have_the_paper_sizes():
  for name in ("cub", "flowers", "coco"):
    config = load_config(name)
    config_lib.validate(config, 8)
    assert config.data.image_size == 128 and config.data.text_length == 80
    assert config_lib.image_grid_size(config) == 16 and config_lib.text_positions(config) == 20
    assert config_lib.num_joint_codes(config) == 276


def test_missing_dataset_fails_fast_with_the_advice(tmp_path):
  config = load_config("cub", "smoke")
  config.data.update(manual_dir=str(tmp_path / "nothing"), data_dir=str(tmp_path / "tfds"))
  with pytest.raises(manual_data.LayoutError) as error:
    prepared.build(config.data)
  assert not (tmp_path / "tfds").exists()  # refused before anything was built or written.
  message = str(error.value)
  assert "\n" not in message and "--config.data.manual_dir" in message
  assert "CUB_200_2011" in message and "http" in message


def test_main_trains_and_samples_cub_from_the_published_layout(tmp_path):
  manual_dir = manual_layouts.write_cub(tmp_path / "manual", SPECS)
  workdir = tmp_path / "work"
  result = run_main("--config=configs/cub.py:smoke", f"--config.data.manual_dir={manual_dir}",
                    f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "stages to run: stage1,stage2,evaluate" in result.stderr  # codes: on the fly.
  assert "cub_captions/official train: kept 32, skipped 0" in result.stderr
  metrics = json.loads((workdir / "samples" / "metrics.json").read_text())
  assert metrics["pairs"] == 32 and 0.0 <= metrics["novelty"] <= 1.0
  assert "fid" not in metrics and "clip_score" not in metrics  # no weights: skipped, not 0.
  assert "skipped" in result.stderr and "inception_weights" in result.stderr
  # What `python -m mxq_jax.sample` runs (its CLI is tested on caption_digits in test_main).
  from mxq_jax import context as context_lib
  from mxq_jax.generation import generate
  generate.generate_pairs(context_lib.for_trained_workdir(str(workdir)), str(tmp_path / "out"),
                          num_samples=4, batch_size=8, seed=0)
  assert len(os.listdir(tmp_path / "out" / "images")) == 4

  config = load_config("cub", "smoke")
  config.data.update(manual_dir=f"{tmp_path}/x", data_dir=str(tmp_path / "tfds2"))
  with pytest.raises(config_lib.ConfigError, match="missing the manual directory") as error:
    run.train_and_evaluate(config, str(tmp_path / "work2"))
  assert "\n" not in str(error.value) and not (tmp_path / "work2").exists()
