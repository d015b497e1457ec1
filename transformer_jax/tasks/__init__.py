"""The pipelines this stack trains: one folder per task, found by name.

`cfg.task` is a registered name (below) or an import path "package.module:ClassName",
so a task defined elsewhere (e.g. in a test) plugs in without touching this package.
A task's module is imported only when a run asks for it.
"""

from __future__ import annotations

import importlib

TASKS: dict[str, str] = {
    "translation": "transformer_jax.tasks.translation.task:TranslationTask",
}


def known_tasks() -> list[str]:
    return sorted(TASKS)


def get_task_class(name: str):
    """The Task class of a registered name or of an import path "package.module:ClassName"."""
    from transformer_jax.config import ConfigError
    from transformer_jax.train.task import Task

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
