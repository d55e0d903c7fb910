r"""Bitwise comparison of two `:smoke` runs: the proof that a redesign kept behaviour.

  python tests/compare_runs.py --against=COMMIT [--workdir=DIR]

Runs `python -m mxq_jax.main --config=configs/synthetic.py:smoke` and then `python -m
mxq_jax.sample` twice on this machine, once with the code of COMMIT (a `git worktree`) and once
with this checkout, on one shared TFDS data directory, and compares what they wrote: every
array of every checkpoint (stage 1, the prior, the classifier), each checkpoint's JSON record,
the stored codes, the eval metrics, the tokenizer, config.json, and every generated PNG,
samples.jsonl, grid.png and metrics.json, byte for byte. Prints each difference and exits 1 if
there is one.

`python tests/compare_runs.py A B` compares two existing run directories (each holding `work/`
and `samples/` as this script writes them).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "configs/synthetic.py:smoke"
# Written by TensorBoard or Orbax with timestamps, paths or random names: not the run's content.
_VOLATILE = ("events.out.tfevents", "_CHECKPOINT_METADATA", "ocdbt.process_", "manifest.ocdbt",
             "/d/", "_METADATA", "array_metadatas", "_sharding", "commit_success.txt")


def run_smoke(code_dir: pathlib.Path, out: pathlib.Path, data_dir: pathlib.Path) -> None:
  """main then sample with the package in `code_dir`, into out/work and out/samples."""
  env = dict(os.environ, PYTHONPATH=str(code_dir), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  commands = [
      ["-m", "mxq_jax.main", f"--config={SMOKE}", f"--workdir={out / 'work'}",
       f"--config.data.data_dir={data_dir}"],
      ["-m", "mxq_jax.sample", f"--workdir={out / 'work'}", f"--outdir={out / 'samples'}",
       "--num_samples=40", "--batch_size=16"],
  ]
  for command in commands:
    result = subprocess.run([sys.executable, *command], cwd=code_dir, env=env,
                            capture_output=True, text=True)
    if result.returncode:
      sys.exit(f"{' '.join(command)} failed in {code_dir}:\n{result.stderr[-3000:]}")


def _checkpoint_arrays(step_dir: pathlib.Path) -> dict[str, np.ndarray]:
  import jax
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(str(step_dir / "state"))
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _flat(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                else {f"{prefix}{key}": value})
  return flat


def compare(a: pathlib.Path, b: pathlib.Path) -> list[str]:
  """Every difference between two run directories, as lines (empty: identical)."""
  diffs = []
  files = lambda root: {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
  files_a, files_b = files(a), files(b)
  for name in sorted(files_a ^ files_b):
    if not any(v in name for v in _VOLATILE):
      diffs.append(f"only in {'A' if name in files_a else 'B'}: {name}")
  compared = 0
  for name in sorted(files_a & files_b):
    if any(v in name for v in _VOLATILE):
      continue
    pa, pb = a / name, b / name
    if name.endswith("metadata") and "/checkpoints/" in name:  # the JSON record of a step.
      same = json.loads(pa.read_text()) == json.loads(pb.read_text())
    elif name.endswith("config.json"):  # B's schema may have grown: new fields are listed.
      old, new = (_flat(json.loads(p.read_text())) for p in (pa, pb))
      same = all(new.get(key, object()) == value for key, value in old.items())
      if same and new.keys() - old.keys():
        print(f"{name}: fields new in B (not a difference): {sorted(new.keys() - old.keys())}")
    else:
      same = pa.read_bytes() == pb.read_bytes()
    compared += 1
    if not same:
      diffs.append(f"differs: {name}")
  steps = sorted({p.parent.parent.relative_to(a)
                  for p in a.rglob("checkpoints/*/state/_METADATA")})
  for step in steps:
    arrays_a, arrays_b = _checkpoint_arrays(a / step), _checkpoint_arrays(b / step)
    if arrays_a.keys() != arrays_b.keys():
      diffs.append(f"{step}: different arrays ({sorted(arrays_a.keys() ^ arrays_b.keys())[:3]})")
      continue
    for key in arrays_a:
      if (arrays_a[key].dtype != arrays_b[key].dtype or arrays_a[key].shape != arrays_b[key].shape
          or arrays_a[key].tobytes() != arrays_b[key].tobytes()):
        diffs.append(f"{step}: {key} differs")
  print(f"compared {compared} files and {len(steps)} checkpoints "
        f"({', '.join(map(str, steps))})")
  return diffs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("dirs", nargs="*", help="two existing run directories to compare")
  parser.add_argument("--against", help="a commit whose :smoke run this checkout must match")
  parser.add_argument("--workdir", help="where both runs go (default: a new temp directory)")
  args = parser.parse_args()
  if args.dirs:
    if len(args.dirs) != 2 or args.against:
      parser.error("give two run directories, or --against=COMMIT")
    a, b = map(pathlib.Path, args.dirs)
  else:
    if not args.against:
      parser.error("give --against=COMMIT, or two run directories")
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="compare_runs-"))
    old_code, a, b, data = root / "code", root / "before", root / "after", root / "tfds"
    if not old_code.exists():
      subprocess.run(["git", "worktree", "add", "--detach", str(old_code), args.against],
                     cwd=REPO, check=True, capture_output=True)
    for code, out in ((old_code, a), (REPO, b)):
      if not (out / "samples").exists():
        print(f"running :smoke with the code in {code} into {out}", flush=True)
        run_smoke(code, out, data)
  diffs = compare(a, b)
  for line in diffs:
    print(line)
  print("identical" if not diffs else f"{len(diffs)} differences")
  sys.exit(1 if diffs else 0)


if __name__ == "__main__":
  main()
