"""notebooks/quickstart.ipynb top to bottom at :smoke sizes: the shipped model's pairs, both
stages trained with progress, the curves, and the sampling controls that compile once."""

import math

import notebook_runner


def test_quickstart_trains_samples_and_recompiles_nothing(tmp_path):
  notebook = notebook_runner.execute(
      "quickstart.ipynb", tmp_path, workdir=str(tmp_path / "work"),
      config="configs/synthetic.py:smoke", overrides={"data.data_dir": str(tmp_path / "tfds")},
      num_pairs=32, tensorboard="no")
  summary = notebook_runner.summary(notebook)
  # The shipped model's pairs agree with their captions (0.914 over 1,000 at seed 0).
  assert summary["shipped_coherence"] >= 0.8 and summary["shipped_caption_validity"] >= 0.9
  # Both stages trained to their last step and were scored on the test split.
  assert summary["stage1"]["step"] == 6 and summary["stage2"]["step"] == 6
  assert all(math.isfinite(v) for v in [*summary["stage1"].values(), *summary["stage2"].values()])
  # Two samplings with other seeds, temperatures and top-p: one compiled sampler.
  assert summary["pairs"] == 64 and summary["compilations"] == 1
  # The shipped grid, the four curves (one figure) and the two grids of the trained model.
  assert notebook_runner.images_shown(notebook) == 4
  progress = "".join(o.get("text", "") for o in notebook_runner.outputs_of(notebook, "train"))
  assert "stage1: step 6/6 (100%)" in progress and "stage2: step 6/6 (100%)" in progress
