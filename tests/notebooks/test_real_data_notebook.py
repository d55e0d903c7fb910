"""notebooks/real_data.ipynb top to bottom on the package's CUB demo tree at :smoke sizes: the
layout advice, the build report of the tree's faults, the look at the data, both stages
trained, the curves, and sampled pairs."""

import math

import notebook_runner
from mxq_jax.data import demo_trees


def test_real_data_builds_reports_trains_and_samples_the_demo_tree(tmp_path):
  notebook = notebook_runner.execute(
      "real_data.ipynb", tmp_path, dataset="cub", manual_dir="",
      data_dir=str(tmp_path / "tfds"), workdir=str(tmp_path / "work"),
      config="configs/cub.py:smoke",
      # Overrides the compiled steps do not depend on: the stage-1 step is then
      # test_photo_datasets' cub:smoke one, from the compilation cache.
      overrides={"vqvae.optim.log_every": 5, "prior.optim.log_every": 5}, num_pairs=8)
  summary = notebook_runner.summary(notebook)
  assert summary["demo"] and summary["config"] == "configs/cub.py:smoke"

  # The empty folder's advice: one line naming the missing file, the source and the flag.
  advice = summary["layout_advice"]
  assert "\n" not in advice and "missing" in advice and "CUB_200_2011" in advice
  assert "--config.data.manual_dir" in advice and "http" in advice
  layout = "".join(o.get("text", "") for o in notebook_runner.outputs_of(notebook, "layout"))
  assert f"An empty folder: {advice}" in layout and "layout is complete" in layout

  # The build report counts what the demo tree holds: the truncated JPEG skipped as
  # unreadable, the image without a caption file skipped, the 7-line caption file shortened.
  expected = demo_trees.write_cub(tmp_path / "expected").expected_report()
  assert summary["report"] == {
      split: {"kept": e["kept"], "skipped": {r: len(n) for r, n in e["skipped"].items()},
              "shortened": len(e["shortened"])} for split, e in expected.items()}
  assert summary["report"]["train"]["skipped"] == {"unreadable_image": 1}
  assert summary["report"]["test"]["skipped"] == {"missing_captions": 1}
  assert summary["report"]["train"]["shortened"] == 1
  table = "".join(o.get("data", {}).get("text/markdown", "")
                  for o in notebook_runner.outputs_of(notebook, "build"))
  assert "unreadable_image" in table and "missing_captions" in table
  assert expected["train"]["skipped"]["unreadable_image"][0] in table
  assert (summary["train_examples"], summary["test_examples"]) == (
      expected["train"]["kept"], expected["test"]["kept"])

  # Both stages trained to their last step, logged at the overridden cadence; finite metrics.
  assert summary["stage1"]["step"] == 6 and summary["stage2"]["step"] == 6
  assert all(math.isfinite(v) for v in [*summary["stage1"].values(), *summary["stage2"].values()])
  progress = "".join(o.get("text", "") for o in notebook_runner.outputs_of(notebook, "train"))
  assert "stage1: step 5/6 (83%)" in progress and "stage2: step 5/6 (83%)" in progress

  # Two grids of the prepared data, the caption-length histogram, the curves, the pairs.
  assert notebook_runner.images_shown(notebook) == 5
  assert summary["pairs"] == 8
