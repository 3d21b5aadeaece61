r"""The data of ``ponder train sft``: TRL rows from a task's reference solutions, the curriculum's problem counts,
Tree-of-Thoughts value examples (tokenized by hand, so that only the verdict carries a loss), and the reasoning
format (``--format reasoning``): the solution's steps inside thinking tags before the boxed answer.

The reasoning format is DeepSeek-R1's, read by vLLM's own ``deepseek_r1`` reasoning parser::

    <think>\n(1) Add 7: 12 + 7 = 19\n\n(2) Multiply by 3: 19 * 3 = 57\n\n</think>\n\n\\boxed{57}

``<think>`` and ``</think>`` are single tokens (:func:`add_think_tokens`), and the model writes ``<think>`` itself
(the chat template's generation prompt is unchanged). Every step, the last included, ends in a blank line, so
``</think>`` comes where the plain format's ``\boxed`` came, the place a policy trained on the plain format has
already learned to tell the last step from the others (after a single newline instead, a first run here never
learned when to stop: greedy, it added steps to one-step problems and left four-step ones at three).

So that thinking length matters, the rows are a seeded mix (:func:`plan_reasoning`): most think through every step
(``full``); ``premature_share`` stop thinking after k of the n steps (1 <= k < n) and box the value step k
reached, a premature, usually wrong answer (``premature``); ``wait_share`` stop at the same place, but write
``Wait`` on its own line where ``</think>`` would be and go on with the remaining steps to the right answer
(``wait``), which is what budget forcing (s1, Muennighoff et al. 2025: ``</think>`` replaced by ``Wait`` below a
minimum) asks of the model. A problem of one step, or whose step k states no equation to read a value from, is
always ``full``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Protocol

from strategies.search import value_query
from training.evaluate_policy import chat_prompt
from training.label import load_rows
from training.tasks import Problem, TaskSpec, get_task
from training.tasks.arith import parse_equation

THINK_START, THINK_END, WAIT = "<think>", "</think>", "Wait"
THINK_TOKENS = (THINK_START, THINK_END)
REASONING_PARSER = "deepseek_r1"  # vLLM's parser for <think>...</think>; config.json's ponder_reasoning_parser
COMPLETION_FORMATS = ("plain", "reasoning")
REASONING_KINDS = ("full", "premature", "wait")


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
    format: str
    premature_share: float
    wait_share: float


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


def add_think_tokens(tokenizer: Any) -> tuple[int, int]:
    """Add ``<think>`` and ``</think>`` to ``tokenizer`` as single tokens, where it lacks them; their ids.

    They are added tokens but not special ones, as in DeepSeek-R1's and Qwen3's tokenizers: decoding with
    ``skip_special_tokens`` (vLLM's default) keeps them in the text, where the reasoning parser looks for them.
    Appended after the vocabulary, they leave every other id as it was (a trained policy's embeddings still fit).

    >>> from server.tiny_models import build_char_tokenizer
    >>> add_think_tokens(build_char_tokenizer())
    (104, 105)
    """
    missing = [token for token in THINK_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
    start, end = tokenizer.convert_tokens_to_ids(list(THINK_TOKENS))
    return start, end


def displaced_characters(problems: list[Problem]) -> dict[str, str]:
    r"""The character each thinking tag takes the place of, from the plain format: ``<think>``, the most frequent
    first character of the solutions; ``</think>``, the ``\`` that starts ``\boxed`` after the last step.

    >>> from training.tasks import get_task
    >>> displaced_characters(get_task("arith").load("train", limit=3, level=2))
    {'<think>': '(', '</think>': '\\'}
    """
    firsts = Counter((p.solution or " ")[0] for p in problems)
    return {THINK_START: firsts.most_common(1)[0][0] if firsts else " ", THINK_END: "\\"}


def split_solution(solution: str) -> tuple[list[str], str]:
    r"""A reference solution's steps and its final answer line (the last blank-line part, with ``\boxed{}``).

    >>> split_solution("(1) Add 3: 4 + 3 = 7\n\n\\boxed{7}")
    (['(1) Add 3: 4 + 3 = 7'], '\\boxed{7}')
    """
    *steps, answer = solution.split("\n\n")
    if "\\boxed{" not in answer or not steps:
        raise ValueError(f"not steps then a boxed answer: {solution!r}")
    return steps, answer


def reasoning_solution(solution: str, kind: str = "full", stop_after: int = 0) -> str:
    r"""A reference solution in the reasoning format, as ``kind`` (see the module docstring) stopping after step
    ``stop_after`` (``premature`` and ``wait``); ValueError where that step states no value to box.

    >>> solution = "(1) Add 3: 4 + 3 = 7\n\n(2) Add 1: 7 + 1 = 8\n\n\\boxed{8}"
    >>> print(reasoning_solution(solution))
    <think>
    (1) Add 3: 4 + 3 = 7
    <BLANKLINE>
    (2) Add 1: 7 + 1 = 8
    <BLANKLINE>
    </think>
    <BLANKLINE>
    \boxed{8}
    >>> reasoning_solution(solution, "premature", 1)
    '<think>\n(1) Add 3: 4 + 3 = 7\n\n</think>\n\n\\boxed{7}'
    >>> reasoning_solution(solution, "wait", 1)
    '<think>\n(1) Add 3: 4 + 3 = 7\n\nWait\n\n(2) Add 1: 7 + 1 = 8\n\n</think>\n\n\\boxed{8}'
    """
    steps, answer = split_solution(solution)
    if kind == "full":
        return f"{THINK_START}\n" + "".join(f"{step}\n\n" for step in steps) + f"{THINK_END}\n\n{answer}"
    if kind not in REASONING_KINDS or not 1 <= stop_after < len(steps):
        raise ValueError(f"kind {kind!r} stopping after step {stop_after} of {len(steps)}")
    head = f"{THINK_START}\n" + "".join(f"{step}\n\n" for step in steps[:stop_after])
    if kind == "wait":
        rest = "".join(f"{step}\n\n" for step in steps[stop_after:])
        return head + f"{WAIT}\n\n{rest}{THINK_END}\n\n{answer}"
    equation = parse_equation(steps[stop_after - 1])
    if equation is None:
        raise ValueError(f"step {stop_after} states no value to box: {steps[stop_after - 1]!r}")
    return head + f"{THINK_END}\n\n\\boxed{{{equation[3]}}}"


def plan_reasoning(
    problems: list[Problem], premature_share: float, wait_share: float, seed: int, salt: str = "train"
) -> list[tuple[str, int]]:
    """Each problem's ``(kind, stop_after)`` in the reasoning mix, seeded: ``premature`` with chance
    ``premature_share``, ``wait`` with ``wait_share``, else ``full`` (stop_after 0); the step to stop after is
    uniform in 1..n-1. A problem that cannot stop early (one step, or no value at the step drawn) is ``full``."""
    rng = random.Random(f"reasoning/{salt}/{seed}")
    plan = []
    for problem in problems:
        steps, _ = split_solution(problem.solution or "")
        draw, stop_after = rng.random(), rng.randint(1, max(len(steps) - 1, 1))
        kind = "premature" if draw < premature_share else "wait" if draw < premature_share + wait_share else "full"
        if len(steps) < 2 or (kind == "premature" and parse_equation(steps[stop_after - 1]) is None):
            kind = "full"
        plan.append((kind, stop_after if kind != "full" else 0))
    return plan


def reasoning_rows(
    task: TaskSpec,
    problems: list[Problem],
    premature_share: float,
    wait_share: float,
    bare_share: float = 0.0,
    seed: int = 0,
    salt: str = "train",
) -> tuple[list[dict[str, list[dict[str, str]]]], dict[str, int]]:
    """:func:`sft_rows` with each completion in the reasoning format of :func:`plan_reasoning`'s mix; the rows
    and how many of each kind."""
    rows = sft_rows(task, problems, bare_share, seed)
    plan = plan_reasoning(problems, premature_share, wait_share, seed, salt)
    for row, problem, (kind, stop_after) in zip(rows, problems, plan, strict=True):
        row["completion"][0]["content"] = reasoning_solution(problem.solution or "", kind, stop_after)
    return rows, {kind: sum(k == kind for k, _ in plan) for kind in REASONING_KINDS}


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

    if config.format == "reasoning":  # no value examples in this format (PolicySFTConfig refuses them)
        rows, _ = reasoning_rows(
            task, train, config.premature_share, config.wait_share, config.bare_question_share, config.seed
        )
        val_rows, _ = reasoning_rows(task, val, config.premature_share, config.wait_share, seed=config.seed, salt="val")
        return Dataset.from_list(rows), Dataset.from_list(val_rows) if val else None
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
