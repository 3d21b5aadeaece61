"""Strategy logic against a scripted engine and reward model: what was chosen and what it cost."""

from __future__ import annotations

import doctest

import pytest

import strategies
import strategies.aggregation
import strategies.answers
import strategies.sampling
from server.accounting import BudgetExceededError, CountingEngine, CountingScorer, Ledger
from strategies.base import SamplingSpec, Task
from tests.fakes import FakeEngine, FakeScorer


def make_task(**kw) -> Task:
    base = dict(prompt="user: q\nassistant:", question="q", max_tokens=64, temperature=None, top_p=1.0)
    return Task(**(base | kw))


def scripted(*texts: str):
    return lambda prompt, i: texts[i % len(texts)]


async def run(name: str, engine, scorer=None, task=None, **params):
    spec = strategies.get(name)
    ledger = Ledger(token_budget=10_000)
    eng = CountingEngine(engine, ledger, "t")
    sc = CountingScorer(scorer, ledger, "t") if scorer else None
    result = await spec.fn(task or make_task(), spec.config_cls(**params), eng, sc)
    return result, ledger


@pytest.mark.parametrize("module", [strategies.answers, strategies.sampling, strategies.aggregation])
def test_doctests(module):
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


async def test_best_of_n_picks_highest_reward_with_one_engine_and_one_scorer_call():
    texts = ("2 + 2 = 5\n\n\\boxed{5}", "2 + 2 = 4\n\n\\boxed{4}", "2 + 2 = 3\n\n\\boxed{3}", "guess\n\n\\boxed{7}")
    engine = FakeEngine(scripted(*texts))
    scorer = FakeScorer({"2 + 2 = 4": 0.9, "\\boxed{4}": 0.95, "\\boxed{5}": 0.2}, default=0.1)
    result, ledger = await run("best_of_n", engine, scorer, num_samples=4)
    assert [c.text for c in result.choices] == [texts[1]]
    assert result.choices[0].chosen and result.choices[0].score == pytest.approx(0.95)
    assert len(engine.calls) == 1 and engine.calls[0][1].n == 4  # one batched engine request for all N
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 4  # one batched scoring call
    assert scorer.calls[0][1] == ("q", ["2 + 2 = 4", "\\boxed{4}"])  # steps cut at the delimiter
    assert ledger.engine_calls == 1 and ledger.scorer_calls == 1
    assert ledger.completion_tokens == sum(len(t.split()) for t in texts)


async def test_best_of_n_aggregation_changes_the_choice():
    texts = ("bad\n\ngreat", "fine\n\nfine")
    scorer = FakeScorer({"bad": 0.1, "great": 0.99, "fine": 0.6})
    last, _ = await run("best_of_n", FakeEngine(scripted(*texts)), scorer, num_samples=2, aggregation="last")
    lowest, _ = await run("best_of_n", FakeEngine(scripted(*texts)), scorer, num_samples=2, aggregation="min")
    assert last.choices[0].text == texts[0]
    assert lowest.choices[0].text == texts[1]
    # Unset, the aggregation is the reward model's own (the likelihood PRM says min), else last.
    prefers_min = FakeScorer({"bad": 0.1, "great": 0.99, "fine": 0.6})
    prefers_min.aggregation = "min"
    chosen, _ = await run("best_of_n", FakeEngine(scripted(*texts)), prefers_min, num_samples=2)
    plain, _ = await run("best_of_n", FakeEngine(scripted(*texts)), scorer, num_samples=2)
    assert (chosen.choices[0].text, plain.choices[0].text) == (texts[1], texts[0])


async def test_weighted_best_of_n_sums_scores_per_equivalent_answer():
    texts = ("a\n\n\\boxed{0.5}", "b\n\n\\boxed{1/2}", "c\n\n\\boxed{\\frac{1}{2}}", "d\n\n\\boxed{9}")
    scorer = FakeScorer({"\\boxed{9}": 0.8, "\\boxed{0.5}": 0.3, "\\boxed{1/2}": 0.35, "\\boxed{\\frac{1}{2}}": 0.3})
    result, ledger = await run("weighted_best_of_n", FakeEngine(scripted(*texts)), scorer, num_samples=4)
    assert result.choices[0].text == texts[1]  # the 1/2 group weighs 0.95 > 0.8; its best member is chosen
    weights = {row["answer"]: row["weight"] for row in result.extra["answers"]}
    assert weights["0.5"] == pytest.approx(0.95) and weights["9"] == pytest.approx(0.8)
    assert ledger.engine_calls == 1 and ledger.scorer_calls == 1


async def test_self_consistency_majority_without_reward_model():
    texts = (
        "long way\n\nso the answer is 12.",
        "x = 7\n\n\\boxed{7}",
        "I think 12",
        "12 it is, the answer is 12",
        "\\boxed{7.0}",
    )
    engine = FakeEngine(scripted(*texts))
    result, ledger = await run("self_consistency", engine, num_samples=5)
    chosen = result.choices[0]
    assert chosen.answer == "12" and chosen.text == "I think 12"  # the shortest full solution with the winner
    assert chosen.score == pytest.approx(3 / 5)
    assert result.extra["votes"][0] == {"answer": "12", "count": 3}
    assert result.extra["votes"][1]["count"] == 2  # 7 and 7.0 are one answer
    assert ledger.scorer_calls == 0 and ledger.engine_calls == 1 and engine.calls[0][1].n == 5


async def test_none_returns_every_sample_and_uses_request_temperature():
    engine = FakeEngine(scripted("one", "two", "three"))
    result, _ = await run("none", engine, task=make_task(temperature=0.3), num_samples=3)
    assert [c.text for c in result.choices] == ["one", "two", "three"]
    assert engine.calls[0][1].temperature == 0.3


async def test_sampling_strategies_default_to_temperature_0_8_and_param_overrides():
    engine = FakeEngine(scripted("\\boxed{1}"))
    await run("self_consistency", engine, num_samples=2)
    await run("self_consistency", engine, task=make_task(temperature=0.0), num_samples=2, temperature=1.2)
    assert [spec.temperature for _, spec in engine.calls] == [0.8, 1.2]


async def test_max_total_tokens_bounds_every_sample():
    engine = FakeEngine(scripted(" ".join(["w"] * 50)))
    result, ledger = await run("self_consistency", engine, num_samples=4, max_total_tokens=40)
    assert engine.calls[0][1].max_tokens == 10
    assert ledger.completion_tokens <= 40
    assert all(c.finish_reason == "length" for c in result.candidates)


def test_ledger_refuses_a_call_beyond_the_budget():
    ledger = Ledger(token_budget=100)
    with pytest.raises(BudgetExceededError, match="leaves 100"):
        ledger.reserve(SamplingSpec(n=4, max_tokens=30), num_prompts=1)


def test_config_validation_rejects_bad_values():
    with pytest.raises(ValueError, match="aggregation"):
        strategies.get("best_of_n").config_cls(aggregation="median")
    with pytest.raises(ValueError, match="num_samples"):
        strategies.get("self_consistency").config_cls(num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        strategies.get("none").config_cls(temperature=3.0)


def test_registry_lists_known_names_and_refuses_duplicates():
    with pytest.raises(strategies.UnknownStrategyError, match=r"available: .*best_of_n, .*none, "):
        strategies.get("best_of_m")
    with pytest.raises(ValueError, match="registered twice"):
        strategies.register("none", config=strategies.base.StrategyConfig)(lambda *a: None)
    assert strategies.get("best_of_n").needs_scorer and not strategies.get("self_consistency").needs_scorer


async def test_ledger_counts_a_shared_greedy_sample_once():
    class GreedyEngine(FakeEngine):
        async def generate(self, prompts, spec, request_id):
            one = self._sample(prompts[0], 0, spec)
            return [[one] * spec.n]

    ledger = Ledger(token_budget=1000)
    engine = CountingEngine(GreedyEngine(scripted("a b c")), ledger, "g")
    (samples,) = await engine.generate(["p"], SamplingSpec(n=4, temperature=0.0, max_tokens=8), "g")
    assert len(samples) == 4 and ledger.completion_tokens == 3
