"""``best_of_n`` with adaptive stopping (``stop_score``; the ``adaptive_best_of_n`` preset, after Manvi et al.
2024): the rounds drawn, where it stopped, what it chose and cost, on the scripted engine and reward model."""

from __future__ import annotations

import httpx
import pytest

import strategies
from server.accounting import CountingEngine, CountingScorer, Ledger
from server.app import create_app
from server.config import ServerConfig
from strategies.auto import AutoConfig
from strategies.base import Task
from strategies.best_of_n import BestOfNConfig
from tests.fakes import FakeScorer, SeededEngine

# sample k (the k-th of a seed-0 draw) is "s<k> | a<k>": 3 tokens; the reward model judges its last step
SAMPLES = tuple(f"s{k} | a{k}" for k in range(16))


def engine() -> SeededEngine:
    return SeededEngine(lambda prompt, k: SAMPLES[k % len(SAMPLES)])


def task(**kw) -> Task:
    base = {"prompt": "user: q\nassistant:", "question": "q", "max_tokens": 64, "temperature": None, "top_p": 1.0}
    return Task(**(base | {"seed": 0} | kw))


async def run(scores: dict[str, float], task_: Task | None = None, **params):
    fake, scorer, ledger = engine(), FakeScorer(scores, default=0.2), Ledger(token_budget=100_000)
    config = BestOfNConfig(step_delimiter="|", aggregation="last", **params)
    result = await strategies.get("best_of_n").fn(
        task_ or task(), config, CountingEngine(fake, ledger, "t"), CountingScorer(scorer, ledger, "t")
    )
    return result, fake, scorer, ledger


async def test_it_stops_after_the_round_in_which_a_sample_reaches_the_stop_score():
    result, fake, scorer, ledger = await run({"a5": 0.9, "a2": 0.4}, num_samples=16, stop_score=0.5)
    # two rounds of four: samples 0-3 (best 0.4, below 0.5), then 4-7 with seed 0 + 4, where sample 5 scores 0.9
    assert [(spec.n, spec.seed, spec.max_tokens) for _, spec in fake.calls] == [(4, 0, 64), (4, 4, 64)]
    assert [len(batch) for batch in scorer.calls] == [4, 4]
    assert [c.text for c in result.candidates] == list(SAMPLES[:8]) and result.choices[0].text == SAMPLES[5]
    assert (ledger.engine_calls, ledger.scorer_calls, ledger.completion_tokens) == (2, 2, 8 * 3)
    assert result.extra["adaptive_stop"] == {
        "stop_score": 0.5,
        "round_size": 4,
        "drawn": 8,
        "stopped_early": True,
        "rounds": [{"samples": 4, "best_score": 0.4}, {"samples": 8, "best_score": 0.9}],
    }


async def test_when_no_sample_is_good_enough_it_draws_all_n_and_returns_plain_best_of_ns_choice():
    scores = {"a9": 0.45, "a3": 0.3}
    adaptive, fake, _, ledger = await run(scores, num_samples=10, stop_score=0.5, round_size=4)
    assert [(spec.n, spec.seed) for _, spec in fake.calls] == [(4, 0), (4, 4), (2, 8)]  # the last round: what is left
    plain, plain_engine, _, _ = await run(scores, num_samples=10)
    assert [(spec.n, spec.seed) for _, spec in plain_engine.calls] == [(10, 0)]
    # the same ten samples in the same order, so the same choice: sample 9
    assert [c.text for c in adaptive.candidates] == [c.text for c in plain.candidates] == list(SAMPLES[:10])
    assert adaptive.choices[0].text == plain.choices[0].text == SAMPLES[9]
    assert adaptive.extra["adaptive_stop"]["stopped_early"] is False and ledger.completion_tokens == 30


async def test_each_round_is_seeded_the_requests_seed_plus_the_samples_before_it():
    _, fake, _, _ = await run({"a9": 0.9}, task_=task(seed=3), num_samples=12, stop_score=0.5)
    # with seed 3 the k-th sample of best-of-N's one call is script sample 3 + k: a9 is the 7th, in the second round
    assert [(spec.n, spec.seed) for _, spec in fake.calls] == [(4, 3), (4, 7)]


async def test_a_good_first_sample_ends_it_at_once_and_unseeded_requests_stay_unseeded():
    result, fake, _, ledger = await run({"a0": 0.7}, task_=task(seed=None), stop_score=0.6, round_size=1)
    assert [(spec.n, spec.seed) for _, spec in fake.calls] == [(1, None)]
    assert result.choices[0].text == SAMPLES[0] and ledger.completion_tokens == 3
    assert result.extra["adaptive_stop"]["rounds"] == [{"samples": 1, "best_score": 0.7}]


async def test_the_per_sample_budget_is_plain_best_of_ns_share_of_max_total_tokens():
    _, fake, _, _ = await run({}, num_samples=8, stop_score=0.9, max_total_tokens=16)
    assert [spec.max_tokens for _, spec in fake.calls] == [2, 2]  # 16 / 8 each, whatever the round


def test_the_preset_turns_it_on_and_plain_best_of_n_leaves_it_off():
    spec, params = strategies.resolve("adaptive_best_of_n")
    assert spec.name == "best_of_n" and params == {"stop_score": 0.5}
    assert BestOfNConfig().stop_score is None and BestOfNConfig().round_size == 4


@pytest.mark.parametrize(
    "params, says",
    [
        ({"round_size": 0}, "round_size"),
        ({"stop_score": float("nan")}, "stop_score"),
        ({"stop_score": 0.5, "rejection_tokens": 4}, "cannot be combined"),
    ],
)
def test_invalid_parameters_are_refused(params, says):
    with pytest.raises(ValueError, match=says):
        BestOfNConfig(**params)


async def test_under_auto_the_probe_is_the_first_round_and_is_not_drawn_or_scored_again():
    # auto's choice keeps the default step delimiter, so each sample is one step to the reward model
    fake, scorer, ledger = engine(), FakeScorer({SAMPLES[6]: 0.8}, default=0.2), Ledger(token_budget=100_000)
    choice = {"strategy": "adaptive_best_of_n", "params": {"num_samples": 16}}
    config = AutoConfig(choice=choice, probe_samples=4)
    result = await strategies.get("auto").fn(
        task(), config, CountingEngine(fake, ledger, "t"), CountingScorer(scorer, ledger, "t")
    )
    assert [(spec.n, spec.seed) for _, spec in fake.calls] == [(4, 0), (4, 4)]  # the probe, then samples 4-7
    assert [len(batch) for batch in scorer.calls] == [4, 4]
    why = result.extra["auto"]
    assert why["reused_probe_samples"] == 4 and why["reused_scores"] == 4
    assert result.choices[0].text == SAMPLES[6] and ledger.completion_tokens == 8 * 3


async def test_over_http_stop_score_returns_its_trace_and_a_bad_value_is_a_400():
    app = create_app(ServerConfig(model_name="tiny", reward_model_name="prm"), engine=engine(), scorer=FakeScorer())
    messages = [{"role": "user", "content": "q"}]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder") as client:

        async def chat(strategy, params):
            body = {"model": "tiny", "messages": messages, "strategy": strategy, "strategy_params": params}
            return await client.post("/v1/chat/completions", json=body | {"seed": 3})

        good = await chat("best_of_n", {"num_samples": 8, "stop_score": 0.5, "return_trace": True})
        bad = await chat("best_of_n", {"stop_score": 0.5, "round_size": 0})
    assert good.status_code == 200, good.text
    trace = good.json()["ponder"]["trace"]
    assert trace["adaptive_stop"]["drawn"] == 4 and trace["adaptive_stop"]["stopped_early"] is True  # 0.5 >= 0.5
    assert bad.status_code == 400 and "round_size" in bad.json()["error"]["message"]
