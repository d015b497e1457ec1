"""Pictures of training runs: loss, eval metrics, learning rate and speed over steps.

`plot_runs([workdir, ...])` reads each run's metrics.jsonl and writes one PNG with a
panel per quantity and a line per run (`tjax plot`). Runs that logged only a few
steps, or whose last line was cut short, are drawn with what they have.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
from dataclasses import dataclass

from transformer_jax.train import paths
from transformer_jax.train.runinfo import (
    LOWER_IS_BETTER,
    eval_splits,
    read_metrics,
    series,
    short_labels,
)

# Training-only panels, drawn after the loss and the eval metrics: key -> title.
TRAIN_PANELS = {
    "train/learning_rate": "learning rate",
    "train/tokens_per_second": "tokens/s",
    "train/grad_norm": "gradient norm",
}


@dataclass
class Run:
    """One run's curves: key -> (steps, values)."""

    workdir: str
    label: str
    curves: dict[str, tuple[list[int], list[float]]]


@dataclass
class Panel:
    """One subplot: its title and the metric keys drawn in it (train first)."""

    title: str
    keys: list[str]


def load_runs(workdirs: list[str | os.PathLike]) -> list[Run]:
    """Reads each workdir's metrics; labels are the folder names (made unique)."""
    if not workdirs:
        raise ValueError("no workdir given")
    resolved = [paths.resolve(os.fspath(w)) for w in workdirs]
    curves = [series(read_metrics(w)) for w in resolved]
    return [
        Run(w, label, c)
        for w, label, c in zip(resolved, short_labels(resolved), curves, strict=True)
    ]


def panels(runs: list[Run]) -> list[Panel]:
    """The panels the runs have data for: loss, each eval metric (with its train
    counterpart, e.g. accuracy), then learning rate, tokens/s and gradient norm."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.curves if k not in keys]
    splits = eval_splits(keys)
    out = []
    loss = [k for k in ["train/loss", *(f"{s}/loss" for s in splits)] if k in keys]
    if loss:
        out.append(Panel("loss", loss))
    names: list[str] = []
    for key in keys:
        prefix, _, name = key.partition("/")
        if prefix in splits and name not in LOWER_IS_BETTER and name not in names:
            names.append(name)
    for name in names:
        group = [k for k in [f"train/{name}", *(f"{s}/{name}" for s in splits)] if k in keys]
        out.append(Panel(name, group))
    out += [Panel(title, [key]) for key, title in TRAIN_PANELS.items() if key in keys]
    return out


def make_figure(runs: list[Run]):
    """A matplotlib Figure (Agg canvas, no pyplot state): one panel per quantity, one
    colour per run; train curves solid, eval curves dashed with markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = panels(runs)
    if not chosen:
        names = ", ".join(r.workdir for r in runs)
        raise ValueError(f"nothing to plot: no numeric metrics in {names}")
    cols = min(3, len(chosen))
    rows = -(-len(chosen) // cols)
    width, height = 5.2 * cols, 3.6 * rows + 0.4
    fig = Figure(figsize=(width, height), dpi=100)
    # Fixed margins (in inches): a layout engine would measure every label, twice the time.
    fig.subplots_adjust(
        left=0.8 / width,
        right=1 - 0.2 / width,
        bottom=0.55 / height,
        top=1 - 0.75 / height,
        wspace=0.3,
        hspace=0.45,
    )
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for i, panel in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        several_kinds = len({k.partition("/")[0] for k in panel.keys}) > 1
        for run, color in zip(runs, colors, strict=True):
            for key in panel.keys:
                if key not in run.curves:
                    continue
                steps, values = run.curves[key]
                split = key.partition("/")[0]
                train = split == "train"
                if len(runs) == 1:
                    label = split
                else:
                    label = f"{run.label} ({split})" if several_kinds else run.label
                ax.plot(
                    steps,
                    values,
                    color=color,
                    linestyle="-" if train else "--",
                    marker=None if train and len(steps) > 1 else "o",
                    markersize=3,
                    label=label,
                )
        if panel.title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.legend(fontsize="small")
    title = runs[0].label if len(runs) == 1 else " vs ".join(r.label for r in runs)
    fig.suptitle(title, y=1 - 0.15 / height, va="top")
    return fig


def _file_name(runs: list[Run]) -> str:
    if len(runs) == 1:
        return "curves.png"
    stem = "curves_" + "_vs_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", r.label) for r in runs)
    if len(stem) > 120:  # many runs: a short stable name
        digest = hashlib.sha1("\n".join(r.workdir for r in runs).encode()).hexdigest()[:8]
        stem = f"curves_{len(runs)}_runs_{digest}"
    return stem + ".png"


def plot_runs(
    workdirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None
) -> list[pathlib.Path]:
    """Writes the curves of one run, or of several runs compared, as PNG; returns the paths.

    The file goes to `out_dir` (default: the first workdir): `curves.png` for one
    run, `curves_<a>_vs_<b>.png` for several. A workdir without readable metrics
    is a one-line WorkdirError naming it.
    """
    runs = load_runs(list(workdirs))
    fig = make_figure(runs)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    folder = paths.resolve(os.fspath(out_dir)) if out_dir is not None else runs[0].workdir
    if not paths.is_remote(folder) and os.path.lexists(folder) and not os.path.isdir(folder):
        raise paths.WorkdirError(f"output folder {folder} is a file, not a folder")
    paths.makedirs(folder)
    target = paths.join(folder, _file_name(runs))
    paths.write_bytes(target, buf.getvalue())
    return [pathlib.Path(target)]


def log_to_tensorboard(workdir: str | os.PathLike, png: str | os.PathLike) -> int:
    """Adds a written PNG to the run's TensorBoard (tag `curves`) at its last logged
    step, which it returns. Local workdirs only."""
    import numpy as np
    from PIL import Image
    from tensorboardX import SummaryWriter

    path = paths.resolve(os.fspath(workdir))
    if paths.is_remote(path):
        raise ValueError(f"TensorBoard images are written for local workdirs only, not {path}")
    step = max(r["step"] for r in read_metrics(path))
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    writer = SummaryWriter(os.path.join(path, "tensorboard"))
    try:
        writer.add_image("curves", pixels, step, dataformats="HWC")
    finally:
        writer.close()
    return step
