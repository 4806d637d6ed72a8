"""Device mesh and shardings from logical axis names.

The mesh has three axes, `data`, `fsdp` and `tensor`, each sized per slice (ICI) and across
slices (DCN); one size per group may be -1 to take the devices left over. `LOGICAL_RULES` is
the one table mapping the model's logical axis names (`model.PARAM_AXES`,
`model.ACTIVATION_AXES`) to mesh axes; params, optimizer state and batches all get their
`NamedSharding`s from it, so the same code runs on 1 CPU, an 8-device simulated mesh, a GPU
box or a TPU pod. A dimension that a mesh axis does not divide is replicated instead of
failing (e.g. 2 kv heads on a tensor axis of 4).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from llada_jax.config import ConfigError, MeshConfig, ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or tuple of axes, or None for replicated).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    # activations
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def _fill(sizes: Sequence[int], total: int, names: Sequence[str]) -> tuple[int, ...]:
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise ConfigError(f"mesh: {total} devices are not divisible by {' x '.join(map(str, (s for s in sizes if s != -1)))}"
                              f" ({', '.join(names)})")
        sizes = [total // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != total:
        raise ConfigError(f"mesh: {' x '.join(f'{n}={s}' for n, s in zip(names, sizes))} = {math.prod(sizes)} "
                          f"devices, but {total} are available")
    return tuple(sizes)


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int, num_slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(per-slice sizes, across-slice sizes) of (data, fsdp, tensor) with -1 resolved."""
    if num_devices % num_slices:
        raise ConfigError(f"mesh: {num_devices} devices do not split into {num_slices} slices")
    dcn = _fill([mesh_cfg.dcn_data, mesh_cfg.dcn_fsdp, mesh_cfg.dcn_tensor], num_slices,
                ("dcn_data", "dcn_fsdp", "dcn_tensor"))
    ici = _fill([mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor], num_devices // num_slices,
                ("data", "fsdp", "tensor"))
    return ici, dcn


def _num_slices(devices) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """A `Mesh` with axes (data, fsdp, tensor), Auto axis types, over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    slices = _num_slices(devices)
    by_process = False
    if slices == 1 and (mesh_cfg.dcn_data, mesh_cfg.dcn_fsdp, mesh_cfg.dcn_tensor) != (1, 1, 1):
        # GPU clusters have no TPU slices: the DCN axes then run across processes (hosts).
        slices, by_process = len({d.process_index for d in devices}), True
    ici, dcn = mesh_shape(mesh_cfg, len(devices), slices)
    types = (AxisType.Auto,) * len(MESH_AXES)
    if slices > 1:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process,
                                                    allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=types)
    shape = tuple(i * d for i, d in zip(ici, dcn))
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)
    except (ValueError, NotImplementedError):
        # Device kinds without a known physical layout (e.g. some AOT topologies): plain order.
        return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=types)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_RULES) -> P:
    """PartitionSpec for one array: each logical name mapped by `rules`, dropping mesh axes
    that do not divide the dimension or are already used by an earlier dimension."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        kept = []
        size = 1
        for ax in axes:
            n = mesh.shape[ax]
            if ax in used or n == 1 or dim % (size * n):
                continue
            kept.append(ax)
            size *= n
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=LOGICAL_RULES):
    """Pytree of `NamedSharding` matching the params of `cfg`."""
    from llada_jax.model.transformer import param_logical_axes, param_shapes

    axes = param_logical_axes(cfg)
    shapes = param_shapes(cfg)
    return jax.tree.map(lambda spec, s: NamedSharding(mesh, logical_to_spec(tuple(spec), s.shape, mesh, rules)),
                        axes, shapes, is_leaf=lambda x: isinstance(x, P))


def with_shardings(shapes, shardings):
    """`ShapeDtypeStruct`s of `shapes` carrying the matching `shardings` (restore / AOT targets)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def tree_shardings_like(tree_shapes, params_shapes, params_shards, mesh: Mesh):
    """Shardings for a tree (e.g. optimizer state) whose leaves may mirror the params.

    A leaf whose key path ends with a param's key path and has that param's shape gets the
    param's sharding (AdamW moments); every other leaf (counts, scalars) is replicated.
    """
    by_path = {}
    for path, sh in jax.tree_util.tree_flatten_with_path(params_shards)[0]:
        by_path[tuple(path)] = sh
    shape_by_path = {tuple(p): s.shape for p, s in jax.tree_util.tree_flatten_with_path(params_shapes)[0]}
    lengths = sorted({len(p) for p in by_path}, reverse=True)
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        path = tuple(path)
        for n in lengths:
            tail = path[-n:]
            if len(path) >= n and tail in by_path and shape_by_path[tail] == tuple(leaf.shape):
                return by_path[tail]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree_shapes)


def batch_spec(ndim: int = 2) -> P:
    """Rows split over the data and fsdp axes, every other dimension whole."""
    return P(BATCH_AXES, *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(ndim))


def batch_divisor(mesh: Mesh) -> int:
    """The number of row shards: the global batch must be a multiple of it."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays sharded by `batch_sharding`.

    Every process passes its own slice of the global batch (rows in process order), as the
    per-process data pipeline produces it.
    """
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out
