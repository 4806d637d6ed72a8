"""Mesh construction, the logical-axis rules and the shardings of params and optimizer state."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from llada_jax.config import ConfigError, MeshConfig
from llada_jax.model.sharding import (batch_divisor, host_batch_to_global, logical_to_spec, make_mesh, mesh_shape,
                                param_shardings, tree_shardings_like)


def test_mesh_shape_fills_minus_one_and_rejects_bad_sizes():
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == ((2, 2, 2), (1, 1, 1))
    assert mesh_shape(MeshConfig(data=-1, fsdp=1, tensor=1, dcn_data=2), 8, num_slices=2) == ((4, 1, 1), (2, 1, 1))
    with pytest.raises(ConfigError, match="not divisible"):
        mesh_shape(MeshConfig(data=3, fsdp=-1), 8)
    with pytest.raises(ConfigError, match="8 are available"):
        mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8)
    with pytest.raises(ConfigError, match="at most one"):
        MeshConfig.from_dict({"data": -1, "fsdp": -1})


def test_make_mesh_axes_and_sizes():
    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert batch_divisor(mesh) == 4
    one = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    assert one.devices.size == 1


def test_logical_to_spec_drops_axes_that_do_not_divide():
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    # kv_heads=2 cannot split over tensor=4: replicated; embed=96 over fsdp=2 is fine.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (96, 2, 24), mesh) == P("fsdp", None, None)
    assert logical_to_spec(("embed", "heads", "head_dim"), (96, 4, 24), mesh) == P("fsdp", "tensor", None)
    # a mesh axis is used at most once per array
    assert logical_to_spec(("vocab", "mlp"), (512, 256), mesh) == P("tensor", None)
    # batch rows over data x fsdp
    assert logical_to_spec(("act_batch", None), (8, 16), mesh) == P("fsdp", None)


def test_param_and_optimizer_shardings(tiny_cfg):
    import optax

    from llada_jax.model.transformer import param_shapes

    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    shards = param_shardings(tiny_cfg, mesh)
    assert shards["wte"].spec == P("tensor", "fsdp")
    assert shards["ff_out"].spec == P("fsdp", "tensor")
    assert shards["layers"]["q_proj"].spec == P(None, "fsdp", "tensor", None)
    assert shards["layers"]["ff_out"].spec == P(None, "tensor", "fsdp")
    assert shards["layers"]["attn_norm"].spec == P(None, None)
    shapes = param_shapes(tiny_cfg)
    opt = jax.eval_shape(optax.adamw(1e-3).init, shapes)
    opt_shards = tree_shardings_like(opt, shapes, shards, mesh)
    adam = opt_shards[0]
    assert adam.mu["layers"]["q_proj"].spec == shards["layers"]["q_proj"].spec
    assert adam.nu["wte"].spec == shards["wte"].spec
    assert adam.count.spec == P()


def test_host_batch_to_global_single_process():
    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    rows = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
    out = host_batch_to_global({"tokens": rows, "prompt_lengths": np.arange(8, dtype=np.int32)}, mesh)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), rows)
    assert out["tokens"].sharding.spec == P(("data", "fsdp"), None)
    assert out["prompt_lengths"].sharding.spec == P(("data", "fsdp"))
