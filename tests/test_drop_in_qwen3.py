"""vLLM's dialect end to end on a real engine: a tiny random Qwen3 with the real tokenizer, chat template, vLLM's
``qwen3`` reasoning parser and ``hermes`` tool parser. The model's words are noise, so every format is held by vLLM's
own structured outputs or thinking budget: what is tested is that Ponder hands the request to vLLM as vLLM's server
would and reads the result back as vLLM's server would, for every strategy that can take it."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.qwen3 import load_qwen3_tokenizer

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
THINKING_OPEN = USER + [{"role": "assistant", "content": "<think>\n"}]  # the reply starts inside the thinking
OFF = {"chat_template_kwargs": {"enable_thinking": False}}
DIGIT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["x"]}
JSON_DIGIT = {"response_format": {"type": "json_schema", "json_schema": {"name": "digit", "schema": DIGIT}}}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,  # vLLM constrains the arguments to the schema only for a strict tool
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CALLS = [f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{c}"}}}}</tool_call>' for c in ("Paris", "Rome")]


@pytest.fixture(scope="module")
def tools() -> dict:
    """The weather tool, one call at most, and the call's own tokens as vLLM's ``allowed_token_ids``: vLLM holds the
    call's structure, and a random model cannot spend its tokens on the whitespace JSON allows between them."""
    tokenizer = load_qwen3_tokenizer()
    allowed = {i for call in CALLS for i in tokenizer.encode(call, add_special_tokens=False)}
    allowed.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return {"tools": [WEATHER], "parallel_tool_calls": False, "allowed_token_ids": sorted(allowed)}


@pytest.fixture(scope="module")
async def client(qwen3_server):
    async with httpx.AsyncClient(base_url=qwen3_server.url, timeout=300) as c:
        yield c


async def chat(client: httpx.AsyncClient, messages=USER, **body) -> dict:
    r = await client.post("/v1/chat/completions", json={"messages": messages, "seed": 3, "max_tokens": 48} | body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("strategy", ["none", "best_of_n", "self_consistency", "weighted_best_of_n"])
async def test_a_json_schema_holds_every_sample_of_a_whole_sample_strategy(client, strategy):
    params = {} if strategy == "none" else {"num_samples": 3, "return_trace": True}
    body = await chat(client, strategy=strategy, strategy_params=params, **OFF, **JSON_DIGIT)
    answer = json.loads(body["choices"][0]["message"]["content"])
    assert set(answer) == {"x"} and 0 <= answer["x"] <= 9
    for candidate in body["ponder"]["candidates"] or ():
        assert set(json.loads(candidate["text"])) == {"x"}
        if strategy in ("self_consistency", "weighted_best_of_n"):
            assert candidate["answer"] == json.dumps(json.loads(candidate["text"]), separators=(",", ":"))


async def test_thinking_off_renders_qwen3s_empty_thinking_block_and_answers_in_content(client):
    body = await chat(client, **OFF, **JSON_DIGIT)
    message = body["choices"][0]["message"]
    assert message["reasoning"] is None and json.loads(message["content"])["x"] in range(10)


async def test_the_thinking_budget_ends_the_thinking_then_the_answer_is_held_to_the_schema(client):
    body = await chat(client, THINKING_OPEN, thinking_token_budget=6, **JSON_DIGIT)
    message = body["choices"][0]["message"]
    assert message["reasoning"], message  # the thinking, set apart by vLLM's qwen3 parser
    assert json.loads(message["content"])["x"] in range(10)
    hidden = await chat(client, THINKING_OPEN, thinking_token_budget=6, include_reasoning=False, **JSON_DIGIT)
    assert hidden["choices"][0]["message"]["reasoning"] is None
    assert hidden["choices"][0]["message"]["content"] == message["content"]  # same seed, same answer


async def test_reasoning_streams_as_reasoning_deltas_before_the_content(client):
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": THINKING_OPEN, "seed": 3, "max_tokens": 48, "thinking_token_budget": 6, "stream": True}
        | JSON_DIGIT,
    )
    deltas = [
        json.loads(line[6:])["choices"][0]["delta"]
        for line in r.text.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    ]
    kinds = [k for d in deltas for k in ("reasoning", "content") if d.get(k)]
    assert kinds and kinds[0] == "reasoning" and "content" in kinds
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "reasoning")
    whole = await chat(client, THINKING_OPEN, thinking_token_budget=6, **JSON_DIGIT)
    assert "".join(d.get("content") or "" for d in deltas) == whole["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "choice,finish", [("required", "tool_calls"), ({"type": "function", "function": {"name": "get_weather"}}, "stop")]
)
async def test_a_forced_tool_call_comes_back_as_tool_calls(client, tools, choice, finish):
    body = await chat(client, tool_choice=choice, **tools, **OFF)
    choice_out = body["choices"][0]
    (call,) = choice_out["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "Rome")
    assert choice_out["finish_reason"] == finish


async def test_self_consistency_votes_over_tool_calls(client, tools):
    body = await chat(
        client,
        strategy="self_consistency",
        strategy_params={"num_samples": 4, "return_trace": True},
        tool_choice="required",
        **tools,
        **OFF,
    )
    answers = [c["answer"] for c in body["ponder"]["candidates"]]
    assert all(json.loads(a)[0][0] == "get_weather" for a in answers)
    chosen = body["choices"][0]["message"]["tool_calls"][0]["function"]
    votes = {v["answer"]: v["count"] for v in body["ponder"]["trace"]["votes"]}
    key = json.dumps([["get_weather", json.dumps(json.loads(chosen["arguments"]), separators=(",", ":"))]])
    assert votes[key.replace(", ", ",")] == max(votes.values())


async def test_tool_call_deltas_stream_in_openais_shape(client, tools):
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": USER, "seed": 3, "max_tokens": 48, "tool_choice": "required", "stream": True} | tools | OFF,
    )
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    calls = [c for chunk in chunks for ch in chunk["choices"] for c in ch["delta"].get("tool_calls") or ()]
    assert calls and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"].get("arguments") or "" for c in calls))["city"] in ("Paris", "Rome")
    assert [ch["finish_reason"] for chunk in chunks for ch in chunk["choices"] if ch.get("finish_reason")] == [
        "tool_calls"
    ]


async def test_a_conversation_with_a_tool_result_renders_and_runs(client):
    history = USER + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    body = await chat(client, history, tools=[WEATHER], tool_choice="none", **OFF, **JSON_DIGIT)
    assert json.loads(body["choices"][0]["message"]["content"])["x"] in range(10)


async def test_logprobs_are_the_sampled_tokens_and_a_search_reads_its_path_back(client):
    sampled = await chat(client, logprobs=True, top_logprobs=3, max_tokens=8, **OFF)
    choice = sampled["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == choice["message"]["content"]
    assert all(len(t["top_logprobs"]) == 3 and t["logprob"] <= 0 for t in tokens)
    searched = await chat(
        client,
        strategy="beam_search",
        strategy_params={"num_samples": 2, "beam_width": 1, "max_depth": 2},
        logprobs=True,
        max_tokens=8,
        **OFF,
    )
    choice = searched["choices"][0]
    text = (choice["message"]["reasoning"] or "") + (choice["message"]["content"] or "")
    assert choice["logprobs"]["content"] and all(t["logprob"] <= 0 for t in choice["logprobs"]["content"])
    assert "".join(t["token"] for t in choice["logprobs"]["content"]).strip() in text or text


async def test_the_engine_refuses_what_vllm_refuses_as_a_400(client):
    r = await client.post("/v1/chat/completions", json={"messages": USER, "top_k": -5})
    assert r.status_code == 400 and "top_k" in r.json()["error"]["message"]


async def test_reasoning_effort_none_turns_qwen3s_thinking_off_as_vllm_does(client):
    body = await chat(client, reasoning_effort="none", **JSON_DIGIT)
    message = body["choices"][0]["message"]
    assert message["reasoning"] is None and json.loads(message["content"])["x"] in range(10)
