"""How coherent, valid and diverse generated pairs are: pure numpy functions with known answers.

Inputs are what the evaluation reads: the classifier's attributes of each generated image
({attribute: int [n]}), the parser's attributes of each generated caption (a dict, or None for
a caption that follows no template), and the same for the training split.
"""

from collections.abc import Sequence

import numpy as np

Attributes = dict[str, np.ndarray]  # attribute name -> int [n].


def caption_validity(parsed: Sequence[dict | None]) -> float:
  """The fraction of captions that parse (follow a template, every attribute named once)."""
  return float(np.mean([p is not None for p in parsed])) if len(parsed) else 0.0


def coherence(parsed: Sequence[dict | None], image_attributes: Attributes) -> dict[str, float]:
  """Agreement of each caption with the classifier's reading of its image.

  `coherence`: the fraction of ALL pairs whose caption parses and names every attribute as the
  classifier reads it (an unparseable caption counts as incoherent); `{name}_agreement`: per
  attribute, over the pairs whose caption parses.
  """
  names = list(image_attributes)
  valid = [i for i, p in enumerate(parsed) if p is not None]
  result = {"coherence": 0.0, **{f"{name}_agreement": 0.0 for name in names}}
  if not valid:
    return result
  agree_VxA = np.array([[parsed[i][name] == image_attributes[name][i] for name in names]
                        for i in valid])
  result["coherence"] = float(agree_VxA.all(axis=1).sum() / len(parsed))
  for a, name in enumerate(names):
    result[f"{name}_agreement"] = float(agree_VxA[:, a].mean())
  return result


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
  """TVD between two distributions given as (unnormalized) counts over the same support."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def attribute_tvd(generated: Attributes, reference: Attributes,
                  num_classes: dict[str, int]) -> dict[str, float]:
  """Per-attribute TVD of the marginals, and their mean (`attribute_tvd`)."""
  result = {f"{name}_tvd": total_variation(np.bincount(generated[name], minlength=n),
                                           np.bincount(reference[name], minlength=n))
            for name, n in num_classes.items()}
  result["attribute_tvd"] = float(np.mean(list(result.values())))
  return result


def combinations(attributes: Attributes) -> set[tuple[int, ...]]:
  """The distinct joint attribute values present (mode coverage)."""
  return set(zip(*(np.asarray(attributes[name]).tolist() for name in sorted(attributes))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Fréchet distance of two Gaussians.

  Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, which equal
  those of the symmetric A = S1^(1/2) S2 S1^(1/2): two symmetric eigendecompositions (eigh),
  several times faster than a general one at 2048 dimensions. Rounding can leave tiny
  negative eigenvalues; they are clipped to 0.
  """
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  w1, v1 = np.linalg.eigh(sigma1)
  sqrt_sigma1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
  a = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((a + a.T) / 2), 0.0, None)).sum()
  diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def feature_frechet_distance(features_a_NxF: np.ndarray, features_b_MxF: np.ndarray) -> float:
  """The Fréchet distance between Gaussians fitted to two sets of feature vectors."""
  stats = [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in (features_a_NxF, features_b_MxF)]
  return frechet_distance(*stats[0], *stats[1])


def novelty(captions: Sequence[str], training_captions: Sequence[str]) -> float:
  """The fraction of captions that are not (case- and space-normalized) training captions."""
  normalize = lambda text: " ".join(text.lower().split())
  seen = {normalize(c) for c in training_captions}
  return float(np.mean([normalize(c) not in seen for c in captions])) if len(captions) else 0.0
