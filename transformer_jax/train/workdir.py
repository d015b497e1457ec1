"""One training run per workdir: the workdir lock, and the record of the run's configs.

The lock is a file, `<workdir>/.lock`, holding who took it (host, pid, start time)
and a heartbeat refreshed every `HEARTBEAT_S` seconds while the run lives:

- on a local or NFS filesystem the file is also `flock`ed, so the kernel (or the
  NFS lock manager) drops the lock when its process dies, even by SIGKILL;
- where `flock` is not available (object stores such as gs://, some FUSE mounts)
  the heartbeat alone decides: a lock whose heartbeat is older than `STALE_S`, or
  whose process is gone (same host), is stale and taken over with a log line.

Only process 0 of a multi-host job takes the lock; all processes agree on the outcome.

`config.json` is the config the run uses now; `config_history.jsonl` keeps every
earlier effective config with the step from which it applied; `starts.jsonl` has a
line per start of the run (also each resume): the step, and the config name or file,
overrides and command line it was started with.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import jax
from etils import epath

from transformer_jax.config import ConfigError
from transformer_jax.train import paths
from transformer_jax.train.metrics import log

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
STARTS_FILE = "starts.jsonl"
HEARTBEAT_S = 30.0
STALE_S = 300.0
# Keys that change nothing a run computes (a finished run may be rerun with them changed).
NO_EFFECT_KEYS = ("train.progress",)

try:
    import fcntl
except ImportError:  # not on this platform: the heartbeat alone decides
    fcntl = None


class WorkdirInUse(RuntimeError):
    """Another training run holds the workdir."""


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _read_text(path: str) -> str:
    return epath.Path(path).read_text()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for one training run.

    Raises `WorkdirInUse` (one line naming the holder) when a live run holds it.
    `primary` (default: process 0) is the process that takes the lock.
    """

    def __init__(
        self,
        workdir: str,
        *,
        primary: bool | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
        settle_s: float | None = None,
    ):
        self.workdir = paths.resolve(workdir)
        self.path = paths.join(self.workdir, LOCK_FILE)
        self.primary = jax.process_index() == 0 if primary is None else primary
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.remote = paths.is_remote(self.workdir)
        # Without flock two runs may write the file at once: wait, then check who won.
        self.settle_s = (2.0 if self.remote else 0.2) if settle_s is None else settle_s
        self.info: dict[str, Any] = {}
        self.lost = False
        self._fd: int | None = None
        self._created_dir = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- entering and leaving ----------------------------------------------------------

    def __enter__(self) -> WorkdirLock:
        error: BaseException | None = None
        if self.primary:
            try:
                self.acquire()
            except Exception as e:  # shared with the other hosts below, then raised
                error = e
        if jax.process_count() > 1:
            import numpy as np
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.asarray([error is None], np.int32))
            if not np.min(flags) and error is None:
                error = WorkdirInUse(
                    f"workdir {self.workdir} is in use (process 0 could not take its lock "
                    f"{self.path}; see its log)"
                )
        if error is not None:
            self.release()  # whatever was taken, and a workdir created for nothing
            raise error
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.remote and not paths.isdir(self.workdir):
            self._created_dir = True
        paths.makedirs(self.workdir)
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": now_iso(),
            "heartbeat": time.time(),
            "token": uuid.uuid4().hex,
        }
        if not (self.remote or fcntl is None) and self._acquire_flock():
            pass
        else:
            self._acquire_by_heartbeat()
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file (if it is still ours)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            # Unlinked while still locked: a process waiting on this inode sees it gone.
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        elif self.info and not self.lost:
            holder = self._read()
            if holder is not None and holder.get("token") == self.info["token"]:
                try:
                    epath.Path(self.path).unlink()
                except FileNotFoundError:
                    pass
        self.info = {}
        if self._created_dir:  # leave nothing behind when the run wrote nothing
            try:
                os.rmdir(self.workdir)
            except OSError:
                pass
            self._created_dir = False

    # -- local filesystems: flock ------------------------------------------------------

    def _acquire_flock(self) -> bool:
        """Takes the lock with flock; False where the filesystem does not support it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read()
                os.close(fd)
                raise WorkdirInUse(self._busy(holder)) from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    return False
                raise
            # The holder unlinks the file on release: a lock on an unlinked inode holds nothing.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = self._parse(os.pread(fd, 1 << 16, 0))
        if holder is not None and holder.get("host") != self.info["host"]:
            # flock over NFS may not reach other hosts (e.g. mounted with nolock): a fresh
            # heartbeat from another host means a live run there.
            if self._age(holder) < self.stale_s:
                os.close(fd)
                raise WorkdirInUse(self._busy(holder))
        self._fd = fd
        if holder is not None:
            same_host = holder.get("host") == self.info["host"]
            reason = "that process no longer runs" if same_host else self._stale_reason(holder)
            self._log_takeover(holder, reason)
        self._write()
        return True

    # -- object stores and filesystems without flock: the heartbeat --------------------

    def _acquire_by_heartbeat(self) -> None:
        holder = self._read()
        if holder is not None:
            reason = self._stale_reason(holder)
            if reason is None:
                raise WorkdirInUse(self._busy(holder))
            self._log_takeover(holder, reason)
        self._write()
        time.sleep(self.settle_s)
        winner = self._read()
        if winner is None or winner.get("token") != self.info["token"]:
            self.info = {}
            raise WorkdirInUse(self._busy(winner))

    def _stale_reason(self, holder: dict[str, Any]) -> str | None:
        age = self._age(holder)
        if age >= self.stale_s:
            return f"no heartbeat for {age:.0f} s"
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int):
            if not _pid_alive(pid):
                return "that process no longer runs"
        return None

    # -- the lock file -----------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self._fd is None:
                    holder = self._read()
                    if holder is not None and holder.get("token") != self.info["token"]:
                        self.lost = True
                        log(
                            f"warning: the lock {self.path} was taken over by pid "
                            f"{holder.get('pid')} on host {holder.get('host')}; "
                            "two runs may now write this workdir"
                        )
                        return
                self.info["heartbeat"] = time.time()
                self._write()
            except OSError as e:  # a passing storage error: try again at the next beat
                log(f"warning: could not refresh the lock {self.path}: {e}")

    def _write(self) -> None:
        data = json.dumps(self.info)
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data.encode("utf-8"), 0)
        else:
            paths.write_text(self.path, data)

    def _read(self) -> dict[str, Any] | None:
        """The holder's record; None if there is no lock file (or it stays unreadable)."""
        for _ in range(5):  # the holder may be rewriting it this instant
            try:
                raw = _read_text(self.path)
            except FileNotFoundError:
                return None
            holder = self._parse(raw)
            if holder is not None or not raw:
                return holder
            time.sleep(0.05)
        return {}

    @staticmethod
    def _parse(raw) -> dict[str, Any] | None:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        if not raw.strip():
            return None
        try:
            holder = json.loads(raw)
        except ValueError:
            return None
        return holder if isinstance(holder, dict) else None

    @staticmethod
    def _age(holder: dict[str, Any]) -> float:
        try:
            return max(time.time() - float(holder["heartbeat"]), 0.0)
        except (KeyError, TypeError, ValueError):
            return float("inf")

    def _busy(self, holder: dict[str, Any] | None) -> str:
        if not holder:
            who = "another run"
        else:
            since = str(holder.get("started", "?")).replace("T", " ")
            who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {since}"
            age = self._age(holder)
            if age != float("inf"):
                who += f" (heartbeat {age:.0f} s ago)"
        return (
            f"workdir {self.workdir} is in use by {who}; lock file {self.path}: wait for that "
            f"run to end, or use another --workdir (a lock whose process died is taken over "
            f"automatically, after {self.stale_s / 60:.0f} min without heartbeat on another host)"
        )

    def _log_takeover(self, holder: dict[str, Any], reason: str) -> None:
        log(
            f"taking over the stale lock {self.path} of pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} (since {holder.get('started', '?')}): {reason}"
        )


# -- the run's configs -----------------------------------------------------------------


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _plain(cfg: dict[str, Any]) -> dict[str, Any]:
    """As it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(cfg))


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """`key -> [old, new]` for every key whose value differs (None where absent)."""
    a, b = flatten(_plain(old)), flatten(_plain(new))
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _show(changes: dict[str, list[Any]], limit: int = 6) -> str:
    shown = [f"{k} {old!r} -> {new!r}" for k, (old, new) in list(changes.items())[:limit]]
    more = len(changes) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check_finished_run(
    workdir: str, saved: dict[str, Any], cfg: dict[str, Any], step: int, num_steps: int
) -> None:
    """A finished run trains nothing: a config that differs from its own is refused."""
    known = flatten(_plain(saved))  # keys newer than the run's config cannot be compared
    changes = {
        k: v
        for k, v in config_changes(saved, cfg).items()
        if k in known and k not in NO_EFFECT_KEYS
    }
    if not changes:
        return
    raise ConfigError(
        f"the run in {workdir} is finished (step {step}, train.num_steps={num_steps}) and "
        f"nothing would be trained with the changed config ({_show(changes)}); "
        "raise train.num_steps to train on, or use another --workdir"
    )


def read_history(workdir: str) -> list[dict[str, Any]]:
    path = paths.join(workdir, HISTORY_FILE)
    try:
        text = _read_text(path)
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def record_config(
    workdir: str,
    cfg: dict[str, Any],
    step: int,
    saved: dict[str, Any] | None = None,
    saved_step: int | None = None,
) -> None:
    """Writes config.json (the config in use from `step` on) and extends the history.

    `saved` is the config stored with the checkpoint the run resumed from. The
    history gets a line whenever the effective config changes.
    """
    if jax.process_index() != 0:
        return
    cfg = _plain(cfg)
    history = read_history(workdir)
    lines = []
    if history:
        last = history[-1]["config"]
    elif saved is not None:  # resumed, no history yet: record what was in effect first
        last = _plain(saved)
        lines.append({"step": None, "saved_step": saved_step, "config": last})
    else:
        last = None
    if last is None or config_changes(last, cfg):
        changes = config_changes(last, cfg) if last is not None else {}
        if changes:
            log(f"config changed from step {step} on: {_show(changes)}")
        lines.append({"step": step, "time": now_iso(), "changes": changes, "config": cfg})
    for line in lines:
        paths.append_line(paths.join(workdir, HISTORY_FILE), json.dumps(line))
    paths.write_text(paths.join(workdir, CONFIG_FILE), json.dumps(cfg, indent=2))


def record_start(workdir: str, step: int, command: dict[str, Any] | None = None) -> None:
    """Appends a line to starts.jsonl: when and from which step the run started, on
    which host, and `command` (`config`, `overrides`, `argv`; None from Python)."""
    if jax.process_index() != 0:
        return
    command = command or {}
    line = {
        "step": step,
        "time": now_iso(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "config": command.get("config"),
        "config_file": command.get("config_file"),
        "overrides": list(command.get("overrides") or []),
        "argv": list(command["argv"]) if command.get("argv") is not None else None,
    }
    paths.append_line(paths.join(workdir, STARTS_FILE), json.dumps(line))


def read_json_lines(path: str) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, in order; a line cut short (or not an object)
    is skipped, a missing or undecodable file reads as none."""
    try:
        text = _read_text(path)
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def read_starts(workdir: str) -> list[dict[str, Any]]:
    """starts.jsonl's lines, oldest first (a line cut short is skipped)."""
    return read_json_lines(paths.join(workdir, STARTS_FILE))
