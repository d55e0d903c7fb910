"""Stopping on request: SIGTERM (what Slurm, Kubernetes and a TPU maintenance event send) and
SIGINT (Ctrl-C) end the work in flight at its next safe point, never mid-write.

`handling_stop_signals()` wraps a command (`cli.run` does it): the first signal only sets a flag
and says so; a second SIGINT stops at once. Long loops call `check(what)` between units of work
(a generated batch, an encoded split); the Trainer calls `should_stop()` after every step,
saves that step's checkpoint when it answers True, and raises `Stopped`. `cli.run` turns
`Stopped` into one log line and exit status 0 (SIGTERM) or 130 (SIGINT).

On several processes the hosts must stop at the same step, so that they save the same
checkpoint: there SIGTERM is left to JAX's preemption service (installed by
`jax.distributed.initialize`), which tells every host when a notice reached any of them, and
`should_stop` asks `multihost_utils.reached_preemption_sync_point` at every step.
"""

import contextlib
import itertools
import signal
import threading

from absl import logging

EXIT_STATUS = {"SIGTERM": 0, "SIGINT": 130}


class Stopped(Exception):
  """The work stopped on a signal, with everything done so far saved; rerun to go on."""

  def __init__(self, signal_name: str, what: str):
    super().__init__(f"{what} on {signal_name}; rerun the same command to resume")
    self.signal_name = signal_name

  @property
  def exit_status(self) -> int:
    return EXIT_STATUS[self.signal_name]


_requested: list[str] = []  # the name of the first signal received, once one arrived.
# Ids for reached_preemption_sync_point: they only grow, across stages too, the same on every host.
_sync_ids = itertools.count(1)


def requested() -> str | None:
  """The name of the stop signal received ("SIGTERM", "SIGINT"), or None."""
  return _requested[0] if _requested else None


def request(signal_name: str) -> None:
  """Asks the running work to stop at its next safe point (what the handlers do)."""
  if not _requested:
    _requested.append(signal_name)


def _multi_process() -> bool:
  """Whether `jax.distributed` runs (it installs JAX's preemption service, on by default)."""
  import jax
  return jax.distributed.is_initialized()


def should_stop() -> str | None:
  """Called by every host after every train step: the signal to stop on at this step, or None.

  Single process: the signal received, if any. Several processes: SIGTERM, when JAX's
  preemption service says every host reached the same sync point (a Ctrl-C there is Python's
  default, KeyboardInterrupt: one terminal cannot stop the other hosts at the same step).
  """
  if _multi_process():
    from jax.experimental import multihost_utils
    try:
      reached = multihost_utils.reached_preemption_sync_point(next(_sync_ids))
    except RuntimeError:  # jax_enable_preemption_service=False: SIGTERM is not ours to handle.
      return None
    if reached:
      request("SIGTERM")
      return "SIGTERM"
    return None
  return requested()


def check(what: str) -> None:
  """Raises Stopped(what) when a stop was requested: for loops whose work needs no checkpoint.

  `what` says what stopping leaves, e.g. "sample: stopped after 512 of 1,000 pairs (none
  written)".
  """
  name = requested()
  if name is not None:
    raise Stopped(name, what)


def _handler(signum, frame):
  name = signal.Signals(signum).name
  if requested() == "SIGINT" and name == "SIGINT":
    raise KeyboardInterrupt  # the second Ctrl-C: stop now.
  request(name)
  logging.warning("%s received: stopping after the work in flight is saved%s", name,
                  " (Ctrl-C again to stop at once)" if name == "SIGINT" else "")


@contextlib.contextmanager
def handling_stop_signals():
  """Installs the stop handlers for the duration of a command (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  # Several processes: JAX's preemption service owns SIGTERM, and SIGINT stays Python's.
  signals = [] if _multi_process() else [signal.SIGINT, signal.SIGTERM]
  previous = {s: signal.signal(s, _handler) for s in signals}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _requested.clear()
