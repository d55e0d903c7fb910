r"""MXQ-VAE on CUB-200-2011 birds with Reed et al.'s ten captions per image (paper sizes).

128 px images, 80-token captions: a 16x16 image grid + 20 text positions = 276 joint codes,
the reference networks and a 256 x 128 codebook. The data are the files as their publishers
ship them, extracted side by side in one folder (README, "Datasets"):

  DIR/CUB_200_2011/   images/, images.txt, train_test_split.txt, classes.txt, ...
  DIR/cvpr2016_cub/   text_c10/<class>/<image>.txt, trainvalclasses.txt, testclasses.txt

  python -m mxq_jax.main --config=configs/cub.py --config.data.manual_dir=DIR --workdir=W

Arguments:
  --config=configs/cub.py          the paper's sizes
  --config=configs/cub.py:smoke    a tiny model at 16 px and a few steps (install checks, tests)

Switches: --config.data.split=class (Reed's zero-shot class split instead of the official image
split), --config.data.crop_to_bbox=True (crop each photo to its bird first).

Batches are global and the mesh data-parallel. The hardware variants (configs/common.py, SLICES)
set the batch and bf16 compute for what people rent:
  --config=configs/cub.py:gpu      one GPU: 128 pairs a step (H200: 46 stage-1 steps/s, 6.8 GB)
  --config=configs/cub.py:v5e-8    TPU v5e-8: 128 (16 a chip)
  --config=configs/cub.py:v5e-32   TPU v5e-32: 384 (12 a chip), the authors' batch
with gs:// data and work dirs on TPU VMs. `python -m mxq_jax.aot` checked that they fit (README).
"""

import ml_collections

from mxq_jax import config_lib

common = config_lib.load_beside(__file__, "common")  # configs/common.py: the size tables.

# This dataset's fields, applied over common.PHOTO_DATASET.
DATASET = {
    "data.name": "cub",
    "data.vocab_size": 2_048,  # unigram pieces over ~60k bird captions (~5k words).
    "data.split": "official",  # 5,994 train / 5,794 test images; "class": 150 / 50 classes.
    "data.crop_to_bbox": False,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.photo_config(arg, DATASET)
