"""The policy as its own likelihood PRM on the policy's engine (reward_models/self_likelihood.py): step scores read
from the samples' log-probabilities where the policy wrote the steps, a fresh read on the same engine otherwise.

The unit tests script samples by hand; the end-to-end ones run the shipped default policy (a character-level
tokenizer, so the sampled tokens are the tokenizer's own; it writes steps) on the real vLLM CPU engine shared by
the session (tests/conftest.py) and compare every score with a transformers forward
(:func:`reward_models.likelihood.torch_scores`). How well the scores flag a wrong step is
``ponder bench check-models``'s figure.
"""

from __future__ import annotations

import argparse
import math
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from reward_models import reads_policy_itself
from reward_models.likelihood import render, torch_scores
from reward_models.self_likelihood import RecordedScorer, RecordingEngine, SelfLikelihoodPRM, StepRecord
from server.app import create_app
from server.cli import build_parser
from server.config import ServerConfig
from server.engine.vllm_engine import VLLMEngine, token_logprobs
from strategies.base import Sample, SamplingSpec, Task
from strategies.sampling import split_steps
from tests.fakes import FakeEngine, FakeScorer
from training.tasks.arith import INSTRUCTION

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "models" / "default-policy"
PROMPT = "user: q\nassistant:"


def task(prompt: str = PROMPT, question: str = "q") -> Task:
    return Task(prompt=prompt, question=question, max_tokens=64, temperature=0.8, top_p=1.0, request_id="t")


def sample(text: str, pieces: list[tuple[str, float]]) -> Sample:
    """A sample whose tokens are ``pieces`` (text, probability); they must spell ``text``."""
    assert "".join(p for p, _ in pieces).startswith(text)
    ends, end = [], 0
    for piece, prob in pieces:
        end += len(piece)
        ends.append((min(end, len(text)), math.log(prob)))
    return Sample(text, len(pieces), "stop", None, None, tuple(ends))


# ---- the record -------------------------------------------------------------------------------------------------


def test_each_written_step_is_scored_by_its_least_likely_token() -> None:
    record = StepRecord(task(), "\n\n", enabled=True)
    record.add(PROMPT, sample("a=1\n\nb=2", [("a", 0.9), ("=1", 0.5), ("\n\n", 0.3), ("b=", 0.8), ("2", 0.7)]))
    # the first step with the delimiter after it (another step follows), and without (it is the last step)
    assert record.lookup("q", ["a=1", "b=2"]) == pytest.approx([0.3, 0.7])
    assert record.lookup("q", ["a=1"]) == pytest.approx([0.5])
    assert record.lookup("q", ["a=1\n\n"]) == pytest.approx([0.3])  # a step that keeps its delimiter reads it
    assert record.lookup("q", ["a=1", "b=3"]) is None  # never sampled
    assert record.lookup("other question", ["a=1"]) is None


def test_a_continuation_adds_only_the_steps_it_wrote() -> None:
    record = StepRecord(task(), "\n\n", enabled=True)
    record.add(PROMPT, sample("a=1\n\n", [("a=1", 0.6), ("\n\n", 0.9)]))
    record.add(PROMPT + "a=1\n\n", sample("b=2", [("b=2", 0.4)]))
    record.add(PROMPT + "x", sample("y\n\nc", [("y", 0.1), ("\n\n", 0.1), ("c", 0.1)]))  # "xy": begun in the prompt
    assert record.lookup("q", ["a=1", "b=2"]) == pytest.approx([0.6, 0.4])
    assert record.lookup("q", ["xy", "c"]) is None
    assert ((("xy",), True)) not in record.scores and record.scores[(("xy", "c"), False)] == pytest.approx(0.1)


def test_text_not_written_as_the_prm_renders_it_is_not_recorded() -> None:
    record = StepRecord(task(), "\n\n", enabled=True)
    record.add(PROMPT, sample("a=1\n\n b=2", [("a=1", 0.6), ("\n\n", 0.9), (" b=2", 0.5)]))  # a space after
    assert set(record.scores) == {(("a=1",), False), (("a=1",), True)}
    # trailing whitespace: the step is read as the last one of an item (render() strips it), and nothing after it
    trailing = StepRecord(task(), "\n\n", enabled=True)
    trailing.add(PROMPT, sample("c=3 \n\nd=4", [("c", 0.8), ("=3", 0.7), (" ", 0.1), ("\n\n", 0.9), ("d=4", 0.5)]))
    assert trailing.scores == {(("c=3",), False): pytest.approx(0.7)}
    record.add("another prompt", sample("c=3", [("c=3", 0.5)]))
    record.add(PROMPT, Sample("d=4", 1, "stop"))  # no log-probabilities
    assert len(record.scores) == 2
    off = StepRecord(task(), "\n\n", enabled=False)
    off.add(PROMPT, sample("a=1", [("a=1", 0.6)]))
    assert off.scores == {} and off.lookup("q", ["a=1"]) is None


async def test_the_recording_engine_asks_for_log_probabilities_and_keeps_what_it_was_given() -> None:
    engine = FakeEngine(lambda prompt, i: "a=1")
    record = StepRecord(task(), "\n\n", enabled=True)
    recording = RecordingEngine(engine, record)
    await recording.generate([PROMPT], SamplingSpec(n=2), "r")
    await recording.generate([PROMPT], SamplingSpec(n=1, logprobs=3), "r")
    assert [spec.logprobs for _, spec in engine.calls] == [0, 3]
    assert recording.count_tokens("a b") == 2 and recording.max_model_len == engine.max_model_len
    await recording.abort("r")
    assert engine.aborted == ["r"]


async def test_the_scorer_reads_only_what_was_not_sampled_and_in_one_call() -> None:
    totals = Counter(hits=5)  # the PRM's, from earlier sessions
    record = StepRecord(task(), "\n\n", enabled=True, totals=totals)
    record.add(PROMPT, sample("a=1\n\nb=2", [("a=1", 0.6), ("\n\n", 0.9), ("b=2", 0.5)]))
    fresh = FakeScorer(default=0.25)
    scorer = RecordedScorer(fresh, record)  # type: ignore[arg-type]
    items = [("q", ["a=1", "b=2"]), ("q", ["a=1", "zz"]), ("q", []), ("q", ["yy"])]
    assert await scorer.score(items, "s") == [pytest.approx([0.6, 0.5]), [0.25, 0.25], [], [0.25]]
    assert fresh.calls == [[("q", ["a=1", "zz"]), ("q", ["yy"])]]
    assert (record.hits, record.misses) == (2, 2) and scorer.kind == "prm" and scorer.aggregation == "min"
    assert totals == Counter(hits=7, misses=2)


def test_token_offsets_come_from_the_decoded_tokens() -> None:
    def completion(text: str, pieces: list[str], ids: list[int] | None = None) -> SimpleNamespace:
        ids = ids or list(range(len(pieces)))
        rows = [{i: SimpleNamespace(logprob=-0.5, decoded_token=p)} for i, p in zip(ids, pieces, strict=True)]
        return SimpleNamespace(text=text, token_ids=ids, logprobs=rows)

    assert token_logprobs(completion("ab\n\n", ["a", "b", "\n\n"])) == ((1, -0.5), (2, -0.5), (4, -0.5))
    assert token_logprobs(completion("ab\n\n", ["a", "b\n\n\n"])) == ((1, -0.5), (4, -0.5))  # cut at a stop string
    assert token_logprobs(completion("ab", ["a", "c"])) is None  # the tokens do not spell the text
    assert token_logprobs(completion("abc", ["a", "b"])) is None
    assert token_logprobs(SimpleNamespace(text="a", token_ids=[0], logprobs=None)) is None


def test_only_the_policy_itself_in_the_likelihood_format_shares_its_engine(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"ponder_prm_format": "likelihood"}')
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert reads_policy_itself(tmp_path, tmp_path)
    assert reads_policy_itself(other, other, "likelihood") and not reads_policy_itself(other, other)
    assert not reads_policy_itself(tmp_path, other) and not reads_policy_itself(other, other, "math_shepherd")


async def test_the_cli_builds_it_on_the_policy_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    import reward_models
    import reward_models.self_likelihood as self_likelihood
    import server.engine.vllm_engine as vllm_engine
    from server.cli import _loader

    engine = SimpleNamespace(llm="the policy's AsyncLLM")
    loaded: list[str] = []

    async def fake_create(model: str, **kwargs: object) -> SimpleNamespace:
        return engine

    async def fake_load_scorer(path: str, **kwargs: object) -> str:
        loaded.append(path)
        return "a second engine"

    monkeypatch.setattr(vllm_engine.VLLMEngine, "create", fake_create)
    monkeypatch.setattr(reward_models, "load_scorer", fake_load_scorer)
    monkeypatch.setattr(self_likelihood, "SelfLikelihoodPRM", lambda engine, path: ("self", engine, path))
    other = DEFAULT_POLICY.parent / "default-prm"  # the verifier, in the likelihood format too: its own engine
    for prm, expected in ((DEFAULT_POLICY, ("self", engine, str(DEFAULT_POLICY))), (other, "a second engine")):
        argv = ["serve", "--model", str(DEFAULT_POLICY), "--prm", str(prm), "--prm-format", "likelihood"]
        args = build_parser().parse_args(argv)
        assert isinstance(args, argparse.Namespace)
        assert await _loader(args, DEFAULT_POLICY, prm)() == (engine, expected)
    assert loaded == [str(other)]


async def test_the_server_runs_each_request_on_its_own_session() -> None:
    sessions: list[Task] = []

    class SessionScorer(FakeScorer):
        def session(self, task: Task, engine):
            sessions.append(task)
            return RecordingEngine(engine, StepRecord(task, "\n\n", enabled=False)), self

    engine = FakeEngine(lambda prompt, i: f"{i} + 1 = {i + 1}\n\n\\boxed{{{i + 1}}}")
    app = create_app(ServerConfig(model_name="tiny", reward_model_name="prm"), engine=engine, scorer=SessionScorer())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "1 + 1?"}],
            "strategy": "best_of_n",
            "strategy_params": {"num_samples": 3},
        }
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert [t.question for t in sessions] == ["1 + 1?"] and engine.calls[0][1].logprobs is None  # record off


# ---- end to end on the real engine ------------------------------------------------------------------------------

QUESTION = "Start with 31. (1) Add 6. (2) Multiply by 2. (3) Subtract 9. (4) Add 40. What is the result?"
QUESTION += "\n" + INSTRUCTION  # the user turn, as the policy was trained on


@pytest.fixture(scope="module")
def policy(default_policy_engine: VLLMEngine):
    """The shipped policy's engine (tests/conftest.py) and the PRM that reads the policy on it."""
    return default_policy_engine, SelfLikelihoodPRM(default_policy_engine, str(DEFAULT_POLICY))


@pytest.fixture(scope="module")
def reference():
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_POLICY)
    model = LlamaForCausalLM.from_pretrained(DEFAULT_POLICY, dtype=torch.float32).eval()
    return lambda items: torch_scores(model, tokenizer, items)


def served_task(prm: SelfLikelihoodPRM, question: str = QUESTION) -> Task:
    return task(render(prm.tokenizer, question, [])[0], question)


async def all_recorded_and_right(scorer: RecordedScorer, items: list, reference) -> None:
    """Every item scored from the record, each score a transformers forward's."""
    got = await scorer.score(items, "recorded")
    assert (scorer.record.hits, scorer.record.misses) == (len(items), 0)
    for a, b in zip(got, reference(items), strict=True):
        assert a == pytest.approx(b, abs=1e-3)


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_whole_samples_are_scored_from_their_own_log_probabilities(policy, reference) -> None:
    engine, prm = policy
    engine_, scorer = prm.session(served_task(prm), engine)
    (samples,) = await engine_.generate(
        [served_task(prm).prompt], SamplingSpec(n=4, temperature=0.8, max_tokens=200, seed=0), "whole"
    )
    assert all(s.token_logprobs is not None for s in samples)
    assert sum(lp for _, lp in samples[0].token_logprobs) == pytest.approx(samples[0].cumulative_logprob, abs=1e-3)
    items = [(QUESTION, split_steps(s.text, "\n\n")) for s in samples]
    assert all(len(steps) >= 3 for _, steps in items)  # the policy writes steps
    await all_recorded_and_right(scorer, items, reference)


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_a_step_by_step_search_reads_every_round_from_its_samples(policy, reference) -> None:
    engine, prm = policy
    the_task = served_task(prm)
    engine_, scorer = prm.session(the_task, engine)
    step = SamplingSpec(n=2, temperature=0.8, max_tokens=64, stop=("\n\n",), seed=1)
    (first,) = await engine_.generate([the_task.prompt], step, "round1")
    second = await engine_.generate(
        [the_task.prompt + s.text for s in first],
        SamplingSpec(n=1, temperature=0.8, max_tokens=64, stop=("\n\n",), seed=2),
        "round2",
    )
    items = [(QUESTION, split_steps(s.text + more.text, "\n\n")) for s, (more,) in zip(first, second, strict=True)]
    assert all(len(steps) == 2 for _, steps in items)
    await all_recorded_and_right(scorer, items, reference)


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_what_was_not_sampled_is_read_on_the_same_engine(policy, reference) -> None:
    engine, prm = policy
    _, scorer = prm.session(served_task(prm), engine)
    items = [(QUESTION, ["(1) Add 6: 31 + 6 = 37", "(2) Multiply by 2: 37 * 2 = 47"]), (QUESTION, [])]
    got = await scorer.score(items, "fresh")
    assert got[1] == [] and got[0] == pytest.approx(reference(items[:1])[0], abs=1e-3)
    assert scorer.record.misses == 1
    system = task("system: be brief\n" + served_task(prm).prompt, QUESTION)  # not the PRM's rendering: no record
    engine_, scorer = prm.session(system, engine)
    assert not scorer.record.enabled
    await engine_.generate([system.prompt], SamplingSpec(n=1, max_tokens=8), "system")
    assert engine.healthy() and engine.num_running() == 0
    await prm.shutdown()  # the policy's engine is not the PRM's to stop
    assert engine.healthy()
