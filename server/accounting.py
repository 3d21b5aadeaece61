"""Per-request proxies of the engine and the reward model that count everything a strategy spends.

The strategy receives these instead of the real adapters, so ``usage`` and the ``ponder`` object are computed in
one place: every generated token of every candidate and search step, every engine submission, every scorer call.
They also enforce the request's hard token budget: a call that could exceed it is refused before it reaches the
engine, and the request is cancelled through one id prefix.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from strategies.base import Engine, Sample, SamplingSpec, Scorer


class BudgetExceededError(RuntimeError):
    """A strategy asked for more tokens than the request's ``max_total_tokens`` leaves."""


class NodeCapExceededError(RuntimeError):
    """A strategy asked for more samples (tree nodes) than the server's per-request cap leaves."""


@dataclass
class Ledger:
    """What one request cost so far."""

    token_budget: int  # hard cap on generated tokens, reserved before each engine call
    node_budget: int = 1 << 62  # hard cap on samples drawn (tree nodes) across the request
    nodes: int = 0
    completion_tokens: int = 0
    engine_calls: int = 0
    engine_requests: int = 0
    scorer_calls: int = 0
    scored_items: int = 0
    scorer_seconds: float = 0.0
    reserved: int = field(default=0, repr=False)

    def reserve(self, spec: SamplingSpec, num_prompts: int) -> int:
        """Reserve the worst case of one engine call; returns how much was reserved."""
        if self.nodes + spec.n * num_prompts > self.node_budget:
            raise NodeCapExceededError(
                f"the strategy asked for {self.nodes + spec.n * num_prompts} samples in all, "
                f"above this server's cap of {self.node_budget} (--max-tree-nodes)"
            )
        worst = spec.n * num_prompts * spec.max_tokens
        if self.completion_tokens + self.reserved + worst > self.token_budget:
            left = self.token_budget - self.completion_tokens - self.reserved
            raise BudgetExceededError(
                f"the strategy asked for up to {worst} tokens but the request's budget leaves {left}"
            )
        self.reserved += worst
        self.nodes += spec.n * num_prompts
        return worst


class CountingEngine:
    """An :class:`Engine` that records calls and tokens in a :class:`Ledger` under one request id, and sets the
    request's own sampling ``options`` (:mod:`server.request_fields`) on every call a strategy makes."""

    def __init__(
        self, engine: Engine, ledger: Ledger, request_id: str, options: Mapping[str, Any] | None = None
    ) -> None:
        self._engine, self.ledger, self.request_id = engine, ledger, request_id
        self.options = dict(options or {})
        self._calls = 0

    def _spec(self, spec: SamplingSpec) -> SamplingSpec:
        return dataclasses.replace(spec, options={**self.options, **spec.options}) if self.options else spec

    def _sub_id(self) -> str:
        self._calls += 1
        return f"{self.request_id}-c{self._calls}"

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        reserved = self.ledger.reserve(spec, len(prompts))
        self.ledger.engine_calls += 1
        self.ledger.engine_requests += len(prompts)
        try:
            outputs = await self._engine.generate(prompts, self._spec(spec), self._sub_id())
        finally:
            self.ledger.reserved -= reserved
        # A greedy call may return one Sample object standing for all n identical samples (vLLM refuses greedy
        # n > 1): count each object once, so usage holds the tokens really generated.
        generated = {id(s): s for samples in outputs for s in samples}
        self.ledger.completion_tokens += sum(s.num_tokens for s in generated.values())
        return outputs

    async def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        reserved = self.ledger.reserve(spec, 1)
        self.ledger.engine_calls += 1
        self.ledger.engine_requests += 1
        seen = 0
        try:
            # closed explicitly, so a strategy that stops reading aborts the engine request at once
            async with aclosing(self._engine.stream(prompt, self._spec(spec), self._sub_id())) as inner:
                async for delta in inner:
                    self.ledger.completion_tokens += delta.num_tokens - seen
                    seen = delta.num_tokens
                    yield delta
        finally:
            self.ledger.reserved -= reserved

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(self.request_id)


class CountingScorer:
    """A :class:`Scorer` that records batched calls and scored items in a :class:`Ledger`."""

    def __init__(self, scorer: Scorer, ledger: Ledger, request_id: str) -> None:
        self._scorer, self.ledger, self.request_id = scorer, ledger, request_id
        self.kind = scorer.kind
        self.aggregation = getattr(scorer, "aggregation", None)  # the reward model's preferred step reduction

    async def score(self, items: Sequence[tuple[str, Sequence[str]]], request_id: str) -> list[list[float]]:
        self.ledger.scorer_calls += 1
        self.ledger.scored_items += len(items)
        start = time.perf_counter()
        try:
            return await self._scorer.score(items, f"{self.request_id}-s{self.ledger.scorer_calls}")
        finally:
            self.ledger.scorer_seconds += time.perf_counter() - start
