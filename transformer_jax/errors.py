"""The errors a user can cause; the CLI prints them as one line."""

from __future__ import annotations

import errno
import os
import re

from transformer_jax.config import ConfigError
from transformer_jax.train.checkpoint import CheckpointError
from transformer_jax.train.distributed import DistributedInitError
from transformer_jax.train.paths import WorkdirError
from transformer_jax.train.preemption import Preempted
from transformer_jax.train.sharding import MeshError
from transformer_jax.train.task import InputError
from transformer_jax.train.trainer import TrainingError
from transformer_jax.train.workdir import WorkdirInUse

# This project's own errors: their message is written for the user.
PROJECT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    InputError,
    MeshError,
    DistributedInitError,
    TrainingError,
    WorkdirInUse,
    WorkdirError,
)
USER_ERRORS: tuple[type[BaseException], ...] = (*PROJECT_ERRORS, FileNotFoundError, ValueError)

# Exit statuses of `tjax`: 0 done, 2 user error, 75 stopped by a signal after
# saving a checkpoint or before the first step (rerun to resume), 130 interrupted.
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = Preempted.exit_code

# Storage problems the user fixes (space, permissions), by errno.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# tensorstore (Orbax's array writer) reports them inside a ValueError's text.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'"((?:/|[a-z][a-z0-9+.-]*://)[^"]+)"')
_ORBAX_TMP = ".orbax-checkpoint-tmp"


def _chain(e: BaseException):
    """e, then what caused it, then what caused that ..."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _describe(code: int, path: str | None, where: str | None = None) -> str:
    problem = STORAGE_ERRNOS[code]
    if not path:  # the OS did not say which file: name the folder the command writes to
        return f"{problem} while writing under {where}" if where else problem
    path = str(path)
    if _ORBAX_TMP in path:  # inside a step Orbax was writing: name the step
        head, _, _ = path.partition(_ORBAX_TMP)
        directory, step = os.path.split(head)
        if step.isdigit():
            return (
                f"{problem} while saving checkpoint step {step} in {directory} (that step "
                "was not saved; rerun to resume from the last complete checkpoint)"
            )
    if code in (errno.EACCES, errno.EPERM):
        return f"{problem}: {path}"
    return f"{problem}: cannot write {path}"


def storage_problem(e: BaseException, where: str | None = None) -> str | None:
    """One line naming the path and the problem when `e` comes from a full disk,
    a read-only file system or missing permissions (also as Orbax/tensorstore
    raise them from a background save); None for anything else. `where` (the
    command's workdir) is named when the error itself carries no path."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in STORAGE_ERRNOS:
            return _describe(x.errno, x.filename, where)
        text = str(x)
        match = _OS_ERROR_CODE.search(text)
        if match and int(match.group(1)) in STORAGE_ERRNOS:
            paths = _QUOTED_PATH.findall(text)
            return _describe(int(match.group(1)), paths[-1] if paths else None, where)
    return None


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    return lines[0] + (" (details: rerun with TJAX_DEBUG=1)" if len(lines) > 1 else "")


def user_error_message(e: BaseException, where: str | None = None) -> str | None:
    """The one line to print for an error the user can fix; None for anything else (a bug).
    `where` is the folder the command writes to, named when a storage error names no file."""
    if isinstance(e, PROJECT_ERRORS):
        return _one_line(e)
    storage = storage_problem(e, where)
    if storage is not None:
        return storage
    if isinstance(e, USER_ERRORS):
        return _one_line(e)
    return None
