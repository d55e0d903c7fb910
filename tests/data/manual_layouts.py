"""Tiny fixture trees in the published layouts of CUB-200-2011, Oxford-102 Flowers and MS-COCO.

Each writer lays a dozen small images out as the real archives extract, with the index files
the builders read, and the faults the builders must survive: grayscale, CMYK and RGBA-in-PNG
files, a corrupt and a truncated JPEG, an image listed but absent, a missing caption file, an
empty one, one with three lines. The specs (SPECS below) say what each image is, so the tests
derive every expectation (split membership, sizes, captions, report counts) from them.

CUB's index files and folders are written by the package's `demo_trees.write_cub_layout` (which
also writes the real-data notebook's demo tree). The .mat files are written by write_mat, a minimal MATLAB level-5 writer that, like MATLAB,
stores integral doubles in a narrower type (the builders' reader must widen them).
"""

import dataclasses
import io
import json
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

from mxq_jax.data import demo_trees

KEPT_KINDS = ("rgb", "gray", "cmyk", "rgba_png")  # image kinds the builders keep.


@dataclasses.dataclass(frozen=True)
class Spec:
  """One fixture image.

  kind: rgb | gray | cmyk | rgba_png (PNG bytes in a .jpg) | corrupt | truncated | absent.
  captions: lines in its caption file; None: no file; 0: a file of blank lines.
  train: in the official train split (else test).
  box: CUB bounding box x, y, w, h in pixels.
  """
  index: int
  label: int  # 0-based class.
  size: tuple[int, int]  # width, height.
  kind: str = "rgb"
  captions: int | None = 10
  train: bool = True
  box: tuple[float, float, float, float] = (2.0, 3.0, 12.0, 9.0)

  @property
  def kept(self) -> bool:
    return self.kind in KEPT_KINDS and bool(self.captions)


# Three classes (0, 1: Reed's train+val classes; 2: a test class) of four images each.
SPECS = (
    Spec(1, 0, (40, 30), box=(5.0, 4.0, 20.0, 12.0)),
    Spec(2, 0, (30, 44), kind="gray", train=False),
    Spec(3, 0, (36, 36), kind="cmyk"),
    Spec(4, 0, (32, 32), kind="corrupt"),
    Spec(5, 1, (48, 32), captions=None, train=False),
    Spec(6, 1, (32, 24), captions=0),
    Spec(7, 1, (28, 40), captions=3, train=False),
    Spec(8, 1, (40, 40), kind="truncated"),
    Spec(9, 2, (50, 40), box=(10.4, 0.6, 30.2, 39.9)),  # -> columns 10..41, rows 0..40.
    Spec(10, 2, (26, 34), kind="gray", train=False),
    Spec(11, 2, (30, 30), kind="absent"),
    Spec(12, 2, (34, 26), kind="rgba_png", train=False),
)
TRAIN_CLASSES = (0, 1)  # Reed's trainvalclasses; class 2 is in testclasses.
SKIP_REASON = {"corrupt": "unreadable_image", "truncated": "unreadable_image",
               "absent": "missing_image"}


def skip_reason(spec: Spec) -> str | None:
  if spec.captions is None:
    return "missing_captions"
  if spec.captions == 0:
    return "empty_captions"
  return SKIP_REASON.get(spec.kind)


def in_train(spec: Spec, split: str) -> bool:
  """Whether the spec's image is in the train split under "official" or "class"."""
  return spec.train if split == "official" else spec.label in TRAIN_CLASSES


def captions_of(dataset: str, spec: Spec) -> list[str]:
  """The captions the builder must keep: mixed case (never lowercased), file order."""
  return [f"{dataset.upper()} image {spec.index}, Caption {k}: A "
          f"{_ADJECTIVES[(spec.index + k) % 5]} {_NOUNS[(spec.index * 3 + k) % 5]}."
          for k in range(spec.captions or 0)]


# Varied words, so that a few dozen fixture captions fill a small SentencePiece vocabulary.
_ADJECTIVES = ("small", "bright", "yellow", "quiet", "jumpy")
_NOUNS = ("Thing", "bird with wings", "petal", "vase of flowers", "zebra")


def _pixels(spec: Spec) -> np.ndarray:
  """uint8 [H, W, 3] deterministic noise, so every image differs."""
  width, height = spec.size
  return np.random.default_rng(spec.index).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_bytes(spec: Spec) -> bytes | None:
  """The spec's image file, of its kind (None for "absent")."""
  if spec.kind == "absent":
    return None
  rgb = Image.fromarray(_pixels(spec))
  buffer = io.BytesIO()
  if spec.kind in ("rgb", "truncated"):
    rgb.save(buffer, format="JPEG", quality=90)
  elif spec.kind == "gray":
    rgb.convert("L").save(buffer, format="JPEG", quality=90)
  elif spec.kind == "cmyk":
    rgb.convert("CMYK").save(buffer, format="JPEG", quality=90)
  elif spec.kind == "rgba_png":
    rgb.putalpha(128)
    rgb.save(buffer, format="PNG")
  elif spec.kind == "corrupt":
    buffer.write(b"\xff\xd8\xff\xe0 this is not a JPEG at all" * 4)
  data = buffer.getvalue()
  return data[:len(data) // 2] if spec.kind == "truncated" else data


def write_image(path: pathlib.Path, spec: Spec) -> None:
  """The spec's image file, of its kind, at path (nothing for "absent")."""
  path.parent.mkdir(parents=True, exist_ok=True)
  data = image_bytes(spec)
  if data is not None:
    path.write_bytes(data)


def caption_text(dataset: str, spec: Spec) -> str | None:
  """Reed-style caption file: a caption per line; trailing spaces and blank lines to strip.
  None: no file."""
  if spec.captions is None:
    return None
  lines = [f"{line}  " for line in captions_of(dataset, spec)]
  return "\n".join(lines) + "\n\n" if lines else "\n  \n\n"


def write_caption_file(path: pathlib.Path, dataset: str, spec: Spec) -> None:
  """The spec's caption file (`caption_text`) at path, if it has one."""
  text = caption_text(dataset, spec)
  if text is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------------------ CUB
CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "004.Groove_billed_Ani")
CUB_CLASS_IDS = (1, 2, 4)  # in CUB's classes.txt.


def cub_relpath(spec: Spec) -> str:
  """images.txt's path: the file stem capitalizes differently from the class folder."""
  folder = CUB_CLASSES[spec.label]
  stem = "_".join(part.capitalize() for part in folder.split(".")[1].split("_"))
  return f"{folder}/{stem}_{spec.index:04d}_{spec.index}.jpg"


def cub_name(spec: Spec) -> str:
  return f"CUB_200_2011/images/{cub_relpath(spec)}"


def cub_label(spec: Spec) -> int:
  return CUB_CLASS_IDS[spec.label] - 1


def plain_specs(num: int) -> tuple[Spec, ...]:
  """num readable RGB images with ten captions, over the three classes, 2 of 3 in train:
  enough pairs to train a :smoke model end to end."""
  return tuple(Spec(i, i % 3, (24 + i % 7, 20 + i % 5), train=i % 3 != 0)
               for i in range(1, num + 1))


def write_cub(root: pathlib.Path, specs: tuple[Spec, ...] = SPECS) -> pathlib.Path:
  """CUB_200_2011/ and cvpr2016_cub/ under root (`demo_trees.write_cub_layout`, the package's
  writer of the layout); returns root (the manual directory)."""
  entries = []
  for spec in specs:
    relpath = cub_relpath(spec)
    # Reed's caption file names follow the class folder's capitalization for class 0's
    # images: the builder must match them case-insensitively.
    caption_rel = relpath[:-4] + ".txt"
    if spec.label == 0:
      folder, stem = caption_rel.split("/")
      caption_rel = f"{folder}/{stem.lower()}"
    entries.append(demo_trees.CubFile(
        image_id=spec.index, relpath=relpath, class_id=CUB_CLASS_IDS[spec.label],
        train=spec.train, box=spec.box, image=image_bytes(spec),
        caption_text=caption_text("cub", spec), caption_relpath=caption_rel))
  test_class_ids = [CUB_CLASS_IDS[c] for c in range(len(CUB_CLASSES)) if c not in TRAIN_CLASSES]
  return demo_trees.write_cub_layout(root, entries, test_class_ids)


# ------------------------------------------------------------------------------ Flowers
FLOWERS_LABELS = (0, 1, 2)  # 0-based; class_NNNNN folders are label + 1.


def flowers_name(spec: Spec) -> str:
  return f"jpg/image_{spec.index:05d}.jpg"


def write_mat(path: pathlib.Path, arrays: dict[str, np.ndarray], compress: bool = True,
              narrow: bool = True) -> None:
  """A MATLAB level-5 .mat file (little-endian) of real numeric 2-D matrices.

  narrow: store integral float64 matrices as uint8/uint16 elements, as MATLAB does.
  """
  mx_class = {np.dtype("f8"): 6, np.dtype("u1"): 9, np.dtype("u2"): 11, np.dtype("i4"): 12}
  mi_type = {np.dtype("u1"): 2, np.dtype("u2"): 4, np.dtype("i4"): 5, np.dtype("f8"): 9}

  def element(mtype: int, data: bytes) -> bytes:
    return struct.pack("<II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)

  out = bytearray(b"MATLAB 5.0 MAT-file, written by mxq_jax tests".ljust(116) + b"\0" * 8)
  out += b"\x00\x01IM"
  for name, array in arrays.items():
    array = np.atleast_2d(array)
    stored = array
    if narrow and array.dtype == np.float64 and np.all(array == np.round(array)):
      if array.min() >= 0 and array.max() < 256:
        stored = array.astype(np.uint8)
      elif array.min() >= 0 and array.max() < 65536:
        stored = array.astype(np.uint16)
    matrix = (element(6, struct.pack("<II", mx_class[array.dtype], 0))
              + element(5, np.asarray(array.shape, "<i4").tobytes())
              + element(1, name.encode("ascii"))
              + element(mi_type[stored.dtype], stored.astype(stored.dtype.newbyteorder("<"))
                        .tobytes(order="F")))
    body = element(14, matrix)
    if compress:
      packed = zlib.compress(body)
      out += struct.pack("<II", 15, len(packed)) + packed
    else:
      out += body
  path.write_bytes(bytes(out))


def write_flowers(root: pathlib.Path, specs: tuple[Spec, ...] = SPECS) -> pathlib.Path:
  """jpg/, imagelabels.mat, setid.mat and cvpr2016_flowers/ under root; returns root."""
  text = root / "cvpr2016_flowers"
  for spec in specs:
    write_image(root / flowers_name(spec), spec)
    write_caption_file(text / "text_c10" / f"class_{spec.label + 1:05d}" /
                       f"image_{spec.index:05d}.txt", "flowers", spec)
  labels = np.array([[spec.label + 1 for spec in specs]], np.float64)  # 1-based, [1, N].
  write_mat(root / "imagelabels.mat", {"labels": labels})
  train = [spec.index for spec in specs if spec.train]
  tstid = [spec.index for spec in specs if not spec.train]
  # trnid and valid both feed the official train split; tstid is a double, the others not.
  write_mat(root / "setid.mat", {"trnid": np.array([train[::2]], np.uint16),
                                 "valid": np.array([train[1::2]], np.uint8),
                                 "tstid": np.array([tstid], np.float64)}, compress=False)
  (text / "trainvalclasses.txt").write_text(
      "".join(f"class_{c + 1:05d}\n" for c in TRAIN_CLASSES))
  (text / "testclasses.txt").write_text("class_00003\n")
  return root


# ------------------------------------------------------------------------------ COCO
def coco_name(spec: Spec, year: int) -> str:
  folder = f"{'train' if spec.train else 'val'}{year}"
  stem = f"COCO_{folder}_{spec.index:012d}" if year == 2014 else f"{spec.index:012d}"
  return f"{folder}/{stem}.jpg"


def write_coco(root: pathlib.Path, year: int, specs: tuple[Spec, ...] = SPECS) -> pathlib.Path:
  """train{year}/, val{year}/ and annotations/captions_*{year}.json under root; returns root.

  A spec's caption count is its number of annotations (None: none; 0: blank ones). The
  annotations interleave images, as COCO's files do.
  """
  files = {True: {"images": [], "annotations": []}, False: {"images": [], "annotations": []}}
  for spec in specs:
    write_image(root / coco_name(spec, year), spec)
    width, height = spec.size
    files[spec.train]["images"].append(dict(
        id=spec.index, file_name=coco_name(spec, year).split("/")[1], width=width,
        height=height))
  for k in range(10):  # caption k of every image, then caption k + 1: interleaved.
    for spec in specs:
      if spec.captions is None or (spec.captions and k >= spec.captions):
        continue
      if spec.captions == 0 and k >= 2:
        continue
      caption = captions_of("coco", spec)[k] + " \n" if spec.captions else "  "
      files[spec.train]["annotations"].append(dict(
          image_id=spec.index, id=1000 * k + spec.index, caption=caption))
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  for train, content in files.items():
    folder = f"{'train' if train else 'val'}{year}"
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{folder}.json").write_text(json.dumps(content))
  return root
