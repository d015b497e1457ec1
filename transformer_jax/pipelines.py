"""User-facing inference pipelines, one per task. Outputs follow the Hugging Face shapes.

translator = pipeline("translation", workdir="runs/tiny")
translator(["The cat sleeps on the couch."])
# [{'translation_text': 'El gato duerme en el sofá.'}]
"""

from __future__ import annotations

from transformer_jax.train.task import InputError

__all__ = ["InputError", "pipeline"]


def pipeline(
    task: str | None = None,
    *,
    workdir: str,
    step: int | None = None,
    averaged: bool = False,
    **settings,
):
    """The inference pipeline of a training run's latest good checkpoint (or `step`, or
    the `averaged` one); `task` defaults to the run's own and, if given, must match it.
    `settings` override the run's (e.g. beam_size=1)."""
    from transformer_jax.config import ConfigError, make_task
    from transformer_jax.train.restore import load_for_inference

    loaded = load_for_inference(workdir, step=step, averaged=averaged)
    run_task = loaded.run_config.get("task", "translation")
    if task is not None and task != run_task:
        raise ConfigError(f"{workdir} holds a {run_task!r} run, not a {task!r} one")
    return make_task(loaded.run_config).pipeline(loaded, **settings)
