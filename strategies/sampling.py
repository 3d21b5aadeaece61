"""Helpers the sampling strategies share: draw N candidates in one engine call, score them in one scorer call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from strategies.aggregation import AGGREGATIONS, Aggregation, aggregate_scores, resolve_aggregation
from strategies.base import (
    Candidate,
    Engine,
    Sample,
    SamplingSpec,
    Scorer,
    StrategyConfig,
    Task,
    per_sample_budget,
    sampling_temperature,
)

DEFAULT_TEMPERATURE = 0.8  # search-and-learn's and the HF blog's sampling temperature for best-of-N / voting
STEP_DELIMITER = "\n\n"  # a reasoning step ends at a blank line (search-and-learn, OpenR, Qwen2.5-Math-PRM)


@dataclass(frozen=True)
class SamplingConfig(StrategyConfig):
    """Parameters of strategies that draw ``num_samples`` full solutions in parallel."""

    budget_param: ClassVar[str | None] = "num_samples"
    budget_doc: ClassVar[str | None] = "N whole solutions drawn together"

    num_samples: int = 8  # N: candidates drawn in one engine request
    step_delimiter: str = STEP_DELIMITER  # how a solution is cut into steps for the reward model

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        if self.max_total_tokens is not None and self.max_total_tokens < self.num_samples:
            raise ValueError("max_total_tokens must allow at least one token per sample")
        if not self.step_delimiter:
            raise ValueError("step_delimiter must not be empty")

    def samples_per_call(self) -> tuple[int, str | None]:
        """N: all of them in one call (the step searches draw at most N per round, too)."""
        return self.num_samples, "num_samples"


@dataclass(frozen=True)
class ScoredConfig(SamplingConfig):
    """Parameters of strategies that rank candidates with a reward model."""

    # step scores -> one score: last / min / prod / mean; None: the reward model's own, else last
    aggregation: Aggregation | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")


async def draw(task: Task, config: SamplingConfig, engine: Engine) -> list[Candidate]:
    """``num_samples`` full solutions to ``task.prompt`` from one engine request."""
    spec = SamplingSpec(
        n=config.num_samples,
        temperature=sampling_temperature(config, task, DEFAULT_TEMPERATURE),
        top_p=task.top_p,
        max_tokens=per_sample_budget(config, task, config.num_samples),
        stop=task.stop,
        seed=task.seed,
        logprobs=task.logprobs,
    )
    (samples,) = await engine.generate([task.prompt], spec, task.request_id)
    return candidates_of(samples)


def candidates_of(samples: Sequence[Sample]) -> list[Candidate]:
    """The engine's samples as candidates, their log-probabilities kept."""
    return [Candidate(s.text, s.num_tokens, s.finish_reason, logprobs=s.logprobs) for s in samples]


def split_steps(text: str, delimiter: str) -> list[str]:
    """The non-empty steps of a solution.

    >>> split_steps("a = 1\\n\\nb = 2\\n\\n", "\\n\\n")
    ['a = 1', 'b = 2']
    """
    return [step.strip() for step in text.split(delimiter) if step.strip()] or [text.strip()]


async def score(task: Task, config: ScoredConfig, candidates: list[Candidate], scorer: Scorer) -> None:
    """Fill ``step_scores`` and ``score`` of every candidate with one batched reward-model call."""
    items = [(task.question, split_steps(task.reader.reward_text(c.text), config.step_delimiter)) for c in candidates]
    all_scores = await scorer.score(items, task.request_id)
    how = resolve_aggregation(config.aggregation, scorer)
    for candidate, step_scores in zip(candidates, all_scores, strict=True):
        candidate.step_scores = list(step_scores)
        candidate.score = aggregate_scores(step_scores, how)
