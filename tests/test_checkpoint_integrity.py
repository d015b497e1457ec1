"""Checkpoint integrity: checksums of every saved item, and what may set a step aside.

Bytes changed inside an OCDBT data file or an edited iterator position restore
without any error from Orbax; the checksums written with each step find them, and
training and inference fall back to the previous step. Errors that are not
evidence of damage (a bad config, a permission error, a failure while building
the model) stop the run with one line and leave every checkpoint where it is.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import (
    TINY_CONFIG,
    TRAINED_STEPS,
    compilation_cache,
    run_hosts,
    summary_line,
    tiny_config,
    tiny_overrides,
)

from transformer_jax.__main__ import main
from transformer_jax.config import ConfigError
from transformer_jax.train import checkpoint as ckpt_lib
from transformer_jax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    DamagedCheckpoint,
    checkpoint_dir,
    damage_evidence,
    json_checksum,
    tree_checksums,
)
from transformer_jax.train.restore import load_for_inference
from transformer_jax.train.trainer import Setup, average_checkpoints

LATEST, PREVIOUS = TRAINED_STEPS, TRAINED_STEPS - 4
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def _jit_cache(tmp_path_factory):
    with compilation_cache(tmp_path_factory):
        yield


# -- helpers --------------------------------------------------------------------------------


def copy_workdir(src: str, dst) -> str:
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("checkpoints_averaged", "eval_*.json", "*.tmp")
    )
    return str(dst)


def listing(workdir: str) -> dict[str, list[str]]:
    """Every file under the checkpoint folders (what must stay in place)."""
    out = {}
    for sub in ("checkpoints", "damaged_checkpoints"):
        root = os.path.join(workdir, sub)
        out[sub] = sorted(
            os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
        )
    return out


def one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


def unverified_state(step_dir: str):
    """The state as Orbax alone reads it (no checksums): flat `path -> array`."""
    ckpt = Checkpointer(os.path.dirname(step_dir), read_only=True)
    try:
        step = int(os.path.basename(step_dir))
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            ckpt.manager.item_metadata(step)["state"],
        )
        out = ckpt.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        flat = jax.tree_util.tree_flatten_with_path(out["state"])[0]
        return {ckpt_lib.path_name(p): np.asarray(v) for p, v in flat}
    finally:
        ckpt.close()


def flip_array_bytes(step_dir: str) -> str:
    """Flips 4 bytes inside the stored bytes of one array (params first) in OCDBT data files.

    zstd keeps incompressible blocks verbatim and without a checksum, so some arrays'
    bytes lie in the data files as they are in memory. This finds a 32-byte run of
    one and changes it; a run that is not what Orbax reads back (a copy the step's
    folder holds but does not use) is put back and the next one tried. Returns the
    array's path; Orbax alone then reads the array back changed, without an error.
    """
    arrays = unverified_state(step_dir)
    files = sorted(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True))
    order = sorted(arrays, key=lambda k: (not k.startswith("params/"), k))
    for name in order:
        raw = arrays[name].tobytes()
        unread: set[str] = set()  # files whose copy of this array Orbax does not read
        for start in range(0, len(raw) - 32, 32):
            window = raw[start : start + 32]
            if len(set(window)) < 16:  # zeros and repeats are not unique
                continue
            for path in files:
                if path in unread:
                    continue
                blob = open(path, "rb").read()
                at = blob.find(window)
                if at < 0 or blob.find(window, at + 1) >= 0:
                    continue
                flipped = bytes(b ^ 0xFF for b in blob[at + 8 : at + 12])
                with open(path, "r+b") as f:
                    f.seek(at + 8)
                    f.write(flipped)
                if not np.array_equal(unverified_state(step_dir)[name], arrays[name]):
                    return name
                with open(path, "r+b") as f:  # not the copy that is read: put it back
                    f.seek(at + 8)
                    f.write(blob[at + 8 : at + 12])
                unread.add(path)
    raise AssertionError("no array's bytes are stored verbatim in the step's data files")


def edit_iterator_position(step_dir: str) -> str:
    """Moves the saved data-iterator read position on by one (valid JSON throughout)."""
    path = os.path.join(step_dir, "data", "metadata")
    data = json.loads(open(path).read())
    it = json.loads(data["iterator"])
    level = it
    while "next_index" not in level:  # the read position sits under the wrapping datasets' state
        level = level["parent"]
    level["next_index"] += 1
    data["iterator"] = json.dumps(it, separators=(",", ":"))
    with open(path, "w") as f:
        f.write(json.dumps(data))
    return "data"


# -- 1. what counts as damage ---------------------------------------------------------------


def _wrapped(inner: BaseException) -> Exception:
    """What Orbax raises around a tensorstore read error."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise Exception("Encountered error while reading array index") from e
    except Exception as outer:
        return outer


@pytest.mark.parametrize(
    "error, damage",
    [
        (DamagedCheckpoint(4, "/ckpt", "1 state array(s) do not match their checksums"), True),
        (FileNotFoundError(errno.ENOENT, "No such file", "state/_METADATA"), True),
        (json.JSONDecodeError("Expecting value", "", 0), True),
        (UnicodeDecodeError("utf-8", b"\x80", 0, 1, "invalid start byte"), True),
        (ValueError("DATA_LOSS: Error decoding b-tree node"), True),
        (ValueError("OUT_OF_RANGE: Requested byte range [0, 221086) is not valid"), True),
        (_wrapped(ValueError("NOT_FOUND: Error reading local file")), True),
        (ValueError('FAILED_PRECONDITION: Error reading "state/_sharding": Invalid JSON'), True),
        (PermissionError(errno.EACCES, "Permission denied", "state/d/0a1b"), False),
        (OSError(errno.EIO, "Input/output error"), False),
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (ValueError("PERMISSION_DENIED: Error reading local file"), False),
        (_wrapped(ValueError("UNAVAILABLE: connection reset")), False),
        (
            ConfigError("config key 'model.remat'='ful': choose one of ('none', 'full', 'dots')"),
            False,
        ),
        (
            CheckpointError("the checkpoint in /ckpt is a different model (d_model: 32 vs 64)"),
            False,
        ),
        (ValueError("model.num_heads=0: must be positive"), False),
        (ZeroDivisionError("integer division or modulo by zero"), False),
        (RuntimeError("RESOURCE_EXHAUSTED: out of memory"), False),
        (KeyError("params"), False),
    ],
)
def test_damage_evidence_is_an_explicit_classification(error, damage):
    assert damage_evidence(error) is damage


# -- 2. the checksums themselves ------------------------------------------------------------


def test_array_checksums_ignore_sharding_and_see_every_word():
    rng = np.random.default_rng(0)
    host = {
        "f32": rng.standard_normal((16, 6)).astype(np.float32),
        "bf16": rng.standard_normal((8, 4)).astype(jax.numpy.bfloat16),
        "i8": rng.integers(-100, 100, (8, 3)).astype(np.int8),
        "mask": rng.random((8,)) > 0.5,
        "step": 7,
    }
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    P = jax.sharding.PartitionSpec
    specs = {"f32": P("data", "fsdp"), "bf16": P("fsdp"), "i8": P(), "mask": P("data"), "step": P()}
    sharded = {
        k: jax.device_put(np.asarray(v), jax.sharding.NamedSharding(mesh, specs[k]))
        for k, v in host.items()
    }
    want = tree_checksums(host)
    assert tree_checksums(sharded) == want  # the sharding does not matter
    with jax.set_mesh(mesh):  # as a training step saves: under its mesh
        assert tree_checksums(sharded) == want
        assert tree_checksums(jax.device_put(host, jax.devices()[3])) == want
    # A Python int, an int64 numpy scalar and an int32 array: one canonical dtype.
    assert tree_checksums({"step": np.int64(7)}) == {"step": want["step"]}
    assert want["step"]["dtype"] == "int32" and want["f32"]["shape"] == [16, 6]

    base = host["f32"]
    seen = {want["f32"]["hash"]}
    for flat_index, bit in [(0, 0), (17, 31), (95, 7), (50, 22)]:
        changed = base.copy().reshape(-1).view(np.uint32)
        changed[flat_index] ^= np.uint32(1 << bit)
        seen.add(tree_checksums({"f32": changed.view(np.float32).reshape(16, 6)})["f32"]["hash"])
    swapped = base.copy()
    swapped[[3, 9]] = swapped[[9, 3]]
    seen.add(tree_checksums({"f32": swapped})["f32"]["hash"])
    assert len(seen) == 6  # every change gives another hash
    flipped = host["mask"].copy()
    flipped[5] = not flipped[5]
    assert tree_checksums({"mask": flipped}) != {"mask": want["mask"]}

    # JSON items: key order and tuple/list do not matter, values do.
    a = {"iterator": '{"next_index":246}', "counts": (1, 2), "x": 0.1}
    assert json_checksum(a) == json_checksum({"x": 0.1, "counts": [1, 2], **a})
    assert json_checksum(a) != json_checksum(dict(a, iterator='{"next_index":247}'))


MULTIHOST_WORKER = textwrap.dedent(
    """
    import json, sys
    from transformer_jax.train import distributed
    distributed.initialize()
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from transformer_jax.train.checkpoint import tree_checksums

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "fsdp"))
    full = (np.arange(8 * 6, dtype=np.float32).reshape(8, 6) * 0.37) ** 2
    steps = np.arange(3, dtype=np.int32)
    tree = {
        # Spans both processes: no process can fetch it, each hashes its own shards.
        "sharded": jax.make_array_from_callback(
            full.shape, NamedSharding(mesh, P(("data", "fsdp"))), lambda i: full[i]
        ),
        "replicated": jax.make_array_from_callback(
            steps.shape, NamedSharding(mesh, P()), lambda i: steps[i]
        ),
    }
    assert not tree["sharded"].is_fully_addressable
    print("SUMS " + json.dumps(tree_checksums(tree)), flush=True)
    """
)


def test_checksums_of_arrays_that_span_two_hosts():
    outs = run_hosts(MULTIHOST_WORKER, 2, timeout=300)
    full = (np.arange(8 * 6, dtype=np.float32).reshape(8, 6) * 0.37) ** 2
    want = tree_checksums({"sharded": full, "replicated": np.arange(3, dtype=np.int32)})
    for i, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"process {i}:\n{out[-2000:]}\n{err[-4000:]}"
        # (the collectives library prints to the same stdout, maybe mid-line)
        got = json.JSONDecoder().raw_decode(out[out.index("SUMS ") + len("SUMS ") :])[0]
        assert got == want, i


# -- 3. damaged bytes: training and inference fall back ------------------------------------


@pytest.mark.parametrize("damage", ["array_bytes", "iterator_position"])
def test_changed_bytes_are_found_and_the_previous_step_is_used(
    damage, trained, data_dir, tmp_path, capsys, request
):
    workdir = copy_workdir(trained, tmp_path / "copy")
    step_dir = os.path.join(checkpoint_dir(workdir), str(LATEST))
    ckpt = Checkpointer(checkpoint_dir(workdir), read_only=True)
    assert ckpt.all_steps()[-2:] == [PREVIOUS, LATEST] and ckpt.has_checksums(LATEST)
    ckpt.close()
    if damage == "array_bytes":
        before = unverified_state(step_dir)
        what = flip_array_bytes(step_dir)
        # Orbax alone reads the changed bytes back without complaint.
        after = unverified_state(step_dir)
        assert not np.array_equal(before[what], after[what], equal_nan=True), what
        reason = "do not match their checksums"
    else:
        what = edit_iterator_position(step_dir)
        reason = "its data item does not match its checksum"

    # An explicit step is a one-line error naming it; nothing is moved.
    with pytest.raises(DamagedCheckpoint) as e:
        load_for_inference(workdir, step=LATEST)
    message = one_line(str(e.value))
    assert f"checkpoint step {LATEST} in " in message and "is damaged" in message
    assert reason in message
    if damage == "array_bytes":
        assert what in message
    # Inference falls back to the previous step and says so.
    assert load_for_inference(workdir).step == PREVIOUS
    err = capsys.readouterr().err
    assert f"checkpoint step {LATEST} is damaged (" in err and reason in err
    assert f"using step {PREVIOUS}" in err
    # Averaging reads (and verifies) the same way.
    with pytest.raises(CheckpointError, match=f"step {LATEST} .*is damaged"):
        average_checkpoints(workdir, 2)
    assert os.path.isdir(step_dir)

    # Training sets the step aside and resumes from the previous one.
    cfg = tiny_config(data_dir, train__num_steps=LATEST + 4, train__checkpoint_every=4)
    setup = Setup(cfg, workdir, for_training=True)
    try:
        assert setup.step == PREVIOUS and setup.damaged == [LATEST]
        assert int(setup.initial_state().step) == PREVIOUS
    finally:
        setup.ckpt.close()
    out = capsys.readouterr().out
    assert f"checkpoint step {LATEST} is damaged (" in out and reason in out
    assert f"falling back to step {PREVIOUS}" in out
    assert not os.path.exists(step_dir)
    damaged = os.listdir(os.path.join(workdir, "damaged_checkpoints"))
    assert len(damaged) == 1 and damaged[0].startswith(f"{LATEST}-")
    summary_line(
        request.config,
        f"integrity drill: {damage.replace('_', ' ')} of step {LATEST} changed ({what}) -> "
        f"found by its checksum; inference and training fell back to step {PREVIOUS}",
    )


def test_steps_without_checksums_still_restore(trained, data_dir, tmp_path):
    """Checkpoints written before checksums existed are read (unverified)."""
    workdir = copy_workdir(trained, tmp_path / "copy")
    for step_dir in glob.glob(os.path.join(checkpoint_dir(workdir), "*")):
        shutil.rmtree(os.path.join(step_dir, "checksums"))
    ckpt = Checkpointer(checkpoint_dir(workdir), read_only=True)
    assert not ckpt.has_checksums(LATEST)
    ckpt.close()
    assert load_for_inference(workdir).step == LATEST
    cfg = tiny_config(data_dir, train__num_steps=LATEST + 4, train__checkpoint_every=4)
    setup = Setup(cfg, workdir, for_training=True)
    try:
        assert setup.step == LATEST and setup.damaged == []
    finally:
        setup.ckpt.close()


# -- 4. errors that are not damage never move a checkpoint ---------------------------------


@pytest.mark.parametrize(
    "override", ["model.remat=ful", "model.num_heads=0", "model.dropout_rate=1.0"]
)
def test_invalid_model_override_on_resume_keeps_every_checkpoint(
    override, trained, data_dir, tmp_path, capsys
):
    workdir = copy_workdir(trained, tmp_path / "copy")
    before = listing(workdir)
    key, value = override.split("=")
    argv = ["train", "--config", TINY_CONFIG, "--workdir", workdir]
    argv += [f"--config.{o}" for o in tiny_overrides(data_dir, train__num_steps=LATEST + 4)]
    assert main([*argv, f"--config.{override}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tjax train: error: "), lines
    assert key.split(".")[1] in lines[0]
    assert listing(workdir) == before

    # The same setting reaching the trainer past the config file's checks (a config
    # built in code): reported as a config error, before any checkpoint is read.
    cfg = tiny_config(data_dir, train__num_steps=LATEST + 4)
    group, name = key.split(".")
    cfg[group][name] = type(cfg[group][name])(value)
    with pytest.raises(ConfigError) as e:
        Setup(cfg, workdir, for_training=True)
    assert name in one_line(str(e.value))
    assert listing(workdir) == before
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))

    # The corrected command resumes from the latest step.
    setup = Setup(tiny_config(data_dir, train__num_steps=LATEST + 4), workdir, for_training=True)
    try:
        assert setup.step == LATEST and setup.damaged == []
    finally:
        setup.ckpt.close()


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied", "state/d/0a1b"),
        OSError(errno.EIO, "Input/output error"),
        ValueError("PERMISSION_DENIED: Error reading local file state/d/0a1b"),
    ],
    ids=["PermissionError", "EIO", "tensorstore-PERMISSION_DENIED"],
)
def test_read_errors_that_are_not_damage_move_nothing(
    error, trained, data_dir, tmp_path, monkeypatch
):
    workdir = copy_workdir(trained, tmp_path / "copy")
    before = listing(workdir)
    monkeypatch.setattr(ocp.CheckpointManager, "restore", _raise(error))
    cfg = tiny_config(data_dir, train__num_steps=LATEST + 4)
    with pytest.raises(CheckpointError) as e:
        Setup(cfg, workdir, for_training=True)
    assert not isinstance(e.value, DamagedCheckpoint)
    message = one_line(str(e.value))
    assert message.startswith(f"cannot read checkpoint step {LATEST} in ")
    assert type(error).__name__ in message and "left in place" in message
    # Inference does not quietly use an older step either.
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint step {LATEST} "):
        load_for_inference(workdir)
    assert listing(workdir) == before


def test_errors_while_building_the_model_move_nothing(trained, data_dir, tmp_path, monkeypatch):
    workdir = copy_workdir(trained, tmp_path / "copy")
    before = listing(workdir)
    # Raised after the step's JSON items were read, while tracing the model's state.
    monkeypatch.setattr(Setup, "abstract_state", _raise(ZeroDivisionError("in the model")))
    with pytest.raises(ZeroDivisionError):
        Setup(tiny_config(data_dir, train__num_steps=LATEST + 4), workdir, for_training=True)
    # A checkpoint of another model: a one-line error, not damage.
    monkeypatch.undo()
    cfg = tiny_config(data_dir, train__num_steps=LATEST + 4, model__d_model=64)
    with pytest.raises(CheckpointError, match="is a different model") as e:
        Setup(cfg, workdir, for_training=True)
    assert not isinstance(e.value, DamagedCheckpoint)
    assert listing(workdir) == before


# -- 5. every writer writes checksums -------------------------------------------------------


def test_imported_and_averaged_checkpoints_carry_checksums(trained, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_marian_import import _write_marian

    from transformer_jax.tasks.translation.marian import import_marian

    src = tmp_path / "marian"
    src.mkdir()
    _write_marian(src)
    imported = str(tmp_path / "imported")
    import_marian(str(src), imported)
    ckpt = Checkpointer(checkpoint_dir(imported), read_only=True)
    assert ckpt.all_steps() == [0] and ckpt.has_checksums(0)
    record = ckpt._checksums(0)
    ckpt.close()
    step_dir = os.path.join(checkpoint_dir(imported), "0")
    assert set(record["arrays"]) == set(unverified_state(step_dir)) and record["arrays"]
    assert set(record["json"]) == {"data", "config", "model", "tokenizer"}
    assert load_for_inference(imported).step == 0  # verified
    path = os.path.join(step_dir, "model", "metadata")
    model = json.loads(open(path).read())
    with open(path, "w") as f:
        f.write(json.dumps(dict(model, eos_id=model["eos_id"] + 1)))
    with pytest.raises(DamagedCheckpoint, match="its model item does not match its checksum"):
        load_for_inference(imported)

    workdir = copy_workdir(trained, tmp_path / "copy")
    average_checkpoints(workdir, 2)
    averaged = Checkpointer(checkpoint_dir(workdir, averaged=True), read_only=True)
    assert averaged.has_checksums(LATEST)
    averaged.close()
    assert load_for_inference(workdir, averaged=True).step == LATEST  # verified


def test_checksum_cost_on_the_tiny_model(trained, request):
    """Measured, not asserted against a bound: it is reported with the fault drills."""
    ckpt = Checkpointer(checkpoint_dir(trained), read_only=True)
    state = ckpt.restore_state_on_host(LATEST)
    ckpt.close()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    on_mesh = jax.block_until_ready(jax.device_put(state, replicated))
    tree_checksums(on_mesh)  # compiled once per array shape
    start = time.perf_counter()
    for _ in range(5):
        sums = tree_checksums(on_mesh)
    per_save = (time.perf_counter() - start) / 5
    n = sum(np.size(x) for x in jax.tree.leaves(state))
    assert len(sums) == len(jax.tree.leaves(state))
    summary_line(
        request.config,
        f"checksums: {len(sums)} arrays ({n:,} values) hashed on 8 devices in "
        f"{per_save * 1e3:.1f} ms per save",
    )
