"""A small demo tree in CUB-200-2011's published layout: drawn birds and Reed-style captions.

The real-data notebook (and anyone trying the cub pipeline without the 1.1 GB of the real
archives) writes one, then points config.data.manual_dir at it:

  from mxq_jax.data import demo_trees
  tree = demo_trees.write_cub("/tmp/cub_demo")   # tree.manual_dir, tree.expected_report()

Each image is a bird drawn in a few shapes (body, head, wing, tail, beak, eye, legs) over a sky
or foliage background, of varying sizes and aspect ratios like the real photos; its ten
captions say what was drawn (body and wing colours, beak colour and length, size, background),
so that image and caption agree as in the real data. Like the real archives, the tree
has faults the builder must survive, and its build report shows: one truncated JPEG (skipped,
unreadable), one image without its caption file (skipped) and one caption file of seven lines
(kept, shortened).

`write_cub_layout` writes the index files and folders of any list of `CubFile`s; the tests'
fixture trees (tests/data/manual_layouts.py) use it too.
"""

from collections.abc import Sequence
import dataclasses
import io
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from mxq_jax.data import cub, manual_data


# ------------------------------------------------------------------------------ the layout
@dataclasses.dataclass(frozen=True)
class CubFile:
  """One image of a CUB tree as the two archives hold it.

  relpath: images.txt's path, "<class folder>/<name>.jpg".
  image: the file's bytes; None: listed in images.txt but absent from images/.
  caption_text: the caption file's whole text; None: no caption file.
  caption_relpath: under text_c10/; None: relpath with .txt (Reed's files mostly follow the
  image names, though not always in capitalization).
  """
  image_id: int
  relpath: str
  class_id: int  # 1-based, as in classes.txt.
  train: bool  # train_test_split.txt: in the official train split.
  box: tuple[float, float, float, float]  # bounding_boxes.txt: x, y, width, height.
  image: bytes | None
  caption_text: str | None
  caption_relpath: str | None = None


def write_cub_layout(root: pathlib.Path | str, entries: Sequence[CubFile],
                     test_class_ids: Sequence[int]) -> pathlib.Path:
  """CUB_200_2011/ and cvpr2016_cub/ under root, as the archives extract; returns root.

  test_class_ids: the classes of Reed's testclasses.txt (the "class" split); the others are in
  trainvalclasses.txt.
  """
  root = pathlib.Path(root)
  images_dir, text_dir = root / cub.CUB_DIR / "images", root / cub.TEXT_DIR / "text_c10"
  for entry in entries:
    image_path = images_dir / entry.relpath
    image_path.parent.mkdir(parents=True, exist_ok=True)
    if entry.image is not None:
      image_path.write_bytes(entry.image)
    if entry.caption_text is not None:
      caption_path = text_dir / (entry.caption_relpath or entry.relpath.rsplit(".", 1)[0] + ".txt")
      caption_path.parent.mkdir(parents=True, exist_ok=True)
      caption_path.write_text(entry.caption_text)
  text_dir.mkdir(parents=True, exist_ok=True)

  def write_lines(path: pathlib.Path, lines) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))

  cub_dir = root / cub.CUB_DIR
  write_lines(cub_dir / "images.txt", (f"{e.image_id} {e.relpath}" for e in entries))
  write_lines(cub_dir / "image_class_labels.txt", (f"{e.image_id} {e.class_id}" for e in entries))
  write_lines(cub_dir / "train_test_split.txt", (f"{e.image_id} {int(e.train)}" for e in entries))
  write_lines(cub_dir / "bounding_boxes.txt",
              (f"{e.image_id} " + " ".join(f"{v:.1f}" for v in e.box) for e in entries))
  class_ids = sorted({e.class_id for e in entries})
  write_lines(cub_dir / "classes.txt", (f"{i} {cub.CLASS_NAMES[i - 1]}" for i in class_ids))
  write_lines(root / cub.TEXT_DIR / "trainvalclasses.txt",
              (cub.CLASS_NAMES[i - 1] for i in class_ids if i not in test_class_ids))
  write_lines(root / cub.TEXT_DIR / "testclasses.txt",
              (cub.CLASS_NAMES[i - 1] for i in class_ids if i in test_class_ids))
  return root


# ------------------------------------------------------------------------------ drawn birds
COLORS = {  # caption word -> RGB.
    "red": (200, 30, 35), "yellow": (240, 205, 40), "blue": (45, 90, 200),
    "black": (25, 25, 30), "brown": (130, 85, 45), "white": (245, 245, 240),
    "orange": (240, 130, 30), "grey": (135, 135, 140),
}
BACKGROUNDS = {"a blue sky": (150, 195, 240), "green leaves": (85, 150, 70),
               "a grey sky": (225, 230, 235)}
# (CUB class id, body colour, the wing colours it may have): each class its own look.
CLASSES = ((17, "red", ("black", "brown")),  # 017.Cardinal
           (47, "yellow", ("black", "white")),  # 047.American_Goldfinch
           (73, "blue", ("white", "black")),  # 073.Blue_Jay
           (29, "black", ("grey", "brown")))  # 029.American_Crow
TEST_CLASS_IDS = (29,)  # the crows are the unseen classes of the "class" split.
BEAKS = ("yellow", "orange", "black", "grey")
# Short, as the smoke configs' 24 tokens need: most of them fit whole at 48 pieces.
TEMPLATES = (
    "a {size} {body} bird with a {beak_length} {beak} beak.",
    "this bird has a {body} body and {wing} wings.",
    "a {body} bird in front of {background}.",
    "a {size} bird, mostly {body}, {beak} bill.",
    "a {body} bird with a {beak_length} {beak} beak.",
    "this {size} bird has a {body} crown.",
    "a {body} and {wing} bird on {background}.",
    "{size} {body} bird, {beak_length} {beak} beak.",
    "a {body} bird with {wing} wings.",
    "this bird is {body} with a {beak} beak.",
)
NUM_IMAGES = 60  # 15 a class; every fourth image is in the official test split.
TRUNCATED_ID, UNCAPTIONED_ID, SHORTENED_ID = 6, 12, 21  # image ids of the faults.
SHORTENED_LINES = 7


def _describe(rng: np.random.Generator, body: str, wings: Sequence[str]) -> dict[str, str]:
  return dict(body=body, wing=str(rng.choice(wings)), beak=str(rng.choice(BEAKS)),
              beak_length=str(rng.choice(["short", "long"])),
              size=str(rng.choice(["small", "large"])),
              background=str(rng.choice(list(BACKGROUNDS))))


def draw_bird(attributes: dict[str, str],
              rng: np.random.Generator) -> tuple[Image.Image, tuple[float, float, float, float]]:
  """(the image, the bird's box x, y, w, h): the bird the attributes describe, facing left or
  right, at a random place and size."""
  width, height = int(rng.integers(72, 112)), int(rng.integers(64, 88))
  image = Image.new("RGB", (width, height), BACKGROUNDS[attributes["background"]])
  draw = ImageDraw.Draw(image)
  if attributes["background"] == "green leaves":  # a few darker leaves.
    for _ in range(6):
      x, y = rng.integers(0, width), rng.integers(0, height)
      draw.ellipse((x - 6, y - 3, x + 6, y + 3), fill=(55, 115, 45))
  scale = (0.55 if attributes["size"] == "small" else 0.8) * min(width, height) / 40
  facing = 1 if rng.random() < 0.5 else -1  # +1: the head on the right.
  cx = width / 2 + rng.uniform(-0.1, 0.1) * width
  cy = height / 2 + rng.uniform(-0.05, 0.1) * height
  body, wing = COLORS[attributes["body"]], COLORS[attributes["wing"]]
  s = lambda v: v * scale
  draw.line((cx - s(3), cy + s(8), cx - s(4), cy + s(15)), fill=(60, 50, 40), width=2)  # legs.
  draw.line((cx + s(3), cy + s(8), cx + s(4), cy + s(15)), fill=(60, 50, 40), width=2)
  draw.polygon([(cx - facing * s(10), cy), (cx - facing * s(22), cy - s(4)),  # tail.
                (cx - facing * s(22), cy + s(6))], fill=wing)
  draw.ellipse((cx - s(14), cy - s(9), cx + s(14), cy + s(10)), fill=body)  # body.
  hx, hy = cx + facing * s(12), cy - s(10)
  draw.ellipse((hx - s(7), hy - s(7), hx + s(7), hy + s(7)), fill=body)  # head.
  draw.ellipse((cx - s(9), cy - s(5), cx + s(7), cy + s(5)), fill=wing)  # wing.
  beak = s(10) if attributes["beak_length"] == "long" else s(5)
  draw.polygon([(hx + facing * s(6), hy - s(2)), (hx + facing * (s(6) + beak), hy + s(1)),
                (hx + facing * s(6), hy + s(3))], fill=COLORS[attributes["beak"]])
  draw.ellipse((hx + facing * s(2) - s(1.5), hy - s(3.5), hx + facing * s(2) + s(1.5),
                hy - s(0.5)), fill=(255, 255, 255) if attributes["body"] == "black" else (0, 0, 0))
  left, right = sorted((cx - facing * s(22), cx + facing * (s(18) + beak)))
  left, top = max(left, 0.0), max(cy - s(17), 0.0)
  right, bottom = min(right, width), min(cy + s(15), height)
  return image, (round(left, 1), round(top, 1), round(right - left, 1), round(bottom - top, 1))


@dataclasses.dataclass(frozen=True)
class DemoTree:
  """A written demo tree: its manual directory and what a build of it must report."""
  manual_dir: str
  entries: tuple[CubFile, ...]

  def expected_report(self) -> dict[str, dict]:
    """{split: {"kept", "skipped": {reason: [names]}, "shortened": [names]}} of the official
    split: what the cub_captions build must report for this tree."""
    expected = {split: {"kept": 0, "skipped": {}, "shortened": []} for split in ("train", "test")}
    faults = {TRUNCATED_ID: manual_data.UNREADABLE_IMAGE,
              UNCAPTIONED_ID: manual_data.MISSING_CAPTIONS}
    for entry in self.entries:
      split = expected["train" if entry.train else "test"]
      name = f"{cub.CUB_DIR}/images/{entry.relpath}"  # the example's name in TFDS.
      if entry.image_id in faults:
        split["skipped"].setdefault(faults[entry.image_id], []).append(name)
        continue
      split["kept"] += 1
      if entry.image_id == SHORTENED_ID:
        split["shortened"].append(name)
    return expected


def write_cub(root: pathlib.Path | str, num_images: int = NUM_IMAGES,
              seed: int = 0) -> DemoTree:
  """A demo tree of num_images drawn birds (four classes in turn) under root, in CUB's layout.

  Image ids TRUNCATED_ID, UNCAPTIONED_ID and SHORTENED_ID carry the faults (see the module
  docstring); num_images must exceed them.
  """
  if num_images <= max(TRUNCATED_ID, UNCAPTIONED_ID, SHORTENED_ID):
    raise ValueError(f"num_images={num_images}: the demo tree needs more than "
                     f"{max(TRUNCATED_ID, UNCAPTIONED_ID, SHORTENED_ID)}")
  rng = np.random.default_rng(seed)
  entries = []
  for image_id in range(1, num_images + 1):
    class_id, body, wings = CLASSES[(image_id - 1) % len(CLASSES)]
    attributes = _describe(rng, body, wings)
    image, box = draw_bird(attributes, rng)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    if image_id == TRUNCATED_ID:
      data = data[:len(data) // 2]
    captions = [template.format(**attributes) for template in TEMPLATES]
    if image_id == SHORTENED_ID:
      captions = captions[:SHORTENED_LINES]
    folder = cub.CLASS_NAMES[class_id - 1]
    stem = folder.split(".", 1)[1]
    entries.append(CubFile(
        image_id=image_id, relpath=f"{folder}/{stem}_{image_id:04d}_{9000 + image_id}.jpg",
        class_id=class_id, train=image_id % 4 != 0, box=box, image=data,
        caption_text=None if image_id == UNCAPTIONED_ID else "\n".join(captions) + "\n"))
  write_cub_layout(root, entries, TEST_CLASS_IDS)
  return DemoTree(manual_dir=str(root), entries=tuple(entries))
