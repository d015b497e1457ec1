"""Evaluation: eval loss over a split, the task metric, checkpoint averaging.

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
from transformer_jax.train.metrics import MetricsWriter, log
from transformer_jax.train.tasks import Task, make_task


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
    """Token-weighted averages from per-step sums."""
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
    out["tokens"] = tot.get("weight_sum", 0.0) + tot.get("src_tokens", 0.0)
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
    ds = setup.task.eval_dataset(setup.src_tok, setup.tgt_tok, split, jax.process_index(), hosts)
    fn = jax.jit(functools.partial(eval_step, task=setup.task, model=setup.model))
    rows = max(setup.cfg.data.eval_tokens_per_batch // setup.cfg.data.max_length, 1)
    step = shd.data_parallel_size(setup.mesh) * hosts
    local_rows = -(-rows // step) * step // hosts
    batches = []
    for i, batch in enumerate(ds):
        if max_batches and i >= max_batches:
            break
        batches.append(_pad_rows(batch, local_rows))
    count = len(batches)
    if hosts > 1:
        from jax.experimental import multihost_utils

        count = int(np.max(multihost_utils.process_allgather(np.asarray([count], np.int32))))
    if count > len(batches):
        from transformer_jax.data.pipeline import BATCH_KEYS

        shape = (local_rows, setup.cfg.data.max_length)
        blank = {k: np.zeros(shape, np.int32) for k in BATCH_KEYS}
        batches += [blank] * (count - len(batches))
    metrics = []
    with setup.context():
        for batch in batches:
            metrics.append(fn(params, shd.global_batch(batch, setup.mesh)))
    return summarize(metrics) if metrics else {}


def run_eval(
    setup,  # trainer.Setup or InferenceSetup
    params,
    split: str,
    writer: MetricsWriter | None,
    step: int,
    bleu_limit: int,
    loss_batches: int | None = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    loss_batches = setup.cfg.train.eval_batches if loss_batches is None else loss_batches
    out: dict[str, Any] = {
        f"{split}/{k}": v
        for k, v in evaluate_loss(setup, params, split, loss_batches).items()
        if k != "tokens"
    }
    with setup.context():
        q = setup.task.quality(
            params, setup.model_config, setup.src_tok, setup.tgt_tok, split, bleu_limit
        )
    out[f"{split}/{setup.task.metric_name}"] = q[setup.task.metric_name]
    if writer is not None:
        writer.write(step, out)
    shown = " ".join(f"{k}={v:.4g}" for k, v in out.items())
    log(f"\neval at step {step} ({time.perf_counter() - t0:.1f}s): {shown}")
    for ex in q.get("examples", [])[:2]:
        log(f"  {ex['source']!r} -> {ex['hypothesis']!r} (ref {ex['reference']!r})")
    return dict(out, examples=q.get("examples", []))


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
        from transformer_jax.config import apply_overrides
        from transformer_jax.train.restore import load_for_inference

        loaded = load_for_inference(workdir, step=step, averaged=averaged)
        cfg = apply_overrides(loaded.run_config, overrides)
        self.cfg = cfg
        self.workdir = paths.resolve(workdir)
        self.step = loaded.step
        self.params = loaded.params
        self.task = make_task(cfg)
        self.src_tok, self.tgt_tok = loaded.src_tokenizer, loaded.tgt_tokenizer
        self.model_config = loaded.model_config
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
    """Eval loss and the task metric (BLEU) of one checkpoint on a split; writes JSON."""
    setup = InferenceSetup(workdir, step=step, averaged=averaged, overrides=overrides)
    split = split or setup.cfg.data.test_split
    out = run_eval(
        setup, setup.params, split, None, setup.step, bleu_limit=limit, loss_batches=loss_batches
    )
    out = {"step": setup.step, "split": split, "averaged": averaged, **out}
    name = f"eval_{split}_step{setup.step}{'_averaged' if averaged else ''}.json"
    if jax.process_index() == 0:
        path = paths.join(setup.workdir, name)
        paths.write_text(path, json.dumps(out, indent=2, ensure_ascii=False))
        out["path"] = path
    return out


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
