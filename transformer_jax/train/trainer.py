"""The one trainer: init from shapes, a pure jitted train_step, eval, checkpoints.

    state, metrics = train_step(state, batch)

Every task plugs in through `transformer_jax.train.task.Task`; the trainer
never looks inside a batch or a model config beyond what that protocol gives.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from transformer_jax.config import format_config, make_task
from transformer_jax.data.processors import processors_from_json, processors_to_json
from transformer_jax.train import paths
from transformer_jax.train import sharding as shd
from transformer_jax.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    checkpoint_dir,
    has_train_state,
)
from transformer_jax.train.evaluation import (  # noqa: F401  (re-exported)
    MeshContext,
    average_checkpoints,
    evaluate_checkpoint,
    evaluate_loss,
    run_eval,
    summarize,
)
from transformer_jax.train.metrics import MetricsWriter, Progress, log
from transformer_jax.train.optim import make_optimizer, make_schedule, with_frozen
from transformer_jax.train.preemption import Preempted, StopSignal
from transformer_jax.train.restore import init_source, match_params, restore_latest_good
from transformer_jax.train.task import Task
from transformer_jax.train.workdir import WorkdirLock, check_finished_run, record_start
from transformer_jax.train.workdir import record_config as record_run_config


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


class TrainingError(RuntimeError):
    pass


def _micro_batches(batch, k: int):
    """[B, ...] -> [k, B/k, ...], taking every k-th row so the batch sharding is kept."""

    def split(x):
        B = x.shape[0]
        return jnp.moveaxis(x.reshape((B // k, k) + x.shape[1:]), 1, 0)

    return jax.tree.map(split, batch)


def all_finite(tree) -> jax.Array:
    """Scalar bool: every floating-point value in `tree` is finite (reduced on device).

    Each leaf is first summed in float32: a NaN or an infinity makes its leaf's sum
    non-finite, and a CPU runs that plain sum about 4x faster than reducing `isfinite`
    over each element (a compare per value), which matters because the train step checks
    the whole new state every step. Only when some sum is not finite (a non-finite value,
    or finite values whose sum passes float32's range) does the exact per-element check
    run, so the answer is exact and the common case pays for the sums alone.
    """
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    sums = jnp.stack([jnp.sum(x, dtype=jnp.float32) for x in leaves])

    def exact(leaves):
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))

    return jax.lax.cond(
        jnp.all(jnp.isfinite(sums)), lambda leaves: jnp.asarray(True), exact, leaves
    )


def train_step(
    state: TrainState,
    batch,
    *,
    task: Task,
    model,
    tx,
    base_rng,
    accum_steps: int = 1,
    inject_nonfinite_step: int = -1,
):
    """One optimizer update over `accum_steps` micro-batches. Pure.

    Randomness is fold_in(base_rng, step). Gradients are of the summed token loss
    divided by the total token count, so k accumulated micro-batches give the
    same update as one k-times-larger batch. A non-finite loss, gradient or update
    (new params or optimizer state, e.g. from an overflowing learning rate) leaves
    params and optimizer state unchanged (the step still counts) and is reported
    in metrics["nonfinite"]; the host decides whether to skip on or stop.
    """
    rng = jax.random.fold_in(base_rng, state.step)

    def objective(params, mb, r):
        _, metrics = task.loss(model, params, mb, r)
        return metrics["loss_sum"], metrics

    grad_fn = jax.grad(objective, has_aux=True)
    tokens, _ = task.batch_counts(batch, model.config)
    if accum_steps == 1:
        grads, metrics = grad_fn(state.params, batch, rng)
    else:
        mbs = _micro_batches(batch, accum_steps)

        def body(carry, xs):
            g_acc, m_acc = carry
            mb, i = xs
            g, m = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, m_acc, m)), None

        m_shape = jax.eval_shape(
            lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], mbs), rng)[1]
        )
        init = (
            jax.tree.map(jnp.zeros_like, state.params),
            jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), m_shape),
        )
        (grads, metrics), _ = jax.lax.scan(body, init, (mbs, jnp.arange(accum_steps)))
    scale = 1.0 / jnp.maximum(metrics["weight_sum"], 1.0)
    if inject_nonfinite_step >= 0:  # fault injection for tests and drills
        scale = jnp.where(state.step == inject_nonfinite_step, jnp.nan, scale)
    grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Finite gradients can still give non-finite parameters or moments (an
    # infinite learning rate, an overflowing square): such a step is refused too.
    finite = (
        jnp.isfinite(grad_norm)
        & jnp.isfinite(metrics["loss_sum"] * scale)
        & all_finite((params, opt_state))
    )
    # One branch for the whole state, not a select per leaf: XLA would fuse the AND
    # over every leaf into each leaf's select kernel, a program quadratic in the
    # number of leaves (minutes of compiling for a few hundred leaves).
    new_params, new_opt_state = jax.lax.cond(
        finite,
        lambda: (params, opt_state),
        lambda: (state.params, state.opt_state),
    )
    metrics = dict(
        metrics,
        tokens=tokens,
        grad_norm=jnp.where(finite, grad_norm, 0.0),
        nonfinite=1.0 - finite.astype(jnp.float32),
    )
    new_state = TrainState(step=state.step + 1, params=new_params, opt_state=new_opt_state)
    return new_state, metrics


class Setup:
    """Everything a training or evaluation run builds before its first step."""

    def __init__(
        self,
        cfg: ml_collections.ConfigDict,
        workdir: str,
        *,
        for_training: bool,
        averaged: bool = False,
        step: int | None = None,
    ):
        self.cfg = cfg
        self.workdir = paths.resolve(workdir)
        self.task = make_task(cfg)
        self._abstract = None
        self.arch_from_checkpoint = False
        self.damaged: list[int] = []  # steps found unreadable, newest first
        if for_training:
            self.task.check_data()  # an unknown dataset fails before anything is written
        self.ckpt = Checkpointer(
            checkpoint_dir(self.workdir, averaged),
            keep=cfg.train.keep_checkpoints,
            read_only=not for_training,
        )
        self.mesh = shd.make_mesh(cfg.mesh)
        self.rules = shd.rules_for(cfg.mesh.rules)
        self.restored_state = None
        self.meta = None  # of the step read from this workdir (None: a new run)
        self.step = None
        self.resumed = False  # the step holds this run's own train state
        # Where a new run's parameters came from: (checkpoint folder, step, `Matched`).
        self.init_from: tuple[str, int, Any] | None = None
        # A bad setting is reported as such before any checkpoint is read: only
        # evidence of damage (`DamagedCheckpoint`) ever sets a step aside below.
        self._check_model_settings()
        found = restore_latest_good(
            self.ckpt,
            lambda s: self._load(s, self.ckpt),
            step=step,
            training_workdir=self.workdir if for_training else None,
        )
        self.damaged = found.damaged
        if found.step is not None:
            self.step = found.step
            if self.resumed and cfg.train.get("init_from"):
                log(f"train.init_from is ignored: the run resumes from its step {found.step}")
        elif not for_training:
            raise CheckpointError(f"no checkpoint in {self.ckpt.directory}: train first")
        elif cfg.train.get("init_from"):
            source = init_source(cfg.train.init_from)
            try:
                asked = cfg.train.get("init_from_step", -1)
                restore_latest_good(
                    source,
                    lambda s: self._load(s, source),
                    step=None if asked < 0 else asked,
                )
            finally:
                source.close()
        else:
            log("training the tokenizer on the training split ...")
            self.processors = self.task.make_processors(self.workdir)
            self._build(None)

    def _check_model_settings(self) -> None:
        """Builds the model from the run config alone: a dry run."""
        self.task.check_model_settings()

    def _build(self, saved_model: dict | None) -> None:
        config = self.task.model_config(self.processors)
        if saved_model is not None:
            _check_same_model(saved_model, self.task.config_to_json(config), self.ckpt)
        self._set_model(config)

    def _set_model(self, config) -> None:
        """The model config and everything derived from it."""
        self.model_config = config
        tc = self.cfg.train
        self.tx = with_frozen(
            make_optimizer(self.cfg.optimizer, config.d_model, tc.num_steps),
            tc.get("trainable", ""),
            tc.get("frozen", ""),
        )
        self.model = self.task.build_model(config)
        self.train_model = self.task.build_model(config.replace(deterministic=False))
        self._abstract = None

    def _load(self, step: int, ckpt: Checkpointer) -> None:
        """Reads one step completely (metadata and state); raises if anything is unreadable.

        A step of this run's own (with its train state) is resumed. A step of
        parameters alone (`tjax import-hf` writes one into the workdir), or any step
        of `train.init_from`, starts a new run: see `_start_from`.
        """
        meta = ckpt.restore_meta(step)
        processors = ckpt.decode(step, "tokenizer", processors_from_json, meta["tokenizer"])
        own = ckpt is self.ckpt
        if own and has_train_state(meta):
            self.processors = processors
            self.arch_from_checkpoint = bool(meta["data"].get("architecture_from_checkpoint"))
            if self.arch_from_checkpoint:
                saved = ckpt.decode(step, "model", self.task.config_from_json, meta["model"])
                self._set_model(self.task.model_config_from_saved(saved))
            else:
                self._build(meta["model"])
            _, abstract, _ = self.abstract_state()
            self.restored_state = ckpt.restore_state(step, abstract)
            self.resumed = True
        else:
            self._start_from(ckpt, step, meta, processors)
        if own:
            self.meta = meta

    def _start_from(self, ckpt: Checkpointer, step: int, meta: dict, processors) -> None:
        """A new run's state from the parameters of a step, with a fresh optimizer.

        The step's processors are kept (its embeddings index their vocabulary). The
        architecture is the step's when it came from a checkpoint (an imported model,
        or a run started from one), else the run config's. Parameters are matched by
        path name (`restore.match_params`): the model's others are freshly initialised.
        """
        self.processors = self.task.adopt_processors(processors)
        data = meta.get("data") or {}
        self.arch_from_checkpoint = not has_train_state(meta) or bool(
            data.get("architecture_from_checkpoint")
        )
        if self.arch_from_checkpoint:
            saved = ckpt.decode(step, "model", self.task.config_from_json, meta["model"])
            self._set_model(self.task.model_config_from_saved(saved))
        else:
            self._set_model(self.task.model_config(self.processors))
        saved_params = ckpt.restore_state_on_host(step)["params"]
        init, abstract, shardings = self.abstract_state()
        matched = match_params(
            abstract.params, saved_params, f"checkpoint step {step} in {ckpt.directory}"
        )
        from transformer_jax.train.checkpoint import path_name

        with self.context():
            fresh = None
            if matched.new:
                fresh = jax.jit(lambda r: nn.unbox(init(r)).params, out_shardings=shardings.params)(
                    jax.random.key(self.cfg.seed)
                )
            flat, treedef = jax.tree_util.tree_flatten_with_path(abstract.params)
            fresh_leaves = jax.tree.leaves(fresh) if fresh is not None else [None] * len(flat)
            leaves = [
                jax.device_put(matched.loaded[path_name(p)], a.sharding)
                if path_name(p) in matched.loaded
                else f
                for (p, a), f in zip(flat, fresh_leaves)
            ]
            params = jax.tree_util.tree_unflatten(treedef, leaves)
            opt_state = jax.jit(self.tx.init, out_shardings=shardings.opt_state)(params)
        self.restored_state = TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state
        )
        self.init_from = (ckpt.directory, step, matched)

    def context(self):
        """Mesh + logical rules active while tracing, so activation constraints resolve."""
        return MeshContext(self.mesh, self.rules)

    def abstract_state(self):
        """(init fn, shapes, NamedShardings) of the train state, traced once per model config."""
        if self._abstract is None:
            self._abstract = self._trace_state()
        return self._abstract

    def _trace_state(self):
        batch = self.task.example_batch(self.model_config)

        def init(rng):
            variables = self.task.init_variables(self.model, rng, batch)
            params = variables["params"]
            return TrainState(
                step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params)
            )

        with self.context():
            boxed = jax.eval_shape(init, jax.random.key(self.cfg.seed))
            shardings = shd.logical_shardings(boxed, self.mesh, self.rules)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.unbox(boxed),
            shardings,
        )
        return init, abstract, shardings

    def initial_state(self) -> TrainState:
        if self.restored_state is not None:
            return self.restored_state
        init, abstract, shardings = self.abstract_state()
        with self.context():
            return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(
                jax.random.key(self.cfg.seed)
            )

    def save(
        self, state: TrainState, data_state: str, force: bool = False, extra_data=None
    ) -> None:
        self.ckpt.save(
            int(jax.device_get(state.step)),
            state=state,
            data=dict(
                _data_meta(data_state),
                architecture_from_checkpoint=self.arch_from_checkpoint,
                **(extra_data or {}),
            ),
            config=self.cfg.to_dict(),
            model=self.task.config_to_json(self.model_config),
            tokenizer=processors_to_json(self.processors),
            force=force,
        )


def _check_same_model(saved: dict, current: dict, ckpt: Checkpointer) -> None:
    shape_keys = (
        "vocab_size",
        "d_model",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "d_ff",
        "num_encoder_layers",
        "num_decoder_layers",
        "share_embeddings",
        "tie_output",
    )
    diff = [
        f"{k}: checkpoint {saved.get(k)} vs config {current.get(k)}"
        for k in shape_keys
        if saved.get(k) != current.get(k)
    ]
    if diff:
        raise CheckpointError(
            f"the checkpoint in {ckpt.directory} is a different model ({'; '.join(diff)}); "
            "use a fresh --workdir or the original config"
        )


def _flops_counter(task: Task, config):
    """batch -> the task's model FLOPs for it, from shapes alone (no device work)."""
    known: dict[Any, float] = {}

    def count(batch) -> float:
        key = tuple((k, v.shape) for k, v in sorted(batch.items()))
        if key not in known:
            found = []

            def counts(b):
                tokens, flops = task.batch_counts(b, config)
                found.append(float(flops))
                return tokens

            jax.eval_shape(
                counts, {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
            )
            known[key] = found[0]
        return known[key]

    return count


def _data_meta(data_state: str) -> dict[str, Any]:
    """Every host reads its own shard, so every host's iterator position is saved."""
    meta = {"iterator": data_state, "process_count": jax.process_count()}
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        raw = np.frombuffer(data_state.encode("utf-8"), np.uint8)
        sizes = multihost_utils.process_allgather(np.asarray([raw.size], np.int32))
        padded = np.zeros(int(np.max(sizes)), np.uint8)
        padded[: raw.size] = raw
        rows = multihost_utils.process_allgather(padded)
        meta["iterators"] = [
            bytes(row[: int(n)]).decode("utf-8")
            for row, n in zip(rows, np.asarray(sizes).reshape(-1))
        ]
    return meta


def _data_state_of_this_process(data: dict[str, Any]) -> str:
    saved = int(data.get("process_count", 1))
    states = data.get("iterators") or [data["iterator"]]
    if saved == jax.process_count() and len(states) == saved:
        return states[jax.process_index()]
    log(
        f"the checkpoint's data position was saved by {saved} process(es), this run has "
        f"{jax.process_count()}: every process resumes at process 0's position of its own "
        "shard, so the batches differ from those of an uninterrupted run"
    )
    return states[0]


def _check_batch_layout(setup: Setup, batch: dict[str, np.ndarray]) -> None:
    rows = next(iter(batch.values())).shape[0] * jax.process_count()
    dp = shd.data_parallel_size(setup.mesh)
    k = setup.cfg.train.grad_accum_steps
    if rows % (dp * k):
        raise shd.MeshError(
            f"global batch of {rows} rows is not divisible by data-parallel size {dp} "
            f"x train.grad_accum_steps {k}; change data.tokens_per_batch "
            f"(= {setup.cfg.data.tokens_per_batch}) or the mesh"
        )


def _starting_point(setup: Setup, start: int) -> str:
    if setup.resumed:
        return f"resuming from step {start}"
    if setup.init_from is not None:
        directory, step, matched = setup.init_from
        return f"starting from imported weights (step {step} of {directory}): {matched.summary()}"
    return "starting from scratch"


@dataclasses.dataclass(frozen=True)
class Hook:
    """`fn(step, state)` after every `every`-th step and after the last one.

    The loop's own work is three hooks (log, checkpoint, evaluate, in that order);
    `train_and_evaluate(..., hooks=[...])` appends more, e.g. a notebook's live plot.
    A hook's `state` is the train state on device: reading it waits for the step.
    """

    name: str
    every: int
    fn: Callable[[int, Any], None]

    def due(self, step: int, last_step: int) -> bool:
        return step == last_step or (self.every > 0 and step % self.every == 0)


def train_and_evaluate(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    hooks: Sequence[Hook] = (),
    command: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains (resuming from the latest good checkpoint in workdir) and returns final metrics.

    Stops cleanly on SIGTERM/SIGINT: finishes the step, saves, raises `Preempted`.
    `hooks` run after the run's own logging, checkpointing and evaluation hooks.
    `command` (what `tjax train` was given: `config`, `overrides`, `argv`) is printed
    with the effective config, its overridden keys marked; every start is recorded
    in `<workdir>/starts.jsonl`, with `command` when given.
    """
    from transformer_jax.train import distributed

    distributed.initialize()  # no-op on one host; TPU/SLURM/TJAX_* env otherwise
    # One run per workdir, held until the run ends (also by an error or a signal).
    with WorkdirLock(workdir):
        if command is not None:
            log(format_config(cfg, command.get("overrides") or (), command.get("config")))
        return _train_and_evaluate(cfg, workdir, hooks, command)


def _train_and_evaluate(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    extra_hooks: Sequence[Hook],
    command: dict[str, Any] | None = None,
) -> dict[str, Any]:
    setup = Setup(cfg, workdir, for_training=True)
    from transformer_jax.data.pipeline import iterator_state_to_json, restore_iterator_state
    from transformer_jax.train import flops as flops_lib

    tc = cfg.train
    state = setup.initial_state()
    start = int(jax.device_get(state.step))
    resumed = setup.resumed  # not a new run started from imported weights
    saved_config = setup.meta["config"] if resumed else None

    def record_config() -> None:
        """config.json and its history, once the config has been checked against the run."""
        record_run_config(setup.workdir, cfg.to_dict(), start, saved_config, setup.step)
        record_start(setup.workdir, start, command)

    if start >= tc.num_steps:
        if resumed:  # nothing to train: a changed config would never be used
            check_finished_run(setup.workdir, saved_config, cfg.to_dict(), start, tc.num_steps)
        record_config()
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f"model: {n_params:,} parameters; mesh {dict(setup.mesh.shape)} "
        f"({jax.process_count()} host(s)); "
        f"{_starting_point(setup, start)}"
    )

    ds = setup.task.train_dataset(setup.processors, jax.process_index(), jax.process_count())
    it = iter(ds)
    if resumed:
        restore_iterator_state(it, _data_state_of_this_process(setup.meta["data"]))

    _, _, state_shardings = setup.abstract_state()
    step_fn = jax.jit(
        functools.partial(
            train_step,
            task=setup.task,
            model=setup.train_model,
            tx=setup.tx,
            base_rng=jax.random.key(cfg.seed),
            accum_steps=tc.grad_accum_steps,
            inject_nonfinite_step=tc.inject_nonfinite_step,
        ),
        in_shardings=(state_shardings, shd.batch_sharding(setup.mesh)),
        out_shardings=(state_shardings, shd.replicated(setup.mesh)),
        donate_argnums=(0,),  # the old state's buffers are reused for the new one
    )
    batch_flops = _flops_counter(setup.task, setup.model_config)
    schedule = make_schedule(cfg.optimizer, setup.model_config.d_model, tc.num_steps)
    peak, peak_source = flops_lib.device_peak_flops()
    on_cpu = jax.devices()[0].platform == "cpu"
    n_chips = jax.process_count() if on_cpu else jax.device_count()
    writer = MetricsWriter(setup.workdir)
    progress = Progress(tc.num_steps, start, enabled=tc.progress)
    pending: list[dict[str, Any]] = []
    step_flops: list[float] = []  # model FLOPs of each pending step's batch
    last: dict[str, Any] = {}
    # Skipped steps so far; the checkpoints keep them, so the count goes on after a resume.
    saved_data = setup.meta["data"] if resumed else {}
    skipped = int(saved_data.get("skipped_steps", 0))
    skipped_at: list[int] = [int(s) for s in saved_data.get("skipped_at", [])]
    step = start
    t_log = time.perf_counter()
    # One reduction on device; the output is replicated so every host can read it.
    state_is_finite = jax.jit(
        lambda s: all_finite((s.params, s.opt_state)), out_shardings=shd.replicated(setup.mesh)
    )
    # The newest checkpoint known to hold a finite state: the restored one, then each save.
    last_good = start if setup.step is not None else None
    if last_good is not None and not bool(state_is_finite(state)):
        setup.ckpt.close()
        writer.close()
        raise TrainingError(
            f"checkpoint step {start} in {setup.ckpt.directory} holds non-finite parameters "
            f"or optimizer state; move {paths.join(setup.ckpt.directory, str(start))} away "
            "to resume from an earlier step"
        )

    def good_checkpoint() -> str:
        if last_good is None:
            return "none (no checkpoint was written yet)"
        return f"step {last_good} in {setup.ckpt.directory}"

    def flush() -> None:
        """Reads the pending steps' metrics; enforces the non-finite policy."""
        nonlocal pending, step_flops, skipped, t_log
        if not pending:
            return
        progress.follow(step, pending)  # the bar advances while the device catches up
        host = jax.device_get(pending)
        bad = [step - len(host) + 1 + i for i, m in enumerate(host) if m["nonfinite"] > 0]
        if bad and tc.on_nonfinite == "stop":
            raise TrainingError(
                f"non-finite loss, gradient or update at step {bad[0]} "
                f"(batch index {bad[0] - 1}); the update was not applied; last good "
                f"checkpoint: {good_checkpoint()}. "
                "Set train.on_nonfinite=skip to skip such steps"
            )
        skipped += len(bad)
        skipped_at.extend(bad)
        good = [m for m in host if m["nonfinite"] == 0] or host[-1:]
        summary = summarize(good)
        elapsed = time.perf_counter() - t_log
        step_time = elapsed / len(host)
        tokens = summary.pop("tokens") / len(good)
        fl = sum(step_flops) / max(len(step_flops), 1)
        summary.update(
            learning_rate=float(schedule(step - 1)),
            skipped_steps=skipped,
            steps_per_second=1.0 / step_time,
            tokens_per_second=tokens / step_time,
            model_tflops_per_step=fl / 1e12,
            mfu=flops_lib.mfu(fl, step_time, n_chips, peak),
        )
        writer.write(step, {f"train/{k}": v for k, v in summary.items()})
        progress.update(step, tokens, {"loss": summary["loss"], "mfu": summary["mfu"]})
        if bad:
            log(f"skipped {len(bad)} step(s) with a non-finite loss, gradient or update: {bad}")
        pending, step_flops, t_log = [], [], time.perf_counter()

    def save() -> None:
        nonlocal last_good
        flush()  # never write a checkpoint before checking the steps it contains
        # train_step refuses non-finite updates; checked again here, so that no
        # checkpoint ever holds a non-finite state whatever the policy.
        if not bool(state_is_finite(state)):
            raise TrainingError(
                f"the train state at step {step} holds non-finite values and was not saved; "
                f"last good checkpoint: {good_checkpoint()}"
            )
        setup.save(
            state,
            iterator_state_to_json(it),
            extra_data=dict(skipped_steps=skipped, skipped_at=skipped_at[-100:]),
        )
        last_good = step

    def evaluate(step: int, state) -> None:
        nonlocal last, t_log
        # Each evaluator's configured default number of examples.
        last = run_eval(setup, state.params, cfg.data.eval_split, writer, step, limit=None)
        progress.reset_clock(step)  # evaluation time is not training time
        t_log = time.perf_counter()

    log_hook = Hook("log", tc.log_every, lambda step, state: flush())
    hooks = [
        Hook("checkpoint", tc.checkpoint_every, lambda step, state: save()),
        Hook("evaluate", tc.eval_every, evaluate),
        *extra_hooks,
    ]

    log(f"MFU against {peak / 1e12:.2f} TFLOP/s per chip ({peak_source}) x {n_chips}")
    try:
        with setup.context(), StopSignal() as stop, progress:
            while step < tc.num_steps:
                local = next(it)
                if step == start:
                    _check_batch_layout(setup, local)
                    record_config()
                    progress.phase("compiling the train step")  # the first call compiles
                batch = shd.global_batch(local, setup.mesh)
                # Dispatch is asynchronous: the host fetches the next batch while
                # the device runs this step; metrics are read only at log time.
                state, metrics = step_fn(state, batch)
                pending.append(metrics)
                step_flops.append(batch_flops(batch))
                step += 1
                progress.tick(step, pending)
                at_log = log_hook.due(step, tc.num_steps)
                if at_log:
                    log_hook.fn(step, state)
                if stop.requested(step, sync=at_log):
                    save()
                    setup.ckpt.wait()
                    log(f"stopped by signal {stop.signum} at step {step}; checkpoint saved")
                    raise Preempted(
                        f"stopped at step {step} (checkpoint saved in {setup.ckpt.directory}); "
                        "run the same command again to resume"
                    )
                for hook in hooks:
                    if hook.due(step, tc.num_steps):
                        hook.fn(step, state)
    finally:
        setup.ckpt.close()  # waits for the async save in flight
        writer.close()
    return dict(last, skipped_steps=skipped)
