"""CPU throughput of our text-classification encoder next to transformers' BERT.

    python -m benchmarks.classify_bench          # BERT-base shape (several minutes on 2 cores)
    python -m benchmarks.classify_bench --quick  # smoke run: a 2-layer d=128 shape

Both sides are the same function where it matters: post-LN encoder, exact gelu,
learned absolute positions, token-type embeddings (2 types), biases on the attention
projections, LayerNorm eps 1e-12 after the embeddings and in every layer, BERT's
pooler (dense -> tanh) -> dropout -> classifier on the first token. The parameter
counts are asserted to agree within 1% before anything is timed.

Training: examples/s of a jitted step (value_and_grad of the mean softmax cross-entropy
of `TextEncoderModel`'s logits, `optax.adamw`, dropout 0.1, float32, state donated)
against `BertForSequenceClassification` in eager mode with `torch.optim.AdamW` (same
lr, betas, eps and weight decay), dropout on, random init from a `BertConfig`.

Inference: examples/s of a jitted deterministic forward against the torch model in
eval mode under `torch.inference_mode()`.

Steady state only: compilation and warmup are excluded, each figure is the median over
timed windows, and the windows of the two sides alternate (ours, torch, torch, ours,
...) so that load from other processes hits both alike.

Full runs write benchmarks/results/classify_cpu_<date>.json and classify_cpu_latest.md;
quick runs write classify_cpu_<date>_quick.json and classify_cpu_quick.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.report import write_results
from benchmarks.run import RESULTS_DIR, _load_average, _set_torch_threads, _torch, machine_info

PAD_ID = 0
# AdamW settings shared by both sides.
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.999), 1e-8, 0.01
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One encoder size and the batch shapes it is measured at."""

    name: str
    vocab: int
    d_model: int
    heads: int
    d_ff: int
    layers: int
    max_position: int
    token_types: int
    num_labels: int
    train_batch: int
    train_len: int
    infer_batch: int
    infer_len: int


@dataclasses.dataclass(frozen=True)
class Timing:
    """How much to run; every timed figure is a median over its windows."""

    train_windows: int
    steps_per_window: int
    train_warmup: int  # untimed steps after the first (compiling) one
    infer_windows: int  # one forward of the inference batch each
    infer_warmup: int  # untimed forwards after the first (compiling) one


BERT_BASE = Shape(
    name="bert_base",
    vocab=30522,
    d_model=768,
    heads=12,
    d_ff=3072,
    layers=12,
    max_position=512,
    token_types=2,
    num_labels=2,
    train_batch=8,
    train_len=128,
    infer_batch=32,
    infer_len=128,
)
QUICK_SHAPE = Shape(
    name="encoder_2x128",
    vocab=1000,
    d_model=128,
    heads=4,
    d_ff=512,
    layers=2,
    max_position=128,
    token_types=2,
    num_labels=2,
    train_batch=8,
    train_len=64,
    infer_batch=8,
    infer_len=64,
)
FULL_TIMING = Timing(
    train_windows=5, steps_per_window=1, train_warmup=1, infer_windows=5, infer_warmup=1
)
QUICK_TIMING = Timing(
    train_windows=2, steps_per_window=1, train_warmup=0, infer_windows=2, infer_warmup=0
)


# ------------------------------------------------------------------------------------ helpers


def cpu_vector_extensions() -> dict[str, bool]:
    """Which of the SIMD extensions that matter for matmuls /proc/cpuinfo lists."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {name: name in flags for name in VECTOR_FLAGS}


def _batch(shape: Shape, rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Full (unpadded) random ids, both token types, random labels."""
    rng = np.random.default_rng(seed)
    types = np.zeros((rows, length), np.int32)
    types[:, length // 2 :] = 1  # sentence pairs: A then B
    return {
        "ids": rng.integers(PAD_ID + 1, shape.vocab, size=(rows, length)).astype(np.int32),
        "types": types,
        "labels": rng.integers(0, shape.num_labels, size=(rows,)).astype(np.int32),
    }


class _Bench:
    """A measured side: `prepare` compiles and warms up, each `window` returns seconds."""

    label = ""
    examples_per_window = 0

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
        log(f"  window {w + 1}/{windows}")
    rows = []
    for b, ts in zip(benches, times):
        med = statistics.median(ts)
        n = b.examples_per_window
        rows.append(
            dict(
                b.summary(),
                label=b.label,
                window_s=ts,
                median_window_s=med,
                examples_per_window=n,
                examples_per_s=n / med,
                examples_per_s_range=[n / max(ts), n / min(ts)],
            )
        )
    return rows


# ------------------------------------------------------------------------------------ ours


def our_config(shape: Shape, *, dropout: bool):
    """The classification task's own config path (`classification_base` -> `model_config`)."""
    from transformer_jax.tasks.classification.config import classification_base, model_config

    cfg = classification_base()
    cfg.model.update(
        d_model=shape.d_model,
        num_heads=shape.heads,
        d_ff=shape.d_ff,
        num_encoder_layers=shape.layers,
        max_position=shape.max_position,
        num_token_types=shape.token_types,
        dropout_rate=0.1,
        dtype="float32",
    )
    cfg.data.max_length = max(shape.train_len, shape.infer_len)
    cfg.head.type = "bert"  # BERT's pooler, as in BertForSequenceClassification
    cfg.head.dropout = -1.0
    config = model_config(
        cfg, vocab_size=shape.vocab, pad_id=PAD_ID, num_labels=shape.num_labels, mlm_head=False
    )
    enc = config.encoder
    same = dict(
        activation="gelu",
        norm_position="post",
        norm_type="layer",
        position_type="learned",
        attention_bias=True,
        mlp_bias=True,
        scale_embeddings=False,
        layer_norm_eps=1e-12,
    )
    differ = {k: getattr(enc, k) for k, v in same.items() if getattr(enc, k) != v}
    if differ or not config.embedding_norm or config.position_offset:
        raise AssertionError(f"our encoder is not BERT's function: {differ}")
    return config.replace(deterministic=not dropout)


def our_params(shape: Shape, seed: int = 0):
    """BERT's initialization (weights normal(0.02), zero biases, unit LayerNorm scales),
    drawn with numpy into the shapes `init` gives: nothing is compiled."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from transformer_jax.tasks.classification.model import TextEncoderModel

    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    model = TextEncoderModel(our_config(shape, dropout=False))
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(seed), ids, ids)["params"])
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _count(params) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(params)))


def _train_step(state, batch, *, model, tx, base_rng):
    """One AdamW step on the mean cross-entropy of the logits; returns (state, loss)."""
    import jax
    import optax

    params, opt_state, step = state

    def loss_fn(p):
        out = model.apply(
            {"params": p},
            batch["ids"],
            batch["types"],
            heads=("logits",),
            rngs={"dropout": jax.random.fold_in(base_rng, step)},
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["labels"])
        return ce.mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, step + 1), loss


class OursTrain(_Bench):
    """The jitted train step, state donated, on one fixed batch."""

    label = "ours (jax.jit)"

    def __init__(self, shape: Shape, timing: Timing, params, seed: int = 0):
        self.shape, self.timing, self.seed = shape, timing, seed
        self.init_params = params
        self.examples_per_window = shape.train_batch * timing.steps_per_window

    def prepare(self) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        from transformer_jax.tasks.classification.model import TextEncoderModel

        shape = self.shape
        batch = _batch(shape, shape.train_batch, shape.train_len, self.seed)
        self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
        tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)
        # A copy: the donated state must not consume the caller's arrays.
        params = jax.tree.map(jnp.copy, self.init_params)
        self.init_params = None
        self.state = (params, tx.init(params), jnp.zeros((), jnp.int32))
        self.step_fn = jax.jit(
            functools.partial(
                _train_step,
                model=TextEncoderModel(our_config(shape, dropout=True)),
                tx=tx,
                base_rng=jax.random.key(self.seed),
            ),
            donate_argnums=(0,),
        )
        t0 = time.perf_counter()
        self._steps(1)
        self.first_step_s = time.perf_counter() - t0
        self._steps(self.timing.train_warmup)

    def _steps(self, n: int) -> None:
        import jax

        for _ in range(n):
            self.state, self.loss = self.step_fn(self.state, self.batch)
        jax.block_until_ready(self.state)

    def window(self) -> float:
        t0 = time.perf_counter()
        self._steps(self.timing.steps_per_window)
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        loss = float(self.loss)
        return {
            "params": _count(self.state[0]),
            "first_step_s": self.first_step_s,  # compilation included
            "final_loss": loss,
            "loss_finite": math.isfinite(loss),
        }


class OursInfer(_Bench):
    """The jitted deterministic forward to the logits."""

    label = "ours (jax.jit)"

    def __init__(self, shape: Shape, timing: Timing, params, seed: int = 0):
        self.shape, self.timing, self.seed, self.params = shape, timing, seed, params
        self.examples_per_window = shape.infer_batch

    def prepare(self) -> None:
        import jax
        import jax.numpy as jnp

        from transformer_jax.tasks.classification.model import TextEncoderModel

        shape = self.shape
        batch = _batch(shape, shape.infer_batch, shape.infer_len, self.seed + 1)
        self.ids, self.types = jnp.asarray(batch["ids"]), jnp.asarray(batch["types"])
        model = TextEncoderModel(our_config(shape, dropout=False))
        self.fn = jax.jit(
            lambda p, ids, types: model.apply({"params": p}, ids, types, heads=("logits",))[
                "logits"
            ]
        )
        t0 = time.perf_counter()
        self.window()
        self.first_call_s = time.perf_counter() - t0
        for _ in range(self.timing.infer_warmup):
            self.window()

    def window(self) -> float:
        t0 = time.perf_counter()
        self.out = np.asarray(self.fn(self.params, self.ids, self.types))
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        return {
            "output_shape": list(self.out.shape),
            "logits_finite": bool(np.isfinite(self.out).all()),
            "first_call_s": self.first_call_s,  # compilation included
        }


# ------------------------------------------------------------------------------------ torch


def torch_model(shape: Shape, seed: int = 0):
    """`BertForSequenceClassification` with the same dimensions, random init (no download)."""
    torch = _torch()
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.d_ff,
        hidden_act="gelu",  # exact (erf) gelu
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=shape.max_position,
        type_vocab_size=shape.token_types,
        layer_norm_eps=1e-12,
        pad_token_id=PAD_ID,
        num_labels=shape.num_labels,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def _torch_inputs(shape: Shape, rows: int, length: int, seed: int) -> dict[str, Any]:
    torch = _torch()
    b = _batch(shape, rows, length, seed)
    return {
        "input_ids": torch.from_numpy(b["ids"]).long(),
        "token_type_ids": torch.from_numpy(b["types"]).long(),
        "attention_mask": torch.ones(rows, length, dtype=torch.long),  # as a tokenizer gives
        "labels": torch.from_numpy(b["labels"]).long(),
    }


class TorchTrain(_Bench):
    """An eager PyTorch training step on the same batch."""

    label = "torch (eager)"

    def __init__(self, shape: Shape, timing: Timing, seed: int = 0):
        self.shape, self.timing, self.seed = shape, timing, seed
        self.examples_per_window = shape.train_batch * timing.steps_per_window

    def prepare(self) -> None:
        torch = _torch()
        self.threads = _set_torch_threads(torch)
        shape = self.shape
        self.model = torch_model(shape, self.seed)
        self.model.train()
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
        )
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.inputs = _torch_inputs(shape, shape.train_batch, shape.train_len, self.seed)
        self.labels = self.inputs.pop("labels")
        t0 = time.perf_counter()
        self._steps(1)
        self.first_step_s = time.perf_counter() - t0
        self._steps(self.timing.train_warmup)

    def _steps(self, n: int) -> None:
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            logits = self.model(**self.inputs).logits
            loss = self.loss_fn(logits, self.labels)
            loss.backward()
            self.opt.step()
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
            "attn_implementation": self.model.config._attn_implementation,
            "first_step_s": self.first_step_s,
            "final_loss": loss,
            "loss_finite": math.isfinite(loss),
        }


class TorchInfer(_Bench):
    """The torch model in eval mode under torch.inference_mode()."""

    label = "torch (eager, inference_mode)"

    def __init__(self, shape: Shape, timing: Timing, seed: int = 0):
        self.shape, self.timing, self.seed = shape, timing, seed
        self.examples_per_window = shape.infer_batch

    def prepare(self) -> None:
        torch = _torch()
        self.torch = torch
        self.threads = _set_torch_threads(torch)
        shape = self.shape
        self.model = torch_model(shape, self.seed)
        self.model.eval()
        self.inputs = _torch_inputs(shape, shape.infer_batch, shape.infer_len, self.seed + 1)
        self.inputs.pop("labels")
        t0 = time.perf_counter()
        self.window()
        self.first_call_s = time.perf_counter() - t0
        for _ in range(self.timing.infer_warmup):
            self.window()

    def window(self) -> float:
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            self.out = self.model(**self.inputs).logits.numpy()
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "output_shape": list(self.out.shape),
            "logits_finite": bool(np.isfinite(self.out).all()),
            "first_call_s": self.first_call_s,
        }


# ------------------------------------------------------------------------------------ driver


def check_param_counts(shape: Shape, params) -> dict[str, int]:
    """Both models' parameter counts; raises unless they agree within 1%."""
    ours = _count(params)
    theirs = int(sum(p.numel() for p in torch_model(shape).parameters()))
    if abs(ours - theirs) > 0.01 * theirs:
        raise AssertionError(
            f"parameter counts differ by more than 1%: ours {ours}, torch {theirs}"
        )
    return {"ours": ours, "torch": theirs}


def run_shape(
    shape: Shape, timing: Timing, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Training and inference measurements of one shape, ours and torch side by side."""
    out: dict[str, Any] = {"shape": dataclasses.asdict(shape), "timing": dataclasses.asdict(timing)}
    params = our_params(shape)  # one set of initial weights for our training and inference
    out["params"] = check_param_counts(shape, params)
    log(f"[{shape.name}] params ours {out['params']['ours']:,} / torch {out['params']['torch']:,}")

    log(f"[{shape.name}] training, batch {shape.train_batch} x {shape.train_len}")
    rows = _interleave(
        [OursTrain(shape, timing, params), TorchTrain(shape, timing)], timing.train_windows, log
    )
    for row in rows:
        row["ms_per_step"] = 1e3 * row["median_window_s"] / timing.steps_per_window
    out["train"] = {
        "batch": [shape.train_batch, shape.train_len],
        "ours": rows[0],
        "torch": rows[1],
        "ratio_ours_over_torch": rows[0]["examples_per_s"] / rows[1]["examples_per_s"],
    }
    del rows  # release both training states before inference

    log(f"[{shape.name}] inference, batch {shape.infer_batch} x {shape.infer_len}")
    rows = _interleave(
        [OursInfer(shape, timing, params), TorchInfer(shape, timing)], timing.infer_windows, log
    )
    for row in rows:
        row["ms_per_batch"] = 1e3 * row["median_window_s"]
    out["inference"] = {
        "batch": [shape.infer_batch, shape.infer_len],
        "ours": rows[0],
        "torch": rows[1],
        "ratio_ours_over_torch": rows[0]["examples_per_s"] / rows[1]["examples_per_s"],
    }
    return out


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def _fmt_range(row: dict[str, Any]) -> str:
    lo, hi = row["examples_per_s_range"]
    return f"{_fmt_rate(lo)}-{_fmt_rate(hi)}"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    ext = report["vector_extensions"]
    has = ", ".join(k for k, v in ext.items() if v) or "none"
    lacks = ", ".join(k for k, v in ext.items() if not v) or "none"
    lines = [
        f"# CPU classification benchmark ({report['timestamp']}"
        f"{', quick' if report['quick'] else ''})",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores available to the process; vector "
        f"extensions: {has} (not: {lacks})",
        f"- jax {m['jax']} (jaxlib {m['jaxlib']}, backend {m['jax_backend']}), flax "
        f"{m['flax']}, optax {report['optax']}, torch {m['torch']}, transformers "
        f"{report['transformers']}, python {m['python']}",
        f"- threads: torch.set_num_threads({m['torch_threads']}), OMP_WAIT_POLICY="
        f"{m['omp_wait_policy']}; XLA sizes its own CPU thread pool (not set here)",
        f"- load average (1/5/15 min): {m['load_average_1_5_15']} at start, "
        f"{report['load_average_end']} at end. Other processes shared the cores; the two "
        "sides' timed windows alternate so that load hits both alike, but absolute numbers "
        "are noisy",
        f"- total wall time {report['wall_s']:.0f} s",
        "",
        "## Training (examples/s, median of timed windows)",
        "",
        "| shape | params ours / torch | batch (rows x len) | windows x steps | ours ex/s "
        "| torch ex/s | ours/torch | ours ms/step | torch ms/step | ours range | torch range |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        s, t, tr, p = r["shape"], r["timing"], r["train"], r["params"]
        ours, peer = tr["ours"], tr["torch"]
        cells = [
            s["name"],
            f"{p['ours'] / 1e6:.2f}M / {p['torch'] / 1e6:.2f}M",
            f"{s['train_batch']} x {s['train_len']}",
            f"{t['train_windows']} x {t['steps_per_window']}",
            _fmt_rate(ours["examples_per_s"]),
            _fmt_rate(peer["examples_per_s"]),
            f"{tr['ratio_ours_over_torch']:.2f}x",
            f"{ours['ms_per_step']:.0f}",
            f"{peer['ms_per_step']:.0f}",
            _fmt_range(ours),
            _fmt_range(peer),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Inference (examples/s, median of timed forwards)",
        "",
        "| shape | batch (rows x len) | forwards | ours ex/s | torch ex/s | ours/torch "
        "| ours ms/batch | torch ms/batch | ours range | torch range |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        s, t, inf = r["shape"], r["timing"], r["inference"]
        ours, peer = inf["ours"], inf["torch"]
        cells = [
            s["name"],
            f"{s['infer_batch']} x {s['infer_len']}",
            str(t["infer_windows"]),
            _fmt_rate(ours["examples_per_s"]),
            _fmt_rate(peer["examples_per_s"]),
            f"{inf['ratio_ours_over_torch']:.2f}x",
            f"{ours['ms_per_batch']:.0f}",
            f"{peer['ms_per_batch']:.0f}",
            _fmt_range(ours),
            _fmt_range(peer),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    attn = report["results"][0]["train"]["torch"].get("attn_implementation")
    lines += [
        "",
        "Notes:",
        "",
        "- ours: `TextEncoderModel` built by the classification task's config path "
        "(`classification_base()` -> `model_config`, BERT's pooler head), a jitted step "
        "(`jax.value_and_grad` of the mean softmax cross-entropy, `optax.adamw`, dropout "
        "0.1, float32, state donated) and a jitted deterministic forward. Compilation is "
        "excluded (first_step_s / first_call_s in the JSON include it).",
        "- torch: `transformers.BertForSequenceClassification` from a `BertConfig` with the "
        f"same dimensions (random init), eager, attention implementation `{attn}`, "
        "`torch.optim.AdamW` with the same lr / betas / eps / weight decay, "
        "`CrossEntropyLoss`; inference in eval mode under `torch.inference_mode()`.",
        "- Same function: post-LN, exact gelu, learned positions, 2 token types, attention "
        "biases, LayerNorm eps 1e-12; parameter counts are asserted to agree within 1%. "
        "One difference: BERT also drops out attention probabilities (0.1); ours drops out "
        "embeddings, residual branches and the head's input only.",
        "- Batches are full (unpadded) random token ids with an all-ones attention mask, "
        "reused every step; host data loading and tokenization are measured on neither side.",
        "- range: slowest and fastest timed window, in examples/s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: a 2-layer d=128 shape, 2 timed windows"
    )
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)

    # OpenMP reads this once, when torch loads it: its default busy-wait stalls torch's
    # parallel regions whenever another process holds a core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if _torch() is None:
        print("error: this benchmark needs torch and transformers installed", file=sys.stderr)
        raise SystemExit(2)
    import optax
    import transformers

    t_start = time.perf_counter()
    machine = machine_info()
    shape, timing = (QUICK_SHAPE, QUICK_TIMING) if args.quick else (BERT_BASE, FULL_TIMING)

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - t_start:7.1f}s {msg}", file=sys.stderr, flush=True)

    results = [run_shape(shape, timing, log=log)]
    now = dt.datetime.now()
    report = {
        "date": now.strftime("%Y-%m-%d"),
        "timestamp": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "vector_extensions": cpu_vector_extensions(),
        "optax": optax.__version__,
        "transformers": transformers.__version__,
        "load_average_end": _load_average(),
        "wall_s": time.perf_counter() - t_start,
        "results": results,
    }
    table = render_markdown(report)
    print(table)
    if not args.no_write:
        paths = write_results(report, table, args.out_dir, "classify_cpu", quick=report["quick"])
        print("wrote " + " and ".join(paths), file=sys.stderr)
    return report


if __name__ == "__main__":
    from transformer_jax.malloc_env import reexec_with_tuned_malloc

    # The malloc settings `tjax` runs with, for both sides (the workers inherit them).
    reexec_with_tuned_malloc(("benchmarks.classify_bench",))
    main()
