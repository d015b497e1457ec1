"""Loading a workdir's checkpoint for inference (translate, eval, pipelines)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from transformer_jax.data.tokenizer_io import tokenizers_from_json
from transformer_jax.nn.config import TransformerConfig, config_from_json
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
    model_config: TransformerConfig
    src_tokenizer: Any
    tgt_tokenizer: Any
    run_config: ml_collections.ConfigDict
    step: int

    @property
    def decode_settings(self) -> dict[str, Any]:
        return decode_settings(self.run_config)


def decode_settings(run_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A run config's decoding settings, as `TranslationPipeline` fields.

    Keys an older run config lacks take their defaults (the paper's GNMT scoring).
    """
    d = run_config.decode
    return {
        "beam_size": d.beam_size,
        "alpha": d.alpha,
        "length_penalty_type": d.get("length_penalty_type", "gnmt"),
        "length_penalty": d.get("length_penalty", 1.0),
        "early_stopping": d.get("early_stopping", "false"),
        "forced_eos": d.get("forced_eos", False),
        "extra_length": d.extra_length,
        "max_decode_len": d.max_decode_len,
        "max_source_len": run_config.data.max_length,
    }


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
    """Params (as saved, on the default device), configs and tokenizers of one step.

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
                src, tgt = ckpt.decode(
                    candidate, "tokenizer", tokenizers_from_json, meta["tokenizer"]
                )
                model_config = ckpt.decode(candidate, "model", config_from_json, meta["model"])
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
    return Loaded(params, model_config, src, tgt, cfg, candidate)
