"""``self_consistency``: draw N solutions, return one whose final answer is the most common.

Self-consistency / majority voting (Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning in
Language Models"). Answers are extracted (``\\boxed{}``, "the answer is", last number) and grouped by mathematical
equivalence (math-verify). The returned message is a full sampled solution with the winning answer: the shortest
finished one, so the client reads the most direct derivation. No reward model.

Cost: one engine request with ``n = num_samples``; no reward-model call.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies import register
from strategies.answers import cluster
from strategies.base import Engine, Scorer, StrategyResult, Task
from strategies.sampling import SamplingConfig, draw


@dataclass(frozen=True)
class SelfConsistencyConfig(SamplingConfig):
    pass


@register("self_consistency", config=SelfConsistencyConfig)
async def self_consistency(
    task: Task, config: SelfConsistencyConfig, engine: Engine, scorer: Scorer | None
) -> StrategyResult:
    """N samples, majority vote over their equivalent final answers."""
    candidates = await draw(task, config, engine)
    for candidate in candidates:
        candidate.answer = task.reader.answer(candidate.text)
    groups = cluster([c.answer for c in candidates], task.reader.same)
    for members in groups:
        for i in members:
            candidates[i].score = len(members) / len(candidates)  # vote share
    pool = groups[0] if groups else range(len(candidates))
    best = candidates[min(pool, key=lambda i: (candidates[i].finish_reason != "stop", candidates[i].num_tokens))]
    best.chosen = True
    votes = [{"answer": candidates[m[0]].answer, "count": len(m)} for m in groups]
    return StrategyResult(choices=[best], candidates=candidates, extra={"votes": votes})
