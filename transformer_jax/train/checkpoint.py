"""Orbax checkpoints: train state, data-iterator position, configs and tokenizer in one step.

Each step directory is written to a temporary name and renamed when complete
(Orbax's atomic commit), so a run killed mid-save never leaves a step that
restore would pick up.

Every step also holds a `checksums` item, written in the same commit: a 64-bit
hash of each state array (computed on device, see `tree_checksums`) and a
SHA-256 of each JSON item. Every read of a step verifies them, so bytes that
changed on disk are found even where Orbax reads them back without complaint
(inside an OCDBT data file, an edited iterator position). Steps without the
item (written before it existed) are read unverified.

Reading a step either succeeds, raises `DamagedCheckpoint` (evidence that the
step's files are not what was written, see `damage_evidence`: the caller may
fall back to an older step and set this one aside), or raises a one-line
`CheckpointError` or the original error: never a reason to set a step aside.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

JSON_ITEMS = ("data", "config", "model", "tokenizer")
CHECKSUMS = "checksums"
ITEMS = ("state", *JSON_ITEMS, CHECKSUMS)
# The hash of `tree_checksums`; a step recording another one is read unverified.
HASH_NAME = "fmix32x2-v1"


class CheckpointError(ValueError):
    pass


class DamagedCheckpoint(CheckpointError):
    """A step whose files are not what was written: fall back to an older step."""

    def __init__(self, step: int, directory: str, reason: str):
        super().__init__(f"checkpoint step {step} in {directory} is damaged ({reason})")
        self.step, self.reason = step, reason


# -- what counts as damage ----------------------------------------------------------------

# tensorstore raises ValueError("<STATUS>: ..."). Reading a committed step, these
# statuses say its bytes or files are not what was written ...
DAMAGE_STATUSES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "FAILED_PRECONDITION")
# ... these that the storage could not be read now (the step itself may be fine).
ACCESS_STATUSES = (
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "CANCELLED",
)


def _chain(e: BaseException):
    """e, then what caused it (Orbax wraps tensorstore errors in a plain Exception)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = (
            e.__cause__
            if e.__cause__ is not None
            else None
            if e.__suppress_context__
            else e.__context__
        )


def damage_evidence(e: BaseException) -> bool:
    """True when `e`, raised while reading a committed step, shows its files are damaged.

    Evidence of damage (the step may be set aside):
      * `DamagedCheckpoint`: a checksum mismatch, a missing item, malformed metadata;
      * a file of the step missing (FileNotFoundError, NotADirectoryError, IsADirectoryError)
        or ending early (EOFError);
      * a JSON file that does not decode (JSONDecodeError, UnicodeDecodeError);
      * a tensorstore read error with a status in DAMAGE_STATUSES (truncated, undecodable
        or missing OCDBT/zarr data), also when Orbax wraps it.
    Not evidence (the step stays where it is):
      * any other OSError (PermissionError, I/O or network errors) and tensorstore
        statuses in ACCESS_STATUSES: the storage, not the step;
      * everything else: a config error, a different model, out of memory, a bug.
    The first entry of the cause chain that is classified decides.
    """
    for x in _chain(e):
        if isinstance(x, DamagedCheckpoint):
            return True
        if isinstance(x, CheckpointError):
            return False
        if isinstance(x, (FileNotFoundError, NotADirectoryError, IsADirectoryError, EOFError)):
            return True
        if isinstance(x, OSError):
            return False
        if isinstance(x, (json.JSONDecodeError, UnicodeDecodeError)):
            return True
        if isinstance(x, ValueError):
            status = str(x).split(":", 1)[0].strip()
            if status in DAMAGE_STATUSES:
                return True
            if status in ACCESS_STATUSES:
                return False
    return False


def damage_reason(e: BaseException) -> str:
    """One line (at most 200 characters) saying why a step could not be read."""
    if isinstance(e, DamagedCheckpoint):
        return e.reason[:200]
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:200]


def _agree(outcome: int) -> int:
    """The worst outcome over all processes (0 ok, 1 damaged, 2 error).

    Every process then takes the same branch: none falls back, or goes on to
    verify the checksums (which every process must join), while another stops.
    """
    if jax.process_count() == 1:
        return outcome
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([outcome], np.int32))))


# -- checksums ------------------------------------------------------------------------------

_M1, _M2, _GOLDEN = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35), np.uint32(0x9E3779B9)


def _fmix(h):
    """MurmurHash3's 32-bit finalizer: a bijection of uint32 that mixes every bit."""
    h = h ^ (h >> 16)
    h = h * _M1
    h = h ^ (h >> 13)
    h = h * _M2
    return h ^ (h >> 16)


def _words(x) -> jax.Array:
    """The array's bytes as uint32 words, one per element (two per 8-byte element)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([x.real, x.imag], axis=-1)
    size = x.dtype.itemsize
    if size < 4:
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    # 4 bytes: the same shape; 8 bytes: a trailing axis of 2 words.
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _word_shape(shape, dtype) -> tuple[int, ...]:
    """The shape of `_words` of an array: its own, plus a trailing axis for wide types."""
    return tuple(jax.eval_shape(_words, jax.ShapeDtypeStruct(tuple(shape), dtype)).shape)


def _strides(shape) -> np.ndarray:
    """Row-major strides of `shape` in words, modulo 2**32 (positions wrap like the sums)."""
    out, stride = [], 1
    for n in reversed(shape):
        out.append(stride % 2**32)
        stride *= n
    return np.asarray(out[::-1], np.uint32)


def _hash_words(w, starts, strides) -> jax.Array:
    """[2] uint32: two position-keyed sums over the words `w` of a block of an array.

    The block starts at `starts` (in words) of an array with `strides`, so the
    position of each word is its row-major index in the whole array. Each term is
    a bijection of its word, so changing any one word always changes both sums;
    the sums of the blocks of an array add up (uint32 wraps exactly) to the sums
    of the whole array, whatever its sharding.
    """
    pos = jnp.zeros(w.shape, jnp.uint32)
    for d in range(w.ndim):  # from iotas: no reshape of a sharded block
        pos = pos + (jax.lax.broadcasted_iota(jnp.uint32, w.shape, d) + starts[d]) * strides[d]
    a = jnp.sum(_fmix(w ^ _fmix(pos)), dtype=jnp.uint32)
    b = jnp.sum(_fmix(w + pos * _GOLDEN + np.uint32(1)), dtype=jnp.uint32)
    return jnp.stack([a, b])


@jax.jit
def _local_hash(x, starts, strides) -> jax.Array:
    """The sums of one block held by one device (or of host values)."""
    return _hash_words(_words(x), starts, strides)


@functools.cache
def _sharded_hasher(mesh, spec, shape, dtype) -> Callable:
    """Per-device sums of an array with NamedSharding(mesh, spec), with no communication.

    Returns [devices, 2] uint32, one row per device: the sums of its block with
    global positions, or zeros on devices that hold a replica of a block another
    device (index 0 along the unused mesh axes) already counts.
    """
    wshape = _word_shape(shape, dtype)
    strides = _strides(wshape)
    spec = tuple(spec) + (None,) * (len(wshape) - len(spec))
    names = [() if a is None else a if isinstance(a, tuple) else (a,) for a in spec]
    unused = [a for a in mesh.axis_names if not any(a in n for n in names)]

    def block_sums(block):
        w = _words(block)
        starts = []
        for d, axes in enumerate(names):
            index = jnp.uint32(0)
            for a in axes:  # the first axis of a tuple is the major one
                index = index * np.uint32(mesh.shape[a]) + jax.lax.axis_index(a).astype(jnp.uint32)
            starts.append(index * np.uint32(w.shape[d] % 2**32))
        first = jnp.bool_(True)
        for a in unused:
            first = first & (jax.lax.axis_index(a) == 0)
        sums = _hash_words(w, starts, strides) * first.astype(jnp.uint32)
        return sums.reshape(1, 2)

    every = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
    return jax.jit(
        jax.shard_map(
            block_sums, mesh=mesh, in_specs=jax.sharding.PartitionSpec(*spec), out_specs=every
        )
    )


def _evenly_sharded(x) -> bool:
    sharding = x.sharding
    for d, axes in enumerate(sharding.spec):
        names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
        if x.shape[d] % math.prod(sharding.mesh.shape[a] for a in names):
            return False
    return True


def _partial_sums(x) -> list:
    """Device arrays whose uint32 sum is this process's part of x's sums (dispatched only)."""
    if not isinstance(x, jax.Array):  # host values
        wshape = _word_shape(np.shape(x), jax.dtypes.canonicalize_dtype(np.asarray(x).dtype))
        return [_local_hash(x, np.zeros(len(wshape), np.uint32), _strides(wshape))]
    sharding = x.sharding
    split = isinstance(sharding, jax.sharding.NamedSharding) and not sharding.is_fully_replicated
    if split and _evenly_sharded(x):  # every device its own block, in one program
        out = _sharded_hasher(sharding.mesh, sharding.spec, x.shape, x.dtype)(x)
        return [s.data for s in out.addressable_shards]
    # One device, a replicated array or any other layout: each block once (replica 0).
    wshape = _word_shape(x.shape, x.dtype)
    parts = []
    for s in x.addressable_shards:
        if s.replica_id == 0:
            starts = [sl.indices(n)[0] for sl, n in zip(s.index, x.shape)]
            starts += [0] * (len(wshape) - len(starts))
            parts.append(_local_hash(s.data, np.asarray(starts, np.uint32), _strides(wshape)))
    return parts


def tree_checksums(tree) -> dict[str, dict[str, Any]]:
    """path -> {shape, dtype, hash} of every array of `tree`, computed on device.

    Each device hashes the block it holds (no communication, only 8 bytes per
    device leave it): non-addressable shards are never fetched. In a multi-host
    run the per-process parts of arrays that span processes are added up with
    one all-gather, so every process gets the same result and must call this at
    the same point. Arrays are hashed in their canonical JAX dtype (a Python int
    or an int64 array as int32 unless x64 is on), so what is saved and what is
    restored agree.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    # Outside the caller's mesh context (a training step's): single-device blocks
    # are hashed where they are, which jit refuses under another context mesh.
    with jax.set_mesh(None):
        parts = [_partial_sums(x) for _, x in flat]  # all dispatched before any is fetched
    sums = np.zeros((len(flat), 2), np.uint64)
    for i, leaf_parts in enumerate(jax.device_get(parts)):
        for p in leaf_parts:
            sums[i] += np.asarray(p, np.uint64).reshape(-1, 2).sum(axis=0)
    sums %= 2**32
    spans = [
        i
        for i, (_, x) in enumerate(flat)
        if isinstance(x, jax.Array) and not x.is_fully_addressable
    ]
    if spans:  # the same on every process: the tree's layout is
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(sums[spans].astype(np.uint32))
        sums[spans] = np.asarray(gathered, np.uint64).sum(axis=0) % 2**32
    out = {}
    for (path, x), row in zip(flat, sums):
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        out[path_name(path)] = {
            "shape": list(np.shape(x)),
            "dtype": np.dtype(jax.dtypes.canonicalize_dtype(dtype)).name,
            "hash": f"{int(row[0]):08x}{int(row[1]):08x}",
        }
    return out


def json_checksum(value: Any) -> str:
    """SHA-256 of a JSON item in a canonical form (the same before saving and after reading)."""
    canonical = json.loads(json.dumps(value))
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# -- the checkpointer -----------------------------------------------------------------------


def path_name(path) -> str:
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


def has_train_state(meta: dict[str, Any]) -> bool:
    """False for a step holding parameters alone (no optimizer or data position), e.g.
    one written by `tjax import-hf`: a run starts from it rather than resuming it."""
    return bool(meta.get("data"))


def checkpoint_dir(workdir: str, averaged: bool = False) -> str:
    from transformer_jax.train import paths

    return paths.join(paths.resolve(workdir), "checkpoints_averaged" if averaged else "checkpoints")


def check_import(src_dir: str, workdir: str, what: str = "Hugging Face model") -> str:
    """`src_dir` as a path, after one-line errors for a missing source folder and for a
    workdir that already holds checkpoints (an import writes step 0 of a fresh run)."""
    src_dir = os.fspath(src_dir)
    if not os.path.isdir(src_dir):
        raise ValueError(f"{what} directory {src_dir} does not exist")
    ckpt_dir = checkpoint_dir(workdir)
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise ValueError(f"{workdir} already holds checkpoints; import into a fresh workdir")
    return src_dir


def save_imported(
    workdir: str, params, *, config: dict[str, Any], model: Any, tokenizer: Any
) -> None:
    """Writes converted parameters as step 0 of `workdir` (no optimizer state, no data
    position: a run starts from it), with the run config (also as the workdir's
    config.json), the model config and the processors, all as JSON."""
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(checkpoint_dir(workdir), keep=1)
    try:
        ckpt.save(
            0,
            state={"step": 0, "params": params, "opt_state": {}},
            data={},
            config=config,
            model=model,
            tokenizer=tokenizer,
            force=True,
        )
    finally:
        ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


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
        """Writes one step (asynchronously), with the checksums of everything in it.

        The array hashes are computed on device before Orbax copies the state to
        the host; in a multi-host run every process calls this (a collective).
        """
        items = dict(data=data, config=config, model=model, tokenizer=tokenizer)
        checksums = {
            "hash": HASH_NAME,
            "arrays": tree_checksums(state),
            "json": {name: json_checksum(value) for name, value in items.items()},
        }
        args = {name: ocp.args.JsonSave(value) for name, value in items.items()}
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                checksums=ocp.args.JsonSave(checksums),
                **args,
            ),
            force=force,
        )

    # -- reading: every read goes through `_read`, every result is verified --

    def _read(self, step: int, fn: Callable[[], Any]) -> Any:
        """fn(), with its failure classified (`damage_evidence`) the same on every process."""
        try:
            out, err = fn(), None
        except Exception as e:
            out, err = None, e
        mine = 0 if err is None else 1 if damage_evidence(err) else 2
        outcome = _agree(mine)
        if outcome == 0:
            return out
        if err is None:
            reason = "another process " + ("found it damaged" if outcome == 1 else "failed")
        else:
            reason = damage_reason(err)
        if outcome == 1:
            if isinstance(err, DamagedCheckpoint):
                raise err
            raise DamagedCheckpoint(step, self.directory, reason) from err
        if isinstance(err, CheckpointError):
            raise err
        raise CheckpointError(
            f"cannot read checkpoint step {step} in {self.directory} ({reason}); "
            "it was left in place"
        ) from err

    def _item_dir(self, step: int, name: str) -> str:
        from transformer_jax.train import paths

        return paths.join(self.directory, str(step), name)

    def _check_items(self, step: int, names) -> None:
        from transformer_jax.train import paths

        for name in names:
            if not paths.isdir(self._item_dir(step, name)):
                raise DamagedCheckpoint(step, self.directory, f"its {name} item is missing")

    def has_checksums(self, step: int) -> bool:
        """False for steps written before checksums existed (read unverified)."""
        from transformer_jax.train import paths

        return paths.isdir(self._item_dir(step, CHECKSUMS))

    def _checksums(self, step: int) -> dict | None:
        """The step's checksum record (None: unverifiable), checked for its layout."""
        if not self.has_checksums(step):
            return None
        out = self.manager.restore(step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore()))
        return self._valid_record(step, out["checksums"])

    def _valid_record(self, step: int, record: Any) -> dict | None:
        ok = (
            isinstance(record, dict)
            and isinstance(record.get("arrays"), dict)
            and isinstance(record.get("json"), dict)
        )
        if not ok:
            raise DamagedCheckpoint(step, self.directory, "its checksums item is malformed")
        return record if record.get("hash") == HASH_NAME else None

    def _verify_json(self, step: int, items: dict[str, Any], record: dict | None) -> None:
        if record is None:
            return
        for name, value in items.items():
            want = record["json"].get(name)
            if want != json_checksum(value):
                what = "has no checksum" if want is None else "does not match its checksum"
                raise DamagedCheckpoint(step, self.directory, f"its {name} item {what}")

    def _verify_state(self, step: int, state, record: dict | None) -> None:
        """Hashes the restored arrays where they are (a collective on a multi-host mesh)."""
        if record is None:
            return
        saved = record["arrays"]
        bad = [
            path
            for path, entry in tree_checksums(state).items()
            if not isinstance(saved.get(path), dict) or saved[path].get("hash") != entry["hash"]
        ]
        if bad:
            raise DamagedCheckpoint(
                step,
                self.directory,
                f"{len(bad)} state array(s) do not match their checksums, first {bad[0]}",
            )

    def restore_meta(self, step: int) -> dict[str, Any]:
        """The JSON items of a step: data, config, model, tokenizer (verified)."""

        def read():
            self._check_items(step, JSON_ITEMS)
            names = JSON_ITEMS + ((CHECKSUMS,) if self.has_checksums(step) else ())
            out = self.manager.restore(
                step, args=ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in names})
            )
            items = {k: out[k] for k in JSON_ITEMS}
            record = self._valid_record(step, out[CHECKSUMS]) if CHECKSUMS in names else None
            self._verify_json(step, items, record)
            return items

        return self._read(step, read)

    def decode(self, step: int, name: str, fn: Callable[[Any], Any], value: Any) -> Any:
        """fn(value) for the JSON item `name` of a step (a tokenizer, a model config).

        When the step's checksums verified the item, it holds what was written, so
        a failure is an incompatibility (a one-line CheckpointError); in a step
        without checksums it is taken for damage, as a read error would be.
        """
        try:
            return fn(value)
        except Exception as e:
            if self.has_checksums(step):
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory}: its {name} item cannot be "
                    f"used ({damage_reason(e)})"
                ) from e
            raise DamagedCheckpoint(step, self.directory, damage_reason(e)) from e

    def _state_metadata(self, step: int) -> dict[str, tuple[tuple[int, ...], Any]]:
        self._check_items(step, ("state",))
        meta = self.manager.item_metadata(step)["state"]
        if meta is None:
            raise DamagedCheckpoint(step, self.directory, "its state metadata is unreadable")
        flat = jax.tree_util.tree_flatten_with_path(meta)[0]
        return {
            path_name(p): (tuple(getattr(v, "shape", ())), getattr(v, "dtype", None))
            for p, v in flat
        }

    def state_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """Flattened "path -> shape" of the saved state, read from metadata only."""
        saved = self._read(step, lambda: self._state_metadata(step))
        return {path: shape for path, (shape, _) in saved.items()}

    def restore_state(self, step: int, abstract_state):
        """Restores onto the shardings carried by `abstract_state` (any mesh), verified."""
        saved, record = self._read(
            step, lambda: (self._state_metadata(step), self._checksums(step))
        )
        flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
        targets = []
        for p, v in flat:
            path = path_name(p)
            if path not in saved:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} has no {path}: "
                    "it was written by a different model"
                )
            shape, dtype = saved[path]
            if shape != tuple(v.shape):
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} holds {path} with shape "
                    f"{shape}, the configured model needs {tuple(v.shape)}: different model size"
                )
            # Read as saved (the checksum is of the saved bytes), cast afterwards.
            saved_dtype = jax.dtypes.canonicalize_dtype(dtype) if dtype is not None else v.dtype
            targets.append(jax.ShapeDtypeStruct(v.shape, saved_dtype, sharding=v.sharding))
        target = jax.tree_util.tree_unflatten(treedef, targets)
        state = self._read(
            step,
            lambda: self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )["state"],
        )
        self._verify_state(step, state, record)
        return jax.tree.map(
            lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype), state, abstract_state
        )

    def restore_state_on_host(self, step: int):
        """The saved state as host (numpy) arrays, whatever topology wrote it; verified.

        Without a target Orbax restores onto the saving run's devices, which fails
        for a checkpoint written by several processes or another device count.
        """
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def read():
            record = self._checksums(step)
            self._check_items(step, ("state",))
            meta = self.manager.item_metadata(step)["state"]
            if meta is None:
                raise DamagedCheckpoint(step, self.directory, "its state metadata is unreadable")
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta
            )
            out = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
            return out["state"], record

        state, record = self._read(step, read)
        self._verify_state(step, state, record)
        return jax.device_get(state)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def quarantine(ckpt: Checkpointer, step: int, workdir: str) -> str | None:
    """Moves a damaged step out of the checkpoint folder (kept for inspection)."""
    import time

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
