"""CPU text-generation speed: our cached decoding next to transformers' `generate()`.

    python -m benchmarks.generate_bench                # GPT-2-small shape (~11 min, 2 cores)
    python -m benchmarks.generate_bench --model llama  # a Llama-shaped model of the same width
    python -m benchmarks.generate_bench --quick        # smoke run: a 2-layer d=64 shape

Both sides run the same function with the same weights: a `GPT2LMHeadModel` (or, with
`--model llama`, a `LlamaForCausalLM`) is built from its config with random weights
(seeded, no download) and converted into our `transformer_jax.nn.lm.CausalLM` by
`tasks.generation.hf.convert`, the conversion `tjax import-hf` saves: GPT-2 as pre-LN,
gelu_tanh, learned positions, tied output; Llama as pre-RMSNorm, SwiGLU, rotary
positions, grouped key/value heads, an untied output projection. Greedy outputs of the
two sides are compared token by token.

Measured, for every batch size and decoding mode (greedy; top-p 0.9 at temperature 1.0):
generated tokens/s of exactly `new_tokens` new tokens after a `prompt_len`-token prompt
(ours: eos is an id never produced; theirs: `min_new_tokens` bans eos until the end), and
the time of the prefill plus the first token; their difference over `new_tokens - 1` is the
time per decoding step. Separately, time to first token for a `ttft_prompt_len`-token
prompt at batch 1.

ours: one jitted `transformer_jax.decode.cached.generate` (cache creation, prefill and the
whole decoding loop) with `nn.lm.cached_decoding_fns`, over the weights laid out once by
`nn.lm.decoding_params` as `tjax generate` lays them out; theirs: `model.generate(...,
use_cache=True)` under `torch.inference_mode()` with torch threads = the cores. Each side
runs in its own process; the processes alternate, back to back (ours, theirs, theirs,
ours, ...). Compilation and a warm-up run are excluded; every figure is the median over
all timed runs of all rounds.

The bound per decoding step is max(bytes read / measured memory bandwidth, FLOPs /
measured matmul rate), where the bytes are the weights (float32, the output projection
included) plus the KV cache filled so far on average, and the FLOPs are 2 per weight per
row plus the attention over that cache.

Full runs write benchmarks/results/generate_cpu_<date>.json and generate_cpu_latest.md;
quick runs write generate_cpu_<date>_quick.json and generate_cpu_quick.md; the Llama
runs write the same files named generate_llama_cpu_*.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.classify_bench import cpu_vector_extensions
from benchmarks.report import write_results
from benchmarks.run import RESULTS_DIR, _load_average, _set_torch_threads, _torch, machine_info

SIDES = ("ours", "theirs")
MODES = ("greedy", "top_p")
TOP_P, TEMPERATURE = 0.9, 1.0


@dataclasses.dataclass(frozen=True)
class Shape:
    """A model family and size, and the generation workload measured on it."""

    name: str
    vocab: int
    d_model: int
    heads: int
    layers: int
    d_ff: int
    context: int
    prompt_len: int
    new_tokens: int
    ttft_prompt_len: int
    batches: tuple[int, ...]
    repeats: int  # timed runs per case and process
    rounds: int  # processes per side
    arch: str = "gpt2"  # "gpt2" or "llama"
    kv_heads: int = 0  # llama: key/value heads (grouped-query attention)


GPT2_SMALL = Shape(
    name="gpt2_small",
    vocab=50257,
    d_model=768,
    heads=12,
    layers=12,
    d_ff=3072,
    context=1024,
    prompt_len=128,
    new_tokens=128,
    ttft_prompt_len=1024,
    batches=(1, 8),
    repeats=2,
    rounds=2,
)
QUICK_SHAPE = Shape(
    name="gpt2_2x64",
    vocab=1000,
    d_model=64,
    heads=4,
    layers=2,
    d_ff=256,
    context=128,
    prompt_len=16,
    new_tokens=8,
    ttft_prompt_len=32,
    batches=(2,),
    repeats=1,
    rounds=1,
)
# Llama's layout at GPT-2 small's width: 12 layers, 12 query and 4 key/value heads of 64,
# SwiGLU 2048 (three kernels: the MLP weights GPT-2's 3072 have), Llama-2's 32,000-token
# vocabulary, untied output: 125M parameters, as GPT-2 small has.
LLAMA_SMALL = dataclasses.replace(
    GPT2_SMALL, name="llama_d768", vocab=32000, d_ff=2048, arch="llama", kv_heads=4
)
QUICK_LLAMA = dataclasses.replace(
    QUICK_SHAPE, name="llama_2x64", d_ff=128, arch="llama", kv_heads=2
)
SHAPES = {  # (model, quick) -> shape
    ("gpt2", False): GPT2_SMALL,
    ("gpt2", True): QUICK_SHAPE,
    ("llama", False): LLAMA_SMALL,
    ("llama", True): QUICK_LLAMA,
}
RESULT_PREFIX = {"gpt2": "generate_cpu", "llama": "generate_llama_cpu"}


def cases(shape: Shape) -> list[dict[str, Any]]:
    """Every timed case: (batch, mode) generation runs, then the long-prompt first token."""
    out = []
    for batch in shape.batches:
        for mode in MODES:
            for new in (shape.new_tokens, 1):
                out.append(dict(batch=batch, mode=mode, prompt=shape.prompt_len, new=new))
    out.append(dict(batch=1, mode="greedy", prompt=shape.ttft_prompt_len, new=1))
    return out


def _key(case: dict[str, Any]) -> str:
    return f"b{case['batch']}_{case['mode']}_p{case['prompt']}_n{case['new']}"


def _prompts(shape: Shape, batch: int, length: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + 7 * batch + length)
    return rng.integers(0, shape.vocab, size=(batch, length)).astype(np.int32)


# ------------------------------------------------------------------------------ the models


def hf_config(shape: Shape):
    """The `transformers` config of the shape: `GPT2Config` or `LlamaConfig`."""
    import transformers

    special = dict(bos_token_id=shape.vocab - 1, eos_token_id=shape.vocab - 1)
    if shape.arch == "llama":
        return transformers.LlamaConfig(
            vocab_size=shape.vocab,
            hidden_size=shape.d_model,
            intermediate_size=shape.d_ff,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            max_position_embeddings=shape.context,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            **special,
        )
    return transformers.GPT2Config(
        vocab_size=shape.vocab,
        n_positions=shape.context,
        n_embd=shape.d_model,
        n_layer=shape.layers,
        n_head=shape.heads,
        n_inner=shape.d_ff,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **special,
    )


def hf_model(shape: Shape, seed: int = 0):
    """`GPT2LMHeadModel` (or `LlamaForCausalLM`) with random weights from its config."""
    import transformers

    torch = _torch()
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(hf_config(shape)).eval()


def our_config(shape):
    """The shape's model as `tjax import-hf` configures it (`generation.hf.config_from_hf`)."""
    from transformer_jax.tasks.generation.hf import config_from_hf

    return config_from_hf(hf_config(shape).to_dict())


def our_model(model) -> tuple[Any, dict[str, Any]]:
    """The `transformers` model converted as `tjax import-hf` converts it: (config, params)."""
    from transformer_jax.tasks.generation.hf import convert

    tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return convert(model.config.to_dict(), tensors)


# ------------------------------------------------------------------------------ the sides


class _Ours:
    """Jitted `decode.cached.generate`, one compiled program per case."""

    def __init__(self, shape: Shape):
        import jax
        import jax.numpy as jnp

        from transformer_jax.nn.lm import CausalLM, cached_decoding_fns, decoding_params

        config, params = our_model(hf_model(shape))
        self.jax, self.jnp = jax, jnp
        self.params = jax.tree.map(jnp.asarray, params)
        self.fns = cached_decoding_fns(CausalLM(config))
        # Laid out for decoding once, as `Generator` does (untimed, like its first call).
        self.params = jax.block_until_ready(decoding_params(config, self.params))
        self.shape = shape

    def prepare(self, case: dict[str, Any]):
        import functools

        from transformer_jax.decode.cached import generate

        jax, jnp = self.jax, self.jnp
        init_cache, prefill, step = self.fns
        batch, prompt_len, new = case["batch"], case["prompt"], case["new"]
        sampling = case["mode"] == "top_p"

        @functools.partial(jax.jit)
        def run(params, prompts, key):
            cache = init_cache(params, batch, prompt_len + new - 1)
            return generate(
                prefill,
                step,
                params,
                cache,
                prompts,
                jnp.ones_like(prompts),
                max_new_tokens=new,
                eos_id=-1,  # never produced: exactly `new` tokens
                temperature=TEMPERATURE if sampling else 0.0,
                top_p=TOP_P if sampling else 1.0,
                rng=key,
            )

        prompts = jnp.asarray(_prompts(self.shape, batch, prompt_len))
        key = jax.random.key(0)
        return lambda: np.asarray(run(self.params, prompts, key))


class _Theirs:
    """The `transformers` model's `generate(use_cache=True)` under `torch.inference_mode()`."""

    def __init__(self, shape: Shape):
        torch = _torch()
        self.torch = torch
        self.threads = _set_torch_threads(torch)
        self.model = hf_model(shape)
        self.shape = shape

    def prepare(self, case: dict[str, Any]):
        torch = self.torch
        batch, prompt_len, new = case["batch"], case["prompt"], case["new"]
        ids = torch.from_numpy(_prompts(self.shape, batch, prompt_len)).long()
        kwargs: dict[str, Any] = dict(
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,  # eos banned until the end: exactly `new` tokens
            use_cache=True,
            pad_token_id=self.shape.vocab - 1,
        )
        if case["mode"] == "top_p":
            kwargs.update(do_sample=True, top_p=TOP_P, temperature=TEMPERATURE, top_k=0)
        else:
            kwargs.update(do_sample=False)

        def run():
            torch.manual_seed(0)
            with torch.inference_mode():
                out = self.model.generate(ids, **kwargs)
            return out[:, prompt_len:].numpy().astype(np.int32)

        return run


def worker(side: str, shape: Shape, repeats: int) -> dict[str, Any]:
    """Times every case on one side; the parent runs this in a fresh process."""
    if side == "ours":
        cache_dir = os.environ.get("GENERATE_BENCH_JAX_CACHE")
        if cache_dir:  # later rounds reuse the compiled programs (compilation is untimed)
            import jax

            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        runner: Any = _Ours(shape)
    else:
        runner = _Theirs(shape)
    out: dict[str, Any] = {"side": side, "cases": {}}
    if side == "theirs":
        out["threads"] = runner.threads
        out["attn_implementation"] = runner.model.config._attn_implementation
        out["model_class"] = type(runner.model).__name__
    for case in cases(shape):
        run = runner.prepare(case)
        t0 = time.perf_counter()
        tokens = run()  # compile (ours) and warm up
        first_s = time.perf_counter() - t0
        if tokens.shape != (case["batch"], case["new"]):
            raise AssertionError(f"{side} {_key(case)}: output shape {tokens.shape}")
        load = _load_average()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        row = dict(case, times_s=times, first_call_s=first_s, load_average=[load, _load_average()])
        if case["mode"] == "greedy" and case["new"] > 1:
            row["tokens"] = tokens.tolist()
        out["cases"][_key(case)] = row
    return out


# ------------------------------------------------------------------------------ the bound


def measure_machine() -> dict[str, float]:
    """Memory read rate (a sum over 256 MiB) and float32 matmul rate (1024^3), each the
    best of numpy and jitted XLA, best of 5 runs."""
    import jax
    import jax.numpy as jnp

    def best(fn, *args, n=5):
        jax.block_until_ready(fn(*args))
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
        return min(ts)

    x_np = np.ones((64 * 1024 * 1024,), np.float32)
    read_s = min(best(np.sum, x_np), best(jax.jit(jnp.sum), jnp.asarray(x_np)))
    a_np = np.ones((1024, 1024), np.float32)
    mm_s = min(best(np.matmul, a_np, a_np), best(jax.jit(jnp.matmul), jnp.asarray(a_np), a_np))
    return {
        "read_gb_per_s": x_np.nbytes / read_s / 1e9,
        "matmul_gflop_per_s": 2 * 1024**3 / mm_s / 1e9,
    }


def step_bound(shape: Shape, batch: int, machine: dict[str, float]) -> dict[str, float]:
    """Lower bound on one decoding step: weights + average filled KV cache read, FLOPs."""
    D, L, F, V = shape.d_model, shape.layers, shape.d_ff, shape.vocab
    if shape.arch == "llama":  # q, o: D x D; k, v: D x kv; SwiGLU: three D x F; RMS scales
        kv_width = shape.kv_heads * (D // shape.heads)
        matmul_weights = L * (2 * D * D + 2 * D * kv_width + 3 * D * F) + V * D
        other = L * 2 * D + D
    else:  # q, k, v, o: D x D; MLP: two D x F; biases and LayerNorms
        kv_width = D
        matmul_weights = L * (4 * D * D + 2 * D * F) + V * D
        other = L * (4 * D + F + D + 4 * D) + 2 * D  # q/k/v/o, MLP in/out biases; 2 norms
    filled = shape.prompt_len + shape.new_tokens / 2  # average cache length over the steps
    kv_bytes = 4 * 2 * L * batch * filled * kv_width
    bytes_read = 4 * (matmul_weights + other) + kv_bytes
    flops = 2 * batch * matmul_weights + 4 * batch * L * filled * D
    memory_ms = 1e3 * bytes_read / (machine["read_gb_per_s"] * 1e9)
    compute_ms = 1e3 * flops / (machine["matmul_gflop_per_s"] * 1e9)
    return {
        "bytes_read": bytes_read,
        "flops": flops,
        "memory_ms": memory_ms,
        "compute_ms": compute_ms,
        "bound_ms": max(memory_ms, compute_ms),
    }


# ------------------------------------------------------------------------------ driver


def _spawn(side: str, shape: Shape, quick: bool, env: dict[str, str], log) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.generate_bench", "--worker", side]
    cmd += ["--model", shape.arch]
    if quick:
        cmd.append("--quick")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    log(f"  {side} process done in {time.perf_counter() - t0:.0f} s")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(shape: Shape, runs: list[dict[str, Any]], machine: dict[str, float]):
    """Medians over every timed run of every round, per side and case, and the ratios."""
    times: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
    loads: dict[str, dict[str, list]] = {side: {} for side in SIDES}
    for run in runs:
        for key, row in run["cases"].items():
            times[run["side"]].setdefault(key, []).extend(row["times_s"])
            loads[run["side"]].setdefault(key, []).extend(row["load_average"])
    med = {s: {k: statistics.median(v) for k, v in d.items()} for s, d in times.items()}
    rows = []
    for batch in shape.batches:
        for mode in MODES:
            full = dict(batch=batch, mode=mode, prompt=shape.prompt_len, new=shape.new_tokens)
            first = dict(full, new=1)
            row: dict[str, Any] = {"batch": batch, "mode": mode}
            for side in SIDES:
                t_full, t_first = med[side][_key(full)], med[side][_key(first)]
                row[side] = {
                    "seconds": t_full,
                    "tokens_per_s": batch * shape.new_tokens / t_full,
                    "prefill_first_token_s": t_first,
                    "ms_per_step": 1e3 * (t_full - t_first) / max(shape.new_tokens - 1, 1),
                    "load_average": loads[side][_key(full)],
                }
            row["ratio_ours_over_theirs"] = (
                row["ours"]["tokens_per_s"] / row["theirs"]["tokens_per_s"]
            )
            row["bound"] = step_bound(shape, batch, machine)
            rows.append(row)
    ttft_case = dict(batch=1, mode="greedy", prompt=shape.ttft_prompt_len, new=1)
    ttft = {side: med[side][_key(ttft_case)] for side in SIDES}
    ttft["ratio_theirs_over_ours"] = ttft["theirs"] / ttft["ours"]
    ttft["prompt_len"] = shape.ttft_prompt_len
    agree = {}
    for batch in shape.batches:
        key = _key(dict(batch=batch, mode="greedy", prompt=shape.prompt_len, new=shape.new_tokens))
        a = [np.asarray(r["cases"][key]["tokens"]) for r in runs if r["side"] == "ours"][0]
        b = [np.asarray(r["cases"][key]["tokens"]) for r in runs if r["side"] == "theirs"][0]
        agree[f"batch_{batch}"] = float((a == b).mean())
    return rows, ttft, agree


def render_markdown(report: dict[str, Any]) -> str:
    m, s, mm = report["machine"], report["shape"], report["measured"]
    ext = report["vector_extensions"]
    has = ", ".join(k for k, v in ext.items() if v) or "none"
    lacks = ", ".join(k for k, v in ext.items() if not v) or "none"
    if s["arch"] == "llama":
        family = (
            f"Llama layout: RMSNorm, SwiGLU, rotary, {s['kv_heads']} key/value heads, untied output"
        )
    else:
        family = "GPT-2 layout: LayerNorm, gelu_tanh, learned positions, tied output"
    lines = [
        f"# CPU generation benchmark ({report['timestamp']}{', quick' if report['quick'] else ''})",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores available to the process; vector "
        f"extensions: {has} (not: {lacks})",
        f"- jax {m['jax']} (jaxlib {m['jaxlib']}), flax {m['flax']}, torch {m['torch']}, "
        f"transformers {report['transformers']} (attention `{report['attn_implementation']}`,"
        f" torch threads {report['torch_threads']}), python {m['python']}",
        f"- model: {s['name']} ({family}; vocab {s['vocab']}, d {s['d_model']}, "
        f"{s['heads']} heads, {s['layers']} layers, ff {s['d_ff']}, context {s['context']}), "
        f"float32, random weights shared by both sides; theirs: `{report['model_class']}`",
        f"- workload: prompt {s['prompt_len']} tokens, exactly {s['new_tokens']} new tokens; "
        f"top-p {TOP_P} at temperature {TEMPERATURE}; {s['rounds']} process(es) per side "
        f"alternating, {s['repeats']} timed run(s) each after a warm-up; medians",
        f"- load average (1/5/15 min): {m['load_average_1_5_15']} at start, "
        f"{report['load_average_end']} at end; per figure in the JSON. Other processes "
        "shared the 2 cores: absolute figures are noisy, the alternation spreads the load "
        "over both sides",
        f"- measured under that load: memory read {mm['read_gb_per_s']:.1f} GB/s (sum over "
        f"256 MiB), float32 matmul {mm['matmul_gflop_per_s']:.0f} GFLOP/s (1024^3), each the "
        "best of numpy and XLA",
        "- greedy tokens equal to theirs: "
        + ", ".join(f"{k} {v:.1%}" for k, v in report["greedy_agreement"].items()),
        f"- total wall time {report['wall_s']:.0f} s",
        "",
        "## Generation (new tokens/s)",
        "",
        "| batch | mode | ours tok/s | theirs tok/s | ours/theirs | ours ms/step "
        "| theirs ms/step | bound ms/step | ours prefill+1st s | theirs prefill+1st s "
        "| load (ours run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["generation"]:
        o, t, b = r["ours"], r["theirs"], r["bound"]
        cells = [
            str(r["batch"]),
            r["mode"],
            f"{o['tokens_per_s']:.1f}",
            f"{t['tokens_per_s']:.1f}",
            f"{r['ratio_ours_over_theirs']:.2f}x",
            f"{o['ms_per_step']:.1f}",
            f"{t['ms_per_step']:.1f}",
            f"{b['bound_ms']:.1f} ({'memory' if b['memory_ms'] >= b['compute_ms'] else 'compute'})",
            f"{o['prefill_first_token_s']:.2f}",
            f"{t['prefill_first_token_s']:.2f}",
            str(o["load_average"][0]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    tt = report["ttft"]
    lines += [
        "",
        f"## Time to first token, batch 1, {tt['prompt_len']}-token prompt",
        "",
        "| ours s | theirs s | theirs/ours |",
        "|---|---|---|",
        f"| {tt['ours']:.3f} | {tt['theirs']:.3f} | {tt['ratio_theirs_over_ours']:.2f}x |",
        "",
        "Notes:",
        "",
        "- ms/step = (time of the whole generation - time of prefill + first token) / "
        "(new tokens - 1), each a median.",
        "- bound ms/step = max(bytes / memory read rate, FLOPs / matmul rate) for one "
        "decoding step: float32 weights (output projection included) plus the KV cache "
        "filled so far on average (prompt + new/2 slots), FLOPs = 2 per weight per row plus "
        "the attention. Our cache is preallocated (prompt + new - 1 slots) and attended in "
        "full each step.",
        "- ours: one jitted `decode.cached.generate` (cache creation, prefill, decoding "
        "loop); compilation and one warm-up run excluded. theirs: `generate(use_cache=True)` "
        "under `torch.inference_mode()`, eos banned by `min_new_tokens`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a 2-layer d=64 shape")
    parser.add_argument(
        "--model",
        choices=("gpt2", "llama"),
        default="gpt2",
        help="gpt2: GPT-2 small (tied output); llama: Llama-shaped, same width (untied)",
    )
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    parser.add_argument("--rounds", type=int, default=0, help="processes per side (0: default)")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if _torch() is None:
        print("error: this benchmark needs torch and transformers installed", file=sys.stderr)
        raise SystemExit(2)
    shape = SHAPES[args.model, args.quick]
    if args.rounds:
        shape = dataclasses.replace(shape, rounds=args.rounds)
    if args.worker:
        print(json.dumps(worker(args.worker, shape, shape.repeats)))
        return None
    import transformers

    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - t_start:7.1f}s {msg}", file=sys.stderr, flush=True)

    machine = machine_info()
    measured = measure_machine()
    log(f"measured {measured}")
    runs = []
    with tempfile.TemporaryDirectory() as jax_cache:
        env = dict(os.environ, GENERATE_BENCH_JAX_CACHE=jax_cache)
        for r in range(shape.rounds):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                log(f"round {r + 1}/{shape.rounds}: {side}")
                runs.append(_spawn(side, shape, args.quick, env, log))
    rows, ttft, agree = summarize(shape, runs, measured)
    theirs = next(r for r in runs if r["side"] == "theirs")
    now = dt.datetime.now()
    report = {
        "date": now.strftime("%Y-%m-%d"),
        "timestamp": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "vector_extensions": cpu_vector_extensions(),
        "transformers": transformers.__version__,
        "torch_threads": theirs["threads"],
        "attn_implementation": theirs["attn_implementation"],
        "model_class": theirs["model_class"],
        "shape": dataclasses.asdict(shape),
        "measured": measured,
        "generation": rows,
        "ttft": ttft,
        "greedy_agreement": agree,
        "runs": runs,
        "load_average_end": _load_average(),
        "wall_s": time.perf_counter() - t_start,
    }
    table = render_markdown(report)
    print(table)
    if not args.no_write:
        paths = write_results(
            report, table, args.out_dir, RESULT_PREFIX[shape.arch], quick=report["quick"]
        )
        print("wrote " + " and ".join(paths), file=sys.stderr)
    return report


if __name__ == "__main__":
    from transformer_jax.malloc_env import reexec_with_tuned_malloc

    # The malloc settings `tjax` runs with, for both sides (the workers inherit them).
    reexec_with_tuned_malloc(("benchmarks.generate_bench",))
    main()
