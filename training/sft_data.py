r"""The data of ``ponder train sft``: TRL rows from a task's reference solutions, the curriculum's problem counts, and
Tree-of-Thoughts value examples (tokenized by hand, so that only the verdict carries a loss).
"""

from __future__ import annotations

import math
import random
from typing import Any, Protocol

from strategies.search import value_query
from training.evaluate_policy import chat_prompt
from training.label import load_rows
from training.tasks import Problem, TaskSpec, get_task


class DataConfig(Protocol):
    """What the data of a run reads from its config (:class:`training.sft.PolicySFTConfig` has these fields)."""

    task: str
    levels: list[int]
    level_weights: list[float] | None
    num_train_problems: int
    reseed_every: int | None
    num_val_problems: int
    seed: int
    bare_question_share: float
    value_examples_per_problem: int
    value_data: str | None


def sft_rows(
    task: TaskSpec, problems: list[Problem], bare_share: float = 0.0, seed: int = 0
) -> list[dict[str, list[dict[str, str]]]]:
    r"""TRL conversational prompt-completion rows: the task's user message, then its reference solution.

    A random ``bare_share`` of the rows (seeded) ask the bare question, without the task's format instruction.

    >>> from training.tasks import get_task
    >>> task = get_task("arith")
    >>> row = sft_rows(task, task.load("train", limit=1, level=1))[0]
    >>> row["prompt"][0]["content"].splitlines()[0]
    'Start with 77. (1) Add 11. What is the result?'
    >>> row["completion"]
    [{'role': 'assistant', 'content': '(1) Add 11: 77 + 11 = 88\n\n\\boxed{88}'}]
    """
    missing = [p.id for p in problems if p.solution is None]
    if missing:
        raise ValueError(f"task {task.name!r} has no reference solution for {len(missing)} problems, e.g. {missing[0]}")
    rng = random.Random(f"bare/{seed}")
    return [
        {
            "prompt": [{"role": "user", "content": p.question if rng.random() < bare_share else task.prompt(p)}],
            "completion": [{"role": "assistant", "content": p.solution}],
        }
        for p in problems
    ]


def level_counts(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` problems by ``weights``, largest remainders first, summing exactly to ``total``.

    >>> level_counts(10, [1, 1, 2])
    [3, 2, 5]
    """
    shares = [total * w / sum(weights) for w in weights]
    counts = [math.floor(s) for s in shares]
    for i in sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def training_problems(config: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """The train problems (levels in ``level_weights`` proportion) and the val problems (equal shares)."""
    task = get_task(config.task)
    weights = config.level_weights or [1.0] * len(config.levels)
    train: list[Problem] = []
    for level, count in zip(config.levels, level_counts(config.num_train_problems, weights), strict=True):
        chunk = config.reseed_every or count
        for k, start in enumerate(range(0, count, chunk)):
            train += task.load("train", limit=min(chunk, count - start), seed=config.seed + k, level=level or None)
    if not config.num_val_problems:
        return train, []
    return train, task.load("val", limit=config.num_val_problems, seed=config.seed, level=config.levels)


def value_rows(task: TaskSpec, tokenizer: Any, problems: list[Problem], per_problem: int, seed: int) -> list[dict]:
    r"""Tokenized rows that teach Tree-of-Thoughts' value prompt (``tree_of_thought`` with ``value_source="self"``).

    The prompt is exactly what the strategy sends, :func:`~strategies.search.value_query`: the chat prompt, a
    partial solution, a blank line and :data:`~strategies.search.VALUE_PROMPT`; the completion, the only tokens with a
    loss, is the task's verdict, `` sure`` or `` impossible``, then EOS. So the policy never learns to write the wrong
    steps it judges.
    """

    rng = random.Random(f"value/{seed}")
    rows = []
    for problem in problems:
        head = chat_prompt(tokenizer, task, problem)
        for _ in range(per_problem):
            partial, sure = task.value_example(problem, rng)
            verdict = (" sure" if sure else " impossible") + tokenizer.eos_token
            rows.append(_tokenized(tokenizer, value_query(head, partial), verdict))
    return rows


def labelled_value_rows(tokenizer: Any, path: str) -> list[dict]:
    r"""Value-prompt rows from stepwise labels (``ponder label``): each distinct step prefix of each solution,
    answered `` sure`` while every label up to it is true, else `` impossible`` (the loss on the verdict only).

    Math-Shepherd's and the Qwen PRM paper's recipe for a verifier, with the policy as the verifier: its own
    labelled samples show it the mistakes it makes, which the solver's :meth:`value_example` only imitates.
    """

    rows, seen = [], set()
    for row in load_rows(path):
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=False
        )
        right = True
        for depth, label in enumerate(row["labels"], start=1):
            right = right and bool(label)
            query = value_query(head, "\n\n".join(row["completions"][:depth]))
            if query not in seen:
                seen.add(query)
                rows.append(_tokenized(tokenizer, query, (" sure" if right else " impossible") + tokenizer.eos_token))
    return rows


def tokenized_rows(tokenizer: Any, rows: list[dict[str, list[dict[str, str]]]]) -> list[dict]:
    """:func:`sft_rows` tokenized as TRL tokenizes conversational prompt-completion rows (loss on the completion)."""
    rendered = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        rendered.append(_tokenized(tokenizer, prompt, full[len(prompt) :]))
    return rendered


def _tokenized(tokenizer: Any, prompt: str, completion: str) -> dict[str, list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + completion_ids, "labels": [-100] * len(prompt_ids) + completion_ids}


def datasets_for(
    config: DataConfig, task: TaskSpec, tokenizer: Any, train: list[Problem], val: list[Problem]
) -> tuple[Any, Any]:
    """The training and validation datasets: TRL's conversational rows, or with value examples, tokenized rows."""
    # deferred import: datasets (heavy) only when rows are built
    from datasets import Dataset

    rows = sft_rows(task, train, config.bare_question_share, config.seed)
    if not config.value_examples_per_problem and not config.value_data:
        return Dataset.from_list(rows), Dataset.from_list(sft_rows(task, val)) if val else None
    tokenized = tokenized_rows(tokenizer, rows)
    tokenized += value_rows(task, tokenizer, train, config.value_examples_per_problem, config.seed)
    if config.value_data:
        tokenized += labelled_value_rows(tokenizer, config.value_data)
    random.Random(f"shuffle/{config.seed}").shuffle(tokenized)
    val_rows = Dataset.from_list(tokenized_rows(tokenizer, sft_rows(task, val))) if val else None
    return Dataset.from_list(tokenized), val_rows
