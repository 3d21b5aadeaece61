"""``adaptive_consistency``: draw solutions until the majority vote is decided, at most N; return the winner.

Adaptive-Consistency (Aggarwal, Madaan, Yang, Mausam 2023, EMNLP, "Let's Sample Step by Step: Adaptive-Consistency
for Efficient Reasoning and Coding with LLMs", arXiv 2305.11860) and, as ``stop_rule="esc"``, Early-Stopping
Self-Consistency (Li, Yuan, Feng, Pan, Wang, Sun, Wang, Li 2024, ICLR, "Escape Sky-high Cost: Early-stopping
Self-Consistency for Multi-step Reasoning", arXiv 2401.10480). Self-consistency with a stopping rule on the answer
counts: a question whose first samples agree costs a few samples, a contested one up to ``num_samples``.

Stopping rules (answers extracted by ``task.reader`` and grouped by ``task.reader.same`` as ``self_consistency``
does; a sample with no answer is drawn but votes for nothing):

- ``beta`` (the paper's default): with ``a`` votes for the leader and ``b`` for the runner-up, the posterior
  probability, under a uniform prior, that the leader's share exceeds the runner-up's: ``P(x > 1/2)`` for
  ``x ~ Beta(a + 1, b + 1)`` (the paper's code: ``BetaStoppingCriteria``, which integrates ``x^a (1-x)^b``
  numerically). Stop once it is at least ``confidence``. Computed exactly (:func:`leader_probability`).
- ``dirichlet``: the posterior probability that the leader's share exceeds every other answer's, under
  ``Dirichlet(counts + 1)`` over the five most common answers (the paper's ``DirichletStoppingCriteria``, its
  ``top_k_elements=5``; with fewer than three answers it is the Beta rule, as there). The paper's code estimates it
  by unseeded Monte Carlo integration (50,000 points); we compute it exactly: the shares are independent
  ``Gamma(count + 1)`` variables normalised, so the probability is a one-dimensional integral of polynomials times
  exponentials, summed in rational arithmetic.
- ``esc``: ESC's window rule: samples in consecutive windows of ``window`` (by launch order); stop when every
  answer in a window is the same, and answer with it (ESC's Algorithm 1); otherwise the majority of all samples.

Defaults and where they come from: ``confidence`` 0.95 (the paper's default threshold for both rules);
``num_samples`` 40, the paper's maximum (``max_gens=40``) and ESC's sampling size L=40, not scaled: the ceiling
counts samples, whose length does not change how many a vote needs (``ponder bench accuracy --n`` sets it);
``window`` 5 (ESC's window size for its arithmetic tasks); ``min_samples`` 4, the fewest samples at which the paper's
Beta rule at 0.95 can stop (4 agreeing samples give 31/32 = 0.969, 3 give 15/16 = 0.9375), so a lowered
``confidence`` cannot end the vote on one or two samples; the temperature is ``self_consistency``'s (0.8; the papers
sample at 0.7), so this strategy is a drop-in for it.

How samples are drawn: the paper draws one sample at a time; we draw them as concurrent one-sample streams
(:class:`strategies.streams.StreamPool`, sample i seeded ``seed + i``), but only as many as could still end the vote
if all of them agreed with the leader (for ``esc``: the next window only once the current one holds two answers), at
most ``round_size`` (8) at once. So, unless the leader changes, the samples drawn are the ones the paper's
one-at-a-time loop draws, and nothing is left running when the rule holds. ``eager=True`` instead keeps
``round_size`` streams in flight at all times (lower latency) and aborts those still running once the vote is
decided: their engine requests are stopped, and their tokens so far counted.

The returned message is the shortest finished solution with the winning answer, as ``self_consistency``'s.

Cost: one engine request per sample (n = 1 each), at most ``num_samples``; each sample may use
``max_total_tokens // num_samples`` tokens. No reward-model call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Literal

from strategies import register
from strategies.answers import cluster
from strategies.base import (
    Engine,
    SamplingSpec,
    Scorer,
    StrategyResult,
    Task,
    per_sample_budget,
    sampling_temperature,
)
from strategies.sampling import DEFAULT_TEMPERATURE, SamplingConfig
from strategies.streams import StreamPool, Trace

STOP_RULES = ("beta", "dirichlet", "esc")
DIRICHLET_TOP_K = 5  # answers in the Dirichlet posterior (the paper's code: top_k_elements=5)


@dataclass(frozen=True)
class AdaptiveConsistencyConfig(SamplingConfig):
    budget_doc: ClassVar[str | None] = "at most N solutions, drawn until the vote is decided"

    num_samples: int = 40  # the ceiling (the paper's max_gens=40; ESC's L=40)
    stop_rule: Literal["beta", "dirichlet", "esc"] = "beta"
    confidence: float = 0.95  # beta/dirichlet: stop once P(the leader is the mode) reaches this (the paper's 0.95)
    min_samples: int = 4  # finished samples before any rule may stop (the Beta rule's own minimum at 0.95)
    window: int = 5  # esc: samples per window (ESC's w=5)
    round_size: int = 8  # the most samples in flight at once
    eager: bool = False  # True: keep round_size samples in flight, aborting the rest once decided

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stop_rule not in STOP_RULES:
            raise ValueError(f"stop_rule must be one of {', '.join(STOP_RULES)}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError("confidence must be between 0 and 1 (exclusive)")
        if self.min_samples < 1:
            raise ValueError("min_samples must be at least 1")
        if self.window < 2:
            raise ValueError("window must be at least 2 (a window of one sample always agrees)")
        if self.round_size < 1:
            raise ValueError("round_size must be at least 1")


# ---- the posterior probability that the leader is the most likely answer ---------------------------------------
def leader_probability(counts: Sequence[int]) -> float:
    """P(p_0 > p_i for every i > 0) for shares ``p ~ Dirichlet(counts + 1)`` (a uniform prior), exactly; a single
    answer is compared with one that has no votes. With two counts this is P(x > 1/2), ``x ~ Beta(a + 1, b + 1)``.

    The shares are independent ``G_i ~ Gamma(counts[i] + 1)`` normalised, so this is P(G_0 > max G_i) = the integral
    of G_0's density times the others' CDFs, ``1 - e^-x sum_{j <= c} x^j / j!`` for integer ``c``; expanded, each
    term integrates in closed form.

    >>> leader_probability([4, 0]), leader_probability([3, 1]), leader_probability([2, 2])
    (0.96875, 0.8125, 0.5)
    """
    if not counts or min(counts) < 0:
        raise ValueError("counts must be non-empty and non-negative")
    lead, others = counts[0], list(counts[1:]) or [0]
    # by_size[s]: the sum over s-subsets S of the others of prod_{i in S} (sum_{j <= c_i} x^j / j!), as coefficients
    by_size: list[list[Fraction]] = [[Fraction(1)]]
    for c in others:
        cdf_tail = [Fraction(1, math.factorial(j)) for j in range(c + 1)]
        grown = [*by_size, []]
        for s in range(len(by_size), 0, -1):
            grown[s] = _add(grown[s], _mul(by_size[s - 1], cdf_tail))
        by_size = grown
    total = Fraction(0)
    for s, poly in enumerate(by_size):
        # integral of x^lead e^-x / lead! * x^m e^-(s x) dx = (lead + m)! / lead! / (1 + s)^(lead + m + 1)
        term = sum(q * math.perm(lead + m, m) / Fraction(1 + s) ** (lead + m + 1) for m, q in enumerate(poly))
        total += -term if s % 2 else term
    return float(total)


def _mul(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def _add(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return [x + (shorter[i] if i < len(shorter) else 0) for i, x in enumerate(longer)]


# ---- the vote so far -------------------------------------------------------------------------------------------
@dataclass
class Vote:
    """The finished samples' answers, and what the rule said after each of them."""

    config: AdaptiveConsistencyConfig
    task: Task
    answers: dict[int, str | None] = field(default_factory=dict)  # trace index -> its answer, in finishing order
    groups: list[list[int]] = field(default_factory=list)  # trace indices by answer, largest first
    history: list[float] = field(default_factory=list)  # the rule's value after each finished sample

    def add(self, trace: Trace) -> str | None:
        """Count ``trace``'s answer; why the vote is now decided, or None."""
        self.answers[trace.index] = self.task.reader.answer(trace.text)
        self.groups = self.cluster(list(self.answers))
        if self.config.stop_rule == "esc":
            return self._esc(trace.index)
        p = self.probability()
        self.history.append(p)
        if len(self.answers) < self.config.min_samples or p < self.config.confidence:
            return None
        return f"{self.config.stop_rule}: P(the leader is the most likely answer) = {p:.4f} >= {self.config.confidence}"

    def cluster(self, indices: Sequence[int]) -> list[list[int]]:
        groups = cluster([self.answers[i] for i in indices], self.task.reader.same)
        return [[indices[k] for k in g] for g in groups]

    def probability(self, extra_leader_votes: int = 0) -> float:
        """The Beta or Dirichlet rule's value, with ``extra_leader_votes`` more votes for the leader."""
        top = 2 if self.config.stop_rule == "beta" else DIRICHLET_TOP_K
        counts = [len(g) for g in self.groups[:top]] or [0]
        return leader_probability([counts[0] + extra_leader_votes, *counts[1:]])

    # ---- ESC ----
    def _esc(self, index: int) -> str | None:
        w = self.config.window
        members = [i for i in range(index // w * w, (index // w + 1) * w) if i in self.answers]
        none = any(self.answers[i] is None for i in members)
        self.history.append(len(self.cluster(members)) + none)  # distinct answers in the sample's window so far
        window = self.agreeing_window()
        if len(self.answers) < self.config.min_samples or window is None:
            return None
        return f"esc: the {w} samples {window * w}-{window * w + w - 1} agree"

    def window_state(self, k: int) -> str:
        """ESC window ``k``: "agrees" (all its samples finished with one answer), "mixed" (two answers, or a sample
        with none: it can no longer agree) or "open"."""
        w = self.config.window
        members = [i for i in range(k * w, (k + 1) * w) if i in self.answers]
        if any(self.answers[i] is None for i in members) or len(self.cluster(members)) > 1:
            return "mixed"
        return "agrees" if len(members) == w else "open"

    def agreeing_window(self) -> int | None:
        """The first ESC window that is not mixed, if it agrees (ESC stops at it)."""
        for k in range(self.config.num_samples // self.config.window):
            state = self.window_state(k)
            if state != "mixed":
                return k if state == "agrees" else None
        return None

    # ---- planning ----
    def needed(self, finished: int) -> int:
        """Samples beyond the ``finished`` ones the rule needs at best (each agreeing with the leader; for ESC, the
        rest of the first window that may still agree), at most the ones left under the ceiling."""
        config = self.config
        left = config.num_samples - finished
        if config.stop_rule == "esc":
            k = 0
            while self.window_state(k) == "mixed":
                k += 1
            return min((k + 1) * config.window, config.num_samples) - finished
        floor = max(0, config.min_samples - finished)
        if floor >= left or self.probability(left) < config.confidence:
            return left
        low, high = floor, left  # the fewest extra leader votes that reach the confidence lie in [low, high]
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if self.probability(mid) >= config.confidence else (mid + 1, high)
        return low


def to_launch(config: AdaptiveConsistencyConfig, vote: Vote, launched: int, running: int) -> int:
    """How many more samples to start now, with ``running`` of the ``launched`` not yet counted."""
    room = min(config.round_size - running, config.num_samples - launched)
    if config.eager:
        return max(0, room)
    return max(0, min(room, vote.needed(launched - running) - running))


# ---- the strategy ----------------------------------------------------------------------------------------------
@register("adaptive_consistency", config=AdaptiveConsistencyConfig)
async def adaptive_consistency(
    task: Task, config: AdaptiveConsistencyConfig, engine: Engine, scorer: Scorer | None
) -> StrategyResult:
    """Self-consistency that stops sampling once the vote is decided (Beta, Dirichlet or ESC's window rule)."""
    spec = SamplingSpec(
        n=1,
        temperature=sampling_temperature(config, task, DEFAULT_TEMPERATURE),
        top_p=task.top_p,
        max_tokens=per_sample_budget(config, task, config.num_samples),
        stop=task.stop,
        seed=task.seed,
        logprobs=task.logprobs,
    )
    vote = Vote(config, task)
    reason: str | None = None
    ended = 0  # traces read from the pool (a trace that has ended may wait in the pool's queue)
    async with StreamPool(engine, spec, task.request_id) as pool:
        await _launch(pool, to_launch(config, vote, 0, 0), task.prompt)
        async for trace in pool.finished():
            ended += 1
            if reason is not None or trace.finish_reason == "abort":
                continue  # stopped once decided: no vote
            reason = vote.add(trace)
            if reason is not None:
                await pool.stop_all("the vote is decided")
                continue
            launched = len(pool.traces)
            await _launch(pool, to_launch(config, vote, launched, launched - ended), task.prompt)
    return _result(config, vote, pool.traces, reason)


async def _launch(pool: StreamPool, count: int, prompt: str) -> None:
    """Start ``count`` traces and let them begin: a trace stopped before its task first ran would never end."""
    if count:
        pool.launch(count, prompt)
        await asyncio.sleep(0)


def _result(config: AdaptiveConsistencyConfig, vote: Vote, traces: list[Trace], reason: str | None) -> StrategyResult:
    candidates = [trace.candidate() for trace in traces]
    for index, answer in vote.answers.items():
        candidates[index].answer = answer
    groups = vote.groups
    for members in groups:
        for i in members:
            candidates[i].score = len(members) / len(vote.answers)  # vote share among the finished samples
    winners = groups[0] if groups else list(vote.answers)
    if reason is not None and config.stop_rule == "esc":  # ESC answers with the agreeing window's answer
        window = vote.agreeing_window()
        assert window is not None
        winners = next(g for g in groups if window * config.window in g)
    among = winners or range(len(candidates))  # nothing finished (cannot happen): the first trace
    best = candidates[min(among, key=lambda i: (candidates[i].finish_reason != "stop", candidates[i].num_tokens, i))]
    best.chosen = True
    return StrategyResult(choices=[best], candidates=candidates, extra=_extra(config, vote, traces, groups, reason))


def _extra(
    config: AdaptiveConsistencyConfig,
    vote: Vote,
    traces: list[Trace],
    groups: list[list[int]],
    reason: str | None,
) -> dict[str, Any]:
    aborted = [t for t in traces if t.finish_reason == "abort"]
    ceiling = f"ceiling: {len(vote.answers)} of num_samples={config.num_samples} drawn, the rule did not hold"
    return {
        "votes": [{"answer": vote.answers[g[0]], "count": len(g)} for g in groups],
        "stop_rule": config.stop_rule,
        "samples": len(vote.answers),  # finished samples (the votes and the ones with no answer)
        "launched": len(traces),
        "aborted": len(aborted),
        "aborted_tokens": sum(t.num_tokens for t in aborted),
        "aborted_samples": [{"index": t.index, "tokens": t.num_tokens, "reason": t.stopped_by} for t in aborted],
        "completion_tokens": sum(t.num_tokens for t in traces),
        "rule_value": vote.history[-1] if vote.history else None,
        "rule_values": [round(v, 6) for v in vote.history],
        "stopped": reason or ceiling,
    }
