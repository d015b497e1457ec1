"""The Task protocol: what a pipeline plugs into the one trainer.

A task answers: which processors (tokenizers, label maps, ...), which model,
which batches, which loss, how many tokens and FLOPs a batch holds, which
evaluators, which inference pipeline and which CLI verb. The trainer owns
everything else (sharding, the step, checkpoints, logging, evaluation runs)
and never looks inside a batch.

Tasks are found by `cfg.task` through the registry at the end of this module: a
registered name, or an import path "package.module:ClassName" (so a task defined
elsewhere, e.g. in a test, plugs in without touching this package). A task's module
is imported only when a run asks for it, so this layer never imports a task.
"""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np


class InputError(ValueError):
    """Input a user can fix (one line)."""


class Evaluator:
    """One quality metric of a task, computed by decoding or predicting over a split.

    `name` is the metric's key: the trainer writes `<split>/<name>` to metrics.jsonl.
    """

    name: str = ""

    def __call__(
        self, params, config, processors: dict[str, Any], split: str, limit: int | None
    ) -> dict[str, Any]:
        """{name: value, ...more metrics, "examples": [dict, ...] (optional)} over the
        first `limit` examples of `split` (0 = all; None = the run config's default).

        Called within the run's mesh context; every host returns the same result.
        Examples are dicts with "source", "reference" and "hypothesis".
        """
        raise NotImplementedError


class Task:
    """The interface the trainer, evaluation and the CLI rely on.

    Loss metric sums (`loss`'s second value, summed over a step's batches):
    "loss_sum" (the summed loss, whose gradient is taken) and "weight_sum" (the
    count it is divided by) are required; "nll_sum" and "correct_sum" (for
    perplexity and accuracy) are optional; other keys are carried along unread.
    """

    name: str = ""
    # The names `transformer_jax.pipeline(...)` accepts for this task's pipeline (Hugging
    # Face's, e.g. "text-classification"), besides the task's own name.
    pipeline_names: tuple[str, ...] = ()
    base_config_name: str = "a task's base config"  # named in config errors
    # The keys `tjax eval` may change for an existing run ("group." for a whole group;
    # None: the shared ones, `evaluation.EVAL_KEYS`), and keys it replaces with its own
    # options ({key: option}, besides the shared `evaluation.EVAL_OPTIONS`).
    eval_keys: tuple[str, ...] | None = None
    eval_options: dict[str, str] = {}

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg

    # -- config ------------------------------------------------------------------------------

    @classmethod
    def base_config(cls) -> ml_collections.ConfigDict:
        """Every key a run of this task can set, with defaults (`config.base()` and more)."""
        raise NotImplementedError

    @classmethod
    def validate_config(cls, cfg: ml_collections.ConfigDict) -> None:
        """Checks this task's own keys; raises a one-line ConfigError naming the key."""

    # -- data --------------------------------------------------------------------------------

    def check_data(self) -> None:
        """Raises a one-line error when the configured dataset cannot be found."""

    def make_processors(self, workdir: str) -> dict[str, Any]:
        """{name: processor} for a new run (e.g. tokenizers trained on the training split).

        Saved with every checkpoint: each processor's type must be registered with
        `transformer_jax.data.processors.register_processor`.
        """
        raise NotImplementedError

    def adopt_processors(self, processors: dict[str, Any]) -> dict[str, Any]:
        """The processors of a new run that starts from another checkpoint's parameters
        (`train.init_from`, an imported model): the source's, whose embeddings index their
        vocabulary, plus any this task makes itself that the source lacks (e.g. a label
        map); raises a one-line ConfigError when the source's cannot serve this run."""
        return processors

    def train_dataset(self, processors: dict[str, Any], shard_index: int, shard_count: int):
        """This host's shard of the endless training batches (a checkpointable Grain dataset)."""
        raise NotImplementedError

    def eval_dataset(
        self, processors: dict[str, Any], split: str, shard_index: int, shard_count: int
    ):
        """This host's shard of one pass over a split; all-zero rows must carry zero weight."""
        raise NotImplementedError

    # -- model -------------------------------------------------------------------------------

    def check_model_settings(self) -> None:
        """Builds the model from the run config alone (before any checkpoint is read),
        so that a bad setting is a ConfigError rather than a damaged checkpoint."""

    def model_config(self, processors: dict[str, Any]):
        """The typed, frozen model config, from the run config and the processors."""
        raise NotImplementedError

    def model_config_from_saved(self, saved):
        """An imported model's config (architecture from the checkpoint) with the run
        config's training knobs (dropout, dtype, remat, ...)."""
        return saved

    def config_to_json(self, config) -> dict[str, Any]:
        from transformer_jax.nn.config import config_to_json

        return config_to_json(config)

    def config_from_json(self, blob: dict[str, Any]):
        from transformer_jax.nn.config import config_from_json

        return config_from_json(blob)

    def build_model(self, config) -> nn.Module:
        """The Linen model of a model config."""
        raise NotImplementedError

    def example_batch(self, config) -> dict[str, np.ndarray]:
        """One batch of the right structure, dtypes and trailing shapes (one row), for
        shape-only init; evaluation pads with all-zero batches of this structure."""
        raise NotImplementedError

    def init_variables(self, model: nn.Module, rng, batch) -> dict:
        """`model.init` on an example batch: {"params": ...}."""
        raise NotImplementedError

    def loss(self, model, params, batch, rng) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(mean loss, metric sums); pure and jittable (see the class docstring)."""
        raise NotImplementedError

    def batch_counts(self, batch, config) -> tuple[Any, float]:
        """(tokens, model FLOPs) of one training step's batch, for tokens/s and MFU.

        Traced inside the jitted step: `tokens` is a scalar computed from the batch,
        `flops` a Python number from the (static) shapes alone, forward and backward.
        """
        raise NotImplementedError

    # -- evaluation, inference, CLI ----------------------------------------------------------

    def evaluators(self) -> list[Evaluator]:
        """The quality metrics run at each evaluation (besides the eval loss)."""
        return []

    def pipeline(self, loaded, **settings):
        """The user-facing inference pipeline of a loaded checkpoint
        (`transformer_jax.train.restore.Loaded`); `settings` override the run's."""
        raise NotImplementedError

    def attention_view(self, loaded, text: str) -> list:
        """The attention weights of one input under a loaded checkpoint, as a list of
        `transformer_jax.train.attention_maps.AttentionView` (`tjax attention`)."""
        raise InputError(f"task {self.name or type(self).__name__} has no attention view")

    @classmethod
    def add_cli(cls, subparsers) -> None:
        """Adds this task's `tjax` verb(s) (e.g. `translate`) to the CLI's subparsers."""


# -- the registry ------------------------------------------------------------------------

TASKS: dict[str, str] = {
    "translation": "transformer_jax.tasks.translation.task:TranslationTask",
    "classification": "transformer_jax.tasks.classification.task:ClassificationTask",
    "masked_lm": "transformer_jax.tasks.classification.task:MaskedLMTask",
    "causal_lm": "transformer_jax.tasks.generation.task:CausalLMTask",
    "multimodal": "transformer_jax.tasks.multimodal.task:MultimodalTask",
}

# `tjax import-hf`: a Hugging Face config.json's model_type -> its importer
# `fn(src_dir, workdir) -> summary`; `tjax export-hf`: a run's task -> its exporter
# `fn(workdir, out_dir) -> summary`. Import paths, like TASKS.
_HF_CLASSIFICATION = "transformer_jax.tasks.classification.hf"
_HF_GENERATION = "transformer_jax.tasks.generation.hf"
HF_IMPORTERS: dict[str, str] = {
    "marian": "transformer_jax.tasks.translation.marian:import_marian",
    "bert": f"{_HF_CLASSIFICATION}:import_hf",
    "roberta": f"{_HF_CLASSIFICATION}:import_hf",
    "xlm-roberta": f"{_HF_CLASSIFICATION}:import_hf",
    "gpt2": f"{_HF_GENERATION}:import_hf",
    "llama": f"{_HF_GENERATION}:import_hf",
    "mistral": f"{_HF_GENERATION}:import_hf",
    "qwen2": f"{_HF_GENERATION}:import_hf",
}
HF_EXPORTERS: dict[str, str] = {
    "classification": f"{_HF_CLASSIFICATION}:export_hf",
    "causal_lm": f"{_HF_GENERATION}:export_hf",
}


def hf_converter(table: dict[str, str], key: str, what: str):
    """The function registered under `key` in HF_IMPORTERS / HF_EXPORTERS; an unknown key
    is a one-line InputError listing the known ones."""
    if key not in table:
        raise InputError(f"{what}={key!r} cannot be converted: supported are {', '.join(table)}")
    module_name, _, attr = table[key].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def known_tasks() -> list[str]:
    return sorted(TASKS)


def get_task_class(name: str) -> type[Task]:
    """The Task class of a registered name or of an import path "package.module:ClassName"."""
    from transformer_jax.config import ConfigError

    listed = ", ".join(known_tasks())
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"config key 'task'={name!r}: choose one of {listed}")
    path = TASKS.get(name, name)
    module_name, sep, attr = path.partition(":")
    if not sep:
        raise ConfigError(
            f"config key 'task'={name!r}: choose one of {listed}, "
            "or give an import path package.module:ClassName"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"config key 'task'={name!r}: cannot import {module_name} ({e})"
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"config key 'task'={name!r}: {path} is not a Task class")
    return cls
