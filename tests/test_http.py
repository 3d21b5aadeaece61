"""The HTTP layer in-process (ASGI transport): schema, errors, streaming framing, usage, metrics."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from server.app import ClientGoneError, _unless_disconnected, create_app
from server.config import ServerConfig
from tests.fakes import FakeEngine, FakeScorer, tokens

SOLUTIONS = ("3 + 4 = 7\n\n\\boxed{7}", "3 + 4 = 8\n\n\\boxed{8}", "3 + 4 = 7\n\nso \\boxed{7}", "hmm\n\n\\boxed{1}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]


def client_for(engine=None, scorer=None, **config) -> httpx.AsyncClient:
    engine = engine or FakeEngine(lambda prompt, i: SOLUTIONS[i % len(SOLUTIONS)])
    app = create_app(ServerConfig(model_name="tiny", reward_model_name="prm", **config), engine=engine, scorer=scorer)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder")


async def chat(client: httpx.AsyncClient, **body) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES} | body)


def assert_error(response: httpx.Response, status: int, *, param: str | None = None, says: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert says.lower() in error["message"].lower()
    if param is not None:
        assert error["param"] == param
    return error


async def test_best_of_n_response_schema_usage_and_trace():
    scorer = FakeScorer({"3 + 4 = 7": 0.9, "\\boxed{7}": 0.9, "so \\boxed{7}": 0.7}, default=0.2)
    engine = FakeEngine(lambda prompt, i: SOLUTIONS[i % 4])
    async with client_for(engine, scorer) as client:
        r = await chat(client, strategy="best_of_n", strategy_params={"num_samples": 4, "return_trace": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": SOLUTIONS[0], "reasoning": None, "tool_calls": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    prompt = "system: Be brief.\nuser: What is 3 + 4?\nassistant:"  # the chat template applied to the messages
    assert engine.calls[0][0] == [prompt]
    usage = body["usage"]
    assert usage["prompt_tokens"] == tokens(prompt)
    assert usage["completion_tokens"] == sum(tokens(s) for s in SOLUTIONS)  # every candidate counted
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    ponder = body["ponder"]
    assert ponder["strategy"] == "best_of_n" and ponder["engine_calls"] == 1 and ponder["scorer_calls"] == 1
    assert ponder["chosen_completion_tokens"] == tokens(SOLUTIONS[0])
    assert [c["chosen"] for c in ponder["candidates"]] == [True, False, False, False]
    assert ponder["candidates"][1]["step_scores"] == [0.2, 0.2]


async def test_trace_is_left_out_unless_asked():
    async with client_for() as client:
        r = await chat(client, strategy="self_consistency", strategy_params={"num_samples": 4})
    assert r.json()["ponder"]["candidates"] is None
    assert r.json()["choices"][0]["message"]["content"] == SOLUTIONS[0]


async def test_none_with_n_returns_n_choices():
    async with client_for() as client:
        r = await chat(client, n=3, max_tokens=5, temperature=0.5)
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["ponder"]["engine_calls"] == 1 and body["ponder"]["scorer_calls"] == 0


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"strategy": "best_of_m"}, "strategy", "unknown strategy 'best_of_m'; available: "),
        (
            {"strategy": "self_consistency", "strategy_params": {"num_sample": 4}},
            "strategy_params.num_sample",
            "unknown parameter",
        ),
        (
            {"strategy": "self_consistency", "strategy_params": {"num_samples": "many"}},
            "strategy_params.num_samples",
            "invalid",
        ),
        ({"strategy": "self_consistency", "strategy_params": {"num_samples": 0}}, None, "num_samples must be"),
        (
            {"strategy": "self_consistency", "strategy_params": {"num_samples": 65}},
            "strategy_params.num_samples",
            "cap of 64",
        ),
        (
            {"strategy": "self_consistency", "strategy_params": {"max_total_tokens": 10**6}},
            "strategy_params.max_total_tokens",
            "cap of 65536",
        ),
        (
            {"strategy": "best_of_n", "strategy_params": {"aggregation": "median"}},
            "strategy_params.aggregation",
            "should be 'last', 'min'",
        ),
        ({"strategy": "best_of_n", "n": 2}, "n", "only supported with strategy 'none'"),
        ({"max_tokens": 5000}, "max_tokens", "context"),
        ({"max_tokens": 0}, "max_tokens", ""),
        ({"temperature": 7}, "temperature", ""),
        ({"tools": [{"type": "function"}]}, "tools.0.function", "Field required"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tool_choice",
            "needs a tool-call parser",
        ),
        ({"tools": []}, "tools", "must not be an empty array"),
        ({"store": True}, "store", "keeps no completions"),
        ({"use_beam_search": True}, "use_beam_search", "strategy 'beam_search'"),
        ({"strategy": "beam_search", "response_format": {"type": "json_object"}}, "response_format", "in steps"),
        ({"strategy_params": {"min_thinking_tokens": 10}}, "strategy_params.min_thinking_tokens", "reasoning"),
        ({"messages": None}, None, "malformed request body"),
        ({"messages": []}, "messages", ""),
        ({"stream_option": {}}, "stream_option", "extra"),
    ],
)
async def test_client_mistakes_get_a_400_envelope(body, param, says):
    async with client_for(scorer=FakeScorer()) as client:
        r = await chat(client, **body)
    assert_error(r, 400, param=param, says=says)


async def test_strategy_needing_a_reward_model_without_one_is_a_400():
    async with client_for(scorer=None) as client:
        r = await chat(client, strategy="weighted_best_of_n")
        models = (await client.get("/v1/models")).json()
    assert_error(r, 400, param="strategy", says="needs a reward model")
    cards = {card["name"]: card for card in models["strategies"]}
    assert not cards["best_of_n"]["available"] and cards["self_consistency"]["available"]


async def test_malformed_json_and_unknown_routes():
    async with client_for() as client:
        bad = await client.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        missing = await client.get("/v1/nothing")
        wrong_method = await client.get("/v1/chat/completions")
    assert_error(bad, 400, says="not valid JSON")
    assert_error(missing, 404)
    assert_error(wrong_method, 405)


async def test_prompt_longer_than_the_context_is_a_400():
    engine = FakeEngine(lambda p, i: "x", max_model_len=8)
    async with client_for(engine) as client:
        r = await chat(client, messages=[{"role": "user", "content": "word " * 20}])
    assert_error(r, 400, param="messages", says="no room")


async def test_reward_model_failure_is_a_503_and_other_strategies_keep_working():
    async with client_for(scorer=FakeScorer(fail=True)) as client:
        broken = await chat(client, strategy="best_of_n")
        fine = await chat(client, strategy="self_consistency", strategy_params={"num_samples": 2})
    error = assert_error(broken, 503, says="reward model failed")
    assert error["code"] == "reward_model_error"
    assert fine.status_code == 200


def sse_events(text: str) -> list:
    events = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_streaming_none_sends_tokens_then_finish_then_usage():
    async with client_for() as client:
        r = await chat(client, stream=True, stream_options={"include_usage": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(r.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]]
    assert "".join(content) == SOLUTIONS[0] and len([x for x in content if x]) > 1  # real token streaming
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == tokens(SOLUTIONS[0])


async def test_streaming_a_strategy_returns_the_answer_and_full_usage():
    async with client_for(scorer=FakeScorer()) as client:
        r = await chat(
            client,
            stream=True,
            strategy="best_of_n",
            strategy_params={"num_samples": 4},
            stream_options={"include_usage": True},
        )
        plain = await chat(client, stream=True, strategy="best_of_n", strategy_params={"num_samples": 4})
    chunks = sse_events(r.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == SOLUTIONS[0]
    assert chunks[-1]["usage"]["completion_tokens"] == sum(tokens(s) for s in SOLUTIONS)
    assert chunks[-1]["ponder"]["scorer_calls"] == 1
    assert all("usage" not in c for c in sse_events(plain.text))


async def test_models_health_and_metrics():
    async with client_for(scorer=FakeScorer()) as client:
        models = (await client.get("/v1/models")).json()
        health = await client.get("/health")
        await chat(client, strategy="self_consistency", strategy_params={"num_samples": 4})
        metrics = (await client.get("/metrics")).text
    assert models["data"][0]["id"] == "tiny" and models["reward_model"] == "prm"
    names = [s["name"] for s in models["strategies"]]
    assert names == sorted(names) and {"none", "best_of_n", "weighted_best_of_n", "self_consistency"} <= set(names)
    assert next(s for s in models["strategies"] if s["name"] == "best_of_n")["params"]["num_samples"] == 8
    assert health.status_code == 200
    assert 'ponder_requests_total{status="200",strategy="self_consistency"} 1.0' in metrics
    expected = sum(tokens(s) for s in SOLUTIONS)
    assert f'ponder_completion_tokens_total{{strategy="self_consistency"}} {expected}.0' in metrics


async def test_health_is_503_until_models_are_loaded():
    app = create_app(ServerConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client:
        health = await client.get("/health")
        r = await chat(client)
    assert health.status_code == 503
    assert_error(r, 503, says="still loading")


class GoneAfter:
    """A request whose client disconnects after ``polls`` checks."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    async def is_disconnected(self) -> bool:
        self.polls -= 1
        return self.polls < 0


async def test_client_disconnect_cancels_the_engine_work():
    engine = FakeEngine(lambda p, i: "never", gate=asyncio.Event())  # runs until it is cancelled
    from server.accounting import CountingEngine, Ledger
    from strategies.base import SamplingSpec

    work = CountingEngine(engine, Ledger(token_budget=1000), "r1").generate(["p"], SamplingSpec(), "r1")
    with pytest.raises(ClientGoneError):
        await _unless_disconnected(GoneAfter(1), work)
    assert engine.running == 0 and engine.cancelled == 1


async def test_third_party_strategy_through_the_entry_point(monkeypatch):
    from importlib.metadata import EntryPoint

    import strategies

    plugin = EntryPoint(name="echo", value="tests.plugin_strategy", group="ponder.strategies")
    monkeypatch.setattr(strategies, "entry_points", lambda group: [plugin] if group == "ponder.strategies" else [])
    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))  # leave the real registry as it was
    strategies._load()
    async with client_for() as client:
        r = await chat(client, strategy="echo_plugin", strategy_params={"shout": True})
        models = (await client.get("/v1/models")).json()
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == SOLUTIONS[0].upper()
    assert "echo_plugin" in [s["name"] for s in models["strategies"]]


async def test_an_engine_refusal_is_a_400():
    from strategies.base import InvalidRequestError

    class Refusing(FakeEngine):
        async def generate(self, prompts, spec, request_id):
            raise InvalidRequestError("the policy engine refused the request: seed out of range")

    async with client_for(Refusing(lambda p, i: "")) as client:
        r = await chat(client, strategy="self_consistency")
    assert_error(r, 400, says="seed out of range")


async def test_a_reward_model_failure_mid_stream_is_an_error_event():
    async with client_for(scorer=FakeScorer(fail=True)) as client:
        r = await chat(client, stream=True, strategy="best_of_n")
    events = [line[len("data: ") :] for line in r.text.split("\n") if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["type"] == "service_unavailable" and "scorer is down" in error["message"]


async def test_a_stop_string_ends_the_answer_and_is_dropped_unless_asked_for():
    async with client_for() as client:
        dropped = await chat(client, stop=["\n\n"])
        kept = await chat(client, stop=["\n\n"], include_stop_str_in_output=True)
    assert dropped.json()["choices"][0]["message"]["content"] == "3 + 4 = 7"
    assert kept.json()["choices"][0]["message"]["content"] == "3 + 4 = 7\n\n"


async def test_a_model_the_server_does_not_serve_is_a_404_as_vllm_answers():
    async with client_for() as client:
        r = await chat(client, model="nope")
    assert_error(r, 404, param="model", says="The model `nope` does not exist.")
