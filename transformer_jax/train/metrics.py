"""Metrics: JSON lines + TensorBoard in the workdir, and the console progress line."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


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

    def write_images(self, step: int, images: dict[str, bytes]) -> None:
        """PNG files (an evaluator's pictures: a confusion matrix, a sample sheet) as
        TensorBoard images; files of other kinds are skipped."""
        if not self.enabled or self._tb is None:
            return
        import io

        from PIL import Image

        for name, data in images.items():
            if not name.endswith(".png"):
                continue
            with Image.open(io.BytesIO(data)) as img:
                pixels = np.asarray(img.convert("RGB"))
            self._tb.add_image(name.removesuffix(".png"), pixels, int(step), dataformats="HWC")
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


_ACTIVE: list[Progress] = []  # entered Progress displays, innermost last


class Progress:
    """The console status of a run, shown on host 0 only.

    On a terminal, one line redrawn in place (at most every `redraw_s` seconds): a bar
    with the step count, the steps/s, tokens/s and ETA measured at the last log step,
    that step's metrics, and what the run is doing now (compiling, evaluating loss
    n/N, decoding n/N, with the phase's rate and ETA once measured). Elsewhere (a file,
    a pipe, a notebook): plain lines, one per log step and per phase, a phase's progress
    at most every `phase_every_s` seconds. While entered (`with progress:`), `report()`
    reaches it from anywhere. `total_steps=None` shows phases only, each with its own bar.
    `clock` is the time source (seconds).
    """

    def __init__(
        self,
        total_steps: int | None,
        start_step: int = 0,
        enabled: bool = True,
        stream=None,
        redraw_s: float = 0.1,
        phase_every_s: float = 30.0,
        clock=time.perf_counter,
    ):
        self.total = total_steps
        self.enabled = enabled and jax.process_index() == 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.redraw_s, self.phase_every_s = redraw_s, phase_every_s
        self._clock = clock
        self._t0 = clock()
        self._s0 = start_step
        self._step = start_step
        self._sps = 0.0  # steps/s and tokens/step as of the last log step
        self._tokens = 0.0
        self._scalars: dict[str, float] = {}
        self._phase = ""
        self._phase_label = ""
        self._phase_count: tuple[int, int] | None = None  # (done, total) of the phase
        self._phase_start = (0.0, 0)  # when the phase's count started, and from where
        self._phase_shown = -math.inf  # when the phase was last written (plain lines)
        self._drawn = -math.inf  # when the line was last drawn (terminal)
        self._width = 0  # characters of the line now on the terminal
        self._shown = ""  # that line

    def __enter__(self) -> Progress:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self.close()

    def reset_clock(self, step: int) -> None:
        self._t0, self._s0 = self._clock(), step

    def update(self, step: int, tokens_per_step: float, scalars: dict[str, float]) -> str:
        """A log step: the step's metrics are known; measures the rate since the clock's reset."""
        elapsed = max(self._clock() - self._t0, 1e-9)
        self._sps = (step - self._s0) / elapsed
        self._step, self._tokens, self._scalars = step, tokens_per_step, dict(scalars)
        self._phase = self._phase_label = ""
        self._phase_count = None
        line = self._line()
        if self.enabled:
            if self.tty:
                self._draw(line)
            else:
                self._write(line + "\n")
        return line

    def tick(self, step: int, in_flight: Sequence[Any] = ()) -> None:
        """Between log steps: redraws the bar (terminal only) without waiting for the device.

        `in_flight`: results of the steps up to `step` not read yet, oldest first; the
        bar counts the steps whose result is ready (dispatch runs ahead of the device).
        """
        self._phase = self._phase_label = ""
        self._phase_count = None  # training again
        if not (self.enabled and self.tty):
            return
        now = self._clock()
        if now - self._drawn < self.redraw_s:
            return
        waiting = len(in_flight)
        for result in in_flight:
            leaves = jax.tree.leaves(result)
            if leaves and not getattr(leaves[0], "is_ready", lambda: True)():
                break
            waiting -= 1
        self._step = max(self._step, step - waiting)
        self._draw(self._line(), now)

    def follow(self, step: int, in_flight: Sequence[Any]) -> None:
        """At a log step, before its results are read: redraws as each in-flight step ends.

        Only on a terminal, and it waits for nothing that reading the results would not.
        """
        if not (self.enabled and self.tty):
            return
        for i, result in enumerate(in_flight):
            jax.block_until_ready(result)
            self.tick(step - len(in_flight) + i + 1, in_flight[i + 1 :])

    def phase(self, label: str, done: int | None = None, total: int | None = None) -> None:
        """Shows what the run is doing now, e.g. ("decoding", 64, 200)."""
        new = label != self._phase_label
        now = self._clock()
        done = done or 0
        old = self._phase_count
        if new or total is None or old is None or done < old[0]:  # a new count starts
            self._phase_start = (now, done)
        self._phase_label = label
        self._phase_count = None if total is None else (done, total)
        self._phase = label if total is None else f"{label} {done}/{total}{self._rate(now)}"
        if not self.enabled:
            return
        if self.tty:
            if new or now - self._drawn >= self.redraw_s or done == total:
                self._draw(self._line(), now)
        elif new or now - self._phase_shown >= self.phase_every_s:
            self._phase_shown = now
            self._write(self._phase + "\n")

    def _rate(self, now: float) -> str:
        """E.g. " 2.50/s ETA 0:00:30": the phase's rate since its count started, once known."""
        (t0, d0), (done, total) = self._phase_start, self._phase_count
        if done <= d0 or now <= t0:
            return ""
        rate = (done - d0) / (now - t0)
        return f" {rate:.2f}/s ETA {_fmt(max(total - done, 0) / rate)}"

    def clear(self) -> None:
        """Erases the terminal line, e.g. before a log message."""
        if self.enabled and self.tty and self._width:
            self._write("\r" + " " * self._width + "\r")
            self._width = 0

    def close(self) -> None:
        if self.enabled and self.tty and self._width:
            self._write("\n")
            self._width = 0

    def _line(self) -> str:
        if self.total is None:  # phases only: a phase with a count gets the bar
            if self._phase_count is None or not self._phase:
                return self._phase
            done, total = self._phase_count
            return f"{_bar(done, total)} {self._phase}"
        bar = f"{_bar(self._step, self.total)} step {self._step}/{self.total}"
        if self._phase:  # short, so that the phase fits the terminal's width
            return f"{bar} | {self._phase}"
        eta = (self.total - self._step) / self._sps if self._sps > 0 else math.inf
        rates = f"{self._sps:.2f} steps/s {self._sps * self._tokens:,.0f} tok/s ETA {_fmt(eta)}"
        metrics = [f"{k}={v:.4g}" for k, v in self._scalars.items()]
        # The first metric (the loss) before the rates: a narrow terminal cuts the end of the line.
        return " ".join([bar, *metrics[:1], rates, *metrics[1:]])

    def _draw(self, line: str, now: float | None = None) -> None:
        width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
        line = line[:width]
        if line != self._shown or not self._width:
            self._write("\r" + line + " " * max(self._width - len(line), 0))
            self._width, self._shown = len(line), line
        self._drawn = self._clock() if now is None else now

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def report(label: str, done: int | None = None, total: int | None = None) -> None:
    """Tells the innermost entered Progress what the run is doing (nothing if none)."""
    if _ACTIVE:
        _ACTIVE[-1].phase(label, done, total)


def _bar(done: int, total: int) -> str:
    filled = max(min(int(20 * done / max(total, 1)), 20), 0)
    return f"[{'#' * filled}{'-' * (20 - filled)}]"


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def log(msg: str) -> None:
    """Prints on host 0 only."""
    if jax.process_index() == 0:
        for progress in _ACTIVE:  # the message gets its own line, not the end of the bar's
            progress.clear()
        print(msg, flush=True)
