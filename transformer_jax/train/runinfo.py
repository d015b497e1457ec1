"""A run's summary from its workdir: task, model size, steps, checkpoints, best metric.

`run_info(workdir)` reads only small files and checkpoint metadata (never the arrays),
so it is cheap on a running or finished run alike; `format_run_info` prints it and
`format_run_table` compares several runs in one table (`tjax info`).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from etils import epath

from transformer_jax.train import paths
from transformer_jax.train.paths import WorkdirError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
STARTS_FILE = "starts.jsonl"
LOCK_FILE = ".lock"
# Eval metrics that fall as the model improves; every other one rises.
LOWER_IS_BETTER = ("loss", "nll", "perplexity")
TRAIN = "train"


# -- reading a workdir ---------------------------------------------------------------------


def check_run(workdir: str | os.PathLike, need: str | None = None) -> str:
    """The workdir's resolved path; a one-line WorkdirError unless it looks like a run.

    `need` names a file the caller cannot do without (e.g. metrics.jsonl).
    """
    path = paths.resolve(os.fspath(workdir))
    p = epath.Path(path)
    if not p.exists():
        raise WorkdirError(f"workdir {path} does not exist")
    if not p.is_dir():
        raise WorkdirError(f"workdir {path} is a file, not a folder")
    markers = (CONFIG_FILE, METRICS_FILE, "checkpoints")
    if not any((p / name).exists() for name in markers):
        raise WorkdirError(
            f"{path} is not a run's workdir (no {', '.join(markers[:-1])} or {markers[-1]}); "
            "give the --workdir of a `tjax train` run"
        )
    if need is not None and not (p / need).exists():
        raise WorkdirError(f"no {need} in workdir {path}: the run has logged nothing yet")
    return path


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of `<workdir>/metrics.jsonl` (each `{"step": N, key: value, ...}`).

    Lines that do not parse (a line cut short by a run killed mid-write) are
    skipped; a file without one readable row is a one-line WorkdirError.
    """
    path = paths.join(check_run(workdir, METRICS_FILE), METRICS_FILE)
    try:
        text = epath.Path(path).read_bytes().decode("utf-8", errors="replace")
    except IsADirectoryError:
        raise WorkdirError(f"{path} is a folder, not a metrics file") from None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    if not rows:
        raise WorkdirError(f"{path} holds no metrics (empty or unreadable)")
    return rows


def series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (steps, values), in step order; a later row for the same step wins
    (a resumed run logs the steps after its checkpoint again)."""
    by_key: dict[str, dict[int, float]] = {}
    for row in rows:
        step = row["step"]
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            by_key.setdefault(key, {})[step] = float(value)
    out = {}
    for key, points in by_key.items():
        steps = sorted(points)
        out[key] = (steps, [points[s] for s in steps])
    return out


def eval_splits(keys) -> list[str]:
    """The prefixes of the evaluation metrics (`validation` in `validation/bleu`), in order."""
    seen: list[str] = []
    for key in keys:
        prefix, sep, _ = key.partition("/")
        if sep and prefix != TRAIN and prefix not in seen:
            seen.append(prefix)
    return seen


def short_labels(workdirs: list[str]) -> list[str]:
    """The shortest path tails that tell the runs apart (`run`, or `a/run` and `b/run`)."""
    parts = [w.rstrip("/").split("/") for w in workdirs]
    labels = [p[-1] for p in parts]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({i + 1})" for i, label in enumerate(labels)]


def _read_json(path: str) -> Any:
    try:
        return json.loads(epath.Path(path).read_text())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None


def _read_lines(path: str) -> list[dict[str, Any]]:
    from transformer_jax.train.workdir import read_json_lines

    return read_json_lines(path)


def _step_folders(folder: str) -> list[int]:
    """Steps saved in an Orbax folder: its all-digit subfolders (a save in progress
    or cut short has a temporary name and is not counted)."""
    p = epath.Path(folder)
    if not p.is_dir():
        return []
    return sorted(int(c.name) for c in p.iterdir() if c.name.isdigit() and c.is_dir())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _override(key: str, value: Any) -> str:
    """`key=value` as `--config.key=value` takes it."""
    if isinstance(value, (list, tuple)):
        return f"{key}={tuple(value)!r}"
    return f"{key}={value}"


# -- the summary ---------------------------------------------------------------------------


def closest_shipped_config(cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """(name, overrides): the shipped config of the run's task that differs from the
    run's config in the fewest keys, and those keys as `key=value`: for a run whose
    command line was not recorded (no starts.jsonl), started from a shipped config,
    they are its name and its overrides (minus any that set a default)."""
    from transformer_jax.config import load_config, shipped_configs

    task = cfg.get("task", "translation")
    mine = _flatten(json.loads(json.dumps(cfg)))
    best = None
    for name in shipped_configs():
        try:
            shipped = load_config(name).to_dict()
        except Exception:  # a shipped config this install cannot load: not a candidate
            continue
        if shipped.get("task", "translation") != task:
            continue
        theirs = _flatten(json.loads(json.dumps(shipped)))
        diff = [_override(k, v) for k, v in mine.items() if k in theirs and theirs[k] != v]
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    return best


def primary_metric(cfg: dict[str, Any] | None, keys) -> str | None:
    """The eval metric that ranks checkpoints: the task's first evaluator's, else the
    first eval metric that is not a loss, else the eval loss."""
    splits = eval_splits(keys)
    split = (cfg or {}).get("data", {}).get("eval_split")
    split = split if split in splits else (splits[0] if splits else None)
    if split is None:
        return None
    names = []
    if cfg:
        try:
            import ml_collections

            from transformer_jax.config import make_task

            names = [e.name for e in make_task(ml_collections.ConfigDict(cfg)).evaluators()]
        except Exception:  # a config this install cannot build: fall back on the keys
            names = []
    for name in names:
        if f"{split}/{name}" in keys:
            return f"{split}/{name}"
    metrics = [k for k in keys if k.startswith(f"{split}/")]
    for key in metrics:
        if key.partition("/")[2] not in LOWER_IS_BETTER:
            return key
    return f"{split}/loss" if f"{split}/loss" in keys else None


def higher_is_better(key: str) -> bool:
    return key.partition("/")[2] not in LOWER_IS_BETTER


def _parameters(workdir: str, step: int) -> dict[str, Any]:
    """Parameter count and bytes from a checkpoint's array metadata (no array is read)."""
    import numpy as np

    from transformer_jax.train.checkpoint import Checkpointer, checkpoint_dir

    ckpt = Checkpointer(checkpoint_dir(workdir), async_save=False, read_only=True)
    try:
        meta = ckpt._state_metadata(step)
    finally:
        ckpt.close()
    count = nbytes = 0
    for path, (shape, dtype) in meta.items():
        if path.split("/")[0] != "params":
            continue
        n = math.prod(shape)
        count += n
        nbytes += n * (np.dtype(dtype).itemsize if dtype is not None else 4)
    return {"count": count, "bytes": nbytes, "step": step}


def _tokenizer(workdir: str, cfg: dict[str, Any] | None, step: int | None) -> dict[str, Any]:
    """Where the run's tokenizer comes from and where it is kept."""
    out: dict[str, Any] = {}
    path = ((cfg or {}).get("tokenizer") or {}).get("path") or ""
    if cfg is None:
        out["source"] = "? (no config.json)"
    else:
        out["source"] = path if path else "trained by the run on its training split"
    if step is not None:
        item = paths.join(workdir, "checkpoints", str(step), "tokenizer")
        out["stored_in"] = item
        blob = _read_json(paths.join(item, "metadata"))
        if isinstance(blob, dict) and isinstance(blob.get("processors"), dict):
            out["kinds"] = {name: _kind(p) for name, p in blob["processors"].items()}
    return out


def _kind(processor: Any) -> str | None:
    if not isinstance(processor, dict):
        return None
    if processor.get("same_as"):
        return f"same as {processor['same_as']}"
    return processor.get("kind")


def _lock_holder(workdir: str) -> dict[str, Any] | None:
    """The run holding the workdir now (fresh heartbeat), if any."""
    from transformer_jax.train.workdir import STALE_S

    holder = _read_json(paths.join(workdir, LOCK_FILE))
    if not isinstance(holder, dict):
        return None
    try:
        age = time.time() - float(holder["heartbeat"])
    except (KeyError, TypeError, ValueError):
        return None
    if age >= STALE_S:
        return None
    return {k: holder.get(k) for k in ("host", "pid", "started")}


def run_info(workdir: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready summary of one run (see the module docstring)."""
    path = check_run(workdir)
    cfg = _read_json(paths.join(path, CONFIG_FILE))
    cfg = cfg if isinstance(cfg, dict) else None
    history = _read_lines(paths.join(path, HISTORY_FILE))
    try:
        rows = read_metrics(path)
    except WorkdirError:  # no metrics yet (or an imported model): the rest still holds
        rows = []
    curves = series(rows)
    checkpoints = _step_folders(paths.join(path, "checkpoints"))
    latest = checkpoints[-1] if checkpoints else None

    info: dict[str, Any] = {"workdir": path}
    info["task"] = cfg.get("task", "translation") if cfg is not None else None
    info["running"] = _lock_holder(path)
    info["num_steps"] = (cfg.get("train") or {}).get("num_steps") if cfg is not None else None
    # The newest line's step: after a resume from an older checkpoint, where the run is now.
    info["last_logged_step"] = rows[-1]["step"] if rows else None
    info["latest_checkpoint"] = latest
    info["checkpoints"] = checkpoints
    info["averaged_checkpoints"] = _step_folders(paths.join(path, "checkpoints_averaged"))
    damaged = epath.Path(paths.join(path, "damaged_checkpoints"))
    info["damaged_checkpoints"] = (
        sorted(c.name for c in damaged.iterdir()) if damaged.is_dir() else []
    )
    info["parameters"] = None
    if latest is not None:
        try:
            info["parameters"] = _parameters(path, latest)
        except Exception as e:  # damaged metadata: said, not fatal to the summary
            info["parameters"] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}

    key = primary_metric(cfg, curves)
    info["best"] = None
    info["last_eval"] = None
    if key is not None:
        steps, values = curves[key]
        finite = [(v, s) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
        if finite:
            pick = max if higher_is_better(key) else min
            value = pick(v for v, _ in finite)
            step = next(s for v, s in finite if v == value)  # the first step to reach it
            info["best"] = {"metric": key, "value": value, "step": step}
        split = key.partition("/")[0]
        last_step = steps[-1]
        info["last_eval"] = {
            "step": last_step,
            **{
                k: v[1][v[0].index(last_step)]
                for k, v in curves.items()
                if k.startswith(f"{split}/") and last_step in v[0]
            },
        }
    if "train/loss" in curves:
        steps, values = curves["train/loss"]
        info["last_train_loss"] = {"step": steps[-1], "value": values[-1]}
    else:
        info["last_train_loss"] = None

    info["tokenizer"] = _tokenizer(path, cfg, latest)
    started = history[0] if history else {}
    # Each start as recorded by `tjax train` (starts.jsonl; older runs have none).
    starts = _read_lines(paths.join(path, STARTS_FILE))
    commands = [s for s in starts if s.get("config") is not None or s.get("argv")]
    info["config"] = {
        "file": paths.join(path, CONFIG_FILE) if cfg is not None else None,
        "started": starts[0].get("time") if starts else started.get("time"),
        # The command of the first start, then of the last (if another).
        "command": _command(commands[0]) if commands else None,
        "last_command": _command(commands[-1]) if len(commands) > 1 else None,
        "starts": len(starts),
        "closest_shipped": None,
        "overrides": [],
        # Each later change of the effective config (a resume with other settings).
        "changes": [
            {"step": h.get("step"), "time": h.get("time"), "changes": h.get("changes", {})}
            for h in history[1:]
            if h.get("changes")
        ],
    }
    if commands:  # recorded: no need to infer it
        info["config"]["overrides"] = list(commands[0].get("overrides") or [])
    elif cfg:
        closest = closest_shipped_config(cfg)
        if closest is not None:
            info["config"]["closest_shipped"], info["config"]["overrides"] = closest
    return info


def _command(start: dict[str, Any]) -> dict[str, Any]:
    """A starts.jsonl line's command: config, overrides, argv, and the step it began at."""
    return {k: start.get(k) for k in ("config", "overrides", "argv", "step", "time")}


def command_line(command: dict[str, Any]) -> str:
    """The command as typed (its argv), else rebuilt from its config and overrides."""
    import shlex

    if command.get("argv"):
        return shlex.join(command["argv"])
    words = ["tjax", "train", "--config", str(command.get("config"))]
    words += [f"--config.{o}" for o in command.get("overrides") or []]
    return shlex.join(words)


# -- printing ------------------------------------------------------------------------------


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _steps(info: dict[str, Any]) -> str:
    done = info.get("last_logged_step")
    total = info.get("num_steps")
    text = "?" if done is None else str(done)
    if total is not None:
        text += f"/{total}"
        if done is not None and done >= total:
            text += " (finished)"
    return text


def format_run_info(info: dict[str, Any]) -> str:
    """`run_info`'s summary as text, one fact per line."""
    lines = [f"workdir:      {info['workdir']}"]
    lines.append(f"task:         {info.get('task') or '? (no config.json)'}")
    running = info.get("running")
    if running:
        lines.append(
            f"running:      pid {running.get('pid')} on {running.get('host')} "
            f"since {running.get('started')}"
        )
    params = info.get("parameters")
    if params is None:
        lines.append("parameters:   ? (no checkpoint yet)")
    elif "error" in params:
        lines.append(f"parameters:   ? ({params['error']})")
    else:
        lines.append(
            f"parameters:   {params['count']:,} ({_count(params['count'])}, "
            f"{params['bytes'] / 2**20:.1f} MiB; checkpoint step {params['step']})"
        )
    lines.append(f"steps:        {_steps(info)} logged")
    ckpts = info.get("checkpoints") or []
    latest = info.get("latest_checkpoint")
    lines.append(
        f"checkpoints:  {', '.join(map(str, ckpts)) if ckpts else 'none'}"
        + (f" (latest {latest})" if latest is not None else "")
    )
    if info.get("averaged_checkpoints"):
        lines.append(f"averaged:     {', '.join(map(str, info['averaged_checkpoints']))}")
    if info.get("damaged_checkpoints"):
        lines.append(f"damaged:      {', '.join(info['damaged_checkpoints'])} (kept aside)")
    if info.get("last_train_loss"):
        t = info["last_train_loss"]
        lines.append(f"train loss:   {_value(t['value'])} at step {t['step']}")
    best = info.get("best")
    if best:
        lines.append(
            f"best:         {best['metric']} {_value(best['value'])} at step {best['step']}"
        )
    last = info.get("last_eval")
    if last:
        shown = ", ".join(
            f"{k.partition('/')[2]} {_value(v)}" for k, v in last.items() if k != "step"
        )
        lines.append(f"last eval:    step {last['step']}: {shown}")
    tok = info.get("tokenizer") or {}
    where = tok.get("stored_in")
    kinds = tok.get("kinds")
    kind = f" ({', '.join(f'{k}: {v}' for k, v in kinds.items())})" if kinds else ""
    lines.append(f"tokenizer:    {tok.get('source', '?')}{kind}")
    if where:
        lines.append(f"              kept in {where}")
    config = info.get("config") or {}
    if config.get("file"):
        lines.append(f"config:       {config['file']}")
    if config.get("started"):
        lines.append(f"started:      {config['started']}")
    if config.get("command"):
        lines.append(f"as:           {command_line(config['command'])}")
        last = config.get("last_command")
        if last:
            lines.append(
                f"last start:   {command_line(last)}  (at step {last.get('step')}; "
                f"{config.get('starts')} starts)"
            )
    elif config.get("closest_shipped"):
        overrides = config.get("overrides") or []
        lines.append(
            f"as:           tjax train --config {config['closest_shipped']}"
            + "".join(f" --config.{o}" for o in overrides)
            + "  (closest shipped config and the keys that differ)"
        )
    for change in config.get("changes") or []:
        shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in change["changes"].items())
        lines.append(f"changed:      from step {change['step']}: {shown}")
    return "\n".join(lines)


def format_run_table(infos: list[dict[str, Any]]) -> str:
    """Several runs side by side: one row each."""
    header = ["workdir", "task", "params", "steps", "checkpoints", "best"]
    rows = [header]
    labels = short_labels([info["workdir"] for info in infos])
    for info, label in zip(infos, labels, strict=True):
        best = info.get("best")
        params = info.get("parameters") or {}
        ckpts = info.get("checkpoints") or []
        rows.append(
            [
                label,
                info.get("task") or "?",
                _count(params.get("count")),
                _steps(info),
                f"{len(ckpts)} (latest {ckpts[-1]})" if ckpts else "0",
                f"{best['metric']} {_value(best['value'])} @{best['step']}" if best else "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
