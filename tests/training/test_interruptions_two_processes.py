"""Two processes of one job (`jax.distributed`, gloo): SIGTERM to one stops both at the same
saved step. Beside tests/training/test_interruptions.py, which shares its runs' helpers, in a
file of its own: pytest-xdist (--dist loadfile) then runs it beside that file's runs."""

import signal

from test_interruptions import NUM_STEPS, Run, free_port, steps_of


def test_on_two_processes_sigterm_to_one_stops_both_at_the_same_saved_step(tmp_path):
  """JAX's preemption service: the host that got the notice tells the other, and both save the
  same step (a few steps later: the sync point) and exit 0."""
  run, port = Run(tmp_path / "work", tmp_path / "final.npz"), str(free_port())
  procs = [run.start(port, str(i), devices=1) for i in range(2)]
  try:
    for line in procs[1].stdout:
      if line.strip() == "batch 8":
        procs[1].send_signal(signal.SIGTERM)
        break
    results = [proc.communicate(timeout=300) for proc in procs]
  finally:
    for proc in procs:
      proc.kill()
  saved = steps_of(tmp_path / "work")[-1]
  assert 8 <= saved < NUM_STEPS
  for proc, (_, stderr) in zip(procs, results):
    assert proc.returncode == 0, stderr[-3000:]
    assert f"stage2: saved step {saved} and stopped on SIGTERM" in stderr
