"""What every command shares (`cli.run`): stop signals and the user's errors as one line."""

import errno
import signal

import pytest
from absl import flags
from ml_collections import config_flags

from mxq_jax import cli, config_lib, interrupts


def exit_of(command) -> SystemExit:
  with pytest.raises(SystemExit) as exit_info:
    cli.run(command)
  return exit_info.value


def test_a_missing_config_file_is_one_line():
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(["mxq_jax.main", "--config=configs/nope.py:smoke"])
  assert exit_of(lambda: values.config.seed).code == (
      "mxq_jax: error: cannot load --config: configs/nope.py: No such file or directory: "
      "'configs/nope.py'; configs/ lists the configs")


@pytest.mark.parametrize("error, message", [
    (config_lib.ConfigError("bad field"), "mxq_jax: error: bad field"),
    (FloatingPointError("the loss is nan"), "mxq_jax: error: the loss is nan"),
    (OSError(errno.ENOSPC, "No space left on device", "/w/x"),
     "mxq_jax: error: No space left on device (/w/x); free space or fix the permissions and "
     "rerun the same command"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/w/file/sub"),
     "mxq_jax: error: Not a directory (/w/file/sub); choose another path (a file stands where a "
     "directory belongs, or the reverse)"),
])
def test_errors_a_user_can_fix_are_one_line(error, message):
  def command():
    raise error
  assert exit_of(command).code == message


def test_other_errors_keep_their_traceback():
  def command():
    raise OSError(errno.EBADF, "a bug")
  with pytest.raises(OSError, match="a bug"):
    cli.run(command)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_stop_signal_ends_the_work_at_its_next_check(signum, status, caplog):
  done = []

  def command():
    for unit in range(3):
      interrupts.check(f"demo: stopped after {unit} units")
      done.append(unit)
      if unit == 1:
        signal.raise_signal(signum)  # handled: only a flag is set.
  assert exit_of(command).code == status
  assert done == [0, 1]
  name = signal.Signals(signum).name
  assert f"demo: stopped after 2 units on {name}; rerun the same command to resume" in caplog.text
  assert interrupts.requested() is None  # the handlers and the flag are gone with the command.
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_ctrl_c_stops_at_once():
  def command():
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGINT)
  with pytest.raises(KeyboardInterrupt):
    cli.run(command)


@pytest.fixture
def restored_jax_cache_config():
  import jax
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
  yield
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_enable_compilation_cache", saved[1])


def test_commands_keep_compiled_programs_in_the_users_cache(restored_jax_cache_config,
                                                            monkeypatch, tmp_path):
  import jax
  suite_dir = jax.config.jax_compilation_cache_dir  # tests/conftest.py sets it in the env.
  assert suite_dir and cli.use_compilation_cache() == suite_dir  # the user's choice stays.

  jax.config.update("jax_compilation_cache_dir", None)  # as where nothing set it.
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  cli.start(distributed=False)
  assert jax.config.jax_compilation_cache_dir == str(
      tmp_path / "xdg" / "mxq_jax" / "jax_compilation_cache")
  assert jax.config.jax_enable_compilation_cache
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cli.default_compilation_cache_dir() == str(
      tmp_path / "home" / ".cache" / "mxq_jax" / "jax_compilation_cache")


def test_a_cache_that_cannot_be_made_is_one_warning(restored_jax_cache_config, monkeypatch,
                                                    tmp_path, caplog):
  import jax
  jax.config.update("jax_compilation_cache_dir", None)
  (tmp_path / "file").write_text("")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file where a dir belongs.
  assert cli.use_compilation_cache() is None
  assert not jax.config.jax_compilation_cache_dir
  assert "no compilation cache in" in caplog.text and "JAX_COMPILATION_CACHE_DIR" in caplog.text


def test_commands_that_report_compile_times_compile(restored_jax_cache_config):
  import jax
  cli.start(distributed=False, compilation_cache=False)  # bench, aot.
  assert not jax.config.jax_enable_compilation_cache
