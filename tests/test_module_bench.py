"""The per-module benchmark records the calls the step makes and replays them faithfully."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax import bench_lib, config_lib, module_bench, sharding
from mxq_jax.training import stage1, stage2, trainer as trainer_lib
from conftest import load_config

STAGE1_CHILDREN = ["image_encoder", "text_encoder", "fusion", "quantizer", "image_mixer",
                   "image_decoder", "text_mixer", "text_decoder"]


def recorded_calls(task, batch, depth):
  return module_bench.record_calls(task, trainer_lib.init_state(task, 0, None), batch, depth)


PATCHED_CLASSES = (nnx.Linear, nnx.Conv, nnx.LayerNorm, nnx.Embed)


@pytest.fixture(scope="module")
def recording():
  """(stage 1's calls two levels deep, each class's own __call__ before the recording)."""
  config = load_config("synthetic", "smoke")
  before = {cls: cls.__dict__.get("__call__") for cls in PATCHED_CLASSES}
  return recorded_calls(stage1.make_task(config), stage1.random_batch(config, 4), 2), before


def test_records_each_child_of_the_model_once_in_call_order(recording):
  calls, _ = recording
  children = [path for path in calls if "/" not in path]
  assert children == STAGE1_CHILDREN
  assert all(calls[path].calls == 1 for path in children)


def test_recording_leaves_the_classes_as_they_were(recording):
  _, before = recording
  assert {cls: cls.__dict__.get("__call__") for cls in PATCHED_CLASSES} == before


def test_deeper_levels_name_nested_modules_but_not_containers(recording):
  calls, _ = recording
  assert "image_decoder/up/0" in calls and "fusion/layers/0" in calls
  assert "fusion/layers" not in calls  # an nnx.List is no level of its own.
  assert not any(path.count("/") > 2 for path in calls)  # two module levels at most.


def test_prior_blocks_are_counted_per_block():
  config = load_config("synthetic", "smoke")
  calls = recorded_calls(stage2.make_task(config, stage1_step=0),
                         bench_lib.random_codes_batch(config, 4), 1)
  blocks = [f"blocks/{i}" for i in range(config.prior.num_layers)]
  assert list(calls) == ["token_embed", "embed_dropout", *blocks, "ln_final", "head"]


@pytest.mark.parametrize("path", ["image_decoder", "text_decoder"])
def test_programs_replay_the_recorded_call(recording, path):
  call = recording[0][path]
  forward, forward_backward, args, cotangents = module_bench.call_programs(call)
  expected = call.module(*call.args, **call.kwargs)
  (output,) = forward(*args)
  np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)

  # The backward is the VJP of the module at its recorded input, parameters included.
  param_grads, (input_grad,) = forward_backward(*args, cotangents)
  graphdef, params, rest = nnx.split(call.module, nnx.Param, ...)
  objective = lambda p, x: jnp.vdot(nnx.merge(graphdef, p, rest)(x), cotangents[0])
  want_params, want_input = jax.grad(objective, argnums=(0, 1))(params, call.args[0])
  np.testing.assert_allclose(input_grad, want_input, rtol=1e-4, atol=1e-5)
  for got, want in zip(jax.tree.leaves(param_grads), jax.tree.leaves(want_params)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bench_reports_every_module_of_stage1(smoke_config):
  """Stage 1 only: the prior's rows are checked below, with its train step (each stage benched
  adds a dozen programs to compile)."""
  config = smoke_config
  report = bench_lib.run_benchmarks(config, parts=["modules"], steps=1, sampler_batches=[],
                                    min_seconds=0.0, stages=["stage1"])
  assert "stage2_modules" not in report and "stage2_train_step" not in report
  rows = report["stage1_modules"]["modules"]
  assert [row["module"] for row in rows] == STAGE1_CHILDREN
  assert all(row["forward_backward_ms"] > 0 and row["share_of_step"] > 0 for row in rows)
  step_params = report["stage1_train_step"]["params"]
  # Every trainable parameter belongs to one child: the children's counts add up to the model's.
  assert sum(row["params"] for row in rows) == step_params
  table = module_bench.format_table("stage1", report["stage1_modules"])
  assert all(name in table for name in STAGE1_CHILDREN)


def test_unknown_parts_are_refused(smoke_config):
  with pytest.raises(config_lib.ConfigError, match="unknown modul"):
    bench_lib.run_benchmarks(smoke_config, parts=["modul"], steps=1, sampler_batches=[],
                             min_seconds=0.0)


def test_train_step_flops_count_every_scanned_layer():
  """XLA counts a scanned loop's body once, so the bench counts the unrolled program: a
  scan_layers prior reports the FLOPs of the same step unrolled."""
  config = load_config("synthetic", "smoke")
  config.prior.scan_layers = True
  config.prior.num_layers = 4

  def prior_flops(config) -> float:
    task = stage2.make_task(config, stage1_step=0)
    abstract, _ = trainer_lib.abstract_state(task, sharding.make_mesh(config.mesh))
    batch = bench_lib.random_codes_batch(config, config.prior.optim.batch_size)
    return bench_lib.train_step_flops(task, config.mesh, abstract, batch, jax.random.key(0),
                                      np.float32(1e-3))

  scanned, unrolled = prior_flops(config), prior_flops(config_lib.unrolled(config))
  assert scanned < 0.6 * unrolled  # one layer of four counted in the loop.
  report = bench_lib.run_benchmarks(config, parts=["train", "modules"], steps=1,
                                    sampler_batches=[], min_seconds=0.0, stages=["stage2"])
  assert "stage1_train_step" not in report
  assert report["stage2_modules"]["modules"] and report["stage2_train_step"]["steps_per_s"] > 0
  assert report["stage2_train_step"]["step_gflops"] == round(unrolled / 1e9, 2)


def test_unknown_stages_are_refused(smoke_config):
  with pytest.raises(config_lib.ConfigError, match="--stages: unknown stage3"):
    bench_lib.run_benchmarks(smoke_config, parts=["train"], steps=1, sampler_batches=[],
                             min_seconds=0.0, stages=["stage3"])
