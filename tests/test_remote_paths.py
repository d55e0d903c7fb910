"""gs:// paths: every reader and writer of the project's own files, and a :smoke run whose
workdir is a bucket.

The bucket is fsspec's in-memory filesystem registered as the `gs` protocol, reached through
etils.epath's fsspec backend (EPATH_USE_TF=false; with TensorFlow installed epath would use
tf.io.gfile, whose GCS client no fake reaches, offline). It behaves as an object store the
builtin `open` cannot reach: the tests run in an empty directory, where `open("gs://...")`
raises FileNotFoundError, and fail if anything appears there (an `os.makedirs("gs://...")`
followed by `open` would otherwise write a local `gs:/` tree). A stray `tf.io.gfile` call on
gs:// fails too, on TensorFlow's real client, which cannot resolve its host.

Checkpoints and TensorBoard logs are the libraries' own (Orbax writes arrays through
tensorstore's GCS driver and lists buckets with google-cloud-storage; TensorBoard through
TensorFlow's GCS client): neither reaches the fake, so the smoke run maps those two
directories to local ones, explicitly, and everything else stays in the bucket.
"""

import json
import os
import sys

import fsspec
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath as epath_gpath
from fsspec.implementations.memory import MemoryFileSystem

from mxq_jax import config_lib, context as context_lib, files, run, workdir as workdir_lib
from mxq_jax.data import manual_data, prepared, tokenizer as tokenizer_lib
from mxq_jax.evaluation import clip, evaluator, weights_io
from mxq_jax.generation import generate, writer
from mxq_jax.training import checkpoints, codes as codes_lib
from conftest import REPO, load_config

sys.path.insert(0, str(REPO / "tests" / "evaluation"))
import weight_files  # noqa: E402  # pylint: disable=wrong-import-position

BUCKET = "gs://bucket"


class FakeGCS(MemoryFileSystem):
  """fsspec's memory filesystem under the gs:// protocol (keys are `bucket/path`, as GCS's)."""
  protocol = ("gs", "gcs")
  store, pseudo_dirs, root_marker = {}, [""], ""

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return path.strip("/")


def stray_local_paths(directory) -> list[str]:
  """What a gs:// path written with local calls (os.makedirs, open) left in `directory`."""
  return sorted(os.fspath(p) for p in directory.glob("gs:*"))


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  """An empty gs://bucket; the test runs in an empty local directory that must stay empty."""
  monkeypatch.setenv("EPATH_USE_TF", "false")
  # The variable alone did not hold in the full suite (some test before this file on the same
  # xdist worker left epath choosing TensorFlow's GCS client): pin the choice itself as well.
  monkeypatch.setattr(epath_gpath, "_is_tf_installed", lambda: False)
  for protocol in FakeGCS.protocol:
    fsspec.register_implementation(protocol, FakeGCS, clobber=True)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield BUCKET
  assert not stray_local_paths(cwd), "a gs:// path was written as a local one"


def upload(local_dir: str, remote_dir: str) -> None:
  for root, _, names in os.walk(local_dir):
    for name in names:
      relpath = os.path.relpath(os.path.join(root, name), local_dir)
      with open(os.path.join(root, name), "rb") as f:
        files.write_bytes(f"{remote_dir}/{relpath}", f.read())


# ------------------------------------------------------------------------ the guard itself


def test_the_builtin_open_cannot_reach_the_bucket(bucket, tmp_path):
  with pytest.raises(FileNotFoundError):
    open(f"{bucket}/config.json", "w")
  os.makedirs(f"{bucket}/work")  # what a stray os.makedirs would do, caught at teardown:
  assert stray_local_paths(tmp_path / "cwd") == [str(tmp_path / "cwd" / "gs:")]
  os.removedirs(f"{bucket}/work")


# ------------------------------------------------------------------------ files.py


def test_writers_and_readers(bucket):
  files.write_json(f"{bucket}/a/record.json", {"b": 1, "a": [2]})
  assert files.read_text(f"{bucket}/a/record.json") == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}'
  assert files.read_json(f"{bucket}/a/record.json") == {"a": [2], "b": 1}
  assert files.read_json(f"{bucket}/a/missing.json") == {}
  files.save_npy(f"{bucket}/a/codes.npy", np.arange(6, dtype=np.uint16).reshape(2, 3))
  loaded = files.load_npy(f"{bucket}/a/codes.npy")
  assert loaded.dtype == np.uint16 and loaded.tolist() == [[0, 1, 2], [3, 4, 5]]
  files.write_bytes(f"{bucket}/a/raw", b"x", atomic=False)
  with files.open(f"{bucket}/a/raw", "rb") as f:
    assert f.read() == b"x"
  assert files.listdir(f"{bucket}/a") == ["codes.npy", "raw", "record.json"]  # no temp left.
  assert files.size(f"{bucket}/a/codes.npy") == files.size(f"{bucket}/a/codes.npy") > 128


def test_a_failed_write_leaves_nothing(bucket):
  def fail(f):
    f.write(b"half")
    raise OSError("disk full")
  with pytest.raises(OSError, match="disk full"):
    files.write_atomically(f"{bucket}/a/x.json", fail)
  assert files.listdir(f"{bucket}/a") == []


def test_tree_operations(bucket):
  for name in ("s/1/a", "s/1/b", "s/2/c", "s/x.npy", "s/y.npy"):
    files.write_text(f"{bucket}/{name}", name)
  assert files.is_dir(f"{bucket}/s/1") and not files.is_file(f"{bucket}/s/1")
  assert files.is_file(f"{bucket}/s/1/a") and not files.is_dir(f"{bucket}/s/1/a")
  assert files.glob(f"{bucket}/s", "*.npy") == [f"{bucket}/s/x.npy", f"{bucket}/s/y.npy"]
  assert files.listdir(f"{bucket}/none") == []
  files.copy_tree(f"{bucket}/s", f"{bucket}/t/copy")
  assert files.read_text(f"{bucket}/t/copy/2/c") == "s/2/c"
  files.rename(f"{bucket}/t/copy", f"{bucket}/moved")
  assert files.listdir(f"{bucket}/moved") == ["1", "2", "x.npy", "y.npy"]
  assert not files.exists(f"{bucket}/t/copy")
  files.remove(f"{bucket}/moved")
  files.remove(f"{bucket}/s/x.npy")
  files.remove(f"{bucket}/never")
  assert not files.exists(f"{bucket}/moved") and files.listdir(f"{bucket}/s") == [
      "1", "2", "y.npy"]
  assert files.absolute(f"{bucket}/s") == f"{bucket}/s" and not files.is_local(bucket)


# ------------------------------------------------------------------------ the project's files


def test_tokenizer_trains_into_and_loads_from_the_bucket(bucket):
  captions = [f"a {c} digit {d}" for c in ("red", "blue", "green") for d in range(10)]
  path = f"{bucket}/tfds/tokenizer-28.model"
  tokenizer = tokenizer_lib.load_or_train(path, captions, 28)
  assert files.listdir(f"{bucket}/tfds") == ["tokenizer-28.model"]
  again = tokenizer_lib.Tokenizer.load(path)
  ids, _ = again.encode(["a red digit 3"], 32)
  assert again.decode(ids[0]) == tokenizer.decode(ids[0]) == "a red digit 3"


def test_prepared_cache_and_build_report(bucket):
  class Builder:
    data_dir, name = f"{bucket}/tfds/cub/1.0.0", "cub"
  images_path, captions_path = prepared._paths(Builder, "train", 8)  # pylint: disable=protected-access
  files.save_npy(images_path, np.zeros((2, 8, 8, 3), np.uint8))
  files.write_text(captions_path, json.dumps([["one"], ["two", "deux"]]))
  images, captions = prepared.load(Builder, "train", 8)
  assert images.shape == (2, 8, 8, 3) and captions == [["one"], ["two", "deux"]]
  report = manual_data.BuildReport("cub", "default")
  report.write(manual_data.report_path(Builder))
  assert manual_data.read_report(Builder) == report.as_dict()


def test_codes_are_written_and_read_in_the_bucket(bucket):
  directory = codes_lib.codes_dir(f"{bucket}/work", 6)
  files.save_npy(f"{directory}/train-00000-of-00001.npy", np.ones((4, 3), np.uint16))
  assert not codes_lib.is_complete(directory)
  files.write_json(f"{directory}/meta.json", {"num_shards": 1, "seq_len": 3,
                                              "examples": {"train": 4}})
  assert codes_lib.is_complete(directory)
  assert codes_lib.load_codes(directory, "train").tolist() == [[1, 1, 1]] * 4


def test_checkpoint_housekeeping_in_the_bucket(bucket, monkeypatch):
  directory = checkpoints.checkpoint_dir(f"{bucket}/work", "stage1")
  files.write_text(f"{directory}/3/state/data", "ok")
  files.write_text(f"{directory}/6.orbax-checkpoint-tmp-1/state/data", "half")
  checkpoints._remove_unfinished(directory)  # pylint: disable=protected-access
  assert files.listdir(directory) == ["3"]
  moved = checkpoints._quarantine(directory, 3)  # pylint: disable=protected-access
  assert moved.startswith(f"{bucket}/work/stage1/damaged_checkpoints/3-")
  assert files.read_text(f"{moved}/state/data") == "ok" and files.listdir(directory) == []
  monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # as where it is missing.
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"^checkpoints in gs://bucket/work/stage1/checkpoints need the "
                           r"google-cloud-storage package: pip install -e '\.\[gcs\]'$"):
    checkpoints.make_manager(directory, keep=2)


def test_pairs_are_written_and_read_back_in_the_bucket(bucket):
  outdir = f"{bucket}/samples"
  pairs = writer.PairWriter(outdir, overwrite=False, total=3, grid_size=2)
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  pairs.add_batch(images, [{"image": writer.PairWriter.image_name(i), "caption": f"n{i}"}
                           for i in range(3)])
  pairs.publish()
  assert files.listdir(outdir) == ["grid.png", "images", "samples.jsonl"]
  read_images, captions = evaluator.read_samples(outdir)
  assert np.array_equal(read_images, images) and captions == ["n0", "n1", "n2"]
  with pytest.raises(writer.OutdirError, match="exists and is not empty"):
    writer.PairWriter(outdir, overwrite=False, total=1)
  with pytest.raises(writer.OutdirError, match="is not a directory"):
    writer.check_outdir(f"{outdir}/grid.png", overwrite=True)
  stale = writer.PairWriter(outdir, overwrite=True, total=1)  # empties outdir at once.
  stale.discard()
  assert not files.exists(outdir)


def test_weight_files_read_from_the_bucket(bucket, tmp_path):
  state_dict = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  for legacy in (False, True):
    weight_files.write_pth(str(tmp_path / "w.pth"), state_dict, legacy=legacy)
    upload(str(tmp_path), f"{bucket}/weights")
    assert weights_io.read_pth(f"{bucket}/weights/w.pth")["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
  weights_io.write_safetensors(f"{bucket}/weights/w.safetensors", state_dict)
  assert weights_io.read_safetensors(f"{bucket}/weights/w.safetensors")["w"].tolist() == [
      [0, 1, 2], [3, 4, 5]]
  folder = weight_files.write_tiny_clip_dir(str(tmp_path / "clip"))
  upload(folder, f"{bucket}/clip")
  remote, local = clip.load(f"{bucket}/clip"), clip.load(folder)
  assert remote.tokenizer.vocab == local.tokenizer.vocab
  assert remote.tokenizer.ranks == local.tokenizer.ranks and remote.config == local.config


def test_workdir_config_and_an_unlocked_hold(bucket, caplog):
  files.write_json(f"{bucket}/work/config.json", load_config("synthetic", "smoke").to_dict())
  config = config_lib.from_json_file(f"{bucket}/work/config.json")
  assert config.to_dict() == load_config("synthetic", "smoke").to_dict()
  with workdir_lib.hold(f"{bucket}/work"):
    pass
  assert "is used unlocked" in caplog.text
  assert files.listdir(f"{bucket}/work") == ["config.json"]


# ------------------------------------------------------------------------ a run in the bucket


@pytest.fixture
def library_dirs_local(monkeypatch, tmp_path):
  """Checkpoints (Orbax) and TensorBoard logs (clu, TensorFlow) in a local mirror of the
  bucket: those libraries write gs:// themselves, through clients the fake does not reach."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  mirror = tmp_path / "libraries"
  local = lambda path: str(mirror / os.fspath(path).removeprefix(f"{BUCKET}/"))
  checkpoint_dir, create_writer = checkpoints.checkpoint_dir, metric_writers.create_default_writer
  monkeypatch.setattr(checkpoints, "checkpoint_dir",
                      lambda workdir, stage: local(checkpoint_dir(workdir, stage)))
  monkeypatch.setattr(metric_writers, "create_default_writer",
                      lambda logdir, **kwargs: create_writer(local(logdir), **kwargs))
  return mirror


def test_a_smoke_run_trains_resumes_and_samples_in_the_bucket(bucket, library_dirs_local,
                                                             smoke_config):
  """Stage 1 to step 3, then a second run that resumes it to 6 and trains the prior, then
  pairs sampled from the workdir: every file but the checkpoints and logs in the bucket.
  (The evaluate stage writes nothing more than these do: samples and a JSON record.)"""
  workdir = f"{bucket}/work"
  smoke_config.prior.optim.num_steps = 3  # one checkpoint: seconds each at this size.
  first = load_config("synthetic", "smoke")
  first.data.data_dir, first.stages, first.vqvae.optim.num_steps = (
      smoke_config.data.data_dir, "stage1", 3)
  run.train_and_evaluate(first, workdir)
  assert checkpoints.latest_step(checkpoints.checkpoint_dir(workdir, "stage1")) == 3
  smoke_config.stages = "stage1,encode,stage2"
  results = run.train_and_evaluate(smoke_config, workdir)  # stage 1 resumes at step 3.
  assert results["stage1"]["step"] == 6 and results["stage2"]["step"] == 3
  # The second run extended stage 1: config.json holds its config, config.1.json the first's.
  assert files.listdir(workdir) == ["codes", "config.1.json", "config.json", "stage1", "stage2",
                                    "tokenizer.model"]
  assert [files.read_json(f"{workdir}/{name}")["vqvae"]["optim"]["num_steps"]
          for name in ("config.1.json", "config.json")] == [3, 6]
  assert files.read_json(f"{workdir}/stage2/eval_metrics.json") == results["stage2"]
  assert files.listdir(f"{workdir}/codes/stage1_step_6") == [
      "meta.json", "test-00000-of-00001.npy", "train-00000-of-00001.npy"]
  assert sorted(os.listdir(library_dirs_local / "work" / "stage1" / "checkpoints")) == ["3", "6"]

  context = context_lib.for_trained_workdir(workdir)
  generate.generate_pairs(context, f"{bucket}/pairs", num_samples=8, batch_size=8, seed=0)
  images, captions = evaluator.read_samples(f"{bucket}/pairs")
  assert images.shape == (8, 16, 16, 3) and len(captions) == 8
