"""coco_captions: MS-COCO images with their five-odd human captions, from local files.

The archives are tens of GB, so TFDS reads them from the manual directory as they extract:

  train2014/COCO_train2014_<id>.jpg, val2014/..., annotations/captions_{train,val}2014.json
  (or the 2017 layout: train2017/<id>.jpg, val2017/..., annotations/captions_{train,val}2017.json)

Train is COCO's train set, test its val set (82,783 / 40,504 images in 2014; 118,287 / 5,000
in 2017). An image keeps all its captions in the order of the annotation file. COCO has no image
label that fits one class, so `label` is an int64 scalar, -1 everywhere: the same key and dtype
as CUB's and Flowers' ClassLabel, for one pipeline over the three.

  from mxq_jax.data import coco
  builder = coco.build(config.data)  # checks the files, prepares once, returns the builder
"""

import collections
import json

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from mxq_jax.data import manual_data

NAME = "coco_captions"
SOURCE_URL = ("https://cocodataset.org/#download ({year} Train images, {year} Val images, "
              "{year} Train/Val annotations)")
LAYOUT_HINT = ("train{year}/*.jpg, val{year}/*.jpg and annotations/captions_train{year}.json, "
               "annotations/captions_val{year}.json")
NUM_CAPTIONS = 5  # per image, nearly always (a few have 6 or 7).
NO_LABEL = -1
YEARS = (2014, 2017)
_FOLDERS = {"train": "train", "test": "val"}  # split -> COCO's name for it.


class CocoConfig(tfds.core.BuilderConfig):
  """The release: 2014 or 2017 (same images, another train/val split and file naming)."""

  def __init__(self, *, year: int, **kwargs):
    super().__init__(name=str(year), description=f"COCO {year} captions", **kwargs)
    self.year = year


def required_paths(config: CocoConfig) -> list[str]:
  """The files this config reads, relative to the manual directory."""
  year = config.year
  return [f"annotations/captions_train{year}.json", f"annotations/captions_val{year}.json",
          f"train{year}", f"val{year}"]


def check_layout(manual_dir: str, config: CocoConfig) -> None:
  """Raises manual_data.LayoutError at the first missing file."""
  manual_data.require(manual_dir, required_paths(config), NAME,
                      LAYOUT_HINT.format(year=config.year), SOURCE_URL.format(year=config.year))


def annotation_items(annotations: dict, folder: str, root: epath.Path) -> list[manual_data.Item]:
  """The images of one annotation file, in its order, each with its captions in file order."""
  captions = collections.defaultdict(list)
  for annotation in annotations["annotations"]:
    captions[annotation["image_id"]].append(annotation["caption"].strip())
  items = []
  for image in annotations["images"]:
    name = f"{folder}/{image['file_name']}"
    texts = [text for text in captions.get(image["id"], []) if text]
    items.append(manual_data.Item(
        name=name, image_path=str(root / name), label=NO_LABEL,
        captions=tuple(texts) if image["id"] in captions else None))
  return items


def split_items(manual_dir: str, config: CocoConfig) -> dict[str, list[manual_data.Item]]:
  """The images of each split ("train", "test"), before any is read."""
  root = epath.Path(manual_dir)
  items = {}
  for split, prefix in _FOLDERS.items():
    folder = f"{prefix}{config.year}"
    annotations = json.loads(manual_data.read_text(
        root / "annotations" / f"captions_{folder}.json"))
    items[split] = annotation_items(annotations, folder, root)
  return items


class CocoCaptions(manual_data.CaptionedImagesBuilder,
                   skip_registration=manual_data.already_registered(NAME)):
  """MS-COCO images with their captions (name: coco_captions)."""

  name = NAME
  BUILDER_CONFIGS = [CocoConfig(year=year) for year in YEARS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {SOURCE_URL.format(year='<year>')}; extract them into one folder, so that it "
      f"holds {LAYOUT_HINT.format(year='<year>')}; pass it with {manual_data.FLAG}.")
  code_path = epath.Path(__file__)  # see caption_digits: spares TFDS a resource look-up.
  HOMEPAGE = "https://cocodataset.org/"
  NUM_CAPTIONS = NUM_CAPTIONS

  label_feature = staticmethod(lambda: tfds.features.Scalar(dtype=np.int64))  # always NO_LABEL.
  split_items = staticmethod(split_items)


def config_name(data_config) -> str:
  """The builder config that config.data asks for (coco_year)."""
  if int(data_config.coco_year) not in YEARS:
    raise ValueError(f"config.data.coco_year={data_config.coco_year}: use 2014 or 2017")
  return str(data_config.coco_year)


def build(data_config) -> tfds.core.DatasetBuilder:
  """The prepared coco_captions builder of config.data; LayoutError when files are missing."""
  name = config_name(data_config)
  config = manual_data.config_named(CocoCaptions, name)
  return manual_data.build(CocoCaptions, name, data_config,
                           lambda manual_dir: check_layout(manual_dir, config))
