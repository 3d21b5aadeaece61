"""Reasoning tasks: generators and dataset loaders, prompts, graders and exact step checkers, by name.

>>> from training.tasks import get_task
>>> task = get_task("arith")
>>> problem = task.load("test", limit=1, level=2)[0]
>>> task.grade(problem, problem.solution)
True
"""

from training.tasks import arith, game24, loaders  # noqa: F401  (each registers its tasks)
from training.tasks.base import TASKS, Problem, TaskSpec, UnknownTaskError, first_error, get_task

__all__ = ["TASKS", "Problem", "TaskSpec", "UnknownTaskError", "first_error", "get_task"]
