"""The device mesh and where every array lives on it.

Two mesh axes: `data` splits the batch; `fsdp` also splits the batch and, when its size is
above 1, shards every parameter and its optimizer state along one dimension (ZeRO-3 style), so
that a model too large for one device still trains. The batch is split over both axes.

Parameters need no per-module annotations: like big_vision's fsdp rule, each array is sharded
along its largest dimension that the fsdp axis divides, and replicated when none does. Adam's
moments have the parameters' shapes, so they land exactly where their parameters are.
"""

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mxq_jax import config_lib

DATA_AXES = ("data", "fsdp")  # the batch dimension is split over both mesh axes.
FSDP_MIN_SIZE = 2**14  # elements; smaller arrays (biases, norms) are cheaper replicated.


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A (data, fsdp) mesh over all devices; `data=-1` takes what fsdp leaves."""
  devices = jax.devices() if devices is None else devices
  fsdp = mesh_config.fsdp
  if len(devices) % fsdp:
    raise config_lib.ConfigError(
        f"config.mesh.fsdp={fsdp} does not divide the {len(devices)} devices; pick a divisor")
  data = len(devices) // fsdp if mesh_config.data == -1 else mesh_config.data
  if data * fsdp != len(devices):
    raise config_lib.ConfigError(
        f"config.mesh data={mesh_config.data} x fsdp={fsdp} != {len(devices)} devices; "
        "set config.mesh.data=-1 to use them all")
  # Auto axes: XLA propagates shardings from the ones we pin (jit's in/out shardings), the
  # classic pjit model; jax's newer default, Explicit, would put shardings in the types.
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=auto, devices=devices)


def make_inference_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
  """The trained model's mesh where it fits this machine's devices, else one data axis over
  them all: a checkpoint restores into any layout, so a workdir trained with fsdp 4 on a slice
  samples and evaluates on one GPU."""
  count, fsdp = jax.device_count(), mesh_config.fsdp
  if count % fsdp or mesh_config.data not in (-1, count // fsdp):
    logging.info("config.mesh data=%d x fsdp=%d does not fit the %d devices here; sampling "
                 "data-parallel over all of them", mesh_config.data, fsdp, count)
    mesh_config = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  return make_mesh(mesh_config)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """Shards the largest dimension that `fsdp_size` divides; replicates small or odd arrays."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs): parameters, optimizer state."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp_size)), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device; the other dimensions whole."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
