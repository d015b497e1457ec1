"""Metrics: JSON lines + TensorBoard in the workdir, and a console progress line."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax


class MetricsWriter:
    """Appends `{"step": N, ...}` lines to metrics.jsonl and writes TensorBoard scalars."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled and jax.process_index() == 0
        self._tb = None
        if self.enabled:
            from transformer_jax.train import paths

            paths.makedirs(workdir)
            self._path = paths.join(workdir, "metrics.jsonl")
            if not paths.is_remote(workdir):  # TensorBoard events for local workdirs
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        from transformer_jax.train import paths

        paths.append_line(self._path, json.dumps(row))
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(v), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One console line: step, steps/s, tokens/s, ETA and the latest metrics."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True, stream=None):
        self.total = total_steps
        self.enabled = enabled and jax.process_index() == 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._t0 = time.perf_counter()
        self._s0 = start_step

    def reset_clock(self, step: int) -> None:
        self._t0, self._s0 = time.perf_counter(), step

    def update(self, step: int, tokens_per_step: float, scalars: dict[str, float]) -> str:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        done = step - self._s0
        sps = done / elapsed
        eta = (self.total - step) / sps if sps > 0 else float("inf")
        bar_w = 20
        filled = int(bar_w * step / max(self.total, 1))
        bar = "#" * filled + "-" * (bar_w - filled)
        extras = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        line = (
            f"[{bar}] step {step}/{self.total} {sps:.2f} steps/s "
            f"{sps * tokens_per_step:,.0f} tok/s ETA {_fmt(eta)} {extras}"
        )
        if self.enabled:
            self.stream.write(("\r" + line) if self.tty else line + "\n")
            self.stream.flush()
        return line

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def log(msg: str) -> None:
    """Prints on host 0 only."""
    if jax.process_index() == 0:
        print(msg, flush=True)
