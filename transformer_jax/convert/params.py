"""Hub weights -> our parameter tree: the checks and bookkeeping every importer shares.

An importer lists `Entry`s: (Hub tensor name, our parameter path, the Hub shape,
to_ours(array), to_hub(array)); `convert_entries` checks the weights against them and
against the shapes our model expects, and builds the nested parameter dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# Float dtypes NumPy does not count as floating (ml_dtypes) that checkpoints may hold.
ML_FLOATS = ("bfloat16", "float8_e4m3fn", "float8_e5m2")

Entry = tuple[str, tuple[str, ...], tuple[int, ...], Callable, Callable]


def shown(names: list[str]) -> str:
    """The first three names, and how many more, for a one-line message."""
    more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
    return f"{names[:3]}{more}"


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{path: leaf} of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def param_shapes(model, *inputs) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path: shape} of `model.init(key, *inputs)["params"]`, without computing them."""
    import flax.linen as nn
    import jax

    tree = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *inputs)["params"]))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def convert_entries(
    weights: dict[str, np.ndarray],
    entries: list[Entry],
    ignored: set[str],
    expected: dict[tuple[str, ...], tuple[int, ...]],
) -> dict[str, Any]:
    """Our parameters (float32) from the Hub `weights`; one-line ValueErrors for a missing
    or unexpected tensor, a shape other than the Hub config implies, a non-float dtype, or
    a tensor that does not fit the parameter `expected` (from `param_shapes`) names."""
    missing = [name for name, *_ in entries if name not in weights]
    if missing:
        raise ValueError(f"the safetensors weights lack {shown(missing)}")
    known = {name for name, *_ in entries} | ignored
    unexpected = sorted(set(weights) - known)
    if unexpected:
        raise ValueError(f"the safetensors weights have unexpected tensors {shown(unexpected)}")
    params: dict[str, Any] = {}
    for name, path, hf_shape, to_ours, _ in entries:
        array = weights[name]
        if tuple(array.shape) != hf_shape:
            raise ValueError(
                f"weight {name} has shape {tuple(array.shape)}, config.json implies {hf_shape}"
            )
        if not (np.issubdtype(array.dtype, np.floating) or array.dtype.name in ML_FLOATS):
            raise ValueError(f"weight {name} has non-float dtype {array.dtype}")
        value = np.ascontiguousarray(to_ours(array.astype(np.float32)))
        if expected.get(path) != value.shape:
            raise ValueError(f"weight {name} does not fit parameter {'/'.join(path)}")
        set_path(params, path, value)
    return params
