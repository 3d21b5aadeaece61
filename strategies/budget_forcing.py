"""Budget forcing: an :class:`~strategies.base.Engine` decorator that keeps a reasoning model thinking.

Muennighoff et al. 2025, "s1: Simple test-time scaling" (arXiv:2501.19393), section 3.1: when the model ends its
thinking too early, the end-of-thinking delimiter is suppressed and "Wait" is appended to what it wrote, so that it
goes on reasoning (and often fixes its answer). Wrapping the policy in :class:`BudgetForcing` applies this to every
strategy, since a strategy sees the policy only through the ``Engine`` port.

A sample's *thinking* is its text before ``end_marker`` (``"</think>"`` for R1-style models); its length is
``count_tokens`` of that sampled text, the prompt's tokens not counted (a step-level call is judged on its own
step). When a sample contains the marker and its thinking is below ``min_thinking_tokens``, the text is cut just
before the marker, ``wait`` is appended and the sample is continued from ``prompt + kept text``, with ``max_tokens``
lowered by what it spent; this repeats until the thinking reaches the minimum, ``max_rounds`` continuations were
made, or the budget would not leave the continuation one token. A sample without the marker (it stopped while still
thinking, or a step-level call stopped at its step delimiter first) is returned untouched, the same object.

Choices made here, as the paper leaves them open:

- ``wait`` is appended to the cut text as it is, as s1's code does (``prompt += text + "Wait"``): no newline or
  space is added. Thinking usually ends in a newline before the marker, so "Wait" starts a line; pass
  ``wait="\\nWait"`` to force one.
- The thinking is measured on everything sampled so far before the marker, earlier rounds and inserted waits
  included, as s1 counts its thinking tokens.
- A continued sample's ``num_tokens`` is every token the inner engine reported for each of its rounds (the ones of
  a cut marker and of the answer written after it included: they were generated) plus ``count_tokens(wait)`` per
  inserted wait; so it is what the sample cost, never more than ``max_tokens``, and may exceed the tokens of its
  text. Its ``finish_reason`` and ``stop_reason`` are the last round's; its log-probabilities
  (``cumulative_logprob``, ``token_logprobs``) are None, since the waits were not sampled and the cut tokens are
  not in the text. Streamed deltas carry none after the first wait, nor where text was held back.
- All the continuations of one round, across every prompt and sample, go to the inner engine in one ``generate``
  call (``n=1``, one prompt per continued sample, request id ``f"{request_id}-bf{round}"`` so that aborting
  ``request_id`` covers them): a batch costs at most ``max_rounds`` extra engine calls. That call has one
  ``max_tokens`` for all, the smallest budget any of them has left; a continuation this cut short (it stopped for
  length at that ``max_tokens`` while its own budget had more) is resumed, without a wait, in the next round while
  rounds remain.
- A greedy engine may return one ``Sample`` object standing for ``n`` identical samples: it is continued once and
  the result stands for all of them again.
- The non-streaming path generates the whole of each round, the answer after a premature marker included, and
  discards what follows the marker; :meth:`BudgetForcing.stream` stops the inner stream at the marker, so it spends
  fewer tokens and may, where the budget binds, continue further than :meth:`BudgetForcing.generate`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from strategies.base import Engine, Sample, SamplingSpec

DEFAULT_WAIT = "Wait"  # s1's ignore string
DEFAULT_MAX_ROUNDS = 8


@dataclass
class _Thread:
    """One sample being extended: its text so far and what it has cost."""

    prompt: str
    original: Sample
    text: str
    spent: int  # tokens the inner engine reported for every round, plus the inserted waits
    last: Sample  # the latest round's sample: its finish and stop reasons are the result's
    extended: bool = False
    capped: bool = False  # the last continuation stopped at the round's shared max_tokens, below its own budget
    _result: Sample | None = None

    def result(self) -> Sample:
        if not self.extended:
            return self.original
        if self._result is None:  # one object, however many positions the original stood for
            self._result = Sample(self.text, self.spent, self.last.finish_reason, self.last.stop_reason)
        return self._result


class BudgetForcing:
    """An :class:`Engine` that makes the policy think at least ``min_thinking_tokens`` before ``end_marker``.

    ``count_tokens``: the tokens of a text (the policy's tokenizer, e.g. the engine's own ``count_tokens``).
    ``min_thinking_tokens=0`` (or ``max_rounds=0``) makes it a transparent pass-through. Every other attribute
    (``count_tokens``, ``max_model_len``, ``healthy`` ...) is the inner engine's.
    """

    def __init__(
        self,
        engine: Engine,
        end_marker: str,
        min_thinking_tokens: int,
        count_tokens: Callable[[str], int],
        wait: str = DEFAULT_WAIT,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
    ) -> None:
        if not end_marker:
            raise ValueError("end_marker must not be empty")
        if min_thinking_tokens < 0:
            raise ValueError("min_thinking_tokens must be at least 0")
        if max_rounds < 0:
            raise ValueError("max_rounds must be at least 0")
        if end_marker in wait or _marker_prefix(wait, end_marker):
            raise ValueError("wait must neither contain end_marker nor end with its beginning")
        self._engine = engine
        self.end_marker, self.min_thinking_tokens, self.wait, self.max_rounds = (
            end_marker,
            min_thinking_tokens,
            wait,
            max_rounds,
        )
        self._count_tokens = count_tokens
        self._wait_tokens = count_tokens(wait)

    @property
    def forcing(self) -> bool:
        """False when this engine passes everything through unchanged."""
        return self.min_thinking_tokens > 0 and self.max_rounds > 0

    def _forced(self, text: str, spent: int, max_tokens: int) -> str | None:
        """``text`` cut before its marker with the wait appended, if its thinking is short and the budget leaves the
        continuation a token; else None."""
        at = text.find(self.end_marker)
        if at < 0 or not self._short(text[:at], spent, max_tokens):
            return None
        return text[:at] + self.wait

    def _short(self, thinking: str, spent: int, max_tokens: int) -> bool:
        """Whether ``thinking`` is below the minimum and a wait still leaves the continuation a token."""
        return spent + self._wait_tokens < max_tokens and self._count_tokens(thinking) < self.min_thinking_tokens

    # ---- Engine protocol ---------------------------------------------------------------------------------------
    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        outputs = await self._engine.generate(prompts, spec, request_id)
        if not self.forcing:
            return outputs
        threads: dict[int, _Thread] = {}
        for prompt, samples in zip(prompts, outputs, strict=True):
            for sample in samples:
                threads.setdefault(id(sample), _Thread(prompt, sample, sample.text, sample.num_tokens, sample))
        active = list(threads.values())  # the threads the last round changed: only they may go on
        for round_ in range(1, self.max_rounds + 1):
            todo = []
            for thread in active:
                if thread.last.finish_reason == "abort":
                    continue
                forced = self._forced(thread.text, thread.spent, spec.max_tokens)
                if forced is not None:
                    thread.text, thread.spent, thread.extended = forced, thread.spent + self._wait_tokens, True
                    todo.append(thread)
                elif thread.capped and thread.spent < spec.max_tokens:
                    todo.append(thread)  # cut short by a smaller budget shared with the round: resume it
            if not todo:
                break
            cap = min(spec.max_tokens - thread.spent for thread in todo)
            continued = await self._engine.generate(
                [t.prompt + t.text for t in todo], replace(spec, n=1, max_tokens=cap), f"{request_id}-bf{round_}"
            )
            for thread, (sample, *_) in zip(todo, continued, strict=True):
                thread.text += sample.text
                thread.spent += sample.num_tokens
                thread.last = sample
                thread.capped = sample.finish_reason == "length" and sample.num_tokens >= cap
            active = todo
        return [[threads[id(sample)].result() for sample in samples] for samples in outputs]

    async def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        """The inner stream's deltas; a premature marker is never yielded: the text before it and the wait are, and
        a new inner stream goes on from ``prompt`` + the text so far. ``num_tokens`` stays cumulative."""
        if not self.forcing:
            async for delta in self._engine.stream(prompt, spec, request_id):
                yield delta
            return
        # What was yielded so far never ends with the beginning of the marker (that much is held back, and the
        # wait does not end so), so a marker is always whole in the text not yet yielded: only that is searched.
        parts: list[str] = []  # the text yielded so far
        spent = 0  # the tokens of finished rounds and of the waits
        for round_ in range(self.max_rounds + 1):
            rid = request_id if round_ == 0 else f"{request_id}-bf{round_}"
            inner = self._engine.stream(prompt + "".join(parts), replace(spec, max_tokens=spec.max_tokens - spent), rid)
            held, forced, watching = "", None, round_ < self.max_rounds  # held: this round's text not yielded yet
            tokens, out = spent, []
            try:
                async for delta in inner:
                    fresh = not held  # nothing held back before this delta: it may go out as it is
                    tokens, held = spent + delta.num_tokens, held + delta.text
                    if watching and delta.finish_reason != "abort":
                        at = held.find(self.end_marker)
                        if at >= 0:
                            if self._short("".join(parts) + held[:at], tokens, spec.max_tokens):
                                forced, spent = held[:at] + self.wait, tokens + self._wait_tokens
                                break  # close the inner stream before anything more is yielded
                            watching = False  # thinking done (or no budget left): the rest passes through
                        elif delta.finish_reason is None:
                            emit = held[: len(held) - _marker_prefix(held, self.end_marker)]
                            if emit:
                                yield _delta(delta, emit, tokens, fresh and round_ == 0)
                                parts.append(emit)
                                held = held[len(emit) :]
                            continue
                    if held or delta.finish_reason is not None:
                        yield _delta(delta, held, tokens, fresh and round_ == 0)
                    parts.append(held)
                    held = ""
                else:
                    if held:  # an inner stream that ended without a finish_reason
                        out.append(Sample(held, tokens, None))
            finally:
                await _close(inner)
            for sample in out:
                yield sample
            if forced is None:
                return
            yield Sample(forced, spent, None)
            parts.append(forced)

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def __getattr__(self, name: str) -> Any:  # count_tokens, max_model_len, ...: the engine's own
        if name == "_engine":
            raise AttributeError(name)
        return getattr(self._engine, name)


def _marker_prefix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker``: what must be held back.

    >>> _marker_prefix("so x = 2\\n</thi", "</think>")
    5
    >>> _marker_prefix("so x = 2", "</think>")
    0
    """
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _delta(inner: Sample, text: str, num_tokens: int, as_is: bool) -> Sample:
    """What to yield for ``text`` out of the inner delta ``inner``: the delta itself where it is unchanged (``as_is``:
    round 0, nothing held back before it), else a new one without log-probabilities."""
    if as_is and text == inner.text:
        return inner
    return Sample(text, num_tokens, inner.finish_reason, inner.stop_reason)


async def _close(stream: AsyncIterator[Sample]) -> None:
    """Stop an inner stream; the engines abort its request when their generator closes."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
