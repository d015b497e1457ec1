"""Finding a workdir's latest good checkpoint, for training and for inference (eval, pipelines)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar

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
    quarantine,
    steps_to_try,
)

T = TypeVar("T")


@dataclasses.dataclass
class Found:
    """What `restore_latest_good` read: the step (None: none was readable) and its value."""

    step: int | None
    value: Any
    damaged: list[int]  # steps found damaged, newest first


def restore_latest_good(
    ckpt: Checkpointer,
    read: Callable[[int], T],
    *,
    step: int | None = None,
    training_workdir: str | None = None,
) -> Found:
    """read(step) of the newest step that is not damaged, or of the one asked for.

    Without `step`, a step whose read raises `DamagedCheckpoint` (see
    `checkpoint.damage_evidence`) is reported and the one before it is tried; an
    asked-for `step` never falls back. For training (`training_workdir` given) a
    damaged step is moved to `<workdir>/damaged_checkpoints` and, when every step
    is damaged, nothing is returned (the run starts over); for inference nothing
    is moved and the oldest step's damage is raised. Other errors pass through.
    """
    from transformer_jax.train.metrics import log

    candidates = steps_to_try(ckpt, step)
    damaged: list[int] = []
    for i, candidate in enumerate(candidates):
        try:
            return Found(candidate, read(candidate), damaged)
        except DamagedCheckpoint as e:
            older = candidates[i + 1] if i + 1 < len(candidates) else None
            if step is not None or (training_workdir is None and older is None):
                raise
            damaged.append(candidate)
            if training_workdir is None:
                print(
                    f"checkpoint step {candidate} is damaged ({e.reason}); using step {older}",
                    file=sys.stderr,
                )
                continue
            log(
                f"checkpoint step {candidate} is damaged ({e.reason}); "
                + (f"falling back to step {older}" if older is not None else "starting over")
            )
            quarantine(ckpt, candidate, training_workdir)
    return Found(None, None, damaged)


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

    def read(candidate: int):
        meta = ckpt.restore_meta(candidate)
        # The run's task reads its model config (and registers its processor types).
        task = make_task(ml_collections.ConfigDict(meta["config"]))
        processors = ckpt.decode(candidate, "tokenizer", processors_from_json, meta["tokenizer"])
        model_config = ckpt.decode(candidate, "model", task.config_from_json, meta["model"])
        return meta, processors, model_config, ckpt.restore_state_on_host(candidate)

    try:
        if not ckpt.all_steps():
            raise CheckpointError(f"no checkpoint in {ckpt.directory}: train or import first")
        found = restore_latest_good(ckpt, read, step=step)
    finally:
        ckpt.close()
    meta, processors, model_config, state = found.value
    cfg = ml_collections.ConfigDict(meta["config"])
    # Uncommitted arrays (from host copies): jitted eval/decoding may place them on any
    # mesh, rather than failing on params pinned to the one device they were read onto.
    params = jax.tree.map(lambda x: jax.numpy.asarray(np.asarray(x)), state["params"])
    return Loaded(params, model_config, processors, cfg, found.step)


# -- init_from: a new run's parameters from another checkpoint --------------------------------


def init_source(path: str) -> Checkpointer:
    """The checkpoints a run's `train.init_from` names: a workdir (another run's, or one
    written by `tjax import-hf`) or its checkpoints folder."""
    from transformer_jax.train import paths

    if not paths.isdir(path):
        raise CheckpointError(f"train.init_from: {path} does not exist")
    directory = checkpoint_dir(path)
    if not paths.isdir(directory):
        directory = paths.resolve(path)  # the checkpoints folder itself
    ckpt = Checkpointer(directory, read_only=True)
    if not ckpt.all_steps():
        ckpt.close()
        raise CheckpointError(f"train.init_from: no checkpoint in {path}")
    return ckpt


def _shown(names: list[str], most: int = 4) -> str:
    more = f", ... (+{len(names) - most})" if len(names) > most else ""
    return ", ".join(names[:most]) + more


@dataclasses.dataclass
class Matched:
    """Parameters of a model matched with a checkpoint's, by path name."""

    loaded: dict[str, np.ndarray]  # path -> the checkpoint's value, cast to the model's dtype
    new: list[str]  # in the model only: freshly initialised
    dropped: list[str]  # in the checkpoint only: not used

    def summary(self) -> str:
        n = sum(x.size for x in self.loaded.values())
        line = f"loaded {len(self.loaded)} parameter arrays ({n:,} values)"
        line += f"; new (freshly initialised): {len(self.new)}"
        if self.new:
            line += f" [{_shown(self.new)}]"
        line += f"; dropped (not in the model): {len(self.dropped)}"
        if self.dropped:
            line += f" [{_shown(self.dropped)}]"
        return line


def match_params(abstract_params, saved_params, where: str) -> Matched:
    """Pairs the model's parameters (shapes) with saved ones by path name and shape.

    A name in both with different shapes is a one-line `CheckpointError` naming it.
    """
    from transformer_jax.train.checkpoint import path_name

    want = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    have = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(saved_params)[0]}
    loaded = {}
    for name, a in want.items():
        if name not in have:
            continue
        b = np.asarray(have[name])
        if tuple(b.shape) != tuple(a.shape):
            raise CheckpointError(
                f"{where}: parameter {name} has shape {tuple(b.shape)} there, "
                f"the model needs {tuple(a.shape)}"
            )
        loaded[name] = b.astype(a.dtype) if b.dtype != a.dtype else b
    return Matched(
        loaded,
        new=[k for k in want if k not in have],
        dropped=[k for k in have if k not in want],
    )
