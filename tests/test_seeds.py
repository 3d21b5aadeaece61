"""``ponder bench accuracy --seed``: the seed reaches the engine, in-process, for every strategy and engine call.

Through the bench's in-process path (the server's ChatService) on an engine whose draws depend only on the
``SamplingSpec.seed`` it is handed (unseeded: fresh entropy): every engine call of every strategy carries a seed
derived from the bench's seed and the problem; one seed gives identical records twice, another seed other records.
Then once on the real vLLM CPU engine (the tiny random-weight policy of tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from benchmarks import accuracy
from server.config import ServerConfig
from server.metrics import Metrics
from server.serving import ChatService
from strategies.base import Sample, SamplingSpec
from strategies.search import VALUE_PROMPT
from tests.fakes import FakeScorer, FakeTokenizer, tokens
from training.tasks import get_task
from training.tasks.arith import parse_question, reference_solution

STRATEGIES = "greedy,sample,self_consistency,best_of_n,weighted_best_of_n,beam_search,dvts,tree_of_thought,mcts"


@dataclass
class SeededEngine:
    """Solves an arith problem right or wrong at random: sample j of a call draws from ``Random((seed, j))``, and
    from fresh entropy when the call carries no seed. Records every call's prompts and spec."""

    max_model_len: int = 4096
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    calls: list[tuple[list[str], SamplingSpec]] = field(default_factory=list)

    def count_tokens(self, text: str) -> int:
        return tokens(text)

    def healthy(self) -> bool:
        return True

    def _sample(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
        rng = random.Random() if spec.seed is None else random.Random(f"{spec.seed}/{index}")
        if prompt.endswith(VALUE_PROMPT):  # tree_of_thought valuing a state by the policy's verdicts
            return Sample(rng.choice([" sure", " likely", " impossible"]), 1, "stop")
        question = prompt.split("user: ", 1)[1].split("\n", 1)[0]
        steps = reference_solution(*parse_question(question)).split("\n\n")
        if rng.random() < 0.5:  # a wrong final answer, drawn from the seed too
            steps[-1] = f"\\boxed{{{rng.randint(-999, -1)}}}"
        done = prompt.split("assistant:", 1)[1].count("\n\n")  # the steps a search already took
        text = "\n\n".join(steps[done:])
        for stop in spec.stop:
            if stop in text:
                cut = text[: text.index(stop) + len(stop)]
                return Sample(cut, tokens(cut), "stop", stop)
        return Sample(text, tokens(text), "stop")

    async def generate(self, prompts: Sequence[str], spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        self.calls.append((list(prompts), spec))
        return [[self._sample(p, j, spec) for j in range(spec.n)] for p in prompts]

    async def stream(self, prompt: str, spec: SamplingSpec, request_id: str) -> AsyncIterator[Sample]:
        raise AssertionError("the bench does not stream")
        yield  # pragma: no cover

    async def abort(self, request_id: str) -> None:
        pass


def bench_args(tmp_path, seed: str, strategies: str = STRATEGIES, *extra: str):
    argv = ["--dataset", "arith", "--level", "2", "--strategies", strategies, "--n", "4", "--limit", "3"]
    argv += ["--seed", seed, "--output", str(tmp_path), "--no-plot", *extra]
    args = accuracy.build_parser().parse_args(argv)
    accuracy.validate(args)
    return args


def records(path) -> list[dict]:
    """The records without their wall-clock latency, in a fixed order."""
    rows = [{k: v for k, v in r.items() if k != "latency_s"} for r in accuracy.load_records(path / "records.jsonl")]
    return sorted(rows, key=lambda r: (r["strategy"], r["n"], r["seed"], r["problem_id"]))


def bench(tmp_path, seed: str) -> tuple[list[dict], SeededEngine]:
    engine = SeededEngine()
    service = ChatService(engine, FakeScorer(), ServerConfig(max_num_samples=256), Metrics())
    asyncio.run(accuracy.run(bench_args(tmp_path, seed), accuracy.InProcessClient(service, engine, None)))
    return records(tmp_path), engine


def test_every_engine_call_of_every_strategy_carries_the_problems_seed(tmp_path):
    _, engine = bench(tmp_path, "0")
    problems = get_task("arith").load("test", limit=3, level=2)
    seeds = {p.question: accuracy.request_seed(0, p.id) for p in problems}
    assert len(engine.calls) > 9 * 3  # every strategy ran, the searches with several calls each
    for prompts, spec in engine.calls:
        (question,) = {q for q in seeds if all(q in prompt for prompt in prompts)}  # the problem of this call
        assert spec.seed is not None, (prompts, spec)
        # one-call strategies pass the request's seed; a search passes a fresh one per call, above it
        assert seeds[question] <= spec.seed <= seeds[question] + 64


def test_one_seed_gives_the_same_records_and_another_seed_others(tmp_path):
    first, _ = bench(tmp_path / "a", "0")
    again, _ = bench(tmp_path / "b", "0")
    other, _ = bench(tmp_path / "c", "1")
    assert first == again
    answers = [(r["strategy"], r["problem_id"], r["answer"]) for r in first]
    assert answers != [(r["strategy"], r["problem_id"], r["answer"]) for r in other]
    assert len({r["strategy"] for r in first}) == 9


# ---- the real vLLM CPU engine: the tiny random-weight policy (tests/conftest.py), shared across modules ----------
class TextClient:
    """The in-process client, keeping every answer's full text (the records keep only the extracted answer)."""

    def __init__(self, client: accuracy.InProcessClient) -> None:
        self.client, self.texts = client, []

    async def answer(self, *args):
        got = await self.client.answer(*args)
        self.texts.append(got.text)
        return got

    async def close(self) -> None:
        pass


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
async def test_one_seed_draws_the_same_samples_on_the_real_engine(tiny_engine, tmp_path):
    service = ChatService(tiny_engine, None, ServerConfig(max_num_samples=256), Metrics())
    runs = {}
    for name, seed in [("a", "0"), ("b", "0"), ("c", "1")]:  # one request at a time: the same scheduling each run
        client = TextClient(accuracy.InProcessClient(service, tiny_engine, None))
        await accuracy.run(bench_args(tmp_path / name, seed, "none", "--concurrency", "1"), client)
        runs[name] = (records(tmp_path / name), client.texts)
    assert len(runs["a"][1]) == 3 and all(runs["a"][1])
    assert runs["a"] == runs["b"]
    assert all(a != c for a, c in zip(runs["a"][1], runs["c"][1], strict=True))
