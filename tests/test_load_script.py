"""The load script (benchmarks/load.py) against the app in-process on the fake engine: it runs, classifies outcomes
(ok, 429, disconnected, unexpected), reads the server's gauges and writes its report."""

from __future__ import annotations

import asyncio
import json

import httpx

from benchmarks.load import SCENARIOS, Options, markdown, metric, run_load, write
from server.app import create_app
from server.config import ServerConfig
from tests.fakes import FakeEngine, FakeScorer

SOLUTION = "3 + 4 = 7\n\n\\boxed{7}"


def transport(engine: FakeEngine | None = None, **config) -> httpx.ASGITransport:
    engine = engine or FakeEngine(lambda prompt, i: SOLUTION)
    app = create_app(
        ServerConfig(model_name="tiny", reward_model_name="prm", **config), engine=engine, scorer=FakeScorer()
    )
    return httpx.ASGITransport(app=app)


def held_until_a_429(clients: int, **config) -> httpx.ASGITransport:
    """The app on an engine whose calls wait until the server has refused a request (a 429 went out), or until all
    ``clients`` wait on the server (no one is left to be refused): requests arrive while others hold the slot."""
    gate = asyncio.Event()
    app = transport(FakeEngine(lambda prompt, i: SOLUTION, gate=gate), **config).app
    waiting = 0

    async def watched(scope, receive, send):
        nonlocal waiting

        async def send_and_watch(message):
            if message["type"] == "http.response.start" and message["status"] == 429:
                gate.set()
            await send(message)

        chat = scope["type"] == "http" and scope["path"] == "/v1/chat/completions"
        waiting += chat
        if waiting >= clients:
            gate.set()
        try:
            await app(scope, receive, send_and_watch)
        finally:
            waiting -= chat

    return httpx.ASGITransport(app=watched)


def options(**overrides) -> Options:
    return Options(
        **{
            "url": "http://ponder",
            "requests": 40,
            "concurrency": 8,
            "disconnect_fraction": 0.25,
            "disconnect_delay": (0.001, 0.02),  # after the request is sent
            "progress": False,
            "settle_seconds": 10,
            **overrides,
        }
    )


async def test_mixed_load_with_disconnects(tmp_path):
    # Every engine call waits until a leaving client has cancelled one (or every worker's request waits), so some
    # clients leave before their answer; then the gate stays open.
    gate = asyncio.Event()
    engine = FakeEngine(lambda prompt, i: SOLUTION, gate=gate, open_when=lambda e: e.cancelled > 0 or e.running >= 8)
    async with asyncio.timeout(120):  # a bound, should the gate never open
        report = await run_load(options(requests=20, rounds=2, warmup=0), transport=transport(engine))
    outcomes = report["outcomes"]
    assert report["requests"] == 40 and report["unexpected"] == [] and outcomes["unexpected_errors"] == 0
    assert outcomes["ok"] + outcomes["disconnected"] == 40 and outcomes["disconnected"] > 0
    assert report["scenarios"] == [s.name for s in SCENARIOS]  # every strategy is available with a reward model
    assert report["engine_requests_left_running"] == 0 and report["requests_in_flight_after"] == 0
    assert report["rss"]["before_bytes"] > 0 and report["rss"]["growth"] is not None
    assert report["latency_s"]["p50"] <= report["latency_s"]["p99"]
    assert [r["round"] for r in report["settle"]["rounds"]] == [1, 2] and "After each round" in markdown(report)
    assert report["targets"]["unexpected_errors == 0"] and report["targets"]["engine_requests_left_running == 0"]
    write(report, tmp_path)
    assert json.loads((tmp_path / "load.json").read_text())["requests"] == 40
    assert "completed requests with unexpected errors | 0 |" in (tmp_path / "load.md").read_text()


async def test_429s_are_counted_apart_from_unexpected_errors():
    report = await run_load(
        options(
            requests=30,
            concurrency=10,
            disconnect_fraction=0.0,
            scenarios=("none", "best_of_n", "self_consistency"),
            warmup=0,
        ),
        transport=held_until_a_429(10, max_concurrent_requests=1, max_queued_requests=0),
    )
    assert report["outcomes"]["rejected_429"] > 0 and report["outcomes"]["unexpected_errors"] == 0
    assert report["server_counters"]["rejected_429"] == report["outcomes"]["rejected_429"]
    assert report["scenarios"] == ["none", "best_of_n", "self_consistency"]


async def test_streams_at_capacity_get_a_429_or_a_whole_stream():
    """Admission is decided before a stream's headers go out: a 429, never a 200 whose stream then breaks."""
    report = await run_load(
        options(
            requests=30,
            concurrency=10,
            disconnect_fraction=0.0,
            scenarios=("none-stream", "best_of_n-stream"),
            warmup=0,
        ),
        transport=held_until_a_429(10, max_concurrent_requests=1, max_queued_requests=0),
    )
    assert report["outcomes"]["unexpected_errors"] == 0, report["unexpected"][:3]
    assert report["outcomes"]["rejected_429"] > 0


async def test_4xx_5xx_and_stream_error_events_are_unexpected_errors():
    report = await run_load(
        options(requests=10, concurrency=2, disconnect_fraction=0.0), transport=transport(max_messages=0)
    )  # a cap every request is above: 400s
    assert report["outcomes"]["unexpected_errors"] == 10 and set(report["unexpected_statuses"]) == {"400"}
    app = create_app(
        ServerConfig(model_name="tiny", reward_model_name="prm"),
        engine=FakeEngine(lambda p, i: SOLUTION),
        scorer=FakeScorer(fail=True),
    )
    report = await run_load(
        options(requests=40, concurrency=4, disconnect_fraction=0.0, seed=1), transport=httpx.ASGITransport(app=app)
    )
    assert not report["passed"] and "FAIL" in markdown(report)
    errors = {(u["scenario"], u["status"]) for u in report["unexpected"]}
    assert ("best_of_n", 503) in errors and ("best_of_n-stream", 200) in errors  # the stream's error event


def test_metric_parsing():
    text = (
        '# HELP x\nponder_requests_aborted_total{strategy="none"} 3.0\n'
        'ponder_engine_requests_running 0.0\nponder_requests_total{status="200",strategy="none"} 5.0\n'
    )
    assert metric(text, "ponder_requests_aborted_total", strategy="none") == 3.0
    assert metric(text, "ponder_engine_requests_running") == 0.0
    assert metric(text, "ponder_requests_total", strategy="none", status="200") == 5.0
    assert metric(text, "ponder_requests_aborted_total", strategy="best_of_n") is None
