"""glibc malloc settings for our own processes (the `tjax` CLI, the benchmarks).

With glibc's default settings a CPU training step frees and re-faults its buffers' pages
every step (tens of thousands of minor page faults per step); `glibc.malloc.hugetlb=1`
backs the heap with transparent huge pages instead. glibc reads GLIBC_TUNABLES only when
a process starts, so an entry point that wants it re-executes itself once, before jax is
imported, with the tunable added to its environment.

TJAX_MALLOC=default leaves malloc as it is (no re-execution); TJAX_MALLOC=tuned (or
unset) adds the tunables below. A GLIBC_TUNABLES set by the user is kept: the tunables
are appended to it, and one it already names is left as the user set it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

OPT_OUT_VAR = "TJAX_MALLOC"
CHOICES = ("tuned", "default")
# Set in the re-executed process: it never re-executes again.
MARKER_VAR = "TJAX_MALLOC_REEXEC"
# (name, value, first glibc version that knows the name)
TUNABLES: tuple[tuple[str, str, tuple[int, int]], ...] = (("glibc.malloc.hugetlb", "1", (2, 35)),)


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc, or None under another C library."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # e.g. "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None
    if not text or not text.startswith("glibc "):
        return None
    try:
        major, minor = text.split()[1].split(".")[:2]
        return int(major), int(minor)
    except (IndexError, ValueError):
        return None


def tuned_environ(
    environ: Mapping[str, str], glibc: tuple[int, int] | None
) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing is to change.

    Raises ValueError for a TJAX_MALLOC value other than those in CHOICES.
    """
    choice = environ.get(OPT_OUT_VAR, "tuned").strip().lower() or "tuned"
    if choice not in CHOICES:
        raise ValueError(
            f"{OPT_OUT_VAR} must be one of {', '.join(CHOICES)}, got {environ[OPT_OUT_VAR]!r}"
        )
    if choice == "default" or glibc is None or environ.get(MARKER_VAR):
        return None
    existing = environ.get("GLIBC_TUNABLES", "")
    named = {item.split("=", 1)[0].strip() for item in existing.split(":") if item.strip()}
    added = [
        f"{name}={value}" for name, value, since in TUNABLES if glibc >= since and name not in named
    ]
    if not added:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join([existing.strip(":")] * bool(existing.strip(":")) + added)
    env[MARKER_VAR] = "1"
    return env


def _is_entry_point(main_modules: Sequence[str], scripts: Sequence[str]) -> bool:
    """Whether this interpreter runs one of `main_modules` (python -m) or `scripts`."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in main_modules:
        return True
    path = getattr(main, "__file__", None) or ""
    return spec is None and os.path.basename(path) in scripts


def reexec_with_tuned_malloc(main_modules: Sequence[str], scripts: Sequence[str] = ()) -> None:
    """Replaces this process by itself (same argv, pid and exit status) under the tuned
    environment; returns at once when there is nothing to do or this process is not one
    of the given entry points (e.g. `main([...])` called from Python)."""
    if sys.platform != "linux" or not _is_entry_point(main_modules, scripts):
        return
    env = tuned_environ(os.environ, glibc_version())
    argv = list(getattr(sys, "orig_argv", ()))
    if env is None or not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return  # run on with malloc's default settings
