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

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv_heads", "kv", "mlp", "vocab", "layers")

RULES: dict[str, tuple[tuple[str, object], ...]] = {
    # Replicated parameters, batch split over every device.
    "data_parallel": (("batch", ("data", "fsdp")),),
    # ZeRO-3 style: parameters and optimizer state split along "embed" over fsdp.
    "fsdp": (
        ("batch", ("data", "fsdp")),
        ("length", "sequence"),
        ("embed", "fsdp"),
    ),
    # FSDP plus Megatron-style tensor parallelism over heads / mlp / vocab.
    "fsdp_tensor": (
        ("batch", ("data", "fsdp")),
        ("length", "sequence"),
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
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
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
    if devices is None:
        devices = jax.devices()
        wanted = int(mesh_cfg.get("num_devices", 0))
        if wanted:
            if wanted > len(devices) or wanted < 0:
                raise MeshError(f"mesh.num_devices={wanted}, but {len(devices)} devices exist")
            devices = devices[:wanted]
    shape = mesh_shape(mesh_cfg, len(devices))
    # Auto axes: shardings are propagated by the compiler from our annotations.
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def rules_for(spec: str) -> tuple[tuple[str, object], ...]:
    """A named strategy, or a custom table "batch:data+fsdp,embed:fsdp,mlp:tensor"."""
    if spec in RULES:
        return RULES[spec]
    if ":" not in spec:
        raise MeshError(f"unknown sharding rules {spec!r}; choose one of {sorted(RULES)}")
    rules = []
    for item in spec.split(","):
        logical, _, mesh_axes = item.strip().partition(":")
        axes = tuple(a for a in mesh_axes.split("+") if a)
        if logical not in LOGICAL_AXES:
            raise MeshError(
                f"sharding rule {item.strip()!r} names unknown logical axis {logical!r}; "
                f"known: {', '.join(LOGICAL_AXES)}"
            )
        for a in axes:
            if a not in MESH_AXES:
                raise MeshError(
                    f"sharding rule {item.strip()!r} names unknown mesh axis {a!r}; "
                    f"known: {', '.join(MESH_AXES)}"
                )
        rules.append((logical, axes[0] if len(axes) == 1 else (axes or None)))
    return tuple(rules)


def logical_shardings(abstract_tree, mesh: Mesh, rules):
    """NamedShardings for a tree of (possibly LogicallyPartitioned) abstract values.

    A dimension its mesh axes do not divide (e.g. a vocabulary of 32001 over a
    tensor axis of 2) is replicated instead of split.
    """
    specs = nn.get_partition_spec(abstract_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    boxed = lambda x: isinstance(x, nn.meta.AxisMetadata)
    values = jax.tree.map(lambda x: x.value if boxed(x) else x, abstract_tree, is_leaf=boxed)
    return jax.tree.map(_fit_shape, values, shardings)


def _fit_shape(x, sharding: NamedSharding) -> NamedSharding:
    spec = list(sharding.spec)
    for d, axes in enumerate(spec):
        names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
        if x.shape[d] % math.prod(sharding.mesh.shape[a] for a in names):
            spec[d] = None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


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
