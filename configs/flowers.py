r"""MXQ-VAE on Oxford-102 Flowers with Reed et al.'s ten captions per image (paper sizes).

128 px images, 80-token captions: a 16x16 image grid + 20 text positions = 276 joint codes,
the reference networks and a 256 x 128 codebook. The data are the files as their publishers
ship them, side by side in one folder (README, "Datasets"):

  DIR/jpg/image_00001.jpg ...  DIR/imagelabels.mat  DIR/setid.mat
  DIR/cvpr2016_flowers/        text_c10/class_NNNNN/image_NNNNN.txt, trainvalclasses.txt, ...

  python -m mxq_jax.main --config=configs/flowers.py --config.data.manual_dir=DIR --workdir=W

Arguments:
  --config=configs/flowers.py          the paper's sizes
  --config=configs/flowers.py:smoke    a tiny model at 16 px and a few steps
  --config=configs/flowers.py:gpu, :v5e-8, :v5e-32   batch and bf16 for that hardware (cub.py)

Switch: --config.data.split=class (Reed's class split; "official" trains on setid.mat's
trnid + valid and tests on tstid).

Batches, meshes and the hardware variants as in configs/cub.py (the same network and 276 codes).
"""

import ml_collections

from mxq_jax import config_lib

common = config_lib.load_beside(__file__, "common")  # configs/common.py: the size tables.

# This dataset's fields, applied over common.PHOTO_DATASET.
DATASET = {
    "data.name": "flowers",
    "data.vocab_size": 2_048,  # unigram pieces over ~80k flower captions.
    "data.split": "official",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.photo_config(arg, DATASET)
