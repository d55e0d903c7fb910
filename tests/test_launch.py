"""launch/: what `launch/tpu.sh` runs, checked against a fake `gcloud` that records its calls,
and the worker side (`launch/on_worker.sh start`) run for real on a local command."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU_SH = REPO / "launch" / "tpu.sh"
ON_WORKER = REPO / "launch" / "on_worker.sh"
SCRIPTS = [TPU_SH, ON_WORKER, REPO / "launch" / "slurm.sbatch"]

# Records each call as one JSON line; copies any .tar.gz it is handed (setup's scp) aside;
# fails a call whose arguments contain $FAKE_GCLOUD_FAIL.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
for arg in args:
  if arg.endswith(".tar.gz") and os.path.isfile(arg):
    shutil.copy(arg, os.environ["FAKE_GCLOUD_KEEP"])
fail = os.environ.get("FAKE_GCLOUD_FAIL")
sys.exit(1 if fail and fail in " ".join(args) else 0)
"""

V5E_8 = ["--name=bird", "--zone=us-west4-a", "--type=v5litepod-8"]
V5E_16 = ["--name=bird", "--zone=us-west4-a", "--type=v5litepod-16"]
TRAIN = ["--config=configs/cub.py", "--workdir=gs://bucket/cub", "--data_dir=gs://bucket/tfds"]


@dataclasses.dataclass
class Result:
  returncode: int
  stdout: str
  stderr: str
  calls: list[list[str]]  # each gcloud call's arguments, in order


@pytest.fixture
def tpu(tmp_path):
  """tpu(*args, **env) runs launch/tpu.sh with the fake gcloud first on PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  log = tmp_path / "gcloud_calls.jsonl"
  keep = tmp_path / "kept"
  keep.mkdir()

  def run(*args, **env):
    log.write_text("")
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "FAKE_GCLOUD_LOG": str(log), "FAKE_GCLOUD_KEEP": str(keep), **env}
    for name in ("DRY_RUN", "FAKE_GCLOUD_FAIL"):
      if name not in env:
        full_env.pop(name, None)
    proc = subprocess.run(["bash", str(TPU_SH), *args], env=full_env, capture_output=True,
                          text=True, timeout=30)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return Result(proc.returncode, proc.stdout, proc.stderr, calls)

  run.kept = keep
  return run


def flag(call, name):
  """The value of --name=VALUE in one call (None if absent)."""
  values = [arg.split("=", 1)[1] for arg in call if arg.startswith(f"--{name}=")]
  assert len(values) <= 1, call
  return values[0] if values else None


# ------------------------------------------------------------------------------------ create


def test_create_makes_an_on_demand_tpu_vm_with_the_generations_runtime(tpu):
  result = tpu("create", *V5E_8)
  assert result.returncode == 0, result.stderr
  assert result.calls == [["compute", "tpus", "tpu-vm", "create", "bird",
                           "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite",
                           "--zone=us-west4-a"]]


def test_create_spot_adds_spot_and_project(tpu):
  result = tpu("create", *V5E_8, "--spot", "--project=my-proj")
  assert result.returncode == 0, result.stderr
  [call] = result.calls
  assert call[:5] == ["compute", "tpus", "tpu-vm", "create", "bird"]
  assert "--spot" in call and flag(call, "project") == "my-proj"


def test_create_queued_makes_a_queued_resource_whose_node_has_the_same_name(tpu):
  result = tpu("create", *V5E_16, "--queued", "--spot")
  assert result.returncode == 0, result.stderr
  [call] = result.calls
  assert call[:5] == ["compute", "tpus", "queued-resources", "create", "bird"]
  assert flag(call, "node-id") == "bird"
  assert flag(call, "accelerator-type") == "v5litepod-16"
  assert flag(call, "runtime-version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in call and flag(call, "version") is None


@pytest.mark.parametrize("tpu_type,version", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e"),
    ("v5litepod-4", "v2-alpha-tpuv5-lite")])
def test_each_generation_gets_its_software_version(tpu, tpu_type, version):
  result = tpu("create", "--name=n", "--zone=z", f"--type={tpu_type}")
  assert result.returncode == 0, result.stderr
  assert flag(result.calls[0], "version") == version


def test_version_overrides_the_default(tpu):
  result = tpu("create", *V5E_8, "--version=v2-alpha-tpuv5-lite-next")
  assert flag(result.calls[0], "version") == "v2-alpha-tpuv5-lite-next"


# ------------------------------------------------------------------------------------- setup


def test_setup_copies_the_checkout_to_every_worker_and_installs_it(tpu):
  result = tpu("setup", *V5E_16)
  assert result.returncode == 0, result.stderr
  scp, ssh = result.calls
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[5] == "bird:mxq_jax.tar.gz"
  [tarball] = tpu.kept.iterdir()  # what was copied: this checkout's tracked files
  with tarfile.open(tarball) as archive:
    names = set(archive.getnames())
  assert {"setup.py", "launch/on_worker.sh", "mxq_jax/main.py", "configs/cub.py"} <= names
  assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "bird"] and "--worker=all" in ssh
  command = flag(ssh, "command")
  assert "tar -xzf mxq_jax.tar.gz -C ~/mxq_jax" in command
  assert command.endswith("bash ~/mxq_jax/launch/on_worker.sh install")


# ------------------------------------------------------------------------------------- train

# Where the workdir is gs://, the run's compiled programs are cached in its bucket: every host of
# every launch (a slice recreated after a preemption too) reads what process 0 wrote.
BUCKET_CACHE = "env JAX_COMPILATION_CACHE_DIR=gs://bucket/jax_compilation_cache"


def test_train_runs_the_fit_check_on_worker_0_then_main_on_every_worker(tpu):
  result = tpu("train", *V5E_16, *TRAIN, "--config.vqvae.dtype=bfloat16")
  assert result.returncode == 0, result.stderr
  aot, main = result.calls
  assert aot[:5] == ["compute", "tpus", "tpu-vm", "ssh", "bird"]
  assert flag(aot, "worker") == "0"
  assert flag(aot, "command") == (
      "bash ~/mxq_jax/launch/on_worker.sh run -- python -m mxq_jax.aot "
      "--config=configs/cub.py --topology=v5litepod-16 "
      "--config.data.data_dir=gs://bucket/tfds --config.vqvae.dtype=bfloat16")
  assert flag(main, "worker") == "all"
  assert flag(main, "command") == (
      "bash ~/mxq_jax/launch/on_worker.sh start gs://bucket/cub -- "
      f"{BUCKET_CACHE} python -m mxq_jax.main --config=configs/cub.py --workdir=gs://bucket/cub "
      "--config.data.data_dir=gs://bucket/tfds --config.vqvae.dtype=bfloat16")


def test_train_skip_fit_check_starts_main_only(tpu):
  result = tpu("train", *V5E_16, *TRAIN, "--skip_fit_check")
  assert result.returncode == 0, result.stderr
  [main] = result.calls
  assert flag(main, "worker") == "all" and "mxq_jax.main" in flag(main, "command")
  assert not any("mxq_jax.aot" in arg for arg in main)


def test_a_failed_fit_check_starts_nothing(tpu):
  result = tpu("train", *V5E_16, *TRAIN, FAKE_GCLOUD_FAIL="mxq_jax.aot")
  assert result.returncode == 1
  assert len(result.calls) == 1 and "mxq_jax.aot" in flag(result.calls[0], "command")
  assert "fit check" in result.stderr and "--skip_fit_check" in result.stderr


def test_every_command_is_printed_before_it_runs(tpu):
  result = tpu("train", *V5E_8, *TRAIN, "--skip_fit_check")
  printed = [line for line in result.stderr.splitlines() if line.startswith("+ ")]
  assert printed == [
      "+ gcloud compute tpus tpu-vm ssh bird --worker=all --command='bash "
      f"~/mxq_jax/launch/on_worker.sh start gs://bucket/cub -- {BUCKET_CACHE} python -m "
      "mxq_jax.main --config=configs/cub.py --workdir=gs://bucket/cub "
      "--config.data.data_dir=gs://bucket/tfds' --zone=us-west4-a"]


def test_dry_run_prints_the_commands_and_runs_none(tpu):
  result = tpu("train", *V5E_16, *TRAIN, DRY_RUN="1")
  assert result.returncode == 0, result.stderr
  assert result.calls == []
  printed = [line for line in result.stderr.splitlines() if line.startswith("+ gcloud ")]
  assert len(printed) == 2
  assert "--worker=0" in printed[0] and "mxq_jax.aot" in printed[0]
  assert "--worker=all" in printed[1] and "mxq_jax.main" in printed[1]


def test_dry_run_setup_copies_nothing(tpu):
  result = tpu("setup", *V5E_8, DRY_RUN="1")
  assert result.returncode == 0, result.stderr
  assert result.calls == [] and list(tpu.kept.iterdir()) == []
  assert "+ git -C " in result.stderr and "archive" in result.stderr


# --------------------------------------------------------------------- sample, evaluate, logs


def test_sample_runs_on_worker_0_of_a_single_host_slice(tpu):
  result = tpu("sample", *V5E_8, "--workdir=gs://bucket/cub", "--", "--num_samples=1000")
  assert result.returncode == 0, result.stderr
  [call] = result.calls
  assert flag(call, "worker") == "0"
  assert flag(call, "command") == (
      f"bash ~/mxq_jax/launch/on_worker.sh run -- {BUCKET_CACHE} python -m mxq_jax.sample "
      "--workdir=gs://bucket/cub --outdir=gs://bucket/cub/generated --num_samples=1000")


def test_a_local_workdir_keeps_the_cache_in_the_workers_home(tpu):
  result = tpu("sample", *V5E_8, "--workdir=/home/me/cub")
  assert result.returncode == 0, result.stderr
  assert flag(result.calls[0], "command") == (
      "bash ~/mxq_jax/launch/on_worker.sh run -- python -m mxq_jax.sample "
      "--workdir=/home/me/cub --outdir=/home/me/cub/generated")

def test_evaluate_on_a_multi_host_slice_runs_on_every_worker(tpu):
  result = tpu("evaluate", *V5E_16, "--workdir=gs://bucket/cub", "--",
               "--samples=gs://bucket/other")
  assert result.returncode == 0, result.stderr
  [call] = result.calls
  assert flag(call, "worker") == "all"
  assert flag(call, "command").endswith(
      f"-- {BUCKET_CACHE} python -m mxq_jax.evaluate --workdir=gs://bucket/cub "
      "--samples=gs://bucket/other")


@pytest.mark.parametrize("worker", [None, "3"])
def test_logs_follows_the_workers_log(tpu, worker):
  args = ["logs", "--name=bird", "--zone=us-west4-a"] + ([f"--worker={worker}"] if worker else [])
  result = tpu(*args)
  assert result.returncode == 0, result.stderr
  [call] = result.calls
  expected = worker or "0"
  assert flag(call, "worker") == expected
  assert flag(call, "command") == f"tail -n 200 -F ~/mxq_jax_logs/worker-{expected}.log"


def test_ssh_runs_a_command_or_opens_a_shell(tpu):
  result = tpu("ssh", "--name=bird", "--zone=z", "--worker=all", "--command=uptime")
  assert result.calls == [["compute", "tpus", "tpu-vm", "ssh", "bird", "--worker=all",
                           "--command=uptime", "--zone=z"]]
  result = tpu("ssh", "--name=bird", "--zone=z")
  assert result.calls == [["compute", "tpus", "tpu-vm", "ssh", "bird", "--worker=0", "--zone=z"]]


# ------------------------------------------------------------------------------------ delete


def test_delete_removes_the_vm_and_asks_nothing_when_quiet(tpu):
  result = tpu("delete", "--name=bird", "--zone=z", "--quiet")
  assert result.calls == [["compute", "tpus", "tpu-vm", "delete", "bird", "--quiet", "--zone=z"]]
  result = tpu("delete", "--name=bird", "--zone=z")
  assert "--quiet" not in result.calls[0]  # gcloud asks first


def test_delete_queued_removes_the_request_and_its_slice(tpu):
  result = tpu("delete", "--name=bird", "--zone=z", "--queued", "--quiet")
  assert result.calls == [["compute", "tpus", "queued-resources", "delete", "bird", "--force",
                           "--quiet", "--zone=z"]]


# ----------------------------------------------------------------------------- bad usage


@pytest.mark.parametrize("args,says", [
    ([], "no command"),
    (["launch", *V5E_8], "unknown command 'launch'"),
    (["create", "--zone=z", "--type=v5litepod-8"], "needs --name"),
    (["create", "--name=n", "--type=v5litepod-8"], "needs --zone"),
    (["create", "--name=n", "--zone=z"], "needs --type"),
    (["create", "--name=n", "--zone=z", "--type=v5e-8"], "--type=v5e-8"),
    (["train", *V5E_16, "--config=configs/cub.py", "--workdir=/tmp/cub"], "gs://"),
    (["train", *V5E_16, "--config=configs/cub.py", "--workdir=gs://b/c", "--data_dir=/d"],
     "--data_dir=/d"),
    (["train", *V5E_8, "--workdir=gs://b/c"], "needs --config"),
    (["create", *V5E_8, "--nmae=x"], "unknown flag --nmae=x"),
    (["logs", "--name=n", "--zone=z", "--worker=all"], "--worker=all"),
    (["delete", "--name=n", "--zone=z", "--config.x=1"], "takes no mxq_jax arguments"),
])
def test_bad_usage_is_one_line_and_exit_status_2(tpu, args, says):
  result = tpu(*args)
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert result.calls == []
  lines = result.stderr.splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith("tpu.sh: error: ") and says in lines[0]


def test_a_single_host_slice_may_use_a_local_workdir(tpu):
  result = tpu("train", *V5E_8, "--config=configs/cub.py", "--workdir=/home/me/cub",
               "--skip_fit_check")
  assert result.returncode == 0, result.stderr


def test_help_lists_every_command(tpu):
  result = tpu("--help")
  assert result.returncode == 0 and result.calls == []
  for command in ("create", "setup", "train", "sample", "evaluate", "logs", "ssh", "delete",
                  "DRY_RUN", "--queued", "--spot", "--skip_fit_check"):
    assert command in result.stdout


# ------------------------------------------------------------------------ the scripts' syntax


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_scripts_parse(script):
  result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert result.returncode == 0 and not result.stderr, result.stderr


# ----------------------------------------------------------------------- the worker's side


def test_on_worker_start_detaches_and_copies_the_log_into_the_workdir(tmp_path):
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "python").symlink_to(sys.executable)
  workdir, logs = tmp_path / "workdir", tmp_path / "logs"
  env = {**os.environ, "MXQ_JAX_VENV": str(venv), "MXQ_JAX_LOGS": str(logs),
         "MXQ_JAX_WORKER": "2", "MXQ_JAX_LOG_SYNC_SECONDS": "0.2"}
  start = time.monotonic()
  proc = subprocess.run(
      ["bash", str(ON_WORKER), "start", str(workdir), "--", "python", "-c",
       "import time; print('trained on', flush=True); time.sleep(0.5)"],
      env=env, capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert time.monotonic() - start < 0.5  # detached: start returned before the run ended
  assert "worker 2: started" in proc.stdout
  copied = workdir / "logs" / "worker-2.log"
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and "exited with status 0" not in (
      copied.read_text() if copied.exists() else ""):
    time.sleep(0.1)
  text = copied.read_text()
  assert "trained on" in text and "exited with status 0" in text
  assert text == (logs / "worker-2.log").read_text()
