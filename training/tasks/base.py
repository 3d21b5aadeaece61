r"""What every reasoning task provides, and the registry that names them.

A task is one :class:`TaskSpec` subclass in its own module: it loads or generates :class:`Problem` s, renders the
user message a policy sees (:meth:`TaskSpec.prompt`), grades a completion's final answer (:meth:`TaskSpec.grade`,
math-verify equivalence through :mod:`strategies.answers`) and, where the task allows it, labels every step exactly
(:meth:`TaskSpec.check_steps`). Steps are what the reward models score: the completion cut at blank lines by the
same :func:`strategies.sampling.split_steps` the strategies use, so exact labels line up with PRM scores.

Step labels follow Math-Shepherd (Wang et al. 2024): a step is correct when it is right *and* every step before it
is, i.e. when the solution so far can still reach the gold answer. After the first wrong step every label is False,
so the labels compare directly with Monte Carlo ones, and the first False is ProcessBench's first error step.

A task that ships models of its own says so (``default_policy``, ``default_reward_model``, with the strategy
parameters it needs in ``default_params`` and the KV cache in ``kv_cache_gib``), and ``ponder bench accuracy``
uses them unless told otherwise; a task that declares none is run on the server's default models.

Registry in the classic lm-evaluation-harness manner: ``@register`` on the class, a duplicate name fails at import,
an unknown name fails with the list of known ones.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from strategies.answers import equivalent, extract_answer
from strategies.sampling import STEP_DELIMITER, split_steps

BOXED_INSTRUCTION = "Solve step by step, separate steps with a blank line, and put the final answer in \\boxed{}."


@dataclass(frozen=True)
class Problem:
    """One problem with its gold answer; ``solution`` is a reference in the task's step format when one is known."""

    id: str
    question: str
    answer: str  # gold final answer, as a string math-verify can parse
    solution: str | None = None  # steps separated by "\n\n", ending in \boxed{...}
    meta: dict[str, Any] = field(default_factory=dict, hash=False)  # level, source, row, numbers, ...


class TaskSpec:
    """A reasoning task: problems, the prompt, the grader and (optionally) an exact step checker."""

    name: ClassVar[str]
    description: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    levels: ClassVar[tuple[int, ...]] = ()  # empty: the task has no difficulty levels
    needs_data_file: ClassVar[bool] = False  # True: load() refuses to run without data_file
    instruction: ClassVar[str] = BOXED_INSTRUCTION  # appended to the question in the user message
    max_tokens: ClassVar[int] = 512  # a generous completion budget for a solution in the expected format
    step_delimiter: ClassVar[str] = STEP_DELIMITER
    # The models a run on this task uses unless told otherwise: checkpoint folders, relative to the repository root
    # (server.default_models.REPO_ROOT); None: the server's default models (server.default_models).
    default_policy: ClassVar[str | None] = None
    default_reward_model: ClassVar[str | None] = None
    # strategy name -> parameters a run on this task sets unless told otherwise (e.g. the task's final check)
    default_params: ClassVar[Mapping[str, Mapping[str, Any]]] = MappingProxyType({})
    kv_cache_gib: ClassVar[float | None] = None  # the in-process KV cache the task's runs need; None: the default

    def load(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        level: int | Sequence[int] | None = None,
        data_file: str | None = None,
    ) -> list[Problem]:
        """The problems of ``split`` (at most ``limit``), deterministic for a given ``seed``; ValueError if invalid."""
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}")
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        if level is not None and not self.levels:
            raise ValueError(f"task {self.name!r} has no difficulty levels")
        levels = self._levels(level)
        if data_file is None and self.needs_data_file:
            raise ValueError(f"task {self.name!r} needs a data file (a JSONL path)")
        return self._load(split, limit, seed, levels, data_file)

    def _load(
        self, split: str, limit: int | None, seed: int, levels: tuple[int, ...], data_file: str | None
    ) -> list[Problem]:
        raise NotImplementedError

    def _levels(self, level: int | Sequence[int] | None) -> tuple[int, ...]:
        if level is None:
            return self.levels
        chosen = (level,) if isinstance(level, int) else tuple(level)
        unknown = [lv for lv in chosen if lv not in self.levels]
        if unknown or not chosen:
            known = ", ".join(map(str, self.levels))
            raise ValueError(f"task {self.name!r} has no level {unknown or chosen}; levels: {known}")
        return chosen

    def prompt(self, problem: Problem) -> str:
        """The user message for ``problem``: the question, then how to lay out the answer."""
        return f"{problem.question}\n{self.instruction}"

    def steps(self, completion: str) -> list[str]:
        """The completion's steps, cut exactly as the reward-model strategies cut it."""
        return split_steps(completion, self.step_delimiter)

    def error_offsets(self, prompt: str, steps: Sequence[str]) -> list[int] | None:
        """Per step, the offset of its first wrong character (-1: the step is right, 0 after an earlier error).

        Tasks whose steps have one canonical text locate errors to the character, which lets a PRM learn from a
        label at every token (``ponder train prm --dense_labels``); the others return None.
        """
        return None

    def extract(self, completion: str) -> str | None:
        """The final answer the completion states (last \\boxed{}, "the answer is", last number), or None."""
        return extract_answer(completion)

    def grade(self, problem: Problem, completion: str) -> bool:
        """Whether the completion's final answer is equivalent to the gold one."""
        answer = self.extract(completion)
        return answer is not None and equivalent(answer, problem.answer)

    def check_steps(self, problem: Problem, completion: str) -> list[bool] | None:
        """Exact per-step labels (Math-Shepherd semantics, see the module docstring); None: not checkable."""
        return None

    def value_example(self, problem: Problem, rng: random.Random) -> tuple[str, bool]:
        """A partial solution of ``problem`` (steps joined by the delimiter) and whether it can still reach the gold
        answer: what Tree-of-Thoughts' value prompt asks (``ponder train sft --value_examples_per_problem``)."""
        raise ValueError(f"task {self.name!r} has no value examples")

    def solver_paths(self, problem: Problem, count: int, rng: random.Random) -> list[str]:
        """Up to ``count`` partial solutions of ``problem`` drawn by the task's solver, right and wrong steps mixed,
        for exact labels without a policy (``ponder label --source solver``)."""
        raise ValueError(f"task {self.name!r} has no solver paths (--source solver: game24)")

    def next_right_steps(self, problem: Problem, prefix: Sequence[str]) -> list[tuple[str, bool]]:
        """The right steps that can follow the right steps ``prefix``, each with whether it ends the solution, as
        the task's solver writes them (``ponder train dpo --chosen solver``); [] when ``prefix`` is not right."""
        raise ValueError(f"task {self.name!r} has no step solver (--chosen solver: game24)")

    def first_error_step(self, problem: Problem, completion: str) -> int | None:
        """Index of the first wrong step, -1 when every step is right (ProcessBench), None when not checkable."""
        labels = self.check_steps(problem, completion)
        return None if labels is None else first_error(labels)


def first_error(labels: Sequence[bool]) -> int:
    """The index of the first False label, -1 when there is none (ProcessBench's convention).

    >>> first_error([True, False, False])
    1
    >>> first_error([True, True])
    -1
    """
    return next((i for i, ok in enumerate(labels) if not ok), -1)


def prefix_labels(step_ok: Sequence[bool]) -> list[bool]:
    """Math-Shepherd labels from per-step verdicts: everything from the first wrong step on is wrong.

    >>> prefix_labels([True, False, True])
    [True, False, False]
    """
    cut = first_error(step_ok)
    return list(step_ok) if cut < 0 else [True] * cut + [False] * (len(step_ok) - cut)


TASKS: dict[str, TaskSpec] = {}


class UnknownTaskError(KeyError):
    """Raised for a task name nobody registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: type[TaskSpec]) -> type[TaskSpec]:
    """Class decorator: add one instance of ``cls`` to :data:`TASKS` under ``cls.name``."""
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> TaskSpec:
    """The task called ``name``, or :class:`UnknownTaskError` listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None
