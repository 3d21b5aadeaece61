"""The vLLM adapters end to end: the real vLLM CPU engine on tiny random models built in-process.

The policy and PRM engines are shared with other modules (tests/conftest.py), the ORM's starts here, and one
script starts a PRM read by its lowest token score (``ponder_prm_step_read: min``) in a subprocess that then exits.
PRM and ORM scores are checked against the same checkpoint run with plain torch/transformers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Qwen2Config, Qwen2Model

from reward_models import load_scorer
from reward_models.layout import STEP_TAG, tokenizer_path
from reward_models.orm import VLLMOutcomeRewardModel
from reward_models.vllm_prm import QWEN_PRM_SYSTEM, VLLMProcessRewardModel
from server.engine.vllm_engine import VLLMEngine
from strategies.base import Engine, SamplingSpec, Scorer
from tests.conftest import KV_CACHE_GIB, eager

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]
ROOT = Path(__file__).resolve().parents[1]

ITEMS = [
    ("What is 2+3?", ["2+3=5", "So the answer is 5."]),
    ("Compute 7*6.", ["7*6=42", "42-0=42", "The answer is 42."]),
    ("One step only", [f"a step that mentions {STEP_TAG} itself"]),
    ("No steps", []),
]


@pytest.fixture(scope="module")
def tiny(tiny_models: dict[str, Path]) -> dict[str, Path]:
    return tiny_models  # tests/conftest.py


@pytest.fixture(scope="module")
def engine(tiny_engine: VLLMEngine) -> VLLMEngine:
    return tiny_engine  # started once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def prm(tiny_prm: VLLMProcessRewardModel) -> VLLMProcessRewardModel:
    return tiny_prm  # float32: compare with torch at 1e-3


@pytest.fixture(scope="module")  # on the session loop (pyproject)
async def orm(tiny: dict[str, Path]):
    scorer = await load_scorer(tiny["orm"], kv_cache_gib=KV_CACHE_GIB, dtype="float32", **eager(load_scorer))
    yield scorer
    await scorer.shutdown()


def chat_prompt(engine: VLLMEngine, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


async def test_engine_basics(engine: VLLMEngine) -> None:
    assert isinstance(engine, Engine) and engine.healthy()
    # create() loads in a worker thread: the server's loop answered /health (503, loading) before it was done
    assert engine.health_while_loading == (503, False)
    assert engine.max_model_len == 2048 and engine.num_running() == 0
    prompt = chat_prompt(engine, "hi")
    assert engine.count_tokens(prompt) == len(engine.tokenizer.encode(prompt, add_special_tokens=False))
    assert engine.count_tokens("hi") == 3  # BOS added to a prompt that lacks it
    [greedy] = await engine.generate(["hi"], SamplingSpec(n=3, temperature=0.0, max_tokens=5), "greedy-n3")
    assert len(greedy) == 3 and greedy[0] == greedy[1] == greedy[2]  # vLLM refuses greedy n>1: one stands for all
    with pytest.raises(ValueError, match="top_p"):
        await engine.generate(["hi"], SamplingSpec(top_p=0.0), "bad-top-p")


async def test_generate_n4_with_stop_strings(engine: VLLMEngine) -> None:
    prompts = [chat_prompt(engine, "What is 2+3?"), chat_prompt(engine, "Name a colour.")]
    stops = tuple("aeiou")
    results = await engine.generate(prompts, SamplingSpec(n=4, max_tokens=32, stop=stops, seed=0), "gen")
    assert [len(samples) for samples in results] == [4, 4]
    samples = [s for samples in results for s in samples]
    for s in samples:
        if s.stop_reason is not None:
            assert s.finish_reason == "stop" and s.stop_reason in stops and s.text.endswith(s.stop_reason)
            assert not any(stop in s.text[:-1] for stop in stops)  # ended at the first stop string
        elif s.finish_reason == "length":
            assert s.num_tokens == 32
    assert any(s.stop_reason is not None for s in samples)
    short = await engine.generate(prompts, SamplingSpec(n=4, max_tokens=3), "short")
    assert any(s.finish_reason == "length" and s.num_tokens == 3 for samples in short for s in samples)
    assert engine.num_running() == 0


async def test_multi_character_stop_string_is_kept_and_ends_the_text(engine: VLLMEngine) -> None:
    prompt = chat_prompt(engine, "Explain.")
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=40)
    [[full]] = await engine.generate([prompt], greedy, "greedy")
    stop = full.text[10:12]
    [[cut]] = await engine.generate([prompt], SamplingSpec(n=1, temperature=0.0, max_tokens=40, stop=(stop,)), "cut")
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == full.text[: full.text.index(stop) + len(stop)]


async def test_stream_deltas_concatenate_to_the_generated_text(engine: VLLMEngine) -> None:
    prompt, spec = chat_prompt(engine, "Count."), SamplingSpec(n=1, temperature=0.0, max_tokens=24)
    [[whole]] = await engine.generate([prompt], spec, "whole")
    deltas = [delta async for delta in engine.stream(prompt, spec, "streamed")]
    assert "".join(d.text for d in deltas) == whole.text
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == whole.finish_reason and deltas[-1].num_tokens == whole.num_tokens
    assert all(a.num_tokens <= b.num_tokens for a, b in zip(deltas, deltas[1:], strict=False))
    with pytest.raises(ValueError, match="n=2"):
        [d async for d in engine.stream(prompt, SamplingSpec(n=2), "bad")]


async def in_vllm(engine: VLLMEngine, requests: int) -> None:
    """Return once ``requests`` of our requests are running and vLLM itself holds them (an abort reaches them)."""
    async with asyncio.timeout(60):  # a bound: they are submitted at once
        while engine.num_running() < requests or engine.llm.get_num_unfinished_requests() < requests:
            await asyncio.sleep(0.01)


async def test_abort_stops_every_sub_request(engine: VLLMEngine) -> None:
    prompt, spec = chat_prompt(engine, "Go on."), SamplingSpec(n=2, temperature=0.0, max_tokens=1800)
    task = asyncio.create_task(engine.generate([prompt, prompt + "x"], spec, "req-abort"))
    await in_vllm(engine, 2)
    await engine.abort("req-abort")
    results = await asyncio.wait_for(task, 30)
    assert engine.num_running() == 0
    samples = [s for samples in results for s in samples]
    assert samples and all(s.num_tokens < 1800 for s in samples)
    assert any(s.finish_reason == "abort" for s in samples)


async def test_cancelling_a_call_aborts_its_requests(engine: VLLMEngine) -> None:
    spec = SamplingSpec(n=1, temperature=0.0, max_tokens=1800)
    task = asyncio.create_task(engine.generate([chat_prompt(engine, "More.")] * 3, spec, "req-cancel"))
    await in_vllm(engine, 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.num_running() == 0

    async def consume() -> None:
        async for _ in engine.stream(chat_prompt(engine, "More."), spec, "req-stream-cancel"):
            pass

    streaming = asyncio.create_task(consume())
    await in_vllm(engine, 1)
    streaming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await streaming
    assert engine.num_running() == 0 and engine.llm.get_num_unfinished_requests() == 0  # vLLM's own count too
    [[after]] = await engine.generate(["ok"], SamplingSpec(max_tokens=2), "after")  # still serving
    assert after.num_tokens <= 2 and engine.healthy()


def reference_prm_scores(path: Path, question: str, steps: list[str]) -> tuple[str, list[float]]:
    """Qwen2.5-Math-PRM's input and scores from a plain torch forward of the checkpoint."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(path))
    messages = [
        {"role": "system", "content": QWEN_PRM_SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": STEP_TAG.join(steps) + STEP_TAG},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    config = Qwen2Config.from_pretrained(path)
    state = load_file(path / "model.safetensors")
    body = Qwen2Model(config).eval()
    body.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    head = torch.nn.Sequential(
        torch.nn.Linear(config.hidden_size, config.hidden_size), torch.nn.ReLU(), torch.nn.Linear(config.hidden_size, 2)
    )
    head.load_state_dict({k.removeprefix("score."): v for k, v in state.items() if k.startswith("score.")})
    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False))  # the template starts with BOS
    with torch.no_grad():
        hidden = body(input_ids=ids[None]).last_hidden_state[0]  # (T, H)
        probs = head(hidden).softmax(dim=-1)  # (T, 2)
    return text, probs[ids == tokenizer.convert_tokens_to_ids(STEP_TAG), 1].tolist()


async def test_prm_scores_every_step_like_a_torch_forward(prm: VLLMProcessRewardModel, tiny: dict) -> None:
    assert isinstance(prm, VLLMProcessRewardModel) and isinstance(prm, Scorer) and prm.kind == "prm"
    scores = await prm.score(ITEMS, "prm")
    assert [len(s) for s in scores] == [len(steps) for _, steps in ITEMS]
    for (question, steps), got in zip(ITEMS, scores, strict=True):
        if not steps:
            continue
        clean = [step.replace(STEP_TAG, "") for step in steps]
        text, expected = reference_prm_scores(tiny["prm"], question, clean)
        assert prm.render(question, steps) == text
        assert all(0.0 <= p <= 1.0 for p in got)
        assert got == pytest.approx(expected, abs=1e-3)
    assert prm.num_running() == 0 and prm.healthy()


def worker_cores(llm: Any) -> set[int]:
    """The CPU cores the model workers of an ``AsyncLLM`` may run on (their processes' affinity)."""
    import psutil

    (core,) = llm.engine_core.resources.engine_manager.processes  # the engine process; the workers are its children
    workers = [p for p in psutil.Process(core.pid).children(recursive=True) if "Worker" in p.name()]
    assert workers
    return {cpu for worker in workers for cpu in worker.cpu_affinity()}


async def test_the_reward_model_computes_on_its_own_cores(engine: VLLMEngine, prm: VLLMProcessRewardModel) -> None:
    from reward_models.hardware import parse_cores, scorer_cpu_bind

    policy, scorer = worker_cores(engine.llm), worker_cores(prm._llm)
    bind = scorer_cpu_bind()
    if bind is None:  # one core, or the binding left to vLLM by the environment: both where vLLM puts them
        assert scorer == policy
        return
    assert scorer == parse_cores(bind)
    assert policy and not policy & scorer  # vLLM binds the policy to all cores but the last; 2 cores: 0 and 1


async def test_orm_gives_one_probability_per_item(orm: VLLMOutcomeRewardModel, tiny: dict) -> None:
    assert isinstance(orm, VLLMOutcomeRewardModel) and orm.kind == "orm"
    scores = await orm.score(ITEMS, "orm")
    assert [len(s) for s in scores] == [1] * len(ITEMS)
    model = AutoModelForSequenceClassification.from_pretrained(tiny["orm"]).eval()
    for (question, steps), [p] in zip(ITEMS, scores, strict=True):
        ids = orm.tokenizer.encode(orm.render(question, steps), add_special_tokens=False)
        with torch.no_grad():
            expected = torch.sigmoid(model(torch.tensor([ids])).logits[0, 0]).item()
        assert 0.0 <= p <= 1.0 and p == pytest.approx(expected, abs=1e-3)


SCRIPT = """
import asyncio, json, sys
from reward_models import load_scorer

async def main():
    scorer = await load_scorer(sys.argv[1], kv_cache_gib=0.25, dtype="float32")
    try:
        print("scores", json.dumps(await scorer.score(json.loads(sys.argv[2]), "min")), flush=True)
    finally:
        await scorer.shutdown()

if __name__ == "__main__":
    asyncio.run(main())
    print("exited")
"""


async def test_a_min_read_prm_in_a_script_scores_as_trained_and_exits_cleanly(tiny: dict, tmp_path: Path) -> None:
    """A PRM read by the lowest score over each step's tokens (``ponder_prm_step_read: min``, vLLM's ALL pooler) in
    a script: its scores are the training-time model's (reward_models.torch_prm), and the script exits without a
    traceback (vLLM's AsyncLLM.__del__ shuts down a second time at interpreter exit; stop_llm makes that a no-op)."""
    from reward_models.torch_prm import load_reward_model, score_steps

    path = tmp_path / "prm-min"
    shutil.copytree(tiny["prm"], path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"ponder_prm_step_read": "min"}))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SCRIPT, str(path), json.dumps(ITEMS)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "exited", done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("scores ")]
    got = json.loads(line.removeprefix("scores "))
    expected = score_steps(*load_reward_model(path), ITEMS)
    tag = score_steps(*load_reward_model(tiny["prm"]), ITEMS)  # the same weights read at the tags
    assert [len(s) for s in got] == [len(steps) for _, steps in ITEMS]
    for a, b in zip(got, expected, strict=True):
        assert a == pytest.approx(b, abs=1e-3)
    # the lowest over a step's span is never above the tag's own score, and for some steps below it
    assert all(m <= t + 1e-6 for b, t_ in zip(expected, tag, strict=True) for m, t in zip(b, t_, strict=True))
    assert any(m < t - 1e-3 for b, t_ in zip(expected, tag, strict=True) for m, t in zip(b, t_, strict=True))


async def test_seeded_requests_with_split_prefills_do_not_kill_the_engine(engine: VLLMEngine) -> None:
    """40 seeded prompts of ~300 tokens overflow a scheduler step, so some prefills are split; vLLM's CPU runner then
    rewound a CPU generator, which raises and killed the engine (server/engine/vllm_plugin.py fixes it)."""
    prompts = [f"Start with {i}. " * 20 for i in range(40)]
    outputs = await engine.generate(prompts, SamplingSpec(n=2, temperature=0.8, max_tokens=8, seed=1), "seeded")
    assert [len(o) for o in outputs] == [2] * 40 and all(s.num_tokens > 0 for o in outputs for s in o)
    assert engine.healthy()
