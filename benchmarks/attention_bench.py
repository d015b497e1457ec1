"""The attention sweep: forward+backward time and peak memory of each attention
implementation over sequence lengths, next to JAX's and PyTorch's own.

    python -m benchmarks.attention_bench                 # 256 .. 16,384 (a few minutes)
    python -m benchmarks.attention_bench --quick         # 128 and 256, smoke run
    python -m benchmarks.attention_bench --lengths 1024 --impls chunked xla

One causal self-attention, float32, batch 1 x 8 heads x head dim 64 by default; the
measured program is the gradient of sum(attention(q, k, v)) with respect to q, k and v.
Sides:

- ``chunked``: ours, `transformer_jax.ops.attention.dot_product_attention(implementation=
  "chunked")`, online softmax over 512 x 512 blocks with its own backward (custom VJP).
- ``xla``: ours, the reference that builds the [T, S] scores.
- ``jax.nn``: `jax.nn.dot_product_attention(implementation="xla", is_causal=True)`.
- ``torch``: `torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (on CPU
  its flash kernel, forward and backward).

Every (side, length) runs in its own fresh process, one after another. Reported per
run: the median time of one forward+backward, the extra resident memory at its peak
(``ru_maxrss`` after the runs minus before them, inputs already built: the same
measure for every side) and, for the JAX sides, the compiled program's temporary
buffers from XLA's memory analysis. A JAX program whose analysis says it needs more
than the machine's available memory is not run (its analysis is still reported).

Goals (issue "fast on every backend"): at 16,384 the chunked forward+backward needs at
most one eighth of the XLA reference's memory (from the memory analysis), and at 1,024
it takes at most 1.5x the reference's time.

Writes benchmarks/results/attention_cpu_<date>.json and attention_cpu_latest.md (quick
runs: attention_cpu_<date>_quick.json and attention_cpu_quick.md; see benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.report import write_results
from benchmarks.run import RESULTS_DIR, _cpu_count, _cpu_flags, _cpu_model, _load_average

SIDES = ("chunked", "xla", "jax.nn", "torch")
LENGTHS = (256, 1024, 4096, 16384)
QUICK_LENGTHS = (128, 256)
GOAL_MEMORY_LENGTH, GOAL_MEMORY_FRACTION = 16384, 1 / 8
GOAL_TIME_LENGTH, GOAL_TIME_RATIO = 1024, 1.5


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _timed(fn, budget_s: float, max_repeats: int) -> list[float]:
    """Seconds of ``fn()`` after one warm-up call: at least 3 calls, more within budget."""
    fn()
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget_s and len(times) < max_repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _jax_run(side: str, args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from transformer_jax.ops.attention import dot_product_attention

    L, shape = args.length, (args.batch, args.length, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in keys)

    def attention(q, k, v):
        if side == "jax.nn":
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
        return dot_product_attention(q, k, v, causal=True, implementation=side)

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v))

    jax.block_until_ready((q, k, v))
    before = _maxrss_bytes()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    analysis = compiled.memory_analysis()
    temp = int(analysis.temp_size_in_bytes)
    row: dict[str, Any] = {"side": side, "length": L, "compiled_temp_bytes": temp}
    if temp > 0.8 * _available_bytes():
        row["skipped"] = f"needs {temp / 2**30:.1f} GiB of temporaries, more than is available"
        return row
    times = _timed(lambda: jax.block_until_ready(compiled(q, k, v)), args.budget_s, 20)
    row.update(times_s=times, peak_extra_bytes=_maxrss_bytes() - before)
    return row


def _torch_run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(_cpu_count())
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    before = _maxrss_bytes()

    def step():
        for t in (q, k, v):
            t.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    times = _timed(step, args.budget_s, 20)
    return {
        "side": "torch",
        "length": args.length,
        "times_s": times,
        "peak_extra_bytes": _maxrss_bytes() - before,
        "torch": torch.__version__,
    }


def _worker(args: argparse.Namespace) -> None:
    row = _torch_run(args) if args.worker == "torch" else _jax_run(args.worker, args)
    print("RESULT " + json.dumps(row), flush=True)


def _measure(side: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.attention_bench", "--worker", side]
    cmd += ["--length", str(length), "--batch", str(args.batch), "--heads", str(args.heads)]
    cmd += ["--head-dim", str(args.head_dim), "--budget-s", str(args.budget_s)]
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            row = json.loads(line[len("RESULT ") :])
            if "times_s" in row:
                row["median_s"] = statistics.median(row["times_s"])
            return row
    if side == "torch" and "No module named 'torch'" in proc.stderr:
        return {"side": side, "length": length, "skipped": "torch is not installed"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"side": side, "length": length, "skipped": f"failed (exit {proc.returncode}): {tail}"}


def _row(rows: list[dict], side: str, length: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["side"] == side and r["length"] == length), None)


def goals(rows: list[dict]) -> dict[str, Any]:
    """The two long-sequence goals, from whatever rows the sweep has."""
    out: dict[str, Any] = {}
    ours, ref = _row(rows, "chunked", GOAL_MEMORY_LENGTH), _row(rows, "xla", GOAL_MEMORY_LENGTH)
    if ours and ref and ours.get("compiled_temp_bytes") and ref.get("compiled_temp_bytes"):
        frac = ours["compiled_temp_bytes"] / ref["compiled_temp_bytes"]
        out["memory_fraction"] = frac
        out["memory_met"] = frac <= GOAL_MEMORY_FRACTION
    ours, ref = _row(rows, "chunked", GOAL_TIME_LENGTH), _row(rows, "xla", GOAL_TIME_LENGTH)
    if ours and ref and "median_s" in ours and "median_s" in ref:
        ratio = ours["median_s"] / ref["median_s"]
        out["time_ratio"] = ratio
        out["time_met"] = ratio <= GOAL_TIME_RATIO
    return out


def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f}"


def render_markdown(report: dict[str, Any]) -> str:
    a = report["args"]
    lines = [
        f"# Attention sweep, forward+backward ({report['timestamp']})",
        "",
        f"- CPU: {report['cpu']} ({', '.join(report['vector_extensions'])}), "
        f"{report['cores']} cores",
        f"- causal self-attention, float32, batch {a['batch']} x {a['heads']} heads x head "
        f"dim {a['head_dim']}; the gradient of sum(attention) with respect to q, k and v",
        f"- load average (1/5/15 min): {report['load_average_start']} at start, "
        f"{report['load_average_end']} at end; each run in its own process, one at a time",
        f"- total wall time {report['wall_s']:.0f} s",
        "",
        "| length | side | ms | vs xla | extra peak RSS MiB | compiled temporaries MiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    rows = report["results"]
    for length in a["lengths"]:
        ref = _row(rows, "xla", length)
        for side in a["sides"]:
            r = _row(rows, side, length)
            if r is None:
                continue
            if "median_s" in r:
                ms = f"{1e3 * r['median_s']:,.1f}"
                vs = f"{r['median_s'] / ref['median_s']:.2f}x" if ref and "median_s" in ref else ""
                rss = _mib(r.get("peak_extra_bytes"))
            else:
                ms, vs, rss = f"not run: {r['skipped']}", "", "n/a"
            temp = _mib(r.get("compiled_temp_bytes")) if "compiled_temp_bytes" in r else "n/a"
            lines.append(f"| {length:,} | {side} | {ms} | {vs} | {rss} | {temp} |")
    g = report["goals"]
    lines += ["", "Goals:", ""]
    if "memory_fraction" in g:
        lines.append(
            f"- memory at {GOAL_MEMORY_LENGTH:,}: chunked / xla compiled temporaries = "
            f"{g['memory_fraction']:.4f} (1/{1 / g['memory_fraction']:.0f}; goal at most 1/8): "
            + ("met" if g["memory_met"] else "missed")
        )
    if "time_ratio" in g:
        lines.append(
            f"- time at {GOAL_TIME_LENGTH:,}: chunked / xla = {g['time_ratio']:.2f}x "
            "(goal at most 1.5x): " + ("met" if g["time_met"] else "missed")
        )
    if not g:
        lines.append("- not measured in this run (needs chunked and xla at 1,024 and 16,384)")
    lines += [
        "",
        "Notes:",
        "",
        "- ms: median of at least 3 timed calls after a warm-up call (compilation excluded).",
        "- extra peak RSS: the process's peak resident memory after the calls minus before "
        "them, inputs already allocated; allocator caching makes it coarse for small runs.",
        "- compiled temporaries: `compiled.memory_analysis().temp_size_in_bytes` (JAX sides).",
        "- torch: `scaled_dot_product_attention(is_causal=True)` with "
        "`torch.set_num_threads(cores)`, OMP_WAIT_POLICY=PASSIVE.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    if argv is None and "--worker" not in sys.argv:  # the malloc settings `tjax` runs with
        from transformer_jax.malloc_env import reexec_with_tuned_malloc

        reexec_with_tuned_malloc(("benchmarks.attention_bench",))  # workers inherit them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+")
    parser.add_argument("--impls", "--sides", dest="sides", nargs="+", default=list(SIDES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--budget-s", type=float, default=3.0, help="timed seconds per run")
    parser.add_argument("--quick", action="store_true", help="lengths 128 and 256 only")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return None
    unknown = sorted(set(args.sides) - set(SIDES))
    if unknown:
        parser.error(f"unknown side(s) {unknown}; choose from {list(SIDES)}")
    args.lengths = args.lengths or list(QUICK_LENGTHS if args.quick else LENGTHS)

    t_start, load_start = time.perf_counter(), _load_average()
    rows = []
    for length in args.lengths:
        for side in args.sides:
            row = _measure(side, length, args)
            shown = f"{1e3 * row['median_s']:.1f} ms" if "median_s" in row else row["skipped"]
            print(f"L={length:6d} {side:8s} {shown}", file=sys.stderr, flush=True)
            rows.append(row)
    now = dt.datetime.now()
    report = {
        "date": now.strftime("%Y-%m-%d"),
        "timestamp": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpu": _cpu_model(),
        "vector_extensions": _cpu_flags(),
        "cores": _cpu_count(),
        "args": {k: getattr(args, k) for k in ("lengths", "sides", "batch", "heads", "head_dim")},
        "load_average_start": load_start,
        "load_average_end": _load_average(),
        "wall_s": time.perf_counter() - t_start,
        "results": rows,
        "goals": goals(rows),
    }
    table = render_markdown(report)
    print(table)
    if not args.no_write:
        write_results(report, table, args.out_dir, "attention_cpu", quick=args.quick)
    return report


if __name__ == "__main__":
    main()
