"""Workdir paths: local folders or object stores (gs://, s3://) alike.

Orbax reads and writes remote paths itself; the few files the trainer writes
next to the checkpoints (config.json, metrics.jsonl, eval JSON) go through
`etils.epath`, which needs `gcsfs` (or TensorFlow's gfile) for gs:// paths.
"""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> str:
    """Absolute for local paths, unchanged for URLs."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def join(*parts: str) -> str:
    return (
        str(epath.Path(parts[0]).joinpath(*parts[1:]))
        if is_remote(parts[0])
        else os.path.join(*parts)
    )


def makedirs(path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


def write_text(path: str, text: str) -> None:
    """Replaces the file in one step (object stores write whole objects anyway)."""
    if is_remote(path):
        epath.Path(path).write_text(text)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def append_line(path: str, line: str) -> None:
    if is_remote(path):  # object stores cannot append: rewrite the (small) file
        p = epath.Path(path)
        old = p.read_text() if p.exists() else ""
        p.write_text(old + line + "\n")
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def move(src: str, dst: str) -> None:
    epath.Path(dst).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(src).rename(dst)
