#!/usr/bin/env python3
"""Create a Cloud TPU VM (a single host or a pod slice), train on it, delete it.

    python launch/tpu_pod.py create --name my-tpu --zone us-central2-b \\
        --accelerator-type v4-32 --version tpu-ubuntu2204-base [--spot]
    python launch/tpu_pod.py run --name my-tpu --zone us-central2-b \\
        --config configs/translate_wmt14_base.py --workdir gs://BUCKET/runs/base \\
        -- --config.train.num_steps=100000
    python launch/tpu_pod.py ssh --name my-tpu --zone us-central2-b \\
        --worker all --command 'tail -n 5 ~/tjax-train.log'
    python launch/tpu_pod.py delete --name my-tpu --zone us-central2-b

`run` packs this checkout (without .git, .venv and run outputs) into a tarball,
copies it to every worker, installs it with `jax[tpu]` into a virtualenv and
starts `tjax train` on all workers at once, detached (nohup) and logging to
~/tjax-train.log, so closing the ssh session does not stop training. On TPU
VMs `jax.distributed.initialize()` finds the other workers by itself.

Every subcommand takes --dry-run: print the commands, one per line, instead of
running them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REMOTE_DIR = "~/transformer_jax"
REMOTE_TARBALL = "~/transformer_jax.tar.gz"
REMOTE_VENV = "~/tjax-venv"
REMOTE_LOG = "~/tjax-train.log"
EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    "runs",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
)


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: (launcher arguments, arguments for `tjax train`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM name")
    common.add_argument("--zone", required=True, help="e.g. us-central2-b")
    common.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")

    p = argparse.ArgumentParser(
        prog="launch/tpu_pod.py",
        description="Create a Cloud TPU VM, train on all of its workers, delete it.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("create", parents=[common], help="create the TPU VM")
    c.add_argument("--accelerator-type", default="v4-32", help="e.g. v4-8, v4-32, v5litepod-16")
    c.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM runtime version")
    c.add_argument("--spot", action="store_true", help="a Spot VM (cheaper, can be preempted)")

    r = sub.add_parser(
        "run",
        parents=[common],
        help="copy this checkout to all workers, install, start training",
        epilog="Arguments after `--` go to `tjax train`, e.g. -- --config.train.num_steps=500",
    )
    r.add_argument("--config", required=True, help="config file, relative to the repository")
    r.add_argument("--workdir", required=True, help="shared output directory, e.g. gs://B/run")
    r.add_argument("--python", default="python3.11", help="interpreter on the workers")
    r.add_argument("--jax", default="jax[tpu]", help="pip requirement for JAX on TPU")
    r.add_argument("--skip-install", action="store_true", help="code and venv already there")
    r.add_argument("--log", default=REMOTE_LOG, help="log file on each worker")

    s = sub.add_parser("ssh", parents=[common], help="a shell on a worker, or a command on all")
    s.add_argument("--worker", default="0", help="worker index, or `all`")
    s.add_argument("--command", dest="remote_command", default=None, help="command to run")

    sub.add_parser("delete", parents=[common], help="delete the TPU VM")
    return p


def _gcloud(verb: str, args, *rest: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def local_tarball(name: str) -> str:
    return str(Path(tempfile.gettempdir()) / f"transformer_jax-{name}.tar.gz")


def _remote_path(path: str) -> str:
    """Quote a path for the workers' shell, keeping a leading ~/ expandable."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def install_script(args) -> str:
    """Unpack the code on a worker and install it (with JAX for TPU) into a virtualenv."""
    venv_py = f"{REMOTE_VENV}/bin/python"
    steps = [
        f"mkdir -p {REMOTE_DIR}",
        f"tar -xzf {REMOTE_TARBALL} -C {REMOTE_DIR}",
        f"cd {REMOTE_DIR}",
    ]
    if not args.skip_install:
        py = shlex.quote(args.python)
        steps += [
            f"{{ command -v {py} >/dev/null || {{ sudo apt-get update -qq"
            f" && sudo apt-get install -y -qq {py} {py}-venv; }}; }}",
            f"{{ test -x {venv_py} || {py} -m venv {REMOTE_VENV}; }}",
            f"{venv_py} -m pip install -q --upgrade pip",
            f"{venv_py} -m pip install -q -e . {shlex.quote(args.jax)}",
        ]
    return " && ".join(steps)


def _libtpu_args() -> str:
    """LIBTPU_INIT_ARGS for the workers: this shell's, plus the collective-overlap flags
    of transformer_jax/xla_env.py it does not name (TJAX_XLA_FLAGS=default: none)."""
    sys.path.insert(0, str(REPO))
    try:
        from transformer_jax import xla_env
    finally:
        sys.path.pop(0)
    return xla_env.tuned("tpu")[1]


def train_script(args, extra: list[str]) -> str:
    """Start training detached, so it outlives the ssh session."""
    train = shlex.join(["train", "--config", args.config, "--workdir", args.workdir, *extra])
    log = _remote_path(args.log)
    libtpu = _libtpu_args()
    env = f"LIBTPU_INIT_ARGS={shlex.quote(libtpu)} " if libtpu else ""
    return (
        f"cd {REMOTE_DIR} && {env}setsid nohup {REMOTE_VENV}/bin/tjax {train} > {log} 2>&1"
        " < /dev/null &"
    )


def commands(args, extra: list[str]) -> list[list[str]]:
    if args.command == "create":
        cmd = _gcloud(
            "create",
            args,
            args.name,
            f"--accelerator-type={args.accelerator_type}",
            f"--version={args.version}",
        )
        if args.spot:
            cmd.append("--spot")
        return [cmd]
    if args.command == "delete":
        return [_gcloud("delete", args, args.name, "--quiet")]
    if args.command == "ssh":
        cmd = _gcloud("ssh", args, args.name, f"--worker={args.worker}")
        if args.remote_command is not None:
            cmd.append(f"--command={args.remote_command}")
        return [cmd]
    if args.command == "run":
        tarball = local_tarball(args.name)
        pack = ["tar", "-czf", tarball, *(f"--exclude={e}" for e in EXCLUDES), "-C", str(REPO), "."]
        copy = _gcloud("scp", args, tarball, f"{args.name}:{REMOTE_TARBALL}", "--worker=all")
        install = _gcloud(
            "ssh", args, args.name, "--worker=all", f"--command={install_script(args)}"
        )
        start = _gcloud(
            "ssh", args, args.name, "--worker=all", f"--command={train_script(args, extra)}"
        )
        return [pack, copy, install, start]
    raise ValueError(f"unknown command {args.command!r}")


def main(argv: list[str] | None = None) -> int:
    own, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(own)
    if extra and args.command != "run":
        parser.error(f"arguments after `--` only apply to `run`: {shlex.join(extra)}")
    cmds = commands(args, extra)
    if args.dry_run:
        for cmd in cmds:
            print(shlex.join(cmd))
        return 0
    for cmd in cmds:
        print(f"+ {shlex.join(cmd)}", flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"launch/tpu_pod.py: failed with status {rc}: {shlex.join(cmd)}", file=sys.stderr)
            return rc
    if args.command == "run":
        print(
            "training started on all workers; follow it with:\n  "
            + shlex.join(
                [
                    sys.argv[0] if argv is None else "launch/tpu_pod.py",
                    "ssh",
                    "--name",
                    args.name,
                    "--zone",
                    args.zone,
                    "--command",
                    f"tail -f {args.log}",
                ]
            )  # fmt: skip
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
