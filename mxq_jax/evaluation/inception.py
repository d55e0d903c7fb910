"""FID's Inception-v3 as pure JAX functions over pytorch-fid's weight file.

FID is only comparable across papers when it uses the network of the original TensorFlow
implementation (the 2015-12-05 Inception graph), not torchvision's ImageNet Inception: it has
other weights (1008 classes) and three quirks that pytorch-fid reproduces in its FIDInception*
blocks and that this file follows:

- the average pools inside the Mixed_5* (A), Mixed_6b-e (C) and Mixed_7b (E_1) blocks leave the
  zero padding out of the mean (TF's "SAME" pooling; torch's `count_include_pad=False`);
- Mixed_7c (E_2) max-pools where the paper average-pools;
- images in [0, 1] are resized bilinearly to 299 x 299 (torch's `align_corners=False`, no
  antialiasing) and scaled to [-1, 1].

Each conv of the file is conv (no bias) + BatchNorm(eps=0.001) + ReLU; the BatchNorm is folded
into the conv at load time. The features are the 2048 channels of the final average pool.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mxq_jax.evaluation import batching, weights_io

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008  # The TF graph's classifier; torchvision's ImageNet Inception has 1000.
_BN_EPS = 1e-3

Params = dict[str, dict[str, jax.Array]]  # conv name -> {"w": HWIO kernel, "b": [O] bias}.


# --------------------------------------------------------------------------- the file's layout


def _block_a(cin: int, pool: int) -> dict[str, tuple[int, int, int, int]]:
  return {"branch1x1": (64, cin, 1, 1), "branch5x5_1": (48, cin, 1, 1),
          "branch5x5_2": (64, 48, 5, 5), "branch3x3dbl_1": (64, cin, 1, 1),
          "branch3x3dbl_2": (96, 64, 3, 3), "branch3x3dbl_3": (96, 96, 3, 3),
          "branch_pool": (pool, cin, 1, 1)}


def _block_b(cin: int) -> dict[str, tuple[int, int, int, int]]:
  return {"branch3x3": (384, cin, 3, 3), "branch3x3dbl_1": (64, cin, 1, 1),
          "branch3x3dbl_2": (96, 64, 3, 3), "branch3x3dbl_3": (96, 96, 3, 3)}


def _block_c(cin: int, c7: int) -> dict[str, tuple[int, int, int, int]]:
  return {"branch1x1": (192, cin, 1, 1), "branch7x7_1": (c7, cin, 1, 1),
          "branch7x7_2": (c7, c7, 1, 7), "branch7x7_3": (192, c7, 7, 1),
          "branch7x7dbl_1": (c7, cin, 1, 1), "branch7x7dbl_2": (c7, c7, 7, 1),
          "branch7x7dbl_3": (c7, c7, 1, 7), "branch7x7dbl_4": (c7, c7, 7, 1),
          "branch7x7dbl_5": (192, c7, 1, 7), "branch_pool": (192, cin, 1, 1)}


def _block_d(cin: int) -> dict[str, tuple[int, int, int, int]]:
  return {"branch3x3_1": (192, cin, 1, 1), "branch3x3_2": (320, 192, 3, 3),
          "branch7x7x3_1": (192, cin, 1, 1), "branch7x7x3_2": (192, 192, 1, 7),
          "branch7x7x3_3": (192, 192, 7, 1), "branch7x7x3_4": (192, 192, 3, 3)}


def _block_e(cin: int) -> dict[str, tuple[int, int, int, int]]:
  return {"branch1x1": (320, cin, 1, 1), "branch3x3_1": (384, cin, 1, 1),
          "branch3x3_2a": (384, 384, 1, 3), "branch3x3_2b": (384, 384, 3, 1),
          "branch3x3dbl_1": (448, cin, 1, 1), "branch3x3dbl_2": (384, 448, 3, 3),
          "branch3x3dbl_3a": (384, 384, 1, 3), "branch3x3dbl_3b": (384, 384, 3, 1),
          "branch_pool": (192, cin, 1, 1)}


def conv_shapes() -> dict[str, tuple[int, int, int, int]]:
  """{conv name: (out, in, kh, kw)} of every conv up to the pool features, in file order."""
  blocks = {
      "Mixed_5b": _block_a(192, 32), "Mixed_5c": _block_a(256, 64),
      "Mixed_5d": _block_a(288, 64), "Mixed_6a": _block_b(288),
      "Mixed_6b": _block_c(768, 128), "Mixed_6c": _block_c(768, 160),
      "Mixed_6d": _block_c(768, 160), "Mixed_6e": _block_c(768, 192),
      "Mixed_7a": _block_d(768), "Mixed_7b": _block_e(1280), "Mixed_7c": _block_e(2048),
  }
  shapes = {"Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3),
            "Conv2d_2b_3x3": (64, 32, 3, 3), "Conv2d_3b_1x1": (80, 64, 1, 1),
            "Conv2d_4a_3x3": (192, 80, 3, 3)}
  for block, convs in blocks.items():
    shapes.update({f"{block}.{name}": shape for name, shape in convs.items()})
  return shapes


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """The tensors of pytorch-fid's file this module reads (it also holds num_batches_tracked)."""
  shapes = {}
  for name, (out, *rest) in conv_shapes().items():
    shapes[f"{name}.conv.weight"] = (out, *rest)
    for stat in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{stat}"] = (out,)
  # Unused by FID, but what tells this file from torchvision's ImageNet Inception.
  shapes["fc.weight"] = (NUM_CLASSES, FEATURE_DIM)
  shapes["fc.bias"] = (NUM_CLASSES,)
  return shapes


def fold_batch_norm(tensors: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """conv(x) * gamma / sqrt(var + eps) + (beta - mean * gamma / sqrt(var + eps)), as one conv."""
  params = {}
  for name in conv_shapes():
    bn = {stat: tensors[f"{name}.bn.{stat}"].astype(np.float64)
          for stat in ("weight", "bias", "running_mean", "running_var")}
    scale = bn["weight"] / np.sqrt(bn["running_var"] + _BN_EPS)
    w_OIHW = tensors[f"{name}.conv.weight"].astype(np.float64) * scale[:, None, None, None]
    params[name] = {"w": w_OIHW.transpose(2, 3, 1, 0).astype(np.float32),
                    "b": (bn["bias"] - bn["running_mean"] * scale).astype(np.float32)}
  return params


def load_params(path: str) -> Params:
  """The folded conv parameters of pytorch-fid's file; WeightFileError (one line) otherwise."""
  tensors = weights_io.read_pth(path)
  weights_io.check_shapes(path, tensors, expected_shapes())
  return jax.tree.map(jnp.asarray, fold_batch_norm(tensors))


# -------------------------------------------------------------------------------- the network


def _conv(params: Params, name: str, x_NHWC: jax.Array, stride: int = 1,
          padding: str = "SAME") -> jax.Array:
  """BasicConv2d: conv + folded BatchNorm + ReLU. torch's (k - 1) / 2 padding is "SAME"."""
  y = jax.lax.conv_general_dilated(
      x_NHWC, params[name]["w"], (stride, stride), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  return jax.nn.relu(y + params[name]["b"])


def max_pool(x_NHWC: jax.Array, stride: int, padding: str) -> jax.Array:
  """3 x 3 max pool; "SAME" pads with -inf, so padding never wins (torch's max_pool2d)."""
  return jax.lax.reduce_window(x_NHWC, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                               (1, stride, stride, 1), padding)


def avg_pool_exclude_padding(x_NHWC: jax.Array) -> jax.Array:
  """3 x 3, stride 1, padding 1 average of the in-image values only (count_include_pad=False)."""
  window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x_NHWC, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1, *x_NHWC.shape[1:3], 1), x_NHWC.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return total / count


def _block_a_apply(params: Params, block: str, x: jax.Array) -> jax.Array:
  conv = lambda name, y: _conv(params, f"{block}.{name}", y)
  branch5x5 = conv("branch5x5_2", conv("branch5x5_1", x))
  branch3x3dbl = conv("branch3x3dbl_3", conv("branch3x3dbl_2", conv("branch3x3dbl_1", x)))
  branch_pool = conv("branch_pool", avg_pool_exclude_padding(x))
  return jnp.concatenate([conv("branch1x1", x), branch5x5, branch3x3dbl, branch_pool], -1)


def _block_b_apply(params: Params, block: str, x: jax.Array) -> jax.Array:
  conv = lambda name, y, **kw: _conv(params, f"{block}.{name}", y, **kw)
  branch3x3 = conv("branch3x3", x, stride=2, padding="VALID")
  branch3x3dbl = conv("branch3x3dbl_3", conv("branch3x3dbl_2", conv("branch3x3dbl_1", x)),
                      stride=2, padding="VALID")
  return jnp.concatenate([branch3x3, branch3x3dbl, max_pool(x, 2, "VALID")], -1)


def _block_c_apply(params: Params, block: str, x: jax.Array) -> jax.Array:
  conv = lambda name, y: _conv(params, f"{block}.{name}", y)
  branch7x7 = conv("branch7x7_3", conv("branch7x7_2", conv("branch7x7_1", x)))
  branch7x7dbl = x
  for i in range(1, 6):
    branch7x7dbl = conv(f"branch7x7dbl_{i}", branch7x7dbl)
  branch_pool = conv("branch_pool", avg_pool_exclude_padding(x))
  return jnp.concatenate([conv("branch1x1", x), branch7x7, branch7x7dbl, branch_pool], -1)


def _block_d_apply(params: Params, block: str, x: jax.Array) -> jax.Array:
  conv = lambda name, y, **kw: _conv(params, f"{block}.{name}", y, **kw)
  branch3x3 = conv("branch3x3_2", conv("branch3x3_1", x), stride=2, padding="VALID")
  branch7x7x3 = conv("branch7x7x3_3", conv("branch7x7x3_2", conv("branch7x7x3_1", x)))
  branch7x7x3 = conv("branch7x7x3_4", branch7x7x3, stride=2, padding="VALID")
  return jnp.concatenate([branch3x3, branch7x7x3, max_pool(x, 2, "VALID")], -1)


def _block_e_apply(params: Params, block: str, x: jax.Array, pool: str) -> jax.Array:
  """pool: "avg" in Mixed_7b (FIDInceptionE_1), "max" in Mixed_7c (FIDInceptionE_2)."""
  conv = lambda name, y: _conv(params, f"{block}.{name}", y)
  branch3x3 = conv("branch3x3_1", x)
  branch3x3 = jnp.concatenate([conv("branch3x3_2a", branch3x3),
                               conv("branch3x3_2b", branch3x3)], -1)
  branch3x3dbl = conv("branch3x3dbl_2", conv("branch3x3dbl_1", x))
  branch3x3dbl = jnp.concatenate([conv("branch3x3dbl_3a", branch3x3dbl),
                                  conv("branch3x3dbl_3b", branch3x3dbl)], -1)
  pooled = avg_pool_exclude_padding(x) if pool == "avg" else max_pool(x, 1, "SAME")
  return jnp.concatenate([conv("branch1x1", x), branch3x3, branch3x3dbl,
                          conv("branch_pool", pooled)], -1)


def preprocess(images_uint8_NxHxWx3: jax.Array) -> jax.Array:
  """uint8 RGB -> [-1, 1] at 299 x 299: bilinear, half-pixel centres, no antialiasing.

  jax.image.resize's triangle kernel renormalized at the borders equals torch's
  `F.interpolate(mode="bilinear", align_corners=False)`, which clamps the source index.
  """
  x = images_uint8_NxHxWx3.astype(jnp.float32) / 255.0
  n, _, _, c = x.shape
  x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
  return 2.0 * x - 1.0


@jax.jit
def pool_features(params: Params, images_uint8_NxHxWx3: jax.Array) -> jax.Array:
  """The 2048-d final-average-pool features, float32 [N, 2048], of uint8 RGB images."""
  x = preprocess(images_uint8_NxHxWx3)
  x = _conv(params, "Conv2d_1a_3x3", x, stride=2, padding="VALID")  # 149 x 149 x 32.
  x = _conv(params, "Conv2d_2a_3x3", x, padding="VALID")  # 147 x 147 x 32.
  x = _conv(params, "Conv2d_2b_3x3", x)  # 147 x 147 x 64.
  x = max_pool(x, 2, "VALID")  # 73 x 73 x 64.
  x = _conv(params, "Conv2d_3b_1x1", x)  # 73 x 73 x 80.
  x = _conv(params, "Conv2d_4a_3x3", x, padding="VALID")  # 71 x 71 x 192.
  x = max_pool(x, 2, "VALID")  # 35 x 35 x 192.
  for block in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = _block_a_apply(params, block, x)  # 35 x 35 x 256, 288, 288.
  x = _block_b_apply(params, "Mixed_6a", x)  # 17 x 17 x 768.
  for block in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    x = _block_c_apply(params, block, x)
  x = _block_d_apply(params, "Mixed_7a", x)  # 8 x 8 x 1280.
  x = _block_e_apply(params, "Mixed_7b", x, pool="avg")  # 8 x 8 x 2048.
  x = _block_e_apply(params, "Mixed_7c", x, pool="max")
  return x.mean(axis=(1, 2))


def features(params: Params, images_uint8_NxHxWx3: np.ndarray, batch_size: int = 50) -> np.ndarray:
  """pool_features of any number of images, float64 [N, 2048], in fixed-size batches.

  The last batch is padded (with copies of its first image) so that one program serves all.
  """
  return batching.map_in_fixed_batches(functools.partial(pool_features, params),
                                       images_uint8_NxHxWx3,
                                       batch_size=batch_size).astype(np.float64)
