"""Final-answer checks: rules that tell a finished solution right from the question alone, with no gold answer.

Tree of Thoughts picks its Game of 24 answer this way: among the b solutions of the last level it takes one whose
equation is valid, uses the four numbers and makes 24 (Yao et al. 2023, "Tree of Thoughts: Deliberate Problem Solving
with Large Language Models"; the authors' note on how Table 2 was scored, princeton-nlp/tree-of-thought-llm#53).
``tree_of_thought`` and ``mcts`` take ``final_check="game24"`` to do the same: the finished solutions that pass the
check are the only candidates when any does; when none does, the choice falls back to all of them.

A check is ``bind(name, question)``: a predicate on a solution's text, or :class:`InvalidRequestError` when the
question is not one the check can read (a client's mistake, answered before any search is run).
"""

from __future__ import annotations

from collections.abc import Callable

from strategies.answers import last_boxed
from strategies.base import InvalidRequestError
from strategies.game24_rules import expression_solves, numbers_in

Check = Callable[[str], bool]


def game24(question: str) -> Check:
    """Game of 24: the last ``\\boxed{...}`` is an expression of exactly the question's four numbers that makes 24."""
    numbers = numbers_in(question)
    if numbers is None or len(numbers) != 4:
        raise InvalidRequestError(
            "final_check 'game24' reads the numbers from a question that says "
            "'Use the numbers a b c d and ...'; this question does not"
        )

    def solves(text: str) -> bool:
        boxed = last_boxed(text)
        return boxed is not None and expression_solves(boxed, numbers)

    return solves


CHECKS: dict[str, Callable[[str], Check]] = {"game24": game24}


def validate(name: str | None) -> None:
    """ValueError (a 400 from the server) for an unknown check name; None means no check."""
    if name is not None and name not in CHECKS:
        raise ValueError(f"final_check must be one of {', '.join(sorted(CHECKS))} (or null), not {name!r}")


def bind(name: str | None, question: str) -> Check | None:
    """The named check for this question, or None when ``name`` is None."""
    return None if name is None else CHECKS[name](question)
