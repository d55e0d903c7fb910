"""What every command-line entry point shares: start-up (log filtering, multi-process
initialization, the persistent compilation cache), flag errors as one line, and the commands'
own errors (a bad config, workdir or outdir) as one line and a non-zero exit. (TensorFlow is
kept off the accelerators where it is imported: `host_tensorflow`.)"""

import errno
import logging as std_logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS


# Orbax warns of every read-only manager, which is how checkpoints are read after training.
_EXPECTED_WARNINGS = ("is read only", "read_only=True")


class OwnInfoOnly(std_logging.Filter):
  """Hides libraries' INFO chatter (orbax logs ~40 lines a checkpoint); keeps their warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    own = any(part in record.pathname for part in ("/mxq_jax/", "/clu/"))
    if own:
      return True
    return record.levelno >= std_logging.WARNING and not any(
        text in record.getMessage() for text in _EXPECTED_WARNINGS)


def initialize_distributed() -> None:
  """Multi-process start-up, only where the run is multi-process (TPU pods, SLURM, or env)."""
  import jax
  multi_host_tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if multi_host_tpu or os.environ.get("JAX_COORDINATOR_ADDRESS") or (
      int(os.environ.get("SLURM_NTASKS", "1")) > 1):
    jax.distributed.initialize()


def default_compilation_cache_dir() -> str:
  """~/.cache/mxq_jax/jax_compilation_cache (under $XDG_CACHE_HOME where that is set)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mxq_jax", "jax_compilation_cache")


def use_compilation_cache() -> str | None:
  """JAX's persistent compilation cache, in the user's JAX_COMPILATION_CACHE_DIR or else in
  `default_compilation_cache_dir()`: a resumed run, `sample` and `evaluate` load the programs
  an earlier command compiled (minutes at the paper sizes) instead of compiling them again.
  JAX_ENABLE_COMPILATION_CACHE=false turns it off. Returns the directory (None: the default
  one cannot be made, which one warning says; the command compiles as before)."""
  import jax
  if jax.config.jax_compilation_cache_dir:  # JAX reads JAX_COMPILATION_CACHE_DIR itself.
    return jax.config.jax_compilation_cache_dir
  directory = default_compilation_cache_dir()
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:  # a read-only home: say so, instead of JAX failing per entry.
    absl_logging.warning("no compilation cache in %s (%s); set JAX_COMPILATION_CACHE_DIR to a "
                         "writable directory to keep compiled programs", directory,
                         error.strerror)
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory


def start(distributed: bool = True, compilation_cache: bool = True) -> None:
  """Once, before a command's work: quiet logs, `jax.distributed` where the run is
  multi-process (unless `distributed=False`: a command that runs alone on one host of a
  slice, like the ahead-of-time fit check), and the persistent compilation cache (off with
  `compilation_cache=False`, even where JAX_COMPILATION_CACHE_DIR is set: a command that
  reports compile times must compile)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  absl_logging.get_absl_handler().addFilter(OwnInfoOnly())
  if distributed:
    initialize_distributed()
  if compilation_cache:
    use_compilation_cache()
  else:
    import jax
    jax.config.update("jax_enable_compilation_cache", False)


# What the machine can refuse a run: a full disk, a read-only or foreign directory, a file where
# a directory belongs. Reported as one line; any other OSError is a bug and keeps its traceback.
_PATH_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                       *_PATH_ERRNOS}


def run(command: Callable[[], Any]) -> Any:
  """`command()`, stopping cleanly on SIGTERM or SIGINT (`interrupts`), with the errors a user
  can fix (a bad config, workdir or outdir, a diverged loss, a full or read-only disk) as one
  line and exit status 1."""
  from mxq_jax import config_lib, interrupts
  from mxq_jax.generation import writer
  try:
    with interrupts.handling_stop_signals():
      return command()
  except interrupts.Stopped as stopped:
    absl_logging.warning("%s", stopped)
    absl_logging.flush()
    sys.exit(stopped.exit_status)
  except (config_lib.ConfigError, writer.OutdirError, FloatingPointError) as error:
    absl_logging.flush()
    sys.exit(f"mxq_jax: error: {error}")
  except OSError as error:
    if "Failed loading config file" in str(error):  # ml_collections loads --config lazily.
      absl_logging.flush()
      sys.exit(f"mxq_jax: error: cannot load --config: {_config_load_failure(error)}; "
               "configs/ lists the configs")
    if error.errno not in _ENVIRONMENT_ERRNOS:
      raise
    absl_logging.flush()
    where = f" ({error.filename})" if error.filename else ""
    fix = ("choose another path (a file stands where a directory belongs, or the reverse)"
           if error.errno in _PATH_ERRNOS else "free space or fix the permissions and rerun the "
           "same command")
    sys.exit(f"mxq_jax: error: {error.strerror}{where}; {fix}")


def check_flags(check: Callable[[], None]) -> None:
  """`check()` before start-up (no JAX or TensorFlow imported: a bad flag fails in a second),
  with its ConfigError as one line and exit status 1, as `run` reports it."""
  from mxq_jax import config_lib
  try:
    check()
  except config_lib.ConfigError as error:
    sys.exit(f"mxq_jax: error: {error}")


def _config_load_failure(error: OSError) -> str:
  """'configs/nope.py: No such file or directory' from ml_collections' multi-line report."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  path = next((line for line in lines if line.endswith(".py")), "?")
  reason = lines[-1].split("] ", 1)[-1] if lines else "?"
  return f"{path}: {reason}"


def check_no_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def _one_line(error: Exception) -> str:
  """A parse error as one line: config files' errors arrive with their traceback inside."""
  text = str(error)
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a quoted repr.
    text = text[1:-1]
  text = text.replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    flag = lines[0].split(": Error")[0]  # "flag --config=...".
    lines = [flag, lines[-1].rsplit(".", 1)[-1] if "Error:" in lines[-1] else lines[-1]]
  return " ".join(" ".join(lines).split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override reported as one line."""
  try:
    return FLAGS(argv)
  except Exception as error:  # config overrides raise AttributeError, TypeError, flags.Error...
    message = _one_line(error)
    # ml_collections reports an override of a field the config lacks by the last name only.
    missing_field = isinstance(error, (AttributeError, KeyError))
    if missing_field:  # "'embed_dims' Did you mean "embed_dim" instead of "embed_dims"?"
      name, suggestion = re.fullmatch(r"'?([^']*)'?\s*(.*)", message).groups()
      given = [arg.split("=", 1)[0] for arg in argv[1:]
               if arg.startswith("--config.") and name in arg.split("=", 1)[0].split(".")]
      message = f"{given[0] if given else name}: no such config field" + (
          f"; {suggestion[0].lower()}{suggestion[1:]}" if suggestion else "")
    about_config = missing_field or "--config" in message
    hint = ("every config field is listed in mxq_jax/config_lib.py" if about_config
            else "--help lists the flags")
    sys.exit(f"mxq_jax: error: bad flag or config override ({message}); {hint}")
