import jax
import pytest
from jax.sharding import PartitionSpec as P

from mxq_jax import config_lib, sharding


def test_fsdp_spec_shards_largest_divisible_dimension():
  assert sharding.fsdp_spec((4, 4, 256, 512), 4) == P(None, None, None, "fsdp")
  assert sharding.fsdp_spec((4, 4, 3, 1024 * 6), 4) == P(None, None, None, "fsdp")
  assert sharding.fsdp_spec((1030, 30), 4) == P()  # nothing divisible by 4: replicated.
  assert sharding.fsdp_spec((3, 16384), 1) == P()  # fsdp off.
  assert sharding.fsdp_spec((256,), 4) == P()  # small arrays stay replicated.


@pytest.mark.parametrize("data,fsdp,shape", [(-1, 2, (4, 2)), (8, 1, (8, 1)), (-1, 3, (8, 1)),
                                              (2, 1, (8, 1)), (2, 2, (8, 1))])
def test_a_trained_models_mesh_where_it_fits_else_data_parallel(data, fsdp, shape):
  mesh_config = config_lib.base_config().mesh
  mesh_config.update(data=data, fsdp=fsdp)  # as trained, perhaps on another machine.
  assert tuple(sharding.make_inference_mesh(mesh_config).devices.shape) == shape


def test_make_mesh_shapes():
  config = config_lib.base_config()
  config.mesh.fsdp = 4
  mesh = sharding.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  config.mesh.fsdp = 3
  with pytest.raises(config_lib.ConfigError, match="does not divide"):  # one line, no traceback.
    sharding.make_mesh(config.mesh)
  config.mesh.update(fsdp=1, data=1)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1}
