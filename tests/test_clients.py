"""The real clients, unmodified, against a real ``ponder serve``: the official ``openai`` client (sync and async),
LiteLLM and LangChain's ``ChatOpenAI``, on one server process of a tiny random-weight Qwen3 with the real tokenizer,
chat template, vLLM's ``qwen3`` reasoning parser and ``hermes`` tool parser (tests/qwen3.py).

The model's words are noise, so what a test asserts is held by vLLM itself, as in tests/test_drop_in_qwen3.py: a
tight JSON schema (the engine writes JSON without free whitespace), a thinking budget that closes a prefilled
thinking block, a strict tool whose call is restricted to its own tokens (``allowed_token_ids``), and a seed, under
which the same request gives the same text whichever client sends it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall
from pydantic import BaseModel, Field

from tests.qwen3 import QWEN3_SERVED_NAME as MODEL
from tests.qwen3 import load_qwen3_tokenizer

pytestmark = pytest.mark.e2e
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
THINKING_OPEN = USER + [{"role": "assistant", "content": "<think>\n"}]  # the reply starts inside the thinking
OFF = {"chat_template_kwargs": {"enable_thinking": False}}
DIGIT = {
    "type": "object",
    "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["x"],
    "additionalProperties": False,
}
JSON_DIGIT = {"type": "json_schema", "json_schema": {"name": "digit", "schema": DIGIT, "strict": True}}
CITY = {"type": "string", "enum": ["Paris", "Rome"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "strict": True,  # vLLM constrains the arguments to the schema only for a strict tool
        "parameters": {
            "type": "object",
            "properties": {"city": CITY},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


class Digit(BaseModel):
    """One digit."""

    x: int = Field(ge=0, le=9)


@pytest.fixture(scope="module")
def server(qwen3_server):
    return qwen3_server  # one server for this module and tests/test_drop_in_qwen3.py (tests/conftest.py)


@pytest.fixture(scope="module")
def base_url(server) -> str:
    return f"{server.url}/v1"


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def call_tokens() -> list[int]:
    """The tokens of the one weather call (either city) and the end of turn, as ``allowed_token_ids``: vLLM holds
    the call's structure, and a random model cannot spend its tokens on the whitespace JSON allows between them."""
    tokenizer = load_qwen3_tokenizer()
    calls = [f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{c}"}}}}</tool_call>' for c in CITY["enum"]]
    allowed = {i for call in calls for i in tokenizer.encode(call, add_special_tokens=False)}
    allowed.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(allowed)


@pytest.fixture(scope="module")
def litellm():
    """LiteLLM, imported with its bundled model-cost map (it fetches one from the network otherwise)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        env.setenv("HF_HUB_OFFLINE", "1")
        import litellm

        yield litellm


def greedy(client: openai.OpenAI, **body) -> ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=6, temperature=0, **({"extra_body": OFF} | body)
    )


def digit_of(text: str | None) -> int:
    answer = json.loads(text or "")
    assert set(answer) == {"x"} and 0 <= answer["x"] <= 9, text
    return answer["x"]


# --- the official openai client -----------------------------------------------------------------------------------


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_vllm_sampling_extras_and_openai_fields_reach_the_engine(client):
    """top_k=1 and min_p=1 leave only the likeliest token: any seed gives the greedy text, so they were applied."""
    plain = greedy(client)
    assert plain.choices[0].message.content and plain.usage.completion_tokens == 6
    for seed, extras in ((1, {"top_k": 1}), (2, {"top_k": 1}), (3, {"min_p": 1.0, "repetition_penalty": 1.0})):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=USER,
            max_tokens=6,
            temperature=1.0,
            seed=seed,
            metadata={"team": "tests"},
            user="user-1",
            store=False,
            extra_body=OFF | extras,
        )
        assert reply.choices[0].message.content == plain.choices[0].message.content, extras
        assert reply.model_extra["ponder"]["strategy"] == "none"
    # and without them the seed matters: the model is nearly uniform
    sampled = {
        client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=6, seed=s, extra_body=OFF | {"repetition_penalty": 1.1}
        )
        .choices[0]
        .message.content
        for s in (1, 2)
    }
    assert len(sampled) == 2


def test_thinking_off_answers_in_content(client):
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, seed=0, extra_body=OFF)
    message = reply.choices[0].message
    assert message.content and message.reasoning is None and not message.tool_calls
    assert reply.choices[0].finish_reason == "length"


def test_logprobs_are_typed(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=4, seed=0, logprobs=True, top_logprobs=2, extra_body=OFF
    )
    choice = reply.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == reply.usage.completion_tokens == 4
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.logprob <= t.top_logprobs[0].logprob <= 0 and bytes(t.bytes).decode() == t.token


def test_logit_bias_is_applied(client):
    """A bias of +100 on one token makes it the greedy choice at every step."""
    (paris,) = load_qwen3_tokenizer().encode("Paris", add_special_tokens=False)
    reply = greedy(client, logit_bias={str(paris): 100})
    assert reply.choices[0].message.content == "Paris" * 6


def test_response_format_json_schema(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=16, seed=0, response_format=JSON_DIGIT, extra_body=OFF
    )
    digit_of(reply.choices[0].message.content)
    assert reply.choices[0].finish_reason == "stop"


def test_parse_with_a_pydantic_model(client):
    reply = client.chat.completions.parse(
        model=MODEL, messages=USER, max_tokens=16, seed=0, response_format=Digit, extra_body=OFF
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Digit) and parsed.x == digit_of(reply.choices[0].message.content)


def test_stream_helper_with_a_pydantic_model(client):
    with client.chat.completions.stream(
        model=MODEL, messages=USER, max_tokens=16, seed=0, response_format=Digit, extra_body=OFF
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert events[-1].type == "content.done" and isinstance(events[-1].parsed, Digit)
    assert "".join(e.delta for e in events if e.type == "content.delta") == final.choices[0].message.content
    assert final.choices[0].message.parsed == events[-1].parsed


@pytest.mark.parametrize("choice,finish", [("required", "tool_calls"), (NAMED, "stop")])
def test_a_forced_tool_call_is_typed(client, call_tokens, choice, finish):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=48,
        seed=3,
        tools=[WEATHER],
        tool_choice=choice,
        parallel_tool_calls=False,
        extra_body=OFF | {"allowed_token_ids": call_tokens},
    )
    (call,) = reply.choices[0].message.tool_calls
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.id and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in CITY["enum"]
    assert reply.choices[0].finish_reason == finish


def test_the_typed_assistant_message_goes_back_with_the_tool_result(client, call_tokens):
    """The documented loop: append ``choice.message`` (the client's own object) and the tool's result, ask again."""
    first = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=48,
        seed=3,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        extra_body=OFF | {"allowed_token_ids": call_tokens},
    )
    message = first.choices[0].message
    history = [*USER, message, {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny, 21 C"}]
    reply = client.chat.completions.create(
        model=MODEL,
        messages=history,
        max_tokens=16,
        seed=0,
        tools=[WEATHER],
        tool_choice="none",  # with "auto", vLLM's structural tag (a call or the JSON) lets JSON take free whitespace
        response_format=JSON_DIGIT,
        extra_body=OFF,
    )
    digit_of(reply.choices[0].message.content)
    assert reply.usage.prompt_tokens > first.usage.prompt_tokens


def test_reasoning_with_a_thinking_budget(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=THINKING_OPEN,
        max_tokens=48,
        seed=3,
        response_format=JSON_DIGIT,
        extra_body={"thinking_token_budget": 6},
    )
    message = reply.choices[0].message
    assert isinstance(message.reasoning, str) and message.reasoning.strip()  # vLLM's field, kept by the client
    assert message.model_extra["reasoning"] == message.reasoning
    digit_of(message.content)


def test_streamed_reasoning_then_content_and_usage(client):
    body = {"model": MODEL, "messages": THINKING_OPEN, "max_tokens": 48, "seed": 3, "response_format": JSON_DIGIT}
    whole = client.chat.completions.create(**body, extra_body={"thinking_token_budget": 6})
    chunks = list(
        client.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True}, extra_body={"thinking_token_budget": 6}
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    kinds = [k for d in deltas for k in ("reasoning", "content") if getattr(d, k, None)]
    assert kinds[0] == "reasoning" and kinds[-1] == "content"
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "reasoning")
    assert "".join(getattr(d, "reasoning", None) or "" for d in deltas) == whole.choices[0].message.reasoning
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streamed_tool_call_deltas(client, call_tokens):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=48,
        seed=3,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=OFF | {"allowed_token_ids": call_tokens},
    )
    chunks = list(stream)
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert calls and {c.index for c in calls} == {0} and calls[0].id and calls[0].function.name == "get_weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls))["city"] in CITY["enum"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens > 0


async def test_async_client_concurrent_and_streamed(base_url, client):
    reference = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, seed=7, extra_body=OFF)
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as aclient:
        replies = await asyncio.gather(
            *[
                aclient.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, seed=7, extra_body=OFF)
                for _ in range(3)
            ]
        )
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=6, seed=7, stream=True, extra_body=OFF
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        parsed = await aclient.chat.completions.parse(
            model=MODEL, messages=USER, max_tokens=16, seed=0, response_format=Digit, extra_body=OFF
        )
    assert {r.choices[0].message.content for r in replies} == {reference.choices[0].message.content} == {streamed}
    assert isinstance(parsed.choices[0].message.parsed, Digit)


def test_n_samples_with_the_default_strategy(client):
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, seed=0, n=2, extra_body=OFF)
    assert [c.index for c in reply.choices] == [0, 1] and reply.usage.completion_tokens == 8


def test_self_consistency_returns_its_ponder_object(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=16,
        seed=0,
        response_format=JSON_DIGIT,
        extra_body=OFF | {"strategy": "self_consistency", "strategy_params": {"num_samples": 3, "return_trace": True}},
    )
    ponder = reply.model_extra["ponder"]
    assert ponder["strategy"] == "self_consistency" and ponder["engine_requests"] == 1
    candidates = ponder["candidates"]
    assert len(candidates) == 3 and sum(c["chosen"] for c in candidates) == 1
    assert reply.usage.completion_tokens == sum(c["completion_tokens"] for c in candidates)
    votes = {v["answer"]: v["count"] for v in ponder["trace"]["votes"]}
    chosen = digit_of(reply.choices[0].message.content)
    assert votes[json.dumps({"x": chosen}, separators=(",", ":"))] == max(votes.values())


def test_a_strategy_with_n_above_one_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            max_tokens=4,
            n=2,
            extra_body={"strategy": "self_consistency", "strategy_params": {"num_samples": 3}},
        )
    assert "num_samples" in refused.value.message


def test_an_unknown_field_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, extra_body={"bogus_field": 1})
    assert refused.value.status_code == 400
    assert refused.value.message == "Error code: 400 - bogus_field: Extra inputs are not permitted"
    assert refused.value.body["param"] == "bogus_field" and refused.value.body["type"] == "invalid_request_error"


def test_completions_text_logprobs_and_stream(client):
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5, "seed": 1}
    whole = client.completions.create(**body, logprobs=2, extra_body={"top_k": 50})
    choice = whole.choices[0]
    assert whole.object == "text_completion" and choice.text and choice.finish_reason == "length"
    assert "".join(choice.logprobs.tokens) == choice.text and len(choice.logprobs.tokens) == 5
    assert all(
        len(top) <= 3 and tok in top
        for tok, top in zip(choice.logprobs.tokens, choice.logprobs.top_logprobs, strict=True)
    )
    chunks = list(
        client.completions.create(**body, stream=True, stream_options={"include_usage": True}, extra_body={"top_k": 50})
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 5


def test_completions_with_a_strategy(client):
    reply = client.completions.create(
        model=MODEL,
        prompt="2 + 3 =",
        max_tokens=4,
        extra_body={"strategy": "self_consistency", "strategy_params": {"num_samples": 3}},
    )
    assert reply.choices[0].text and reply.model_extra["ponder"]["strategy"] == "self_consistency"
    stream = client.completions.create(
        model=MODEL,
        prompt="2 + 3 =",
        max_tokens=4,
        stream=True,
        extra_body={"strategy": "self_consistency", "strategy_params": {"num_samples": 3}},
    )
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_responses_text_and_stream_events(client):
    body = {"model": MODEL, "input": "What is 2 + 3?", "instructions": "Be brief.", "max_output_tokens": 6}
    whole = client.responses.create(**body, extra_body=OFF | {"seed": 2})
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.instructions == "Be brief." and whole.output_text and whole.usage.output_tokens == 6
    assert [item.type for item in whole.output] == ["message"]
    assert whole.model_extra["ponder"]["strategy"] == "none"
    events = list(client.responses.create(**body, stream=True, extra_body=OFF | {"seed": 2}))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-4].text == events[-1].response.output_text == whole.output_text


def test_responses_parse_and_a_strategy(client):
    parsed = client.responses.parse(
        model=MODEL, input="Pick a digit.", max_output_tokens=16, text_format=Digit, extra_body=OFF | {"seed": 0}
    )
    assert isinstance(parsed.output_parsed, Digit) and parsed.status == "completed"
    voted = client.responses.parse(
        model=MODEL,
        input="Pick a digit.",
        max_output_tokens=16,
        text_format=Digit,
        extra_body=OFF | {"strategy": "self_consistency", "strategy_params": {"num_samples": 3}},
    )
    assert isinstance(voted.output_parsed, Digit) and voted.model_extra["ponder"]["strategy"] == "self_consistency"


# --- LiteLLM -------------------------------------------------------------------------------------------------------


async def test_litellm_completion_and_acompletion(litellm, base_url, client):
    body = {"model": f"openai/{MODEL}", "api_base": base_url, "api_key": "x", "messages": USER, "max_tokens": 6}
    reference = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, seed=5, extra_body=OFF)
    reply = litellm.completion(**body, seed=5, extra_body=OFF)
    assert reply.choices[0].message.content == reference.choices[0].message.content
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    again = await litellm.acompletion(**body, seed=5, extra_body=OFF)
    assert again.choices[0].message.content == reference.choices[0].message.content


def test_litellm_strategy_and_response_format(litellm, base_url):
    reply = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=base_url,
        api_key="x",
        messages=USER,
        max_tokens=16,
        response_format=JSON_DIGIT,
        extra_body=OFF | {"strategy": "self_consistency", "strategy_params": {"num_samples": 3}},
    )
    digit_of(reply.choices[0].message.content)
    assert reply.ponder["strategy"] == "self_consistency"
    assert reply.usage.completion_tokens > reply.ponder["chosen_completion_tokens"]


def test_litellm_stream(litellm, base_url, client):
    reference = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, seed=5, extra_body=OFF)
    chunks = list(
        litellm.completion(
            model=f"openai/{MODEL}",
            api_base=base_url,
            api_key="x",
            messages=USER,
            max_tokens=6,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=OFF,
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reference.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == 6


def test_litellm_reasoning_and_tool_call(litellm, base_url, call_tokens):
    common = {"model": f"openai/{MODEL}", "api_base": base_url, "api_key": "x", "seed": 3, "max_tokens": 48}
    thought = litellm.completion(
        **common, messages=THINKING_OPEN, response_format=JSON_DIGIT, extra_body={"thinking_token_budget": 6}
    )
    assert thought.choices[0].message.reasoning_content.strip()  # vLLM's `reasoning`, as LiteLLM names it
    digit_of(thought.choices[0].message.content)
    called = litellm.completion(
        **common,
        messages=USER,
        tools=[WEATHER],
        tool_choice=NAMED,
        parallel_tool_calls=False,
        extra_body=OFF | {"allowed_token_ids": call_tokens},
    )
    (call,) = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in CITY["enum"]


def test_litellm_bad_request(litellm, base_url):
    with pytest.raises(litellm.BadRequestError) as refused:
        litellm.completion(
            model=f"openai/{MODEL}",
            api_base=base_url,
            api_key="x",
            messages=USER,
            max_tokens=4,
            num_retries=0,
            extra_body={"strategy": "no_such_strategy"},
        )
    assert refused.value.status_code == 400 and "no_such_strategy" in str(refused.value)


# --- LangChain -----------------------------------------------------------------------------------------------------


def chat_openai(base_url: str, **kwargs):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base_url, api_key="x", model=MODEL, max_retries=0, **kwargs)


def test_langchain_invoke_and_stream(base_url, client):
    reference = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, seed=5, extra_body=OFF)
    llm = chat_openai(base_url, max_tokens=6, seed=5, extra_body=OFF)
    message = llm.invoke(USER[0]["content"])
    assert message.content == reference.choices[0].message.content
    assert message.usage_metadata["output_tokens"] == 6 and message.response_metadata["finish_reason"] == "length"
    chunks = list(llm.stream(USER[0]["content"]))
    assert "".join(c.content for c in chunks) == message.content


def test_langchain_structured_output(base_url):
    llm = chat_openai(base_url, max_tokens=16, seed=0, extra_body=OFF)
    answer = llm.with_structured_output(Digit, method="json_schema").invoke("Pick a digit.")
    assert isinstance(answer, Digit)
    voted = chat_openai(
        base_url,
        max_tokens=16,
        extra_body=OFF | {"strategy": "self_consistency", "strategy_params": {"num_samples": 3}},
    ).with_structured_output(Digit, method="json_schema", include_raw=True)
    out = voted.invoke("Pick a digit.")
    assert isinstance(out["parsed"], Digit) and out["parsing_error"] is None


def test_langchain_bind_tools_and_the_tool_result(base_url, call_tokens):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        return "sunny, 21 C"

    llm = chat_openai(base_url, max_tokens=48, seed=3, extra_body=OFF | {"allowed_token_ids": call_tokens})
    for choice in ("get_weather", "required"):
        bound = llm.bind_tools([get_weather], tool_choice=choice, strict=True, parallel_tool_calls=False)
        message = bound.invoke("What is the weather in Paris?")
        (call,) = message.tool_calls
        assert call["name"] == "get_weather" and call["args"]["city"] in CITY["enum"] and call["id"]
        streamed = None
        for chunk in bound.stream("What is the weather in Paris?"):
            streamed = chunk if streamed is None else streamed + chunk
        assert [c["name"] for c in streamed.tool_calls] == ["get_weather"]
    history = [
        HumanMessage("What is the weather in Paris?"),
        message,
        ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]),
    ]
    llm = chat_openai(base_url, max_tokens=16, seed=0, extra_body=OFF)
    answer = llm.with_structured_output(Digit, method="json_schema").invoke(history)
    assert isinstance(answer, Digit)
