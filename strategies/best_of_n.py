"""``best_of_n``: draw N solutions, return the one the reward model scores highest.

Best-of-N reranking with a verifier (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"; with a
process reward model, Lightman et al. 2023, "Let's Verify Step by Step"). Step scores are reduced by
``aggregation`` (search-and-learn's default is ``last``).

Cost: one engine request with ``n = num_samples``; one batched reward-model call over the N candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies import register
from strategies.base import Engine, Scorer, StrategyResult, Task
from strategies.sampling import ScoredConfig, draw, score


@dataclass(frozen=True)
class BestOfNConfig(ScoredConfig):
    pass


@register("best_of_n", config=BestOfNConfig, needs_scorer=True)
async def best_of_n(task: Task, config: BestOfNConfig, engine: Engine, scorer: Scorer | None) -> StrategyResult:
    """N samples in one engine request, the reward model's favourite returned."""
    assert scorer is not None
    candidates = await draw(task, config, engine)
    await score(task, config, candidates, scorer)
    best = max(candidates, key=lambda c: c.score or 0.0)  # max keeps the first of equal scores
    best.chosen = True
    return StrategyResult(choices=[best], candidates=candidates)
