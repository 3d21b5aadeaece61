"""``best_of_n``: draw N solutions, return the one the reward model scores highest; optionally rejecting the
samples whose beginning the reward model dislikes before they are finished.

Best-of-N reranking with a verifier (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"; with a
process reward model, Lightman et al. 2023, "Let's Verify Step by Step"). Step scores are reduced by
``aggregation`` (search-and-learn's default is ``last``).

Cost: one engine request with ``n = num_samples``; one batched reward-model call over the N candidates.

Early rejection (``rejection_tokens``, off by default) is speculative rejection: Sun, Haider, Zhang, Yang, Qiu,
Yin, Wang, Bartlett and Zanette 2024 (NeurIPS), "Fast Best-of-N Decoding via Speculative Rejection",
arXiv:2410.20290. The reward model scores partial samples, whose rewards correlate with the final ones (their
Figure 2, at 256 tokens), and the low-scored ones are stopped, so their remaining tokens are never generated:

1. One engine call draws the N samples with ``max_tokens = rejection_tokens`` (the checkpoint, the paper's decision
   token). A sample that ends before it is a finished candidate and is kept: it costs nothing more.
2. One reward-model call scores the M prefixes that reached the checkpoint. A PRM is trained on whole steps, so
   only a prefix's complete steps are scored (the step cut by the checkpoint is left out; a prefix with no complete
   step is scored whole), reduced by ``aggregation`` as the finished candidates are.
3. The best ``ceil(keep_fraction * M)`` prefixes (at least one) are continued from ``prompt + prefix``
   (``max_tokens``: the per-sample budget less the checkpoint), all submitted at once, each its own engine call
   with its own seed (``seed + N + i`` for sample i, after the seeds vLLM gives the first call's N samples); the
   others are rejected. Not one call for all: a call has one seed, and prompts sharing a seed share their random
   draws, so the continuations would go right or wrong together (a first version did so and lost most of what
   best-of-N gains on arith).
4. One reward-model call scores every finished candidate (those of step 1 and the continued ones); the best is
   returned.

Cost with it on: 1 + K engine calls for K kept prefixes (the K submitted together) and two reward-model calls
(one of each when no sample reaches the checkpoint, or the checkpoint is at or beyond the per-sample budget: that
is plain best-of-N). Tokens: each sample's first ``rejection_tokens`` (or fewer, if it ended), then the rest of the
kept ones only; never more than plain best-of-N's N times the per-sample budget, so ``max_total_tokens`` holds as
it does without it. Nodes (the server's ``--max-tree-nodes``): N + the kept ones.

Defaults and where they come from:

- ``keep_fraction`` = 0.5: the paper's rejection rate alpha = 0.5 (the share stopped at a decision point), the
  setting of its win-rate tables and of the authors' README.
- ``rejection_tokens`` = None (off). The paper has no fixed checkpoint: its first decision token is where its large
  initial batch fills the GPU's memory, which has no meaning on a shared continuous batch, and its answers run to
  hundreds of tokens (partial rewards are studied at 256). Ours are short (arith ~100-200 tokens, Game of 24 ~40),
  so a checkpoint is set per task, after the first step or two, from the answer lengths of a training or
  development split (docs/strategies.md gives the value measured for arith). One decision point, not the paper's
  repeated ones: with answers this short a second one would come close to the end, where little is left to save;
  the authors' code has this one-decision variant too (a fixed decision token, one rejection).

Design: draw to the checkpoint, then continue (the authors' code does the same: it re-encodes prompt + partial text
and generates again), not concurrent streams stopped in flight (``strategies.streams``). With streams no sample is
held at the checkpoint (a stream cannot be paused), so every sample, the doomed ones included, keeps generating
while the slowest one reaches it and while the reward model scores: tokens spent that depend on the machine's
timing. Drawn this way the spend is exact (what the ledger counts is what the description above says), all N
requests end at the checkpoint, which frees their slots in the continuous batch for other requests while the reward
model runs, and the kept ones come back as requests whose prompt and prefix the engine's prefix cache mostly holds
(only the last partial block is computed again). The price: the kept samples wait for the scoring (latency), and the
prefix is re-tokenized from its text, which may split its last characters differently from how they were sampled.
Because a sample is continued in a second engine call, a constraint on a whole sample (structured outputs,
``min_tokens``) cannot hold across it: with early rejection on, the server refuses those, as it does for the
step-wise searches.

Adaptive stopping (``stop_score``, off by default; the preset ``adaptive_best_of_n`` turns it on) is adaptive
sampling: Manvi, Singh and Ermon 2024, "Adaptive Inference-Time Compute: LLMs Can Predict if They Can Do Better,
Even Mid-Generation", arXiv:2410.02725, draw more samples only while a better one is still likely. The paper asks
the policy itself whether a new sample would beat the ones in hand; here the reward model answers, as it scores the
samples anyway: once the best score so far reaches ``stop_score``, no more are drawn.

1. Rounds of ``round_size`` samples, each one engine call and one reward-model call. Round r draws samples
   ``r * round_size`` onwards with ``seed + r * round_size``: vLLM seeds the k-th of n samples ``seed + k``, so the
   samples are exactly plain best-of-N's, in order, and stopping after k of them returns what best-of-N with N = k
   would where ``max_total_tokens`` does not bind (each sample's budget is N's share of it, not k's). Under ``auto``,
   with ``round_size`` equal to its ``probe_samples``, the probe is the first round, replayed.
2. After each round, the best score so far against ``stop_score``: at or above it, stop; else the next round, until
   ``num_samples`` (the ceiling, N) are drawn. The best-scored sample is returned.

Cost: ceil(k / round_size) engine calls and as many reward-model calls for the k samples drawn (k <= N); tokens:
those k samples' only. The per-sample budget is plain best-of-N's (N's share of ``max_total_tokens``), so the caps
hold as they do without it. The trace (``adaptive_stop``) lists each round's best score.

Defaults and where they come from:

- ``stop_score`` = None (off); the preset's 0.5: a reward model trained to predict correctness (a PRM's or ORM's
  probability) then stops once one sample is more likely right than wrong. A reward model's scale is its own, so
  the value is a setting of the pair of models: docs/strategies.md gives the one measured for the default models.
- ``round_size`` = 4: ``auto``'s probe size (its probe is then the first round, replayed at no cost), and a quarter
  of best-of-N's usual N = 16. Smaller rounds stop sooner but wait on the reward model more often.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from strategies import register
from strategies.aggregation import aggregate_scores, resolve_aggregation
from strategies.base import (
    Candidate,
    Engine,
    Sample,
    SamplingSpec,
    Scorer,
    StrategyResult,
    Task,
    per_sample_budget,
    sampling_temperature,
)
from strategies.sampling import DEFAULT_TEMPERATURE, ScoredConfig, candidates_of, draw, score, split_steps

PRESETS = {"adaptive_best_of_n": {"stop_score": 0.5}}  # the preset's stop_score: see the module's docstring


@dataclass(frozen=True)
class BestOfNConfig(ScoredConfig):
    budget_doc: ClassVar[str | None] = "N whole solutions drawn together (with stop_score: at most N, in rounds)"

    # early rejection: after this many generated tokens, score each sample's prefix and stop all but the best
    # keep_fraction of them; None: off (plain best-of-N)
    rejection_tokens: int | None = None
    keep_fraction: float = 0.5  # share of the samples that reached the checkpoint kept to finish (1 - alpha)
    # adaptive stopping: draw in rounds of round_size and stop once the best score so far is at least this;
    # None: off (all num_samples drawn in one call)
    stop_score: float | None = None
    round_size: int = 4  # samples per round with stop_score

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rejection_tokens is not None and self.rejection_tokens < 1:
            raise ValueError("rejection_tokens must be at least 1 (or null: no early rejection)")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError("keep_fraction must be above 0 and at most 1")
        if self.round_size < 1:
            raise ValueError("round_size must be at least 1")
        if self.stop_score is not None and not math.isfinite(self.stop_score):
            raise ValueError("stop_score must be a finite number (or null: no adaptive stopping)")
        if self.stop_score is not None and self.rejection_tokens is not None:
            raise ValueError("stop_score and rejection_tokens cannot be combined: choose one way of saving samples")

    @property
    def in_steps(self) -> bool:  # type: ignore[override]
        """With early rejection a sample is drawn in two engine calls, so whole-sample constraints cannot hold."""
        return self.rejection_tokens is not None


@register("best_of_n", config=BestOfNConfig, needs_scorer=True, presets=PRESETS)
async def best_of_n(task: Task, config: BestOfNConfig, engine: Engine, scorer: Scorer | None) -> StrategyResult:
    """N samples in one engine request, the reward model's favourite returned."""
    assert scorer is not None
    budget = per_sample_budget(config, task, config.num_samples)
    if config.rejection_tokens is not None and config.rejection_tokens < budget:
        return await _with_rejection(task, config, engine, scorer, budget, config.rejection_tokens)
    if config.stop_score is not None:
        return await _until_good(task, config, engine, scorer, budget, config.stop_score)
    candidates = await draw(task, config, engine)
    await score(task, config, candidates, scorer)
    return StrategyResult(choices=[_choose(candidates)], candidates=candidates)


async def _until_good(
    task: Task, config: BestOfNConfig, engine: Engine, scorer: Scorer, budget: int, stop_score: float
) -> StrategyResult:
    """Adaptive sampling: rounds of ``round_size`` samples, scored as they come, until one scores ``stop_score``."""
    candidates: list[Candidate] = []
    rounds: list[dict[str, Any]] = []
    while len(candidates) < config.num_samples:
        drawn = len(candidates)
        n = min(config.round_size, config.num_samples - drawn)
        seed = None if task.seed is None else task.seed + drawn  # samples drawn..drawn+n-1 of best-of-N's one call
        samples = await _draw(task, config, engine, [task.prompt], n, budget, seed)
        fresh = candidates_of(samples)
        await score(task, config, fresh, scorer)
        candidates += fresh
        best = max(c.score or 0.0 for c in candidates)
        rounds.append({"samples": len(candidates), "best_score": best})
        if best >= stop_score:
            break
    stop = {"stop_score": stop_score, "round_size": config.round_size, "drawn": len(candidates)}
    stop |= {"stopped_early": len(candidates) < config.num_samples, "rounds": rounds}
    return StrategyResult(choices=[_choose(candidates)], candidates=candidates, extra={"adaptive_stop": stop})


def _choose(candidates: list[Candidate]) -> Candidate:
    best = max(candidates, key=lambda c: c.score or 0.0)  # max keeps the first of equal scores
    best.chosen = True
    return best


@dataclass
class _Checkpoint:
    """What early rejection decided at its checkpoint."""

    tokens: int
    reached: list[int] = field(default_factory=list)  # indices of the samples that reached it
    kept: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    prefix_scores: dict[int, float] = field(default_factory=dict)

    def trace(self, config: BestOfNConfig, candidates: list[Candidate], num_samples: int) -> dict[str, Any]:
        return {
            "checkpoint_tokens": self.tokens,
            "keep_fraction": config.keep_fraction,
            "finished_before": [i for i in range(num_samples) if i not in self.reached],
            "kept": self.kept,
            "rejected": self.rejected,
            # the aggregated score of each sample's prefix at the checkpoint; None: it had finished before
            "prefix_scores": [self.prefix_scores.get(i) for i in range(num_samples)],
            "rejected_tokens": sum(candidates[i].num_tokens for i in self.rejected),
        }


async def _with_rejection(
    task: Task, config: BestOfNConfig, engine: Engine, scorer: Scorer, budget: int, checkpoint: int
) -> StrategyResult:
    """Speculative rejection with one decision point: N prefixes, the best share of them finished."""
    prefixes = await _draw(task, config, engine, [task.prompt], config.num_samples, checkpoint, task.seed)
    candidates = candidates_of(prefixes)
    # reached: stopped at the checkpoint's max_tokens (not shorter, where the model's context ended it first)
    reached = [i for i, c in enumerate(candidates) if c.finish_reason == "length" and c.num_tokens >= checkpoint]
    decision = _Checkpoint(checkpoint, reached=reached)
    if decision.reached:
        await _judge_prefixes(task, config, scorer, candidates, decision)
        await _finish(task, config, engine, candidates, decision, budget - checkpoint)
    finished = [c for i, c in enumerate(candidates) if i not in decision.rejected]
    await score(task, config, finished, scorer)
    for i in decision.rejected:
        candidates[i].finish_reason = "abort"
    extra = {"early_rejection": decision.trace(config, candidates, config.num_samples)}
    return StrategyResult(choices=[_choose(finished)], candidates=candidates, extra=extra)


async def _draw(
    task: Task, config: BestOfNConfig, engine: Engine, prompts: list[str], n: int, max_tokens: int, seed: int | None
) -> list[Sample]:
    """``n`` samples of each prompt, flattened, sampled as the request asks but for ``max_tokens`` and ``seed``."""
    spec = SamplingSpec(
        n=n,
        temperature=sampling_temperature(config, task, DEFAULT_TEMPERATURE),
        top_p=task.top_p,
        max_tokens=max_tokens,
        stop=task.stop,
        seed=seed,
        logprobs=task.logprobs,
    )
    return [sample for samples in await engine.generate(prompts, spec, task.request_id) for sample in samples]


def prefix_steps(text: str, delimiter: str) -> list[str]:
    """The complete steps of a prefix: the step the checkpoint cut is left out, unless no step is complete.

    >>> prefix_steps("a = 1\\n\\nb = 2\\n\\nc =", "\\n\\n")
    ['a = 1', 'b = 2']
    >>> prefix_steps("a = 1\\n\\n", "\\n\\n"), prefix_steps("a =", "\\n\\n")
    (['a = 1'], ['a ='])
    """
    head, sep, _ = text.rpartition(delimiter)
    return split_steps(head + sep if head.strip() else text, delimiter)


async def _judge_prefixes(
    task: Task, config: BestOfNConfig, scorer: Scorer, candidates: list[Candidate], decision: _Checkpoint
) -> None:
    """Score the prefixes that reached the checkpoint in one call; keep the best share, reject the rest."""
    items = [
        (task.question, prefix_steps(task.reader.reward_text(candidates[i].text), config.step_delimiter))
        for i in decision.reached
    ]
    how = resolve_aggregation(config.aggregation, scorer)
    for i, step_scores in zip(decision.reached, await scorer.score(items, task.request_id), strict=True):
        candidates[i].step_scores = list(step_scores)
        candidates[i].score = decision.prefix_scores[i] = aggregate_scores(step_scores, how)
    keep = max(1, math.ceil(config.keep_fraction * len(decision.reached) - 1e-9))
    ranked = sorted(decision.reached, key=lambda i: -decision.prefix_scores[i])  # stable: ties keep sample order
    decision.kept, decision.rejected = sorted(ranked[:keep]), sorted(ranked[keep:])


async def _finish(
    task: Task, config: BestOfNConfig, engine: Engine, candidates: list[Candidate], decision: _Checkpoint, rest: int
) -> None:
    """Continue each kept prefix to the end, all at once, each its own engine call with its own seed."""

    async def go_on(i: int) -> None:
        # after the N children's seeds (vLLM seeds the k-th of n as seed + k): one seed shared by several prompts would
        # give them the same random draws, so their continuations would fail together
        seed = None if task.seed is None else task.seed + config.num_samples + i
        (tail,) = await _draw(task, config, engine, [task.prompt + candidates[i].text], 1, rest, seed)
        head = candidates[i]
        logprobs = head.logprobs + tail.logprobs if head.logprobs is not None and tail.logprobs is not None else None
        candidates[i] = Candidate(head.text + tail.text, head.num_tokens + tail.num_tokens, tail.finish_reason)
        candidates[i].logprobs = logprobs

    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels (and so aborts) the others
            for i in decision.kept:
                group.create_task(go_on(i))
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
