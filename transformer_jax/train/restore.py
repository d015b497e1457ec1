"""Loading a workdir's checkpoint for inference (eval, pipelines)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from transformer_jax.config import make_task
from transformer_jax.data.processors import processors_from_json
from transformer_jax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    DamagedCheckpoint,
    checkpoint_dir,
    steps_to_try,
)


@dataclasses.dataclass
class Loaded:
    params: Any
    model_config: Any
    processors: dict[str, Any]
    run_config: ml_collections.ConfigDict
    step: int


def open_checkpoints(workdir: str, averaged: bool = False) -> Checkpointer:
    from transformer_jax.train import paths

    if not paths.isdir(workdir):
        raise CheckpointError(f"workdir {workdir} does not exist")
    directory = checkpoint_dir(workdir, averaged)
    if not paths.isdir(directory):
        what = "averaged checkpoint (run `tjax average` first)" if averaged else "checkpoint"
        raise CheckpointError(f"no {what} in {workdir}")
    return Checkpointer(directory, read_only=True)


def load_for_inference(workdir: str, *, step: int | None = None, averaged: bool = False) -> Loaded:
    """Params (as saved, on the default device), configs and processors of one step.

    Every item is verified against the step's checksums. Without `step`, a damaged
    step (`checkpoint.damage_evidence`) is skipped with a message for the one
    before it; an asked-for step that is damaged is a one-line `DamagedCheckpoint`.
    Any other error is raised as it is, and nothing is moved.
    """
    ckpt = open_checkpoints(workdir, averaged)
    try:
        if not ckpt.all_steps():
            raise CheckpointError(f"no checkpoint in {ckpt.directory}: train or import first")
        candidates = steps_to_try(ckpt, step)
        for i, candidate in enumerate(candidates):
            try:
                meta = ckpt.restore_meta(candidate)
                # The run's task reads its model config (and registers its processor types).
                task = make_task(ml_collections.ConfigDict(meta["config"]))
                processors = ckpt.decode(
                    candidate, "tokenizer", processors_from_json, meta["tokenizer"]
                )
                model_config = ckpt.decode(candidate, "model", task.config_from_json, meta["model"])
                state = ckpt.restore_state_on_host(candidate)
                break
            except DamagedCheckpoint as e:
                if step is not None or i + 1 == len(candidates):
                    raise
                print(
                    f"checkpoint step {candidate} is damaged ({e.reason}); "
                    f"using step {candidates[i + 1]}",
                    file=sys.stderr,
                )
    finally:
        ckpt.close()
    cfg = ml_collections.ConfigDict(meta["config"])
    # Uncommitted arrays (from host copies): jitted eval/decoding may place them on any
    # mesh, rather than failing on params pinned to the one device they were read onto.
    params = jax.tree.map(lambda x: jax.numpy.asarray(np.asarray(x)), state["params"])
    return Loaded(params, model_config, processors, cfg, candidate)
