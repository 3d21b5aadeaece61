"""End to end: `ponder serve` as a subprocess on the real vLLM CPU engine with tiny models, called with the
official `openai` client (sync, async, streaming, strategies through `extra_body`).

The reward model is a copy of the tiny policy read in the ``likelihood`` format, on its own engine (the one
place a test starts that format's engine; tests/test_causal_prm.py reads it on the policy's)."""

from __future__ import annotations

import json
import shutil
import signal

import httpx
import openai
import pytest

from benchmarks.servers import ponder_cmd, running

pytestmark = pytest.mark.e2e
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
STARTUP_SECONDS = 300


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve")
    policy, prm = tiny_models["policy"], shutil.copytree(tiny_models["policy"], root / "verifier")
    config = json.loads((prm / "config.json").read_text())
    (prm / "config.json").write_text(json.dumps(config | {"ponder_prm_format": "likelihood"}))
    cmd = ponder_cmd(
        str(policy),
        str(prm),
        0.1,
        "--served-model-name",
        "tiny",
        "--max-num-samples",
        "32",
        "--default-max-tokens",
        "24",
        "--log-level",
        "info",
    )
    with running(cmd, root / "server.log", env={"VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=STARTUP_SECONDS) as server:
        yield server
        # uvicorn shuts down gracefully, then re-raises the signal: the exit status is "killed by SIGTERM"
        assert server.stop() == -signal.SIGTERM
        log = server.log.read_text()
        assert "Application shutdown complete" in log and "Traceback" not in log


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_health_was_503_while_loading(server):
    assert 503 in server.statuses


def test_models_lists_model_and_strategies(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    names = {s["name"] for s in models.model_extra["strategies"]}
    assert {"none", "best_of_n", "weighted_best_of_n", "self_consistency"} <= names


def test_plain_chat_completion(client):
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=16, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens == reply.model_extra["ponder"]["chosen_completion_tokens"] > 0
    again = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=16, temperature=0)
    assert again.choices[0].message.content == reply.choices[0].message.content  # greedy is deterministic


def test_best_of_n_is_one_engine_request_and_counts_every_token(client):
    reply = client.chat.completions.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=12,
        extra_body={"strategy": "best_of_n", "strategy_params": {"num_samples": 16, "return_trace": True}},
    )
    ponder = reply.model_extra["ponder"]
    assert ponder["engine_calls"] == 1 and ponder["engine_requests"] == 1 and ponder["scorer_calls"] == 1
    candidates = ponder["candidates"]
    assert len(candidates) == 16 and sum(c["chosen"] for c in candidates) == 1
    assert reply.usage.completion_tokens == sum(c["completion_tokens"] for c in candidates)
    chosen = next(c for c in candidates if c["chosen"])
    assert chosen["text"] == reply.choices[0].message.content
    assert chosen["score"] == max(c["score"] for c in candidates)
    assert all(0.0 <= s <= 1.0 for c in candidates for s in c["step_scores"])


def test_self_consistency_and_weighted_best_of_n(client):
    for strategy in ("self_consistency", "weighted_best_of_n"):
        reply = client.chat.completions.create(
            model="tiny",
            messages=QUESTION,
            max_tokens=12,
            extra_body={"strategy": strategy, "strategy_params": {"num_samples": 4}},
        )
        assert reply.model_extra["ponder"]["strategy"] == strategy
        assert reply.usage.completion_tokens >= reply.model_extra["ponder"]["chosen_completion_tokens"]


async def test_async_client_concurrent_requests(server):
    import asyncio

    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    replies = await asyncio.gather(
        *[
            client.chat.completions.create(
                model="tiny",
                messages=QUESTION,
                max_tokens=8,
                extra_body={"strategy": "best_of_n", "strategy_params": {"num_samples": 4}},
            )
            for _ in range(6)
        ]
    )
    assert all(r.model_extra["ponder"]["engine_requests"] == 1 for r in replies)
    await client.close()


def test_streaming_tokens_and_usage(client):
    stream = client.chat.completions.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    greedy = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=16, temperature=0)
    assert text == greedy.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == greedy.usage.completion_tokens


def test_streaming_a_strategy(client):
    stream = client.chat.completions.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"strategy": "best_of_n", "strategy_params": {"num_samples": 8}},
    )
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_client_errors_are_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=QUESTION, extra_body={"strategy": "nope"})
    assert "available:" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny",
            messages=QUESTION,
            extra_body={"strategy": "best_of_n", "strategy_params": {"num_samples": 33}},
        )
    assert err.value.body["code"] == "above_cap"


def test_metrics_after_traffic(server):
    text = httpx.get(f"{server.url}/metrics").text
    assert 'ponder_requests_total{status="200",strategy="best_of_n"}' in text
    assert "ponder_requests_in_flight 0.0" in text
