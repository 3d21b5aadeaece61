"""``POST /v1/responses`` in-process on the scripted engine: input items as chat messages, output items (reasoning,
message, function calls) with vLLM's parsers on the real Qwen3 tokenizer, usage, logprobs, the stream's events in
OpenAI's order, what needs stored responses refused, and the official openai client reading all of it."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from server.app import create_app
from server.config import ServerConfig
from tests.fakes import FakeEngine, FakeScorer, tokens, word_logprobs
from tests.qwen3 import load_qwen3_tokenizer
from tests.test_http import SOLUTIONS, assert_error, client_for

THOUGHT = "<think>\nThree plus four is seven.\n</think>\n\nIt is 7."
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def respond(client: httpx.AsyncClient, **body) -> httpx.Response:
    return await client.post("/v1/responses", json={"model": "tiny", "input": "What is 3 + 4?"} | body)


def sse(text: str) -> list[tuple[str, dict]]:
    """The stream's (event name, data) pairs; each event's name is its data's type."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if lines:
            data = json.loads(lines["data"])
            assert lines["event"] == data["type"]
            out.append((lines["event"], data))
    return out


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    return load_qwen3_tokenizer()


def qwen3_client(tokenizer, script, **config) -> httpx.AsyncClient:
    """The scripted engine behind the real Qwen3 tokenizer and template, with vLLM's qwen3 reasoning parser."""
    engine = FakeEngine(lambda prompt, i: script, tokenizer=tokenizer, reasoning_parser="qwen3")
    return client_for(engine, **config)


async def test_text_input_and_instructions_become_a_chat_and_one_message_item():
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[0])
    async with client_for(engine) as client:
        r = await respond(client, instructions="Be brief.", max_output_tokens=50, temperature=0.3, top_p=0.9)
    assert r.status_code == 200, r.text
    body = r.json()
    prompt = "system: Be brief.\nuser: What is 3 + 4?\nassistant:"
    assert engine.calls[0][0] == [prompt]
    spec = engine.calls[0][1]
    assert (spec.max_tokens, spec.temperature, spec.top_p) == (50, 0.3, 0.9)
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["status"] == "completed"
    assert body["store"] is False and body["background"] is False and body["instructions"] == "Be brief."
    assert body["max_output_tokens"] == 50 and body["temperature"] == 0.3
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert message["id"].startswith("msg_")
    assert message["content"] == [{"type": "output_text", "text": SOLUTIONS[0], "annotations": [], "logprobs": []}]
    assert body["usage"] == {
        "input_tokens": tokens(prompt),
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": tokens(SOLUTIONS[0]),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": tokens(prompt) + tokens(SOLUTIONS[0]),
    }
    assert body["ponder"]["strategy"] == "none" and body["ponder"]["engine_calls"] == 1


async def test_input_items_become_chat_messages():
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[0])
    items = [
        {"role": "developer", "content": "Answer in digits."},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "What is "}, {"type": "input_text", "text": "1+1?"}],
        },
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "2"}]},
        {"type": "message", "role": "user", "content": "And 3 + 4?"},
    ]
    async with client_for(engine) as client:
        r = await respond(client, input=items)
    assert r.status_code == 200, r.text
    assert engine.calls[0][0] == [
        "system: Answer in digits.\nuser: What is 1+1?\nassistant: 2\nuser: And 3 + 4?\nassistant:"
    ]


async def test_an_unfinished_assistant_message_last_is_continued():
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[0])
    last = {
        "type": "message",
        "role": "assistant",
        "status": "incomplete",
        "content": [{"type": "output_text", "text": "3 +"}],
    }
    async with client_for(engine) as client:
        r = await respond(client, input=[{"role": "user", "content": "3 + 4?"}, last])
    assert r.status_code == 200, r.text
    assert engine.calls[0][0] == ["user: 3 + 4?\nassistant: 3 +"]  # no new assistant turn: the reply continues it


async def test_earlier_reasoning_and_tool_calls_render_with_the_models_template(qwen3_tokenizer):
    items = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "I should look."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    engine = FakeEngine(lambda prompt, i: "It is sunny.", tokenizer=qwen3_tokenizer, reasoning_parser="qwen3")
    async with client_for(engine, tool_call_parser="hermes", enable_auto_tool_choice=True) as client:
        r = await respond(client, input=items, tools=[WEATHER])
    assert r.status_code == 200, r.text
    prompt = engine.calls[0][0][0]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert '"name": "get_weather"' in prompt.split("<|im_start|>user")[0]  # the tool, in the system prompt
    assert prompt.endswith("<|im_start|>assistant\n")


async def test_a_reasoning_model_answers_with_a_reasoning_item_then_a_message(qwen3_tokenizer):
    async with qwen3_client(qwen3_tokenizer, THOUGHT) as client:
        body = (await respond(client)).json()
        hidden = (await respond(client, include_reasoning=False)).json()
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_") and reasoning["summary"] == []
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "\nThree plus four is seven.\n"}]
    assert message["type"] == "message" and message["content"][0]["text"] == "\n\nIt is 7."  # as vLLM's parser reads it
    thought = len(qwen3_tokenizer.encode("\nThree plus four is seven.\n", add_special_tokens=False))
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == thought
    assert [item["type"] for item in hidden["output"]] == ["message"]


async def test_a_tool_call_is_a_function_call_item(qwen3_tokenizer):
    async with qwen3_client(qwen3_tokenizer, CALL, tool_call_parser="hermes", enable_auto_tool_choice=True) as client:
        r = await respond(client, tools=[WEATHER], tool_choice="auto")
    assert r.status_code == 200, r.text
    [call] = r.json()["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["status"] == "completed"
    assert json.loads(call["arguments"]) == {"city": "Paris"} and call["call_id"] and call["id"].startswith("fc_")


async def test_running_out_of_tokens_is_an_incomplete_response():
    async with client_for() as client:
        body = (await respond(client, max_output_tokens=2)).json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["output"][0]["content"][0]["text"] == "3 +"


async def test_logprobs_when_included():
    async with client_for() as client:
        body = (await respond(client, include=["message.output_text.logprobs"], top_logprobs=1)).json()
    logprobs = body["output"][0]["content"][0]["logprobs"]
    expected = word_logprobs(SOLUTIONS[0], 1)
    assert [t["token"] for t in logprobs] == [t.token for t in expected]
    assert logprobs[0] == {
        "token": "3",
        "bytes": [51],
        "logprob": -0.1,
        "top_logprobs": [{"token": "alt0", "bytes": list(b"alt0"), "logprob": -1.0}],
    }


async def test_a_strategy_answers_with_its_trace_in_ponder():
    scorer = FakeScorer({"3 + 4 = 8": 0.9, "\\boxed{8}": 0.9}, default=0.1)
    async with client_for(scorer=scorer) as client:
        body = (
            await respond(client, strategy="best_of_n", strategy_params={"num_samples": 4, "return_trace": True})
        ).json()
    assert body["output"][0]["content"][0]["text"] == SOLUTIONS[1]
    assert body["ponder"]["scorer_calls"] == 1 and len(body["ponder"]["candidates"]) == 4
    assert body["usage"]["output_tokens"] == sum(tokens(s) for s in SOLUTIONS)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"store": True}, "store", "keeps no responses"),
        ({"background": True}, "background", "keeps no responses"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "earlier turns"),
        ({"conversation": "conv_1"}, "conversation", "keeps no conversations"),
        ({"truncation": "auto"}, "truncation", "does not truncate"),
        ({"text": {"verbosity": "low"}}, "text.verbosity", "verbosity"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
            "input",
            "text models",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "'item_reference'"),
        ({"input": [{"type": "reasoning", "summary": [], "encrypted_content": "xyz"}]}, "input", "encrypted"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, None, "input"),
        ({"input": []}, "input", "at least 1"),
        ({"tools": [{"type": "web_search"}]}, "tools", "built-in tools"),
        ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", "--enable-auto-tool-choice"),
        ({"max_output_tokens": 0}, "max_output_tokens", ""),
        ({"max_output_tokens": 5000}, "max_output_tokens", "context"),
        ({"temperature": 7}, "temperature", ""),
        ({"n": 2}, "n", "extra"),
        ({"strategy": "best_of_m"}, "strategy", "unknown strategy"),
        ({"strategy_params": {"num_sample": 2}}, "strategy_params.num_sample", "unknown parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "not supported"),
        ({"text": {"format": {"type": "json_schema"}}}, None, ""),
        ({"input": None}, None, "input"),
    ],
)
async def test_client_mistakes_get_a_400_envelope(body, param, says):
    async with client_for(scorer=FakeScorer()) as client:
        r = await respond(client, **body)
    assert_error(r, 400, param=param, says=says)


async def test_a_json_schema_format_reaches_the_engine_as_a_structured_output():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    engine = FakeEngine(lambda prompt, i: '{"x": 1}')
    async with client_for(engine) as client:
        r = await respond(client, text={"format": {"type": "json_schema", "name": "s", "schema": schema}})
    assert r.status_code == 200, r.text
    assert engine.calls[0][1].options["structured_outputs"].json == schema
    assert r.json()["text"]["format"]["name"] == "s"


async def test_stored_responses_are_a_404():
    async with client_for() as client:
        got = await client.get("/v1/responses/resp_1")
        deleted = await client.delete("/v1/responses/resp_1")
        items = await client.get("/v1/responses/resp_1/input_items")
    for r in (got, deleted, items):
        assert_error(r, 404, param="response_id", says="keeps no responses")


# ---- streaming ------------------------------------------------------------------------------------------------------
MESSAGE_EVENTS = ["response.output_item.added", "response.content_part.added"]
MESSAGE_DONE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


async def test_streaming_sends_openais_events_in_order():
    async with client_for() as client:
        r = await respond(client, stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    names = [name for name, _ in events]
    deltas = names.count("response.output_text.delta")
    assert deltas == len(SOLUTIONS[0].split(" "))  # the engine's tokens as they come
    assert names == [
        "response.created",
        "response.in_progress",
        *MESSAGE_EVENTS,
        *["response.output_text.delta"] * deltas,
        *MESSAGE_DONE,
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert text == SOLUTIONS[0]
    created, final = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["id"] == final["id"]
    done_item = next(data["item"] for name, data in events if name == "response.output_item.done")
    assert final["output"] == [done_item] and done_item["content"][0]["text"] == SOLUTIONS[0]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] == tokens(SOLUTIONS[0])
    assert final["ponder"]["chosen_completion_tokens"] == tokens(SOLUTIONS[0]) and final["store"] is False


async def test_streaming_a_reasoning_model_writes_the_reasoning_item_first(qwen3_tokenizer):
    async with qwen3_client(qwen3_tokenizer, THOUGHT) as client:
        r = await respond(client, stream=True)
    events = sse(r.text)
    names = [name for name, _ in events if not name.endswith(".delta")]
    assert names == [
        "response.created",
        "response.in_progress",
        *MESSAGE_EVENTS,
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        *MESSAGE_EVENTS,
        *MESSAGE_DONE,
        "response.completed",
    ]
    reasoning = "".join(d["delta"] for name, d in events if name == "response.reasoning_text.delta")
    answer = "".join(d["delta"] for name, d in events if name == "response.output_text.delta")
    assert reasoning == "\nThree plus four is seven.\n" and answer == "\n\nIt is 7."
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    thought = len(qwen3_tokenizer.encode("\nThree plus four is seven.\n", add_special_tokens=False))
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == thought
    added = [d["item"]["id"] for name, d in events if name == "response.output_item.added"]
    assert added == [item["id"] for item in final["output"]]  # the same ids in the stream and the response


async def test_streaming_a_strategy_writes_the_chosen_answer_and_its_tool_calls(qwen3_tokenizer):
    config = {"tool_call_parser": "hermes", "enable_auto_tool_choice": True}
    async with qwen3_client(qwen3_tokenizer, CALL, **config) as client:
        r = await respond(
            client, stream=True, tools=[WEATHER], strategy="self_consistency", strategy_params={"num_samples": 2}
        )
    events = sse(r.text)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    call = events[-1][1]["response"]["output"][0]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert events[-1][1]["response"]["ponder"]["strategy"] == "self_consistency"


async def test_a_stream_that_runs_out_of_tokens_ends_incomplete():
    async with client_for() as client:
        r = await respond(client, stream=True, max_output_tokens=2)
    name, data = sse(r.text)[-1]
    assert name == "response.incomplete" and data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_a_failure_mid_stream_is_an_error_event():
    async with client_for(scorer=FakeScorer(fail=True)) as client:
        r = await respond(client, stream=True, strategy="best_of_n")
    name, data = sse(r.text)[-1]
    assert name == "error" and data["code"] == "service_unavailable" and "scorer is down" in data["message"]


# ---- the official openai client -------------------------------------------------------------------------------------
def openai_client(engine, **config) -> openai.AsyncOpenAI:
    app = create_app(ServerConfig(model_name="tiny", **config), engine=engine)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder")
    return openai.AsyncOpenAI(base_url="http://ponder/v1", api_key="unused", http_client=http)


async def test_the_openai_client_reads_a_response(qwen3_tokenizer):
    client = openai_client(FakeEngine(lambda p, i: THOUGHT, tokenizer=qwen3_tokenizer, reasoning_parser="qwen3"))
    response = await client.responses.create(
        model="tiny",
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is 3 + 4?"}]}],
        max_output_tokens=64,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        extra_body={"strategy": "self_consistency", "strategy_params": {"num_samples": 2}},
    )
    assert response.status == "completed" and response.output_text == "\n\nIt is 7."
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "\nThree plus four is seven.\n"
    assert message.type == "message" and message.content[0].logprobs[0].top_logprobs[1].token == "alt1"
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.model_extra["ponder"]["strategy"] == "self_consistency"


async def test_the_openai_client_reads_a_stream_and_tool_calls(qwen3_tokenizer):
    engine = FakeEngine(lambda p, i: THOUGHT, tokenizer=qwen3_tokenizer, reasoning_parser="qwen3")
    client = openai_client(engine)
    stream = await client.responses.create(model="tiny", input="What is 3 + 4?", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text == "\n\nIt is 7."
    assert [e.sequence_number for e in events] == list(range(len(events)))

    tools = openai_client(
        FakeEngine(lambda p, i: CALL, tokenizer=qwen3_tokenizer, reasoning_parser="qwen3"),
        tool_call_parser="hermes",
        enable_auto_tool_choice=True,
    )
    response = await tools.responses.create(model="tiny", input="Weather in Paris?", tools=[WEATHER])
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments)["city"] == "Paris"


async def test_the_openai_client_raises_on_refusals():
    client = openai_client(FakeEngine(lambda p, i: SOLUTIONS[0]))
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="tiny", input="hi", previous_response_id="resp_1")
    assert refused.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_1")
