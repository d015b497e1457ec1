"""CPU throughput of our training step and decoders next to a torch.nn.Transformer peer.

    python -m benchmarks.run            # tiny + paper-base shapes (a few minutes on 2 cores)
    python -m benchmarks.run --quick    # smoke run: tiny shape only, 2 timed windows

Training: tokens/s (source + target tokens of a full, unpadded batch) of the jitted
`train_step` (Adam 0.9/0.98/1e-9 with the rsqrt schedule, label smoothing 0.1,
dropout 0.1, float32) against a model built from `torch.nn.Transformer` with the
same sizes, shared tied embedding, sinusoidal positions, `CrossEntropyLoss(
label_smoothing=0.1)` and `torch.optim.Adam(betas=(0.9, 0.98), eps=1e-9)`.

Decoding: generated tokens/s of `translate_ids` (greedy and beam 4, KV cache)
against greedy decoding with the torch model, which re-runs the decoder over the
whole prefix at every step (nn.Transformer has no KV cache). Weights are random,
so eos is disabled on both sides: every run is fixed-length and the token count is
batch x max_decode_len.

Steady state only: compilation and warmup are excluded, and each figure is the
median over timed windows. The windows of the two sides alternate (ours, torch,
torch, ours, ...) so that load from other processes hits both alike.

Full runs write benchmarks/results/cpu_<date>.json and cpu_latest.md; quick runs
write cpu_<date>_quick.json and cpu_quick.md so they never replace a full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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

BASE = Shape(
    name="paper_base",
    vocab=37000,
    d_model=512,
    heads=8,
    d_ff=2048,
    enc_layers=6,
    dec_layers=6,
    batch=8,
    src_len=64,
    tgt_len=64,
    decode_batch=8,
    decode_src_len=64,
    decode_len=64,
)

FULL_PLAN = (
    (
        TINY,
        Timing(windows=5, steps_per_window=5, warmup_steps=2, decode_windows=5, decode_warmup=1),
    ),
    (
        BASE,
        Timing(windows=5, steps_per_window=1, warmup_steps=1, decode_windows=4, decode_warmup=0),
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


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _set_torch_threads(torch) -> int:
    torch.set_num_threads(_cpu_count())
    return torch.get_num_threads()


def machine_info() -> dict[str, Any]:
    import flax
    import jax
    import jaxlib

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


def _interleave(benches: Sequence[_Bench], windows: int, log: Callable[[str], None]) -> list[dict]:
    """Prepares every bench, then alternates their timed windows (ABBA order)."""
    for b in benches:
        log(f"  prepare {b.label}")
        b.prepare()
    times: list[list[float]] = [[] for _ in benches]
    for w in range(windows):
        order = list(range(len(benches)))
        for i in order if w % 2 == 0 else reversed(order):
            times[i].append(benches[i].window())
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

    def __init__(self, shape: Shape, timing: Timing, seed: int = 0, params=None):
        self.shape, self.timing, self.seed = shape, timing, seed
        self.init_params = params
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
        if self.init_params is None:
            params = _our_params(shape, self.seed)
        else:  # a copy: the donated train state must not consume the caller's arrays
            params = jax.tree.map(jnp.copy, self.init_params)
        self.init_params = None
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

    def __init__(self, shape: Shape, timing: Timing, beam_size: int, seed: int = 0, params=None):
        self.shape, self.timing, self.beam_size, self.seed = shape, timing, beam_size, seed
        self.params = params
        self.label = (
            f"ours beam-{beam_size} (KV cache)" if beam_size > 1 else "ours greedy (KV cache)"
        )
        self.work_per_window = shape.decode_batch * shape.decode_len

    def prepare(self) -> None:
        import jax.numpy as jnp

        from transformer_jax.tasks.translation.decoding import translate_ids

        shape = self.shape
        if self.params is None:
            self.params = _our_params(shape, self.seed)
        rng = np.random.default_rng(self.seed + 1)
        self.src = jnp.asarray(
            _random_ids(rng, shape.vocab, (shape.decode_batch, shape.decode_src_len))
        )
        self.limits = jnp.full((shape.decode_batch,), shape.decode_len, jnp.int32)
        self.fn = functools.partial(
            translate_ids,
            config=_our_config(shape, eos_id=NO_EOS_ID),
            beam_size=self.beam_size,
            alpha=0.6,
            max_decode_len=shape.decode_len,
        )
        t0 = time.perf_counter()
        self.window()
        self.first_call_s = time.perf_counter() - t0
        for _ in range(self.timing.decode_warmup):
            self.window()

    def window(self) -> float:
        t0 = time.perf_counter()
        self.out = np.asarray(self.fn(self.params, self.src, self.limits))
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        return {
            "beam_size": self.beam_size,
            "output_shape": list(self.out.shape),
            "first_call_s": self.first_call_s,  # compilation included
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


class TorchDecode(_Bench):
    """Greedy decoding with the nn.Transformer model: the decoder re-runs on the prefix."""

    label = "torch greedy (no KV cache, prefix recomputed)"

    def __init__(self, shape: Shape, timing: Timing, seed: int = 0):
        self.shape, self.timing, self.seed = shape, timing, seed
        self.work_per_window = shape.decode_batch * shape.decode_len

    def prepare(self) -> None:
        torch = _torch()
        self.torch = torch
        self.threads = _set_torch_threads(torch)
        shape = self.shape
        self.model = torch_model(shape, self.seed)
        self.model.eval()
        rng = np.random.default_rng(self.seed + 1)
        ids = _random_ids(rng, shape.vocab, (shape.decode_batch, shape.decode_src_len))
        self.src = torch.from_numpy(ids).long()
        t0 = time.perf_counter()
        self.window()
        self.first_call_s = time.perf_counter() - t0
        for _ in range(self.timing.decode_warmup):
            self.window()

    def _greedy(self):
        torch, model, shape = self.torch, self.model, self.shape
        with torch.inference_mode(), warnings.catch_warnings():
            # The encoder's inference fast path packs padded batches as nested tensors
            # and warns that this API is a prototype.
            warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
            src_pad = self.src == PAD_ID
            memory = model.encode(self.src, src_pad)
            ys = torch.full((shape.decode_batch, 1), START_ID, dtype=torch.long)
            for _ in range(shape.decode_len):  # fixed length: no eos stop
                h = model.decode(ys, memory, src_pad)
                nxt = model.logits(h[:, -1]).argmax(dim=-1)
                ys = torch.cat([ys, nxt[:, None]], dim=1)
        return ys[:, 1:]

    def window(self) -> float:
        t0 = time.perf_counter()
        self.out = self._greedy()
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        return {
            "beam_size": 1,
            "threads": self.threads,
            "output_shape": list(self.out.shape),
            "first_call_s": self.first_call_s,
        }


# ------------------------------------------------------------------------------------ driver


def run_shape(
    shape: Shape,
    timing: Timing,
    *,
    beams: Sequence[int] = (1, 4),
    with_torch: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Training and decoding measurements of one shape, ours and torch side by side."""
    if with_torch is None:
        with_torch = _torch() is not None
    out: dict[str, Any] = {"shape": dataclasses.asdict(shape), "timing": dataclasses.asdict(timing)}

    log(f"[{shape.name}] training")
    params = _our_params(shape)  # one set of initial weights for all of our benches
    benches: list[_Bench] = [OursTrain(shape, timing, params=params)]
    if with_torch:
        benches.append(TorchTrain(shape, timing))
    rows = _interleave(benches, timing.windows, log)
    for row in rows:
        row["tokens_per_step"] = shape.batch * (shape.src_len + shape.tgt_len)
        row["ms_per_step"] = 1e3 * row["median_window_s"] / timing.steps_per_window
    train: dict[str, Any] = {"ours": rows[0]}
    if with_torch:
        train["torch"] = rows[1]
        train["ratio_ours_over_torch"] = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    out["train"] = train
    del benches, rows  # release the training states before decoding

    log(f"[{shape.name}] decoding")
    benches = [OursDecode(shape, timing, beam, params=params) for beam in beams]
    if with_torch:
        benches.append(TorchDecode(shape, timing))
    decode = _interleave(benches, timing.decode_windows, log)
    for row in decode:
        row.update(
            batch=shape.decode_batch,
            src_len=shape.decode_src_len,
            max_decode_len=shape.decode_len,
            tokens_counted="batch x max_decode_len (fixed-length run, eos disabled)",
            ms_per_call=1e3 * row["median_window_s"],
        )
        if with_torch:
            row["ratio_vs_torch_greedy"] = row["tokens_per_s"] / decode[-1]["tokens_per_s"]
    out["decode"] = decode
    return out


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def _fmt_range(row: dict[str, Any]) -> str:
    lo, hi = row["tokens_per_s_range"]
    return f"{_fmt_rate(lo)}-{_fmt_rate(hi)}"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# CPU benchmark ({report['timestamp']}{', quick' if report['quick'] else ''})",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores available to the process",
        f"- jax {m['jax']} (jaxlib {m['jaxlib']}, backend {m['jax_backend']}, "
        f"{m['jax_device_count']} device(s)), flax {m['flax']}, torch {m['torch']}, "
        f"python {m['python']}",
        f"- threads: torch.set_num_threads({m['torch_threads']}), OMP_WAIT_POLICY="
        f"{m['omp_wait_policy']}; XLA sizes its own CPU thread pool (not set here)",
        f"- GLIBC_TUNABLES={m.get('glibc_tunables')} for both sides (TJAX_MALLOC=default: unset)",
        f"- load average (1/5/15 min): {m['load_average_1_5_15']} at start, "
        f"{report['load_average_end']} at end. Other processes may share the cores; the "
        "two sides' timed windows alternate so that load hits both alike, but absolute "
        "numbers are noisy",
        f"- total wall time {report['wall_s']:.0f} s",
        "",
        "## Training throughput (source + target tokens/s, median of timed windows)",
        "",
        "| shape | params ours / torch | batch (rows x src+tgt) | windows x steps | ours tok/s "
        "| torch tok/s | ours/torch | ours ms/step | torch ms/step | ours range | torch range |",
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
            _fmt_range(ours),
            _fmt_range(peer) if peer else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Decode throughput (generated tokens/s, median of timed calls)",
        "",
        "Fixed-length runs: weights are random, so eos is disabled on both sides and every "
        "row generates exactly max_decode_len tokens; tokens counted = batch x max_decode_len "
        "(for beam 4: the returned best hypothesis per row, not the 4x beam work).",
        "",
        "| shape | decoder | batch | src len | max_decode_len | tokens counted | calls "
        "| tok/s | range | ms/call | vs torch greedy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for d in r["decode"]:
            ratio = d.get("ratio_vs_torch_greedy")
            cells = [
                r["shape"]["name"],
                d["label"],
                str(d["batch"]),
                str(d["src_len"]),
                str(d["max_decode_len"]),
                str(d["tokens_per_window"]),
                str(len(d["window_s"])),
                _fmt_rate(d["tokens_per_s"]),
                _fmt_range(d),
                f"{d['ms_per_call']:.1f}",
                f"{ratio:.2f}x" if ratio is not None else "n/a",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Notes:",
        "",
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
        "- torch greedy: nn.Transformer has no KV cache, so every step re-runs the decoder "
        "over the whole prefix (the encoder runs once; logits for the last position only), "
        "which is what nn.Transformer users do. There is no torch beam-search peer.",
        "- Training batches are full (unpadded) random token ids, reused every step; host "
        "data loading is measured on neither side.",
        "- range: slowest and fastest timed window, in tok/s.",
        "- OMP_WAIT_POLICY=PASSIVE is set for torch unless the environment sets it: with "
        "OpenMP's default busy-waiting, torch's parallel regions stall whenever another "
        "process holds a core, which made torch several times slower on a shared machine. "
        "XLA's thread pool needs no such setting.",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], table: str, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    suffix = "_quick" if report["quick"] else ""
    json_path = os.path.join(out_dir, f"cpu_{report['date']}{suffix}.json")
    md_path = os.path.join(out_dir, "cpu_quick.md" if report["quick"] else "cpu_latest.md")
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"), (md_path, table)):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return json_path, md_path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None:  # `python -m benchmarks.run`: the malloc settings `tjax` runs with
        from transformer_jax.malloc_env import reexec_with_tuned_malloc

        # Both sides run in this one process, so both get the same malloc settings.
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

    results = [run_shape(shape, timing, log=log) for shape, timing in plan]
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
        paths = write_report(report, table, args.out_dir)
        print("wrote " + " and ".join(paths), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
