"""``auto``: the probe's difficulty and the budget pick a configuration from the policy file, and that one runs."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import httpx
import pytest

import strategies
import strategies.auto
from server.accounting import CountingEngine, CountingScorer, Ledger
from server.app import create_app
from server.config import ServerConfig
from strategies.auto import FORMAT, AutoConfig, load_policy, parse_policy
from strategies.base import InvalidRequestError, Task
from tests.fakes import FakeEngine, FakeScorer, SeededEngine

AGREE = ("x \\boxed{7}",) * 4  # four samples, one answer: agreement 1; one step of 2 tokens each
# the probe's four: 2 of 4 agree; the four after them (a draw of n = 8) differ from them
SPLIT = tuple(f"{w} \\boxed{{{a}}}" for w, a in zip("xyzwvuts", (7, 8, 9, 7, 7, 8, 7, 9), strict=True))


def cell(label: str, **stats) -> dict:
    strategy, _, n = label.partition(":")
    return {"label": label, "strategy": strategy, "params": {"num_samples": int(n)} if n else {}, **stats}


POLICY = {
    "format": FORMAT,
    "probe_samples": 4,
    "budgets": [100, 1000],
    "default_budget": 1000,
    "tables": {
        # difficulty = 1 - (agreement + PRM mean) / 2; FakeScorer's 0.5: AGREE 0.25 (bin 0), SPLIT 0.5 (bin 1)
        "agreement+prm": {
            "edges": [0.3],
            "cells": [
                [cell("greedy", accuracy=0.9, tokens=90), cell("self_consistency:4")],
                [cell("self_consistency:4"), cell("best_of_n:8", accuracy=0.7, tokens=800, problems=40)],
            ],
        },
        # difficulty = 1 - agreement: AGREE 0 (bin 0), SPLIT 0.5 (bin 1)
        "agreement": {
            "edges": [0.3],
            "cells": [[cell("self_consistency:4")] * 2, [cell("self_consistency:4"), cell("self_consistency:8")]],
        },
    },
}


@pytest.fixture
def policy_file(tmp_path: Path) -> str:
    path = tmp_path / "auto-policy.json"
    path.write_text(json.dumps(POLICY))
    return str(path)


def task(**kw) -> Task:
    return Task(
        **({"prompt": "user: q\nassistant:", "question": "q", "max_tokens": 64, "temperature": None, "top_p": 1.0} | kw)
    )


def engine_of(texts: tuple[str, ...]) -> FakeEngine:
    return SeededEngine(lambda prompt, i: texts[i % len(texts)])


async def run(engine: FakeEngine, scorer: FakeScorer | None = None, seed: int | None = 0, **params):
    ledger = Ledger(token_budget=params.pop("ledger_budget", 100_000))
    spec = strategies.get("auto")
    counted = CountingEngine(engine, ledger, "t")
    scoring = CountingScorer(scorer, ledger, "t") if scorer else None
    result = await spec.fn(task(seed=seed), AutoConfig(**params), counted, scoring)
    return result, ledger, result.extra["auto"]


def test_doctests():
    failures, tried = doctest.testmod(strategies.auto)
    assert tried > 0 and failures == 0


async def test_an_easy_question_is_answered_by_the_probes_own_vote_at_no_further_cost(policy_file):
    engine, scorer = engine_of(AGREE), FakeScorer()
    result, ledger, why = await run(engine, scorer, policy_file=policy_file)
    assert (why["signal"], why["difficulty"], why["bin"]) == ("agreement+prm", 0.25, 0)
    assert why["chose"]["label"] == "self_consistency:4" and why["budget"] == 1000 and why["budget_from"] == "policy"
    assert len(engine.calls) == 1 and engine.calls[0][1].n == 4  # the probe; the vote replays its samples
    assert why["reused_probe_samples"] == 4 and why["probe_tokens"] == ledger.completion_tokens == 4 * 2
    assert ledger.scorer_calls == 1  # the probe's scoring, nothing more
    assert result.choices[0].text == AGREE[0] and result.extra["votes"] == [{"answer": "7", "count": 4}]


async def test_a_hard_question_runs_best_of_n_drawing_only_the_samples_the_probe_lacks(policy_file):
    engine = engine_of(SPLIT)
    scorer = FakeScorer({SPLIT[6]: 0.95}, default=0.5)
    result, ledger, why = await run(engine, scorer, policy_file=policy_file)
    assert why["agreement"] == 0.5 and why["bin"] == 1
    assert why["chose"] == {
        "label": "best_of_n:8",
        "strategy": "best_of_n",
        "params": {"num_samples": 8},
        "accuracy": 0.7,
        "tokens": 800,
        "problems": 40,
    }
    (_, probe), (_, more) = engine.calls
    assert (probe.n, probe.seed) == (4, 0) and (more.n, more.seed) == (4, 4)  # samples 4..7 of seed 0's n=8 draw
    assert ledger.engine_calls == 2 and ledger.completion_tokens == 8 * 2
    assert [len(batch) for batch in scorer.calls] == [4, 4]  # the probe's four; then only the four new ones
    assert why["reused_probe_samples"] == 4 and why["reused_scores"] == 4
    assert [c.text for c in result.candidates] == list(SPLIT) and result.choices[0].text == SPLIT[6]


async def test_the_budget_bucket_changes_the_choice(policy_file):
    engine = engine_of(AGREE)
    _, ledger, why = await run(engine, FakeScorer(), policy_file=policy_file, token_budget=150)
    assert (why["budget"], why["budget_from"], why["bucket"], why["chose"]["label"]) == (
        150,
        "token_budget",
        100,
        "greedy",
    )
    (_, probe), (_, greedy) = engine.calls
    assert (greedy.n, greedy.temperature) == (1, 0.0) and ledger.completion_tokens == 5 * 2
    engine = engine_of(AGREE)
    _, _, why = await run(engine, FakeScorer(), policy_file=policy_file, max_total_tokens=500)
    assert (why["budget"], why["budget_from"], why["bucket"]) == (500, "max_total_tokens", 100)
    _, _, why = await run(engine_of(AGREE), FakeScorer(), policy_file=policy_file, token_budget=5000)
    assert (why["bucket"], why["chose"]["label"]) == (1000, "self_consistency:4")


async def test_without_a_reward_model_the_agreement_table_chooses_and_nothing_is_scored(policy_file):
    engine = engine_of(SPLIT)
    result, ledger, why = await run(engine, None, policy_file=policy_file)
    assert (why["signal"], why["difficulty"], why["bin"], why["chose"]["label"]) == (
        "agreement",
        0.5,
        1,
        "self_consistency:8",
    )
    assert "prm_mean" not in why and ledger.scorer_calls == 0
    assert [spec.n for _, spec in engine.calls] == [4, 4] and ledger.completion_tokens == 16
    assert result.extra["votes"][0] == {"answer": "7", "count": 4}  # samples 0, 3, 4 and 7 (the script repeats)


async def test_a_forced_choice_needs_no_policy_file():
    engine = engine_of(SPLIT)
    choice = {"strategy": "self_consistency", "params": {"num_samples": 16}}
    _, ledger, why = await run(engine, FakeScorer(), choice=choice, policy_file="/nonexistent.json")
    assert why["why"] == "the request's choice" and why["chose"]["label"] == "self_consistency"
    assert why["prm_mean"] == 0.5  # scored, so that the tuner reads both signals
    assert [spec.n for _, spec in engine.calls] == [4, 12] and ledger.completion_tokens == 32


async def test_too_little_budget_left_after_the_probe_answers_with_the_probes_vote():
    engine = engine_of(SPLIT)
    choice = {"strategy": "best_of_n", "params": {"num_samples": 8}}
    result, ledger, why = await run(engine, FakeScorer(), choice=choice, max_total_tokens=10)
    assert "fallback" in why  # the probe's 8 tokens leave 2, which cannot give 8 samples one each
    assert len(engine.calls) == 1 and ledger.completion_tokens == 8 and why["reused_probe_samples"] == 4
    assert result.choices[0].text == SPLIT[0] and result.extra["votes"][0] == {"answer": "7", "count": 2}


@pytest.mark.parametrize(
    "content,says",
    [
        (None, "no policy file"),
        ("{not json", "cannot be read as JSON"),
        (json.dumps({"format": "other"}), "not an auto policy"),
        (json.dumps(POLICY | {"budgets": [1000, 100]}), "budgets must increase"),
        (json.dumps(POLICY | {"tables": {"agreement": {"edges": [0.3], "cells": [[]]}}}), "one row per bin"),
        (json.dumps(POLICY | {"tables": {"agreement": {"edges": [], "cells": [[cell("auto")] * 2]}}}), "auto"),
    ],
)
async def test_a_missing_or_invalid_policy_file_is_a_clear_error(tmp_path, content, says):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidRequestError, match=says):
        await run(engine_of(AGREE), FakeScorer(), policy_file=str(path))


def test_a_policy_without_an_agreement_table_refuses_a_server_without_a_reward_model():
    policy = parse_policy(POLICY | {"tables": {"agreement+prm": POLICY["tables"]["agreement+prm"]}}, "p")
    assert policy.table(True).signal == "agreement+prm"
    with pytest.raises(InvalidRequestError, match="has none loaded"):
        policy.table(False)


def test_a_device_is_not_read_as_a_policy_file():
    with pytest.raises(InvalidRequestError, match="not a regular file"):
        load_policy(Path("/dev/zero"))


@pytest.mark.parametrize(
    "params,says",
    [
        ({"token_budget": 0}, "token_budget"),
        ({"probe_samples": 0}, "probe_samples"),
        ({"choice": {"strategy": "nope"}}, "unknown strategy"),
        ({"choice": {"strategy": "auto"}}, "cannot choose auto"),
        ({"choice": {"strategy": "best_of_n", "params": {"beams": 2}}}, "unknown parameter"),
        ({"choice": {"name": "best_of_n"}}, "choice must be"),
    ],
)
def test_config_validation(params, says):
    with pytest.raises(ValueError, match=says):
        AutoConfig(**params)


def client_for(engine: FakeEngine, scorer: FakeScorer | None) -> httpx.AsyncClient:
    app = create_app(ServerConfig(model_name="tiny", reward_model_name="prm"), engine=engine, scorer=scorer)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder")


async def chat(client: httpx.AsyncClient, **params) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "q"}], "strategy": "auto", "seed": 1}
    return await client.post("/v1/chat/completions", json=body | {"strategy_params": params})


async def test_the_response_says_what_auto_chose_and_why(policy_file):
    engine = engine_of(SPLIT)
    async with client_for(engine, FakeScorer()) as client:
        r = await chat(client, policy_file=policy_file, return_trace=True)
    assert r.status_code == 200, r.text
    ponder = r.json()["ponder"]
    why = ponder["trace"]["auto"]
    assert (ponder["strategy"], why["chose"]["label"], why["bin"]) == ("auto", "best_of_n:8", 1)
    assert why["budget"] == 1000 and why["probe_tokens"] == 8
    assert ponder["engine_calls"] == 2 and r.json()["usage"]["completion_tokens"] == 16
    assert len(ponder["candidates"]) == 8


async def test_a_missing_policy_file_is_a_400():
    async with client_for(engine_of(AGREE), FakeScorer()) as client:
        r = await chat(client, policy_file="/nonexistent/auto-policy.json")
        bad = await chat(client, token_budget=0)
    assert r.status_code == 400 and "ponder tune auto" in r.json()["error"]["message"]
    assert bad.status_code == 400 and "token_budget" in bad.json()["error"]["message"]


async def test_a_forced_choice_is_held_to_the_servers_cap_on_samples_per_call():
    async with client_for(engine_of(AGREE), FakeScorer()) as client:
        r = await chat(client, choice={"strategy": "self_consistency", "params": {"num_samples": 100}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "above_cap"
    assert r.json()["error"]["param"] == "strategy_params.choice"


def test_the_shipped_policy_of_the_default_models_is_valid_and_fitted_on_train():
    policy = load_policy(strategies.auto.SHIPPED_POLICY)
    assert set(policy.tables) == {"agreement", "agreement+prm"} and policy.probe_samples == 4
    assert len(policy.tables["agreement+prm"].cells) == 5  # Snell et al.'s 5 bins
    provenance = json.loads(strategies.auto.SHIPPED_POLICY.read_text())["provenance"]
    assert provenance["split"] == "train" and provenance["prm"] == "models/default-prm"


async def test_a_choice_that_spent_more_than_max_total_tokens_in_its_bin_gives_way_to_a_smaller_buckets(tmp_path):
    # a pooled policy: the hard bin's choice at bucket 1000 spent 2000 tokens there on the dev problems
    policy = json.loads(json.dumps(POLICY))
    policy["tables"]["agreement+prm"]["cells"][1][1] = cell("best_of_n:8", accuracy=0.7, tokens=2000)
    path = tmp_path / "pooled.json"
    path.write_text(json.dumps(policy))
    _, _, why = await run(engine_of(SPLIT), FakeScorer(), policy_file=str(path), max_total_tokens=1500)
    assert (why["budget"], why["budget_from"], why["bin"]) == (1000, "policy", 1)
    assert why["chose"]["label"] == "self_consistency:4" and why["bucket"] == 100 and "capped" in why
    _, _, why = await run(engine_of(SPLIT), FakeScorer(), policy_file=str(path), max_total_tokens=2500)
    assert why["chose"]["label"] == "best_of_n:8" and "capped" not in why
