"""``POST /v1/completions`` in-process on the scripted engine: the prompt as sent, lists of prompts (concurrent runs,
prompt-major choices), logprobs in the completions shape, streaming, the refusals, and the official openai client."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from server.app import create_app
from server.config import ServerConfig
from tests.fakes import FakeEngine, FakeScorer, tokens, word_logprobs
from tests.test_http import SOLUTIONS, assert_error, client_for

PROMPT = "Q: What is 3 + 4?\nA:"


def echoing(prompt: str, index: int) -> str:
    """A script whose answer names its prompt and sample: `<prompt's first word> answer <index>`."""
    return f"{prompt.split()[0]} answer {index}"


async def complete(client: httpx.AsyncClient, **body) -> httpx.Response:
    return await client.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT} | body)


def data_events(text: str) -> list[dict]:
    lines = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines[-1]
    return [json.loads(line) for line in lines[:-1]]


async def test_a_string_prompt_is_sent_as_is_and_answered_as_a_text_completion():
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[0])
    async with client_for(engine) as client:
        r = await complete(client, max_tokens=20)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "tiny"
    assert body["choices"] == [{"index": 0, "text": SOLUTIONS[0], "logprobs": None, "finish_reason": "stop"}]
    assert engine.calls[0][0] == [PROMPT]  # no chat template
    assert engine.calls[0][1].max_tokens == 20
    assert body["usage"] == {
        "prompt_tokens": tokens(PROMPT),
        "completion_tokens": tokens(SOLUTIONS[0]),
        "total_tokens": tokens(PROMPT) + tokens(SOLUTIONS[0]),
    }
    assert body["ponder"]["strategy"] == "none" and body["ponder"]["engine_calls"] == 1  # one object: one prompt


async def test_a_list_of_prompts_runs_concurrently_with_prompt_major_choices():
    # The gate opens only once both prompts' engine calls are running at once.
    engine = FakeEngine(echoing, gate=asyncio.Event(), open_when=lambda e: e.running >= 2)
    async with client_for(engine) as client:
        r = await complete(client, prompt=["alpha is first", "beta is second"], n=2, temperature=0.5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [
        (0, "alpha answer 0"),
        (1, "alpha answer 1"),
        (2, "beta answer 0"),
        (3, "beta answer 1"),
    ]
    assert sorted(prompts[0] for prompts, _ in engine.calls) == ["alpha is first", "beta is second"]
    assert isinstance(body["ponder"], list) and len(body["ponder"]) == 2  # a list: one per prompt
    assert all(p["engine_calls"] == 1 and p["chosen_completion_tokens"] == 6 for p in body["ponder"])
    assert body["usage"]["prompt_tokens"] == 6 and body["usage"]["completion_tokens"] == 12


async def test_a_one_element_list_still_gets_a_list_of_ponder_objects():
    async with client_for() as client:
        body = (await complete(client, prompt=[PROMPT])).json()
    assert isinstance(body["ponder"], list) and len(body["ponder"]) == 1 and len(body["choices"]) == 1


async def test_each_prompt_is_its_own_strategy_run():
    scorer = FakeScorer({"3 + 4 = 8": 0.9, "\\boxed{8}": 0.9}, default=0.1)
    async with client_for(scorer=scorer) as client:
        r = await complete(client, prompt=["one", "two"], strategy="best_of_n", strategy_params={"num_samples": 4})
    body = r.json()
    assert [c["text"] for c in body["choices"]] == [SOLUTIONS[1], SOLUTIONS[1]]
    assert [p["strategy"] for p in body["ponder"]] == ["best_of_n", "best_of_n"]
    assert [p["scorer_calls"] for p in body["ponder"]] == [1, 1] and len(scorer.calls) == 2
    assert body["usage"]["completion_tokens"] == 2 * sum(tokens(s) for s in SOLUTIONS)


async def test_one_prompts_failure_cancels_the_other_runs():
    from strategies.base import InvalidRequestError

    class RefusesBad(FakeEngine):
        async def generate(self, prompts, spec, request_id):
            if "bad" in prompts[0]:
                await self.wait_running(1)  # the good prompt's call is under way
                raise InvalidRequestError("the policy engine refused the request: bad prompt")
            return await super().generate(prompts, spec, request_id)

    engine = RefusesBad(lambda p, i: "never", gate=asyncio.Event())  # the good call runs until it is cancelled
    async with client_for(engine) as client:
        r = await complete(client, prompt=["good one", "bad one"])
    assert_error(r, 400, says="bad prompt")
    assert engine.cancelled == 1 and engine.running == 0 and engine.aborted  # the good run's engine work aborted


async def test_logprobs_come_in_the_completions_shape():
    async with client_for() as client:
        r = await complete(client, logprobs=2)
    choice = r.json()["choices"][0]
    logprobs, expected = choice["logprobs"], word_logprobs(SOLUTIONS[0], 2)
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert logprobs["tokens"] == [t.token for t in expected] and "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["token_logprobs"] == [t.logprob for t in expected]
    assert logprobs["top_logprobs"][1] == {"alt0": -1.0, "alt1": -2.0, " +": -0.2}  # the alternatives and the token
    offsets = [sum(len(t.token) for t in expected[:k]) for k in range(len(expected))]
    assert logprobs["text_offset"] == offsets


async def test_stop_seed_and_the_default_max_tokens_reach_the_engine():
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[0])
    async with client_for(engine, default_max_tokens=33) as client:
        r = await complete(client, stop="\n\n", seed=7, top_p=0.5, top_k=3)
    assert r.status_code == 200, r.text
    spec = engine.calls[0][1]
    assert spec.stop == ("\n\n",) and spec.seed == 7 and spec.top_p == 0.5 and spec.max_tokens == 33
    assert dict(spec.options) == {"top_k": 3}
    assert r.json()["choices"][0]["text"] == "3 + 4 = 7"  # cut at the stop string, which is dropped, as OpenAI does


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"prompt": [1, 2, 3]}, "prompt", "token-id prompts"),
        ({"prompt": [[1, 2], [3]]}, "prompt", "token-id prompts"),
        ({"prompt": []}, "prompt", "non-empty list"),
        ({"prompt": None}, "prompt", "must be provided"),
        ({"prompt": ""}, "prompt", "must be provided"),
        ({"prompt_embeds": "AAAA"}, "prompt_embeds", "as text"),
        ({"suffix": "end"}, "suffix", "insertion"),
        ({"echo": True}, "echo", "generated text only"),
        ({"add_special_tokens": False}, "add_special_tokens", "BOS"),
        ({"best_of": 2}, "best_of", "strategy 'best_of_n'"),
        ({"best_of_n": 2}, "best_of_n", "extra"),
        ({"max_tokens": 0}, "max_tokens", ""),
        ({"max_tokens": 5000}, "max_tokens", "context"),
        ({"temperature": 7}, "temperature", ""),
        ({"logprobs": "many"}, "logprobs", "integer"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream=True"),
        ({"strategy": "best_of_m"}, "strategy", "unknown strategy"),
        ({"strategy": "best_of_n", "n": 2}, "n", "only supported with strategy 'none'"),
        ({"prompt": ["a"] * 5, "n": 4}, "prompt", "cap of 16"),
        ({"strategy_params": {"num_sample": 2}}, "strategy_params.num_sample", "unknown parameter"),
        ({"use_beam_search": True}, "use_beam_search", "beam_search"),
        ({"prompt": 42}, None, "prompt"),
    ],
)
async def test_client_mistakes_get_a_400_envelope(body, param, says):
    async with client_for(scorer=FakeScorer(), max_num_samples=16) as client:
        r = await complete(client, **body)
    assert_error(r, 400, param=param, says=says)


async def test_a_prompt_longer_than_the_context_is_a_400():
    async with client_for(FakeEngine(lambda p, i: "x", max_model_len=8)) as client:
        r = await complete(client, prompt=["short", "word " * 20])
    assert_error(r, 400, param="prompt", says="no room")


async def test_streaming_sends_tokens_then_the_finish_then_usage():
    async with client_for() as client:
        r = await complete(client, stream=True, logprobs=1, stream_options={"include_usage": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = data_events(r.text)
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert "".join(texts) == SOLUTIONS[0] and len(texts) > 1  # the engine's tokens as they come
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "stop"
    offsets = [o for c in chunks[:-1] for o in c["choices"][0]["logprobs"]["text_offset"]]
    tokens_ = [t for c in chunks[:-1] for t in c["choices"][0]["logprobs"]["tokens"]]
    assert offsets == [sum(len(t) for t in tokens_[:k]) for k in range(len(tokens_))]  # offsets run on across chunks
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == tokens(SOLUTIONS[0])
    assert usage["ponder"]["strategy"] == "none" and usage["ponder"]["chosen_completion_tokens"] == 6


async def test_streaming_a_list_of_prompts_keeps_each_prompts_text_under_its_index():
    engine = FakeEngine(echoing)
    async with client_for(engine) as client:
        r = await complete(client, prompt=["alpha x", "beta y", "gamma z"], stream=True)
    chunks = data_events(r.text)
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {0: "alpha answer 0", 1: "beta answer 0", 2: "gamma answer 0"}
    finishes = [c["index"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]
    assert sorted(finishes) == [0, 1, 2]


async def test_streaming_a_strategy_sends_each_chosen_answer_whole():
    async with client_for(scorer=FakeScorer()) as client:
        r = await complete(
            client,
            prompt=["one", "two"],
            stream=True,
            strategy="best_of_n",
            strategy_params={"num_samples": 4},
            stream_options={"include_usage": True},
        )
    chunks = data_events(r.text)
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in chunks[:-1]] == [
        (0, SOLUTIONS[0]),
        (1, SOLUTIONS[0]),
    ]
    assert all(c["choices"][0]["finish_reason"] == "stop" for c in chunks[:-1])
    assert [p["scorer_calls"] for p in chunks[-1]["ponder"]] == [1, 1]
    assert chunks[-1]["usage"]["completion_tokens"] == 2 * sum(tokens(s) for s in SOLUTIONS)


async def test_a_failure_mid_stream_is_an_error_event():
    async with client_for(scorer=FakeScorer(fail=True)) as client:
        r = await complete(client, stream=True, strategy="best_of_n")
    events = [line[len("data: ") :] for line in r.text.split("\n") if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["type"] == "service_unavailable" and "scorer is down" in error["message"]


async def test_each_prompt_is_recorded_in_the_metrics():
    async with client_for() as client:
        await complete(client, prompt=["a b", "c d"])
        metrics = (await client.get("/metrics")).text
    assert 'ponder_requests_total{status="200",strategy="none"} 2.0' in metrics


# ---- the official openai client -------------------------------------------------------------------------------------
def openai_client(engine=None, scorer=None, **config) -> openai.AsyncOpenAI:
    engine = engine or FakeEngine(lambda prompt, i: SOLUTIONS[i % len(SOLUTIONS)])
    app = create_app(ServerConfig(model_name="tiny", **config), engine=engine, scorer=scorer)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder")
    return openai.AsyncOpenAI(base_url="http://ponder/v1", api_key="unused", http_client=http)


async def test_the_openai_client_reads_completions():
    client = openai_client(FakeEngine(echoing))
    completion = await client.completions.create(
        model="tiny", prompt=["alpha x", "beta y"], n=2, temperature=0.5, logprobs=1, max_tokens=8
    )
    assert completion.object == "text_completion"
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (0, "alpha answer 0", "stop"),
        (1, "alpha answer 1", "stop"),
        (2, "beta answer 0", "stop"),
        (3, "beta answer 1", "stop"),
    ]
    logprobs = completion.choices[0].logprobs
    assert logprobs.tokens == ["alpha", " answer", " 0"] and logprobs.text_offset == [0, 5, 12]
    assert logprobs.top_logprobs[0] == {"alt0": -1.0, "alpha": -0.1}
    assert completion.usage.completion_tokens == 12 and completion.usage.prompt_tokens == 4
    assert [p["strategy"] for p in completion.model_extra["ponder"]] == ["none", "none"]

    single = await client.completions.create(
        model="tiny",
        prompt="one two",
        extra_body={"strategy": "self_consistency", "strategy_params": {"num_samples": 3}},
    )
    assert single.choices[0].text == "one answer 0" and single.model_extra["ponder"]["strategy"] == "self_consistency"


async def test_the_openai_client_streams_completions():
    client = openai_client()
    stream = await client.completions.create(
        model="tiny", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == SOLUTIONS[0]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == tokens(SOLUTIONS[0])


async def test_the_openai_client_raises_on_a_400():
    client = openai_client()
    with pytest.raises(openai.BadRequestError) as refused:
        await client.completions.create(model="tiny", prompt=PROMPT, echo=True)
    assert refused.value.body["param"] == "echo"
