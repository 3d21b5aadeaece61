"""A scripted engine and reward model for testing strategy logic and the HTTP layer without vLLM."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from strategies.base import Sample, SamplingSpec, TokenLogprob

Script = Callable[[str, int], str]  # (prompt, sample index) -> completion text
ARITH_QUESTION = re.compile(r"Start with .*?What is the result\?")


def word_logprobs(text: str, top: int, start: int = 0) -> tuple[TokenLogprob, ...]:
    """The fake logprobs: each word (with the space before it) a token of log-probability -(position + 1) / 10."""
    words = text.split(" ")
    pieces = [w if i + start == 0 else " " + w for i, w in enumerate(words)]
    return tuple(
        TokenLogprob(piece, -(start + i + 1) / 10, tuple((f"alt{k}", -float(k + 1)) for k in range(top)))
        for i, piece in enumerate(pieces)
    )


def _logprobs(text: str, spec: SamplingSpec) -> tuple[TokenLogprob, ...] | None:
    return None if spec.logprobs is None else word_logprobs(text, spec.logprobs)


def tokens(text: str) -> int:
    """The fake tokenizer: one token per whitespace-separated word (at least one per sample)."""
    return max(1, len(text.split()))


class FakeTokenizer:
    """Renders chat messages as ``<role>: content`` lines and ends with ``assistant:`` for the reply."""

    def apply_chat_template(
        self, messages, tokenize=False, add_generation_prompt=True, continue_final_message=False, **template_kwargs
    ):
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        if add_generation_prompt:
            lines.append("assistant:")
        return "\n".join(lines)


@dataclass
class FakeEngine:
    """Returns scripted completions and records every call.

    ``gate``: an event every call waits for before it answers (a stream: after its first word), so a test decides
    when work finishes; an event nobody sets makes calls that run until they are cancelled. ``open_when``: the
    engine sets the gate itself as soon as this holds of it (checked as calls start and end), e.g.
    ``lambda e: e.running >= 3``. :meth:`wait_running` returns once that many calls are running at once.
    """

    script: Script
    gate: asyncio.Event | None = None
    open_when: Callable[[FakeEngine], bool] | None = None
    max_model_len: int = 4096
    calls: list[tuple[list[str], SamplingSpec]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    running: int = 0
    cancelled: int = 0  # calls cancelled while they waited at the gate
    _waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list, repr=False)
    shut_down: bool = False
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    reasoning_parser: str | None = None
    # True: the k-th stream of a prompt is its sample k (the script's index), and concurrent streams take turns word
    # by word, as a continuous batch interleaves them
    interleave: bool = False
    _streams: dict[str, int] = field(default_factory=dict, repr=False)
    closed_early: int = 0  # streams their reader closed before the last word (the engine request aborted)

    def count_tokens(self, text: str) -> int:
        return tokens(text)

    async def score_text(self, prompt: str, text: str, top: int) -> list[TokenLogprob]:
        """Each word of ``text`` with log-probability -(its position + 1) / 10, and ``top`` made-up alternatives."""
        return list(word_logprobs(text, top))

    def healthy(self) -> bool:
        return True

    def num_running(self) -> int:
        return self.running

    async def shutdown(self) -> None:
        self.shut_down = True

    def _sample(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
        words = self.script(prompt, index).split(" ")
        text = " ".join(words[: spec.max_tokens])
        finish = "length" if len(words) > spec.max_tokens else "stop"
        for stop in spec.stop:  # cut at the first stop string, keeping it, as vLLM does with include_stop_str
            if stop in text:
                cut = text[: text.index(stop) + len(stop)]
                return Sample(cut, tokens(text[: text.index(stop)]), "stop", stop, logprobs=_logprobs(cut, spec))
        return Sample(text, tokens(text), finish, logprobs=_logprobs(text, spec))

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        self.calls.append((list(prompts), spec))
        self._started()
        try:
            await self._pass_gate()
            return [[self._sample(p, i, spec) for i in range(spec.n)] for p in prompts]
        finally:
            self._ended()

    async def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        self.calls.append(([prompt], spec))
        index = self._streams.get(prompt, 0) if self.interleave else 0
        self._streams[prompt] = index + 1
        full = self._sample(prompt, index, spec)
        words = full.text.split(" ")
        self._started()
        sent = 0
        try:
            for k, word in enumerate(words):
                if k == 1:
                    await self._pass_gate()  # a stream under way: its first word is out
                if self.interleave:
                    await asyncio.sleep(0)
                last = k == len(words) - 1
                so_far = " ".join(words[: k + 1])
                piece = word if k == 0 else " " + word
                sent += 1
                yield Sample(
                    piece,
                    tokens(so_far),
                    full.finish_reason if last else None,
                    logprobs=None if spec.logprobs is None else word_logprobs(word, spec.logprobs, start=k),
                )
        finally:
            self.closed_early += sent < len(words)
            self._ended()

    async def wait_running(self, count: int = 1) -> None:
        """Return once ``count`` calls are running at once (at once if they already are)."""
        if self.running < count:
            done = asyncio.get_running_loop().create_future()
            self._waiters.append((count, done))
            await done

    # ---- the gate ------------------------------------------------------------------------------------------------
    async def _pass_gate(self) -> None:
        if self.gate is None:
            return
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self._check()
            raise

    def _started(self) -> None:
        self.running += 1
        self._check()

    def _ended(self) -> None:
        self.running -= 1
        self._check()

    def _check(self) -> None:
        if self.gate is not None and self.open_when is not None and self.open_when(self):
            self.gate.set()
        for count, done in list(self._waiters):
            if self.running >= count and not done.done():
                done.set_result(None)
        self._waiters[:] = [(c, d) for c, d in self._waiters if not d.done()]

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


class SeededEngine(FakeEngine):
    """The k-th sample of a call seeded s is the script's sample s + k (vLLM's parallel sampling seeds it s + k)."""

    async def generate(self, prompts, spec, request_id):
        self.calls.append((list(prompts), spec))
        return [[self._sample(p, (spec.seed or 0) + i, spec) for i in range(spec.n)] for p in prompts]


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


def arith_script(wrong: Callable[[str, int], bool] = lambda question, index: False) -> Script:
    """Solves the arith question in the prompt: the reference solution's steps after the ones the prompt's answer
    already holds (a rollout continues a prefix), its final answer 1000 too high where ``wrong(question, index)``."""
    from training.tasks.arith import parse_question, reference_solution

    def script(prompt: str, index: int) -> str:
        question = ARITH_QUESTION.search(prompt).group(0)
        steps = reference_solution(*parse_question(question)).split("\n\n")
        if wrong(question, index):
            answer = int(steps[-1].removeprefix("\\boxed{").removesuffix("}"))
            steps[-1] = "\\boxed{" + str(answer + 1000) + "}"
        answer = re.split(r"assistant(?:\|>\n|:)", prompt)[-1]  # the char tokenizer's template, or FakeTokenizer's
        return "\n\n".join(steps[answer.count("\n\n") :])

    return script


def fake_vllm_engines(
    monkeypatch: Any, script: Script | None = None, *, by_model: Callable[[str], Script] | None = None
) -> list[tuple[str, dict[str, Any], FakeEngine]]:
    """Make ``VLLMEngine.create`` start a :class:`FakeEngine` answering by ``script`` (or ``by_model(model path)``),
    with the checkpoint's own tokenizer (its chat template renders the prompts). Returns the (model, arguments,
    engine) of each engine started, in order."""
    import server.engine.vllm_engine as vllm_engine

    started: list[tuple[str, dict[str, Any], FakeEngine]] = []

    async def create(model: str, **kwargs: Any) -> FakeEngine:
        from transformers import AutoTokenizer

        answer = by_model(str(model)) if by_model is not None else script
        assert answer is not None, "fake_vllm_engines needs a script or by_model"
        engine = FakeEngine(answer, tokenizer=AutoTokenizer.from_pretrained(model))
        started.append((str(model), kwargs, engine))
        return engine

    monkeypatch.setattr(vllm_engine.VLLMEngine, "create", create)
    return started
