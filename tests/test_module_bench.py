"""The per-module benchmark records the calls the step makes and replays them faithfully."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mxq_jax import bench_lib, config_lib, module_bench
from mxq_jax.training import stage1, stage2, trainer as trainer_lib

STAGE1_CHILDREN = ["image_encoder", "text_encoder", "fusion", "quantizer", "image_mixer",
                   "image_decoder", "text_mixer", "text_decoder"]


def recorded_calls(task, batch, depth):
  state = trainer_lib.init_state(task, 0, None)
  model = trainer_lib.merge_model(task.graphdef, state)
  with module_bench.recording_calls(model, depth) as calls:
    task.loss_fn(model, batch, jax.random.key(0))
  return calls


@pytest.fixture
def stage1_calls(smoke_config):
  return recorded_calls(stage1.make_task(smoke_config), stage1.random_batch(smoke_config, 4), 1)


def test_records_each_child_of_the_model_once_in_call_order(stage1_calls):
  assert list(stage1_calls) == STAGE1_CHILDREN
  assert all(call.calls == 1 for call in stage1_calls.values())


def test_recording_leaves_the_classes_as_they_were(smoke_config):
  before = {cls: cls.__dict__.get("__call__") for cls in (nnx.Linear, nnx.Conv, nnx.LayerNorm)}
  recorded_calls(stage1.make_task(smoke_config), stage1.random_batch(smoke_config, 2), 2)
  assert {cls: cls.__dict__.get("__call__") for cls in before} == before


def test_deeper_levels_name_nested_modules_but_not_containers(smoke_config):
  calls = recorded_calls(stage1.make_task(smoke_config), stage1.random_batch(smoke_config, 2), 2)
  assert "image_decoder" in calls and "fusion/layers/0" in calls
  assert "fusion/layers" not in calls  # an nnx.List is no level of its own.
  assert not any(path.count("/") > 2 for path in calls)  # two module levels at most.


def test_prior_blocks_are_counted_per_block(smoke_config):
  config = smoke_config
  calls = recorded_calls(stage2.make_task(config, stage1_step=0),
                         bench_lib.random_codes_batch(config, 4), 2)
  blocks = [p for p in calls if p.startswith("blocks/") and p.count("/") == 1]
  assert len(blocks) == config.prior.num_layers


@pytest.mark.parametrize("path", ["image_decoder", "text_decoder"])
def test_programs_replay_the_recorded_call(stage1_calls, path):
  call = stage1_calls[path]
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


def test_bench_reports_every_module_of_both_stages(smoke_config):
  config = smoke_config
  report = bench_lib.run_benchmarks(config, parts=["modules"], steps=1, sampler_batches=[],
                                    min_seconds=0.0)
  rows = report["stage1_modules"]["modules"]
  assert [row["module"] for row in rows] == STAGE1_CHILDREN
  assert all(row["forward_backward_ms"] > 0 and row["share_of_step"] > 0 for row in rows)
  step_params = report["stage1_train_step"]["params"]
  # Every trainable parameter belongs to one child: the children's counts add up to the model's.
  assert sum(row["params"] for row in rows) == step_params
  blocks = [f"blocks/{i}" for i in range(config.prior.num_layers)]
  assert [row["module"] for row in report["stage2_modules"]["modules"]] == [
      "token_embed", "embed_dropout", *blocks, "ln_final", "head"]
  table = module_bench.format_table("stage1", report["stage1_modules"])
  assert all(name in table for name in STAGE1_CHILDREN)


def test_unknown_parts_are_refused(smoke_config):
  with pytest.raises(config_lib.ConfigError, match="unknown modul"):
    bench_lib.run_benchmarks(smoke_config, parts=["modul"], steps=1, sampler_batches=[],
                             min_seconds=0.0)
