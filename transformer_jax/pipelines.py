"""User-facing inference pipelines, one per task. Outputs follow the Hugging Face shapes.

translator = pipeline("translation", workdir="runs/tiny")
translator(["The cat sleeps on the couch."])
# [{'translation_text': 'El gato duerme en el sofá.'}]
classifier = pipeline("text-classification", workdir="runs/classify")
classifier("Este producto es excelente.")
# [{'label': 'POSITIVE', 'score': 0.98}]
generator = pipeline("text-generation", workdir="runs/lm")
generator("Ana has a red kite.", max_new_tokens=16)
# [{'generated_text': 'Ana has a red kite. She takes her red kite to the park.'}]
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
    runner = make_task(loaded.run_config)
    names = (run_task, runner.name, *runner.pipeline_names)
    if task is not None and task not in names:
        raise ConfigError(
            f"{workdir} holds a {run_task!r} run, whose pipeline is "
            f"{' or '.join(map(repr, runner.pipeline_names or (run_task,)))}, not {task!r}"
        )
    return runner.pipeline(loaded, **settings)
