"""End to end: a client that goes away (streaming or not) or a request past its deadline stops its engine work.

The server runs in this process (uvicorn on a local port: real connections that a client really closes) over the
real tiny vLLM engines of tests/conftest.py. Its sampling ignores EOS here, so every request would run to its
max_tokens: the work is still running when the clients leave, and would go on for seconds (64 x 1000 tokens,
32 streams of 2000). After each departure the test waits for Ponder's engine to have no request running, then checks
what vLLM itself holds: every request that was running when the client left was aborted in vLLM (its id passed to
``AsyncLLM.abort``), vLLM has no unfinished request, and ``ponder_requests_aborted_total{strategy}`` counted it.
Nothing here asserts a timing: the waits have generous bounds and only end early.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace

import httpx
import pytest

from server.app import create_app
from server.config import ServerConfig

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]  # the loop of the engines
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
BOUND_SECONDS = 60  # engine work must be gone well within this after the client is
STREAMS = 32  # streaming clients leaving together: 32 x 2000 tokens
BIG = {"max_tokens": 1000, "temperature": 1.0, "strategy_params": {"num_samples": 64}}  # 64k tokens


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from Prometheus text (0 when the series does not exist yet)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == want:
            return float(match.group(2))
    return 0.0


def aborted(text: str, strategy: str) -> float:
    return metric(text, "ponder_requests_aborted_total", strategy=strategy)


@pytest.fixture(scope="module")  # on the session loop (pyproject)
async def served(tiny_engine, tiny_prm) -> AsyncIterator[SimpleNamespace]:
    """The app on a local port over the shared engines; the policy's sampling ignores EOS, and every request id
    vLLM is asked to abort is recorded."""
    import uvicorn

    engine, llm = tiny_engine, tiny_engine.llm
    make_params, abort = engine._params, llm.abort
    vllm_aborted: set[str] = set()

    def endless(*args, **kwargs):
        params = make_params(*args, **kwargs)
        params.ignore_eos = True  # vLLM reads it when the request is added
        return params

    async def recorded_abort(request_id: str | Iterable[str], *args, **kwargs) -> None:
        vllm_aborted.update([request_id] if isinstance(request_id, str) else list(request_id))
        await abort(request_id, *args, **kwargs)

    engine._params, llm.abort = endless, recorded_abort
    app = create_app(ServerConfig(model_name="tiny", reward_model_name="prm"), engine=engine, scorer=tiny_prm)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(BOUND_SECONDS):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", engine=engine, vllm_aborted=vllm_aborted)
    finally:
        server.should_exit = True
        await serving
        del engine._params, llm.abort  # the instance attributes: the class's methods again


@pytest.fixture
async def client(served) -> AsyncIterator[httpx.AsyncClient]:
    assert served.engine.num_running() == 0  # an idle engine before the test
    async with httpx.AsyncClient(base_url=served.url, timeout=BOUND_SECONDS) as client:
        yield client


async def running(engine, at_least: int = 1) -> set[str]:
    """Once at least this many of Ponder's engine requests run (they are in vLLM), their ids."""
    async with asyncio.timeout(BOUND_SECONDS):
        while engine.num_running() < at_least or engine.llm.get_num_unfinished_requests() < at_least:
            await asyncio.sleep(0.05)
    return set(engine._live)


async def stopped(served, live: set[str]) -> None:
    """The work the departed clients left is gone: Ponder's engine runs nothing, each request that was running
    was aborted in vLLM, and vLLM holds no unfinished request."""
    engine = served.engine
    async with asyncio.timeout(BOUND_SECONDS):
        while engine.num_running():
            await asyncio.sleep(0.05)
    assert live and live <= served.vllm_aborted, live - served.vllm_aborted
    assert engine.llm.get_num_unfinished_requests() == 0 and engine.healthy()


async def counted(client: httpx.AsyncClient, strategy: str, aborts: float) -> None:
    """The server's gauges are back to 0 and it counted ``aborts`` aborted requests of ``strategy`` in all."""
    text = (await client.get("/metrics")).text
    assert metric(text, "ponder_engine_requests_running") == 0 and metric(text, "ponder_requests_in_flight") == 0
    assert aborted(text, strategy) == aborts


async def test_streaming_clients_disconnect_after_their_first_token(served, client):
    before = aborted((await client.get("/metrics")).text, "none")
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 2000, "temperature": 1.0, "stream": True}
    first_tokens, leave = asyncio.Event(), asyncio.Event()
    started = 0

    async def leave_after_first_token() -> None:
        nonlocal started
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()  # kept: a generator dropped mid-stream closes the connection when collected
            while not (
                (line := await anext(lines)).startswith("data: ")
                and json.loads(line[6:])["choices"][0]["delta"].get("content")
            ):
                pass  # until a first token: the engine is generating this stream
            started += 1
            if started == STREAMS:
                first_tokens.set()
            await leave.wait()  # every stream is generating; now they all leave

    async with asyncio.timeout(BOUND_SECONDS * 4):  # a bound, should a stream fail before the others may leave
        streams = asyncio.gather(*[leave_after_first_token() for _ in range(STREAMS)])
        await first_tokens.wait()
        live = await running(served.engine, STREAMS)
        leave.set()
        await streams
    assert len(live) == STREAMS
    await stopped(served, live)
    await counted(client, "none", before + STREAMS)


async def test_streaming_strategy_client_disconnects_while_it_searches(served, client):
    before = aborted((await client.get("/metrics")).text, "best_of_n")
    body = {"model": "tiny", "messages": QUESTION, "stream": True, "strategy": "best_of_n", **BIG}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()  # kept referenced until we leave (see above)
        await anext(lines)  # the role chunk: the strategy has started
        live = await running(served.engine)
    await stopped(served, live)
    await counted(client, "best_of_n", before + 1)


async def test_non_streaming_client_gives_up(served, client):
    before = aborted((await client.get("/metrics")).text, "best_of_n")
    body = {"model": "tiny", "messages": QUESTION, "strategy": "best_of_n", **BIG}
    request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
    live = await running(served.engine)
    assert not request.done()
    request.cancel()  # the connection is closed, as a client timeout does
    with pytest.raises(asyncio.CancelledError):
        await request
    await stopped(served, live)
    await counted(client, "best_of_n", before + 1)


async def test_a_request_past_its_deadline_is_aborted(served, tiny_prm):
    """The same engines behind a server whose deadline is one second: the answer is the deadline error, and the
    work it cut short is aborted in vLLM."""
    engine = served.engine
    app = create_app(
        ServerConfig(model_name="tiny", reward_model_name="prm", request_timeout=1.0), engine=engine, scorer=tiny_prm
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder") as client:
        body = {"model": "tiny", "messages": QUESTION, "strategy": "self_consistency", **BIG}
        request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        live = await running(engine)
        response = await request
        assert response.status_code in (400, 408, 503, 504), response.text
        assert response.json()["error"]["code"] == "deadline_exceeded"
        await stopped(served, live)
        await counted(client, "self_consistency", 1)  # this app's own count


async def test_the_server_still_serves_after_the_aborts(served, client):
    body = {
        "model": "tiny",
        "messages": QUESTION,
        "max_tokens": 8,
        "strategy": "best_of_n",
        "strategy_params": {"num_samples": 4},
    }
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4 * 8  # EOS is ignored: every sample runs to the cap
    assert (await client.get("/health")).status_code == 200
