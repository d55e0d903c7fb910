"""Test set-up: 8 fake CPU devices (sharding tests) and quiet TensorFlow, before JAX starts."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tf.data must never grab a GPU.

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str = "synthetic", arg: str | None = None):
  """configs/NAME.py's get_config(arg), as `--config=configs/NAME.py:ARG` would load it."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture
def smoke_config(tmp_path):
  config = load_config("synthetic", "smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  return config


def pytest_configure(config):
  # Many tests compile the same small programs (the smoke train step on one mesh, say):
  # a persistent cache shared by the xdist workers compiles each once.
  import jax
  import tempfile
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(tempfile.gettempdir(), "mxq_jax_test_compilation_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
