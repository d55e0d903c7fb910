"""cub_captions: CUB-200-2011 birds with Reed et al.'s ten captions per image, from local files.

The images, labels, boxes and official split come from Caltech's archive; the captions (and the
class split that text-to-image papers use: 150 train+val classes, 50 unseen test classes) from
Reed et al. 2016 (cvpr2016_cub). TFDS cannot fetch either, so the builder reads them from the
manual directory, where both archives are extracted side by side:

  CUB_200_2011/images/<class>/<name>.jpg, images.txt, image_class_labels.txt,
      train_test_split.txt, bounding_boxes.txt
  cvpr2016_cub/text_c10/<class>/<name>.txt, trainvalclasses.txt, testclasses.txt

Image names come from images.txt; caption files are matched by their lower-cased relative path,
because the two archives do not agree on capitalization everywhere. Configs: the split
("official": train_test_split.txt, 5,994/5,794 images; "class": Reed's classes, 8,855/2,933)
times the crop ("_bbox": cropped to the bird's box, which covers it exactly, no margin).

  from mxq_jax.data import cub
  builder = cub.build(config.data)  # checks the files, prepares once, returns the builder
"""

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from mxq_jax.data import manual_data

NAME = "cub_captions"
SOURCE_URL = ("https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz) and "
              "https://github.com/reedscot/icml2016 (cvpr2016_cub.tar.gz)")
LAYOUT_HINT = ("CUB_200_2011/{images/<class>/*.jpg, images.txt, image_class_labels.txt, "
               "train_test_split.txt, bounding_boxes.txt} and cvpr2016_cub/{text_c10/<class>/"
               "*.txt, trainvalclasses.txt, testclasses.txt}")
NUM_CAPTIONS = 10  # per image in Reed et al.'s files.
CUB_DIR = "CUB_200_2011"
TEXT_DIR = "cvpr2016_cub"
# classes.txt of CUB-200-2011, in class-id order (its spelling, "Artic_Tern" included).
CLASS_NAMES = tuple(f"{i + 1:03d}.{name}" for i, name in enumerate("""
    Black_footed_Albatross Laysan_Albatross Sooty_Albatross Groove_billed_Ani Crested_Auklet
    Least_Auklet Parakeet_Auklet Rhinoceros_Auklet Brewer_Blackbird Red_winged_Blackbird
    Rusty_Blackbird Yellow_headed_Blackbird Bobolink Indigo_Bunting Lazuli_Bunting
    Painted_Bunting Cardinal Spotted_Catbird Gray_Catbird Yellow_breasted_Chat Eastern_Towhee
    Chuck_will_Widow Brandt_Cormorant Red_faced_Cormorant Pelagic_Cormorant Bronzed_Cowbird
    Shiny_Cowbird Brown_Creeper American_Crow Fish_Crow Black_billed_Cuckoo Mangrove_Cuckoo
    Yellow_billed_Cuckoo Gray_crowned_Rosy_Finch Purple_Finch Northern_Flicker
    Acadian_Flycatcher Great_Crested_Flycatcher Least_Flycatcher Olive_sided_Flycatcher
    Scissor_tailed_Flycatcher Vermilion_Flycatcher Yellow_bellied_Flycatcher Frigatebird
    Northern_Fulmar Gadwall American_Goldfinch European_Goldfinch Boat_tailed_Grackle
    Eared_Grebe Horned_Grebe Pied_billed_Grebe Western_Grebe Blue_Grosbeak Evening_Grosbeak
    Pine_Grosbeak Rose_breasted_Grosbeak Pigeon_Guillemot California_Gull Glaucous_winged_Gull
    Heermann_Gull Herring_Gull Ivory_Gull Ring_billed_Gull Slaty_backed_Gull Western_Gull
    Anna_Hummingbird Ruby_throated_Hummingbird Rufous_Hummingbird Green_Violetear
    Long_tailed_Jaeger Pomarine_Jaeger Blue_Jay Florida_Jay Green_Jay Dark_eyed_Junco
    Tropical_Kingbird Gray_Kingbird Belted_Kingfisher Green_Kingfisher Pied_Kingfisher
    Ringed_Kingfisher White_breasted_Kingfisher Red_legged_Kittiwake Horned_Lark Pacific_Loon
    Mallard Western_Meadowlark Hooded_Merganser Red_breasted_Merganser Mockingbird Nighthawk
    Clark_Nutcracker White_breasted_Nuthatch Baltimore_Oriole Hooded_Oriole Orchard_Oriole
    Scott_Oriole Ovenbird Brown_Pelican White_Pelican Western_Wood_Pewee Sayornis American_Pipit
    Whip_poor_Will Horned_Puffin Common_Raven White_necked_Raven American_Redstart Geococcyx
    Loggerhead_Shrike Great_Grey_Shrike Baird_Sparrow Black_throated_Sparrow Brewer_Sparrow
    Chipping_Sparrow Clay_colored_Sparrow House_Sparrow Field_Sparrow Fox_Sparrow
    Grasshopper_Sparrow Harris_Sparrow Henslow_Sparrow Le_Conte_Sparrow Lincoln_Sparrow
    Nelson_Sharp_tailed_Sparrow Savannah_Sparrow Seaside_Sparrow Song_Sparrow Tree_Sparrow
    Vesper_Sparrow White_crowned_Sparrow White_throated_Sparrow Cape_Glossy_Starling
    Bank_Swallow Barn_Swallow Cliff_Swallow Tree_Swallow Scarlet_Tanager Summer_Tanager
    Artic_Tern Black_Tern Caspian_Tern Common_Tern Elegant_Tern Forsters_Tern Least_Tern
    Green_tailed_Towhee Brown_Thrasher Sage_Thrasher Black_capped_Vireo Blue_headed_Vireo
    Philadelphia_Vireo Red_eyed_Vireo Warbling_Vireo White_eyed_Vireo Yellow_throated_Vireo
    Bay_breasted_Warbler Black_and_white_Warbler Black_throated_Blue_Warbler Blue_winged_Warbler
    Canada_Warbler Cape_May_Warbler Cerulean_Warbler Chestnut_sided_Warbler
    Golden_winged_Warbler Hooded_Warbler Kentucky_Warbler Magnolia_Warbler Mourning_Warbler
    Myrtle_Warbler Nashville_Warbler Orange_crowned_Warbler Palm_Warbler Pine_Warbler
    Prairie_Warbler Prothonotary_Warbler Swainson_Warbler Tennessee_Warbler Wilson_Warbler
    Worm_eating_Warbler Yellow_Warbler Northern_Waterthrush Louisiana_Waterthrush
    Bohemian_Waxwing Cedar_Waxwing American_Three_toed_Woodpecker Pileated_Woodpecker
    Red_bellied_Woodpecker Red_cockaded_Woodpecker Red_headed_Woodpecker Downy_Woodpecker
    Bewick_Wren Cactus_Wren Carolina_Wren House_Wren Marsh_Wren Rock_Wren Winter_Wren
    Common_Yellowthroat
    """.split()))


class CubConfig(tfds.core.BuilderConfig):
  """The image split ("official" or "class") and whether images are cropped to the bird."""

  def __init__(self, *, split: str, crop_to_bbox: bool, **kwargs):
    name = split + ("_bbox" if crop_to_bbox else "")
    super().__init__(name=name, description=f"{split} split"
                     + (", cropped to the bounding box" if crop_to_bbox else ""), **kwargs)
    self.split = split
    self.crop_to_bbox = crop_to_bbox


def required_paths(config: CubConfig) -> list[str]:
  """The files this config reads, relative to the manual directory."""
  paths = [f"{CUB_DIR}/images", f"{CUB_DIR}/images.txt", f"{CUB_DIR}/image_class_labels.txt",
           f"{TEXT_DIR}/text_c10"]
  if config.split == "official":
    paths.append(f"{CUB_DIR}/train_test_split.txt")
  else:
    paths += [f"{TEXT_DIR}/trainvalclasses.txt", f"{TEXT_DIR}/testclasses.txt"]
  if config.crop_to_bbox:
    paths.append(f"{CUB_DIR}/bounding_boxes.txt")
  return paths


def check_layout(manual_dir: str, config: CubConfig) -> None:
  """Raises manual_data.LayoutError at the first missing file."""
  manual_data.require(manual_dir, required_paths(config), NAME, LAYOUT_HINT, SOURCE_URL)


def _id_table(path: epath.Path) -> dict[int, list[str]]:
  """'<image_id> <fields...>' lines, by image id."""
  table = {}
  for line in manual_data.read_lines(path):
    key, *fields = line.split()
    table[int(key)] = fields
  return table


def _caption_index(text_dir: epath.Path) -> dict[str, epath.Path]:
  """Caption files by lower-cased '<class>/<stem>'."""
  index = {}
  for class_dir in text_dir.iterdir():
    if class_dir.is_dir():
      for path in class_dir.iterdir():
        if path.suffix == ".txt":
          index[f"{class_dir.name}/{path.stem}".lower()] = path
  return index


def _class_list(path: epath.Path) -> set[str]:
  return {line.strip().lower() for line in manual_data.read_lines(path)}


def split_items(manual_dir: str, config: CubConfig) -> dict[str, list[manual_data.Item]]:
  """The images of each split ("train", "test") in images.txt order, before any is read."""
  root = epath.Path(manual_dir)
  cub, text = root / CUB_DIR, root / TEXT_DIR
  images = _id_table(cub / "images.txt")
  labels = _id_table(cub / "image_class_labels.txt")
  boxes = _id_table(cub / "bounding_boxes.txt") if config.crop_to_bbox else {}
  captions = _caption_index(text / "text_c10")
  if config.split == "official":
    is_train = {key: fields[0] == "1"
                for key, fields in _id_table(cub / "train_test_split.txt").items()}
  else:
    train_classes = _class_list(text / "trainvalclasses.txt")
    test_classes = _class_list(text / "testclasses.txt")
    is_train = {}
    for key, (relpath,) in images.items():
      class_name = relpath.split("/")[0].lower()
      if class_name in train_classes or class_name in test_classes:
        is_train[key] = class_name in train_classes
  if len(is_train) < len(images):
    logging.warning("%s: %d images are in neither split list; left out",
                    NAME, len(images) - len(is_train))
  items = {"train": [], "test": []}
  for key, (relpath,) in images.items():
    if key not in is_train:
      continue
    stem = relpath.rsplit(".", 1)[0]
    caption_path = captions.get(stem.lower(), text / "text_c10" / f"{stem}.txt")
    box = tuple(float(v) for v in boxes[key]) if key in boxes else None
    items["train" if is_train[key] else "test"].append(manual_data.Item(
        name=f"{CUB_DIR}/images/{relpath}", image_path=str(cub / "images" / relpath),
        label=int(labels[key][0]) - 1, caption_path=str(caption_path), box_xywh=box))
  return items


class CubCaptions(manual_data.CaptionedImagesBuilder,
                  skip_registration=manual_data.already_registered(NAME)):
  """CUB-200-2011 images with Reed et al.'s captions (name: cub_captions)."""

  name = NAME
  BUILDER_CONFIGS = [CubConfig(split=split, crop_to_bbox=crop)
                     for split in ("official", "class") for crop in (False, True)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {SOURCE_URL}; extract both into one folder, so that it holds {LAYOUT_HINT}; "
      f"pass it with {manual_data.FLAG}.")
  code_path = epath.Path(__file__)  # see caption_digits: spares TFDS a resource look-up.
  HOMEPAGE = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
  NUM_CAPTIONS = NUM_CAPTIONS

  label_feature = staticmethod(lambda: tfds.features.ClassLabel(names=list(CLASS_NAMES)))
  split_items = staticmethod(split_items)


def config_name(data_config) -> str:
  """The builder config that config.data asks for (split, crop_to_bbox)."""
  return data_config.split + ("_bbox" if data_config.crop_to_bbox else "")


def build(data_config) -> tfds.core.DatasetBuilder:
  """The prepared cub_captions builder of config.data; LayoutError when files are missing."""
  name = config_name(data_config)
  config = manual_data.config_named(CubCaptions, name)
  return manual_data.build(CubCaptions, name, data_config,
                           lambda manual_dir: check_layout(manual_dir, config))
