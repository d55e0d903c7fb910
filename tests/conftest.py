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

# Many tests compile the same small programs (the smoke train step on one mesh, say), in this
# process and in the `python -m mxq_jax...` subprocesses they start: a persistent cache, shared
# through the environment by the xdist workers and every subprocess, compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mxq_jax_test_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str = "synthetic", arg: str | None = None):
  """configs/NAME.py's get_config(arg), as `--config=configs/NAME.py:ARG` would load it."""
  from mxq_jax import interactive  # after the environment above is set.
  return interactive.load_config(f"{REPO / 'configs' / name}.py:{arg or ''}")


@pytest.fixture
def smoke_config(tmp_path):
  config = load_config("synthetic", "smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  return config

