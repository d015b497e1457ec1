"""Beam-search steps with the keys and values left in place, against copying them per step.

    python -m benchmarks.beam_cache_bench          # d=512, 6 layers, prompts 128 and 1024
    python -m benchmarks.beam_cache_bench --quick  # smoke run: a 2-layer d=32 shape

A GPT-2-style `CausalLM` (`generate_bench.our_config`, random weights, float32) decodes
exactly `new_tokens` tokens with beam 4 after a prompt, through
`decode.cached.beam_generate` twice:

- "table" (the default, `MODEL_BEAM_CACHE`): each step appends its keys and values to its
  own row and reads its beam's ancestors through a [B * R, S, R] table, the only cache part
  beam search reorders;
- "gathered" (`beam_cache=None`): every cache leaf is copied from its source beam after
  every step, the usual way (the whole KV cache read and written each step).

Both run in this one process with the same weights, alternating call by call; the two
must return the same beams. The time per step is (call - prefill) / new_tokens, where the
prefill is timed on its own; every figure is the minimum over the rounds. Full runs write
benchmarks/results/beam_cache_cpu_<date>.json and beam_cache_cpu_latest.md
(benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import time
from typing import Any

import numpy as np

from benchmarks.classify_bench import cpu_vector_extensions
from benchmarks.report import write_results
from benchmarks.run import RESULTS_DIR, _cpu_model, _load_average

MODES = ("gathered", "table")


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    vocab: int
    d_model: int
    heads: int
    d_ff: int
    layers: int
    batch: int
    beam: int
    prompts: tuple[int, ...]
    new_tokens: int
    rounds: int
    arch: str = "gpt2"  # for `generate_bench.our_config`

    @property
    def context(self) -> int:  # as `generate_bench.Shape` has it, for `our_config`
        return max(self.prompts) + self.new_tokens


FULL = Shape("d512", 8000, 512, 8, 2048, 6, 2, 4, (128, 1024), 24, 5)
QUICK = Shape("quick", 64, 32, 4, 64, 2, 2, 3, (16,), 4, 2)


def _model(shape: Shape, prompt: int):
    """GPT-2-style (`generate_bench.our_config`) with random weights, sized for `prompt`."""
    import jax
    import jax.numpy as jnp

    from benchmarks.generate_bench import our_config
    from transformer_jax.nn.lm import CausalLM, cached_decoding_fns

    cfg = our_config(shape).replace(max_position=prompt + shape.new_tokens)
    model = CausalLM(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    return params, cached_decoding_fns(model)


def measure(shape: Shape, prompt: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from transformer_jax.decode import cached

    params, (init_cache, prefill, step) = _model(shape, prompt)
    B, new = shape.batch, shape.new_tokens
    ids = np.random.default_rng(prompt).integers(1, shape.vocab, (B, prompt)).astype(np.int32)
    ids, mask = jnp.asarray(ids), jnp.ones((B, prompt), jnp.int32)
    no_eos = -1  # an id never produced: every call decodes exactly `new` tokens

    def beams(beam_cache):
        def run(params, ids, mask):
            cache = init_cache(params, B, prompt + new - 1)
            return cached.beam_generate(
                prefill, step, params, cache, ids, mask, max_new_tokens=new,
                eos_id=no_eos, beam_size=shape.beam, beam_cache=beam_cache,
            )  # fmt: skip

        return jax.jit(run)

    def prefill_only(params, ids, mask):
        cache = init_cache(params, B, prompt + new - 1)
        return cached.prefill_prompts(prefill, params, cache, ids, mask).logits

    fns = {"gathered": beams(None), "table": beams(cached.MODEL_BEAM_CACHE)}
    fns["prefill"] = jax.jit(prefill_only)
    outputs = {name: jax.block_until_ready(fn(params, ids, mask)) for name, fn in fns.items()}
    same = bool(np.array_equal(outputs["gathered"][0], outputs["table"][0]))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(shape.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, ids, mask))
            times[name].append(time.perf_counter() - t0)
    best = {name: min(ts) for name, ts in times.items()}
    row: dict[str, Any] = {"prompt": prompt, "same_beams": same, "prefill_s": best["prefill"]}
    for mode in MODES:
        row[f"{mode}_call_s"] = best[mode]
        row[f"{mode}_ms_per_step"] = 1e3 * max(best[mode] - best["prefill"], 0.0) / new
    row["speedup"] = row["gathered_ms_per_step"] / max(row["table_ms_per_step"], 1e-9)
    return row


def render_markdown(report: dict[str, Any]) -> str:
    s = report["shape"]
    ext = ", ".join(k for k, v in report["vector_extensions"].items() if v) or "none listed"
    lines = [
        "# Beam search: keys and values left in place vs copied per step (CPU)",
        "",
        f"- {report['date']}, {report['cpu_model']} ({ext}), {report['cores']} cores, "
        f"load average {report['load_average_start']} at the start, "
        f"{report['load_average_end']} at the end",
        f"- GPT-2-style CausalLM d={s['d_model']}, {s['heads']} heads, ff {s['d_ff']}, {s['layers']} layers, "
        f"vocab {s['vocab']}, float32; batch {s['batch']}, beam {s['beam']}, exactly "
        f"{s['new_tokens']} new tokens; minimum over {s['rounds']} alternating rounds",
        "",
        "| prompt | gathered ms/step | table ms/step | speed-up | same beams |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['prompt']} | {r['gathered_ms_per_step']:.2f} | {r['table_ms_per_step']:.2f} "
            f"| {r['speedup']:.2f}x | {'yes' if r['same_beams'] else 'NO'} |"
        )
    lines += [
        "",
        "- gathered: every cache leaf copied from its source beam after each step "
        "(`beam_cache=None`); table: keys and values appended in place and read through "
        "the beams' ancestry table (`decode.cached.MODEL_BEAM_CACHE`, the default).",
        "- ms/step = (call - prefill alone) / new tokens.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a minuscule smoke run")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    start_load = _load_average()
    rows = [measure(shape, p) for p in shape.prompts]
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "vector_extensions": cpu_vector_extensions(),
        "cores": os.cpu_count(),
        "load_average_start": start_load,
        "load_average_end": _load_average(),
        "shape": dataclasses.asdict(shape),
        "rows": rows,
    }
    table = render_markdown(report)
    write_results(report, table, args.out_dir, "beam_cache_cpu", quick=args.quick)
    print(table)
    return report


if __name__ == "__main__":
    main()
