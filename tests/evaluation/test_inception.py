"""FID's Inception-v3 on random weights written in pytorch-fid's exact names and shapes."""

import numpy as np
import pytest

import weight_files
from mxq_jax import config_lib
from mxq_jax.evaluation import inception, pair_metrics, real_data, weights_io


@pytest.fixture(scope="module")
def state_dict():
  return weight_files.random_inception_state_dict(seed=0)


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory, state_dict):
  path = str(tmp_path_factory.mktemp("fid") / inception.WEIGHTS_FILE)
  weight_files.write_pth(path, state_dict)
  return path


@pytest.fixture(scope="module")
def params(weights_path):
  return inception.load_params(weights_path)


def random_images(n: int, size: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_layout_is_pytorch_fids():
  shapes = inception.expected_shapes()
  assert len(inception.conv_shapes()) == 94  # 5 stem convs, 89 in the 11 Mixed blocks.
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
  assert shapes["fc.weight"] == (1008, 2048)


def test_pool_features_are_2048_d_and_deterministic(params):
  images = random_images(2, 64, seed=0)
  features = inception.features(params, images, batch_size=2)
  assert features.shape == (2, inception.FEATURE_DIM)
  assert np.isfinite(features).all() and (features >= 0).all()  # a mean of ReLU outputs.
  assert not np.allclose(features[0], features[1])
  np.testing.assert_array_equal(inception.features(params, images, batch_size=2), features)
  # One image, padded to the same batch: padding must not leak into it.
  np.testing.assert_allclose(inception.features(params, images[1:], batch_size=2), features[1:],
                             rtol=1e-5, atol=1e-5)


def test_folded_conv_equals_conv_then_batch_norm_then_relu(state_dict, params):
  name = "Mixed_7b.branch3x3_2a"  # 1 x 3 kernel, padding (0, 1): catches a swapped H and W.
  w_OIHW = state_dict[f"{name}.conv.weight"].astype(np.float64)
  x_NHWC = np.random.default_rng(1).standard_normal((1, 4, 5, w_OIHW.shape[1]))
  padded = np.pad(x_NHWC, ((0, 0), (0, 0), (1, 1), (0, 0)))
  conv = sum(np.einsum("nhwi,oi->nhwo", padded[:, :, j:j + 5], w_OIHW[:, :, 0, j])
             for j in range(3))
  bn = {s: state_dict[f"{name}.bn.{s}"] for s in ("weight", "bias", "running_mean", "running_var")}
  want = np.maximum((conv - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3)
                    * bn["weight"] + bn["bias"], 0)
  got = np.asarray(inception._conv(params, name, x_NHWC.astype(np.float32)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_pools_follow_the_tensorflow_graph():
  ones = np.ones((1, 4, 5, 2), np.float32)
  # count_include_pad=False: the border averages only in-image ones (torch's default: 4/9).
  np.testing.assert_allclose(inception.avg_pool_exclude_padding(ones), ones, rtol=1e-6)
  ramp = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)
  assert float(inception.avg_pool_exclude_padding(ramp)[0, 0, 0, 0]) == pytest.approx(
      (0 + 1 + 4 + 5) / 4)
  negative = -1.0 - ramp
  # Max pool padding never wins: the corner's max is an in-image value, not a padded 0.
  assert float(inception.max_pool(negative, 1, "SAME")[0, 0, 0, 0]) == -1.0
  assert inception.max_pool(np.zeros((1, 147, 147, 1), np.float32), 2, "VALID").shape == (
      1, 73, 73, 1)


def torch_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """torch's F.interpolate(bilinear, align_corners=False) along one axis, as a matrix."""
  matrix = np.zeros((n_out, n_in))
  for dst in range(n_out):
    src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
    low = int(src)
    high = min(low + 1, n_in - 1)
    matrix[dst, low] += 1 - (src - low)
    matrix[dst, high] += src - low
  return matrix


@pytest.mark.parametrize("height,width", [(64, 64), (128, 96), (400, 350)])
def test_resize_matches_torch_bilinear(height, width):
  image = np.random.default_rng(2).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
  rows = np.einsum("yh,nhwc->nywc", torch_bilinear_matrix(height, 299), image / 255.0)
  want = 2 * np.einsum("xw,nywc->nyxc", torch_bilinear_matrix(width, 299), rows) - 1
  np.testing.assert_allclose(inception.preprocess(image), want, atol=1e-4)


def test_torchvisions_inception_is_refused(state_dict):
  imagenet = {**state_dict, "fc.weight": np.zeros((1000, 2048), np.float32)}
  with pytest.raises(config_lib.ConfigError, match=r"'fc.weight' has shape \(1000, 2048\), "
                                                   r"expected \(1008, 2048\)"):
    weights_io.check_shapes("inception_v3_google.pth", imagenet, inception.expected_shapes())


def test_fid_and_clip_with_both_weight_sets(weights_path, tmp_path, monkeypatch):
  config = config_lib.base_config()
  config.evaluation.inception_weights = weights_path
  config.evaluation.clip_dir = weight_files.write_tiny_clip_dir(str(tmp_path / "clip"))
  generated, reference = random_images(2, 64, seed=3), random_images(2, 64, seed=4)
  # The Fréchet distance of 2048-d features takes ~30 s on a busy CPU (an eigendecomposition
  # of a 2048 x 2048 product) and has its own tests: here it sees a slice of the features.
  seen, frechet = [], pair_metrics.feature_frechet_distance

  def frechet_of_a_slice(features_a, features_b):
    seen.append((features_a, features_b))
    return frechet(features_a[:, :64], features_b[:, :64])

  monkeypatch.setattr(pair_metrics, "feature_frechet_distance", frechet_of_a_slice)
  metrics = real_data.fid_and_clip(config, generated, ["a photo of a cat", "a dog"], reference)
  assert set(metrics) == {"fid", "clip_score"}
  assert metrics["fid"] > 0 and np.isfinite(metrics["fid"])
  assert 0 <= metrics["clip_score"] <= 100
  (features_a, features_b), = seen
  assert features_a.shape == features_b.shape == (2, inception.FEATURE_DIM)
  params = inception.load_params(weights_path)
  np.testing.assert_allclose(features_a, inception.features(params, generated, 2), rtol=1e-6)
