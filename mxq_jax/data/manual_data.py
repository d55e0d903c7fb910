"""Shared plumbing of the TFDS builders that read published datasets from a manual directory.

CUB-200, Oxford-102 Flowers and MS-COCO cannot be downloaded by TFDS on our behalf (licences,
Google Drive links, tens of GB), so their builders read the archives as the user extracted
them into one folder. This module holds what the three have in common:

* a layout check that fails in well under a second with one actionable line (what is missing,
  where to get it, which flag to set), before any data file is read or TFDS prepares anything;
* image loading that turns every file into RGB (grayscale and CMYK JPEGs occur in these
  datasets; palette and alpha images are handled too) and every undecodable file, truncated
  JPEGs included, into one exception, so a bad file costs an example rather than the build;
* a report of what was skipped or shortened and why, written next to the prepared dataset,
  because a dataset that silently lost a few hundred pairs is worse than one that failed.

Images reach TFDS as JPEG bytes: the file's own bytes when it already is an RGB JPEG used whole
(no second lossy encoding, and the common case), else the converted or cropped RGB pixels
encoded once at quality 95. Decoding (always, to catch corrupt files) and encoding run in
threads, since Pillow releases the GIL while it decodes.
"""

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
import concurrent.futures
import dataclasses
import io
import json
import math
import os
import time

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mxq_jax import config_lib, files

REPORT_NAME = "build_report.json"
FLAG = "--config.data.manual_dir=DIR"
# Why an example is skipped.
MISSING_IMAGE = "missing_image"  # listed in the index files but not on disk.
UNREADABLE_IMAGE = "unreadable_image"  # not an image, corrupt or truncated.
MISSING_CAPTIONS = "missing_captions"  # no caption file (or no annotation) for the image.
EMPTY_CAPTIONS = "empty_captions"  # the caption file has no non-blank line.
SKIP_REASONS = (MISSING_IMAGE, UNREADABLE_IMAGE, MISSING_CAPTIONS, EMPTY_CAPTIONS)
_MAX_NAMES = 10  # example names kept per reason in the report.
_JPEG_QUALITY = 95  # for images that must be re-encoded (converted or cropped); TF's default.
_NUM_THREADS = min(8, os.cpu_count() or 1)


class LayoutError(config_lib.ConfigError):
  """The manual directory lacks a file or folder of the dataset's published layout."""


class BadImage(ValueError):
  """An image file that Pillow cannot fully decode (corrupt, truncated, not an image)."""


# ------------------------------------------------------------------------------ manual dir
def manual_dir_of(data_config) -> str:
  """config.data.manual_dir, or TFDS's own default {data_dir}/downloads/manual."""
  if data_config.manual_dir:
    return os.fspath(epath.Path(data_config.manual_dir).expanduser())
  data_dir = data_config.data_dir or tfds.core.constants.get_default_data_dir()
  return os.fspath(epath.Path(data_dir).expanduser() / "downloads" / "manual")


def require(manual_dir: str, relpaths: Iterable[str], dataset: str, layout_hint: str,
            source_url: str) -> None:
  """Raises LayoutError naming the first of manual_dir, manual_dir/relpath... that is missing.

  Only existence checks: fast enough to run before anything heavy, even on a cold disk.
  """
  root = epath.Path(manual_dir)
  missing = None
  if not root.is_dir():
    missing = f"the manual directory {root}"
  else:
    for relpath in relpaths:
      if not (root / relpath).exists():
        missing = os.fspath(root / relpath)
        break
  if missing is not None:
    raise LayoutError(
        f"{dataset}: missing {missing}. Expected in the manual directory, as the archives "
        f"extract, side by side: {layout_hint}. Download from {source_url}, extract into one "
        f"folder and pass it with {FLAG} (default: {{data_dir}}/downloads/manual).")


# ------------------------------------------------------------------------------ files
def read_text(path: str) -> str:
  """A text file; Latin-1 where it is not UTF-8 (a few caption files are not)."""
  data = epath.Path(path).read_bytes()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return data.decode("latin-1")


def read_lines(path: str) -> list[str]:
  """The non-blank lines of a text file, trailing whitespace stripped, in file order."""
  return [line.rstrip() for line in read_text(path).splitlines() if line.strip()]


def read_captions(path: str) -> list[str]:
  """A caption file's captions, one per non-blank line, in file order; case kept.

  Raises FileNotFoundError when the file is missing. Reed et al.'s files hold ten lines; fewer
  (or none) is the caller's to count.
  """
  return [line.strip() for line in read_lines(path)]


# ------------------------------------------------------------------------------ images
def _open(path: str) -> tuple[Image.Image, bytes]:
  """The fully decoded image and the file's bytes.

  Raises FileNotFoundError when the file is missing, BadImage when it cannot be decoded.
  """
  data = epath.Path(path).read_bytes()  # FileNotFoundError passes through: its own reason.
  try:
    image = Image.open(io.BytesIO(data))
    # Image.open only reads the header: load() decodes every pixel, so a truncated JPEG
    # raises here ("image file is truncated") instead of decoding to grey later.
    image.load()
  except Exception as e:  # pylint: disable=broad-except  # Pillow's plugins raise anything.
    raise BadImage(f"{path}: {type(e).__name__}: {e}") from e
  return image, data


def _to_rgb(image: Image.Image) -> Image.Image:
  """RGB; transparent pixels (alpha, palette transparency) become white, not black."""
  if image.mode == "RGB":
    return image
  if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
  return image.convert("RGB")  # L, 1, P, CMYK (Pillow undoes Adobe's inversion), YCbCr, I.


def crop_box(box_xywh: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) pixels covering the float box x, y, w, h, inside the image."""
  x, y, w, h = box_xywh
  left = min(max(math.floor(x), 0), width - 1)
  top = min(max(math.floor(y), 0), height - 1)
  right = min(max(math.ceil(x + w), left + 1), width)
  bottom = min(max(math.ceil(y + h), top + 1), height)
  return left, top, right, bottom


def load_rgb(path: str, box_xywh: Sequence[float] | None = None) -> np.ndarray:
  """uint8 [H, W, 3] pixels of an image file, cropped to box_xywh if given.

  Raises FileNotFoundError when the file is missing, BadImage when it cannot be decoded.
  """
  image = _to_rgb(_open(path)[0])
  if box_xywh is not None:
    image = image.crop(crop_box(box_xywh, *image.size))
  return np.asarray(image, dtype=np.uint8)


def jpeg_for_tfds(path: str, box_xywh: Sequence[float] | None = None) -> bytes:
  """JPEG bytes of the RGB (cropped) image, for tfds.features.Image(encoding_format="jpeg").

  The file's own bytes when it is an RGB JPEG used whole; else one encoding at quality 95.
  """
  image, data = _open(path)
  if image.format == "JPEG" and image.mode == "RGB" and box_xywh is None:
    return data
  image = _to_rgb(image)
  if box_xywh is not None:
    image = image.crop(crop_box(box_xywh, *image.size))
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
  return buffer.getvalue()


# ------------------------------------------------------------------------------ examples
@dataclasses.dataclass(frozen=True)
class Item:
  """One image of a split, before its files are read.

  name: the image's path relative to the manual directory (the example's key and `name`).
  captions: the captions, when they come from an index (COCO); None to read caption_path.
  caption_path: the caption file (CUB, Flowers); None with captions=None: no captions at all.
  box_xywh: crop box in pixels, or None for the whole image.
  """
  name: str
  image_path: str
  label: int
  captions: tuple[str, ...] | None = None
  caption_path: str | None = None
  box_xywh: tuple[float, float, float, float] | None = None


def load_item(item: Item) -> tuple[dict | None, str | None]:
  """(example, None), or (None, the reason it is skipped). Touches no shared state."""
  captions = item.captions
  if item.caption_path is not None:
    try:
      captions = tuple(read_captions(item.caption_path))
    except FileNotFoundError:
      return None, MISSING_CAPTIONS
  if captions is None:
    return None, MISSING_CAPTIONS
  if not captions:
    return None, EMPTY_CAPTIONS
  try:
    image = jpeg_for_tfds(item.image_path, item.box_xywh)
  except FileNotFoundError:
    return None, MISSING_IMAGE
  except BadImage:
    return None, UNREADABLE_IMAGE
  return dict(image=image, captions=list(captions), label=item.label, name=item.name), None


def ordered_map(fn: Callable, items: Iterable, num_threads: int = _NUM_THREADS) -> Iterator:
  """fn(item) for each item, in order, computed num_threads at a time with bounded look-ahead."""
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    window = collections.deque()
    for item in items:
      window.append(pool.submit(fn, item))
      if len(window) >= 4 * num_threads:
        yield window.popleft().result()
    while window:
      yield window.popleft().result()


def generate_examples(items: Sequence[Item], report: "BuildReport", split: str,
                      expected_captions: int) -> Iterator[tuple[str, dict]]:
  """(key, example) for the usable items; the others are counted in report, not raised."""
  report.splits.setdefault(split, SplitReport())  # listed even when it ends up empty.
  start = time.perf_counter()
  for index, (item, (example, reason)) in enumerate(
      zip(items, ordered_map(load_item, items))):
    if example is None:
      report.skip(split, reason, item.name)
    else:
      report.keep(split, item.name, len(example["captions"]), expected_captions)
      yield item.name, example
    if (index + 1) % 5_000 == 0:
      logging.info("%s %s: read %d/%d images (%.0f images/s)", report.dataset, split,
                   index + 1, len(items), (index + 1) / (time.perf_counter() - start))


# ------------------------------------------------------------------------------ report
@dataclasses.dataclass
class Tally:
  count: int = 0
  names: list[str] = dataclasses.field(default_factory=list)  # the first _MAX_NAMES.

  def add(self, name: str) -> None:
    self.count += 1
    if len(self.names) < _MAX_NAMES:
      self.names.append(name)


@dataclasses.dataclass
class SplitReport:
  kept: int = 0
  skipped: dict[str, Tally] = dataclasses.field(default_factory=dict)  # by reason.
  shortened: Tally = dataclasses.field(default_factory=Tally)  # fewer captions than expected.


@dataclasses.dataclass
class BuildReport:
  """What a build kept, skipped (by reason) and shortened, per split."""
  dataset: str
  config: str = ""
  manual_dir: str = ""
  seconds: float = 0.0  # of download_and_prepare, set by prepare().
  splits: dict[str, SplitReport] = dataclasses.field(default_factory=dict)

  def _split(self, split: str) -> SplitReport:
    return self.splits.setdefault(split, SplitReport())

  def keep(self, split: str, name: str, num_captions: int, expected: int) -> None:
    self._split(split).kept += 1
    if num_captions < expected:
      self._split(split).shortened.add(name)

  def skip(self, split: str, reason: str, name: str) -> None:
    self._split(split).skipped.setdefault(reason, Tally()).add(name)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: dict) -> "BuildReport":
    """The report `as_dict` (and so build_report.json) holds."""
    tally = lambda t: Tally(count=t["count"], names=list(t["names"]))
    splits = {name: SplitReport(kept=s["kept"], shortened=tally(s["shortened"]),
                                skipped={r: tally(t) for r, t in s["skipped"].items()})
              for name, s in data["splits"].items()}
    return cls(dataset=data["dataset"], config=data["config"], manual_dir=data["manual_dir"],
               seconds=data["seconds"], splits=splits)

  def summary(self, split: str) -> str:
    """One readable line about a split."""
    counts = self.splits[split]
    total = sum(tally.count for tally in counts.skipped.values())
    line = f"{self.dataset}/{self.config} {split}: kept {counts.kept:,}, skipped {total:,}"
    for reason, tally in sorted(counts.skipped.items()):
      line += f"; {reason} {tally.count:,} (e.g. {', '.join(tally.names[:3])})"
    if counts.shortened.count:
      line += (f"; kept with fewer captions than expected {counts.shortened.count:,} "
               f"(e.g. {', '.join(counts.shortened.names[:3])})")
    return line

  def log(self) -> None:
    """A line per split: a warning where examples were lost, else info."""
    for split, counts in self.splits.items():
      (logging.warning if counts.skipped else logging.info)("%s", self.summary(split))

  def write(self, path: str) -> None:
    """JSON at path, atomically (`files.write_atomically`)."""
    files.write_text(path, json.dumps(self.as_dict(), indent=1) + "\n")


def report_path(builder: tfds.core.DatasetBuilder) -> str:
  return os.fspath(epath.Path(builder.data_dir) / REPORT_NAME)


def read_report(builder: tfds.core.DatasetBuilder) -> dict | None:
  """The build report of a prepared builder, or None when it has none."""
  path = report_path(builder)
  return json.loads(files.read_text(path)) if files.exists(path) else None


# ------------------------------------------------------------------------------ building
def already_registered(name: str) -> bool:
  """Whether TFDS already holds a builder of this name.

  A builder module imported a second time (importlib.reload, or run as __main__ and imported
  as a package module) would register its class again, which TFDS refuses; the builders pass
  this as skip_registration. build() instantiates its own class, so it works either way.
  """
  return name in getattr(tfds.core.registered, "_DATASET_REGISTRY", {})


def config_named(builder_cls: type, name: str) -> tfds.core.BuilderConfig:
  for config in builder_cls.BUILDER_CONFIGS:
    if config.name == name:
      return config
  raise ValueError(f"{builder_cls.name} has no config {name!r}; it has "
                   f"{', '.join(c.name for c in builder_cls.BUILDER_CONFIGS)}")


class CaptionedImagesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What the manual-download builders share: features, split generation, the build report.

  A subclass names its dataset (`name`, `HOMEPAGE`, `NUM_CAPTIONS` expected per image), its
  `label_feature()` and `split_items(manual_dir, builder_config)` -> {split: [Item]}.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  HOMEPAGE = ""
  NUM_CAPTIONS = 10

  # label_feature() -> the label's FeatureConnector;
  # split_items(manual_dir, builder_config) -> {split: [Item]}.
  label_feature: Callable[[], tfds.features.FeatureConnector]
  split_items: Callable[..., dict[str, list[Item]]]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "captions": tfds.features.Sequence(tfds.features.Text()),  # all, in file order.
            "label": self.label_feature(),
            "name": tfds.features.Text(),  # the image's path under the manual directory.
        }),
        homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager):
    items = self.split_items(dl_manager.manual_dir, self.builder_config)
    self.report = BuildReport(self.name, self.builder_config.name)
    return {split: self._generate_examples(split, items[split]) for split in items}

  def _generate_examples(self, split: str, items: list[Item]):
    yield from generate_examples(items, self.report, split, self.NUM_CAPTIONS)


def build(builder_cls: type, config_name: str, data_config,
          check_layout: Callable[[str], None]) -> tfds.core.DatasetBuilder:
  """The prepared builder_cls/config_name under config.data.data_dir.

  A prepared dataset is returned as it is (the manual files may be gone by then). Otherwise
  check_layout(manual_dir) runs first and raises LayoutError within milliseconds if files are
  missing; then TFDS prepares the dataset, and the builder's report is written to
  {builder.data_dir}/build_report.json (every training start logs it, once).
  """
  builder = builder_cls(config=config_named(builder_cls, config_name),
                        data_dir=data_config.data_dir or None)
  if builder.is_prepared():
    return builder
  manual_dir = manual_dir_of(data_config)
  check_layout(manual_dir)
  logging.info("%s: preparing %s from %s into %s", builder.name, config_name, manual_dir,
               builder.data_dir)
  start = time.perf_counter()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  report = builder.report
  report.manual_dir = manual_dir
  report.seconds = round(time.perf_counter() - start, 2)
  report.write(report_path(builder))  # logged by whoever loads it (pipeline.load_splits).
  logging.info("%s: built in %.1f s; report at %s", builder.name, report.seconds,
               report_path(builder))
  return builder
