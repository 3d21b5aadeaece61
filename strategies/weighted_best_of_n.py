"""``weighted_best_of_n``: draw N solutions, sum the reward scores of each distinct final answer, return the
highest-scoring solution of the answer with the largest total.

Weighted best-of-N / "PRM-vote" (Li et al. 2023, "Making Language Models Better Reasoners with Step-Aware
Verifier"; the HF test-time-compute study found it above vanilla best-of-N at larger N). Answers are grouped by
mathematical equivalence (math-verify). Candidates with no extractable answer form no group; when none has one,
this falls back to plain best-of-N.

Cost: one engine request with ``n = num_samples``; one batched reward-model call.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies import register
from strategies.answers import cluster
from strategies.base import Engine, Scorer, StrategyResult, Task
from strategies.sampling import ScoredConfig, draw, score


@dataclass(frozen=True)
class WeightedBestOfNConfig(ScoredConfig):
    pass


@register("weighted_best_of_n", config=WeightedBestOfNConfig, needs_scorer=True)
async def weighted_best_of_n(
    task: Task, config: WeightedBestOfNConfig, engine: Engine, scorer: Scorer | None
) -> StrategyResult:
    """N samples, reward scores summed per equivalent answer, best member of the heaviest answer returned."""
    assert scorer is not None
    candidates = await draw(task, config, engine)
    await score(task, config, candidates, scorer)
    for candidate in candidates:
        candidate.answer = task.reader.answer(candidate.text)
    groups = cluster([c.answer for c in candidates], task.reader.same)
    totals = [sum(candidates[i].score or 0.0 for i in members) for members in groups]
    pool = groups[max(range(len(groups)), key=totals.__getitem__)] if groups else range(len(candidates))
    best = candidates[max(pool, key=lambda i: candidates[i].score or 0.0)]
    best.chosen = True
    answer_totals = [
        {"answer": candidates[m[0]].answer, "weight": t, "count": len(m)} for m, t in zip(groups, totals, strict=True)
    ]
    return StrategyResult(choices=[best], candidates=candidates, extra={"answers": answer_totals})
