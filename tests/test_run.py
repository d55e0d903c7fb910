"""Stage orchestration: which stages run, in which order, which are skipped, which refused; and
the run context that hands each trained model down instead of restoring it again."""

import json

import pytest

from mxq_jax import config_lib, context as context_lib, run
from mxq_jax.training import checkpoints
from conftest import load_config


@pytest.fixture
def recorded(monkeypatch):
  """Replaces every stage by a recorder: the order they ran in, and the context each got."""
  calls = []

  def fake(name):
    def stage(context):
      calls.append((name, context))
      return {"ran": name} if name != "encode" else None
    return stage

  monkeypatch.setattr(run, "STAGES", {name: fake(name) for name in run.STAGES})
  return calls


def with_checkpoints(monkeypatch, steps: dict[str, int]):
  """The workdir seen as holding checkpoints of these stages at these steps."""
  monkeypatch.setattr(checkpoints, "latest_step",
                      lambda directory: next((s for n, s in steps.items()
                                              if f"/{n}/checkpoints" in directory), None))


def test_a_fresh_workdir_runs_every_stage_in_order_with_one_context(tmp_path, recorded):
  config = load_config("synthetic", "smoke")
  results = run.train_and_evaluate(config, str(tmp_path / "w"))
  assert [name for name, _ in recorded] == ["stage1", "encode", "stage2", "evaluate"]
  assert len({id(context) for _, context in recorded}) == 1  # one context, handed down.
  assert recorded[0][1].stage1_step == config.vqvae.optim.num_steps
  assert results == {"stage1": {"ran": "stage1"}, "stage2": {"ran": "stage2"},
                     "evaluate": {"ran": "evaluate"}}
  written = config_lib.from_json_file(str(tmp_path / "w" / "config.json"))
  assert written.to_dict() == config.to_dict()


def test_only_the_selected_stages_run(tmp_path, recorded):
  config = load_config("synthetic", "smoke")
  config.stages = "evaluate,stage1"  # any order: they run in the pipeline's.
  run.train_and_evaluate(config, str(tmp_path / "w"))
  assert [name for name, _ in recorded] == ["stage1", "evaluate"]


def test_finished_stages_are_skipped(tmp_path, recorded, monkeypatch):
  config = load_config("synthetic", "smoke")
  workdir = tmp_path / "w"
  with_checkpoints(monkeypatch, {"stage1": 6, "stage2": 3})  # the prior stopped at step 3.
  codes_dir = workdir / "codes" / "stage1_step_6"
  codes_dir.mkdir(parents=True)
  (codes_dir / "meta.json").write_text("{}")
  run.train_and_evaluate(config, str(workdir))
  assert [name for name, _ in recorded] == ["stage2", "evaluate"]


def test_a_finished_workdir_does_nothing_and_returns_the_stored_metrics(
    tmp_path, recorded, monkeypatch):
  config = load_config("synthetic", "smoke")
  config.prior.encode_on_the_fly = True  # then encode is never a stage of its own.
  workdir = tmp_path / "w"
  with_checkpoints(monkeypatch, {"stage1": 6, "stage2": 6})
  for name in ("stage1", "stage2", "samples"):
    (workdir / name).mkdir(parents=True)
  (workdir / "stage1" / "eval_metrics.json").write_text('{"psnr": 7.0}')
  (workdir / "samples" / "metrics.json").write_text("{}")
  results = run.train_and_evaluate(config, str(workdir))
  assert recorded == []
  assert results == {"stage1": {"psnr": 7.0}, "stage2": {}}
  assert not (workdir / "config.json").exists()  # nothing ran: nothing written.


def test_the_prior_without_a_stage1_is_refused_before_anything_is_written(tmp_path, recorded):
  config = load_config("synthetic", "smoke")
  config.stages = "stage2"
  with pytest.raises(config_lib.ConfigError, match="needs a trained stage 1.*add stage1"):
    run.train_and_evaluate(config, str(tmp_path / "w"))
  assert recorded == [] and not (tmp_path / "w").exists()


def test_the_prior_models_the_latest_stage1_when_this_run_does_not_train_it(
    tmp_path, recorded, monkeypatch):
  config = load_config("synthetic", "smoke")
  config.stages = "stage2"
  with_checkpoints(monkeypatch, {"stage1": 4})
  run.train_and_evaluate(config, str(tmp_path / "w"))
  assert [(name, context.stage1_step) for name, context in recorded] == [("stage2", 4)]


def test_the_context_restores_a_model_once_and_never_one_it_trained(tmp_path, monkeypatch):
  config = load_config("synthetic", "smoke")
  restored = []
  monkeypatch.setattr(context_lib.trainer_lib, "restore_trained",
                      lambda task, workdir, mesh, step: restored.append((task.name, step))
                      or (f"{task.name} state", step))
  context = context_lib.for_training(config, str(tmp_path / "w"))
  assert context.stage1_state() == "stage1 state" and context.stage1_state() == "stage1 state"
  assert restored == [("stage1", config.vqvae.optim.num_steps)]
  context.keep("stage2", "trained prior", 6)
  assert context.prior_state() == "trained prior" and context.prior_step() == 6
  assert restored == [("stage1", config.vqvae.optim.num_steps)]


def test_a_trained_workdir_needs_a_config_and_a_prior(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="holds no config.json"):
    context_lib.for_trained_workdir(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(load_config("synthetic", "smoke").to_dict()))
  with pytest.raises(config_lib.ConfigError, match="holds no prior checkpoint; train stage 2"):
    context_lib.for_trained_workdir(str(tmp_path))
