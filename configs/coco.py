r"""MXQ-VAE on MS-COCO captions (about five per image), at the paper's 128 px sizes.

128 px images, 80-token captions: a 16x16 image grid + 20 text positions = 276 joint codes.
The data are the files as cocodataset.org ships them, in one folder (README, "Datasets"):

  DIR/train2014/  DIR/val2014/  DIR/annotations/captions_train2014.json, captions_val2014.json
  (or the 2017 layout with --config.data.coco_year=2017)

  python -m mxq_jax.main --config=configs/coco.py --config.data.manual_dir=DIR --workdir=W

Arguments:
  --config=configs/coco.py          the paper's sizes
  --config=configs/coco.py:smoke    a tiny model at 16 px and a few steps
  --config=configs/coco.py:gpu, :v5e-8, :v5e-32   batch and bf16 for that hardware (cub.py)

The train split is train2014 (82,783 images), the test split val2014 (40,504). The prepared
128 px cache of both holds about 6 GB of uint8 pixels in host memory.
Batches, meshes and the hardware variants as in configs/cub.py (the same network and 276 codes).
"""

import ml_collections

from mxq_jax import config_lib

common = config_lib.load_beside(__file__, "common")  # configs/common.py: the size tables.

# This dataset's fields, applied over common.PHOTO_DATASET.
DATASET = {
    "data.name": "coco",
    "data.vocab_size": 8_192,  # COCO's open vocabulary (~25k words).
    "data.coco_year": 2014,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.photo_config(arg, DATASET)
