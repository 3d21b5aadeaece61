"""``best_of_n`` with early rejection (speculative rejection, Sun et al. 2024): what was rejected, kept, chosen,
and what it cost, on the scripted engine and reward model."""

from __future__ import annotations

import doctest

import httpx
import pytest

import strategies
import strategies.best_of_n
from server.accounting import BudgetExceededError, CountingEngine, CountingScorer, Ledger
from server.app import create_app
from server.config import ServerConfig
from strategies.base import Task
from strategies.best_of_n import BestOfNConfig
from tests.fakes import FakeEngine, FakeScorer

PROMPT = "user: q\nassistant:"
# One word is one token; "|" is the step delimiter (a word of its own, so the fake counts it as a token too).
SAMPLES = (
    "a0 b0 | c0 d0 | e0 f0 | ans0",  # 10 tokens; good prefix, mediocre answer
    "a1 b1 | c1 d1 | e1 f1 | ans1",  # 10 tokens; bad prefix, but the answer the reward model likes best
    "a2 b2 | c2 d2 | e2 f2 | ans2",  # 10 tokens; good prefix, good answer
    "a3 b3 | c3 d3 | e3 f3 | ans3",  # 10 tokens; bad prefix
    "x4 | y4",  # 3 tokens: ends before the checkpoint
)
SCORES = {
    **{"a0 b0": 0.9, "a1 b1": 0.2, "a2 b2": 0.8, "a3 b3": 0.1},  # the first step: what the prefixes are judged on
    **{"ans0": 0.3, "ans1": 0.99, "ans2": 0.7, "ans3": 0.95, "y4": 0.5},  # the last step: the final scores
}


def script(prompt: str, index: int) -> str:
    """Sample ``index`` of the prompt; a continuation (the prompt holds a prefix) gets the rest of its sample."""
    answer = prompt.removeprefix(PROMPT)
    if not answer:
        return SAMPLES[index]
    words = SAMPLES[int(answer.split()[0][1:])].split(" ")
    return " " + " ".join(words[len(answer.split(" ")) :])


def make_task(**kw) -> Task:
    return Task(**(dict(prompt=PROMPT, question="q", max_tokens=64, temperature=None, top_p=1.0, seed=7) | kw))


async def run(task: Task | None = None, token_budget: int = 10_000, **params):
    engine, scorer, ledger = FakeEngine(script), FakeScorer(SCORES, default=0.5), Ledger(token_budget=token_budget)
    config = BestOfNConfig(num_samples=len(SAMPLES), step_delimiter="|", aggregation="last", **params)
    result = await strategies.get("best_of_n").fn(
        task or make_task(), config, CountingEngine(engine, ledger, "t"), CountingScorer(scorer, ledger, "t")
    )
    return result, engine, scorer, ledger


def test_doctests():
    failures, tried = doctest.testmod(strategies.best_of_n)
    assert tried > 0 and failures == 0


async def test_off_by_default_is_plain_best_of_n():
    result, engine, scorer, ledger = await run()
    assert BestOfNConfig().rejection_tokens is None and BestOfNConfig().keep_fraction == 0.5
    assert result.choices[0].text == SAMPLES[1]  # the best finished answer, whatever its beginning
    assert len(engine.calls) == 1 and engine.calls[0][1].n == 5 and engine.calls[0][1].max_tokens == 64
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 5
    assert (ledger.engine_calls, ledger.scorer_calls, ledger.completion_tokens) == (1, 1, 43)
    assert result.extra == {} and all(c.finish_reason == "stop" for c in result.candidates)


async def test_low_scored_prefixes_are_rejected_and_the_best_kept_one_is_chosen():
    result, engine, scorer, ledger = await run(rejection_tokens=4, keep_fraction=0.5)
    # the checkpoint: all five drawn in one call with max_tokens 4; sample 4 ended before it
    (first_prompts, first), *continued = engine.calls
    assert first_prompts == [PROMPT] and (first.n, first.max_tokens, first.seed) == (5, 4, 7)
    # one scoring call over the four prefixes, each judged on its complete steps only (the cut step left out)
    assert scorer.calls[0] == [("q", [f"a{i} b{i}"]) for i in range(4)]
    # 2 of the 4 kept (0.9 and 0.8), each continued from its prefix with the rest of the budget and a seed of its
    # own (7 + 5 + its index: after the five the first call's samples get)
    assert [(prompts, spec.n, spec.max_tokens, spec.seed) for prompts, spec in continued] == [
        ([PROMPT + "a0 b0 | c0"], 1, 60, 12),
        ([PROMPT + "a2 b2 | c2"], 1, 60, 14),
    ]
    # the final scoring: the two continued samples and the one that ended early, in sample order
    assert [steps[-1] for _, steps in scorer.calls[1]] == ["ans0", "ans2", "y4"]
    assert result.choices[0].text == SAMPLES[2] and result.choices[0].score == pytest.approx(0.7)
    assert [c.text for c in result.candidates] == [SAMPLES[0], "a1 b1 | c1", SAMPLES[2], "a3 b3 | c3", SAMPLES[4]]
    assert [c.finish_reason for c in result.candidates] == ["stop", "abort", "stop", "abort", "stop"]
    assert [c.chosen for c in result.candidates] == [False, False, True, False, False]
    assert result.candidates[1].score == pytest.approx(0.2)  # a rejected candidate keeps its prefix score
    assert result.extra["early_rejection"] == {
        "checkpoint_tokens": 4,
        "keep_fraction": 0.5,
        "finished_before": [4],
        "kept": [0, 2],
        "rejected": [1, 3],
        "prefix_scores": [0.9, 0.2, 0.8, 0.1, None],
        "rejected_tokens": 8,
    }
    # 4 x 4 + 3 at the checkpoint, then 6 more for each of the two kept: 31 tokens against plain best-of-N's 43
    assert (ledger.engine_calls, ledger.scorer_calls, ledger.completion_tokens) == (3, 2, 31)
    assert [c.num_tokens for c in result.candidates] == [10, 4, 10, 4, 3]


async def test_keep_fraction_sets_how_many_go_on_rounding_up_and_keeping_at_least_one():
    keep_one, *_, ledger_one = await run(rejection_tokens=4, keep_fraction=0.1)  # 0.4 of 4: one
    assert keep_one.extra["early_rejection"]["kept"] == [0] and keep_one.choices[0].text == SAMPLES[4]  # 0.5 > 0.3
    assert ledger_one.completion_tokens == 4 * 4 + 3 + 6
    three, *_ = await run(rejection_tokens=4, keep_fraction=0.6)  # 2.4 of 4: three
    assert three.extra["early_rejection"]["rejected"] == [3]
    assert three.choices[0].text == SAMPLES[1]  # kept, its bad prefix notwithstanding, and best at the end
    everyone, *_, ledger_all = await run(rejection_tokens=4, keep_fraction=1.0)
    assert everyone.extra["early_rejection"]["rejected"] == [] and ledger_all.completion_tokens == 43
    assert everyone.choices[0].text == SAMPLES[1]


async def test_samples_that_end_before_the_checkpoint_are_kept_and_none_reaching_it_is_plain_best_of_n():
    result, engine, scorer, ledger = await run(rejection_tokens=20)
    assert len(engine.calls) == 1 and engine.calls[0][1].max_tokens == 20
    assert result.extra["early_rejection"]["finished_before"] == [0, 1, 2, 3, 4]
    assert result.extra["early_rejection"]["rejected"] == [] and result.choices[0].text == SAMPLES[1]
    assert (ledger.engine_calls, ledger.scorer_calls, ledger.completion_tokens) == (1, 1, 43)


async def test_a_checkpoint_at_or_past_the_per_sample_budget_is_plain_best_of_n():
    result, engine, _, ledger = await run(task=make_task(max_tokens=4), rejection_tokens=4)
    assert len(engine.calls) == 1 and result.extra == {} and ledger.scorer_calls == 1


async def test_the_token_budget_holds_with_rejection():
    # max_total_tokens 60 over 5 samples: 12 each; 4 at the checkpoint leave 8 to the continuation
    result, engine, _, ledger = await run(token_budget=60, rejection_tokens=4, max_total_tokens=60)
    assert [spec.max_tokens for _, spec in engine.calls] == [4, 8, 8]
    assert ledger.completion_tokens == 31 <= 60 and result.choices[0].text == SAMPLES[2]


async def test_unseeded_requests_continue_unseeded_and_a_refused_continuation_raises_its_own_error():
    _, engine, _, _ = await run(task=make_task(seed=None), rejection_tokens=4)
    assert [spec.seed for _, spec in engine.calls] == [None, None, None]
    # a ledger with less room than the per-sample budget says: the continuation's refusal reaches the server as is
    with pytest.raises(BudgetExceededError):
        await run(token_budget=50, rejection_tokens=4)


@pytest.mark.parametrize(
    "params, says",
    [
        ({"keep_fraction": 0.0}, "keep_fraction"),
        ({"keep_fraction": 1.5}, "keep_fraction"),
        ({"keep_fraction": -0.2}, "keep_fraction"),
        ({"rejection_tokens": 0}, "rejection_tokens"),
        ({"rejection_tokens": -3}, "rejection_tokens"),
    ],
)
def test_invalid_parameters_are_refused(params, says):
    with pytest.raises(ValueError, match=says):
        BestOfNConfig(**params)


async def test_the_server_refuses_bad_values_and_whole_sample_constraints_only_with_rejection_on():
    app = create_app(
        ServerConfig(model_name="tiny", reward_model_name="prm"), engine=FakeEngine(script), scorer=FakeScorer()
    )
    messages = [{"role": "user", "content": "q"}]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder") as client:

        async def chat(params, **body):
            body = {"model": "tiny", "messages": messages, "strategy": "best_of_n", "strategy_params": params} | body
            return await client.post("/v1/chat/completions", json=body)

        bad = await chat({"keep_fraction": 2})
        constrained = await chat({"rejection_tokens": 4}, response_format={"type": "json_object"})
        plain = await chat({"num_samples": 2}, response_format={"type": "json_object"})
    assert bad.status_code == 400 and "keep_fraction" in bad.json()["error"]["message"]
    assert constrained.status_code == 400 and constrained.json()["error"]["param"] == "response_format"
    assert plain.status_code == 200, plain.text
