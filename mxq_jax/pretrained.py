"""Trained models shipped with the package: sample pairs with no training.

A bundle is a directory of inference variables only (no optimizer state): the run's config.json
and tokenizer.model; `stage1.npz` and `stage2.npz`, every parameter and model variable of the
MXQ-VAE and the prior keyed by its path in the state; `classifier.npz` on the attribute datasets
(the evaluation's classifier, so that the bundle's pairs can be scored); and `bundle.json`, the
steps they come from and the metrics the workdir scored. `export` writes one from a trained
workdir; `load` opens one as the RunContext that `generate.generate_pairs` samples from, giving
exactly the workdir's pairs.

  python -m mxq_jax.export --workdir=W --outdir=mxq_jax/pretrained_models/caption_digits
  python -m mxq_jax.sample --pretrained=caption_digits --outdir=OUT
"""

import io
import os

import jax
import numpy as np

from mxq_jax import config_lib, context as context_lib, files, sharding
from mxq_jax.evaluation import classifier
from mxq_jax.training import checkpoints, trainer as trainer_lib

SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "pretrained_models")
TASKS = ("stage1", "stage2")
CLASSIFIER = "classifier"


def shipped() -> list[str]:
  """The names of the bundles that come with the package (`--pretrained=NAME`)."""
  return sorted(name for name in files.listdir(SHIPPED_DIR)
                if files.exists(os.path.join(SHIPPED_DIR, name, "bundle.json")))


def bundle_dir(name_or_dir: str) -> str:
  """A shipped bundle's directory by name, or a bundle directory given as a path."""
  if files.exists(os.path.join(name_or_dir, "bundle.json")):
    return name_or_dir
  if name_or_dir in shipped():
    return os.path.join(SHIPPED_DIR, name_or_dir)
  raise config_lib.ConfigError(
      f"--pretrained={name_or_dir}: no such model; the package ships "
      f"{', '.join(shipped()) or 'none'}, or give a directory written by "
      "`python -m mxq_jax.export`")


def _inference_arrays(state: trainer_lib.TrainState) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves_with_path((state.params, state.model_state))
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def export(workdir: str, outdir: str) -> dict:
  """Writes the bundle of `workdir`'s prior and the stage-1 model its codes come from."""
  if files.exists(outdir) and files.listdir(outdir):  # refused before the (slow) restore.
    raise config_lib.ConfigError(f"--outdir={outdir} is not empty; pick a new directory")
  context = context_lib.for_trained_workdir(workdir)
  prior_state, vae_state = context_lib.restore_for_sampling(context)
  states = {"stage1": vae_state, "stage2": prior_state}
  steps = {"stage1": context.stage1_step, "stage2": context.steps["stage2"]}
  if files.exists(checkpoints.checkpoint_dir(workdir, CLASSIFIER)):
    states[CLASSIFIER] = context.state(classifier.make_task(context.config))
    steps[CLASSIFIER] = context.steps[CLASSIFIER]
  for name, state in states.items():
    buffer = io.BytesIO()
    np.savez(buffer, **_inference_arrays(state))
    files.write_bytes(os.path.join(outdir, f"{name}.npz"), buffer.getvalue())
  for name in ("config.json", "tokenizer.model"):
    files.write_bytes(os.path.join(outdir, name), files.read_bytes(os.path.join(workdir, name)))
  record = {
      "steps": steps,
      "test_metrics": {name: context.metrics(name) for name in TASKS},
      "generated_metrics": files.read_json(os.path.join(workdir, "samples", "metrics.json")),
  }
  files.write_json(os.path.join(outdir, "bundle.json"), record)
  return record


def _state_from_arrays(task: trainer_lib.Task, mesh, arrays) -> trainer_lib.TrainState:
  """The task's state (no optimizer state) with every variable from `arrays`, sharded."""
  abstract, _ = trainer_lib.abstract_state(task, mesh)

  def fill(path, leaf):
    key = jax.tree_util.keystr(path)
    if key not in arrays or arrays[key].shape != leaf.shape:
      raise config_lib.ConfigError(
          f"the bundle does not hold {task.name}'s variable {key} {leaf.shape}: it was written "
          "for another model; export it again")
    return jax.device_put(arrays[key].astype(leaf.dtype), leaf.sharding)

  params, model_state = jax.tree_util.tree_map_with_path(
      fill, (abstract.params, abstract.model_state))
  return trainer_lib.TrainState(step=abstract.step, params=params, opt_state=None,
                                model_state=model_state)


def load(name_or_dir: str) -> context_lib.RunContext:
  """A shipped bundle (by name) or a bundle directory, as a context ready to sample from."""
  directory = bundle_dir(name_or_dir)
  config = config_lib.from_json_file(os.path.join(directory, "config.json"))
  record = files.read_json(os.path.join(directory, "bundle.json"))
  context = context_lib.RunContext(config, directory, sharding.make_inference_mesh(config.mesh),
                                   record["steps"]["stage1"])
  tasks = {"stage1": context.stage1_task, "stage2": context.stage2_task,
           CLASSIFIER: classifier.make_task(config)}
  for name in record["steps"]:
    task = tasks[name]
    with files.open(os.path.join(directory, f"{name}.npz"), "rb") as f:
      arrays = dict(np.load(f))
    context.keep(name, _state_from_arrays(task, context.mesh, arrays), record["steps"][name])
  return context


def classifier_reader(context: context_lib.RunContext):
  """The bundle's attribute classifier as the evaluation uses it: uint8 images -> (attributes,
  features); ConfigError when the bundle has none."""
  if CLASSIFIER not in context.states:
    raise config_lib.ConfigError(f"{context.workdir} ships no attribute classifier")
  return classifier.make_reader(context.config, context.states[CLASSIFIER])
