#!/usr/bin/env python3
"""Run N `tjax train` processes on this machine as if they were N hosts.

Every process gets its own slice of fake CPU devices and joins the others
through `transformer_jax.train.distributed.initialize()`, exactly as hosts of
a pod would; use it to try multi-host code paths without a cluster.

    python launch/local.py --num-processes 2 --devices-per-process 4 \\
        --config configs/translate_tiny.py --workdir runs/local2 \\
        -- --config.train.num_steps=50

Output lines are prefixed with ``[host i]``. If any process fails the others are
stopped and the exit status is that process's. ``--dry-run`` prints the
commands (with their environment) instead of running them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: (launcher arguments, arguments for `tjax train`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch/local.py",
        description="Run N `tjax train` processes on this machine as N hosts (CPU devices).",
        epilog="Arguments after `--` go to `tjax train`, e.g. -- --config.train.num_steps=50",
    )
    p.add_argument("--num-processes", "-n", type=int, required=True, help="number of hosts")
    p.add_argument("--config", required=True, help="config file, e.g. configs/translate_tiny.py")
    p.add_argument("--workdir", required=True, help="shared working directory")
    p.add_argument("--devices-per-process", type=int, default=1, help="fake CPU devices per host")
    p.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    p.add_argument("--timeout", type=int, default=None, help="seconds to wait for all hosts")
    p.add_argument("--tjax", default=None, help="the tjax executable (default: found on PATH)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tjax_command(explicit: str | None) -> list[str]:
    if explicit:
        return shlex.split(explicit)
    beside = Path(sys.executable).parent / "tjax"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("tjax")
    if found:
        return [found]
    return [sys.executable, "-m", "transformer_jax"]


def xla_flags(devices: int, existing: str = "") -> str:
    kept = [f for f in existing.split() if not f.startswith(DEVICE_FLAG)]
    return " ".join([*kept, f"{DEVICE_FLAG}={devices}"])


def plan(args, extra: list[str]) -> list[tuple[dict[str, str], list[str]]]:
    """(environment additions, argv) for each host."""
    port = args.port if args.port is not None else free_port()
    argv = [
        *tjax_command(args.tjax),
        "train",
        "--config",
        args.config,
        "--workdir",
        args.workdir,
        *extra,
    ]
    out = []
    for i in range(args.num_processes):
        env = {
            "TJAX_COORDINATOR": f"127.0.0.1:{port}",
            "TJAX_NUM_PROCESSES": str(args.num_processes),
            "TJAX_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": xla_flags(args.devices_per_process, os.environ.get("XLA_FLAGS", "")),
        }
        if args.timeout is not None:
            env["TJAX_INIT_TIMEOUT"] = str(args.timeout)
        out.append((env, list(argv)))
    return out


def shell_line(env: dict[str, str], argv: list[str]) -> str:
    return shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *argv])


class _Printer:
    def __init__(self, stream) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def pump(self, prefix: str, pipe) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self.lock:
                print(f"{prefix} {line}", file=self.stream, flush=True)
        pipe.close()


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_all(commands: list[tuple[dict[str, str], list[str]]], stream=None) -> int:
    """Start every command at once; wait; 0 if all succeed, else the first failure's status."""
    stream = stream if stream is not None else sys.stdout
    printer = _Printer(stream)
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    status = 0
    try:
        for i, (env_add, argv) in enumerate(commands):
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_add}
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append(proc)
            t = threading.Thread(target=printer.pump, args=(f"[host {i}]", proc.stdout))
            t.daemon = True
            t.start()
            pumps.append(t)
        running = set(range(len(procs)))
        while running:
            for i in sorted(running):
                rc = procs[i].poll()
                if rc is None:
                    continue
                running.discard(i)
                if rc != 0 and status == 0:
                    status = rc if rc > 0 else 128 - rc
                    with printer.lock:
                        print(
                            f"[launch] host {i} exited with status {rc}; stopping the others",
                            file=stream, flush=True,
                        )  # fmt: skip
                    _stop(procs)
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(procs)
        status = 130
    finally:
        _stop(procs)
        for t in pumps:
            t.join(timeout=5)
    return status


def main(argv: list[str] | None = None) -> int:
    own, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(own)
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num-processes and --devices-per-process must be >= 1")  # exit status 2
    commands = plan(args, extra)
    if args.dry_run:
        for env, cmd in commands:
            print(shell_line(env, cmd))
        return 0
    return run_all(commands)


if __name__ == "__main__":
    sys.exit(main())
