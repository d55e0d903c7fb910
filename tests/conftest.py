"""Test set-up: 8 fake CPU devices (sharding tests) and quiet TensorFlow, before JAX starts."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tf.data must never grab a GPU.
# The test extra installs libtpu (for the ahead-of-time fit check, which compiles for TPU
# topologies without chips): JAX itself must not look for TPUs here.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib
import tempfile

import numpy as np

# Many tests compile the same small programs (the smoke train step on one mesh, say), in this
# process and in the `python -m mxq_jax...` subprocesses they start: a persistent cache, shared
# through the environment by the xdist workers and every subprocess, compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mxq_jax_test_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
  """Standard-normal float32 test data, drawn by NumPy: an eager `jax.random.normal` compiles a
  program for every new shape (0.3-1.6 s each on 2 cores), and the suite draws dozens."""
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def integers(seed: int, shape: tuple[int, ...], high: int) -> np.ndarray:
  """int32 test data uniform in [0, high), drawn by NumPy (as `normal`)."""
  return np.random.default_rng(seed).integers(0, high, shape, dtype=np.int32)


def load_config(name: str = "synthetic", arg: str | None = None):
  """configs/NAME.py's get_config(arg), as `--config=configs/NAME.py:ARG` would load it."""
  from mxq_jax import interactive  # after the environment above is set.
  return interactive.load_config(f"{REPO / 'configs' / name}.py:{arg or ''}")


@pytest.fixture
def smoke_config(tmp_path):
  config = load_config("synthetic", "smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  return config


# The files that train end to end or start `python -m mxq_jax...` subprocesses, slowest first
# (their --durations on a 2-core machine with a warm compilation cache). pytest-xdist
# (--dist loadfile, --no-loadscope-reorder: pytest.ini) hands whole files to its workers in
# this order, the rest after them in collection order: the long ones start first and the short
# ones fill the gaps, instead of a long one starting last while the other worker sits idle.
SLOW_FILES = (
    "tests/test_main.py",
    "tests/test_module_bench.py",
    "tests/training/test_interruptions.py",
    "tests/test_multiprocess.py",
    "tests/training/test_trainer.py",
    "tests/test_remote_paths.py",
    "tests/test_photo_datasets.py",
    "tests/training/test_interruptions_two_processes.py",
    "tests/test_pretrained.py",
    "tests/notebooks/test_quickstart_notebook.py",
    "tests/notebooks/test_real_data_notebook.py",
    "tests/models/test_ablation_switches.py",
    "tests/test_aot.py",
    "tests/notebooks/test_generate_and_evaluate_notebook.py",
    "tests/test_hlo_report.py",
)


def pytest_collection_modifyitems(items):
  """The slow files first (SLOW_FILES), each file's tests together and in their own order."""
  missing = [path for path in SLOW_FILES if not (REPO / path).is_file()]
  if missing:  # a renamed file would silently lose its place.
    raise pytest.UsageError(f"tests/conftest.py SLOW_FILES names missing files: {missing}")
  rank = {path: i for i, path in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(SLOW_FILES)))
