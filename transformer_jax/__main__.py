"""The command line: `tjax train | eval | translate | average | import-hf`.

Each command parses its arguments and calls one library function, the same
function a notebook cell would call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

EPILOG = "Config overrides: any --config.KEY=VALUE, e.g. --config.train.num_steps=500."


def _usage_error(message: str) -> NoReturn:
    """Like argparse's own errors: one line on stderr, exit status 2."""
    print(f"tjax: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _overrides(extra: list[str]) -> list[str]:
    """--config.a.b=1 / --config.a.b 1 -> ["a.b=1"]; anything else is an error."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            _usage_error(f"unrecognized argument {arg!r}")
        body = arg[len("--config.") :]
        if "=" not in body:
            if i + 1 >= len(extra):
                _usage_error(f"{arg} needs a value")
            body, i = f"{body}={extra[i + 1]}", i + 1
        out.append(body)
        i += 1
    return out


def cmd_train(args, extra) -> int:
    from transformer_jax.config import load_config
    from transformer_jax.train.trainer import train_and_evaluate

    cfg = load_config(args.config, _overrides(extra))
    result = train_and_evaluate(cfg, args.workdir)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, ensure_ascii=False))
    return 0


def cmd_eval(args, extra) -> int:
    from transformer_jax.train.evaluation import evaluate_checkpoint

    out = evaluate_checkpoint(
        args.workdir,
        split=args.split,
        step=args.step,
        averaged=args.averaged,
        overrides=_overrides(extra),
        limit=args.limit,
        loss_batches=args.loss_batches,
    )
    print(json.dumps({k: v for k, v in out.items() if k != "examples"}, ensure_ascii=False))
    return 0


def cmd_translate(args, extra) -> int:
    from transformer_jax.pipelines import TranslationPipeline

    if extra:
        _usage_error(f"unrecognized arguments {extra}")
    kwargs = {}
    if args.beam_size is not None:
        kwargs["beam_size"] = args.beam_size
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    pipe = TranslationPipeline.from_workdir(
        args.workdir, step=args.step, averaged=args.averaged, **kwargs
    )
    if args.text:
        texts = args.text
    else:
        raw = sys.stdin.buffer.read().decode("utf-8", errors="replace")
        # Lines end at "\n" (or "\r\n") only: str.splitlines() would also split at
        # \x0b, \x0c, \x1c-\x1e, \x85, \u2028 and \u2029 inside a line.
        texts = raw.split("\n")
        if texts[-1] == "":
            texts.pop()
        texts = [t[:-1] if t.endswith("\r") else t for t in texts]
    out = pipe.translate(texts)
    for line in out:
        print(line)
    return 0


def cmd_average(args, extra) -> int:
    from transformer_jax.train.evaluation import average_checkpoints

    print(json.dumps(average_checkpoints(args.workdir, args.last)))
    return 0


def cmd_import_hf(args, extra) -> int:
    from transformer_jax.convert.marian import import_marian

    print(json.dumps(import_marian(args.src, args.dst), default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tjax", description="transformer_jax: train, evaluate and serve Transformer models."
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a model", epilog=EPILOG)
    t.add_argument("--config", required=True, help="a config file, e.g. configs/translate_tiny.py")
    t.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics, logs")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser(
        "eval", help="loss and BLEU of a checkpoint on a split (JSON)", epilog=EPILOG
    )
    e.add_argument("--workdir", required=True)
    e.add_argument("--split", default=None, help="default: the config's test split")
    e.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
    e.add_argument("--averaged", action="store_true", help="use `tjax average` output")
    e.add_argument("--limit", type=int, default=0, help="score only the first N examples")
    e.add_argument("--loss-batches", type=int, default=0, help="0 = the whole split")
    e.set_defaults(fn=cmd_eval)

    tr = sub.add_parser(
        "translate",
        help="translate arguments, or stdin lines (batched)",
        description="Prints one line per input line, in order; an empty line gives an empty "
        "line. Inputs longer than the run's data.max_length tokens are truncated to it.",
    )
    tr.add_argument("--workdir", required=True)
    tr.add_argument("text", nargs="*", help="sentences; none = read lines from stdin")
    tr.add_argument("--step", type=int, default=None)
    tr.add_argument("--averaged", action="store_true")
    tr.add_argument("--beam-size", type=int, default=None, help="1 = greedy")
    tr.add_argument("--batch-size", type=int, default=None)
    tr.set_defaults(fn=cmd_translate)

    a = sub.add_parser("average", help="average the last N checkpoints (paper: 5 base, 20 big)")
    a.add_argument("--workdir", required=True)
    a.add_argument("--last", type=int, default=5)
    a.set_defaults(fn=cmd_average)

    h = sub.add_parser("import-hf", help="import a Hugging Face MarianMT folder (safetensors)")
    h.add_argument(
        "--from",
        dest="src",
        required=True,
        help="folder with config.json, model.safetensors, vocab.json, source.spm, target.spm",
    )
    h.add_argument("--to", dest="dst", required=True, help="workdir to create")
    h.set_defaults(fn=cmd_import_hf)
    return p


def quiet_libraries() -> None:
    """Keeps the console to our own lines: Orbax/tfds info and warnings go to absl at ERROR."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "train" and args.command != "eval" and extra:
        parser.error(f"unrecognized arguments: {' '.join(map(repr, extra))}")
    from transformer_jax.errors import USER_ERRORS
    from transformer_jax.train.preemption import Preempted

    try:
        return args.fn(args, extra)
    except Preempted as e:
        print(f"tjax {args.command}: {e}", file=sys.stderr)
        return Preempted.exit_code
    except USER_ERRORS as e:
        if os.environ.get("TJAX_DEBUG"):
            raise
        print(f"tjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
