"""The ahead-of-time fit check: TPU slice names, the programs of a run, and real compiles for a
compile-only TPU topology (libtpu, installed by the test extra; no TPU needed)."""

import json
import subprocess
import sys

import jax
import pytest

from conftest import REPO, load_config
from mxq_jax import aot_lib, bench_lib, config_lib, sharding


@pytest.mark.parametrize("name, topology, chips, hosts, hbm_gib", [
    ("v5litepod-8", "v5e:2x4", 8, 1, 16),
    ("v5litepod-16", "v5e:4x4", 16, 4, 16),
    ("v5litepod-32", "v5e:4x8", 32, 8, 16),
    ("v4-8", "v4:2x2x1", 4, 1, 32),  # gcloud counts v4 and v5p TensorCores, 2 a chip.
    ("v4-32", "v4:2x2x4", 16, 4, 32),
    ("v5p-8", "v5:2x2x1", 4, 1, 95),
    ("v6e-8", "v6e:2x4", 8, 1, 32),
    ("v5e:2x2", "v5e:2x2", 4, 1, 16),
])
def test_slice_names(name, topology, chips, hosts, hbm_gib):
  tpu = aot_lib.parse_slice(name)
  assert (tpu.topology_name, tpu.chips, tpu.hosts, tpu.hbm_bytes) == (
      topology, chips, hosts, hbm_gib * 2**30)


@pytest.mark.parametrize("name, says", [
    ("v5litepod-12", "no v5litepod slice of that size"),
    ("v4-7", "no v4 slice of that size"),
    ("v5e:2x2x1", "v5e slices have 2 dimensions"),
    ("a100", "not a TPU type"),
])
def test_bad_slice_names_say_what_exists(name, says):
  with pytest.raises(config_lib.ConfigError, match=says):
    aot_lib.parse_slice(name)


def test_the_programs_of_a_run():
  mesh = sharding.make_mesh(load_config("synthetic", "smoke").mesh)
  names = lambda config: [p.name for p in aot_lib.run_programs(config, mesh)]
  assert names(load_config("synthetic", "smoke")) == [
      "stage1/train", "stage1/eval", "encode", "stage2/train", "stage2/eval", "sampler",
      "classifier/train", "classifier/eval"]
  photos = load_config("cub", "smoke")  # encodes on the fly, scored without a classifier.
  photos.stages = "stage2,evaluate"
  assert names(photos) == ["encode", "stage2/train", "stage2/eval", "sampler"]


def test_flops_count_every_layer_once_per_call_for_the_whole_slice():
  """XLA's cost analysis counts a loop body once: the reported FLOPs come from the program
  with its repeated blocks and the sampler's loop written out, so scanning changes nothing."""
  def smoke(scan: bool):
    config = load_config("synthetic", "smoke")
    config.vqvae.num_res_blocks = config.vqvae.fusion_layers = config.prior.num_layers = 2
    config.vqvae.scan_layers = config.prior.scan_layers = scan
    return config

  flops = aot_lib.global_flops(smoke(scan=True), num_devices=4)
  assert flops == aot_lib.global_flops(smoke(scan=False), num_devices=4)
  assert set(flops) == {"stage1/train", "stage1/eval", "encode", "stage2/train", "stage2/eval",
                        "sampler", "classifier/train", "classifier/eval"}
  mesh = sharding.make_mesh(smoke(scan=True).mesh, jax.devices()[:1])
  looped = {p.name: bench_lib.flops_of(p.fn.lower(*p.args).cost_analysis())
            for p in aot_lib.run_programs(smoke(scan=True), mesh)}
  for name in ("stage1/train", "stage2/train", "sampler"):  # each has a loop to undercount.
    assert flops[name] > looped[name] > 0, name
  assert flops["classifier/train"] == looped["classifier/train"]  # no loop in it.


def prior_only(batch_size: int):
  """configs/synthetic.py:smoke's prior alone (compiles in seconds)."""
  config = load_config("synthetic", "smoke")
  config.stages = "stage2"
  config.prior.optim.batch_size = batch_size
  return config


def test_a_batch_too_large_for_the_chips_is_refused_with_advice():
  tpu = aot_lib.parse_slice("v5e:2x2")
  with pytest.raises(config_lib.ConfigError) as error:
    aot_lib.check_fit(prior_only(2**21), tpu, report=lambda result: None)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith("stage2/train does not fit: ")
  assert "MiB of HBM" in message and "largest arguments: " in message
  # Temporaries scale with the batch: the advice names a batch that is a multiple of 4 chips.
  advised = int(message.split("--config.prior.optim.batch_size=")[1].split()[0])
  assert 0 < advised < 2**21 and advised % 4 == 0


def test_command_prints_one_json_line_per_program(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "mxq_jax.aot", "--config=configs/synthetic.py:smoke",
       "--topology=v5e:2x2", "--config.stages=stage2"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [line["program"] for line in lines] == ["stage2/train", "stage2/eval"]
  assert all(line["topology"] == "v5e:2x2" and line["fits"] for line in lines)
  train = lines[0]
  assert train["mesh"] == {"data": 4, "fsdp": 1} and train["chips"] == 4
  assert train["hbm_mib"] == 16 * 1024 and 0 < train["peak_mib"] < 16 and train["gflops"] > 0
  assert train["gflops"] == pytest.approx(  # the whole slice's step, not one chip's share.
      aot_lib.global_flops(prior_only(16), num_devices=4)["stage2/train"] / 1e9, rel=1e-3)
  assert train["alias_mib"] > 0  # the donated state: the step's outputs alias its arguments.
  assert "TPU_ACCELERATOR_TYPE" not in result.stderr  # libtpu's host warnings are silenced.
