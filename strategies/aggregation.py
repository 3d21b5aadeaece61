"""Reducing a solution's per-step reward scores to one number.

``last`` follows search-and-learn and OpenR's "prm-last"; ``min`` is Math-Shepherd's choice (Wang et al. 2024);
``prod`` is the product of step correctness probabilities from "Let's Verify Step by Step" (Lightman et al.
2023, App. F.2); ``mean`` is offered for completeness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Aggregation = Literal["last", "min", "prod", "mean"]
AGGREGATIONS: tuple[str, ...] = ("last", "min", "prod", "mean")


def aggregate_scores(scores: Sequence[float], how: Aggregation) -> float:
    """One score for a solution from its step scores; an unscored solution gets 0.

    >>> aggregate_scores([0.9, 0.5, 0.8], "min")
    0.5
    >>> round(aggregate_scores([0.9, 0.5], "prod"), 2)
    0.45
    """
    if not scores:
        return 0.0
    if how == "last":
        return scores[-1]
    if how == "min":
        return min(scores)
    if how == "prod":
        return math.prod(scores)
    if how == "mean":
        return sum(scores) / len(scores)
    raise ValueError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")


def resolve_aggregation(how: Aggregation | None, scorer: object) -> Aggregation:
    """The requested aggregation, else the reward model's own (its ``aggregation`` attribute: ``min`` for the
    likelihood PRM, whose last step only copies the answer), else ``last``.

    >>> class Likelihood:
    ...     aggregation = "min"
    >>> resolve_aggregation(None, Likelihood()), resolve_aggregation("prod", Likelihood()), resolve_aggregation(None, 1)
    ('min', 'prod', 'last')
    """
    return how or getattr(scorer, "aggregation", None) or "last"
