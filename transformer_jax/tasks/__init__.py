"""The pipelines this stack trains: one folder per task, found by name.

`cfg.task` is a registered name (`transformer_jax.train.task.TASKS`) or an import path
"package.module:ClassName". A task's module is imported only when a run asks for it.
"""

from transformer_jax.train.task import TASKS, get_task_class, known_tasks

__all__ = ["TASKS", "get_task_class", "known_tasks"]
