"""`python -m mxq_jax.main` end to end on `:smoke`, and its one-line errors on bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mxq_jax import config_lib, context as context_lib, run
from conftest import REPO, load_config


def run_module(module: str, *flags: str, **env_vars: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", **env_vars)
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def run_main(*flags: str) -> subprocess.CompletedProcess:
  return run_module("mxq_jax.main", *flags)


def run_sample(*flags: str, **env_vars: str) -> subprocess.CompletedProcess:
  return run_module("mxq_jax.sample", *flags, **env_vars)


def snapshot(path) -> list[str]:
  return sorted(f"{p}:{p.stat().st_mtime_ns}" for p in path.rglob("*"))


def last_line(result: subprocess.CompletedProcess) -> str:
  return result.stderr.strip().splitlines()[-1]


def imported_modules(result: subprocess.CompletedProcess) -> set[str]:
  """What a command run with PYTHONPROFILEIMPORTTIME=1 imported (its stderr lists them)."""
  return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
          if line.startswith("import time:")}


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """`main` on :smoke: stage 1, the codes, stage 2; then checks of what it wrote."""
  tmp_path = tmp_path_factory.mktemp("main")
  workdir, data_dir = tmp_path / "work", tmp_path / "tfds"
  common = ["--config=configs/synthetic.py:smoke", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}"]
  # A first run that fails once the data is built (too many pieces for the captions) leaves no
  # workdir, so the corrected command below trains, evaluates and samples as a fresh one.
  failing = load_config("synthetic", "smoke")
  failing.data.update(data_dir=str(data_dir), vocab_size=5000)
  with pytest.raises(config_lib.ConfigError, match="vocab_size=5000"):
    run.train_and_evaluate(failing, str(workdir))
  assert not workdir.exists()
  first = run_main(*common)
  assert first.returncode == 0, first.stderr[-3000:]
  return workdir, common, first


def test_main_trains_both_stages(trained_workdir):
  workdir, _, first = trained_workdir
  assert "stages to run: stage1,encode,stage2,evaluate" in first.stderr
  assert "stage1: step 6/6" in first.stderr and "stage2: step 6/6" in first.stderr
  metrics = json.loads((workdir / "stage1" / "eval_metrics.json").read_text())
  assert metrics["step"] == 6 and metrics["examples"] == 64
  assert 0.0 <= metrics["token_accuracy"] <= 1.0 and metrics["psnr"] > 0
  prior_metrics = json.loads((workdir / "stage2" / "eval_metrics.json").read_text())
  assert prior_metrics["step"] == 6 and prior_metrics["examples"] == 64
  # Below uniform guessing (log K nats): six steps already learn the codes' marginals.
  assert 0 < prior_metrics["nll_per_code"] < np.log(32)
  for stage in ("stage1", "stage2"):
    assert sorted(os.listdir(workdir / stage / "checkpoints")) == ["3", "6"]
    assert list((workdir / stage).glob("events.out.tfevents*"))
  codes_dir = workdir / "codes" / "stage1_step_6"
  assert sorted(os.listdir(codes_dir)) == [
      "meta.json", "test-00000-of-00001.npy", "train-00000-of-00001.npy"]
  assert np.load(codes_dir / "train-00000-of-00001.npy").shape == (256, 12)
  assert (workdir / "tokenizer.model").exists()


def test_main_evaluates_generated_pairs(trained_workdir):
  workdir = trained_workdir[0]
  samples = workdir / "samples"
  assert len(os.listdir(samples / "images")) == 32  # config.evaluation.num_samples (:smoke).
  metrics = json.loads((samples / "metrics.json").read_text())
  assert metrics["pairs"] == 32
  for key in ("coherence", "caption_validity", "attribute_tvd", "novelty", "digit_agreement",
              "classifier_digit_accuracy", "stage1_image_digit_kept", "stage1_caption_size_kept",
              "stage1_pair_kept", "from_caption_image_digit_kept",
              "from_image_caption_color_kept", "stage1_test_token_accuracy"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert metrics["stage1_pair_kept"] <= metrics["stage1_image_digit_kept"]
  assert metrics["generated_by"] == {"stage2_step": 6, "num_samples": 32, "seed": 0, "top_k": 10,
                                     "top_p": 1.0, "temperature": 1.0, "image_temperature": 0.5}
  assert "from_caption_caption_digit_kept" not in metrics  # each condition scores one half.
  assert metrics["stage1_test_psnr"] > 0
  assert metrics["feature_fid"] >= 0.0 and 1 <= metrics["combinations"] <= 32
  events = list((workdir / "evaluate").glob("events.out.tfevents*"))
  assert len(events) == 1 and b"generated/coherence" in events[0].read_bytes()
  assert sorted(os.listdir(workdir / "classifier" / "checkpoints")) == ["6"]


def test_main_again_does_nothing_and_refuses_other_models(trained_workdir):
  workdir, common, _ = trained_workdir
  before = snapshot(workdir)
  again = run_module("mxq_jax.main", *common, PYTHONPROFILEIMPORTTIME="1")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "every selected stage (stage1,encode,stage2,evaluate) is done; nothing to do" in (
      again.stderr)
  assert snapshot(workdir) == before
  # No data is read, so no TensorFlow (about 5 s of start-up): the rerun takes 2-3 s.
  assert "jax" in imported_modules(again) and "tensorflow" not in imported_modules(again)

  other = run_main(*common, "--config.vqvae.embed_dim=32")
  assert other.returncode == 1
  line = last_line(other)
  assert line.startswith("mxq_jax: error:") and "different model" in line
  assert "embed_dim: checkpoint 16 vs config 32" in line and "--workdir" in line
  other_prior = run_main(*common, "--config.prior.dim=64")
  assert other_prior.returncode == 1
  assert "stage2/checkpoints holds checkpoints of a different model" in last_line(other_prior)
  assert "dim: checkpoint 32 vs config 64" in last_line(other_prior)
  assert snapshot(workdir) == before


def test_a_longer_prior_or_other_sampling_evaluates_again(trained_workdir):
  """The evaluate stage is done only while metrics.json holds what today's config would make."""
  workdir = trained_workdir[0]

  def pending(**overrides):
    config = load_config("synthetic", "smoke")
    config.data.data_dir = str(workdir.parent / "tfds")
    config_lib.apply_table(config, overrides)
    return run.pending_stages(context_lib.for_training(config, str(workdir)))

  assert pending() == []
  assert pending(**{"sampling.temperature": 0.5}) == ["evaluate"]
  assert pending(**{"evaluation.num_samples": 64}) == ["evaluate"]
  assert pending(**{"prior.optim.num_steps": 8}) == ["stage2", "evaluate"]


def test_sample_writes_pairs_and_refuses_to_overwrite(trained_workdir, tmp_path):
  workdir = trained_workdir[0]
  outdir = tmp_path / "samples"
  flags = [f"--workdir={workdir}", f"--outdir={outdir}", "--num_samples=20", "--batch_size=16",
           "--seed=3"]
  result = run_sample(*flags, PYTHONPROFILEIMPORTTIME="1")  # stderr lists every import.
  assert result.returncode == 0, result.stderr[-3000:]
  assert "wrote 20 pairs" in result.stdout and "pairs/s" in result.stdout
  imported = imported_modules(result)
  assert "jax" in imported and "tensorflow" not in imported  # 5-7 s of start-up it needs not.
  assert sorted(os.listdir(outdir)) == ["grid.png", "images", "samples.jsonl"]
  assert sorted(os.listdir(outdir / "images")) == [f"{i:05d}.png" for i in range(20)]
  records = [json.loads(line) for line in (outdir / "samples.jsonl").read_text().splitlines()]
  assert [r["id"] for r in records] == list(range(20))
  assert all(len(r["codes"]) == 12 and 0 <= min(r["codes"]) and max(r["codes"]) < 32
             for r in records)
  assert records[0]["seed"] == 3 and records[0]["top_k"] == 10 and records[0]["top_p"] == 1.0
  assert isinstance(records[0]["caption"], str)
  assert all(0 <= t < 96 for r in records for t in r["tokens"])
  with Image.open(outdir / "images" / "00000.png") as image:
    assert image.size == (16, 16) and image.mode == "RGB"

  before = snapshot(outdir)
  refused = run_sample(*flags)
  assert refused.returncode == 1 and "--overwrite" in last_line(refused)
  assert snapshot(outdir) == before

  again = run_sample(*flags, "--overwrite", "--num_samples=4")
  assert again.returncode == 0, again.stderr[-3000:]
  assert len(os.listdir(outdir / "images")) == 4
  # Same seed, same settings: the same pairs.
  rerun = [json.loads(line) for line in (outdir / "samples.jsonl").read_text().splitlines()]
  assert [r["codes"] for r in rerun] == [r["codes"] for r in records[:4]]
  assert not [p for p in os.listdir(tmp_path) if p.startswith("samples.")]  # no leftovers.

  scored = run_module("mxq_jax.evaluate", f"--workdir={workdir}", f"--samples={outdir}")
  assert scored.returncode == 0, scored.stderr[-3000:]
  metrics = json.loads((outdir / "metrics.json").read_text())
  assert json.loads(scored.stdout) == metrics and metrics["pairs"] == 4


@pytest.mark.parametrize("setting, message", [
    ({"top_k": 0}, "--top_k=0 must be >= 1"),
    ({"top_p": 0.0}, "--top_p=0.0 must be in (0, 1]"),
    ({"top_p": 1.5}, "--top_p=1.5 must be in (0, 1]"),
    ({"temperature": 0.0}, "--temperature=0.0 must be > 0"),
    ({"image_temperature": -1.0}, "--image_temperature=-1.0 must be > 0"),
])
def test_bad_sampling_settings_are_named(setting, message):
  neutral = {"top_k": 1, "top_p": 1.0, "temperature": 1.0, "image_temperature": 0.5}
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate_sampling(**{**neutral, **setting})
  assert str(error.value).startswith(message)


def test_sample_refuses_a_bad_setting_in_one_line_before_reading_the_workdir(tmp_path):
  result = run_sample(f"--workdir={tmp_path}", f"--outdir={tmp_path / 'out'}", "--top_p=1.5")
  assert result.returncode == 1
  assert last_line(result).startswith("mxq_jax: error: --top_p=1.5 must be in (0, 1]")
  assert "Traceback" not in result.stderr and os.listdir(tmp_path) == []


def test_sample_refuses_workdirs_without_a_matching_prior(trained_workdir, tmp_path):
  workdir = trained_workdir[0]
  no_prior = tmp_path / "no_prior"
  shutil.copytree(workdir, no_prior, ignore=shutil.ignore_patterns("stage2"))
  result = run_sample(f"--workdir={no_prior}", f"--outdir={tmp_path / 'out'}")
  assert result.returncode == 1
  assert "holds no prior checkpoint; train stage 2 first" in last_line(result)

  other_stage1 = tmp_path / "other_stage1"
  shutil.copytree(workdir, other_stage1)
  shutil.rmtree(other_stage1 / "stage1" / "checkpoints" / "6")
  result = run_sample(f"--workdir={other_stage1}", f"--outdir={tmp_path / 'out'}")
  assert result.returncode == 1
  assert "models the codes of stage-1 step 6, which this workdir cannot provide" in (
      last_line(result))
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def test_a_prior_of_another_width_in_a_copied_workdir_samples(trained_workdir, tmp_path):
  """The lever experiments' workflow: stage 1 kept, the prior retrained at another width. The
  workdir's config.json follows the run (sample rebuilds the models from it); the earlier one
  is kept."""
  workdir, data_dir = tmp_path / "work", trained_workdir[0].parent / "tfds"
  shutil.copytree(trained_workdir[0], workdir, ignore=shutil.ignore_patterns(
      "stage2", "samples", "evaluate", "classifier"))
  config = load_config("synthetic", "smoke")
  config.data.data_dir = str(data_dir)
  config.stages, config.prior.dim = "stage2", 16
  run.train_and_evaluate(config, str(workdir))
  assert json.loads((workdir / "config.json").read_text())["prior"]["dim"] == 16
  assert json.loads((workdir / "config.1.json").read_text())["prior"]["dim"] == 32
  result = run_sample(f"--workdir={workdir}", f"--outdir={tmp_path / 'out'}", "--num_samples=4",
                      "--batch_size=4")
  assert result.returncode == 0, result.stderr[-3000:]
  # Other stages (both done here, so nothing runs): config.json stays (it is not the models).
  config.stages = "encode,stage2"
  run.train_and_evaluate(config, str(workdir))
  assert not list(workdir.glob("config.2.json"))
  assert json.loads((workdir / "config.json").read_text())["stages"] == "stage2"


def test_unknown_config_field_is_one_clear_line(tmp_path):
  result = run_main("--config=configs/synthetic.py:smoke", f"--workdir={tmp_path / 'w'}",
                    "--config.vqvae.embed_dims=32")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  line = last_line(result)
  assert line.startswith("mxq_jax: error: bad flag or config override (--config.vqvae."
                         'embed_dims: no such config field; did you mean "embed_dim"')
  assert line.endswith("every config field is listed in mxq_jax/config_lib.py")
  assert not (tmp_path / "w").exists()
  # A misspelt flag beside the config is about the flags, not the config's fields.
  result = run_main("--config=configs/synthetic.py:smoke", f"--work_dir={tmp_path / 'w'}")
  assert last_line(result) == ("mxq_jax: error: bad flag or config override (Unknown "
                               "command line flag 'work_dir'. Did you mean: workdir ?); "
                               "--help lists the flags")


@pytest.mark.parametrize("field,value,message", [
    ("data.image_size", 36, "must be a positive multiple of 8"),
    ("vqvae.text_kernel", 9, "too short for config.vqvae.text_kernel=9"),
    ("vqvae.fusion_heads", 3, "must be divisible by config.vqvae.fusion_heads=3"),
    ("vqvae.codebook_update", "adam", "use 'ema' or 'gradient'"),
    ("masking.image_ratio", 1.5, "must be in [0, 1)"),
])
def test_bad_config_values_fail_before_writing(tmp_path, field, value, message):
  config = load_config("synthetic", "smoke")
  section, key = field.split(".")
  config[section][key] = value
  workdir = tmp_path / "w"
  with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
    run.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_batch_size_must_split_over_the_devices():
  config = load_config("synthetic", "smoke")
  config.vqvae.optim.batch_size = 12
  with pytest.raises(config_lib.ConfigError, match="divisible by the 8 devices"):
    config_lib.validate(config, num_devices=8)


def test_unknown_config_argument():
  with pytest.raises(config_lib.ConfigError, match="use one of default, paper, smoke"):
    load_config("synthetic", "tiny")


def test_workdir_config_reads_back_and_fills_new_fields(tmp_path):
  config = load_config("synthetic", "smoke")
  stored = config.to_dict()
  del stored["prior"]["code_order"]  # a workdir written before the field existed.
  (tmp_path / "config.json").write_text(json.dumps(stored))
  restored = config_lib.from_json_file(str(tmp_path / "config.json"))
  assert restored.prior.code_order == config_lib.base_config().prior.code_order
  assert restored.vqvae.image_channels == config.vqvae.image_channels  # a tuple again.
  assert restored.to_dict() == config.to_dict()


def test_evaluate_refuses_a_directory_without_samples(trained_workdir, tmp_path):
  result = run_module("mxq_jax.evaluate", f"--workdir={trained_workdir[0]}",
                      f"--samples={tmp_path / 'none'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "holds no samples.jsonl" in last_line(result)
  assert not (tmp_path / "none").exists()


def test_sample_stopped_by_a_signal_leaves_nothing(trained_workdir, tmp_path):
  from mxq_jax import context as context_lib, interrupts
  from mxq_jax.generation import generate
  context = context_lib.for_trained_workdir(str(trained_workdir[0]))
  outdir = tmp_path / "out"
  with interrupts.handling_stop_signals():
    interrupts.request("SIGTERM")
    with pytest.raises(interrupts.Stopped,
                       match=f"sample: stopped after 0 of 32 pairs, with nothing written to "
                             f"{outdir}, on SIGTERM"):
      generate.generate_pairs(context, str(outdir), num_samples=32, batch_size=16, seed=0)
  assert os.listdir(tmp_path) == []


def test_an_exported_bundle_samples_the_workdirs_pairs(trained_workdir, tmp_path):
  """Inference variables alone (`python -m mxq_jax.export`) give bitwise the workdir's pairs."""
  from mxq_jax import context as context_lib, pretrained
  from mxq_jax.generation import generate
  workdir, bundle = str(trained_workdir[0]), tmp_path / "bundle"
  record = pretrained.export(workdir, str(bundle))
  assert record["steps"] == {"stage1": 6, "stage2": 6, "classifier": 6}
  assert sorted(os.listdir(bundle)) == ["bundle.json", "classifier.npz", "config.json",
                                        "stage1.npz", "stage2.npz", "tokenizer.model"]
  with pytest.raises(config_lib.ConfigError, match="is not empty"):
    pretrained.export(workdir, str(bundle))
  sampled = {}
  for name, context in (("workdir", context_lib.for_trained_workdir(workdir)),
                        ("bundle", pretrained.load(str(bundle)))):
    outdir = tmp_path / f"from_{name}"
    generate.generate_pairs(context, str(outdir), num_samples=16, batch_size=16, seed=5)
    sampled[name] = [json.loads(line) for line in
                     (outdir / "samples.jsonl").read_text().splitlines()]
  assert sampled["bundle"] == sampled["workdir"]
  for i in (0, 15):
    assert ((tmp_path / "from_bundle" / "images" / f"{i:05d}.png").read_bytes()
            == (tmp_path / "from_workdir" / "images" / f"{i:05d}.png").read_bytes())
  images = np.stack([np.asarray(Image.open(tmp_path / "from_bundle" / "images" / f"{i:05d}.png"))
                     for i in range(16)])
  attributes, _ = pretrained.classifier_reader(pretrained.load(str(bundle)))(images)
  assert set(attributes) == {"digit", "color", "position", "size"}
  with pytest.raises(config_lib.ConfigError, match="--pretrained=nope: no such model"):
    pretrained.load("nope")
