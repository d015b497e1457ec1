"""CPU throughput of our training step and decoders next to PyTorch and transformers peers.

    python -m benchmarks.run            # shapes S and B of the goals (several minutes on 2 cores)
    python -m benchmarks.run --quick    # smoke run: tiny shape only, 2 timed windows

Training: tokens/s (source + target tokens of a full, unpadded batch) of the jitted
`train_step` (Adam 0.9/0.98/1e-9 with the rsqrt schedule, label smoothing 0.1,
dropout 0.1, float32) against a model built from `torch.nn.Transformer` with the
same sizes, shared tied embedding, sinusoidal positions, `CrossEntropyLoss(
label_smoothing=0.1)` and `torch.optim.Adam(betas=(0.9, 0.98), eps=1e-9)`; and each
side's model FLOP/s as a fraction of the measured float32 matmul peak.

Decoding: generated tokens/s of `translate_ids` (greedy and beam 4, KV cache)
against `transformers`' `MarianMTModel.generate` of the same sizes (KV cache, SDPA),
with the time per step next to its bound from the measured memory bandwidth and
matmul peak (`decode_step_bound`). Weights are random, so eos is suppressed on every
side: every run is fixed-length and the token count is batch x new tokens.

Steady state only: compilation and warmup are excluded, and each figure is the
median over timed windows. Each side runs in its own process, with the malloc
settings `tjax` uses; their windows alternate (A B C, C B A, ...) so that load from
other processes hits them alike.

Full runs write benchmarks/results/cpu_<date>.json and cpu_latest.md; quick runs
write cpu_<date>_quick.json and cpu_quick.md so they never replace a full run, and a
second full run on one day adds the time of day to its JSON (benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.report import write_results

PAD_ID, REAL_EOS_ID, START_ID = 0, 1, 2
# An id no model can emit: with it as eos every decode runs to max_decode_len.
NO_EOS_ID = -1
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One model size and the batch shapes it is measured at."""

    name: str
    vocab: int
    d_model: int
    heads: int
    d_ff: int
    enc_layers: int
    dec_layers: int
    batch: int  # training rows
    src_len: int
    tgt_len: int
    decode_batch: int
    decode_src_len: int
    decode_len: int  # max_decode_len; every run generates exactly this many tokens per row


@dataclasses.dataclass(frozen=True)
class Timing:
    """How much to run; every timed figure is a median over `windows`."""

    windows: int  # timed training windows
    steps_per_window: int
    warmup_steps: int  # untimed training steps after the first (compiling) one
    decode_windows: int  # timed decode calls (one full decode of the batch each)
    decode_warmup: int  # untimed decode calls after the first (compiling) one
    # Untimed training steps at the start of every window, on both sides: the first step
    # after the other side has run pays for that (at B about 1 s more for ours, whether
    # the sides share a process or not), and a training run never switches like that.
    settle_steps: int = 1


TINY = Shape(
    name="translate_tiny",
    vocab=600,
    d_model=128,
    heads=4,
    d_ff=512,
    enc_layers=3,
    dec_layers=3,
    batch=64,
    src_len=32,
    tgt_len=32,
    decode_batch=64,
    decode_src_len=32,
    decode_len=32,
)

# The two shapes the training and decoding goals are stated for.
SHAPE_S = Shape(
    name="S",
    vocab=8192,
    d_model=256,
    heads=4,
    d_ff=1024,
    enc_layers=3,
    dec_layers=3,
    batch=32,
    src_len=64,
    tgt_len=64,
    decode_batch=8,
    decode_src_len=32,
    decode_len=32,
)

SHAPE_B = Shape(
    name="B",
    vocab=32000,
    d_model=512,
    heads=8,
    d_ff=2048,
    enc_layers=6,
    dec_layers=6,
    batch=8,
    src_len=64,
    tgt_len=64,
    decode_batch=8,
    decode_src_len=32,
    decode_len=32,
)

FULL_PLAN = (
    (
        SHAPE_S,
        Timing(windows=5, steps_per_window=2, warmup_steps=2, decode_windows=4, decode_warmup=1),
    ),
    (
        SHAPE_B,
        Timing(windows=5, steps_per_window=1, warmup_steps=1, decode_windows=4, decode_warmup=1),
    ),
)
QUICK_PLAN = (
    (
        TINY,
        Timing(windows=2, steps_per_window=3, warmup_steps=1, decode_windows=2, decode_warmup=0),
    ),
)


# ------------------------------------------------------------------------------------ helpers


def _random_ids(rng: np.random.Generator, vocab: int, shape: tuple[int, ...]) -> np.ndarray:
    """Token ids that avoid pad / eos / start, so batches are full and unpadded."""
    return rng.integers(3, vocab, size=shape, dtype=np.int64).astype(np.int32)


def _rsqrt_lr(step: int, d_model: int, warmup: int = 4000, scale: float = 1.0) -> float:
    """Vaswani et al. (2017), eq. 3, with step counted from 1."""
    s = step + 1.0
    return scale * d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The vector extensions of the CPU (from /proc/cpuinfo), e.g. avx2, avx512f."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx")
                    return [x for x in flags if x.startswith(keep)]
    except OSError:
        pass
    return []


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _set_torch_threads(torch) -> int:
    torch.set_num_threads(_cpu_count())
    return torch.get_num_threads()


def measured_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s with which a jitted reduction reads a float32 array of `mib` MiB."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return x.nbytes / best


def decode_step_bound(shape: Shape, beam_size: int, peak_flops: float, bandwidth: float):
    """(seconds, what) of one decoding step at its lower bound: the larger of the time to
    read what a step must read (the decoder's weights once, the self-attention cache at
    half length, the projected encoder memory) and the time of its matmul FLOPs at the
    measured peak. float32 throughout."""
    D, F, V, L = shape.d_model, shape.d_ff, shape.vocab, shape.dec_layers
    rows = shape.decode_batch * beam_size
    t, S = shape.decode_len / 2, shape.decode_src_len
    weights = L * (4 * D * D + 2 * D * D + 2 * D * F) + V * D  # self qkvo, cross q o, ffn, logits
    cache = rows * L * 2 * D * (t + S)  # keys and values: own prefix and the encoder memory
    read_bytes = 4 * (weights + cache)
    flops = 2 * rows * weights + 2 * 2 * rows * L * D * (t + S)
    mem_s, flop_s = read_bytes / bandwidth, flops / peak_flops
    return max(mem_s, flop_s), {
        "read_bytes": read_bytes,
        "flops": flops,
        "memory_s": mem_s,
        "compute_s": flop_s,
    }


def machine_info() -> dict[str, Any]:
    import flax
    import jax
    import jaxlib

    from transformer_jax.train.flops import measured_cpu_peak

    torch = _torch()
    return {
        "cpu_model": _cpu_model(),
        "cores": _cpu_count(),
        "load_average_1_5_15": _load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_device_count": jax.device_count(),
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": _set_torch_threads(torch) if torch is not None else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "cpu_flags": _cpu_flags(),
        "matmul_peak_flops": measured_cpu_peak(2048),
        "read_bandwidth_bytes_s": measured_bandwidth(),
    }


class _Bench:
    """A measured side: `prepare` compiles and warms up, each `window` returns seconds."""

    label = ""
    work_per_window = 0  # tokens per timed window

    def prepare(self) -> None:
        raise NotImplementedError

    def window(self) -> float:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Releases what the side holds outside this process (nothing here)."""


def _interleave(benches: Sequence[_Bench], windows: int, log: Callable[[str], None]) -> list[dict]:
    """Prepares every bench, then alternates their timed windows (ABBA order)."""
    times: list[list[float]] = [[] for _ in benches]
    try:
        for b in benches:
            log(f"  prepare {b.label}")
            b.prepare()
        for w in range(windows):
            order = list(range(len(benches)))
            for i in order if w % 2 == 0 else reversed(order):
                times[i].append(benches[i].window())
    except BaseException:
        for b in benches:
            b.close()
        raise
    out = []
    for b, ts in zip(benches, times):
        med = statistics.median(ts)
        out.append(
            dict(
                b.summary(),
                label=b.label,
                window_s=ts,
                median_window_s=med,
                tokens_per_window=b.work_per_window,
                tokens_per_s=b.work_per_window / med,
                tokens_per_s_range=[b.work_per_window / max(ts), b.work_per_window / min(ts)],
            )
        )
    return out


def _side_worker(conn, cls_name: str, args: tuple, kwargs: dict) -> None:
    """A spawned process's loop: builds one side, then prepares, times and summarises it
    as the parent asks, until "close"."""
    bench = None
    while True:
        cmd = conn.recv()
        if cmd == "close":
            conn.close()
            return
        try:
            if cmd == "prepare":
                bench = globals()[cls_name](*args, **kwargs)
                bench.prepare()
                value: Any = (bench.label, bench.work_per_window)
            elif cmd == "window":
                value = bench.window()
            elif cmd == "summary":
                value = dict(bench.summary(), pid=os.getpid())
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", value))
        except BaseException:  # the parent reports it; this process then waits for close
            conn.send(("error", traceback.format_exc()))


class _Isolated(_Bench):
    """A side built, prepared and timed in its own spawned process, driven over a pipe.

    Each side keeps its own heap, threads and allocator state, as it would in a user's
    run; the parent only sends commands, and a side waits blocked on its pipe while
    another runs. Timings are taken inside the side. (Separate processes do not remove
    the slower first step after the other side's window: `Timing.settle_steps` does.)
    """

    def __init__(self, cls_name: str, *args: Any, **kwargs: Any):
        self.spec = (cls_name, args, kwargs)
        self.label, self.work_per_window = cls_name, 0
        self.proc = self.conn = None

    def prepare(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no inherited jax or torch state
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_side_worker, args=(child, *self.spec), daemon=True)
        proc.start()
        child.close()
        self.proc, self.conn = proc, conn
        self.label, self.work_per_window = self._call("prepare")

    def _call(self, cmd: str) -> Any:
        self.conn.send(cmd)
        try:
            status, value = self.conn.recv()
        except EOFError:
            status, value = "error", f"its process exited (code {self.proc.exitcode})"
        if status == "error":
            self.close()
            last = value.strip().splitlines()[-1]  # the exception, then its traceback
            raise RuntimeError(f"benchmark side {self.label} failed: {last}\n{value}")
        return value

    def window(self) -> float:
        return self._call("window")

    def summary(self) -> dict[str, Any]:
        try:
            return self._call("summary")
        finally:
            self.close()

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send("close")
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(60)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        self.conn.close()
        self.proc = self.conn = None


# ------------------------------------------------------------------------------------ ours


def _our_config(shape: Shape, *, eos_id: int = REAL_EOS_ID):
    from transformer_jax.nn.config import TransformerConfig

    return TransformerConfig(
        vocab_size=shape.vocab,
        d_model=shape.d_model,
        num_heads=shape.heads,
        d_ff=shape.d_ff,
        num_encoder_layers=shape.enc_layers,
        num_decoder_layers=shape.dec_layers,
        dropout_rate=0.1,
        max_position=max(1024, shape.src_len, shape.tgt_len, shape.decode_len + 1),
        pad_id=PAD_ID,
        eos_id=eos_id,
        decoder_start_id=START_ID,
    )


def _our_params(shape: Shape, seed: int = 0):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from transformer_jax.tasks.translation.model import EncoderDecoder

    ids = jnp.full((1, 4), 3, jnp.int32)
    # Eager init: compiling it would cost more than running it once.
    variables = EncoderDecoder(_our_config(shape)).init(jax.random.key(seed), ids, ids)
    return nn.unbox(variables["params"])


class OursTrain(_Bench):
    """The library's `train_step` under jax.jit, state donated, on one fixed batch."""

    label = "ours"

    def __init__(self, shape: Shape, timing: Timing, seed: int = 0):
        self.shape, self.timing, self.seed = shape, timing, seed
        self.work_per_window = (
            shape.batch * (shape.src_len + shape.tgt_len) * timing.steps_per_window
        )

    def prepare(self) -> None:
        import jax
        import jax.numpy as jnp

        from transformer_jax.tasks.translation.config import translation_base
        from transformer_jax.tasks.translation.model import EncoderDecoder
        from transformer_jax.tasks.translation.task import TranslationTask
        from transformer_jax.train.optim import make_optimizer
        from transformer_jax.train.trainer import TrainState, train_step

        shape = self.shape
        run_cfg = translation_base()  # Adam 0.9/0.98/1e-9, rsqrt schedule, label smoothing 0.1
        cfg = _our_config(shape)
        rng = np.random.default_rng(self.seed)
        self.batch = {
            "inputs": jnp.asarray(_random_ids(rng, shape.vocab, (shape.batch, shape.src_len))),
            "targets": jnp.asarray(_random_ids(rng, shape.vocab, (shape.batch, shape.tgt_len))),
        }
        tx = make_optimizer(run_cfg.optimizer, cfg.d_model)
        params = _our_params(shape, self.seed)
        self.state = TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)
        )
        self.step_fn = jax.jit(
            functools.partial(
                train_step,
                task=TranslationTask(run_cfg),
                model=EncoderDecoder(cfg.replace(deterministic=False)),
                tx=tx,
                base_rng=jax.random.key(self.seed),
            ),
            donate_argnums=(0,),
        )
        t0 = time.perf_counter()
        self._steps(1)
        self.first_step_s = time.perf_counter() - t0
        self._steps(self.timing.warmup_steps)

    def _steps(self, n: int) -> None:
        import jax

        for _ in range(n):
            self.state, self.metrics = self.step_fn(self.state, self.batch)
        jax.block_until_ready(self.state)

    def window(self) -> float:
        self._steps(self.timing.settle_steps)
        t0 = time.perf_counter()
        self._steps(self.timing.steps_per_window)
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        import jax

        m = jax.device_get(self.metrics)
        loss = float(m["loss_sum"]) / max(float(m["weight_sum"]), 1.0)
        return {
            "params": int(sum(x.size for x in jax.tree.leaves(self.state.params))),
            "first_step_s": self.first_step_s,  # compilation included
            "final_loss": loss,
            "loss_finite": math.isfinite(loss),
        }


class OursDecode(_Bench):
    """`translate_ids` (greedy or beam search over the KV cache), eos disabled."""

    def __init__(self, shape: Shape, timing: Timing, beam_size: int, seed: int = 0):
        self.shape, self.timing, self.beam_size, self.seed = shape, timing, beam_size, seed
        self.label = (
            f"ours beam-{beam_size} (KV cache)" if beam_size > 1 else "ours greedy (KV cache)"
        )
        self.work_per_window = shape.decode_batch * shape.decode_len

    def prepare(self) -> None:
        import jax.numpy as jnp

        from transformer_jax.tasks.translation.decoding import translate_ids

        shape = self.shape
        self.params = _our_params(shape, self.seed)
        rng = np.random.default_rng(self.seed + 1)
        self.src = jnp.asarray(
            _random_ids(rng, shape.vocab, (shape.decode_batch, shape.decode_src_len))
        )
        self.limits = jnp.full((shape.decode_batch,), shape.decode_len, jnp.int32)
        decode = functools.partial(
            translate_ids,
            config=_our_config(shape, eos_id=NO_EOS_ID),
            beam_size=self.beam_size,
            alpha=0.6,
        )
        self.fn = functools.partial(decode, max_decode_len=shape.decode_len)
        self.first_fn = functools.partial(decode, max_decode_len=1)
        self.first_limits = jnp.ones_like(self.limits)
        self.first_token_s: list[float] = []
        t0 = time.perf_counter()
        self.window()
        self.first_call_s = time.perf_counter() - t0
        for _ in range(self.timing.decode_warmup):
            self.window()
        self.first_token_s.clear()

    def window(self) -> float:
        t0 = time.perf_counter()
        self.out = np.asarray(self.fn(self.params, self.src, self.limits))
        elapsed = time.perf_counter() - t0
        t0 = time.perf_counter()
        np.asarray(self.first_fn(self.params, self.src, self.first_limits))
        self.first_token_s.append(time.perf_counter() - t0)
        return elapsed

    def summary(self) -> dict[str, Any]:
        return {
            "beam_size": self.beam_size,
            "output_shape": list(self.out.shape),
            "first_call_s": self.first_call_s,  # compilation included
            "first_token_s": self.first_token_s,
        }


# ------------------------------------------------------------------------------------ torch


def _sinusoids(max_len: int, dim: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    freq = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((max_len, dim), np.float64)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)
    return table.astype(np.float32)


def torch_model(shape: Shape, seed: int = 0):
    """The paper's model around torch.nn.Transformer (post-LN, shared tied embedding)."""
    torch = _torch()
    nn = torch.nn

    class TorchTranslator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = shape.d_model
            self.scale = math.sqrt(d)
            self.embedding = nn.Embedding(shape.vocab, d)
            nn.init.normal_(self.embedding.weight, std=d**-0.5)
            self.transformer = nn.Transformer(
                d_model=d,
                nhead=shape.heads,
                num_encoder_layers=shape.enc_layers,
                num_decoder_layers=shape.dec_layers,
                dim_feedforward=shape.d_ff,
                dropout=0.1,
                activation="relu",
                layer_norm_eps=1e-6,
                batch_first=True,
                norm_first=False,
            )
            # Each post-LN layer already ends in a LayerNorm; the paper has no extra final
            # norm, so the ones nn.Transformer appends to both stacks are dropped.
            self.transformer.encoder.norm = None
            self.transformer.decoder.norm = None
            self.dropout = nn.Dropout(0.1)
            max_len = max(shape.src_len, shape.tgt_len, shape.decode_src_len, shape.decode_len + 1)
            self.register_buffer("positions", torch.from_numpy(_sinusoids(max_len, d)))

        def embed(self, ids):
            x = self.embedding(ids) * self.scale + self.positions[: ids.shape[1]]
            return self.dropout(x)

        def encode(self, src, src_pad):
            return self.transformer.encoder(self.embed(src), src_key_padding_mask=src_pad)

        def decode(self, dec_in, memory, src_pad, dec_pad=None):
            T = dec_in.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=dec_in.device).triu(1)
            return self.transformer.decoder(
                self.embed(dec_in),
                memory,
                tgt_mask=causal,
                tgt_is_causal=True,
                tgt_key_padding_mask=dec_pad,
                memory_key_padding_mask=src_pad,
            )

        def logits(self, h):
            return nn.functional.linear(h, self.embedding.weight)  # tied output projection

        def forward(self, src, dec_in):
            src_pad = src == PAD_ID
            memory = self.encode(src, src_pad)
            return self.logits(self.decode(dec_in, memory, src_pad, dec_in == PAD_ID))

    torch.manual_seed(seed)
    return TorchTranslator()


class TorchTrain(_Bench):
    """An eager PyTorch training step on the same batch shape."""

    label = "torch"

    def __init__(self, shape: Shape, timing: Timing, seed: int = 0):
        self.shape, self.timing, self.seed = shape, timing, seed
        self.work_per_window = (
            shape.batch * (shape.src_len + shape.tgt_len) * timing.steps_per_window
        )

    def prepare(self) -> None:
        torch = _torch()
        self.threads = _set_torch_threads(torch)
        shape = self.shape
        self.model = torch_model(shape, self.seed)
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: _rsqrt_lr(step, shape.d_model)
        )
        self.loss_fn = torch.nn.CrossEntropyLoss(ignore_index=PAD_ID, label_smoothing=0.1)
        rng = np.random.default_rng(self.seed)
        self.src = torch.from_numpy(_random_ids(rng, shape.vocab, (shape.batch, shape.src_len)))
        self.src = self.src.long()
        self.tgt = torch.from_numpy(_random_ids(rng, shape.vocab, (shape.batch, shape.tgt_len)))
        self.tgt = self.tgt.long()
        start = torch.full((shape.batch, 1), START_ID, dtype=torch.long)
        self.dec_in = torch.cat([start, self.tgt[:, :-1]], dim=1)  # shift right
        t0 = time.perf_counter()
        self._steps(1)
        self.first_step_s = time.perf_counter() - t0
        self._steps(self.timing.warmup_steps)

    def _steps(self, n: int) -> None:
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            logits = self.model(self.src, self.dec_in)
            loss = self.loss_fn(logits.reshape(-1, self.shape.vocab), self.tgt.reshape(-1))
            loss.backward()
            self.opt.step()
            self.sched.step()
            self.loss = loss.detach()

    def window(self) -> float:
        self._steps(self.timing.settle_steps)
        t0 = time.perf_counter()
        self._steps(self.timing.steps_per_window)
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        loss = float(self.loss)
        return {
            "params": int(sum(p.numel() for p in self.model.parameters())),
            "threads": self.threads,
            "first_step_s": self.first_step_s,
            "final_loss": loss,
            "loss_finite": math.isfinite(loss),
        }


class MarianGenerate(_Bench):
    """`MarianMTModel.generate` of the same dimensions (random weights, KV cache, SDPA
    attention), greedy or beam search, exactly `decode_len` new tokens per row."""

    def __init__(self, shape: Shape, timing: Timing, beam_size: int, seed: int = 0):
        self.shape, self.timing, self.beam_size, self.seed = shape, timing, beam_size, seed
        kind = f"beam-{beam_size}" if beam_size > 1 else "greedy"
        self.label = f"transformers MarianMTModel.generate {kind} (KV cache)"
        self.work_per_window = shape.decode_batch * shape.decode_len

    def prepare(self) -> None:
        torch = _torch()
        from transformers import MarianConfig, MarianMTModel

        self.torch = torch
        self.threads = _set_torch_threads(torch)
        shape = self.shape
        torch.manual_seed(self.seed)
        config = MarianConfig(
            vocab_size=shape.vocab,
            d_model=shape.d_model,
            encoder_layers=shape.enc_layers,
            decoder_layers=shape.dec_layers,
            encoder_attention_heads=shape.heads,
            decoder_attention_heads=shape.heads,
            encoder_ffn_dim=shape.d_ff,
            decoder_ffn_dim=shape.d_ff,
            activation_function="relu",
            max_position_embeddings=max(1024, shape.decode_src_len, shape.decode_len + 1),
            pad_token_id=PAD_ID,
            eos_token_id=REAL_EOS_ID,
            decoder_start_token_id=START_ID,
            forced_eos_token_id=None,
            scale_embedding=True,
        )
        self.model = MarianMTModel._from_config(config, attn_implementation="sdpa").eval()
        self.params = sum(p.numel() for p in self.model.parameters())
        rng = np.random.default_rng(self.seed + 1)
        ids = _random_ids(rng, shape.vocab, (shape.decode_batch, shape.decode_src_len))
        self.src = torch.from_numpy(ids).long()
        self.mask = torch.ones_like(self.src)
        self.first_token_s: list[float] = []
        t0 = time.perf_counter()
        self.window()
        self.first_call_s = time.perf_counter() - t0
        for _ in range(self.timing.decode_warmup):
            self.window()
        self.first_token_s.clear()

    def _generate(self, n: int):
        with self.torch.inference_mode():
            return self.model.generate(
                input_ids=self.src,
                attention_mask=self.mask,
                num_beams=self.beam_size,
                do_sample=False,
                use_cache=True,
                max_new_tokens=n,
                min_new_tokens=n,  # eos suppressed: a fixed-length run, as ours
                length_penalty=0.6 if self.beam_size > 1 else 1.0,
                early_stopping=False,
            )

    def window(self) -> float:
        t0 = time.perf_counter()
        out = self._generate(self.shape.decode_len)
        elapsed = time.perf_counter() - t0
        self.out = out[:, 1:]  # after the decoder start token
        t0 = time.perf_counter()
        self._generate(1)
        self.first_token_s.append(time.perf_counter() - t0)
        return elapsed

    def summary(self) -> dict[str, Any]:
        return {
            "beam_size": self.beam_size,
            "threads": self.threads,
            "params": self.params,
            "output_shape": list(self.out.shape),
            "first_call_s": self.first_call_s,
            "first_token_s": self.first_token_s,
        }


# ------------------------------------------------------------------------------------ driver


def run_shape(
    shape: Shape,
    timing: Timing,
    *,
    beams: Sequence[int] = (1, 4),
    with_torch: bool | None = None,
    peak_flops: float = 0.0,
    bandwidth: float = 0.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Training and decoding measurements of one shape, ours and the peers side by side.

    `peak_flops` / `bandwidth` (measured float32 matmul FLOP/s, read bytes/s): with them,
    training rows get their model FLOP/s as a fraction of the peak and decoding rows the
    per-step bound (`decode_step_bound`)."""
    from transformer_jax.train.flops import encoder_decoder_flops

    if with_torch is None:
        with_torch = _torch() is not None
    with_generate = with_torch and _has_transformers()
    out: dict[str, Any] = {"shape": dataclasses.asdict(shape), "timing": dataclasses.asdict(timing)}

    log(f"[{shape.name}] training")
    # Each side in its own process (`_Isolated`); ours build the same initial weights
    # from the same seed.
    benches: list[_Bench] = [_Isolated("OursTrain", shape, timing)]
    if with_torch:
        benches.append(_Isolated("TorchTrain", shape, timing))
    rows = _interleave(benches, timing.windows, log)
    for row in rows:
        row["tokens_per_step"] = shape.batch * (shape.src_len + shape.tgt_len)
        row["ms_per_step"] = 1e3 * row["median_window_s"] / timing.steps_per_window
        # The same model FLOPs on both sides (the torch peer has the same matmuls).
        flops = encoder_decoder_flops(_our_config(shape), shape.batch, shape.src_len, shape.tgt_len)
        row["model_flops_per_step"] = flops
        if peak_flops > 0:
            row["fraction_of_matmul_peak"] = flops / (row["ms_per_step"] / 1e3) / peak_flops
    train: dict[str, Any] = {"ours": rows[0]}
    if with_torch:
        train["torch"] = rows[1]
        train["ratio_ours_over_torch"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    out["train"] = train
    del benches, rows  # release the training states before decoding

    log(f"[{shape.name}] decoding")
    benches = [_Isolated("OursDecode", shape, timing, beam) for beam in beams]
    if with_generate:
        benches += [_Isolated("MarianGenerate", shape, timing, beam) for beam in beams]
    decode = _interleave(benches, timing.decode_windows, log)
    peers = {row["beam_size"]: row for row in decode[len(beams) :]}
    for row in decode:
        row.update(
            batch=shape.decode_batch,
            src_len=shape.decode_src_len,
            max_decode_len=shape.decode_len,
            tokens_counted="batch x max_decode_len (fixed-length run, eos disabled)",
            ms_per_call=1e3 * row["median_window_s"],
            ms_per_token=1e3 * row["median_window_s"] / shape.decode_len,
        )
        # The steps alone: the full call less a one-token call (encoder, memory
        # projection, setup and the first step), over the remaining steps.
        row["first_token_ms"] = 1e3 * statistics.median(row["first_token_s"])
        row["ms_per_later_step"] = (row["ms_per_call"] - row["first_token_ms"]) / max(
            shape.decode_len - 1, 1
        )
        if peak_flops > 0 and bandwidth > 0:
            bound_s, parts = decode_step_bound(shape, row["beam_size"], peak_flops, bandwidth)
            row.update(bound_ms_per_step=1e3 * bound_s, bound=parts)
        if with_generate:
            row["ratio_vs_generate"] = row["tokens_per_s"] / peers[row["beam_size"]]["tokens_per_s"]
    out["decode"] = decode
    return out


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _fmt_range(row: dict[str, Any]) -> str:
    lo, hi = row["tokens_per_s_range"]
    return f"{_fmt_rate(lo)}-{_fmt_rate(hi)}"


def _pct(row: dict[str, Any] | None, key: str) -> str:
    return f"{100 * row[key]:.0f}%" if row and key in row else "n/a"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    peak, bw = m.get("matmul_peak_flops"), m.get("read_bandwidth_bytes_s")
    lines = [
        f"# CPU benchmark ({report['timestamp']}{', quick' if report['quick'] else ''})",
        "",
        f"- CPU: {m['cpu_model']} ({', '.join(m.get('cpu_flags') or []) or 'flags unknown'}), "
        f"{m['cores']} cores available to the process",
        f"- measured float32 matmul peak {peak / 1e9:.0f} GFLOP/s (jitted 2048 x 2048 "
        f"matmul, best of 5); read bandwidth {bw / 1e9:.1f} GB/s (jitted sum of 256 MiB)"
        if peak and bw
        else "- matmul peak and bandwidth not measured",
        f"- jax {m['jax']} (jaxlib {m['jaxlib']}, backend {m['jax_backend']}, "
        f"{m['jax_device_count']} device(s)), flax {m['flax']}, torch {m['torch']}, "
        f"python {m['python']}",
        f"- threads: torch.set_num_threads({m['torch_threads']}), OMP_WAIT_POLICY="
        f"{m['omp_wait_policy']}; XLA sizes its own CPU thread pool (not set here)",
        f"- GLIBC_TUNABLES={m.get('glibc_tunables')} for both sides (TJAX_MALLOC=default: unset)",
        f"- load average (1/5/15 min): {m['load_average_1_5_15']} at start, "
        f"{report['load_average_end']} at end. Other processes may share the cores; the "
        "sides' timed windows alternate so that load hits them alike, but absolute "
        "numbers are noisy",
        f"- total wall time {report['wall_s']:.0f} s",
        "",
        "## Training throughput (source + target tokens/s, median of timed windows)",
        "",
        "Goal: ours at least 1.2x torch at both shapes, and at least 75% (B) / 60% (S) of "
        "the measured matmul peak.",
        "",
        "| shape | params ours / torch | batch (rows x src+tgt) | windows x steps | ours tok/s "
        "| torch tok/s | ours/torch | ours ms/step | torch ms/step | ours % of peak "
        "| torch % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        s, t, tr = r["shape"], r["timing"], r["train"]
        ours, peer = tr["ours"], tr.get("torch")
        cells = [
            s["name"],
            f"{ours['params'] / 1e6:.2f}M / " + (f"{peer['params'] / 1e6:.2f}M" if peer else "n/a"),
            f"{s['batch']} x {s['src_len']}+{s['tgt_len']}",
            f"{t['windows']} x {t['steps_per_window']}",
            _fmt_rate(ours["tokens_per_s"]),
            _fmt_rate(peer["tokens_per_s"]) if peer else "n/a",
            f"{tr['ratio_ours_over_torch']:.2f}x" if peer else "n/a",
            f"{ours['ms_per_step']:.1f}",
            f"{peer['ms_per_step']:.1f}" if peer else "n/a",
            _pct(ours, "fraction_of_matmul_peak"),
            _pct(peer, "fraction_of_matmul_peak"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Decoding (generated tokens/s, median of timed calls)",
        "",
        "Goal: ours at least 3x `generate()` greedy and 2x with beam 4, and a step within 2x "
        "of its bound. Fixed-length runs: weights are random, so eos is suppressed on every "
        "side and each row generates exactly the new tokens shown; tokens counted = batch x "
        "new tokens (for beam 4: the returned best hypothesis per row, not the 4x beam work).",
        "",
        "| shape | decoder | batch | src len | new tokens | calls | tok/s | range "
        "| ms/token | first token ms | ms/step | bound ms/step | step / bound "
        "| vs generate() |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for d in r["decode"]:
            ratio, bound = d.get("ratio_vs_generate"), d.get("bound_ms_per_step")
            cells = [
                r["shape"]["name"],
                d["label"],
                str(d["batch"]),
                str(d["src_len"]),
                str(d["max_decode_len"]),
                str(len(d["window_s"])),
                _fmt_rate(d["tokens_per_s"]),
                _fmt_range(d),
                f"{d['ms_per_token']:.2f}",
                f"{d['first_token_ms']:.1f}",
                f"{d['ms_per_later_step']:.2f}",
                f"{bound:.2f}" if bound else "n/a",
                f"{d['ms_per_later_step'] / bound:.1f}x" if bound else "n/a",
                f"{ratio:.2f}x" if ratio is not None else "n/a",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Notes:",
        "",
        "- processes: each side (ours and torch training; each decoder) is built, warmed up "
        "and timed in its own spawned process, which waits while another side runs; the "
        "parent only alternates their windows. Each training window starts with "
        f"{report['results'][0]['timing'].get('settle_steps', 0)} untimed step(s) on both "
        "sides: the first jitted step right after a torch window ran 1.6-2x slower than "
        "the next (shape B), whether the sides shared a process or not.",
        "- ours: `transformer_jax.train.trainer.train_step` under `jax.jit` with the state "
        "donated; `translate_ids` (a jitted `while_loop` over the KV cache). Compilation is "
        "excluded (first_step_s / first_call_s in the JSON include it).",
        "- torch: eager `torch.nn.Transformer` (batch_first, post-LN, ReLU, dropout 0.1, "
        "layer_norm_eps 1e-6, the final encoder/decoder norms it appends removed), one "
        "embedding shared by source and target and tied to the output projection, "
        "sinusoidal positions, `CrossEntropyLoss(label_smoothing=0.1, ignore_index=pad)`, "
        "`Adam(betas=(0.9, 0.98), eps=1e-9)` with the same rsqrt schedule (LambdaLR). "
        "nn.Transformer also drops out attention weights and the feed-forward hidden layer "
        "and has biases on the attention projections; ours drops out residuals and "
        "embeddings only (the paper's scheme) and has no attention biases.",
        "- % of peak: the model's matmul FLOPs per step (forward x3, the same count for both "
        "sides, `train.flops.encoder_decoder_flops`) per second, over the measured peak.",
        "- generate(): `transformers.MarianMTModel` with the same sizes (random weights, "
        "ReLU, SDPA attention), `generate(use_cache=True, min_new_tokens=max_new_tokens)` "
        "under `torch.inference_mode()`; beam 4 with length penalty 0.6 on both sides.",
        "- ms/token: the whole call (encoder included) over the new tokens. first token: a "
        "call for one new token (encoder, memory projection, setup and one step), timed "
        "right after each full call. ms/step: the full call less the one-token call, over "
        "the remaining new tokens: the decoding steps alone, which the bound is for.",
        "- bound: per step, the larger of (bytes read: the decoder's weights once, the "
        "self-attention cache at half the new tokens and the projected encoder memory, "
        "float32) / read bandwidth and (matmul FLOPs of all rows x beams) / matmul peak.",
        "- Training batches are full (unpadded) random token ids, reused every step; host "
        "data loading is measured on neither side.",
        "- range: slowest and fastest timed call, in tok/s.",
        "- OMP_WAIT_POLICY=PASSIVE is set for torch unless the environment sets it: with "
        "OpenMP's default busy-waiting, torch's parallel regions stall whenever another "
        "process holds a core, which made torch several times slower on a shared machine. "
        "XLA's thread pool needs no such setting.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None:  # `python -m benchmarks.run`: the malloc settings `tjax` runs with
        from transformer_jax.malloc_env import reexec_with_tuned_malloc

        # Every side's process inherits the same malloc settings.
        reexec_with_tuned_malloc(("benchmarks.run",))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny shape only, 2 timed windows"
    )
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)

    # OpenMP reads this once, when torch loads it. Its default busy-wait makes every
    # parallel region of torch stall whenever another process holds one of the cores,
    # which on a shared machine slows torch down several-fold; XLA's pool is unaffected.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t_start = time.perf_counter()
    if _torch() is None:
        print("torch is not installed: measuring our side only", file=sys.stderr)
    machine = machine_info()
    plan = QUICK_PLAN if args.quick else FULL_PLAN

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - t_start:7.1f}s {msg}", file=sys.stderr, flush=True)

    results = [
        run_shape(
            shape,
            timing,
            peak_flops=machine["matmul_peak_flops"],
            bandwidth=machine["read_bandwidth_bytes_s"],
            log=log,
        )
        for shape, timing in plan
    ]
    now = dt.datetime.now()
    report = {
        "date": now.strftime("%Y-%m-%d"),
        "timestamp": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "load_average_end": _load_average(),
        "wall_s": time.perf_counter() - t_start,
        "results": results,
    }
    table = render_markdown(report)
    print(table)
    if not args.no_write:
        paths = write_results(report, table, args.out_dir, "cpu", quick=report["quick"])
        print("wrote " + " and ".join(paths), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
