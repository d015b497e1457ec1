"""CPU speed of the multimodal model: training steps and `describe` answers.

    python -m benchmarks.multimodal_bench                  # tiny + base-sized (minutes on 2 cores)
    python -m benchmarks.multimodal_bench --quick --out D  # smoke: tiny model cut to one layer per stack

Training: examples/s, text tokens/s, step time and model FLOP/s (`MultimodalTask.batch_counts`,
the figure the trainer logs) of the library's jitted `train_step` (the task's loss, the
run config's optimizer from `make_optimizer`: global-norm clipping + AdamW, state
donated) on one fixed synthetic batch with the structure `MultimodalTask.example_batch`
gives and every medium present (two random images, a full-length random clip, a random
video), prompt half and answer half of the text columns. Models: the `multimodal_tiny`
config's, and a base-sized one (see `base_config`): decoder d 768 x 12 layers, ViT-B/16 at
224 px for images and for video tubelets, a Whisper-base-sized audio encoder.

Describe: latency of one `ImageTextToTextPipeline` call (batch 1) with random-init
`multimodal_tiny` params and a SentencePiece model trained on the corpus's training
texts, for an image, an audio and a video question from the corpus's test split, given
as arrays and as files (PNG, WAV, MP4: the `tjax describe` path less loading the run).
Every call generates exactly `max_new_tokens` tokens (the model's eos id is replaced by
one never produced); the tokens before the tokenizer's eos are reported too.

Compilation and warm-up are excluded; every figure is a median over timed windows.
There is no peer to run side by side: no transformers model has this architecture.

Full runs write benchmarks/results/multimodal_cpu_<date>.json and multimodal_cpu_latest.md
(benchmarks/report.py); --quick writes only under --out (nothing without it).
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
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.classify_bench import _Bench, _interleave, cpu_vector_extensions
from benchmarks.report import write_results
from benchmarks.run import RESULTS_DIR, _load_average, machine_info

TINY_CONFIG = "multimodal_tiny"
BASE_VOCAB = 32_000  # a stand-in vocabulary size for the base-sized decoder
DESCRIBE_TASKS = ("image_qa", "audio_qa", "video_qa")


@dataclasses.dataclass(frozen=True)
class TrainCase:
    """One model and how its training step is timed."""

    name: str
    batch: int
    windows: int  # timed windows; figures are medians over them
    steps_per_window: int
    warmup_steps: int  # untimed steps after the first (compiling) one


@dataclasses.dataclass(frozen=True)
class Plan:
    train: tuple[TrainCase, ...]
    describe_repeats: int  # timed calls per input
    describe_warmup: int  # untimed calls per input after the first (compiling) one
    max_new_tokens: int
    base_image_size: int
    one_layer: bool = False  # smoke runs: every stack one layer deep (compiles fast)


# The base-sized model is measured only with --base: on 2 shared cores compiling even
# the tiny model's train step took minutes, and the base model has four times its layers.
BASE_CASE = TrainCase("base", batch=2, windows=2, steps_per_window=1, warmup_steps=0)
FULL = Plan(
    train=(TrainCase("multimodal_tiny", batch=32, windows=3, steps_per_window=2, warmup_steps=1),),
    describe_repeats=10,
    describe_warmup=1,
    max_new_tokens=8,
    base_image_size=224,
)
QUICK = Plan(
    train=(TrainCase("multimodal_tiny", batch=8, windows=1, steps_per_window=1, warmup_steps=0),),
    describe_repeats=1,
    describe_warmup=0,
    max_new_tokens=4,
    base_image_size=224,
    one_layer=True,
)


# ------------------------------------------------------------------------------ configs


def tiny_config(one_layer: bool = False):
    from transformer_jax.config import load_config

    cfg = load_config(TINY_CONFIG)
    if one_layer:
        cfg.model.num_decoder_layers = 1
        cfg.image.num_layers = cfg.audio.num_layers = 1
    return cfg


def base_config(image_size: int = 224):
    """The tiny run config at base size: a Llama-style decoder of d 768, 12 layers, 12
    heads, ff 3072 (vocab `BASE_VOCAB`); images and video tubelets (4 frames, 2 x 16 x 16)
    through ViT-B/16 stacks (d 768, 12 layers, 12 heads, ff 3072) at `image_size` px; audio
    through a Whisper-base-sized stack (d 512, 6 layers, 8 heads, ff 2048)."""
    from transformer_jax.tasks.multimodal.task import MultimodalTask

    cfg = tiny_config()
    cfg.tokenizer.vocab_size = BASE_VOCAB
    cfg.model.update(d_model=768, num_heads=12, d_ff=3072, num_decoder_layers=12)
    cfg.model.max_position = 2048  # media columns + text columns
    cfg.image.update(image_size=image_size, patch_size=16, stem="patch")
    cfg.image.update(d_model=768, num_heads=12, d_ff=3072, num_layers=12)
    cfg.audio.update(d_model=512, num_heads=8, d_ff=2048, num_layers=6)
    MultimodalTask.validate_config(cfg)
    return cfg


def _stand_in_tokenizer(vocab_size: int):
    """What `model_config` reads of a tokenizer (SentencePiece's special ids)."""
    return types.SimpleNamespace(vocab_size=vocab_size, bos_id=2, eos_id=1, pad_id=0)


def synthetic_batch(task, config, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`rows` rows shaped like `task.example_batch(config)`: random text ids (prompt half,
    answer half), random pixels and samples, every image slot, the whole clip and the
    video present."""
    rng = np.random.default_rng(seed)
    proto = task.example_batch(config)
    L = proto["tokens"].shape[1]
    vocab = config.text.vocab_size
    fill: dict[str, Callable[[tuple[int, ...]], np.ndarray]] = {
        "tokens": lambda s: rng.integers(3, vocab, s).astype(np.int32),
        "text_mask": lambda s: np.ones(s, np.int32),
        "prefix_len": lambda s: np.full(s, L // 2, np.int32),
        "task_id": lambda s: np.zeros(s, np.int32),
        "images": lambda s: rng.integers(0, 256, s, dtype=np.uint8),
        "num_images": lambda s: np.full(s, config.max_images, np.int32),
        "audio": lambda s: rng.normal(0.0, 3000.0, s).clip(-32768, 32767).astype(np.int16),
        "audio_samples": lambda s: np.full(s, config.audio.max_samples, np.int32),
        "video": lambda s: rng.integers(0, 256, s, dtype=np.uint8),
        "num_frames": lambda s: np.full(s, config.vision.num_frames, np.int32),
    }
    unknown = sorted(set(proto) - set(fill))
    if unknown:
        raise AssertionError(f"example_batch has keys this benchmark cannot fill: {unknown}")
    out = {}
    for key, value in proto.items():
        out[key] = fill[key]((rows,) + value.shape[1:]).astype(value.dtype)
    return out


def random_params(task, model, config, seed: int = 0):
    """Random parameters in the shapes the task's `init_variables` gives (weights
    normal(0.02), zero biases, unit norm scales), drawn with numpy: nothing is compiled
    or run op by op, which on this CPU would take longer than the measurement."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    batch = task.example_batch(config)
    shapes = jax.eval_shape(lambda: task.init_variables(model, jax.random.key(seed), batch))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype))

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes["params"]))


def _count(params) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(params)))


# ------------------------------------------------------------------------------ training


class MultimodalTrain(_Bench):
    """The library's `train_step` under jax.jit, state donated, on one fixed batch."""

    def __init__(self, cfg, case: TrainCase, seed: int = 0):
        self.cfg, self.case, self.seed = cfg, case, seed
        self.label = case.name
        self.examples_per_window = case.batch * case.steps_per_window

    def prepare(self) -> None:
        import jax
        import jax.numpy as jnp

        from transformer_jax.tasks.multimodal.config import model_config
        from transformer_jax.tasks.multimodal.task import MultimodalTask
        from transformer_jax.train.optim import make_optimizer
        from transformer_jax.train.trainer import TrainState, train_step

        cfg, case = self.cfg, self.case
        task = MultimodalTask(cfg)
        config = model_config(cfg, _stand_in_tokenizer(cfg.tokenizer.vocab_size))
        self.config = config
        batch = synthetic_batch(task, config, case.batch, self.seed)
        tokens, flops = task.batch_counts(batch, config)
        self.text_tokens, self.flops = float(tokens), float(flops)
        self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
        model = task.build_model(config)
        t0 = time.perf_counter()
        params = random_params(task, model, config, self.seed)
        self.init_s = time.perf_counter() - t0
        tx = make_optimizer(cfg.optimizer, config.d_model, cfg.train.num_steps)
        self.state = TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)
        )
        self.step_fn = jax.jit(
            functools.partial(
                train_step,
                task=task,
                model=task.build_model(config.replace(deterministic=False)),
                tx=tx,
                base_rng=jax.random.key(self.seed),
            ),
            donate_argnums=(0,),
        )
        t0 = time.perf_counter()
        self._steps(1)
        self.first_step_s = time.perf_counter() - t0
        self._steps(case.warmup_steps)

    def _steps(self, n: int) -> None:
        import jax

        for _ in range(n):
            self.state, self.metrics = self.step_fn(self.state, self.batch)
        jax.block_until_ready(self.state)

    def window(self) -> float:
        t0 = time.perf_counter()
        self._steps(self.case.steps_per_window)
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        import jax

        from transformer_jax.tasks.multimodal.model import media_columns

        m = jax.device_get(self.metrics)
        loss = float(m["loss_sum"]) / max(float(m["weight_sum"]), 1.0)
        c = self.config
        return {
            "batch": self.case.batch,
            "steps_per_window": self.case.steps_per_window,
            "warmup_steps": self.case.warmup_steps,
            "params": _count(self.state.params),
            "text_columns": int(self.batch["tokens"].shape[1]),
            "media_columns": media_columns(c),
            "text_tokens_per_step": self.text_tokens,
            "model_flops_per_step": self.flops,
            "init_s": self.init_s,
            "first_step_s": self.first_step_s,  # compilation included
            "final_loss": loss,
            "loss_finite": math.isfinite(loss),
            "model": _describe_model(c),
        }


def _describe_model(c) -> dict[str, Any]:
    t, v, a = c.text, c.vision, c.audio
    out: dict[str, Any] = {
        "decoder": dict(
            d_model=t.d_model,
            layers=t.num_decoder_layers,
            heads=t.num_heads,
            d_ff=t.d_ff,
            vocab=t.vocab_size,
            fusion=c.fusion,
        ),  # fmt: skip
    }
    if v is not None:
        out["vision"] = dict(
            image_size=v.image_size, patch_size=v.patch_size, d_model=v.stack.d_model,
            layers=v.stack.num_encoder_layers, heads=v.stack.num_heads, d_ff=v.stack.d_ff,
            image_tokens=v.image_tokens, max_images=c.max_images, video_mode=v.video_mode,
            num_frames=v.num_frames, tubelet_frames=v.tubelet_frames,
            video_tokens=v.video_tokens if c.video else 0, pool=getattr(v, "pool", 1),
            image_out_tokens=getattr(v, "image_out_tokens", v.image_tokens),
            video_out_tokens=getattr(v, "video_out_tokens", v.video_tokens) if c.video else 0,
        )  # fmt: skip
    if a is not None:
        out["audio"] = dict(
            max_samples=a.max_samples, d_model=a.stack.d_model,
            layers=a.stack.num_encoder_layers, heads=a.stack.num_heads, d_ff=a.stack.d_ff,
            audio_tokens=a.audio_tokens,
        )  # fmt: skip
    return out


def run_train(case: TrainCase, cfg, log: Callable[[str], None]) -> dict[str, Any]:
    bench = MultimodalTrain(cfg, case)
    [row] = _interleave([bench], case.windows, log)
    step_s = row["median_window_s"] / case.steps_per_window
    row.update(
        step_s=step_s,
        text_tokens_per_s=row["text_tokens_per_step"] / step_s,
        model_flops_per_s=row["model_flops_per_step"] / step_s,
        load_average_end=_load_average(),
    )
    return row


# ------------------------------------------------------------------------------ describe


class _CountingTokenizer:
    """A tokenizer that records the length of each id list it decodes (the pipeline
    decodes the ids before the first eos)."""

    def __init__(self, tok):
        self._tok = tok
        self.decoded: list[int] = []

    def decode(self, ids):
        self.decoded.append(len(ids))
        return self._tok.decode(ids)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def bench_tokenizer(cfg, sentences: int = 4000):
    """SentencePiece trained on the prompts and answers of the first training examples."""
    from transformer_jax.data.tokenizer import train_sentencepiece
    from transformer_jax.tasks.multimodal.corpus_mm import generate_examples

    texts = []
    for ex in generate_examples("train", num_examples=sentences):
        texts += [s for s in (ex.prompt, ex.answer) if s.strip()]
    t = cfg.tokenizer
    return train_sentencepiece(texts, vocab_size=t.vocab_size, model_type=t.model_type)


def describe_inputs(tmp: str) -> list[dict[str, Any]]:
    """The first image, audio and video question of the test split, as arrays and files."""
    from PIL import Image

    from transformer_jax.tasks.multimodal import media_io
    from transformer_jax.tasks.multimodal.corpus_mm import records

    found: dict[str, dict[str, Any]] = {}
    for rec in records("test", num_examples=400):
        task = str(rec["task"])
        if task in DESCRIBE_TASKS and task not in found:
            found[task] = rec
        if len(found) == len(DESCRIBE_TASKS):
            break
    missing = [t for t in DESCRIBE_TASKS if t not in found]
    if missing:
        raise AssertionError(f"no {missing} among the first test examples")
    out = []
    for task in DESCRIBE_TASKS:
        rec = found[task]
        arrays: dict[str, Any] = {"text": rec["prompt"]}
        files: dict[str, Any] = {"text": rec["prompt"]}
        if task == "image_qa":
            images = [rec["images"][i] for i in range(int(rec["num_images"]))]
            arrays["images"] = images
            files["images"] = []
            for i, image in enumerate(images):
                path = os.path.join(tmp, f"image{i}.png")
                Image.fromarray(image).save(path)
                files["images"].append(path)
        elif task == "audio_qa":
            wave = rec["audio"][: int(rec["audio_samples"])].astype(np.float32) / 32768.0
            arrays["audio"] = wave
            files["audio"] = media_io.write_wav(os.path.join(tmp, "clip.wav"), wave)
        else:
            frames = rec["video"][: int(rec["num_frames"])]
            arrays["video"] = frames
            files["video"] = media_io.write_video(os.path.join(tmp, "clip.mp4"), frames)
        out.append({"task": task, "prompt": rec["prompt"], "arrays": arrays, "files": files})
    return out


def run_describe(cfg, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:

    from transformer_jax.tasks.multimodal.config import model_config
    from transformer_jax.tasks.multimodal.pipeline import ImageTextToTextPipeline
    from transformer_jax.tasks.multimodal.task import MultimodalTask

    t0 = time.perf_counter()
    tok = _CountingTokenizer(bench_tokenizer(cfg))
    tokenizer_s = time.perf_counter() - t0
    task = MultimodalTask(cfg)
    config = model_config(cfg, tok)
    params = random_params(task, task.build_model(config), config)
    # An eos id no model produces: every answer is exactly max_new_tokens long.
    forced = config.with_text(eos_id=-1)
    pipe = ImageTextToTextPipeline(
        params,
        forced,
        tok,
        max_text_length=cfg.data.max_text_length,
        max_new_tokens=plan.max_new_tokens,
        batch_size=1,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in describe_inputs(tmp):
            for kind in ("arrays", "files"):
                x = item[kind]
                t0 = time.perf_counter()
                [out] = pipe(x)
                first_s = time.perf_counter() - t0
                for _ in range(plan.describe_warmup):
                    pipe(x)
                load = _load_average()
                tok.decoded.clear()
                times = []
                for _ in range(plan.describe_repeats):
                    t0 = time.perf_counter()
                    pipe(x)
                    times.append(time.perf_counter() - t0)
                med = statistics.median(times)
                rows.append(
                    {
                        "task": item["task"],
                        "input": kind,
                        "prompt": item["prompt"],
                        "answer": out["generated_text"],
                        "new_tokens": plan.max_new_tokens,
                        "tokens_before_eos": tok.decoded[-1],
                        "first_call_s": first_s,  # compilation included (once per program)
                        "times_s": times,
                        "median_s": med,
                        "ms_per_new_token": 1e3 * med / plan.max_new_tokens,
                        "load_average": [load, _load_average()],
                    }
                )
                log(f"  describe {item['task']} ({kind}): {1e3 * med:.1f} ms")
    return {
        "tokenizer_vocab": int(tok.vocab_size),
        "tokenizer_train_s": tokenizer_s,
        "params": _count(params),
        "max_new_tokens": plan.max_new_tokens,
        "max_text_length": cfg.data.max_text_length,
        "repeats": plan.describe_repeats,
        "warmup": plan.describe_warmup,
        "rows": rows,
    }


# ------------------------------------------------------------------------------ report


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.2f} "


def _model_line(name: str, r: dict[str, Any]) -> str:
    m = r["model"]
    d, v, a = m["decoder"], m.get("vision"), m.get("audio")
    parts = [
        f"decoder d {d['d_model']} x {d['layers']} layers, {d['heads']} heads, ff {d['d_ff']}, "
        f"vocab {d['vocab']} ({d['fusion']} fusion)"
    ]
    if v:
        parts.append(
            f"ViT d {v['d_model']} x {v['layers']} layers, {v['heads']} heads, ff {v['d_ff']} at "
            f"{v['image_size']} px, patch {v['patch_size']} ({v['image_tokens']} tokens per "
            f"image, {v['max_images']} images); video {v['video_mode']} of {v['num_frames']} "
            f"frames, {v['tubelet_frames']} per tubelet ({v['video_tokens']} tokens, its own "
            "stack of the same size)"
        )
        if v.get("pool", 1) > 1:
            parts.append(
                f"encoder outputs average-pooled {v['pool']} x {v['pool']}: "
                f"{v['image_out_tokens']} tokens per image and {v['video_out_tokens']} per "
                "clip reach the decoder"
            )
    if a:
        parts.append(
            f"audio d {a['d_model']} x {a['layers']} layers, {a['heads']} heads, ff {a['d_ff']} "
            f"({a['max_samples']} samples -> {a['audio_tokens']} tokens)"
        )
    return (
        f"- {name}: {r['params'] / 1e6:.1f} M params; "
        + "; ".join(parts)
        + f"; {r['media_columns']} media + {r['text_columns']} text columns per row"
    )


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    ext = report["vector_extensions"]
    has = ", ".join(k for k, v in ext.items() if v) or "none"
    lacks = ", ".join(k for k, v in ext.items() if not v) or "none"
    measured = report.get("measured")
    lines = [
        f"# CPU multimodal benchmark ({report['timestamp']}{', quick' if report['quick'] else ''})",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores available to the process; vector "
        f"extensions: {has} (not: {lacks})",
        f"- jax {m['jax']} (jaxlib {m['jaxlib']}, backend {m['jax_backend']}), flax "
        f"{m['flax']}, python {m['python']}; float32",
        f"- load average (1/5/15 min): {m['load_average_1_5_15']} at start, "
        f"{report['load_average_end']} at end; per section in the JSON. Other processes may "
        "share the cores: absolute figures are noisy",
    ]
    if measured:
        lines.append(
            f"- measured float32 matmul rate {measured['matmul_gflop_per_s']:.0f} GFLOP/s "
            f"(1024^3, best of numpy and XLA), memory read {measured['read_gb_per_s']:.1f} GB/s"
        )
    lines.append(f"- total wall time {report['wall_s']:.0f} s")
    lines.append("- no peer side by side: no transformers model has this architecture")
    lines += ["", "## Training (jitted `train_step`, synthetic batch, every medium present)", ""]
    for r in report["train"]:
        lines.append(_model_line(r["label"], r))
    lines += [
        "",
        "| model | batch | examples/s | text tokens/s | step s | model FLOP/s | timed "
        "steps | first step s (compile) | loss | load (start) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["train"]:
        lo, hi = r["examples_per_s_range"]
        cells = [
            r["label"],
            str(r["batch"]),
            f"{r['examples_per_s']:.2f} ({lo:.2f}-{hi:.2f})",
            f"{r['text_tokens_per_s']:.0f}",
            f"{r['step_s']:.3f}",
            _si(r["model_flops_per_s"]),
            f"{len(r['window_s'])} x {r['steps_per_window']}",
            f"{r['first_step_s']:.1f}",
            f"{r['final_loss']:.3f}",
            str(r["load_average_start"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    d = report["describe"]
    lines += [
        "",
        f"## `describe` latency (ImageTextToTextPipeline, multimodal_tiny, batch 1, "
        f"exactly {d['max_new_tokens']} new tokens)",
        "",
        f"Random-init params ({d['params'] / 1e6:.2f} M), SentencePiece vocab "
        f"{d['tokenizer_vocab']} trained on corpus texts; median of {d['repeats']} calls after "
        f"{d['warmup']} warm-up call(s); `files` reads PNG / WAV / MP4 through `media_io`.",
        "",
        "| input | given as | median ms | min-max ms | ms / new token | tokens before eos "
        "| first call s (compile) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        cells = [
            r["task"],
            r["input"],
            f"{1e3 * r['median_s']:.1f}",
            f"{1e3 * min(r['times_s']):.1f}-{1e3 * max(r['times_s']):.1f}",
            f"{r['ms_per_new_token']:.1f}",
            str(r["tokens_before_eos"]),
            f"{r['first_call_s']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Notes:",
        "",
        "- examples/s and step s: median over the timed windows (range: slowest-fastest "
        "window); text tokens/s counts the text tokens of the batch (`batch_counts`), not "
        "the media columns; model FLOP/s is `batch_counts`' matmul FLOPs (forward x 3) per "
        "second, the figure the trainer logs.",
        "- the train step is the library's `train_step` with the run config's optimizer "
        "(global-norm clipping + AdamW, cosine schedule), jitted with the state donated; "
        "compilation and warm-up steps are excluded.",
        "- describe: the whole `pipeline(item)` call (input checks, tokenization, media "
        "conversion, the jitted encode + prefill + greedy loop, detokenization); the model's "
        "eos id is replaced by one never produced so every call decodes the same number of "
        "tokens; 'tokens before eos' is what a normal call would have returned.",
    ]
    base = [r for r in report["train"] if r["label"] == "base"]
    if not base:
        lines.append(
            "- the base-sized model (`--base`: decoder d 768 x 12, ViT-B/16 at 224 px) is not "
            "in this run: compiling the tiny model's train step alone took the time in the "
            "table on these 2 shared cores, and the base model has about four times its layers."
        )
    if base:
        b = base[0]
        lines.append(
            f"- base: {len(b['window_s'])} timed step(s) of batch {b['batch']} after the "
            f"compiling step and {b['warmup_steps']} warm-up step(s) (each step takes tens of "
            "seconds on this CPU), so its figures rest on few samples."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: the tiny model only")
    parser.add_argument(
        "--out", default=None, help="results folder (full runs: benchmarks/results)"
    )
    parser.add_argument(
        "--base-image-size", type=int, default=0, help="ViT image size of the base model"
    )
    parser.add_argument(
        "--base", action="store_true", help="also the base-sized model (compiling it is slow)"
    )
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    if args.base:
        plan = dataclasses.replace(plan, train=plan.train + (BASE_CASE,))
    if args.base_image_size:
        plan = dataclasses.replace(plan, base_image_size=args.base_image_size)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - t_start:7.1f}s {msg}", file=sys.stderr, flush=True)

    machine = machine_info()
    measured = None
    if not args.quick:
        from benchmarks.generate_bench import measure_machine

        measured = measure_machine()
        log(f"measured {measured}")
    train = []
    for case in plan.train:
        cfg = (
            tiny_config(plan.one_layer)
            if case.name == TINY_CONFIG
            else base_config(plan.base_image_size)
        )
        log(f"train {case.name}: batch {case.batch}")
        load = _load_average()
        row = run_train(case, cfg, log)
        row["load_average_start"] = load
        train.append(row)
        log(f"  {row['examples_per_s']:.2f} examples/s, step {row['step_s']:.3f} s")
    log("describe")
    describe = run_describe(tiny_config(plan.one_layer), plan, log)
    now = dt.datetime.now(dt.UTC)
    report = {
        "date": now.strftime("%Y-%m-%d"),
        "timestamp": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "vector_extensions": cpu_vector_extensions(),
        "measured": measured,
        "plan": dataclasses.asdict(plan),
        "train": train,
        "describe": describe,
        "load_average_end": _load_average(),
        "wall_s": time.perf_counter() - t_start,
    }
    table = render_markdown(report)
    print(table)
    out = args.out if args.quick else (args.out or RESULTS_DIR)
    if out:
        paths = write_results(report, table, out, "multimodal_cpu", quick=report["quick"])
        print("wrote " + " and ".join(paths), file=sys.stderr)
    return report


if __name__ == "__main__":
    from transformer_jax.malloc_env import reexec_with_tuned_malloc

    # The malloc settings `tjax` runs with, for both sides (the workers inherit them).
    reexec_with_tuned_malloc(("benchmarks.multimodal_bench",))
    main()
