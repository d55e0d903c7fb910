"""`python -m mxq_jax.main` end to end on `:smoke`, and its one-line errors on bad input."""

import json
import os
import subprocess
import sys

import pytest

from mxq_jax import config_lib, run
from conftest import REPO, load_config


def run_main(*flags: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m", "mxq_jax.main", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def snapshot(path) -> list[str]:
  return sorted(f"{p}:{p.stat().st_mtime_ns}" for p in path.rglob("*"))


def test_main_trains_resumes_and_refuses_other_models(tmp_path):
  workdir, data_dir = tmp_path / "work", tmp_path / "tfds"
  common = ["--config=configs/synthetic.py:smoke", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}"]
  first = run_main(*common)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "stage1: step 6/6" in first.stderr
  metrics = json.loads((workdir / "stage1" / "eval_metrics.json").read_text())
  assert metrics["step"] == 6 and metrics["examples"] == 64
  assert 0.0 <= metrics["token_accuracy"] <= 1.0 and metrics["psnr"] > 0
  assert sorted(os.listdir(workdir / "stage1" / "checkpoints")) == ["3", "6"]
  assert (workdir / "tokenizer.model").exists()
  assert list((workdir / "stage1").glob("events.out.tfevents*"))

  before = snapshot(workdir)
  again = run_main(*common)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already trained (6/6 steps); nothing to do" in again.stderr
  assert snapshot(workdir) == before

  other = run_main(*common, "--config.vqvae.embed_dim=32")
  assert other.returncode == 1
  last_line = other.stderr.strip().splitlines()[-1]
  assert last_line.startswith("mxq_jax: error:") and "different model" in last_line
  assert "embed_dim: checkpoint 16 vs config 32" in last_line and "--workdir" in last_line
  assert snapshot(workdir) == before


def test_unknown_config_field_is_one_clear_line(tmp_path):
  result = run_main("--config=configs/synthetic.py:smoke", f"--workdir={tmp_path / 'w'}",
                    "--config.vqvae.embed_dims=32")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith("mxq_jax: error: bad flag or config override")
  assert 'Did you mean "embed_dim"' in last_line
  assert not (tmp_path / "w").exists()


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
