r"""Step-level preference pairs: the first wrong step of a solution against a right step after the same prefix.

Step-DPO (Lai et al. 2024, "Step-DPO: Step-wise Preference Optimization for Long-chain Reasoning of LLMs") puts the
preference where the error is: the prompt is the question *and the solution's right steps so far*, the rejected
completion is the first wrong step, the chosen one a right step from the same point. Whole-solution DPO instead
pushes down every token of the wrong solution, and after its first error those tokens are mostly right arithmetic
carried on from a wrong value: the loss teaches the policy to unlearn what it does right. The task's exact step
checker (:meth:`TaskSpec.check_steps`) finds the first wrong step; the right step comes from a right solution of
the same problem that shares the prefix (a sampled one, or the reference solution, whose steps are canonical for
``arith``).

A step completion ends as the policy would go on after it: the step delimiter, or EOS after the final step (the
policy ends its turn there). So the pairs are tokenized here, not by TRL, which would append EOS to every step:
each row is ``{"prompt_ids", "chosen_ids", "rejected_ids"}`` over the chat prompt plus the prefix, and the
trainer takes it as it is (:class:`training.dpo.PretokenizedDPOTrainer`).

The wrong solutions that matter most for greedy accuracy are the policy's greedy ones (its confident errors);
sampled ones add the accidents of temperature sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.tasks import Problem, TaskSpec
from training.tasks.base import first_error


def step_pairs(
    task: TaskSpec,
    problem: Problem,
    wrong: Sequence[str],
    right: Sequence[str],
    per_problem: int,
    solver: bool = False,
    min_step: int = 0,
) -> list[dict[str, Any]]:
    r"""Up to ``per_problem`` pairs ``{"prefix", "chosen", "rejected", "last"}`` for one problem, in ``wrong``'s order.

    ``wrong`` and ``right`` are full solutions; ``right`` is tried in order for a step after the same prefix that
    differs from the wrong one (put the reference solution last), then, with ``solver``, the task's own right next
    steps (:meth:`TaskSpec.next_right_steps`), so that an error after a prefix no right solution shares still gets
    a pair. One pair per distinct (prefix, wrong step); only errors at step ``min_step`` or later (0-based).
    ``chosen`` and ``rejected`` are step texts; ``last`` says, per side, whether the step ends its solution.

    >>> from training.tasks import get_task
    >>> task = get_task("arith")
    >>> problem = task.load("train", limit=1, level=2)[0]
    >>> good = task.steps(problem.solution)
    >>> bad = "\n\n".join([good[0], good[1].rsplit(" ", 1)[0] + " 1000", "\\boxed{1000}"])
    >>> [pair] = step_pairs(task, problem, [bad, bad], [problem.solution], per_problem=4)
    >>> pair["prefix"] == [good[0]], pair["chosen"] == good[1], pair["rejected"].endswith("= 1000"), pair["last"]
    (True, True, True, (False, False))
    """
    candidates = [task.steps(text) for text in right]
    pairs: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for text in wrong:
        labels = task.check_steps(problem, text)
        if labels is None:
            raise ValueError(f"task {task.name!r} has no step checker: step pairs need one")
        steps, k = task.steps(text), first_error(labels)
        if k < min_step or (key := (*steps[:k], steps[k])) in seen:
            continue
        same_prefix = (c for c in candidates if c[:k] == steps[:k] and len(c) > k and c[k] != steps[k])
        chosen = next(((c[k], len(c) == k + 1) for c in same_prefix), None)
        if chosen is None and solver:
            chosen = next(((s, last) for s, last in task.next_right_steps(problem, steps[:k]) if s != steps[k]), None)
        if chosen is None:
            continue
        seen.add(key)
        pairs.append(
            {"prefix": steps[:k], "chosen": chosen[0], "rejected": steps[k], "last": (chosen[1], len(steps) == k + 1)}
        )
        if len(pairs) == per_problem:
            break
    return pairs


def tokenize_pair(
    tokenizer: Any, chat_prompt: str, pair: dict[str, Any], delimiter: str, first_token: bool = False
) -> dict[str, list[int]]:
    r"""``{"prompt_ids", "chosen_ids", "rejected_ids"}``: the chat prompt and prefix, then each step and what follows
    it (the delimiter, or EOS after a final step), tokenized as the engine reads the prompt (no added specials).

    ``first_token``: the tokens both steps share move into the prompt and each side keeps only its first differing
    token, so the preference is on the token where the wrong step goes wrong and nothing after it."""
    prefix = "".join(step + delimiter for step in pair["prefix"])

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def completion(step: str, last: bool) -> list[int]:
        return ids(step) + ([tokenizer.eos_token_id] if last else ids(delimiter))

    prompt = ids(chat_prompt + prefix)
    chosen, rejected = completion(pair["chosen"], pair["last"][0]), completion(pair["rejected"], pair["last"][1])
    shared = first_difference(chosen, rejected)
    if first_token and shared < min(len(chosen), len(rejected)):
        prompt, chosen, rejected = prompt + chosen[:shared], chosen[shared : shared + 1], rejected[shared : shared + 1]
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """The first position where ``a`` and ``b`` differ (the shorter length when one starts the other).

    >>> first_difference([1, 2, 3], [1, 2, 4]), first_difference([1, 2], [1, 2, 3])
    (2, 2)
    """
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
