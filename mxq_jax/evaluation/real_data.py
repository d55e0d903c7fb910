"""FID and CLIP score of generated pairs on the real datasets (birds, flowers, COCO).

Both need a published network that cannot be fetched at run time, so each is computed only when
the config points at a local copy of its files, as the publisher ships them:

  fid         Fréchet distance between Gaussians fitted to the Inception-v3 pool features of
              the generated and the reference images (pytorch-fid's network and preprocessing;
              `pair_metrics.feature_frechet_distance`); config.evaluation.inception_weights.
  clip_score  100 * mean max(cos(CLIP image, CLIP caption), 0) over the generated pairs
              (`clip.clip_score` says more); config.evaluation.clip_dir.

A metric whose path is empty is skipped with one logged line saying how to enable it, and its
key is absent from the result: a missing metric must never read as a score of 0. A path that
is set but wrong stops the run with one line naming the file and what was expected.
"""

from absl import logging
import numpy as np

from mxq_jax.evaluation import pair_metrics
from mxq_jax.evaluation import clip, inception, weights_io

FID_SOURCE = f"pytorch-fid's {inception.WEIGHTS_FILE} (download from {inception.WEIGHTS_URL})"
CLIP_SOURCE = f"a folder holding {', '.join(clip.FILES)} downloaded from {clip.REPO_URL}"
FID_SKIPPED = ("FID skipped: set config.evaluation.inception_weights to the path of "
               + FID_SOURCE)
CLIP_SKIPPED = "CLIP score skipped: set config.evaluation.clip_dir to " + CLIP_SOURCE


def _load(field: str, path: str, loader, source: str):
  """loader(path), its WeightFileError given the config field and the expected file."""
  try:
    return loader(path)
  except weights_io.WeightFileError as error:
    raise weights_io.WeightFileError(
        f"config.evaluation.{field}: {error}; expected {source}") from None


def fid(inception_weights: str, generated_images_uint8: np.ndarray,
        reference_images_uint8: np.ndarray, batch_size: int = 50) -> float:
  """FID of two image sets (uint8 [N, H, W, 3], any sizes: both are resized to 299)."""
  params = _load("inception_weights", inception_weights, inception.load_params, FID_SOURCE)
  features = [inception.features(params, images, min(batch_size, len(images)))
              for images in (generated_images_uint8, reference_images_uint8)]
  if min(len(f) for f in features) < inception.FEATURE_DIM:
    logging.warning("FID from %d generated and %d reference images, fewer than the %d features: "
                    "it is biased upward, compare it only between runs with the same counts",
                    len(features[0]), len(features[1]), inception.FEATURE_DIM)
  return pair_metrics.feature_frechet_distance(*features)


def clip_score(clip_dir: str, images_uint8: np.ndarray, captions: list[str],
               batch_size: int = 64) -> float:
  """CLIP score of image-caption pairs (uint8 [N, H, W, 3] and N captions)."""
  model = _load("clip_dir", clip_dir, clip.load, CLIP_SOURCE)
  size = min(batch_size, len(captions))
  return clip.clip_score(model.embed_images(images_uint8, size),
                         model.embed_texts(captions, size))


def fid_and_clip(config, generated_images_uint8: np.ndarray, captions: list[str],
                 reference_images_uint8: np.ndarray) -> dict[str, float]:
  """{"fid": ..., "clip_score": ...}, each only when config.evaluation has its weights.

  generated_images_uint8: [N, H, W, 3] with N `captions`, one per image; reference_images_uint8:
  [M, H', W', 3], the real images FID compares against (the test split, say). Logs one line per
  skipped metric; raises ConfigError (one line) for a set path that is missing or wrong.
  """
  if len(captions) != len(generated_images_uint8):
    raise ValueError(f"{len(generated_images_uint8)} generated images but {len(captions)} "
                     "captions")
  if not len(generated_images_uint8) or not len(reference_images_uint8):
    raise ValueError("FID and CLIP score need at least one generated and one reference image")
  evaluation = config.evaluation
  metrics = {}
  if evaluation.inception_weights:
    metrics["fid"] = fid(evaluation.inception_weights, generated_images_uint8,
                         reference_images_uint8)
  else:
    logging.warning(FID_SKIPPED)
  if evaluation.clip_dir:
    metrics["clip_score"] = clip_score(evaluation.clip_dir, generated_images_uint8, captions)
  else:
    logging.warning(CLIP_SKIPPED)
  return metrics

