"""Tests of mxq_jax.sample_writer: output directories, caption grids, PNG, JSONL, progress."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from mxq_jax.generation import writer as sw


def _listing(path) -> list[str]:
  return sorted(os.listdir(path))


# Output directories.


def test_refuses_non_empty_outdir_without_overwrite(tmp_path):
  outdir = tmp_path / "out"
  outdir.mkdir()
  (outdir / "old.txt").write_text("old")
  with pytest.raises(sw.OutdirError) as info:
    sw.open_staging_dir(str(outdir), overwrite=False)
  message = str(info.value)
  assert "\n" not in message and str(outdir) in message
  assert "--overwrite" in message and "--outdir" in message
  # Nothing was created next to outdir or inside it.
  assert _listing(tmp_path) == ["out"]
  assert _listing(outdir) == ["old.txt"]


def test_refuses_outdir_that_is_a_file(tmp_path):
  outdir = tmp_path / "out"
  outdir.write_text("a file")
  for overwrite in (False, True):
    with pytest.raises(sw.OutdirError, match="not a directory"):
      sw.open_staging_dir(str(outdir), overwrite=overwrite)
  assert _listing(tmp_path) == ["out"]


def test_empty_existing_outdir_is_accepted(tmp_path):
  outdir = tmp_path / "out"
  outdir.mkdir()
  staging = sw.open_staging_dir(str(outdir), overwrite=False)
  assert os.path.dirname(staging) == str(tmp_path) and _listing(staging) == []
  (tmp_path / staging / "a.png").write_bytes(b"new")
  assert _listing(outdir) == []  # Staging never touches outdir before publish.
  sw.publish(staging, str(outdir))
  assert _listing(outdir) == ["a.png"]
  assert _listing(tmp_path) == ["out"]


def test_new_outdir_and_missing_parent(tmp_path):
  outdir = tmp_path / "deep" / "er" / "out"
  staging = sw.open_staging_dir(str(outdir) + "/", overwrite=False)
  assert not outdir.exists() and os.path.dirname(staging) == str(outdir.parent)
  with open(os.path.join(staging, "samples.jsonl"), "w") as f:
    f.write("{}\n")
  sw.publish(staging, str(outdir))
  assert _listing(outdir) == ["samples.jsonl"]
  assert _listing(outdir.parent) == ["out"]
  # Like a `mkdir`, not mkdtemp's owner-only 0o700.
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(outdir).st_mode & 0o777 == 0o777 & ~umask


def test_publish_with_overwrite_replaces_old_content_completely(tmp_path):
  outdir = tmp_path / "out"
  (outdir / "sub").mkdir(parents=True)
  (outdir / "old.txt").write_text("old")
  (outdir / "sub" / "old.png").write_bytes(b"old")
  staging = sw.open_staging_dir(str(outdir), overwrite=True)
  with open(os.path.join(staging, "new.txt"), "w") as f:
    f.write("new")
  # Before publish the old content is intact and the new one only in staging.
  assert _listing(outdir) == ["old.txt", "sub"]
  assert _listing(tmp_path) == sorted(["out", os.path.basename(staging)])
  sw.publish(staging, str(outdir))
  assert _listing(outdir) == ["new.txt"]
  assert (outdir / "new.txt").read_text() == "new"
  assert _listing(tmp_path) == ["out"]  # No staging or moved-aside sibling left behind.


# Caption grids.


def _images(n, size, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_grid_shape_and_cell_positions_for_partial_last_row():
  n, size, columns = 5, 16, 2
  images = _images(n, size)
  grid = sw.captioned_grid(images, [f"sample {i}" for i in range(n)], columns=columns)
  assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
  scale = 6  # The smallest factor making a 16 px image >= 96 px wide.
  cell_w, pad, rows = size * scale, sw.CELL_PAD, 3
  assert grid.shape[1] == columns * cell_w + (columns + 1) * pad
  cell_h, rest = divmod(grid.shape[0] - (rows + 1) * pad, rows)
  assert rest == 0 and cell_h > cell_w  # Room for the caption under each image.
  for i in range(n + 1):
    x = pad + (i % columns) * (cell_w + pad)
    y = pad + (i // columns) * (cell_h + pad)
    if i < n:
      expected = np.repeat(np.repeat(images[i], scale, axis=0), scale, axis=1)
      np.testing.assert_array_equal(grid[y:y + cell_w, x:x + cell_w], expected)
      caption = grid[y + cell_w:y + cell_h, x:x + cell_w]
      assert (caption < 128).any()  # Some dark text under the image.
    else:  # The missing cell of the partial last row is white.
      assert (grid[y:y + cell_h, x:x + cell_w] == 255).all()
  # The padding between the cells is white.
  assert (grid[:pad] == 255).all() and (grid[:, :pad] == 255).all()
  assert (grid[:, pad + cell_w:2 * pad + cell_w] == 255).all()


@pytest.mark.parametrize("size,scale", [(16, 6), (32, 3), (64, 2), (128, 1)])
def test_grid_default_and_explicit_scale(size, scale):
  images = _images(3, size)
  grid = sw.captioned_grid(images, ["a", "b", "c"], columns=8)
  assert grid.shape[1] == 3 * size * scale + 4 * sw.CELL_PAD  # Only as many columns as images.
  grid2 = sw.captioned_grid(images, ["a", "b", "c"], columns=1, scale=scale + 1)
  assert grid2.shape[1] == size * (scale + 1) + 2 * sw.CELL_PAD


def test_long_caption_makes_taller_cells():
  images = _images(2, 32)
  short = sw.captioned_grid(images, ["a red bird", "sky"], columns=2)
  long_caption = "a small red bird with black wings perched on a thin branch in the snow " * 2
  long = sw.captioned_grid(images, ["sky", long_caption], columns=2)
  assert long.shape[1] == short.shape[1]
  assert long.shape[0] > short.shape[0] + 20  # Several extra lines, for every cell alike.
  # An unbreakable word wider than the cell is split rather than overflowing into the next cell.
  word = sw.captioned_grid(images[:1], ["x" * 200], columns=1)
  assert word.shape[0] > short.shape[0]


@pytest.mark.parametrize("images,captions,columns,match", [
    (np.zeros((2, 16, 16, 3), np.float32), ["a", "b"], 8, "uint8"),
    (np.zeros((16, 16, 3), np.uint8), ["a"], 8, "shape"),
    (np.zeros((2, 16, 16, 4), np.uint8), ["a", "b"], 8, "shape"),
    (np.zeros((2, 16, 16, 3), np.uint8), ["a"], 8, "caption"),
    (np.zeros((0, 16, 16, 3), np.uint8), [], 8, "at least one"),
    (np.zeros((2, 16, 16, 3), np.uint8), ["a", "b"], 0, "columns"),
])
def test_grid_input_errors(images, captions, columns, match):
  with pytest.raises(ValueError, match=match):
    sw.captioned_grid(images, captions, columns=columns)


# Files and progress.


def test_save_png_round_trip(tmp_path):
  image = _images(1, 32)[0]
  path = str(tmp_path / "a.png")
  sw.save_png(path, image)
  with Image.open(path) as png:
    assert png.format == "PNG" and png.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(png), image)
  with pytest.raises(ValueError):
    sw.save_png(path, image.astype(np.float32))


def test_write_jsonl_round_trip_with_numpy_values(tmp_path):
  records = [
      {"index": np.int64(0), "caption": "un oiseau rouge — ü", "tokens": np.array([3, 1, 4]),
       "score": np.float32(0.5), "ok": np.bool_(True)},
      {"index": 1, "caption": "", "tokens": [], "score": 1.5, "ok": False},
  ]
  path = tmp_path / "samples.jsonl"
  sw.write_jsonl(str(path), iter(records))
  raw = path.read_bytes()
  assert "—".encode() in raw  # ensure_ascii=False: UTF-8, not \u escapes.
  lines = raw.decode("utf-8").splitlines()
  assert [list(json.loads(line)) for line in lines] == [list(r) for r in records]  # Key order.
  assert json.loads(lines[0]) == {"index": 0, "caption": "un oiseau rouge — ü",
                                  "tokens": [3, 1, 4], "score": 0.5, "ok": True}
  assert json.loads(lines[1]) == records[1]


def test_progress_on_a_log_stream_is_short_and_ends_with_total():
  stream = io.StringIO()
  progress = sw.Progress(1000, "sampling", stream=stream)
  for _ in range(100):
    progress.update(10)
  progress.close()
  progress.close()  # Idempotent.
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue() and len(lines) <= 11
  assert lines[-1].startswith("sampling: 100% |") and "1000/1000" in lines[-1]
  assert "pairs/s]" in lines[-1]


def test_progress_redraws_on_a_terminal():
  class Tty(io.StringIO):
    def isatty(self):
      return True

  stream = Tty()
  progress = sw.Progress(3, "sampling", stream=stream)
  for _ in range(3):
    progress.update()
  progress.close()
  out = stream.getvalue()
  assert out.count("\r") == 4 and out.endswith("\n") and out.count("\n") == 1
  assert "3/3" in out.rsplit("\r", 1)[-1]


def test_unfinished_outputs_of_dead_runs_are_removed_by_the_next_run(tmp_path):
  """A `sample` killed with SIGKILL leaves `.partial-PID-*`; the next run into the same outdir
  removes it, and keeps those of live processes (another run still writing)."""
  import subprocess
  import sys
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  stale = tmp_path / f"out.partial-{int(dead.stdout)}-abc"
  stale_old = tmp_path / f"out.old-{int(dead.stdout)}-def"
  live = tmp_path / f"out.partial-{os.getppid()}-ghi"
  for path in (stale, stale_old, live):
    (path / "images").mkdir(parents=True)
  staging = sw.open_staging_dir(str(tmp_path / "out"), overwrite=False)
  assert not stale.exists() and not stale_old.exists() and live.exists()
  assert os.path.isdir(staging)


def test_a_discarded_writer_leaves_nothing(tmp_path):
  pairs = sw.PairWriter(str(tmp_path / "out"), overwrite=False, total=4)
  pairs.add_batch(np.zeros((1, 8, 8, 3), np.uint8),
                  [{"id": 0, "caption": "a", "image": pairs.image_name(0)}])
  pairs.discard()
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("grid_size", [0, 2])
def test_a_published_writer_holds_every_pair_and_a_grid_unless_grid_size_is_0(tmp_path,
                                                                             grid_size):
  pairs = sw.PairWriter(str(tmp_path / "out"), overwrite=False, total=3, grid_size=grid_size)
  pairs.add_batch(np.zeros((3, 8, 8, 3), np.uint8),
                  [{"id": i, "caption": "a", "image": pairs.image_name(i)} for i in range(3)])
  pairs.publish()
  assert _listing(tmp_path) == ["out"]
  assert _listing(tmp_path / "out") == ["grid.png"] * (grid_size > 0) + ["images", "samples.jsonl"]
  assert len(_listing(tmp_path / "out" / "images")) == 3
