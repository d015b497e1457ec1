"""transformer_jax.train.distributed: real multi-process runs on localhost (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import DIST_ENV, free_port, proc_env, run_hosts

from transformer_jax.train import distributed

WORKER = textwrap.dedent(
    """
    import numpy as np
    from transformer_jax.train import distributed

    distributed.initialize()
    distributed.initialize()  # a second call is a no-op

    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("data",))
    pid = jax.process_index()
    local = (np.arange(4, dtype=np.float32) + 100 * pid).reshape(2, 2)
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    print(
        f"RESULT pid={pid} n={jax.process_count()} devices={jax.device_count()} "
        f"local={jax.local_device_count()} shape={x.shape} multihost={distributed.is_multihost()} "
        f"sum={float(total)}"
    )
    print("DESCRIBE", distributed.describe())
    """
)

# Translation over a mesh (shared by the worker processes and the test process): a randomly
# initialized model whose parameters are split along "embed" over every device (of all
# hosts), 37 texts of varied length in decode batches of 16 rows (the last one padded)
# split over the same devices. A character tokenizer stands in for sentencepiece.
DECODE = textwrap.dedent(
    """
    import flax.linen as nn
    import jax
    import ml_collections
    import numpy as np

    from transformer_jax.tasks.translation.model import EncoderDecoder
    from transformer_jax.nn.config import TransformerConfig
    from transformer_jax.tasks.translation.pipeline import TranslationPipeline
    from transformer_jax.train import sharding as shd
    from transformer_jax.train.evaluation import MeshContext

    CONFIG = TransformerConfig(
        vocab_size=64, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
        num_decoder_layers=1, dropout_rate=0.0, max_position=64,
    )

    class Chars:
        def encode(self, text):
            return [3 + ord(c) % 61 for c in text]

        def decode(self, ids):
            return " ".join(str(i) for i in ids)

    def texts():
        rng = np.random.default_rng(0)
        words = ["the", "cat", "sleeps", "on", "a", "red", "couch", "dog", "runs", "far"]
        return [" ".join(rng.choice(words, size=rng.integers(1, 6))) for _ in range(37)]

    def translate(on_mesh):
        model = EncoderDecoder(CONFIG)
        ones = np.ones((1, 16), np.int32)
        init = lambda: model.init(jax.random.key(0), ones, ones)
        settings = dict(
            model_config=CONFIG, src_tokenizer=Chars(), tgt_tokenizer=Chars(), beam_size=4,
            max_decode_len=12, max_source_len=32, batch_size=16,
        )
        if not on_mesh:
            return TranslationPipeline(nn.unbox(init())["params"], **settings).translate(texts())
        mesh = shd.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=-1)))
        rules = shd.rules_for("fsdp")
        shardings = shd.logical_shardings(jax.eval_shape(init), mesh, rules)
        params = jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()["params"]
        with MeshContext(mesh, rules):
            return TranslationPipeline(params, mesh=mesh, **settings).translate(texts())
    """
)

DECODE_WORKER = (
    "import json\n"
    "from transformer_jax.train import distributed\n"
    "distributed.initialize()\n" + DECODE + "\nprint('OUT', json.dumps(translate(on_mesh=True)))\n"
)

FAILING = textwrap.dedent(
    """
    import sys
    from transformer_jax.train import distributed

    try:
        distributed.initialize(timeout_s=5)
    except RuntimeError as e:
        print(f"ERROR {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)
    print("UNEXPECTED: initialized")
    """
)


@pytest.fixture
def fresh(monkeypatch):
    """The module as if initialize() had never run, with no job settings in the env."""
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_mode", None)
    return distributed


def test_two_processes_compute_a_global_sum():
    outs = run_hosts(WORKER, 2, timeout=90)
    # rows 0..3 of process 0 and 100..103 of process 1
    expected = float(sum(range(4)) + sum(range(100, 104)))
    for i, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"process {i} failed:\n{out}\n{err[-3000:]}"
        result = next(line for line in out.splitlines() if line.startswith("RESULT"))
        assert f"pid={i} n=2 devices=4 local=2 shape=(4, 2) multihost=True" in result
        assert f"sum={expected}" in result
        assert f"DESCRIBE process {i} of 2: 2 local / 4 global cpu devices" in out


def test_two_processes_translate_with_split_rows_and_parameters():
    """Each host decodes its share of every batch; every host gets all translations."""
    outs = run_hosts(DECODE_WORKER, 2, timeout=300)
    got = []
    for i, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"process {i} failed:\n{out}\n{err[-3000:]}"
        line = next(line for line in out.splitlines() if line.startswith("OUT "))
        got.append(json.loads(line[len("OUT ") :]))
    case: dict = {}
    exec(DECODE, case)
    alone = case["translate"](on_mesh=False)  # one device, unsharded parameters
    assert len(alone) == 37
    assert len(set(alone)) > 10  # translations differ: a mix-up of rows would show
    assert got[0] == alone
    assert got[1] == alone
    # One process, rows and parameters split over its 8 devices.
    assert case["translate"](on_mesh=True) == alone


def _run_failing(process_id: int) -> tuple[subprocess.CompletedProcess, float, int]:
    port = free_port()  # nothing listens there
    env = proc_env(
        TJAX_COORDINATOR=f"127.0.0.1:{port}",
        TJAX_NUM_PROCESSES="2",
        TJAX_PROCESS_ID=str(process_id),
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", FAILING], env=env, capture_output=True, text=True, timeout=30
    )
    return proc, time.monotonic() - start, port


def _assert_one_line_error(proc, port: int) -> str:
    assert proc.returncode == 3, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stderr
    assert len([line for line in lines if line.startswith("ERROR")]) == 1
    assert "Check failure" not in proc.stderr and "Traceback" not in proc.stderr
    line = next(line for line in lines if line.startswith("ERROR"))
    assert line.startswith("ERROR DistributedInitError: ")
    assert f"127.0.0.1:{port}" in line
    assert "5s" in line
    return line


def test_unreachable_coordinator_is_a_one_line_error():
    proc, elapsed, port = _run_failing(process_id=1)
    line = _assert_one_line_error(proc, port)
    assert "process 1/2" in line
    assert elapsed < 30


def test_coordinator_without_peers_is_a_one_line_error():
    proc, elapsed, port = _run_failing(process_id=0)
    line = _assert_one_line_error(proc, port)
    assert "process 0/2" in line and "missing process ids [1]" in line
    assert elapsed < 30


def test_single_process_does_nothing(fresh):
    fresh.initialize()
    fresh.initialize()
    assert fresh._mode == "single"
    import jax

    assert not jax.distributed.is_initialized()
    assert not fresh.is_multihost()
    assert fresh.describe().startswith("process 0 of 1: ")


def test_slurm_batch_step_without_srun_stays_single(fresh, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    for name in ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    fresh.initialize()
    assert fresh._mode == "single"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TJAX_COORDINATOR": "127.0.0.1:1234"}, "TJAX_NUM_PROCESSES, TJAX_PROCESS_ID"),
        (
            {"TJAX_COORDINATOR": "127.0.0.1:1", "TJAX_NUM_PROCESSES": "2", "TJAX_PROCESS_ID": "2"},
            "out of range",
        ),
        (
            {"TJAX_COORDINATOR": "localhost", "TJAX_NUM_PROCESSES": "2", "TJAX_PROCESS_ID": "0"},
            "host:port",
        ),
        ({"TJAX_NUM_PROCESSES": "two"}, "not an integer"),
    ],
)
def test_bad_settings_are_value_errors(fresh, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        fresh.initialize()
    assert fresh._mode is None


def test_rendezvous_meets_and_rejects_a_wrong_process_count():
    port = free_port()
    errors: dict[int, BaseException] = {}

    def go(pid: int, n: int, timeout_s: float = 10) -> None:
        try:
            distributed._rendezvous(f"127.0.0.1:{port}", n, pid, timeout_s=timeout_s)
        except BaseException as e:  # noqa: B036 - reported to the main thread
            errors[pid] = e

    threads = [threading.Thread(target=go, args=(pid, 3)) for pid in (2, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors

    port = free_port()
    coordinator = threading.Thread(target=go, args=(0, 2, 2.0))
    coordinator.start()
    with pytest.raises(distributed.DistributedInitError, match="expects 2 processes"):
        distributed._rendezvous(f"127.0.0.1:{port}", 3, 1, timeout_s=1.5)
    coordinator.join(timeout=20)
    assert isinstance(errors.get(0), distributed.DistributedInitError)


def test_initialize_after_jax_has_started_is_refused(fresh, monkeypatch):
    import jax

    jax.devices()  # the backend exists from here on
    monkeypatch.setenv("TJAX_COORDINATOR", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("TJAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("TJAX_PROCESS_ID", "1")
    start = time.monotonic()
    with pytest.raises(distributed.DistributedInitError, match="before any JAX computation"):
        fresh.initialize(timeout_s=30)
    assert time.monotonic() - start < 5
