"""fid_and_clip: what it computes, what it skips out loud, and how it refuses wrong paths."""

import logging

import numpy as np
import pytest

import weight_files
from mxq_jax import config_lib
from mxq_jax.evaluation import clip, inception, real_data

IMAGES = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
CAPTIONS = ["a photo of a cat", "this bird's beak is short"]


def evaluation_config(inception_weights: str = "", clip_dir: str = ""):
  config = config_lib.base_config()
  config.evaluation.inception_weights = inception_weights
  config.evaluation.clip_dir = clip_dir
  return config


def test_without_weights_both_are_skipped_out_loud_and_absent(caplog):
  with caplog.at_level(logging.INFO):
    metrics = real_data.fid_and_clip(evaluation_config(), IMAGES, CAPTIONS, IMAGES)
  assert metrics == {}  # absent, never 0.
  log = caplog.text
  assert "FID skipped: set config.evaluation.inception_weights" in log
  assert inception.WEIGHTS_URL in log
  assert "CLIP score skipped: set config.evaluation.clip_dir" in log and clip.REPO_URL in log


def test_clip_only(tmp_path, caplog):
  config = evaluation_config(clip_dir=weight_files.write_tiny_clip_dir(str(tmp_path)))
  with caplog.at_level(logging.INFO):
    metrics = real_data.fid_and_clip(config, IMAGES, CAPTIONS, IMAGES)
  assert set(metrics) == {"clip_score"} and 0 <= metrics["clip_score"] <= 100
  assert "FID skipped" in caplog.text and "CLIP score skipped" not in caplog.text


def test_missing_inception_file_is_a_one_line_config_error(tmp_path):
  path = str(tmp_path / "nowhere.pth")
  with pytest.raises(config_lib.ConfigError) as error:
    real_data.fid_and_clip(evaluation_config(inception_weights=path), IMAGES, CAPTIONS, IMAGES)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"config.evaluation.inception_weights: {path}: no such file")
  assert inception.WEIGHTS_FILE in message and inception.WEIGHTS_URL in message


def test_wrong_inception_file_names_the_tensor_it_lacks(tmp_path):
  path = str(tmp_path / "resnet.pth")
  weight_files.write_pth(path, {"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)})
  with pytest.raises(config_lib.ConfigError,
                     match=r"resnet.pth: has no tensor 'Conv2d_1a_3x3.conv.weight' \(and \d+ "
                           r"more\); expected pytorch-fid's") as error:
    real_data.fid_and_clip(evaluation_config(inception_weights=path), IMAGES, CAPTIONS, IMAGES)
  assert "\n" not in str(error.value)


def test_wrong_clip_dir_is_a_one_line_config_error(tmp_path):
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.evaluation.clip_dir: .*: has no config.json .*expected a "
                           r"folder holding config.json, model.safetensors") as error:
    real_data.fid_and_clip(evaluation_config(clip_dir=str(tmp_path)), IMAGES, CAPTIONS, IMAGES)
  assert "\n" not in str(error.value)


def test_captions_must_pair_with_images():
  with pytest.raises(ValueError, match="2 generated images but 1 captions"):
    real_data.fid_and_clip(evaluation_config(), IMAGES, CAPTIONS[:1], IMAGES)
