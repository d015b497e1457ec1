"""Workdir paths: local folders or object stores (gs://, s3://) alike.

Orbax reads and writes remote paths itself; the few files the trainer writes
next to the checkpoints (config.json, metrics.jsonl, eval JSON) go through
`etils.epath`, which needs `gcsfs` (or TensorFlow's gfile) for gs:// paths.
"""

from __future__ import annotations

import os
import tempfile

from etils import epath


class WorkdirError(ValueError):
    """A workdir that cannot be used as asked (one line)."""


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
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    """Replaces the file in one step (object stores write whole objects anyway)."""
    if is_remote(path):
        epath.Path(path).write_bytes(data)
        return
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:  # a full disk or a signal: leave no partial file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _probe_write(folder: str) -> str | None:
    """Why a new file cannot be created in `folder` (None: it can); leaves nothing behind."""
    try:
        fd, name = tempfile.mkstemp(prefix=".tjax-write-test-", dir=folder)
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(name)
    return None


def _unreadable(folder: str) -> tuple[str, str] | None:
    """(path, reason) of the first folder or file below `folder` that cannot be read."""
    problem: list[tuple[str, str]] = []

    def onerror(e: OSError) -> None:
        problem.append((e.filename or folder, e.strerror or type(e).__name__))

    for root, dirs, files in os.walk(folder, onerror=onerror):
        if problem:
            break
        for name in dirs + files:
            path = os.path.join(root, name)
            mode = os.R_OK | (os.X_OK if name in dirs else 0)
            if not os.access(path, mode):
                return path, "Permission denied"
    return problem[0] if problem else None


def check_workdir(
    workdir: str, *, write: bool, create: bool = False, write_checkpoints: bool = False
) -> None:
    """Fails in one line, before anything is read or written, on a workdir that cannot serve.

    Refused: a file in its place; a folder that cannot be read, or written
    (`write`); checkpoint folders with anything unreadable, or not writable
    (`write_checkpoints`); with `create`, a missing workdir whose parent folder
    cannot be written. Object-store paths are not checked (the store reports).
    """
    if is_remote(workdir):
        return
    path = os.path.abspath(workdir)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise WorkdirError(f"workdir {path} is a file, not a folder")
    if not os.path.isdir(path):
        if not create:
            return  # the command says that there is nothing to read
        parent = _nearest_existing(path)
        if not os.path.isdir(parent):
            raise WorkdirError(f"cannot create workdir {path}: {parent} is a file, not a folder")
        why = _probe_write(parent)
        if why:
            raise WorkdirError(f"cannot create workdir {path}: {parent} is not writable ({why})")
        return
    try:
        os.listdir(path)
    except OSError as e:
        raise WorkdirError(f"workdir {path} cannot be read ({e.strerror})") from None
    why = _probe_write(path) if write else None
    if why:
        raise WorkdirError(f"workdir {path} is not writable ({why})")
    for name in ("checkpoints", "checkpoints_averaged"):
        folder = os.path.join(path, name)
        if not os.path.lexists(folder):
            continue
        if not os.path.isdir(folder):
            raise WorkdirError(f"checkpoint folder {folder} is a file, not a folder")
        bad = _unreadable(folder)
        if bad:
            where = "" if bad[0] == folder else f": {bad[0]}"
            raise WorkdirError(f"checkpoint folder {folder} cannot be read{where} ({bad[1]})")
        why = _probe_write(folder) if write_checkpoints and name == "checkpoints" else None
        if why:
            raise WorkdirError(f"checkpoint folder {folder} is not writable ({why})")
