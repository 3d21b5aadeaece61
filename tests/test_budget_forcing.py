"""Budget forcing (s1, arXiv:2501.19393) as an Engine decorator, on a scripted engine: one token per word."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from strategies.base import Engine, Sample, SamplingSpec
from strategies.budget_forcing import BudgetForcing

MARK = "</think>"
SPEC = SamplingSpec(max_tokens=100)


def words(text: str) -> int:
    """The scripted engine's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@dataclass
class Scripted:
    """Answers ``script(prompt, index)`` cut to ``max_tokens`` words (and at a stop string); records every call.

    Streams its text ``chunk`` characters at a time, so a marker may arrive split over deltas. ``greedy``: at
    temperature 0, one Sample object stands for all n, as the vLLM adapter returns them.
    """

    script: Callable[[str, int], str]
    chunk: int = 3
    greedy: bool = False
    max_model_len: int = 4096
    calls: list[tuple[list[str], SamplingSpec, str]] = field(default_factory=list)
    closed: int = 0  # streams closed before their last delta
    aborted: list[str] = field(default_factory=list)

    def _sample(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
        text, finish, stop_reason = self.script(prompt, index), "stop", None
        cut = [m.end() for m in re.finditer(r"\S+", text)]
        if len(cut) > spec.max_tokens:
            text, finish = text[: cut[spec.max_tokens - 1]], "length"
        for stop in spec.stop:
            if stop in text:
                text, finish, stop_reason = text[: text.index(stop) + len(stop)], "stop", stop
        return Sample(text, words(text), finish, stop_reason, -1.0, ((len(text), -1.0),))

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        self.calls.append((list(prompts), spec, request_id))
        if self.greedy and spec.temperature == 0.0:
            return [[self._sample(p, 0, spec)] * spec.n for p in prompts]
        return [[self._sample(p, i, spec) for i in range(spec.n)] for p in prompts]

    async def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        self.calls.append(([prompt], spec, request_id))
        full = self._sample(prompt, 0, spec)
        ends = list(range(self.chunk, len(full.text), self.chunk)) + [len(full.text)]
        finished, start = False, 0
        try:
            for end in ends[:-1]:
                yield Sample(full.text[start:end], words(full.text[:end]), None, None, -0.5 * end)
                start = end
            yield Sample(
                full.text[start:], full.num_tokens, full.finish_reason, full.stop_reason, -0.5 * len(full.text)
            )
            finished = True
        finally:
            if not finished:
                self.closed += 1

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


def thinking(*lengths: int) -> Callable[[str, int], str]:
    """Round k (k waits in the prompt) thinks ``lengths[k]`` words (the last length after that), then answers."""

    def script(prompt: str, index: int) -> str:
        k = prompt.count("Wait")
        text = " ".join(["hmm"] * lengths[min(k, len(lengths) - 1)] + [MARK, "42"])
        return "\n" + text if k else text

    return script


def forcing(engine: Engine, minimum: int, **kwargs) -> BudgetForcing:
    return BudgetForcing(engine, end_marker=MARK, min_thinking_tokens=minimum, count_tokens=words, **kwargs)


def ids(engine: Scripted) -> list[str]:
    return [request_id for _, _, request_id in engine.calls]


async def test_short_thinking_is_forced() -> None:
    engine = Scripted(thinking(2, 5))
    [[sample]] = await forcing(engine, 4).generate(["Q:"], SPEC, "req")
    assert sample.text == "hmm hmm Wait\nhmm hmm hmm hmm hmm </think> 42"  # s1: the cut text + "Wait"
    assert sample.num_tokens == 4 + 1 + 7  # round 0 (its cut "</think> 42" included), the wait, round 1
    assert (sample.finish_reason, sample.stop_reason) == ("stop", None)
    assert sample.cumulative_logprob is None and sample.token_logprobs is None
    (_, first, _), (prompts, spec, _) = engine.calls
    assert first == SPEC
    assert prompts == ["Q:hmm hmm Wait"] and (spec.n, spec.max_tokens) == (1, 100 - 5)
    assert ids(engine) == ["req", "req-bf1"]


async def test_long_thinking_is_left_alone() -> None:
    engine = Scripted(thinking(6))
    inner = await engine.generate(["Q:"], SPEC, "x")
    engine.calls.clear()
    [[sample]] = await forcing(engine, 6).generate(["Q:"], SPEC, "req")
    assert sample == inner[0][0] and len(engine.calls) == 1


async def test_rounds_repeat_until_the_minimum() -> None:
    engine = Scripted(thinking(1))  # after r waits the thinking is 2r + 1 words: hmm (Wait hmm)*r
    [[sample]] = await forcing(engine, 5).generate(["Q:"], SPEC, "req")
    assert sample.text == "hmm Wait\nhmm Wait\nhmm </think> 42"
    assert sample.num_tokens == 3 + 1 + 3 + 1 + 3
    assert ids(engine) == ["req", "req-bf1", "req-bf2"]


async def test_max_rounds_bounds_the_continuations() -> None:
    engine = Scripted(thinking(1))
    [[sample]] = await forcing(engine, 1000, max_rounds=3).generate(["Q:"], SPEC, "req")
    assert sample.text == "hmm Wait\nhmm Wait\nhmm Wait\nhmm </think> 42"  # the last round's marker stays
    assert ids(engine) == ["req", "req-bf1", "req-bf2", "req-bf3"]


async def test_max_tokens_holds_across_rounds() -> None:
    engine = Scripted(thinking(1))
    [[sample]] = await forcing(engine, 1000).generate(["Q:"], SamplingSpec(max_tokens=10), "req")
    # 3 tokens + wait, 3 + wait, then 2 left: "\nhmm </think>", and no room for another wait
    assert [spec.max_tokens for _, spec, _ in engine.calls] == [10, 6, 2]
    assert sample.text == "hmm Wait\nhmm Wait\nhmm </think>"
    assert (sample.num_tokens, sample.finish_reason) == (10, "length")


async def test_no_room_for_the_wait_no_forcing() -> None:
    engine = Scripted(thinking(1))
    [[sample]] = await forcing(engine, 1000).generate(["Q:"], SamplingSpec(max_tokens=4), "req")
    assert sample.text == "hmm </think> 42" and len(engine.calls) == 1  # 3 + 1 leaves the continuation nothing


async def test_one_inner_call_per_round_for_every_prompt_and_sample() -> None:
    def script(prompt: str, index: int) -> str:
        if "Wait" in prompt:
            return "\nhmm hmm </think> 42"
        return f"{'hmm ' * 6 if (prompt, index) == ('A:', 0) else f'h{index} '}</think> 42"

    engine = Scripted(script)
    spec = SamplingSpec(n=3, max_tokens=50, temperature=0.7, stop=("\n\n",), seed=7)
    out = await forcing(engine, 4).generate(["A:", "B:"], spec, "req")
    assert len(engine.calls) == 2  # the five short samples continue in one call
    prompts, round_spec, request_id = engine.calls[1]
    assert prompts == ["A:h1 Wait", "A:h2 Wait", "B:h0 Wait", "B:h1 Wait", "B:h2 Wait"]
    assert round_spec == SamplingSpec(n=1, max_tokens=50 - 3 - 1, temperature=0.7, stop=("\n\n",), seed=7)
    assert request_id == "req-bf1"
    assert out[0][0].text == "hmm " * 6 + "</think> 42" and out[0][0].cumulative_logprob == -1.0  # untouched
    assert [s.text for s in out[1]] == [f"h{i} Wait\nhmm hmm </think> 42" for i in range(3)]


async def test_a_continuation_cut_by_the_shared_budget_resumes() -> None:
    story = "\n" + "hmm " * 8 + "</think> 42"  # what sample 1 writes after its wait

    def script(prompt: str, index: int) -> str:
        if prompt == "A:":
            return ["um </think> " + "x " * 10 + "42", "hmm </think> 42"][index]
        if prompt.startswith("A:um Wait"):
            return "\nok </think> 42"
        return story[len(prompt.removeprefix("A:hmm Wait")) :]  # go on from where it was cut

    engine = Scripted(script)
    [[first, second]] = await forcing(engine, 3).generate(["A:"], SamplingSpec(n=2, max_tokens=20), "req")
    # round 1 shares the smaller budget (20 - 13 - 1 = 6): sample 1 (16 left) is cut, then resumed without a wait
    assert [(len(prompts), spec.max_tokens) for prompts, spec, _ in engine.calls] == [(1, 20), (2, 6), (1, 10)]
    assert engine.calls[2][0] == ["A:hmm Wait\nhmm hmm hmm hmm hmm hmm"]
    assert (first.text, first.num_tokens) == ("um Wait\nok </think> 42", 13 + 1 + 3)
    assert (second.text, second.num_tokens) == ("hmm Wait" + story, 3 + 1 + 6 + 4)
    assert second.finish_reason == "stop"


async def test_samples_without_the_marker_are_untouched() -> None:
    def script(prompt: str, index: int) -> str:
        return ["step one\n\nstep two </think> 42", "hmm " * 20 + "</think> 42"][index]

    engine = Scripted(script)
    spec = SamplingSpec(n=2, max_tokens=5, stop=("\n\n",))
    inner = await engine.generate(["Q:"], spec, "x")
    engine.calls.clear()
    [[step, still_thinking]] = await forcing(engine, 1000).generate(["Q:"], spec, "req")
    assert step == inner[0][0] and step.stop_reason == "\n\n"  # stopped at its step delimiter first
    assert still_thinking == inner[0][1] and still_thinking.finish_reason == "length"
    assert len(engine.calls) == 1


async def test_greedy_samples_standing_for_n_continue_once() -> None:
    engine = Scripted(thinking(1, 5), greedy=True)
    [samples] = await forcing(engine, 3).generate(["Q:"], SamplingSpec(n=4, temperature=0.0), "req")
    assert engine.calls[1][0] == ["Q:hmm Wait"]
    assert all(s is samples[0] for s in samples) and samples[0].text.startswith("hmm Wait\n")


async def collect(engine: Engine, prompt: str = "Q:", spec: SamplingSpec = SPEC) -> list[Sample]:
    return [delta async for delta in engine.stream(prompt, spec, "req")]


@pytest.mark.parametrize("chunk", [1, 3, 5, 1000])
async def test_stream_never_yields_a_premature_marker(chunk: int) -> None:
    [[whole]] = await forcing(Scripted(thinking(1, 1, 4)), 5).generate(["Q:"], SPEC, "req")
    engine = Scripted(thinking(1, 1, 4), chunk=chunk)
    deltas = await collect(forcing(engine, 5))
    text = "".join(d.text for d in deltas)
    assert text == whole.text == "hmm Wait\nhmm Wait\nhmm hmm hmm hmm </think> 42"
    shown = ""
    for delta in deltas:
        shown += delta.text
        if MARK in shown:
            assert words(shown[: shown.index(MARK)]) >= 5  # only the final round's marker ever appears
    assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["stop"]
    counts = [d.num_tokens for d in deltas]
    assert counts == sorted(counts) and counts[-1] <= whole.num_tokens  # the stream stops at the marker
    assert ids(engine) == ["req", "req-bf1", "req-bf2"]
    assert [p for (p,), _, _ in engine.calls] == ["Q:", "Q:hmm Wait", "Q:hmm Wait\nhmm Wait"]
    assert engine.closed == 2  # each forced round's inner stream was closed at its marker
    assert all(
        d.cumulative_logprob is None for d in deltas[next(i for i, d in enumerate(deltas) if "Wait" in d.text) :]
    )
    budgets = [spec.max_tokens for _, spec, _ in engine.calls]
    assert budgets[0] == 100 and budgets[0] > budgets[1] > budgets[2]


async def test_stream_max_rounds_and_budget() -> None:
    engine = Scripted(thinking(1), chunk=4)
    deltas = await collect(forcing(engine, 1000, max_rounds=2), spec=SamplingSpec(max_tokens=50))
    assert "".join(d.text for d in deltas) == "hmm Wait\nhmm Wait\nhmm </think> 42"
    assert ids(engine) == ["req", "req-bf1", "req-bf2"] and deltas[-1].num_tokens <= 50

    engine = Scripted(thinking(1), chunk=2)
    deltas = await collect(forcing(engine, 1000), spec=SamplingSpec(max_tokens=8))
    assert deltas[-1].num_tokens <= 8 and deltas[-1].finish_reason is not None
    assert all(spec.max_tokens >= 1 for _, spec, _ in engine.calls)


async def test_stream_with_long_thinking_passes_the_text_through() -> None:
    inner = await collect(Scripted(thinking(6)))
    engine = Scripted(thinking(6))
    deltas = await collect(forcing(engine, 6))
    assert deltas[:8] == inner[:8]  # the inner deltas themselves, until "</t" may begin the marker: held back
    assert (deltas[8].text, deltas[8].cumulative_logprob) == ("</think> ", None)
    assert "".join(d.text for d in deltas) == "".join(d.text for d in inner)
    assert deltas[-1] == inner[-1] and engine.closed == 0 and ids(engine) == ["req"]


async def test_stream_closed_by_its_reader_closes_the_inner_stream() -> None:
    engine = Scripted(thinking(1, 1, 4), chunk=1)
    stream = forcing(engine, 5).stream("Q:", SPEC, "req")
    shown = ""
    async for delta in stream:
        if "Wait" in shown:  # round 1's stream is running
            break
        shown += delta.text
    await stream.aclose()
    assert engine.closed == 2 and ids(engine) == ["req", "req-bf1"]


@pytest.mark.parametrize("options", [{"min_thinking_tokens": 0}, {"max_rounds": 0}])
async def test_pass_through(options: dict[str, int]) -> None:
    engine = Scripted(thinking(1))
    bf = BudgetForcing(engine, **{"end_marker": MARK, "min_thinking_tokens": 10, "count_tokens": words} | options)
    [[sample]] = await bf.generate(["Q:"], SPEC, "req")
    assert sample.text == "hmm </think> 42" and sample.cumulative_logprob == -1.0
    assert await collect(bf) == await collect(Scripted(thinking(1)))
    assert ids(engine) == ["req", "req"] and engine.closed == 0


async def test_abort_and_attributes_are_the_inner_engines() -> None:
    engine = Scripted(thinking(1))
    bf = forcing(engine, 5)
    await bf.abort("req")
    assert engine.aborted == ["req"] and bf.max_model_len == 4096
    assert isinstance(bf, Engine)


@pytest.mark.parametrize(
    "options",
    [{"end_marker": ""}, {"min_thinking_tokens": -1}, {"max_rounds": -1}, {"wait": "Wait</think>"}, {"wait": "</"}],
)
def test_bad_settings_are_refused(options: dict) -> None:
    with pytest.raises(ValueError):
        BudgetForcing(
            Scripted(thinking(1)), **{"end_marker": MARK, "min_thinking_tokens": 5, "count_tokens": words} | options
        )


@pytest.mark.parametrize("chunk", [1, 2, 7])
async def test_stream_releases_what_only_looked_like_the_marker(chunk: int) -> None:
    def script(prompt: str, index: int) -> str:
        return "a </thing> b </ c </think> 42"

    engine = Scripted(script, chunk=chunk)
    deltas = await collect(forcing(engine, 3))
    assert "".join(d.text for d in deltas) == script("Q:", 0) and ids(engine) == ["req"]
