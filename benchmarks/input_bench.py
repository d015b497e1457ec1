"""Does the input pipeline keep up? The real trainer with real batches vs one constant batch.

    python -m benchmarks.input_bench             # 2 rounds of 200 steps per mode (~13 min on 2 cores)
    python -m benchmarks.input_bench --steps 100 --rounds 1   # a quick look

Each mode runs `tjax train`'s own loop (`train_and_evaluate`) in a fresh process, on the
embedded translation corpus at shape S of `benchmarks/run.py` (d 256, 4 heads, ff 1024,
3 + 3 layers; the corpus's 600-piece vocabulary; 2,048 tokens per batch as 32 x 64):

- "real": the Grain pipeline as training uses it (shuffling, tokenized records, length
  buckets, padding, batching), read one batch ahead while the previous step runs;
- "constant": the pipeline's first batch, handed back for every step (no input work).

Steps/s is the median of the trainer's own logging windows (50 steps each; the first
window, which compiles, is dropped). The modes alternate within each round (A B, then
B A), so load from other processes hits both alike. The goal: real within 5% of
constant. Writes benchmarks/results/input_cpu_<date>.json and input_cpu_latest.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks.report import write_results

MODES = ("real", "constant")
OVERRIDES = [
    "model.d_model=256",
    "model.num_heads=4",
    "model.d_ff=1024",
    "model.num_encoder_layers=3",
    "model.num_decoder_layers=3",
    "data.max_length=64",
    "data.tokens_per_batch=2048",
    "train.log_every=50",
    "train.eval_every=100000",
    "train.eval_batches=1",
    "decode.bleu_examples=8",
    "train.checkpoint_every=100000",
    "train.progress=False",
]


class _ConstantIterator:
    """The first batch of `it`, forever; state calls go to `it` (so saving still works)."""

    def __init__(self, it):
        self._it = it
        self._batch = next(it)

    def __iter__(self):
        return self

    def __next__(self):
        return self._batch

    def __getattr__(self, name):
        return getattr(self._it, name)


class _ConstantDataset:
    def __init__(self, ds):
        self._ds = ds

    def __iter__(self):
        return _ConstantIterator(iter(self._ds))


def worker(mode: str, steps: int, workdir: str, data_dir: str) -> dict[str, Any]:
    """Trains `steps` steps in this process; returns the logged steps/s of each window."""
    from transformer_jax.config import load_config
    from transformer_jax.tasks.translation.task import TranslationTask
    from transformer_jax.train.runinfo import read_metrics
    from transformer_jax.train.trainer import train_and_evaluate

    if mode == "constant":
        real = TranslationTask.train_dataset

        def constant(self, *args, **kwargs):
            return _ConstantDataset(real(self, *args, **kwargs))

        TranslationTask.train_dataset = constant
    overrides = [*OVERRIDES, f"train.num_steps={steps}", f"data.data_dir={data_dir}"]
    cfg = load_config("translate_tiny", overrides)
    train_and_evaluate(cfg, workdir)
    rates = [
        r["train/steps_per_second"] for r in read_metrics(workdir) if "train/steps_per_second" in r
    ]
    return {"mode": mode, "steps_per_second": rates}


def _run_worker(mode: str, steps: int, root: str, data_dir: str) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix=f"input_{mode}_", dir=root)
    cmd = [sys.executable, "-m", "benchmarks.input_bench", "--worker", mode, "--steps",
           str(steps), "--workdir", workdir, "--data-dir", data_dir]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"the {mode} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--worker", choices=MODES)
    p.add_argument("--workdir")
    p.add_argument("--data-dir", default="")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.workdir, args.data_dir)))
        return 0

    from benchmarks.classify_bench import cpu_vector_extensions
    from benchmarks.run import machine_info

    machine = machine_info()
    vector = ", ".join(k for k, v in cpu_vector_extensions().items() if v) or "none listed"
    windows: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="input_bench_") as root:
        data_dir = args.data_dir or os.path.join(root, "tfds")
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                res = _run_worker(mode, args.steps, root, data_dir)
                windows[mode] += res["steps_per_second"][1:]  # the first window compiles
                print(f"round {r + 1} {mode}: {res['steps_per_second']}", flush=True)
    summary = {m: statistics.median(v) for m, v in windows.items()}
    ratio = summary["real"] / summary["constant"]
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine,
        "steps": args.steps,
        "rounds": args.rounds,
        "windows": windows,
        "median_steps_per_second": summary,
        "real_over_constant": ratio,
        "goal": "real within 5% of constant (ratio >= 0.95)",
        "met": ratio >= 0.95,
    }
    lines = [
        "# Input pipeline: real batches vs a constant batch (shape S, `tjax train`'s loop)",
        "",
        f"{result['date']}; {machine['cpu_model']} ({vector}); {machine['cores']} cores; "
        f"load average before the run {machine['load_average_1_5_15']}; "
        f"{args.rounds} round(s) of {args.steps} steps per mode, modes alternating.",
        "",
        "| mode | median steps/s | windows |",
        "|---|---:|---:|",
        *(f"| {m} | {summary[m]:.3f} | {len(windows[m])} |" for m in MODES),
        "",
        f"real / constant = **{ratio:.3f}** (goal >= 0.95: {'met' if ratio >= 0.95 else 'missed'})",
    ]
    quick = args.steps < 200 or args.rounds < 2
    write_results(result, "\n".join(lines) + "\n", args.out, "input_cpu", quick=quick)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from transformer_jax.malloc_env import reexec_with_tuned_malloc

    # The malloc settings `tjax` runs with, for both modes (the workers inherit them).
    reexec_with_tuned_malloc(("benchmarks.input_bench",))
    sys.exit(main())
