"""Host-side output of generation: safe output directories, PNGs, caption grids, JSONL.

Nothing here touches JAX; the sampler hands over numpy arrays and strings.

Output directories are written safely: `open_staging_dir` checks `--outdir` up front (refusing
to clobber a non-empty one unless `--overwrite`) and returns a fresh sibling directory in
which everything is written; `publish` then renames that into place. A crash before
`publish` leaves `outdir` untouched (plus a `*.partial-*` sibling), and `publish` itself only
renames, so `outdir` ends up holding the old content or the new, never a mix.

On `gs://` a directory rename is a copy and a delete of every object: no more atomic than
writing in place, and far slower. There `outdir` itself is the staging directory (emptied
first), and samples.jsonl, written last, is what marks the pairs complete: a crash leaves an
`outdir` without it, which `evaluate` refuses.

`PairWriter` puts these together for a run of generated pairs; `Progress` is a
dependency-free progress bar for stderr that stays short in log files.
"""

import functools
import io
import json
import math
import os
import re
import contextlib
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TextIO

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

from mxq_jax import files

CELL_PAD = 4  # White pixels between grid cells and around the border.
MIN_CELL_WIDTH = 96  # The default upscale makes a cell at least this wide.
FONT_SIZE = 12
_CAPTION_GAP = 2  # Pixels between an image and its caption's first line.


class OutdirError(ValueError):
  """An output directory that cannot be used; the message is one line, fit for a CLI."""


# ---------------------------------------------------------------------------------------------
# Output directory: stage, then publish by renaming.


def _split(outdir: str) -> tuple[str, str]:
  """(parent, basename) of `outdir`, tolerant of a trailing slash."""
  path = files.absolute(outdir).rstrip("/")
  return os.path.dirname(path), os.path.basename(path)


def _is_file(path: str) -> bool:
  """A file, or a link (even a dangling one): nothing to make a directory of."""
  return os.path.lexists(path) and not os.path.isdir(path) if files.is_local(path) \
      else files.is_file(path)


def check_outdir(outdir: str, overwrite: bool) -> None:
  """Refuses (OutdirError) a file, or a non-empty directory unless `overwrite`."""
  if _is_file(outdir):
    raise OutdirError(f"--outdir {outdir!r} exists and is not a directory; "
                      "choose another --outdir")
  if files.listdir(outdir) and not overwrite:
    raise OutdirError(f"--outdir {outdir!r} exists and is not empty; "
                      "pass --overwrite to replace it or choose another --outdir")


def remove_stale_siblings(outdir: str) -> list[str]:
  """Deletes the `.partial-PID-*` and `.old-PID-*` siblings of `outdir` left by processes of
  this host that no longer run (a killed `sample`); returns their paths."""
  parent, name = _split(outdir)
  pattern = re.compile(rf"{re.escape(name)}\.(partial|old)-(\d+)-")
  removed = []
  for entry in files.listdir(parent):
    match = pattern.match(entry)
    if match and int(match.group(2)) != os.getpid() and not files.process_runs(int(match.group(2))):
      with contextlib.suppress(OSError):
        files.remove(os.path.join(parent, entry))
      removed.append(os.path.join(parent, entry))
  if removed:
    logging.info("removed %d unfinished output(s) of stopped runs beside %s", len(removed),
                 outdir)
  return removed


def open_staging_dir(outdir: str, overwrite: bool) -> str:
  """Checks `outdir` and returns a new, empty staging directory beside it.

  Refuses (OutdirError) when `outdir` is a file, or a non-empty directory and not
  `overwrite`. Creates `outdir`'s parent if needed but never `outdir` itself: that appears
  only in `publish(staging, outdir)`. On `gs://`, `outdir` emptied (see the module doc).
  """
  check_outdir(outdir, overwrite)
  if not files.is_local(outdir):
    files.remove(outdir)
    return outdir
  parent, name = _split(outdir)
  files.makedirs(parent)
  remove_stale_siblings(outdir)
  # Same parent as outdir, so that `publish` is a rename within one filesystem.
  staging = os.path.join(parent, f"{name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
  files.makedirs(staging, exist_ok=False)
  return staging


def publish(staging: str, outdir: str) -> None:
  """Moves the finished `staging` directory to `outdir`, replacing whatever was there.

  Only renames until the new content is in place: an existing `outdir` is first renamed to
  a `*.old-*` sibling, then `staging` to `outdir`, then the old copy is deleted. A crash in
  between leaves `outdir` absent (old content in the `.old-*` sibling) or complete. On `gs://`
  the staging directory is `outdir` itself: nothing to move.
  """
  if staging == outdir and not files.is_local(outdir):
    return
  if not files.is_dir(staging):
    raise OutdirError(f"staging directory {staging!r} does not exist")
  if _is_file(outdir):
    raise OutdirError(f"--outdir {outdir!r} exists and is not a directory; "
                      "choose another --outdir")
  parent, name = _split(outdir)  # local from here on: os.rename is the atomic step.
  old = None
  if os.path.lexists(outdir):
    old = os.path.join(parent, f"{name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(outdir, old)
  os.rename(staging, outdir)
  if old is not None:
    # The new content is already in place; a failed clean-up must not fail the run.
    with contextlib.suppress(OSError):
      files.remove(old)


# ---------------------------------------------------------------------------------------------
# Images.


def _check_images(images: np.ndarray, rank: int, name: str) -> None:
  if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
    raise ValueError(f"{name} must be a uint8 numpy array, got "
                     f"{getattr(images, 'dtype', type(images).__name__)}")
  if images.ndim != rank or images.shape[-1] != 3:
    want = "[N, H, W, 3]" if rank == 4 else "[H, W, 3]"
    raise ValueError(f"{name} must have shape {want} (RGB), got {images.shape}")


def png_bytes(image_HxWx3: np.ndarray) -> bytes:
  """One uint8 RGB image, encoded as a PNG."""
  _check_images(image_HxWx3, 3, "image_HxWx3")
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image_HxWx3)).save(buffer, format="PNG")
  return buffer.getvalue()


def save_png(path: str, image_HxWx3: np.ndarray) -> None:
  """Writes one uint8 RGB image as a PNG, in place: its directory is published whole."""
  files.write_bytes(path, png_bytes(image_HxWx3), atomic=False)


@functools.lru_cache(maxsize=None)
def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable.
  except (TypeError, ImportError, OSError):
    return ImageFont.load_default()  # Older Pillow or no FreeType: the small bitmap font.


def _drawable(text: str, font) -> str:
  # The bitmap fallback font only encodes Latin-1; replace anything else rather than crash.
  if isinstance(font, ImageFont.FreeTypeFont):
    return text
  return text.encode("latin-1", "replace").decode("latin-1")


def _wrap(text: str, font, width: int) -> list[str]:
  """Greedy word wrap of `text` to lines at most `width` px wide; long words are split."""
  lines, line = [], ""
  for word in text.split():
    candidate = f"{line} {word}" if line else word
    if font.getlength(candidate) <= width:
      line = candidate
      continue
    if line:
      lines.append(line)
    line = ""
    for char in word:  # A word wider than the cell: break it wherever it overflows.
      if line and font.getlength(line + char) > width:
        lines.append(line)
        line = ""
      line += char
  if line:
    lines.append(line)
  return lines


def _upscale(image_HxWx3: np.ndarray, scale: int) -> np.ndarray:
  # Nearest neighbour: each pixel becomes a scale x scale block, keeping the pixels crisp.
  return np.repeat(np.repeat(image_HxWx3, scale, axis=0), scale, axis=1)


def captioned_grid(images_NxHxWx3: np.ndarray, captions: Sequence[str], columns: int = 8,
                   scale: int | None = None) -> np.ndarray:
  """A uint8 [H', W', 3] grid of images, each upscaled, with its caption wrapped below.

  Cells are laid out row-major, `min(columns, N)` per row, with CELL_PAD white pixels
  between cells and around the border. Each image is upscaled `scale` times (nearest
  neighbour; by default the smallest factor making it MIN_CELL_WIDTH px wide) and its
  caption drawn underneath in black on white, word-wrapped to the cell width. All cells
  are as tall as the one with the most caption lines; a partial last row stays white.
  """
  _check_images(images_NxHxWx3, 4, "images_NxHxWx3")
  n, height, width, _ = images_NxHxWx3.shape
  if n < 1:
    raise ValueError("captioned_grid needs at least one image, got N=0")
  if isinstance(captions, str) or len(captions) != n:
    raise ValueError(f"need one caption per image: {n} images, "
                     f"{1 if isinstance(captions, str) else len(captions)} captions")
  if columns < 1:
    raise ValueError(f"columns must be >= 1, got {columns}")
  if scale is None:
    scale = max(1, math.ceil(MIN_CELL_WIDTH / width))
  if scale < 1:
    raise ValueError(f"scale must be >= 1, got {scale}")

  font = _font()
  cell_w, image_h = width * scale, height * scale
  wrapped = [_wrap(_drawable(str(c), font), font, cell_w) for c in captions]
  line_h = font.getbbox("Ahgjy|")[3] + 2
  # At least one line, so that grids with only empty captions keep the same layout.
  cell_h = image_h + _CAPTION_GAP + line_h * max(1, *map(len, wrapped))
  cols = min(columns, n)
  rows = math.ceil(n / cols)
  grid = Image.new("RGB", (cols * cell_w + (cols + 1) * CELL_PAD,
                           rows * cell_h + (rows + 1) * CELL_PAD), "white")
  draw = ImageDraw.Draw(grid)
  for i, (image, lines) in enumerate(zip(images_NxHxWx3, wrapped)):
    x = CELL_PAD + (i % cols) * (cell_w + CELL_PAD)
    y = CELL_PAD + (i // cols) * (cell_h + CELL_PAD)
    grid.paste(Image.fromarray(np.ascontiguousarray(_upscale(image, scale))), (x, y))
    for j, line in enumerate(lines):
      indent = (cell_w - font.getlength(line)) // 2  # Centred under the image.
      draw.text((x + indent, y + image_h + _CAPTION_GAP + j * line_h), line, fill="black",
                font=font)
  return np.asarray(grid, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Records and progress.


def _to_json(value):
  """json.dumps' fallback for numpy values (np.float64 is a float and needs none)."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"not JSON serializable: {type(value).__name__}")


def jsonl(records: Iterable[dict]) -> str:
  """One JSON object per line, non-ASCII kept as is."""
  return "".join(json.dumps(record, sort_keys=False, ensure_ascii=False, default=_to_json) + "\n"
                 for record in records)


def write_jsonl(path: str, records: Iterable[dict]) -> None:
  """Writes `jsonl(records)` as UTF-8."""
  files.write_text(path, jsonl(records))


def _clock(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
  """`desc:  37% |#######.............| 370/1000 [00:12<00:21, 29.8 pairs/s]` on stderr.

  Redraws one line with `\\r` on a terminal; elsewhere (log files) prints a line each time
  another ~10% is done. `close()` always prints the final line.
  """

  def __init__(self, total: int, desc: str, stream: TextIO | None = None, unit: str = "pairs"):
    self.total, self.desc, self.unit, self.n = total, desc, unit, 0
    self.stream = stream if stream is not None else sys.stderr  # Resolved late: pytest swaps it.
    self._tty = getattr(self.stream, "isatty", lambda: False)()
    self._t0 = time.monotonic()
    self._first = None  # (time, n) after the first update; the rate counts from there.
    self._printed_tenths, self._width, self._closed = 0, 0, False

  def _line(self) -> str:
    now, frac = time.monotonic(), min(1.0, self.n / self.total) if self.total > 0 else 1.0
    t1, n1 = self._first or (now, self.n)
    if self.n > n1 and now > t1:
      rate = (self.n - n1) / (now - t1)
    else:  # A single update so far: all we have is the average since construction.
      rate = self.n / (now - self._t0) if self.n and now > self._t0 else float("nan")
    eta = (self.total - self.n) / rate if rate > 0 else float("nan")
    bar = "#" * round(20 * frac) + "." * (20 - round(20 * frac))
    rate_str = f"{rate:.1f}" if math.isfinite(rate) else "?"
    return (f"{self.desc}: {100 * frac:3.0f}% |{bar}| {self.n}/{self.total} "
            f"[{_clock(now - self._t0)}<{_clock(eta)}, {rate_str} {self.unit}/s]")

  def _write(self, final: bool = False) -> None:
    line = self._line()
    if self._tty:  # Pad over the tail of a longer previous line.
      self.stream.write("\r" + line + " " * max(0, self._width - len(line)) + ("\n" * final))
      self._width = len(line)
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def update(self, n: int = 1) -> None:
    self.n += n
    if self._first is None:  # The first batch's time includes compilation: leave it out.
      self._first = (time.monotonic(), self.n)
    tenths = int(10 * self.n / self.total) if self.total > 0 else 10
    # Off a terminal, 100% is left to close(), which always prints the final line.
    if self._tty or self._printed_tenths < tenths < 10:
      self._printed_tenths = tenths
      self._write()

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      self._write(final=True)


# ---------------------------------------------------------------------------------------------
# A run of generated pairs.


class PairWriter:
  """Writes pairs into a staging directory beside `outdir`, then publishes it whole.

  outdir/images/{id:05d}.png (each image), outdir/samples.jsonl (each pair's record, with its
  "image" path), outdir/grid.png (the first `grid_size` pairs, each image over its caption).
  """

  @staticmethod
  def image_name(index: int) -> str:
    return f"images/{index:05d}.png"

  def __init__(self, outdir: str, *, overwrite: bool, total: int, grid_size: int = 64):
    self.outdir, self.grid_size = outdir, grid_size
    self.staging = open_staging_dir(outdir, overwrite)
    files.makedirs(os.path.join(self.staging, "images"))
    self.records, self.grid_images, self.grid_captions = [], [], []
    self.progress = Progress(total, "sample")

  def add_batch(self, images_BxHxWx3: np.ndarray, records: Sequence[dict]) -> None:
    """One batch of pairs: images[i] is saved at records[i]["image"] (`image_name`)."""
    for image, record in zip(images_BxHxWx3, records):
      save_png(os.path.join(self.staging, record["image"]), image)
      self.records.append(record)
    take = max(0, min(len(records), self.grid_size - len(self.grid_images)))
    self.grid_images.extend(images_BxHxWx3[:take])
    self.grid_captions.extend(record["caption"] for record in records[:take])
    self.progress.update(len(records))

  def discard(self) -> None:
    """Deletes the staging directory: a stopped run leaves outdir as it found it."""
    self.progress.close()
    with contextlib.suppress(OSError):
      files.remove(self.staging)

  def publish(self) -> None:
    """Writes grid.png (unless grid_size is 0) and samples.jsonl (last: on `gs://` it marks the
    pairs complete), then renames the staging directory to `outdir`."""
    self.progress.close()
    if self.grid_images:  # grid_size=0: no grid.
      save_png(os.path.join(self.staging, "grid.png"),
               captioned_grid(np.stack(self.grid_images), self.grid_captions))
    write_jsonl(os.path.join(self.staging, "samples.jsonl"), self.records)
    publish(self.staging, self.outdir)
