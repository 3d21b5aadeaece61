"""End to end with the remote backend: `ponder serve --backend openai` in front of vLLM's own OpenAI server."""

from __future__ import annotations

import signal
import threading
import time
from types import SimpleNamespace

import httpx
import openai
import pytest

from benchmarks.servers import running, vllm_cmd
from server.tiny_models import save_tiny_policy

pytestmark = pytest.mark.e2e
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    import sys

    root = tmp_path_factory.mktemp("remote")
    policy = save_tiny_policy(root / "policy", seed=3)
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with running(vllm_cmd(str(policy), 0.1), root / "vllm.log", env=env) as vllm:
        ponder = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--backend",
            "openai",
            "--base-url",
            f"{vllm.url}/v1",
            "--remote-model",
            "model",
            "--tokenizer",
            str(policy),
            "--port",
            "{port}",
            "--no-prm",
            "--max-model-len",
            "2048",
            "--served-model-name",
            "remote-tiny",
            "--api-key",
            "secret-1",
        ]
        with running(ponder, root / "ponder.log", env={"PONDER_API_KEYS": "secret-2,secret-3"}) as server:
            yield SimpleNamespace(
                client=openai.OpenAI(base_url=f"{server.url}/v1", api_key="secret-3", max_retries=0), server=server
            )


def test_self_consistency_through_the_remote_engine(stack):
    reply = stack.client.chat.completions.create(
        model="remote-tiny",
        messages=QUESTION,
        max_tokens=12,
        extra_body={"strategy": "self_consistency", "strategy_params": {"num_samples": 6, "return_trace": True}},
    )
    ponder = reply.model_extra["ponder"]
    assert ponder["engine_calls"] == 1 and len(ponder["candidates"]) == 6
    assert reply.usage.completion_tokens == sum(c["completion_tokens"] for c in ponder["candidates"])
    assert all(0 < c["completion_tokens"] <= 12 for c in ponder["candidates"])


def test_streaming_through_the_remote_engine(stack):
    chunks = list(
        stack.client.chat.completions.create(
            model="remote-tiny",
            messages=QUESTION,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = stack.client.chat.completions.create(model="remote-tiny", messages=QUESTION, max_tokens=10, temperature=0)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_reward_model_strategy_without_prm_is_a_400(stack):
    with pytest.raises(openai.BadRequestError, match="needs a reward model"):
        stack.client.chat.completions.create(
            model="remote-tiny", messages=QUESTION, extra_body={"strategy": "best_of_n"}
        )


def test_api_keys_from_flag_and_environment(stack):
    for key in ("secret-1", "secret-2"):
        client = openai.OpenAI(base_url=f"{stack.server.url}/v1", api_key=key, max_retries=0)
        assert client.models.list().data[0].id == "remote-tiny"
    wrong = openai.OpenAI(base_url=f"{stack.server.url}/v1", api_key="secret-4", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(f"{stack.server.url}/health").status_code == 200  # open for supervisors


def _metrics(stack) -> str:
    return httpx.get(f"{stack.server.url}/metrics", headers={"Authorization": "Bearer secret-3"}).text


def test_sigterm_drains_in_flight_requests(stack):
    """Last in this module: SIGTERM while a request runs; the request completes, then the server exits."""
    outcome = {}

    def long_request():
        outcome["reply"] = stack.client.chat.completions.create(
            model="remote-tiny",
            messages=QUESTION,
            max_tokens=1500,
            temperature=1.0,
            extra_body={"strategy": "self_consistency", "strategy_params": {"num_samples": 32}},
        )
        outcome["finished"] = time.monotonic()

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 30
    while "ponder_requests_in_flight 1.0" not in _metrics(stack) and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until the server has the request, whatever this machine's speed
    assert "finished" not in outcome, "the request ended before SIGTERM could be sent; make it longer"
    stack.server.proc.send_signal(signal.SIGTERM)
    terminated = time.monotonic()
    worker.join(timeout=120)
    assert outcome["reply"].model_extra["ponder"]["strategy"] == "self_consistency"
    assert stack.server.proc.wait(timeout=60) == -signal.SIGTERM
    assert outcome["finished"] > terminated  # it was still running when SIGTERM came, and it was served
