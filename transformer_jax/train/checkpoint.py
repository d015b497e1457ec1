"""Orbax checkpoints: train state, data-iterator position, configs and tokenizer in one step.

Each step directory is written to a temporary name and renamed when complete
(Orbax's atomic commit), so a run killed mid-save never leaves a step that
restore would pick up.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "config", "model", "tokenizer")


class CheckpointError(ValueError):
    pass


def _path_name(path) -> str:
    """`opt_state/0/0/mu/...`: the same for a dataclass or namedtuple and its saved dict/list."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def checkpoint_dir(workdir: str, averaged: bool = False) -> str:
    from transformer_jax.train import paths

    return paths.join(paths.resolve(workdir), "checkpoints_averaged" if averaged else "checkpoints")


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with this project's items."""

    def __init__(self, directory: str, keep: int = 5, async_save: bool = True, read_only=False):
        self.directory = directory
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
            # Leftovers of a save that was killed mid-write are never restored
            # (they lack Orbax's commit); remove them when the run restarts.
            cleanup_tmp_directories=not read_only,
        )
        # Handlers given up front, so a fresh manager can read the metadata of saved items.
        handlers = {name: ocp.JsonCheckpointHandler() for name in ITEMS if name != "state"}
        handlers["state"] = ocp.StandardCheckpointHandler()
        self.manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(
        self,
        step: int,
        *,
        state,
        data: dict,
        config: dict,
        model: dict,
        tokenizer: dict,
        force: bool = False,
    ) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(config),
                model=ocp.args.JsonSave(model),
                tokenizer=ocp.args.JsonSave(tokenizer),
            ),
            force=force,
        )

    def restore_meta(self, step: int) -> dict[str, Any]:
        """The JSON items of a step: data, config, model, tokenizer."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
                model=ocp.args.JsonRestore(),
                tokenizer=ocp.args.JsonRestore(),
            ),
        )
        return {k: out[k] for k in ("data", "config", "model", "tokenizer")}

    def state_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """Flattened "path -> shape" of the saved state, read from metadata only."""
        meta = self.manager.item_metadata(step)["state"]
        flat = jax.tree_util.tree_flatten_with_path(meta)[0]
        return {_path_name(p): tuple(getattr(v, "shape", ())) for p, v in flat}

    def restore_state(self, step: int, abstract_state):
        """Restores onto the shardings carried by `abstract_state` (any mesh)."""
        saved = self.state_shapes(step)
        wanted = {
            _path_name(p): tuple(v.shape)
            for p, v in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
        }
        for path, shape in wanted.items():
            if path not in saved:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} has no {path}: "
                    "it was written by a different model"
                )
            if saved[path] != shape:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} holds {path} with shape "
                    f"{saved[path]}, the configured model needs {shape}: different model size"
                )
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return out["state"]

    def restore_state_on_host(self, step: int):
        """The saved state as host (numpy) arrays, whatever topology wrote it.

        Without a target Orbax restores onto the saving run's devices, which fails
        for a checkpoint written by several processes or another device count.
        """
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            self.manager.item_metadata(step)["state"],
        )
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return jax.device_get(out["state"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def quarantine(ckpt: Checkpointer, step: int, workdir: str) -> str | None:
    """Moves a damaged step out of the checkpoint folder (kept for inspection)."""
    import time

    import jax

    from transformer_jax.train import paths

    src = paths.join(ckpt.directory, str(step))
    dst = paths.join(workdir, "damaged_checkpoints", f"{step}-{int(time.time())}")
    if jax.process_index() == 0 and paths.isdir(src):
        paths.move(src, dst)
    if jax.process_count() > 1:  # every host sees the move before listing steps again
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    ckpt.manager.reload()
    return dst


def steps_to_try(ckpt: Checkpointer, step: int | None) -> list[int]:
    """The step asked for, or every saved step newest first (for falling back)."""
    steps = ckpt.all_steps()
    if step is None:
        return list(reversed(steps))
    if step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {ckpt.directory} (have {steps})")
    return [step]


def damage_reason(e: BaseException) -> str:
    """One line (at most 200 characters) saying why a step could not be read."""
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:200]
