"""A PNG sample sheet: one row per example, its media on the left, the texts on the right."""

from __future__ import annotations

import os
import textwrap

import numpy as np

_GAP = 2  # pixels between images or frames in a strip


def _strip(pictures: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, 3] -> one uint8 [H, n*W + gaps, 3] strip on a white background."""
    n, h, w, c = pictures.shape
    out = np.full((h, n * w + (n - 1) * _GAP, c), 255, np.uint8)
    for i in range(n):
        out[:, i * (w + _GAP) : i * (w + _GAP) + w] = pictures[i]
    return out


def _media(example: dict):
    """(kind, array) of the first medium present: images, video frames or a log-mel."""
    images = example.get("images")
    if images is not None and len(images):
        return "images", _strip(np.asarray(images, np.uint8))
    video = example.get("video")
    if video is not None and len(video):
        return "video", _strip(np.asarray(video, np.uint8))
    mel = example.get("audio_mel")
    if mel is not None and np.size(mel):
        return "audio", np.asarray(mel, np.float32)
    return "text", None


def _wrap(label: str, text: str, width: int = 64, lines: int = 3) -> str:
    body = textwrap.wrap(str(text), width) or [""]
    if len(body) > lines:
        body = body[:lines]
        body[-1] = body[-1][: width - 3] + "..."
    return f"{label}: " + "\n    ".join(body)


def sample_sheet(examples: list[dict], path, max_rows: int = 16, title: str | None = None) -> str:
    """Draw up to `max_rows` examples into a PNG at `path`; returns the path.

    Each example: "task", "prompt", "reference", "hypothesis" (str), and optionally
    "images" uint8 [n, H, W, 3], "video" uint8 [F, H, W, 3], "audio_mel" float [F, M].
    The answer is green when it equals the reference (after stripping spaces), else red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(examples)[:max_rows]
    if not rows:
        raise ValueError("sample_sheet: no examples to draw")
    path = os.fspath(path)
    fig, axes = plt.subplots(
        len(rows),
        2,
        figsize=(11, 1.9 * len(rows) + (0.4 if title else 0.0)),
        gridspec_kw={"width_ratios": [1, 1.6]},
        squeeze=False,
    )
    for (ax_m, ax_t), ex in zip(axes, rows):
        kind, media = _media(ex)
        if kind == "audio":
            ax_m.imshow(media.T, origin="lower", aspect="auto", cmap="magma")
        elif media is not None:
            ax_m.imshow(media, interpolation="nearest")
        else:
            ax_m.text(0.5, 0.5, "(no media)", ha="center", va="center", color="gray")
            for spine in ax_m.spines.values():
                spine.set_visible(False)
        ax_m.set_xticks([])
        ax_m.set_yticks([])
        ax_m.set_ylabel(kind, fontsize=8)

        reference = str(ex.get("reference", ""))
        hypothesis = str(ex.get("hypothesis", ""))
        ok = hypothesis.strip() == reference.strip()
        ax_t.axis("off")
        ax_t.text(0, 0.95, str(ex.get("task", "")), fontsize=10, weight="bold", va="top")
        lines = []
        if ex.get("prompt"):
            lines.append(("black", _wrap("question", ex["prompt"], lines=2)))
        lines.append(("black", _wrap("reference", reference)))
        lines.append(("green" if ok else "red", _wrap("answer", hypothesis)))
        y = 0.75
        for color, text in lines:
            # parse_math=False: "$" in model output must not start TeX.
            ax_t.text(
                0, y, text, fontsize=8, color=color, va="top", family="monospace", parse_math=False
            )
            y -= 0.12 * (text.count("\n") + 1) + 0.06
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
