"""`python -m mxq_jax.ablations`: the variants, the table writer and the orchestration.

The real runs are replaced by a fake `run.train_and_evaluate` (two :smoke variants end to end
take minutes on a CPU); the command's flag handling is run once, on an error path.
"""

import json
import os
import subprocess
import sys

import pytest

from mxq_jax import ablation_lib as ablations, config_lib, run
from conftest import REPO, load_config


def test_variants_override_existing_fields_of_a_copy():
  config = load_config("synthetic", "smoke")
  expected = {"no_masking": {"masking.image_ratio": 0.0, "masking.text_ratio": 0.0},
              "separate_no_fusion": {"vqvae.fusion": "none", "vqvae.codebooks": "separate"},
              "own_decoders": {"vqvae.decoder_inputs": "own"}}
  assert ablations.variants() == {"mxq_vae": {}, **expected}
  for name, overrides in ablations.variants().items():
    variant = ablations.variant_config(config, overrides, seed=3)
    config_lib.validate(variant)
    assert variant.seed == 3
    for path, value in overrides.items():
      section, field = path.split(".")
      assert variant[section][field] == value
  assert config.seed == 0 and config.masking.image_ratio == 0.3  # the original is untouched.
  assert ablations.variant_config(config, {}, 0).to_dict() == config.to_dict()
  with pytest.raises(AttributeError, match="fusoin"):
    ablations.variant_config(config, {"vqvae.fusoin": "none"}, 0)


def metrics(coherence, **extra):
  keys = [key for _, key, _ in ablations.COLUMNS]
  return {**{key: 0.5 for key in keys}, "coherence": coherence, "combinations": 40, **extra}


def table_rows(table: str) -> dict[str, list[str]]:
  rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| ")]
  return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_table_means_spreads_and_missing_metrics():
  without_fid = metrics(0.3)
  del without_fid["feature_fid"]
  results = {
      "mxq_vae": {0: metrics(0.4, combinations=40), 1: metrics(0.6, combinations=45)},
      "no_masking": {0: metrics(0.2), 1: None},  # seed 1 has no metrics.json.
      "own_decoders": {0: without_fid, 1: metrics(0.5, feature_fid=3.0)},
      "separate_no_fusion": {0: None},
  }
  table = ablations.ablation_table(results, "python -m mxq_jax.ablations --workdir=W")
  assert "python -m mxq_jax.ablations --workdir=W" in table
  rows = table_rows(table)
  header = rows.pop("variant")
  assert header[:2] == ["coherence ↑", "digit agr. ↑"] and header[-1] == "seeds"
  assert len(header) == len(ablations.COLUMNS) + 1
  column = {key: i for i, (_, key, _) in enumerate(ablations.COLUMNS)}
  base = rows["mxq_vae"]
  assert base[column["coherence"]] == "0.500 ± 0.141"  # mean, sample std (ddof=1).
  assert base[column["combinations"]] == "42.5 ± 3.5"
  assert base[column["digit_agreement"]] == "0.500 ± 0.000"
  assert base[-1] == "0, 1"
  assert rows["no_masking"][column["coherence"]] == "0.200"  # one seed: no spread.
  assert rows["no_masking"][-1] == "0 (no metrics: 1)"
  assert rows["own_decoders"][column["feature_fid"]] == "3.00 (n=1)"
  assert rows["own_decoders"][column["coherence"]] == "0.400 ± 0.141"
  assert set(rows["separate_no_fusion"][:-1]) == {"—"}
  assert rows["separate_no_fusion"][-1] == "none (no metrics: 0)"
  assert list(rows) == list(results)  # the rows in the order given.
  assert "`no_masking`: `masking.image_ratio=0.0`, `masking.text_ratio=0.0`" in table


@pytest.mark.parametrize("variants,seeds,error", [
    (["mxq_vae", "bogus"], ["0"], "unknown bogus"),
    (None, ["a"], "--seeds=a: give comma-separated integers"),
    (None, [], "give comma-separated integers"),
])
def test_selection_errors(variants, seeds, error):
  with pytest.raises(config_lib.ConfigError, match=error):
    ablations.parse_selection(variants, seeds)


def test_selection_defaults_and_duplicates():
  assert ablations.parse_selection(None, ["0"]) == (list(ablations.variants()), [0])
  assert ablations.parse_selection(["own_decoders", "own_decoders"], ["1", "0", "1"]) == (
      ["own_decoders"], [1, 0])


@pytest.fixture
def fake_runs(monkeypatch):
  """run.train_and_evaluate replaced: records each call, writes metrics.json from the config."""
  calls = []

  def fake(config, workdir):
    calls.append((workdir, config))
    samples = os.path.join(workdir, "samples")
    os.makedirs(samples, exist_ok=True)
    coherence = (0.5 if config.vqvae.decoder_inputs == "joint" else 0.1) + 0.1 * config.seed
    with open(os.path.join(samples, "metrics.json"), "w") as f:
      json.dump(metrics(coherence), f)
    return {}

  monkeypatch.setattr(run, "train_and_evaluate", fake)
  return calls


def test_run_ablations_trains_each_variant_and_seed_and_writes_the_table(tmp_path, fake_runs):
  config = load_config("synthetic", "smoke")
  config.vqvae.optim.num_steps = 3  # an override of the command line: every variant gets it.
  table = ablations.run_ablations(config, str(tmp_path), ["mxq_vae", "own_decoders"], [0, 1],
                                  "CMD")
  assert [(os.path.relpath(w, tmp_path), c.seed) for w, c in fake_runs] == [
      ("mxq_vae/seed_0", 0), ("mxq_vae/seed_1", 1),
      ("own_decoders/seed_0", 0), ("own_decoders/seed_1", 1)]
  assert all(c.vqvae.optim.num_steps == 3 for _, c in fake_runs)
  assert [c.vqvae.decoder_inputs for _, c in fake_runs] == ["joint"] * 2 + ["own"] * 2
  assert (tmp_path / ablations.TABLE_NAME).read_text() == table
  rows = table_rows(table)
  assert rows["mxq_vae"][0] == "0.550 ± 0.071" and rows["own_decoders"][0] == "0.150 ± 0.071"


def test_a_bad_variant_config_fails_before_any_training(tmp_path, fake_runs):
  config = load_config("synthetic", "smoke")
  config.vqvae.cross_mixer_init = "routing"
  config.vqvae.text_mix_hidden = 2  # too small for routing: every variant fails validation.
  with pytest.raises(config_lib.ConfigError, match="text_mix_hidden"):
    ablations.run_ablations(config, str(tmp_path), ["mxq_vae"], [0], "CMD")
  assert not fake_runs and not os.listdir(tmp_path)


def test_command_reports_a_bad_variant_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "mxq_jax.ablations", "--config=configs/synthetic.py:smoke",
       f"--workdir={tmp_path}", "--variants=mxq_vae,bogus"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "mxq_jax: error: --variants=mxq_vae,bogus: unknown bogus; use some of "
      "mxq_vae,no_masking,separate_no_fusion,own_decoders")
  assert not os.listdir(tmp_path)


def test_one_classifier_is_shared_by_the_variants_of_a_seed(tmp_path):
  first, later = tmp_path / "mxq_vae" / "seed_0", tmp_path / "no_masking" / "seed_0"
  ablations.share_classifier(str(tmp_path), str(first), 0)  # nothing to share yet.
  assert not (tmp_path / "classifier_seed_0").exists()
  (first / "classifier" / "checkpoints" / "1000").mkdir(parents=True)
  (first / "classifier" / "eval_metrics.json").write_text("{}")
  ablations.share_classifier(str(tmp_path), str(first), 0)  # after the first variant's run.
  ablations.share_classifier(str(tmp_path), str(later), 0)  # before the next one's.
  assert (later / "classifier" / "checkpoints" / "1000").is_dir()
  assert (later / "classifier" / "eval_metrics.json").read_text() == "{}"
  assert not (tmp_path / "classifier_seed_1").exists()
