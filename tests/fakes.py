"""A scripted engine and reward model for testing strategy logic and the HTTP layer without vLLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from strategies.base import Sample, SamplingSpec

Script = Callable[[str, int], str]  # (prompt, sample index) -> completion text


def tokens(text: str) -> int:
    """The fake tokenizer: one token per whitespace-separated word (at least one per sample)."""
    return max(1, len(text.split()))


class FakeTokenizer:
    """Renders chat messages as ``<role>: content`` lines and ends with ``assistant:`` for the reply."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, continue_final_message=False):
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        if add_generation_prompt:
            lines.append("assistant:")
        return "\n".join(lines)


@dataclass
class FakeEngine:
    """Returns scripted completions and records every call; ``delay`` makes calls slow enough to cancel."""

    script: Script
    delay: float = 0.0
    max_model_len: int = 4096
    calls: list[tuple[list[str], SamplingSpec]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    running: int = 0
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)

    def count_tokens(self, text: str) -> int:
        return tokens(text)

    def healthy(self) -> bool:
        return True

    def _sample(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
        words = self.script(prompt, index).split(" ")
        text = " ".join(words[: spec.max_tokens])
        finish = "length" if len(words) > spec.max_tokens else "stop"
        for stop in spec.stop:  # cut at the first stop string, keeping it, as vLLM does with include_stop_str
            if stop in text:
                return Sample(text[: text.index(stop) + len(stop)], tokens(text[: text.index(stop)]), "stop", stop)
        return Sample(text, tokens(text), finish)

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        self.calls.append((list(prompts), spec))
        self.running += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return [[self._sample(p, i, spec) for i in range(spec.n)] for p in prompts]
        finally:
            self.running -= 1

    async def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        self.calls.append(([prompt], spec))
        full = self._sample(prompt, 0, spec)
        words = full.text.split(" ")
        self.running += 1
        try:
            for k, word in enumerate(words):
                if self.delay:
                    await asyncio.sleep(self.delay / len(words))
                last = k == len(words) - 1
                so_far = " ".join(words[: k + 1])
                yield Sample(word if k == 0 else " " + word, tokens(so_far), full.finish_reason if last else None)
        finally:
            self.running -= 1

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


@dataclass
class FakeScorer:
    """Scores a step by looking it up in ``step_scores`` (default ``default``); records every batch."""

    step_scores: dict[str, float] = field(default_factory=dict)
    default: float = 0.5
    kind: str = "prm"
    fail: bool = False
    calls: list[list[tuple[str, list[str]]]] = field(default_factory=list)

    async def score(self, items, request_id: str) -> list[list[float]]:
        self.calls.append([(q, list(steps)) for q, steps in items])
        if self.fail:
            from strategies.errors import ScorerError

            raise ScorerError("scorer is down")
        return [[self.step_scores.get(step, self.default) for step in steps] for _, steps in items]
