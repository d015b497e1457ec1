"""What the tasks' CLI verbs share: reading inputs, loading a run's checkpoint."""

from __future__ import annotations

import sys

from transformer_jax.train.task import InputError


def read_texts(args) -> list[str]:
    """`args.text`, else the lines of stdin (UTF-8; a final newline ends the last line).

    Lines end at "\\n" (or "\\r\\n") only: str.splitlines() would also split at \\x0b,
    \\x0c, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029 inside a line.
    """
    if args.text:
        return list(args.text)
    raw = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    texts = raw.split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    return [t[:-1] if t.endswith("\r") else t for t in texts]


def load_run(args, verb: str, tasks: tuple[str, ...]):
    """The checkpoint `args` name (`--workdir`, `--step`, `--averaged`), of a run of one
    of `tasks`; another task's run is a one-line InputError."""
    from transformer_jax.train.paths import check_workdir
    from transformer_jax.train.restore import load_for_inference

    check_workdir(args.workdir, write=False)
    loaded = load_for_inference(
        args.workdir, step=args.step, averaged=getattr(args, "averaged", False)
    )
    task = loaded.run_config.get("task", "translation")
    if task not in tasks:
        raise InputError(
            f"{args.workdir} holds a {task!r} run; tjax {verb} needs a {' or '.join(tasks)} run"
        )
    return loaded
