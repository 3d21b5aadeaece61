"""``deepconf`` (strategies/deepconf.py) on the scripted engine: the threshold the warm-up sets, traces stopped in the
engine for low confidence or by the consensus, the offline filter, the confidence-weighted vote, what it cost."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace

import httpx
import pytest

import strategies
from server.accounting import CountingEngine, Ledger
from server.app import create_app
from server.config import ServerConfig
from strategies.base import Sample, SamplingSpec, Task, TokenLogprob
from strategies.deepconf import DeepConfConfig
from tests.fakes import FakeEngine

Confidence = Callable[[int], float]  # a token's position -> its token confidence


def answer(words: int, value: str) -> str:
    """A solution of ``words`` fake tokens ending with ``\\boxed{value}``."""
    return " ".join(["step"] * (words - 1) + [f"\\boxed{{{value}}}"])


@dataclass
class Plan:
    """One scripted sample: its text and each token's confidence (a number: the same at every position)."""

    text: str
    confidence: float | Confidence


@dataclass
class ConfidentEngine(FakeEngine):
    """FakeEngine (interleaved streams) whose sample i is ``plans[i]``, each token's top-k logprobs all -c, so that
    its token confidence is c at any k."""

    plans: list[Plan] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.interleave = True

    def confidence(self, index: int, position: int) -> float:
        c = self.plans[index].confidence
        return c(position) if callable(c) else c

    def token(self, index: int, position: int, piece: str, top: int) -> TokenLogprob:
        c = self.confidence(index, position)
        return TokenLogprob(piece, -c, tuple((f"t{k}", -c) for k in range(top)))

    def _sample(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
        sample = super()._sample(prompt, index, spec)
        if spec.logprobs is None:
            return sample
        tokens = tuple(self.token(index, k, t.token, spec.logprobs) for k, t in enumerate(sample.logprobs or ()))
        return replace(sample, logprobs=tokens)

    async def stream(self, prompt, spec, request_id):
        index, position = self._streams.get(prompt, 0), 0
        async with aclosing(super().stream(prompt, spec, request_id)) as inner:
            async for delta in inner:
                if delta.logprobs is not None:
                    tokens = [
                        self.token(index, position + k, t.token, spec.logprobs) for k, t in enumerate(delta.logprobs)
                    ]
                    position += len(tokens)
                    delta = replace(delta, logprobs=tuple(tokens))
                yield delta


def make_engine(*plans: Plan) -> ConfidentEngine:
    return ConfidentEngine(lambda prompt, i: plans[i].text, plans=list(plans))


def make_task(**kw) -> Task:
    base = dict(prompt="user: q\nassistant:", question="q", max_tokens=64, temperature=None, top_p=1.0, seed=3)
    return Task(**(base | kw))


async def run(engine: FakeEngine, task: Task | None = None, **params):
    spec = strategies.get("deepconf")
    ledger = Ledger(token_budget=10_000)
    result = await spec.fn(task or make_task(), spec.config_cls(**params), CountingEngine(engine, ledger, "t"), None)
    return result, ledger


def chosen_answer(result) -> str:
    return result.choices[0].answer


# ---- online ---------------------------------------------------------------------------------------------------------
async def test_the_warmup_sets_the_threshold_and_four_that_agree_decide_the_vote():
    engine = make_engine(*(Plan(answer(8, "4"), c) for c in (1.0, 2.0, 3.0, 4.0)), Plan(answer(8, "9"), 9.0))
    result, ledger = await run(engine)
    extra = result.extra
    assert extra["threshold"] == pytest.approx(1.3)  # the 10th percentile of 1, 2, 3, 4 (keep 0.9, DeepConf-high)
    assert extra["decided"] is True and extra["vote_share"] == 1.0
    assert (extra["warmup"], extra["launched"], extra["drawn"]) == (4, 0, 4)  # 4 of the 16: nothing more launched
    assert extra["votes"] == [{"answer": "4", "weight": 10.0, "count": 4}]
    assert ledger.engine_calls == 4 and ledger.completion_tokens == 32 == extra["completion_tokens"]
    assert [spec.logprobs for _, spec in engine.calls] == [20] * 4  # top-20, each trace its own request
    assert [spec.seed for _, spec in engine.calls] == [3, 4, 5, 6] and all(s.n == 1 for _, s in engine.calls)
    assert [c.score for c in result.candidates] == [1.0, 2.0, 3.0, 4.0]
    assert chosen_answer(result) == "4" and engine.closed_early == 0


async def test_deepconf_low_sets_the_threshold_at_the_90th_percentile():
    engine = make_engine(*(Plan(answer(8, "4"), c) for c in (1.0, 2.0, 3.0, 4.0)))
    result, _ = await run(engine, keep=0.1)
    assert result.extra["threshold"] == pytest.approx(3.7)


def split_warmup() -> list[Plan]:
    """Four warm-up traces that disagree: "4" weighs 5 + 6, "5" 7, "6" 8; the 10th percentile is 5.3."""
    return [Plan(answer(8, "4"), 5.0), Plan(answer(8, "4"), 6.0), Plan(answer(8, "5"), 7.0), Plan(answer(8, "6"), 8.0)]


async def test_a_trace_whose_window_falls_below_the_threshold_is_stopped_in_the_engine():
    # confidence 9 for 20 tokens, then 1: the mean of the last 16 is 9 - m / 2 with m low tokens in it, below 5.3
    # from m = 8 on, i.e. at the 28th token
    falling = Plan(answer(40, "4"), lambda position: 9.0 if position < 20 else 1.0)
    engine = make_engine(*split_warmup(), falling)
    result, ledger = await run(engine, num_samples=5, parallel=1)
    extra = result.extra
    stopped = result.candidates[4]
    assert (stopped.finish_reason, stopped.num_tokens, stopped.answer) == ("abort", 28, None)
    assert engine.closed_early == 1  # its engine request was aborted
    assert (extra["stopped_low_confidence"], extra["stopped_consensus"], extra["launched"]) == (1, 0, 1)
    assert extra["decided"] is False and extra["threshold"] == pytest.approx(5.3)
    assert ledger.completion_tokens == 4 * 8 + 28 and ledger.engine_calls == 5
    assert extra["tokens"] == {"warmup": 32, "later": 28, "stopped": 28}
    assert [v["answer"] for v in extra["votes"]] == ["4", "6", "5"]  # by weight: 11, 8, 7; the stopped one no vote
    assert extra["votes"][0]["count"] == 2 and chosen_answer(result) == "4"


async def test_a_window_must_be_full_to_stop_a_trace_and_a_short_unconfident_one_does_not_vote():
    engine = make_engine(*split_warmup(), Plan(answer(10, "6"), 1.0))  # 10 tokens < the window of 16
    result, ledger = await run(engine, num_samples=5, parallel=1)
    short = result.candidates[4]
    assert (short.finish_reason, short.num_tokens, short.score) == ("stop", 10, 1.0)
    assert engine.closed_early == 0 and result.extra["stopped_low_confidence"] == 0
    assert result.extra["filtered"] == 1  # scored below 5.3 once finished: it does not vote
    assert {v["answer"]: v["count"] for v in result.extra["votes"]} == {"4": 2, "5": 1, "6": 1}
    assert ledger.completion_tokens == 42


async def test_the_consensus_stops_what_still_runs_and_launches_nothing_more():
    # warm-up: "4" weighs 30, "5" 3 (share 0.909); each later "4" of weight 10 adds: 0.930, 0.943, 0.952 >= 0.95
    warm = [Plan(answer(8, "4"), 10.0)] * 3 + [Plan(answer(8, "5"), 3.0)]
    later = [Plan(answer(8, "4"), 10.0)] * 3 + [Plan(answer(30, "4"), 10.0)] * 13
    engine = make_engine(*warm, *later)
    result, ledger = await run(engine, num_samples=16, parallel=4, return_trace=True)
    extra = result.extra
    # 4, 5, 6, 7 launched; 4 and 5 ended and each launched one more (8, 9); 6 decided it: 7, 8, 9 were stopped
    assert extra["drawn"] == 10 < 16 and extra["launched"] == 6 and extra["decided"] is True
    assert extra["stopped_consensus"] == 3 and extra["stopped_low_confidence"] == 0 and engine.closed_early == 3
    aborted = [c for c in result.candidates if c.finish_reason == "abort"]
    assert len(aborted) == 3 and all(0 < c.num_tokens < 30 and c.answer is None for c in aborted)
    assert ledger.engine_calls == 10
    assert ledger.completion_tokens == 7 * 8 + sum(c.num_tokens for c in aborted) == extra["completion_tokens"]
    assert extra["tokens"]["stopped"] == sum(c.num_tokens for c in aborted)
    assert extra["votes"] == [{"answer": "4", "weight": 60.0, "count": 6}, {"answer": "5", "weight": 3.0, "count": 1}]
    rows = extra["traces"]
    assert [r["stopped_by"] for r in rows[7:]] == ["consensus"] * 3 and [r["warmup"] for r in rows[3:5]] == [
        True,
        False,
    ]
    assert [r["votes"] for r in rows] == [True] * 7 + [False] * 3


async def test_the_weighted_vote_outweighs_a_plain_majority_and_the_budget_caps_the_warmup():
    engine = make_engine(Plan(answer(9, "5"), 2.0), Plan(answer(8, "5"), 2.0), Plan(answer(8, "4"), 10.0))
    result, ledger = await run(engine, num_samples=3)  # warm-up 4 > N: all 3 traces are the warm-up
    assert chosen_answer(result) == "4"  # 10 against 2 + 2
    assert result.extra["votes"] == [
        {"answer": "4", "weight": 10.0, "count": 1},
        {"answer": "5", "weight": 4.0, "count": 2},
    ]
    assert result.extra["decided"] is False and result.extra["warmup"] == 3 and ledger.engine_calls == 3


async def test_the_shortest_finished_trace_of_the_winning_answer_is_returned():
    plans = [
        Plan(answer(12, "4"), 5.0),
        Plan(answer(9, "4"), 5.0),
        Plan(answer(7, "5"), 5.0),
        Plan(answer(8, "4"), 5.0),
    ]
    result, _ = await run(make_engine(*plans), num_samples=4)
    assert result.choices[0] is result.candidates[3] and result.candidates[3].chosen


async def test_the_clients_logprobs_are_asked_for_at_least_and_returned_at_their_number():
    plans = [Plan(answer(8, "4"), 2.0)] * 4
    engine = make_engine(*plans)
    result, _ = await run(engine, task=make_task(logprobs=2), top_k=5)
    assert [spec.logprobs for _, spec in engine.calls] == [5] * 4
    assert all(len(t.top) == 2 for t in result.choices[0].logprobs)
    engine = make_engine(*plans)
    result, _ = await run(engine, task=make_task(logprobs=8), top_k=5)
    assert [spec.logprobs for _, spec in engine.calls] == [8] * 4 and len(result.choices[0].logprobs[0].top) == 8
    result, _ = await run(make_engine(*plans), top_k=5)
    assert result.choices[0].logprobs is None  # the client asked for none


async def test_max_total_tokens_sizes_every_trace():
    engine = make_engine(*split_warmup(), *[Plan(answer(40, "4"), 9.0)] * 4)
    result, ledger = await run(engine, num_samples=8, max_total_tokens=160)
    assert {spec.max_tokens for _, spec in engine.calls} == {20}  # 160 // 8: all 8 would fit in full
    assert ledger.completion_tokens <= 160 and result.extra["drawn"] == 8


# ---- offline --------------------------------------------------------------------------------------------------------
async def test_offline_keeps_the_most_confident_share_and_votes_with_them():
    plans = [Plan(answer(8, "5"), 2.0)] * 7 + [Plan(answer(8, "4"), 9.0)] * 3
    engine = make_engine(*plans)
    result, ledger = await run(engine, mode="offline", num_samples=10, keep=0.3)
    assert len(engine.calls) == 1 and engine.calls[0][1].n == 10 and engine.calls[0][1].logprobs == 20
    extra = result.extra
    assert (extra["kept"], extra["filtered"], extra["threshold"]) == (3, 7, 9.0)
    assert extra["votes"] == [{"answer": "4", "weight": 27.0, "count": 3}]  # a plain majority would say 5
    assert chosen_answer(result) == "4" and ledger.completion_tokens == 80 and ledger.engine_calls == 1


async def test_offline_keep_one_is_a_confidence_weighted_vote_of_all():
    plans = [Plan(answer(8, "5"), 2.0)] * 3 + [Plan(answer(8, "4"), 7.0)]
    result, _ = await run(make_engine(*plans), mode="offline", num_samples=4, keep=1.0)
    assert chosen_answer(result) == "4" and result.extra["kept"] == 4  # 7 against 6
    assert math.isclose(result.extra["vote_share"], 7 / 13, abs_tol=1e-4)


# ---- the server -----------------------------------------------------------------------------------------------------
async def test_the_response_shows_the_aborted_traces_and_what_they_cost():
    falling = Plan(answer(40, "4"), lambda position: 9.0 if position < 20 else 1.0)
    engine = make_engine(*split_warmup(), falling)
    app = create_app(ServerConfig(model_name="tiny"), engine=engine)
    body = {
        "messages": [{"role": "user", "content": "q"}],
        "max_tokens": 64,
        "strategy": "deepconf",
        "strategy_params": {"num_samples": 5, "parallel": 1, "return_trace": True},
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder") as client:
        r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    ponder = r.json()["ponder"]
    assert [c["finish_reason"] for c in ponder["candidates"]] == ["stop"] * 4 + ["abort"]
    assert ponder["candidates"][4]["completion_tokens"] == 28 and ponder["engine_calls"] == 5
    assert ponder["trace"]["traces"][4]["stopped_by"] == "low confidence"
    assert r.json()["usage"]["completion_tokens"] == 60


# ---- configuration --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mode": "sometimes"}, "mode must be one of online, offline"),
        ({"warmup": 0}, "warmup must be at least 1"),
        ({"window": 0}, "window must be at least 1 token"),
        ({"top_k": 0}, "top_k must be between 1 and 20"),
        ({"top_k": 21}, "top_k must be between 1 and 20"),
        ({"keep": 0.0}, "keep must be above 0 and at most 1"),
        ({"keep": 1.5}, "keep must be above 0 and at most 1"),
        ({"consensus": 0.5}, "consensus must be above 0.5 and at most 1"),
        ({"parallel": 0}, "parallel must be at least 1"),
        ({"num_samples": 0}, "num_samples must be at least 1"),
    ],
)
def test_invalid_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        DeepConfConfig(**params)


def test_samples_at_once_and_the_budget():
    assert DeepConfConfig().samples_per_call() == (4, "warmup")
    assert DeepConfConfig(parallel=8).samples_per_call() == (8, "parallel")
    assert DeepConfConfig(mode="offline").samples_per_call() == (16, "num_samples")
    assert DeepConfConfig.budget_param == "num_samples" and DeepConfConfig().num_samples == 16
