"""Device mesh, logical-axis rules per strategy, and placing host batches on it.

The model names logical axes only ("batch", "embed", "heads", ...). A strategy
is a table mapping logical axes to mesh axes; flax picks, for each array, the
first rule whose mesh axis is not already taken by another dimension.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

RULES: dict[str, tuple[tuple[str, object], ...]] = {
    # Replicated parameters, batch split over every device.
    "data_parallel": (("batch", ("data", "fsdp")),),
    # ZeRO-3 style: parameters and optimizer state split along "embed" over fsdp.
    "fsdp": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
    ),
    # FSDP plus Megatron-style tensor parallelism over heads / mlp / vocab.
    "fsdp_tensor": (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
    ),
}


class MeshError(ValueError):
    pass


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    if sum(s == -1 for s in sizes) > 1:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise MeshError(
            f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, "
            f"but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    # Auto axes: shardings are propagated by the compiler from our annotations.
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def rules_for(name: str) -> tuple[tuple[str, object], ...]:
    if name not in RULES:
        raise MeshError(f"unknown sharding rules {name!r}; choose one of {sorted(RULES)}")
    return RULES[name]


def logical_shardings(abstract_tree, mesh: Mesh, rules):
    """NamedShardings for a tree of (possibly LogicallyPartitioned) abstract values."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Stitches each host's rows into one global array sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
