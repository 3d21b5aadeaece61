"""Hardening, in-process: caps, API keys, admission control (429), deadlines, dead engine, request logs."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import httpx
import pytest

from server.app import _watch_engine, create_app
from server.config import ServerConfig
from tests.fakes import FakeEngine, FakeScorer
from tests.test_http import MESSAGES, SOLUTIONS, assert_error


def app_for(engine=None, scorer=None, **config):
    engine = engine or FakeEngine(lambda prompt, i: SOLUTIONS[i % len(SOLUTIONS)])
    return create_app(ServerConfig(model_name="tiny", **config), engine=engine, scorer=scorer)


def client_of(app, **headers) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder", headers=headers)


async def chat(client, **body) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"messages": MESSAGES} | body)


async def test_api_keys_guard_every_route_but_health():
    app = app_for(api_keys=("key-one", "key-two"))
    async with (
        client_of(app) as anonymous,
        client_of(app, authorization="Bearer nope") as wrong,
        client_of(app, authorization="Bearer key-two") as right,
    ):
        assert (await anonymous.get("/health")).status_code == 200
        for response in (
            await anonymous.get("/v1/models"),
            await chat(wrong),
            await wrong.get("/metrics"),
            await anonymous.get("/openapi.json"),
        ):
            error = assert_error(response, 401, says="invalid API key")
            assert error["code"] == "invalid_api_key" and response.headers["www-authenticate"] == "Bearer"
        assert (await chat(right)).status_code == 200
        assert (await right.get("/v1/models")).status_code == 200
    async with client_of(app, authorization="Basic key-one") as basic:
        assert_error(await chat(basic), 401)


async def test_body_above_the_cap_is_a_413_with_or_without_content_length():
    app = app_for(max_body_bytes=2000)
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()

    async def chunks():
        for i in range(0, len(big), 500):
            yield big[i : i + 500]

    async with client_of(app) as client:
        declared = await client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
        streamed = await client.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        small = await chat(client)
    for response in (declared, streamed):
        assert_error(response, 413, says="cap of 2000 bytes")
    assert small.status_code == 200


async def test_message_count_and_tree_node_caps_are_400s():
    async with client_of(
        app_for(FakeEngine(lambda p, i: "step\n\n"), FakeScorer(), max_messages=3, max_tree_nodes=10)
    ) as client:
        many = await chat(client, messages=[{"role": "user", "content": "hi"}] * 4)
        deep = await chat(client, strategy="beam_search", strategy_params={"num_samples": 8, "beam_width": 2})
    assert_error(many, 400, param="messages", says="cap of 3 (--max-messages)")
    assert_error(deep, 400, says="cap of 10 (--max-tree-nodes)")


async def test_deadline_aborts_the_work_and_names_the_cap():
    engine = FakeEngine(lambda p, i: "slow answer", gate=asyncio.Event())  # never done: only the deadline ends it
    app = app_for(engine, request_timeout=0.3)
    async with client_of(app) as client:
        r = await chat(client, strategy="self_consistency")
        streamed = await chat(client, strategy="self_consistency", stream=True)
        metrics = (await client.get("/metrics")).text
    assert_error(r, 400, says="deadline of 0.3 s (--request-timeout)")
    assert "deadline" in streamed.text and "[DONE]" not in streamed.text
    assert engine.running == 0 and engine.cancelled == 2  # both calls were cut short
    assert 'ponder_requests_aborted_total{strategy="self_consistency"} 2.0' in metrics


async def test_admission_control_queues_then_refuses_with_429():
    gate = asyncio.Event()
    engine = FakeEngine(lambda p, i: "x", gate=gate)  # the first request holds the one slot until the gate opens
    async with client_of(app_for(engine, max_concurrent_requests=1, max_queued_requests=1)) as client:
        first = asyncio.create_task(chat(client))
        await engine.wait_running(1)
        others = [asyncio.create_task(chat(client)) for _ in range(2)]
        done, _ = await asyncio.wait(others, return_when=asyncio.FIRST_COMPLETED)  # the queue is full: a 429
        assert [t.result().status_code for t in done] == [429] and engine.running == 1
        gate.set()
        results = await asyncio.gather(first, *others)
        metrics = (await client.get("/metrics")).text
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 429]  # one served, one queued then served, one refused
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert_error(refused, 429, says="at capacity")
    assert "ponder_requests_rejected_total 1.0" in metrics


async def test_a_dead_engine_is_503_and_stops_the_server_with_status_1():
    engine = FakeEngine(lambda p, i: "x")
    engine.healthy = lambda: False
    app = app_for(engine)
    async with client_of(app) as client:
        health = await client.get("/health")
        r = await chat(client)
    assert health.status_code == 503 and health.json()["status"] == "engine_dead"
    assert_error(r, 503, says="engine is not running")
    app.state.uvicorn = SimpleNamespace(should_exit=False)
    await asyncio.wait_for(_watch_engine(app), timeout=5)
    assert app.state.exit_code == 1 and app.state.uvicorn.should_exit


async def test_metrics_expose_engine_running_and_process_memory():
    async with client_of(app_for()) as client:
        text = (await client.get("/metrics")).text
    assert "ponder_engine_requests_running 0.0" in text
    assert "process_resident_memory_bytes" in text


@pytest.mark.parametrize("log_prompts", [False, True])
async def test_one_structured_log_line_per_request(caplog, log_prompts):
    caplog.set_level(logging.INFO, logger="ponder.requests")
    async with client_of(app_for(log_prompts=log_prompts)) as client:
        await chat(client, strategy="self_consistency", strategy_params={"num_samples": 2})
    (record,) = [r for r in caplog.records if r.name == "ponder.requests"]
    line = json.loads(record.getMessage())
    assert line["status"] == 200 and line["strategy"] == "self_consistency" and line["completion_tokens"] > 0
    assert line["request_id"].startswith("ponder-") and line["latency_s"] >= 0
    assert ("messages" in line) == log_prompts
    assert ("What is 3 + 4?" in record.getMessage()) == log_prompts
