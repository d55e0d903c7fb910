"""The model the package ships (`python -m mxq_jax.sample --pretrained=caption_digits`): it
loads, samples the same pairs for the same seed, and its pairs agree with their captions."""

import json

import numpy as np
import pytest
from PIL import Image

from mxq_jax import interactive, pretrained
from mxq_jax.evaluation import evaluator, pair_metrics
from mxq_jax.generation import generate

NUM_PAIRS = 1000  # the evaluation's count: coherence 0.914 at seed 0 (bundle.json)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
  outdir = tmp_path_factory.mktemp("pretrained") / "pairs"
  context = pretrained.load("caption_digits")
  summary = generate.generate_pairs(context, str(outdir), num_samples=NUM_PAIRS,
                                    batch_size=256, seed=0)
  return context, outdir, summary


def test_the_default_model_ships():
  assert "caption_digits" in pretrained.shipped()
  with open(f"{pretrained.bundle_dir('caption_digits')}/bundle.json") as f:
    record = json.load(f)
  assert record["steps"] == {"stage1": 5000, "stage2": 3600, "classifier": 1000}
  assert record["generated_metrics"]["coherence"] >= 0.90


def test_its_pairs_agree_with_their_captions(sampled):
  context, outdir, summary = sampled
  assert summary["pairs"] == NUM_PAIRS and summary["stage2_step"] == 3600
  records = [json.loads(line) for line in (outdir / "samples.jsonl").read_text().splitlines()]
  images = np.stack([np.asarray(Image.open(outdir / r["image"])) for r in records])
  image_attributes, _ = pretrained.classifier_reader(context)(images)
  parsed = evaluator.parse_captions([r["caption"] for r in records])
  scores = pair_metrics.coherence(parsed, image_attributes)
  print("coherence", scores)
  assert scores["coherence"] >= 0.90
  assert pair_metrics.caption_validity(parsed) >= 0.98


def test_the_same_seed_gives_the_same_pairs(sampled, tmp_path):
  context, outdir, _ = sampled
  generate.generate_pairs(context, str(tmp_path / "again"), num_samples=16, batch_size=256,
                          seed=0)
  first = (outdir / "samples.jsonl").read_text().splitlines()[:16]
  assert (tmp_path / "again" / "samples.jsonl").read_text().splitlines() == first


def test_a_notebook_samples_the_same_pairs_in_memory(sampled):
  """interactive.Model.sample: the sample command's pairs for the same seed and batch size."""
  context, outdir, _ = sampled
  pairs = interactive.Model(context).sample(16, seed=0, batch_size=256)
  records = [json.loads(line) for line in
             (outdir / "samples.jsonl").read_text().splitlines()[:16]]
  assert pairs.captions == [r["caption"] for r in records]
  np.testing.assert_array_equal(
      pairs.images, np.stack([np.asarray(Image.open(outdir / r["image"])) for r in records]))
  np.testing.assert_array_equal(pairs.codes, [r["codes"] for r in records])
