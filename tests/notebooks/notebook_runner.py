"""Runs a notebook of notebooks/ top to bottom with papermill, as a reader would in Jupyter.

The cell tagged `parameters` holds a notebook's settings; the tests override them with tiny
ones (papermill injects a cell after it). A cell tagged `summary` prints one JSON object: what
the notebook measured, for the test's assertions.
"""

import json
import os
import pathlib

import nbformat
import papermill

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


def execute(name: str, out_dir: pathlib.Path, **parameters) -> nbformat.NotebookNode:
  """notebooks/NAME executed with `parameters`; the executed copy is kept in out_dir."""
  # One CPU device in the kernel (the tests' own processes have 8 fake ones): what a laptop or
  # a Colab CPU runtime has.
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  saved = {key: os.environ.get(key) for key in env}
  os.environ.update(env)
  try:
    return papermill.execute_notebook(
        str(NOTEBOOKS / name), str(out_dir / name), parameters=parameters,
        cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False, execution_timeout=600)
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key)
      else:
        os.environ[key] = value


def summary(notebook: nbformat.NotebookNode) -> dict:
  """The JSON object the cell tagged `summary` printed."""
  for cell in notebook.cells:
    if "summary" in cell.metadata.get("tags", []):
      text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"
                     and o.name == "stdout")
      return json.loads(text.strip().splitlines()[-1])
  raise AssertionError("the notebook has no cell tagged 'summary'")


def images_shown(notebook: nbformat.NotebookNode) -> int:
  """How many PNG images (grids, plots) the executed notebook displayed."""
  return sum("image/png" in output.get("data", {})
             for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def outputs_of(notebook: nbformat.NotebookNode, tag: str) -> list:
  """The outputs of the cell tagged `tag`."""
  cells = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
  assert cells, f"the notebook has no cell tagged {tag!r}"
  return cells[0].outputs
