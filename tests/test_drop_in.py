"""vLLM's request fields on every strategy, with the scripted engine: what reaches the engine, logprobs, JSON votes."""

from __future__ import annotations

import json

import pytest

import strategies
from tests.fakes import FakeEngine, FakeScorer, word_logprobs
from tests.test_http import SOLUTIONS, assert_error, chat, client_for

EXTRAS = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.25,
    "logit_bias": {"7": 2.0},
    "bad_words": ["nope"],
    "stop_token_ids": [5],
    "ignore_eos": True,
    "vllm_xargs": {"tag": "x"},
}
ACCEPTED = {  # read (templating, bookkeeping) but not engine options
    "chat_template_kwargs": {"enable_thinking": False},
    "metadata": {"team": "eval"},
    "user": "someone",
    "store": False,
    "parallel_tool_calls": True,
    "include_reasoning": True,
}
PARAMS = {  # small, quick settings per strategy
    "tree_of_thought": {"num_samples": 1, "samples_per_state": 2, "max_depth": 2, "value_votes": 1},
    "mcts": {"num_iterations": 2, "num_samples": 2},
    "beam_search": {"num_samples": 2, "beam_width": 1, "max_depth": 2},
    "dvts": {"num_samples": 2, "beam_width": 1, "max_depth": 2},
}


def _params(name: str) -> dict:
    known = {f for f in strategies.get(name).config_cls.__dataclass_fields__}
    return {
        k: v for k, v in PARAMS.get(name, {"num_samples": 2} if "num_samples" in known else {}).items() if k in known
    }


@pytest.mark.parametrize("name", [s.name for s in strategies.available()])
async def test_every_sampling_field_reaches_every_engine_call_of_every_strategy(name):
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[i % len(SOLUTIONS)])
    async with client_for(engine, FakeScorer()) as client:
        r = await chat(client, strategy=name, strategy_params=_params(name), **EXTRAS, **ACCEPTED)
    assert r.status_code == 200, r.text
    assert engine.calls
    for _, spec in engine.calls:
        options = dict(spec.options)
        assert options.pop("extra_args") == {"tag": "x"}
        assert options == {k: v for k, v in EXTRAS.items() if k != "vllm_xargs"}


async def test_no_extras_sends_no_options():
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[0])
    async with client_for(engine) as client:
        assert (await chat(client)).status_code == 200
    assert [dict(spec.options) for _, spec in engine.calls] == [{}]


async def test_none_returns_its_sampled_logprobs_in_openai_shape():
    async with client_for() as client:
        r = await chat(client, logprobs=True, top_logprobs=2)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    expected = word_logprobs(SOLUTIONS[0], 2)
    assert [c["token"] for c in content] == [t.token for t in expected]
    assert [c["logprob"] for c in content] == [t.logprob for t in expected]
    assert content[0]["bytes"] == list(expected[0].token.encode())
    assert content[0]["top_logprobs"] == [
        {"token": "alt0", "logprob": -1.0, "bytes": list(b"alt0")},
        {"token": "alt1", "logprob": -2.0, "bytes": list(b"alt1")},
    ]


async def test_a_search_returns_the_chosen_paths_logprobs():
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[0])
    async with client_for(engine, FakeScorer(default=0.5)) as client:
        r = await chat(client, strategy="beam_search", strategy_params=PARAMS["beam_search"], logprobs=True)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == choice["message"]["content"]
    assert all(c["top_logprobs"] == [] for c in content)
    assert all(spec.logprobs is None for _, spec in engine.calls)  # read once at the end, not on every step


async def test_best_of_n_returns_the_chosen_samples_own_logprobs():
    async with client_for(scorer=FakeScorer({"\\boxed{8}": 0.99}, default=0.1)) as client:
        r = await chat(client, strategy="best_of_n", strategy_params={"num_samples": 4}, logprobs=True, top_logprobs=1)
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == SOLUTIONS[1]
    assert [c["token"] for c in choice["logprobs"]["content"]] == [t.token for t in word_logprobs(SOLUTIONS[1], 1)]


async def test_streamed_tokens_carry_their_logprobs():
    async with client_for() as client:
        r = await chat(client, logprobs=True, stream=True)
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    streamed = [t for c in chunks for choice in c["choices"] for t in (choice.get("logprobs") or {}).get("content", [])]
    assert "".join(t["token"] for t in streamed) == SOLUTIONS[0]
    assert [t["logprob"] for t in streamed] == [t.logprob for t in word_logprobs(SOLUTIONS[0], 0)]


@pytest.mark.parametrize("strategy", ["self_consistency", "weighted_best_of_n"])
async def test_votes_compare_json_answers_in_canonical_form(strategy):
    answers = ['{"a": 1, "b": 2}', '{"b":2,"a":1}', '{"a": 2}', '{"a":  1,\n "b": 2}']
    engine = FakeEngine(lambda prompt, i: answers[i % 4])
    async with client_for(engine, FakeScorer(default=0.5)) as client:
        r = await chat(
            client,
            strategy=strategy,
            strategy_params={"num_samples": 4, "return_trace": True},
            response_format={"type": "json_object"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"a": 1, "b": 2}
    assert {c["answer"] for c in body["ponder"]["candidates"]} == {'{"a":1,"b":2}', '{"a":2}'}
    (_, spec), *_ = engine.calls
    assert spec.options["structured_outputs"].json_object is True


async def test_a_json_schema_reaches_the_engine_as_vllms_structured_outputs():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    engine = FakeEngine(lambda prompt, i: '{"x": 1}')
    async with client_for(engine) as client:
        r = await chat(client, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
        r2 = await chat(client, structured_outputs={"choice": ["yes", "no"]})
    assert r.status_code == 200 and r2.status_code == 200, (r.text, r2.text)
    assert engine.calls[0][1].options["structured_outputs"].json == schema
    assert engine.calls[1][1].options["structured_outputs"].choice == ["yes", "no"]


@pytest.mark.parametrize("name", ["beam_search", "dvts", "mcts", "tree_of_thought"])
async def test_whole_sample_constraints_are_refused_by_step_searches(name):
    async with client_for(scorer=FakeScorer()) as client:
        grammar = await chat(client, strategy=name, structured_outputs={"regex": "[0-9]+"})
        floor = await chat(client, strategy=name, min_tokens=5)
    assert_error(grammar, 400, param="response_format", says="draws each solution in steps")
    assert_error(floor, 400, param="min_tokens", says="every step")


async def test_a_request_chat_template_needs_the_servers_trust():
    async with client_for() as client:
        refused = await chat(client, chat_template="{{ messages[0]['content'] }}")
    assert_error(refused, 400, param="chat_template", says="--trust-request-chat-template")
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[0])
    async with client_for(engine, trust_request_chat_template=True) as client:
        r = await chat(client, chat_template="{{ messages[0]['content'] }}")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "body,param,says",
    [
        ({"echo": True}, "echo", "generated text only"),
        ({"prompt_logprobs": 1}, "prompt_logprobs", "not supported"),
        ({"priority": 3}, "priority", "first come"),
        ({"thinking_token_budget": 10}, "thinking_token_budget", "--reasoning-parser"),
        ({"top_logprobs": 2}, "top_logprobs", "logprobs` must be set"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages", "unknown message role"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}, "tool_choice", "parser"),
    ],
)
async def test_fields_ponder_cannot_honour_are_a_400_that_says_why(body, param, says):
    async with client_for() as client:
        r = await chat(client, **body)
    assert_error(r, 400, param=param, says=says)
