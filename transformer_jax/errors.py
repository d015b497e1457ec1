"""The errors a user can cause; the CLI prints them as one line."""

from __future__ import annotations

from transformer_jax.config import ConfigError
from transformer_jax.pipelines import InputError
from transformer_jax.train.checkpoint import CheckpointError
from transformer_jax.train.distributed import DistributedInitError
from transformer_jax.train.preemption import Preempted
from transformer_jax.train.sharding import MeshError
from transformer_jax.train.trainer import TrainingError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    InputError,
    MeshError,
    DistributedInitError,
    TrainingError,
    FileNotFoundError,
    ValueError,
)

# Exit statuses of `tjax`: 0 done, 2 user error, 75 stopped by a signal after
# saving a checkpoint (rerun to resume), 130 interrupted.
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = Preempted.exit_code
