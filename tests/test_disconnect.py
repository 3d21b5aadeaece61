"""End to end: a client that goes away (streaming or not) or a request past its deadline stops its engine work.

`ponder serve` runs on the real vLLM CPU engine with tiny models built here. The policy's EOS row is zeroed and the
other rows scaled up, so EOS is never sampled and every request runs to its max_tokens: the work is still running
when the clients leave, and would go on for seconds (64 x 1000 tokens: ~15 s on 2 cores; 32 streams of 2000: ~22 s).
After each disconnect, ``/metrics`` is polled until ``ponder_engine_requests_running`` is back to 0 and
``ponder_requests_aborted_total{strategy}`` has counted the abort; then the engine's processes must be idle (that
gauge is Ponder's bookkeeping; an idle vLLM engine core shows the work really stopped). Nothing here asserts a
timing: the polls have generous bounds and only end early.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file, save_file

from benchmarks.servers import ponder_cmd, running
from server.tiny_models import build_char_tokenizer, save_tiny_policy, save_tiny_prm

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]  # the loop of the async fixture
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
STARTUP_SECONDS = 300
SETTLE_SECONDS = 30  # engine work must be gone this long after the client is
DEADLINE_SECONDS = 3  # the server's --request-timeout; the deadline request needs far longer than this
IDLE_CPU = 0.3  # cores the engine's processes use when idle (measured: ~0.03; generating: ~1; winding down: ~0.5)
IDLE_WITHIN_SECONDS = 6  # the aborted work would keep the engine busy for longer (see above)
STREAMS = 32  # streaming clients leaving together: 32 x 2000 tokens would take ~22 s
BIG = {"max_tokens": 1000, "temperature": 1.0, "strategy_params": {"num_samples": 64}}  # 64k tokens


def save_endless_policy(path: Path) -> Path:
    """The tiny policy with EOS made unreachable: its logit is 0 and the others are scaled x50 (the largest of them
    is above 0.4 at every position for this seed, so EOS has probability below e**-20)."""
    save_tiny_policy(path, seed=1)
    weights = load_file(path / "model.safetensors")
    head = weights["lm_head.weight"] * 50.0
    head[build_char_tokenizer().eos_token_id] = 0.0
    weights["lm_head.weight"] = head.contiguous()
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("disconnect")
    policy, prm = save_endless_policy(root / "policy"), save_tiny_prm(root / "prm", seed=2)
    cmd = ponder_cmd(
        str(policy),
        str(prm),
        0.1,
        "--served-model-name",
        "tiny",
        "--request-timeout",
        str(DEADLINE_SECONDS),
        "--log-level",
        "info",
    )
    with running(cmd, root / "server.log", env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=STARTUP_SECONDS) as server:
        yield server


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from Prometheus text (0 when the series does not exist yet)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == want:
            return float(match.group(2))
    return 0.0


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    response.raise_for_status()
    return response.text


async def wait_for(client: httpx.AsyncClient, predicate, seconds: float, what: str) -> str:
    """Poll /metrics until ``predicate(text)``; fail with the last scrape after ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        text = await scrape(client)
        if predicate(text):
            return text
        if loop.time() > end:
            lines = [line for line in text.splitlines() if line.startswith("ponder_")]
            pytest.fail(f"{what} not within {seconds} s; /metrics:\n" + "\n".join(lines))
        await asyncio.sleep(0.2)


def running_now(text: str) -> float:
    return metric(text, "ponder_engine_requests_running")


def aborted(text: str, strategy: str) -> float:
    return metric(text, "ponder_requests_aborted_total", strategy=strategy)


async def settled(client: httpx.AsyncClient, strategy: str, aborted_before: float, aborts: int = 1) -> None:
    """Ponder's engine requests are back to 0, the aborts were counted, and nothing is left in flight."""
    text = await wait_for(
        client,
        lambda t: running_now(t) == 0 and aborted(t, strategy) >= aborted_before + aborts,
        SETTLE_SECONDS,
        f"engine requests back to 0 and {aborts} abort(s) of {strategy} counted",
    )
    assert aborted(text, strategy) == aborted_before + aborts
    text = await wait_for(
        client, lambda t: metric(t, "ponder_requests_in_flight") == 0, SETTLE_SECONDS, "no request in flight"
    )


def engine_cpu_seconds(server) -> float:
    """CPU time of the server's child processes (vLLM's engine cores and workers, policy and reward model)."""
    import psutil  # a dependency of vLLM

    total = 0.0
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


async def assert_engine_goes_idle(server) -> None:
    """The engine's processes drop to idle (after a second or two of winding down) well before the aborted work
    could have run to its end: vLLM itself stopped generating, not only Ponder's bookkeeping."""
    used = []
    for _ in range(IDLE_WITHIN_SECONDS):
        before = engine_cpu_seconds(server)
        await asyncio.sleep(1.0)
        used.append(round(engine_cpu_seconds(server) - before, 2))
        if used[-1] < IDLE_CPU:
            return
    pytest.fail(f"the engine's processes kept busy after the abort (cores used, second by second: {used})")


@pytest.fixture
async def client(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        await wait_for(client, lambda t: running_now(t) == 0, SETTLE_SECONDS, "an idle engine before the test")
        yield client


async def test_streaming_clients_disconnect_after_their_first_token(server, client):
    before = aborted(await scrape(client), "none")
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 2000, "temperature": 1.0, "stream": True}
    first_tokens = asyncio.Event()
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
                assert running_now(await scrape(client)) >= STREAMS
                first_tokens.set()
            await first_tokens.wait()  # every stream is generating; now they all leave

    async with asyncio.timeout(SETTLE_SECONDS * 4):  # a bound, should a stream fail before the others may leave
        await asyncio.gather(*[leave_after_first_token() for _ in range(STREAMS)])
    await settled(client, "none", before, aborts=STREAMS)
    await assert_engine_goes_idle(server)


async def test_streaming_strategy_client_disconnects_while_it_searches(server, client):
    before = aborted(await scrape(client), "best_of_n")
    body = {"model": "tiny", "messages": QUESTION, "stream": True, "strategy": "best_of_n", **BIG}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()  # kept referenced until we leave (see above)
        await anext(lines)  # the role chunk: the strategy has started
        await wait_for(client, lambda t: running_now(t) > 0, SETTLE_SECONDS, "engine requests running")
    await settled(client, "best_of_n", before)
    await assert_engine_goes_idle(server)


async def test_non_streaming_client_gives_up(server, client):
    before = aborted(await scrape(client), "best_of_n")
    body = {"model": "tiny", "messages": QUESTION, "strategy": "best_of_n", **BIG}
    request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
    await wait_for(client, lambda t: running_now(t) > 0 or request.done(), SETTLE_SECONDS, "engine requests running")
    assert not request.done(), request.result().text
    request.cancel()  # the connection is closed, as a client timeout does
    with pytest.raises(asyncio.CancelledError):
        await request
    await settled(client, "best_of_n", before)
    await assert_engine_goes_idle(server)


async def test_a_request_past_its_deadline_is_aborted(server, client):
    before = aborted(await scrape(client), "self_consistency")
    body = {"model": "tiny", "messages": QUESTION, "strategy": "self_consistency", **BIG}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code in (400, 408, 503, 504), response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    await settled(client, "self_consistency", before)
    await assert_engine_goes_idle(server)


async def test_the_server_still_serves_after_the_aborts(client):
    body = {
        "model": "tiny",
        "messages": QUESTION,
        "max_tokens": 8,
        "strategy": "best_of_n",
        "strategy_params": {"num_samples": 4},
    }
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4 * 8  # EOS never comes: every sample runs to the cap
    assert (await client.get("/health")).status_code == 200
