"""Errors a user can cause: one line naming the problem, exit 2 (75 for SIGTERM), workdir unchanged.

Storage faults are real where this machine allows: a read-only bind mount and a
small tmpfs (root), or permission bits (non-root). Root ignores permission bits,
so the unreadable-checkpoint case runs `tjax` without the capabilities that let
it (`setpriv`). Cases the machine cannot stage are skipped, saying why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys

import ml_collections
import pytest
from helpers import TINY_CONFIG, compilation_cache, subprocess_env, tiny_overrides

from transformer_jax.__main__ import main
from transformer_jax.config import ConfigError, load_config
from transformer_jax.errors import storage_problem
from transformer_jax.pipelines import InputError
from transformer_jax.tasks.translation.config import translation_base
from transformer_jax.tasks.translation.pipeline import TranslationPipeline


@pytest.fixture(scope="module", autouse=True)
def _jit_cache(tmp_path_factory):
    with compilation_cache(tmp_path_factory):
        yield


def run_main(argv) -> int:
    """`main(argv)`; an argparse-style exit (SystemExit) counts as its status."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def one_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith((f"tjax {command}: ", "tjax: error: ")), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(path) -> dict[str, tuple]:
    """Every entry below path: files by size, mtime and content; folders by presence."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), path)] = ("dir",)
        for name in files:
            full = os.path.join(root, name)
            st = os.stat(full)
            with open(full, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def train_argv(data_dir, workdir, *extra, config=TINY_CONFIG) -> list[str]:
    overrides = [f"--config.{o}" for o in tiny_overrides(data_dir)]
    return ["train", "--config", config, "--workdir", str(workdir), *overrides, *extra]


@pytest.fixture(scope="module")
def run_copy(trained, tmp_path_factory):
    """A copy of the trained workdir that every test here must leave exactly as it is."""
    path = tmp_path_factory.mktemp("user_errors") / "run"
    shutil.copytree(trained, path)
    return path


# -- config ---------------------------------------------------------------------------------

BAD_OVERRIDES = [
    ("train.num_steps=1e99", "must be below 2**31"),
    ("optimizer.lr_scale=inf", "must be a finite number"),
    ("optimizer.lr_scale=nan", "must be a finite number"),
    ("model.remat=ful", "choose one of none, full, dots"),
    ("model.num_heads=0", "must be >= 1"),
    ("model.num_heads=3", "must divide model.d_model=32"),
    ("model.num_kv_heads=3", "must divide model.num_heads=2"),
    ("model.dropout_rate=1.0", "must be in [0, 1)"),
    ("model.activation=gelu2", "choose one of"),
    ("model.norm_position=middle", "choose one of"),
    ("model.attention_impl=fast", "choose one of"),
    ("model.position_layout=spiral", "choose one of"),
    ("model.layer_norm_eps=0", "must be > 0"),
    ("model.d_ff=0", "must be >= 1"),
    ("model.num_decoder_layers=0", "must be >= 1"),
    ("optimizer.b1=1", "must be in [0, 1)"),
    ("optimizer.b2=-0.1", "must be in [0, 1)"),
    ("optimizer.eps=0", "must be > 0"),
    ("optimizer.warmup_steps=0", "must be >= 1"),
    ("train.label_smoothing=1", "must be in [0, 1)"),
    ("decode.alpha=-1", "must be >= 0"),
    ("decode.alpha=inf", "must be a finite number"),
    ("decode.extra_length=-1", "must be >= 0"),
    ("decode.batch_size=0", "must be >= 1"),
    ("data.eval_tokens_per_batch=8", "must be >= data.max_length=32"),
    ("mesh.data=0", "must be >= 1, or -1"),
    ("mesh.fsdp=-1", "at most one mesh axis may be -1"),
    ("mesh.rules=zigzag", "unknown sharding rules"),
    ("seed=-1", "must be >= 0"),
]


@pytest.mark.parametrize("override, why", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_fails_before_the_workdir_is_read(override, why, data_dir, run_copy, capfd):
    """Resuming with a bad value: a config error naming the key, never checkpoint damage."""
    before = snapshot(run_copy)
    assert run_main(train_argv(data_dir, run_copy, f"--config.{override}")) == 2
    line = one_line(capfd.readouterr().err, "train")
    key = override.split("=")[0]
    assert f"config key '{key}'=" in line and why in line, line
    assert snapshot(run_copy) == before


def _leaves(cfg, prefix=""):
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


NUMERIC_KEYS = [k for k, v in _leaves(translation_base()) if type(v) in (int, float)]


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_every_number_must_be_finite_and_in_range(key):
    value = dict(_leaves(translation_base()))[key]
    bad = ["inf", "-inf", "nan", "1e300"] if isinstance(value, float) else ["1e99", "-1e99"]
    for text in bad:
        with pytest.raises(ConfigError) as e:
            load_config(TINY_CONFIG, [f"{key}={text}"])
        assert f"config key '{key}'=" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "body, needle",
    [
        ("raise RuntimeError('no data folder set')", "get_config() raised RuntimeError: no data"),
        ("return None", "get_config() returned NoneType"),
        ("return {'task': 'translation'}", "get_config() returned dict"),
        (
            "c = ml_collections.ConfigDict(); c.task = 'translation'; return c",
            "lacks config key 'data.batching' and",
        ),
    ],
    ids=["raises", "none", "dict", "partial"],
)
def test_config_file_whose_get_config_fails(body, needle, tmp_path, capfd):
    config = tmp_path / "my_config.py"
    config.write_text(f"import ml_collections\n\n\ndef get_config():\n    {body}\n")
    workdir = tmp_path / "run"
    assert run_main(["train", "--config", str(config), "--workdir", str(workdir)]) == 2
    line = one_line(capfd.readouterr().err, "train")
    assert str(config) in line and needle in line, line
    assert not workdir.exists()


# -- translate and eval arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--beam-size", "0"], "--beam-size must be >= 1, got 0"),
        (["--beam-size", "-2"], "--beam-size must be >= 1, got -2"),
        (["--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
)
def test_translate_sizes_below_one(args, needle, run_copy, capfd):
    before = snapshot(run_copy)
    assert run_main(["translate", "--workdir", str(run_copy), *args, "I am."]) == 2
    out, err = capfd.readouterr()
    assert needle in one_line(err, "translate") and out == ""
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "field, value",
    [
        ("beam_size", 0),
        ("beam_size", -1),
        ("batch_size", 0),
        ("batch_size", -1),
        ("batch_size", 2.5),
        ("extra_length", -1),
        ("max_decode_len", 0),
        ("alpha", float("nan")),
        ("alpha", -0.5),
    ],
)
def test_pipeline_refuses_bad_decoding_settings(field, value):
    with pytest.raises(InputError) as e:
        TranslationPipeline(
            params={}, model_config=None, src_tokenizer=None, tgt_tokenizer=None, **{field: value}
        )
    assert field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("option", ["--limit", "--loss-batches"])
def test_eval_negative_counts(option, run_copy, capfd):
    before = snapshot(run_copy)
    assert run_main(["eval", "--workdir", str(run_copy), option, "-1"]) == 2
    assert f"{option} must be >= 0" in one_line(capfd.readouterr().err, "eval")
    assert snapshot(run_copy) == before


# -- the workdir -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "eval", "translate", "average"])
def test_workdir_that_is_a_file(command, data_dir, tmp_path, capfd):
    path = tmp_path / "notes.txt"
    path.write_text("not a run\n")
    argv = {
        "train": train_argv(data_dir, path),
        "eval": ["eval", "--workdir", str(path)],
        "translate": ["translate", "--workdir", str(path), "I am."],
        "average": ["average", "--workdir", str(path)],
    }[command]
    assert run_main(argv) == 2
    line = one_line(capfd.readouterr().err, command)
    assert f"workdir {path} is a file, not a folder" in line
    assert path.read_text() == "not a run\n" and os.listdir(tmp_path) == ["notes.txt"]


def test_workdir_below_a_file(data_dir, tmp_path, capfd):
    path = tmp_path / "notes.txt"
    path.write_text("")
    assert run_main(train_argv(data_dir, path / "run")) == 2
    line = one_line(capfd.readouterr().err, "train")
    assert f"{path} is a file, not a folder" in line
    assert os.listdir(tmp_path) == ["notes.txt"]


def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only(tmp_path):
    """read_only(path): path becomes read-only (a read-only bind mount as root, else chmod)."""
    mounted, chmodded = [], []

    def make(path):
        if os.geteuid() == 0:
            if not (shutil.which("mount") and _mount("--bind", "-o", "ro", str(path), str(path))):
                pytest.skip("root without bind mounts: cannot make a folder read-only for root")
            mounted.append(path)
        else:
            for root, dirs, _ in os.walk(path):
                for d in [root, *(os.path.join(root, x) for x in dirs)]:
                    os.chmod(d, 0o555)
                    chmodded.append(d)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)
    for d in chmodded:
        os.chmod(d, 0o755)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_read_only_workdir(command, data_dir, trained, tmp_path, read_only, capfd):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    read_only(run)
    before = snapshot(run)
    argv = (
        train_argv(data_dir, run, "--config.train.num_steps=40")
        if command == "train"
        else ["eval", "--workdir", str(run), "--limit", "4"]
    )
    assert run_main(argv) == 2
    line = one_line(capfd.readouterr().err, command)
    assert f"workdir {run} is not writable (" in line, line
    assert snapshot(run) == before


def test_new_workdir_in_a_read_only_folder(data_dir, tmp_path, read_only, capfd):
    parent = tmp_path / "shared"
    parent.mkdir()
    read_only(parent)
    assert run_main(train_argv(data_dir, parent / "run")) == 2
    line = one_line(capfd.readouterr().err, "train")
    assert f"cannot create workdir {parent / 'run'}: {parent} is not writable (" in line
    assert os.listdir(parent) == []


def unprivileged() -> list[str]:
    """A command prefix that runs `tjax` subject to permission bits, or skips."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: permission bits do not apply to root")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize(
    "command, what", [("train", "folder"), ("eval", "step"), ("translate", "folder")]
)
def test_unreadable_checkpoints(command, what, data_dir, trained, tmp_path, tmp_path_factory):
    """Not damage: nothing is set aside, nothing is written; one line names what is unreadable."""
    prefix = unprivileged()
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    folder = run / "checkpoints"
    locked = folder if what == "folder" else folder / max(os.listdir(folder), key=int)
    before = snapshot(run)
    argv = {
        "train": train_argv(data_dir, run, "--config.train.num_steps=40"),
        "eval": ["eval", "--workdir", str(run)],
        "translate": ["translate", "--workdir", str(run), "I am."],
    }[command]
    os.chmod(locked, 0)
    try:
        proc = subprocess.run(
            [*prefix, os.path.join(os.path.dirname(sys.executable), "tjax"), *argv],
            capture_output=True,
            text=True,
            env=subprocess_env(tmp_path_factory),
            timeout=300,
        )
    finally:
        os.chmod(locked, 0o755)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc.stderr, command)
    where = "" if what == "folder" else f": {locked}"
    assert f"checkpoint folder {folder} cannot be read{where} (Permission denied)" in line, line
    assert proc.stdout == ""
    assert snapshot(run) == before


# -- a full disk -------------------------------------------------------------------------------


def test_storage_problem_names_the_path_and_the_problem():
    """The text tensorstore raises from Orbax's background save, and plain OSErrors."""
    tmp = "/runs/a/checkpoints/6.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0"
    raised = ValueError(
        f'RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database at local file '
        f'"{tmp}/": Failed writing: "{tmp}/d/6fc0": Failed to write 60097 bytes to file 9: '
        "No space left on device [os_error_code='28']"
    )
    try:
        try:
            raise raised
        except ValueError as inner:
            raise RuntimeError("Save Finalize thread failed") from inner
    except RuntimeError as wrapped:
        line = storage_problem(wrapped)
    assert line.startswith("no space left on device while saving checkpoint step 6 in ")
    assert "/runs/a/checkpoints" in line
    line = storage_problem(OSError(errno.EROFS, "Read-only file system", "/runs/a/metrics.jsonl"))
    assert line == "read-only file system: cannot write /runs/a/metrics.jsonl"
    line = storage_problem(PermissionError(errno.EACCES, "Permission denied", "/runs/a/x"))
    assert line == "permission denied: /runs/a/x"
    # A write that fails without a file name (a flush, a tensorstore chunk) names the workdir.
    nameless = OSError(errno.ENOSPC, "No space left on device")
    assert storage_problem(nameless, where="/runs/a") == (
        "no space left on device while writing under /runs/a"
    )
    assert storage_problem(nameless) == "no space left on device"
    assert storage_problem(ValueError("DATA_LOSS: corrupt")) is None
    assert storage_problem(OSError(errno.EIO, "Input/output error")) is None


@pytest.fixture
def small_disk(tmp_path):
    """A 4.5 MB tmpfs (root only): room for one checkpoint of the tiny model, not two."""
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=4500k", "tmpfs", str(path)):
        pytest.skip("no tmpfs mount here (needs root): a full disk cannot be staged")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_full_disk_stops_in_one_line_and_the_rerun_resumes(data_dir, small_disk, capfd):
    run = small_disk / "run"
    # A checkpoint every step, all kept: far more than 4.5 MB (about 0.35 MB a step), whatever
    # the file system's block accounting.
    steps_wanted = 30
    argv = train_argv(
        data_dir,
        run,
        f"--config.train.num_steps={steps_wanted}",
        "--config.train.checkpoint_every=1",
        "--config.train.keep_checkpoints=100",
    )
    assert run_main(argv) == 2
    out, err = capfd.readouterr()
    line = one_line(err, "train")
    assert "no space left on device" in line and str(run) in line, line
    steps = sorted(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit())
    assert steps and steps[-1] < steps_wanted  # complete steps only; the unfinished one is not one
    # More room: the same command resumes from the last complete checkpoint and finishes.
    assert _mount("-o", "remount,size=512m", str(small_disk))
    assert run_main(argv) == 0, capfd.readouterr().err
    out, _ = capfd.readouterr()
    assert f"resuming from step {steps[-1]}" in out
    assert steps_wanted in [int(s) for s in os.listdir(run / "checkpoints") if s.isdigit()]
    assert not [s for s in os.listdir(run / "checkpoints") if "tmp" in s]


# -- SIGTERM during start-up -------------------------------------------------------------------


def test_sigterm_while_loading_the_config(tmp_path, capfd):
    config = tmp_path / "slow_config.py"
    config.write_text(
        "import os, signal\n"
        "from transformer_jax.tasks.translation.config import translation_base\n\n\n"
        "def get_config():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return translation_base()\n"
    )
    workdir = tmp_path / "run"
    assert run_main(["train", "--config", str(config), "--workdir", str(workdir)]) == 75
    line = one_line(capfd.readouterr().err, "train")
    assert "stopped by SIGTERM during start-up" in line
    assert not workdir.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handed back


def test_sigterm_while_training_the_tokenizer_then_rerun(data_dir, tmp_path, monkeypatch, capfd):
    """The signal arrives inside SentencePiece (C++ calling Python): still 75, and a rerun works."""
    from transformer_jax.tasks.translation.task import TranslationTask

    real_source = TranslationTask._source

    class Source:
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            if i == 50:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.inner[i]

    monkeypatch.setattr(TranslationTask, "_source", lambda self, s: Source(real_source(self, s)))
    run = tmp_path / "run"
    argv = train_argv(data_dir, run, "--config.train.num_steps=2")
    assert run_main(argv) == 75
    out, err = capfd.readouterr()
    assert "stopped by SIGTERM during start-up" in one_line(err, "train")
    assert "training the tokenizer" in out
    leftovers = [p for p in snapshot(run) if p != "checkpoints"] if run.exists() else []
    assert leftovers == []  # no step, no config, no lock
    monkeypatch.undo()
    assert run_main(argv) == 0, capfd.readouterr().err
    assert "2" in os.listdir(run / "checkpoints")
