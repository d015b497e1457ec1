#!/usr/bin/env python3
"""Submit a multi-node GPU training job to SLURM (wraps launch/slurm_gpu.sbatch).

    python launch/slurm.py submit --nodes 4 --gpus-per-node 8 \\
        --config configs/translate_wmt14_big.py --workdir /shared/runs/big \\
        --partition gpu --time 48:00:00 -- --config.train.num_steps=300000

By default there is one process per GPU (`--ntasks-per-node` = GPUs per node);
`--process-per node` runs one process per node that drives all of that node's
GPUs. The job starts in this repository's directory and inherits the current
environment, so activate the virtualenv first (or pass --tjax PATH).

`--dry-run` prints the sbatch command instead of submitting it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SBATCH_SCRIPT = HERE / "slurm_gpu.sbatch"


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: (launcher arguments, arguments for `tjax train`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _time(value: str) -> str:
    if not re.fullmatch(r"(\d+-)?\d+(:\d{2}){0,2}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a SLURM time such as 24:00:00")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch/slurm.py", description="Submit multi-node GPU training to SLURM."
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "submit",
        help="submit launch/slurm_gpu.sbatch with sbatch",
        epilog="Arguments after `--` go to `tjax train`, e.g. -- --config.train.num_steps=500",
    )
    s.add_argument("--nodes", type=int, required=True, help="number of nodes")
    s.add_argument("--gpus-per-node", type=int, required=True, help="GPUs on each node")
    s.add_argument(
        "--process-per",
        choices=("gpu", "node"),
        default="gpu",
        help="one process per GPU (default) or one per node driving all its GPUs",
    )
    s.add_argument("--config", required=True, help="config file, relative to the repository")
    s.add_argument("--workdir", required=True, help="output directory on a shared filesystem")
    s.add_argument("--partition", default=None)
    s.add_argument("--time", type=_time, default=None, help="wall-clock limit, e.g. 24:00:00")
    s.add_argument("--account", default=None)
    s.add_argument("--job-name", default=None)
    s.add_argument("--cpus-per-task", type=int, default=None)
    s.add_argument("--tjax", default=None, help="tjax executable on the nodes (default: PATH)")
    s.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra sbatch option, repeatable, e.g. --sbatch-arg=--exclusive",
    )
    s.add_argument("--dry-run", action="store_true", help="print the sbatch command only")
    return p


def _display_path(path: Path) -> str:
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def _job_path(value: str) -> str:
    """A path given relative to here, re-expressed for a job that starts in REPO."""
    path = Path(value)
    if path.is_absolute() or "://" in value or Path.cwd().resolve() == REPO:
        return value
    full = (Path.cwd() / path).resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else str(full)


def sbatch_command(args, extra: list[str]) -> list[str]:
    tasks_per_node = args.gpus_per_node if args.process_per == "gpu" else 1
    cmd = [
        "sbatch",
        f"--nodes={args.nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        f"--gpus-per-node={args.gpus_per_node}",
        f"--chdir={REPO}",
    ]
    if args.partition:
        cmd.append(f"--partition={args.partition}")
    if args.time:
        cmd.append(f"--time={args.time}")
    if args.account:
        cmd.append(f"--account={args.account}")
    if args.job_name:
        cmd.append(f"--job-name={args.job_name}")
    if args.cpus_per_task:
        cmd.append(f"--cpus-per-task={args.cpus_per_task}")
    exports = [f"TJAX_PROCESS_PER={args.process_per}"]
    if args.process_per == "node":
        exports.append(f"TJAX_GPUS_PER_NODE={args.gpus_per_node}")
    if args.tjax:
        exports.append(f"TJAX_BIN={args.tjax}")
    cmd.append("--export=" + ",".join(["ALL", *exports]))
    cmd += args.sbatch_arg
    cmd.append(_display_path(SBATCH_SCRIPT))
    cmd += ["--config", _job_path(args.config), "--workdir", _job_path(args.workdir), *extra]
    return cmd


def main(argv: list[str] | None = None) -> int:
    own, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(own)
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus-per-node must be >= 1")
    if args.tjax and "," in args.tjax:
        parser.error("--tjax must not contain a comma (sbatch --export splits on commas)")
    cmd = sbatch_command(args, extra)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    print(f"+ {shlex.join(cmd)}", flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
