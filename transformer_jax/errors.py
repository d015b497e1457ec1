"""The errors a user can cause; the CLI prints them as one line."""

from __future__ import annotations

from transformer_jax.config import ConfigError
from transformer_jax.pipelines import InputError
from transformer_jax.train.checkpoint import CheckpointError
from transformer_jax.train.sharding import MeshError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    InputError,
    MeshError,
    FileNotFoundError,
    ValueError,
)
