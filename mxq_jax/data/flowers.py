"""flowers_captions: Oxford-102 Flowers with Reed et al.'s ten captions per image, from local files.

The images, labels and official split come from the Visual Geometry Group's files, the captions
(and the class split of text-to-image papers: 82 train+val classes, 20 unseen test classes) from
Reed et al. 2016 (cvpr2016_flowers). The manual directory holds them as they extract:

  jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat
  cvpr2016_flowers/text_c10/class_NNNNN/image_NNNNN.txt, trainvalclasses.txt, testclasses.txt

Splits: "official" trains on trnid + valid (2,040 images: 10 + 10 per class; no validation
split is kept, the models here do not select on one) and tests on tstid (6,149); "class" uses
Reed's lists (7,034 / 1,155 images). The .mat files are MATLAB level-5 numeric matrices, read by
the small reader below rather than scipy.io, which the package does not otherwise need.

  from mxq_jax.data import flowers
  builder = flowers.build(config.data)  # checks the files, prepares once, returns the builder
"""

import struct
import zlib

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from mxq_jax.data import manual_data

NAME = "flowers_captions"
SOURCE_URL = ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, "
              "imagelabels.mat, setid.mat) and https://github.com/reedscot/icml2016 "
              "(cvpr2016_flowers.tar.gz)")
LAYOUT_HINT = ("jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat and cvpr2016_flowers/{text_c10/"
               "class_NNNNN/image_NNNNN.txt, trainvalclasses.txt, testclasses.txt}")
NUM_CAPTIONS = 10  # per image in Reed et al.'s files.
TEXT_DIR = "cvpr2016_flowers"
# The category names of the VGG page, in label order (as in TFDS's oxford_flowers102).
CLASS_NAMES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
    "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
    "globe thistle", "snapdragon", "colt's foot", "king protea", "spear thistle", "yellow iris",
    "globe-flower", "purple coneflower", "peruvian lily", "balloon flower",
    "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke",
    "sweet william", "carnation", "garden phlox", "love in the mist", "mexican aster",
    "alpine sea holly", "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip",
    "lenten rose", "barbeton daisy", "daffodil", "sword lily", "poinsettia", "bolero deep blue",
    "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion", "petunia",
    "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium",
    "orange dahlia", "pink-yellow dahlia", "cautleya spicata", "japanese anemone",
    "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose",
    "thorn apple", "morning glory", "passion flower", "lotus", "toad lily", "anthurium",
    "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow", "magnolia",
    "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss", "foxglove",
    "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily",
)

# ------------------------------------------------------------------------------ .mat files
# MATLAB level-5 MAT-file format (MathWorks, "MAT-File Format", 2013): a 128-byte header, then
# tagged data elements; a matrix is an miMATRIX element of flags, dimensions, name and real
# part, possibly inside an miCOMPRESSED (zlib) element. Numbers are column-major and may be
# stored in a narrower type than their class (doubles holding small integers as uint8).
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8",
              13: "u8"}
_MX_DTYPES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4",
              14: "i8", 15: "u8"}
_COMPLEX_FLAG = 0x800


def _elements(data: bytes, endian: str):
  """(type, payload) of each data element in data."""
  pos = 0
  while pos + 8 <= len(data):
    mtype, nbytes = struct.unpack_from(endian + "II", data, pos)
    if mtype >> 16:  # small element: type and size share 4 bytes, data in the next 4.
      mtype, nbytes = mtype & 0xFFFF, mtype >> 16
      yield mtype, data[pos + 4:pos + 4 + nbytes]
      pos += 8
    else:
      yield mtype, data[pos + 8:pos + 8 + nbytes]
      # Elements are padded to 8 bytes, except compressed ones.
      pos += 8 + (nbytes if mtype == _MI_COMPRESSED else -(-nbytes // 8) * 8)


def _matrix(payload: bytes, endian: str) -> tuple[str, np.ndarray] | None:
  """(name, array) of a numeric real matrix; None for cells, structs, chars, sparse, complex."""
  parts = list(_elements(payload, endian))
  if len(parts) < 4:
    return None
  flags = np.frombuffer(parts[0][1], endian + "u4")[0]
  mx_class = int(flags & 0xFF)
  if mx_class not in _MX_DTYPES or flags & _COMPLEX_FLAG:
    return None
  dims = tuple(int(d) for d in np.frombuffer(parts[1][1], endian + "i4"))
  name = parts[2][1].decode("ascii")
  mtype, real = parts[3]
  values = np.frombuffer(real, endian + _MI_DTYPES[mtype]).astype(_MX_DTYPES[mx_class])
  return name, values.reshape(dims, order="F")


def read_mat(path: str) -> dict[str, np.ndarray]:
  """The numeric real matrices of a MATLAB level-5 .mat file, by name, with MATLAB's shapes."""
  data = epath.Path(path).read_bytes()
  if len(data) < 128 or not data.startswith(b"MATLAB"):
    raise ValueError(f"{path}: not a MATLAB level-5 .mat file")
  version, marker = data[124:126], data[126:128]
  if marker not in (b"IM", b"MI") or version not in (b"\x00\x01", b"\x01\x00"):
    raise ValueError(f"{path}: not a MATLAB level-5 .mat file (v7.3 files are HDF5; "
                     "re-save with -v7)")
  endian = "<" if marker == b"IM" else ">"
  arrays = {}
  for mtype, payload in _elements(data[128:], endian):
    if mtype == _MI_COMPRESSED:
      mtype, payload = next(_elements(zlib.decompress(payload), endian))
    if mtype == _MI_MATRIX:
      matrix = _matrix(payload, endian)
      if matrix is not None:
        arrays[matrix[0]] = matrix[1]
  return arrays


# ------------------------------------------------------------------------------ builder
class FlowersConfig(tfds.core.BuilderConfig):
  """The image split: "official" (trnid + valid / tstid) or "class" (Reed et al.'s)."""

  def __init__(self, *, split: str, **kwargs):
    super().__init__(name=split, description=f"{split} split", **kwargs)
    self.split = split


def required_paths(config: FlowersConfig) -> list[str]:
  """The files this config reads, relative to the manual directory."""
  paths = ["jpg", "imagelabels.mat", f"{TEXT_DIR}/text_c10"]
  if config.split == "official":
    paths.append("setid.mat")
  else:
    paths += [f"{TEXT_DIR}/trainvalclasses.txt", f"{TEXT_DIR}/testclasses.txt"]
  return paths


def check_layout(manual_dir: str, config: FlowersConfig) -> None:
  """Raises manual_data.LayoutError at the first missing file."""
  manual_data.require(manual_dir, required_paths(config), NAME, LAYOUT_HINT, SOURCE_URL)


def _caption_index(text_dir: epath.Path) -> dict[str, epath.Path]:
  """Caption files by stem ("image_00001"): the stems are unique across class folders."""
  index = {}
  for class_dir in text_dir.iterdir():
    if class_dir.is_dir():
      for path in class_dir.iterdir():
        if path.suffix == ".txt":
          index[path.stem] = path
  return index


def split_items(manual_dir: str, config: FlowersConfig) -> dict[str, list[manual_data.Item]]:
  """The images of each split ("train", "test") in image-id order, before any is read."""
  root = epath.Path(manual_dir)
  text = root / TEXT_DIR
  labels = read_mat(root / "imagelabels.mat")["labels"].ravel().astype(int)  # 1..102.
  if config.split == "official":
    setid = read_mat(root / "setid.mat")
    train_ids = set(setid["trnid"].ravel().astype(int)) | set(setid["valid"].ravel().astype(int))
    test_ids = set(setid["tstid"].ravel().astype(int))
  else:
    train_classes = {line.strip() for line in manual_data.read_lines(text / "trainvalclasses.txt")}
    test_classes = {line.strip() for line in manual_data.read_lines(text / "testclasses.txt")}
    train_ids = {i + 1 for i, label in enumerate(labels) if f"class_{label:05d}" in train_classes}
    test_ids = {i + 1 for i, label in enumerate(labels) if f"class_{label:05d}" in test_classes}
  if len(train_ids | test_ids) < len(labels):
    logging.warning("%s: %d images are in neither split list; left out",
                    NAME, len(labels) - len(train_ids | test_ids))
  captions = _caption_index(text / "text_c10")
  items = {"train": [], "test": []}
  for image_id in sorted(train_ids | test_ids):
    label = int(labels[image_id - 1])
    stem = f"image_{image_id:05d}"
    caption_path = captions.get(stem, text / "text_c10" / f"class_{label:05d}" / f"{stem}.txt")
    items["train" if image_id in train_ids else "test"].append(manual_data.Item(
        name=f"jpg/{stem}.jpg", image_path=str(root / "jpg" / f"{stem}.jpg"), label=label - 1,
        caption_path=str(caption_path)))
  return items


class FlowersCaptions(manual_data.CaptionedImagesBuilder,
                      skip_registration=manual_data.already_registered(NAME)):
  """Oxford-102 Flowers images with Reed et al.'s captions (name: flowers_captions)."""

  name = NAME
  BUILDER_CONFIGS = [FlowersConfig(split=split) for split in ("official", "class")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {SOURCE_URL}; extract them into one folder, so that it holds {LAYOUT_HINT}; "
      f"pass it with {manual_data.FLAG}.")
  code_path = epath.Path(__file__)  # see caption_digits: spares TFDS a resource look-up.
  HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
  NUM_CAPTIONS = NUM_CAPTIONS

  label_feature = staticmethod(lambda: tfds.features.ClassLabel(names=list(CLASS_NAMES)))
  split_items = staticmethod(split_items)


def config_name(data_config) -> str:
  """The builder config that config.data asks for (split)."""
  return data_config.split


def build(data_config) -> tfds.core.DatasetBuilder:
  """The prepared flowers_captions builder of config.data; LayoutError when files are missing."""
  name = config_name(data_config)
  config = manual_data.config_named(FlowersCaptions, name)
  return manual_data.build(FlowersCaptions, name, data_config,
                           lambda manual_dir: check_layout(manual_dir, config))
