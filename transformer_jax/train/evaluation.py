"""Evaluation: eval loss over a split, the task's evaluators, checkpoint averaging.

`evaluate_checkpoint` is what `tjax eval` runs; `run_eval` is also called by the
trainer during training.
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from transformer_jax.train import paths
from transformer_jax.train import sharding as shd
from transformer_jax.train.checkpoint import Checkpointer, CheckpointError, checkpoint_dir
from transformer_jax.train.metrics import MetricsWriter, Progress, log, report
from transformer_jax.train.task import Task


class MeshContext:
    """Mesh + logical axis rules active while tracing, so activation constraints resolve."""

    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._a = jax.set_mesh(self.mesh)
        self._a.__enter__()
        self._b = nn.logical_axis_rules(self.rules)
        self._b.__enter__()
        return self

    def __exit__(self, *exc):
        self._b.__exit__(*exc)
        self._a.__exit__(*exc)


def eval_step(params, batch, *, task: Task, model):
    _, metrics = task.loss(model, params, batch, jax.random.key(0))
    return metrics


def summarize(metric_list: list[dict[str, Any]]) -> dict[str, float]:
    """Token-weighted averages from per-step sums (the `Task.loss` metric-sum keys)."""
    tot: dict[str, float] = {}
    for m in jax.device_get(metric_list):
        for k, v in m.items():
            tot[k] = tot.get(k, 0.0) + float(v)
    w = max(tot.get("weight_sum", 0.0), 1.0)
    out = {
        "loss": tot.get("loss_sum", 0.0) / w,
        "nll": tot.get("nll_sum", 0.0) / w,
        "accuracy": tot.get("correct_sum", 0.0) / w,
    }
    out["perplexity"] = math.exp(min(out["nll"], 50.0))
    if "grad_norm" in tot:
        out["grad_norm"] = tot["grad_norm"] / len(metric_list)
    out["tokens"] = tot.get("tokens", 0.0)  # from Task.batch_counts (training steps)
    return out


def _pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Pads a short (final) eval batch with all-padding rows (weight zero)."""
    n = next(iter(batch.values())).shape[0]
    if n == rows:
        return batch
    return {
        k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)])
        for k, v in batch.items()
    }


def evaluate_loss(setup, params, split: str, max_batches: int) -> dict[str, float]:
    """Token-weighted eval metrics over a split (or its first `max_batches` batches).

    Every host reads its own shard; hosts with fewer batches add all-padding
    batches (weight zero) so that all hosts run the same number of steps.
    """
    hosts = jax.process_count()
    ds = setup.task.eval_dataset(setup.processors, split, jax.process_index(), hosts)
    fn = jax.jit(functools.partial(eval_step, task=setup.task, model=setup.model))
    batches = []
    for i, batch in enumerate(ds):
        if max_batches and i >= max_batches:
            break
        batches.append(batch)
    # Every batch gets the rows of the largest one (of any host), rounded so that the
    # global batch splits evenly over the data-parallel devices.
    rows = max((next(iter(b.values())).shape[0] for b in batches), default=1) * hosts
    count = len(batches)
    if hosts > 1:
        from jax.experimental import multihost_utils

        counts = multihost_utils.process_allgather(np.asarray([count, rows], np.int32))
        count, rows = (int(x) for x in np.max(np.asarray(counts).reshape(-1, 2), axis=0))
    step = shd.data_parallel_size(setup.mesh) * hosts
    local_rows = -(-rows // step) * step // hosts
    batches = [_pad_rows(b, local_rows) for b in batches]
    if count > len(batches):  # all-zero rows: weight zero
        example = setup.task.example_batch(setup.model_config)
        blank = {k: np.zeros((local_rows,) + v.shape[1:], v.dtype) for k, v in example.items()}
        batches += [blank] * (count - len(batches))
    metrics = []
    label = f"evaluating {split} loss"
    report(label, 0, count)
    with setup.context():
        for i, batch in enumerate(batches):
            metrics.append(fn(params, shd.global_batch(batch, setup.mesh)))
            if i:  # waits for the batch before this one only: one stays queued on the device
                jax.block_until_ready(metrics[-2])
                report(label, i, count)
    return summarize(metrics) if metrics else {}


def run_eval(
    setup,  # trainer.Setup or InferenceSetup
    params,
    split: str,
    writer: MetricsWriter | None,
    step: int,
    limit: int | None,
    loss_batches: int | None = None,
) -> dict[str, Any]:
    """Eval loss over `split`, then each of the task's evaluators over its first `limit`
    examples (0 = all, None = the run config's default); writes `<split>/<metric>`."""
    t0 = time.perf_counter()
    loss_batches = setup.cfg.train.eval_batches if loss_batches is None else loss_batches
    out: dict[str, Any] = {
        f"{split}/{k}": v
        for k, v in evaluate_loss(setup, params, split, loss_batches).items()
        if k != "tokens"
    }
    examples: list[dict[str, Any]] = []
    details: dict[str, Any] = {}  # an evaluator's structured results (reports, tables)
    files: dict[str, bytes] = {}  # and files (pictures) for `tjax eval` to write
    for evaluator in setup.task.evaluators():
        with setup.context():
            q = evaluator(params, setup.model_config, setup.processors, split, limit)
        for k, v in q.items():
            if k == "examples":
                examples += v
            elif k == "files":
                files.update(v)
            elif isinstance(v, int | float | np.number):
                out[f"{split}/{k}"] = v
            else:
                details[f"{split}/{k}"] = v
    if writer is not None:
        writer.write(step, out)
        writer.write_images(step, {f"{split}/{name}": data for name, data in files.items()})
    shown = " ".join(f"{k}={v:.4g}" for k, v in out.items())
    log(f"eval at step {step} ({time.perf_counter() - t0:.1f}s): {shown}")
    for ex in examples[:2]:
        log(f"  {ex['source']!r} -> {ex['hypothesis']!r} (ref {ex['reference']!r})")
    return dict(out, **details, examples=examples, files=files)


# What an evaluation of an existing model may change, unless a task lists its own
# (`Task.eval_keys`, e.g. with decode.*); everything else is the run's.
EVAL_KEYS = (
    "mesh.",
    "data.name",
    "data.data_dir",
    "data.eval_tokens_per_batch",
    "model.attention_impl",
    "model.dtype",
    "train.progress",
)
# Run-config keys that `tjax eval` replaces with its own options (and `Task.eval_options`).
EVAL_OPTIONS = {
    "train.eval_batches": "--loss-batches",
    "data.eval_split": "--split",
    "data.test_split": "--split",
}


def eval_config(run_config, overrides=()) -> tuple[Any, dict[str, Any]]:
    """The run config with eval overrides applied, and the overrides that changed a value.

    An override that cannot apply to evaluating an existing model is a `ConfigError`
    naming its key; one that repeats the run's own value changes nothing and is accepted.
    """
    from transformer_jax.config import ConfigError, apply_overrides, task_class
    from transformer_jax.train.workdir import flatten

    task = task_class(run_config)
    accepted = EVAL_KEYS if task.eval_keys is None else task.eval_keys
    options = {**EVAL_OPTIONS, **task.eval_options}
    before = flatten(run_config.to_dict())
    cfg = apply_overrides(run_config, overrides)
    after = flatten(cfg.to_dict())
    applied: dict[str, Any] = {}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if after.get(key) == before.get(key):
            continue
        if key in options:
            raise ConfigError(
                f"config key '{key}' does not apply to eval: use {options[key]} instead"
            )
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in accepted):
            raise ConfigError(
                f"config key '{key}' cannot change for an existing run (it was trained with "
                f"{before.get(key)!r}); eval accepts "
                + ", ".join(k + "*" if k.endswith(".") else k for k in accepted)
            )
        applied[key] = after[key]
    return cfg, applied


class InferenceSetup:
    """What `evaluate_checkpoint` needs, built from a checkpoint alone (also imported ones)."""

    def __init__(
        self,
        workdir: str,
        *,
        step: int | None,
        averaged: bool,
        overrides: list[str] | tuple[str, ...] = (),
    ):
        import jax.numpy as jnp

        from transformer_jax.config import make_task
        from transformer_jax.train.restore import load_for_inference

        loaded = load_for_inference(workdir, step=step, averaged=averaged)
        cfg, self.overrides = eval_config(loaded.run_config, overrides)
        self.cfg = cfg
        self.workdir = paths.resolve(workdir)
        self.step = loaded.step
        self.params = loaded.params
        self.task = make_task(cfg)
        self.processors = loaded.processors
        # The architecture is the checkpoint's; only how it computes may change.
        changes = {}
        if "model.attention_impl" in self.overrides:
            changes["attention_impl"] = cfg.model.attention_impl
        if "model.dtype" in self.overrides:
            changes["dtype"] = jnp.dtype(cfg.model.dtype)
        self.model_config = loaded.model_config.replace(**changes)
        self.model = self.task.build_model(self.model_config)
        self.mesh = shd.make_mesh(cfg.mesh)
        self.rules = shd.rules_for(cfg.mesh.rules)

    def context(self):
        return MeshContext(self.mesh, self.rules)


def evaluate_checkpoint(
    workdir: str,
    *,
    split: str | None = None,
    step: int | None = None,
    averaged: bool = False,
    overrides=(),
    limit: int = 0,
    loss_batches: int = 0,
) -> dict[str, Any]:
    """Eval loss and the task's metrics (e.g. BLEU) of one checkpoint on a split; writes JSON."""
    setup = InferenceSetup(workdir, step=step, averaged=averaged, overrides=overrides)
    split = split or setup.cfg.data.test_split
    with Progress(None, enabled=setup.cfg.train.progress):  # phases: loss n/N, decoding n/N
        out = run_eval(
            setup,
            setup.params,
            split,
            None,
            setup.step,
            limit=limit,
            loss_batches=loss_batches,
        )
    settings = _eval_settings(setup, split, averaged, limit, loss_batches)
    files = out.pop("files", {})
    out = {"step": setup.step, "split": split, "averaged": averaged, "settings": settings, **out}
    if jax.process_index() == 0:
        name = _eval_name(setup.step, split, averaged, limit, loss_batches, setup)
        out["path"] = _write_new(setup.workdir, name, out)
        if files:  # beside the JSON, named after it: <name>.confusion_matrix.png
            stem = out["path"][: -len(".json")]
            out["files"] = []
            for fname, data in files.items():
                out["files"].append(f"{stem}.{fname}")
                paths.write_bytes(out["files"][-1], data)
            paths.write_text(out["path"], json.dumps(out, indent=2, ensure_ascii=False))
    return out


def _eval_settings(setup, split: str, averaged: bool, limit: int, loss_batches: int) -> dict:
    """Everything that decides an evaluation's numbers, as recorded next to them."""
    from transformer_jax.train.workdir import now_iso

    cfg, m = setup.cfg, setup.model_config
    return {
        "split": split,
        "step": setup.step,
        "averaged": averaged,
        "limit": limit,  # examples scored for the task metric; 0 = all
        "loss_batches": loss_batches,  # batches for the loss; 0 = the whole split
        "decode": {
            k: cfg.decode[k]
            for k in ("beam_size", "alpha", "extra_length", "max_decode_len", "batch_size")
            if k in cfg.get("decode", {})
        },
        # The task's own data keys (lengths, batch sizes, formats) decide the numbers too.
        "data": {k: v for k, v in cfg.data.to_dict().items() if k not in ("train_split",)},
        "model": {"attention_impl": m.attention_impl, "dtype": np.dtype(m.dtype).name},
        "mesh": {k: int(v) for k, v in setup.mesh.shape.items()},
        "overrides": setup.overrides,
        "time": now_iso(),
    }


def _eval_name(step, split, averaged, limit, loss_batches, setup) -> str:
    """eval_<split>_step<N>[_averaged][_limit<L>][_lossbatches<B>][_<key>=<value>...]."""
    import hashlib
    import re

    parts = [f"eval_{split}_step{step}"]
    if averaged:
        parts.append("averaged")
    if limit:
        parts.append(f"limit{limit}")
    if loss_batches:
        parts.append(f"lossbatches{loss_batches}")
    extra = [f"{k}={v}" for k, v in sorted(setup.overrides.items()) if k != "train.progress"]
    if extra:
        joined = "_".join(extra)
        if len(joined) > 120:  # the full settings are in the file
            joined = "overrides-" + hashlib.sha1(joined.encode()).hexdigest()[:10]
        parts.append(joined)
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))


def _write_new(workdir: str, name: str, out: dict[str, Any]) -> str:
    """Writes `<name>.json`, or `<name>_2.json`, ...: an earlier result is never replaced."""
    import os

    from etils import epath

    text = json.dumps(out, indent=2, ensure_ascii=False)
    for n in range(1, 10_000):
        path = paths.join(workdir, f"{name}{'' if n == 1 else f'_{n}'}.json")
        if paths.is_remote(path):  # object stores: no exclusive create, check first
            if not epath.Path(path).exists():
                paths.write_text(path, text)
                return path
            continue
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, path)  # atomic; fails if the name is taken, also by a concurrent eval
            return path
        except FileExistsError:
            continue
        except OSError:  # no hard links on this filesystem: create exclusively instead
            try:
                with open(path, "x", encoding="utf-8") as f:
                    f.write(text)
                return path
            except FileExistsError:
                continue
        finally:
            os.unlink(tmp)
    raise CheckpointError(f"too many evaluation files named {name}_*.json in {workdir}")


def average_checkpoints(workdir: str, last: int) -> dict[str, Any]:
    """Averages the parameters of the last N checkpoints (the paper: 5 base, 20 big).

    Writes the result to `<workdir>/checkpoints_averaged/<latest step>`; training
    checkpoints are left untouched.
    """
    from transformer_jax.train.restore import open_checkpoints

    if last < 1:
        raise ValueError(f"--last must be >= 1, got {last}")
    ckpt = open_checkpoints(workdir)
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"no checkpoint in {ckpt.directory}")
    if len(steps) < last:
        raise CheckpointError(
            f"--last {last}: only {len(steps)} checkpoints in {ckpt.directory} ({steps})"
        )
    chosen = steps[-last:]
    total = None
    for s in chosen:
        state = ckpt.restore_state_on_host(s)
        params = jax.tree.map(lambda x: np.asarray(x, np.float64), state["params"])
        total = params if total is None else jax.tree.map(np.add, total, params)
        newest = state
    meta = ckpt.restore_meta(chosen[-1])
    ckpt.close()
    avg = jax.tree.map(
        lambda t, x: (t / len(chosen)).astype(np.asarray(x).dtype), total, newest["params"]
    )
    out = Checkpointer(checkpoint_dir(workdir, averaged=True), keep=3, async_save=False)
    if chosen[-1] in out.all_steps():  # an earlier average of the same step (another --last)
        out.manager.delete(chosen[-1])
    out.save(
        chosen[-1],
        state=dict(newest, params=avg),
        data=meta["data"],
        config=meta["config"],
        model=meta["model"],
        tokenizer=meta["tokenizer"],
        force=True,
    )
    out.close()
    return {"steps": chosen, "directory": out.directory}
