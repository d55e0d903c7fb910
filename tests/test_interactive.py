"""mxq_jax.interactive, the notebooks' library: configs by path, curves from TensorBoard logs,
the confusion of captions and images (the shipped model's pairs: tests/test_pretrained.py)."""

import numpy as np
import pytest
from clu import metric_writers

from mxq_jax import config_lib, interactive
from conftest import REPO


def test_load_config_applies_the_variant_and_refuses_a_missing_file():
  quick = interactive.load_config(f"{REPO}/configs/synthetic.py:quick")
  default = interactive.load_config(f"{REPO}/configs/synthetic.py")
  assert quick.vqvae.optim.num_steps == 1_500 and default.vqvae.optim.num_steps == 5_000
  with pytest.raises(config_lib.ConfigError, match="configs/nope.py does not exist"):
    interactive.load_config("configs/nope.py:quick")


def test_training_curves_are_the_logged_scalars_in_step_order(tmp_path):
  writer = metric_writers.create_default_writer(str(tmp_path / "stage1"))
  for step in (20, 10, 30):  # written out of order: read back sorted.
    writer.write_scalars(step, {"train/loss": 1.0 / step})
  writer.write_texts(30, {"captions": "'a' -> 'b'"})  # not a curve.
  writer.flush()
  curves = interactive.training_curves(str(tmp_path), "stage1")
  assert set(curves) == {"train/loss"}
  steps, values = curves["train/loss"]
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_allclose(values, [0.1, 0.05, 1 / 30], rtol=1e-6)


def test_confusion_counts_what_parsed_captions_say_against_what_images_show():
  scores = {"caption_attributes": [{"digit": 3}, None, {"digit": 3}, {"digit": 1}],
            "image_attributes": {"digit": np.array([3, 3, 5, 1])}}
  counts = interactive.confusion(scores, "digit")
  assert counts.shape == (10, 10) and counts.sum() == 3  # the unparsed caption is left out.
  assert counts[3, 3] == 1 and counts[3, 5] == 1 and counts[1, 1] == 1
