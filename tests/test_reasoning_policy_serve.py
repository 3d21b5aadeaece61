"""The shipped thinking model, served: ``models/reasoning-policy`` names vLLM's ``deepseek_r1`` reasoning parser in
its ``config.json``, so the engine picks it up with no flag; the thinking comes back as ``message.reasoning``, the
strategies vote on the boxed answer after it, and budget forcing makes it think longer."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.config import ServerConfig
from training.tasks import get_task

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]  # the loop of the engines
MODEL = Path(__file__).resolve().parents[1] / "models" / "reasoning-policy"


@pytest.fixture(scope="module")
async def client():
    from server.engine.vllm_engine import VLLMEngine

    engine = await VLLMEngine.create(str(MODEL), kv_cache_gib=0.5, dtype="float32", enforce_eager=True)
    assert engine.reasoning_parser == "deepseek_r1"  # read from the checkpoint
    app = create_app(ServerConfig(model_name="reasoning-policy"), engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder", timeout=300) as c:
        yield c
    await engine.shutdown()


@pytest.fixture(scope="module")
def question() -> str:
    task = get_task("arith")
    return task.prompt(task.load("test", limit=1, level=3)[0])


async def chat(client: httpx.AsyncClient, question: str, **body) -> dict:
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 300} | body,
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_the_thinking_is_set_apart_and_the_answer_is_boxed_after_it(client, question):
    message = (await chat(client, question))["choices"][0]["message"]
    assert message["reasoning"] and "=" in message["reasoning"] and "\\boxed" not in message["reasoning"]
    assert "\\boxed{" in message["content"] and "<think>" not in message["content"] + message["reasoning"]


async def test_budget_forcing_makes_it_think_longer(client, question):
    plain = await chat(client, question, strategy_params={"return_trace": True})
    natural = len(plain["choices"][0]["message"]["reasoning"])
    forced = await chat(client, question, strategy_params={"min_thinking_tokens": natural + 40})
    reasoning = forced["choices"][0]["message"]["reasoning"] or ""
    assert "Wait" in reasoning and len(reasoning) > natural
    assert forced["usage"]["completion_tokens"] > plain["usage"]["completion_tokens"]


async def test_self_consistency_votes_on_the_answer_after_the_thinking(client, question):
    body = await chat(
        client,
        question,
        temperature=0.8,
        seed=1,
        strategy="self_consistency",
        strategy_params={"num_samples": 4, "return_trace": True},
    )
    answers = [c["answer"] for c in body["ponder"]["candidates"]]
    contents = [c["text"].rsplit("</think>", 1)[-1] for c in body["ponder"]["candidates"]]
    assert all(a is None or f"\\boxed{{{a}}}" in text for a, text in zip(answers, contents, strict=True))


async def test_the_thinking_streams_as_reasoning_deltas(client, question):
    r = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 300, "stream": True},
    )
    deltas = [
        json.loads(line[6:])["choices"][0]["delta"]
        for line in r.text.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    ]
    whole = (await chat(client, question))["choices"][0]["message"]
    assert "".join(d.get("reasoning") or "" for d in deltas) == whole["reasoning"]
    assert "".join(d.get("content") or "" for d in deltas) == whole["content"]
