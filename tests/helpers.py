"""A tiny run config for end-to-end tests, derived from configs/translate_tiny.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TINY_CONFIG = os.path.join(CONFIGS, "translate_tiny.py")


def tiny_overrides(data_dir: str, **extra) -> list[str]:
    """`key=value` overrides that shrink translate_tiny to a seconds-long run.

    16 rows of 32 tokens per batch (a multiple of the 8 test devices).
    """
    values = {
        "data.name": "en_es_grammar/tiny",
        "data.data_dir": data_dir,
        "data.max_length": 32,
        "data.tokens_per_batch": 512,
        "data.eval_tokens_per_batch": 512,
        "tokenizer.vocab_size": 200,
        "model.d_model": 32,
        "model.num_heads": 2,
        "model.d_ff": 64,
        "model.num_encoder_layers": 1,
        "model.num_decoder_layers": 1,
        "optimizer.lr_scale": 2.0,
        "optimizer.warmup_steps": 20,
        "train.num_steps": 8,
        "train.log_every": 1,
        "train.eval_every": 1000,
        "train.eval_batches": 1,
        "train.checkpoint_every": 2,
        "train.keep_checkpoints": 10,
        "train.progress": False,
        "decode.max_decode_len": 40,
        "decode.bleu_examples": 16,
        "decode.beam_size": 2,
        "decode.batch_size": 16,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config(data_dir: str, **extra):
    """The tiny run config; `extra` uses `group__key=value` for `group.key`."""
    from transformer_jax.config import load_config

    return load_config(TINY_CONFIG, tiny_overrides(data_dir, **extra))


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_losses(workdir: str) -> dict[int, float]:
    """step -> train/loss from metrics.jsonl (a later row for a step wins)."""
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@contextlib.contextmanager
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache shared by this session's training runs, off again afterwards.

    Repeated runs of one config compile the same programs; reading them back keeps
    the end-to-end tests fast without changing what they run.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    old = {name: getattr(jax.config, name) for name in names}
    jax.config.update(names[0], str(tmp_path_factory.getbasetemp() / "jax_cache"))
    jax.config.update(names[1], 0.0)
    jax.config.update(names[2], 0)
    cc.reset_cache()
    try:
        yield
    finally:
        for name, value in old.items():
            jax.config.update(name, value)
        cc.reset_cache()


def train(cfg, workdir: str, tmp_path_factory) -> dict:
    """`train_and_evaluate` with the session's compilation cache."""
    from transformer_jax.train.trainer import train_and_evaluate

    with compilation_cache(tmp_path_factory):
        return train_and_evaluate(cfg, workdir)


def prepared_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir holding en_es_grammar/tiny, generated once per test session."""
    from transformer_jax.data import catalog

    path = tmp_path_factory.getbasetemp() / "tfds"
    if not (path / ".ready").exists():
        catalog.prepare("en_es_grammar/tiny", str(path))
        (path / ".ready").touch()
    return str(path)


TRAINED_STEPS = 24


def trained_workdir(tmp_path_factory) -> str:
    """A workdir trained once per session: 24 steps, a checkpoint every 4, the last 3 kept.

    Shared by several test modules; tests may add files (evals, averages) but must
    not change its training checkpoints.
    """
    path = tmp_path_factory.getbasetemp() / "trained"
    done = path / "trained.json"
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        cfg = tiny_config(
            prepared_data_dir(tmp_path_factory),
            train__num_steps=TRAINED_STEPS,
            train__checkpoint_every=4,
            train__keep_checkpoints=3,
        )
        start = time.perf_counter()
        result = train(cfg, str(path), tmp_path_factory)
        elapsed = time.perf_counter() - start
        result = {k: v for k, v in result.items() if k != "examples"}
        done.write_text(json.dumps({"seconds": elapsed, "result": result}))
    return str(path)


def tjax_executable() -> str:
    """The `tjax` console script of the interpreter running the tests."""
    import sys

    return os.path.join(os.path.dirname(sys.executable), "tjax")


def subprocess_env(tmp_path_factory) -> dict[str, str]:
    """Environment for `tjax` child processes: this session's persistent XLA cache, unbuffered."""
    return dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


class _SummaryLines:
    """Lines printed in pytest's terminal summary (counts of fault drills and fuzzing)."""

    def __init__(self):
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter):
        if self.lines:
            terminalreporter.section("fault drills and fuzzing")
            for line in self.lines:
                terminalreporter.write_line(line)


def summary_line(config, line: str) -> None:
    """Shows `line` at the end of the pytest run (and in the captured output of the test)."""
    plugin = config.pluginmanager.get_plugin("tjax_summary_lines")
    if plugin is None:
        plugin = _SummaryLines()
        config.pluginmanager.register(plugin, "tjax_summary_lines")
    plugin.lines.append(line)
    print(line)


# -- several processes on localhost as several hosts ---------------------------------------

# Variables that would make a child process join some other distributed job.
DIST_ENV = (
    "TJAX_COORDINATOR",
    "TJAX_NUM_PROCESSES",
    "TJAX_PROCESS_ID",
    "TJAX_INIT_TIMEOUT",
    "TJAX_DISTRIBUTED",
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_env(**extra: str) -> dict[str, str]:
    """A clean child environment: CPU only, 2 fake devices, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


def run_hosts(code: str, num: int, timeout: float, **extra: str) -> list[tuple[int, str, str]]:
    """Runs `python -c code` as `num` hosts of one job on localhost; (rc, stdout, stderr) each."""
    import subprocess
    import sys

    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=proc_env(
                TJAX_COORDINATOR=f"127.0.0.1:{port}",
                TJAX_NUM_PROCESSES=str(num),
                TJAX_PROCESS_ID=str(i),
                TJAX_INIT_TIMEOUT="60",
                **extra,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(num)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs
