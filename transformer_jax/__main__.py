"""The command line: `tjax train | eval | average | import-hf | export-hf`, plus each
task's verbs (`translate`, ...), which the tasks add themselves (`Task.add_cli`).

Each command parses its arguments and calls one library function, the same
function a notebook cell would call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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
    from transformer_jax.config import config_file, load_config
    from transformer_jax.train.trainer import train_and_evaluate

    overrides = _overrides(extra)
    cfg = load_config(args.config, overrides)
    _check_workdir(args, write=True, create=True, write_checkpoints=True)
    # How the run was started, printed with the config and kept in <workdir>/starts.jsonl.
    command = {
        "config": args.config,
        "config_file": os.path.abspath(config_file(args.config)),
        "overrides": overrides,
        "argv": ["tjax", *args.argv],
    }
    result = train_and_evaluate(cfg, args.workdir, command=command)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("examples", "files")}, ensure_ascii=False
        )
    )
    return 0


def cmd_eval(args, extra) -> int:
    from transformer_jax.train.evaluation import evaluate_checkpoint

    for option, value in (("--limit", args.limit), ("--loss-batches", args.loss_batches)):
        if value < 0:
            _usage_error(f"{option} must be >= 0 (0 = all), got {value}")
    # Every result is kept in a file named by its settings (printed as "path").
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


def cmd_average(args, extra) -> int:
    from transformer_jax.train.evaluation import average_checkpoints

    _check_workdir(args, write=True)
    print(json.dumps(average_checkpoints(args.workdir, args.last)))
    return 0


def _read_config_json(folder: str, what: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        _usage_error(f"{what} {folder} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            blob = json.load(f)
    except FileNotFoundError:
        _usage_error(f"missing config.json in {folder}")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _usage_error(f"{path} is not valid JSON: {e}")
    if not isinstance(blob, dict):
        _usage_error(f"{path} must hold a JSON object")
    return blob


def cmd_import_hf(args, extra) -> int:
    from transformer_jax.train.task import HF_IMPORTERS, hf_converter

    hf = _read_config_json(args.src, "Hugging Face model directory")
    model_type = hf.get("model_type")
    if model_type is None and "MarianMTModel" in (hf.get("architectures") or []):
        model_type = "marian"  # older Marian configs name only the architecture
    importer = hf_converter(HF_IMPORTERS, model_type, "config.json model_type")
    print(json.dumps(importer(args.src, args.dst), default=str))
    return 0


def cmd_export_hf(args, extra) -> int:
    from transformer_jax.train.task import HF_EXPORTERS, hf_converter

    task = _read_config_json(args.workdir, "workdir").get("task")
    exporter = hf_converter(HF_EXPORTERS, task, "the run's task")
    print(json.dumps(exporter(args.workdir, args.dst), default=str))
    return 0


def cmd_attention(args, extra) -> int:
    from transformer_jax.train.attention_maps import attention_maps
    from transformer_jax.train.paths import check_workdir

    layers = None
    if args.layers is not None:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            _usage_error(f"--layers must be comma-separated layer numbers, got {args.layers!r}")
    check_workdir(args.workdir, write=False)
    for path in attention_maps(
        args.workdir, args.text, out_dir=args.out, step=args.step, layers=layers
    ):
        print(path)
    return 0


def cmd_plot(args, extra) -> int:
    from transformer_jax.train.plots import log_to_tensorboard, plot_runs

    written = plot_runs(args.workdirs, args.out)
    for path in written:
        print(path)
    if args.tensorboard:
        for workdir in args.workdirs:
            log_to_tensorboard(workdir, written[0])
    return 0


def cmd_info(args, extra) -> int:
    from transformer_jax.train.runinfo import format_run_info, format_run_table, run_info

    infos = [run_info(w) for w in args.workdirs]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2, default=str))
    elif len(infos) == 1:
        print(format_run_info(infos[0]))
    else:
        print(format_run_table(infos))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tjax", description="transformer_jax: train, evaluate and serve Transformer models."
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a model", epilog=EPILOG)
    t.add_argument(
        "--config",
        required=True,
        help="a shipped config by name, e.g. translate_tiny, or a config file's path",
    )
    t.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics, logs")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser(
        "eval", help="loss and BLEU of a checkpoint on a split (JSON)", epilog=EPILOG
    )
    e.add_argument("--workdir", required=True)
    e.add_argument("--split", default=None, help="default: the config's test split")
    e.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
    e.add_argument("--averaged", action="store_true", help="use `tjax average` output")
    e.add_argument("--limit", type=int, default=0, help="score only the first N examples (0 = all)")
    e.add_argument("--loss-batches", type=int, default=0, help="0 = the whole split")
    e.set_defaults(fn=cmd_eval)

    from transformer_jax.train.task import get_task_class, known_tasks

    for name in known_tasks():  # each task's own verbs, e.g. `translate`
        get_task_class(name).add_cli(sub)

    a = sub.add_parser("average", help="average the last N checkpoints (paper: 5 base, 20 big)")
    a.add_argument("--workdir", required=True)
    a.add_argument("--last", type=int, default=5)
    a.set_defaults(fn=cmd_average)

    h = sub.add_parser(
        "import-hf",
        help="import a Hugging Face folder (safetensors): MarianMT, BERT, RoBERTa, XLM-R, GPT-2, Llama, Mistral, Qwen2",
    )
    h.add_argument(
        "--from",
        dest="src",
        required=True,
        help="folder with config.json, model.safetensors and the tokenizer files",
    )
    h.add_argument("--to", dest="dst", required=True, help="workdir to create")
    h.set_defaults(fn=cmd_import_hf)

    x = sub.add_parser(
        "export-hf", help="write a run's latest good checkpoint as a Hugging Face folder"
    )
    x.add_argument("--workdir", required=True)
    x.add_argument("--to", dest="dst", required=True, help="new (or empty) folder to write")
    x.set_defaults(fn=cmd_export_hf)

    at = sub.add_parser(
        "attention",
        help="draw a sentence's attention weights: one PNG per layer, a heatmap per head",
        description="Translation runs: encoder, decoder and encoder-decoder attention of the "
        "model's own greedy translation; language models: self-attention over the prompt "
        "and a few generated tokens. Prints the paths of the PNGs written.",
    )
    at.add_argument("--workdir", required=True)
    at.add_argument("text", help="the sentence (or prompt)")
    at.add_argument("--out", default=None, help="default: <workdir>/attention/step<N>")
    at.add_argument("--layers", default=None, help="e.g. 0,3 (default: every layer)")
    at.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
    at.set_defaults(fn=cmd_attention)

    pl = sub.add_parser("plot", help="PNG of runs' loss, eval metrics, learning rate, tokens/s")
    pl.add_argument(
        "--workdir", dest="workdirs", action="append", required=True, help="repeat to compare runs"
    )
    pl.add_argument("--out", default=None, help="folder for the PNG (default: the first workdir)")
    pl.add_argument(
        "--tensorboard", action="store_true", help="also add the picture to each run's TensorBoard"
    )
    pl.set_defaults(fn=cmd_plot)

    i = sub.add_parser("info", help="a run's task, size, steps, checkpoints, best metric")
    i.add_argument(
        "--workdir", dest="workdirs", action="append", required=True, help="repeat for a table"
    )
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_info)
    show_defaults(p)
    return p


# What an option left unset means, where every command means the same.
DEFAULT_TEXTS = {"--step": "the latest checkpoint"}


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Adds "(default: ...)" to the help of every option of every command (the tasks'
    verbs too) whose help does not name its default yet; flags are off by default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                show_defaults(sub)
            continue
        if not action.option_strings or action.required or action.nargs == 0:
            continue  # positionals, required options, flags and --help
        if "default" in (action.help or "").lower():
            continue
        if action.default is None:
            text = DEFAULT_TEXTS.get(action.option_strings[-1])
            if text is None:
                continue  # its help must say it (a test checks every command's)
        else:
            text = "%(default)s"  # argparse expands it (a value may hold a %)
        action.help = f"{action.help} (default: {text})" if action.help else f"(default: {text})"


def _check_workdir(args, **how) -> None:
    from transformer_jax.train.paths import check_workdir

    check_workdir(args.workdir, **how)


def _not_from_orbax(record) -> bool:
    """Orbax logs a failed background save (with tracebacks) before raising it in the
    main thread, where the CLI reports it in one line."""
    return f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_libraries() -> None:
    """Keeps the console to our own lines: Orbax/tfds info and warnings go to absl at ERROR."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    if not os.environ.get("TJAX_DEBUG"):
        logging.getLogger("absl").addFilter(_not_from_orbax)  # once: same object


def show_attention_choices() -> None:
    """Training prints (stderr, host 0) which attention kernel `attention_impl=auto` takes
    for each kind of attention, once each."""
    import logging

    logger = logging.getLogger("transformer_jax.ops.attention")
    if logger.handlers:
        return

    class ToStderr(logging.Handler):  # the stderr of the moment, not of the first call
        def emit(self, record) -> None:
            import jax

            if jax.process_index() == 0:
                print(record.getMessage(), file=sys.stderr, flush=True)

    logger.addHandler(ToStderr())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `tjax` program itself (not main([...]) from Python)
        from transformer_jax.malloc_env import reexec_with_tuned_malloc

        # Before jax is imported: glibc reads its malloc tunables only at process start,
        # so this re-executes the same command once with them (TJAX_MALLOC=default: not).
        try:
            reexec_with_tuned_malloc(("transformer_jax.__main__",), scripts=("tjax",))
        except ValueError as e:
            _usage_error(str(e))
    from transformer_jax.train.preemption import Terminated, TerminateOnSignal

    words = sys.argv[1:] if argv is None else argv
    # Training: a SIGTERM during start-up (config, data, restoring, compiling) exits 75
    # at once; the training loop itself finishes its step and saves first.
    with TerminateOnSignal() if words[:1] == ["train"] else contextlib.nullcontext():
        try:
            return _main(argv)
        except Terminated as e:
            name = signal.Signals(e.args[0]).name if e.args else "a signal"
            print(
                f"tjax train: stopped by {name} during start-up, before the first step; "
                "run the same command again to start (or resume from the last checkpoint)",
                file=sys.stderr,
            )
            return Terminated.exit_code


def _main(argv: list[str] | None) -> int:
    quiet_libraries()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "train":
        show_attention_choices()
    if args.command != "train" and args.command != "eval" and extra:
        parser.error(f"unrecognized arguments: {' '.join(map(repr, extra))}")
    from transformer_jax.errors import user_error_message
    from transformer_jax.train.preemption import Preempted, Terminated, signal_received

    try:
        if args.command == "eval":  # it writes its result into the workdir
            _check_workdir(args, write=True)
        return args.fn(args, extra)
    except Preempted as e:
        print(f"tjax {args.command}: {e}", file=sys.stderr)
        return Preempted.exit_code
    except KeyboardInterrupt:
        print(f"tjax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if signal_received() is not None:  # Terminated, turned into another error on its way
            raise Terminated(signal_received()) from e
        where = getattr(args, "workdir", None) or getattr(args, "dst", None)
        message = None if os.environ.get("TJAX_DEBUG") else user_error_message(e, where)
        if message is None:  # a bug (or TJAX_DEBUG): the whole traceback
            raise
        print(f"tjax {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
