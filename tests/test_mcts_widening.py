"""``mcts`` with progressive widening: a node's children grow with its visits, k(n) = ceil(C * n^alpha), at every
depth, each widening one engine call of k new steps; repeats of a node's steps merged; the token budget kept.

The engine here draws fresh samples on every call (the k-th sample ever drawn for a prompt is the script's sample
k), as a real sampler with a fresh seed per call does; the shared ``FakeEngine`` repeats samples 0..n-1 each call."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import httpx
import pytest

import strategies
from server.accounting import CountingEngine, CountingScorer, Ledger
from server.app import create_app
from server.config import ServerConfig
from strategies.base import Sample, SamplingSpec, Task
from tests.fakes import FakeEngine, tokens

PROMPT = "user: q\nassistant:"


@dataclass
class Fresh(FakeEngine):
    """Sample i of a call for a prompt is the script's sample (samples drawn for that prompt before) + i."""

    drawn: dict[str, int] = field(default_factory=dict)

    def _step(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
        text = self.script(prompt, index)
        words = list(re.finditer(r"\S+", text))
        if len(words) > spec.max_tokens:
            text = text[: words[spec.max_tokens - 1].end()]
        ends = [(text.index(stop) + len(stop), stop) for stop in spec.stop if stop in text]
        if ends:
            end, stop = min(ends)
            return Sample(text[:end], tokens(text[:end]), "stop", stop)
        return Sample(text, tokens(text), "length" if len(words) > spec.max_tokens else "stop")

    async def generate(self, prompts, spec: SamplingSpec, request_id: str) -> list[list[Sample]]:
        self.calls.append((list(prompts), spec))
        out = []
        for prompt in prompts:
            start = self.drawn.get(prompt, 0)
            self.drawn[prompt] = start + spec.n
            out.append([self._step(prompt, start + i, spec) for i in range(spec.n)])
        return out


@dataclass
class FlatScorer:
    """Every step scores ``value`` (a step with ``liked`` in it, after only such steps, 0.9); finished answers 0.5."""

    value: float = 0.6
    liked: str | None = None
    kind: str = "prm"

    def scores(self, steps: list[str]) -> list[float]:
        liked = [bool(self.liked) and all(self.liked in s for s in steps[: i + 1]) for i in range(len(steps))]
        return [0.9 if ok else 0.5 if "boxed" in s else self.value for s, ok in zip(steps, liked, strict=True)]

    async def score(self, items, request_id: str) -> list[list[float]]:
        return [self.scores(list(steps)) for _, steps in items]


def answers(prompt: str, i: int) -> str:
    """Every first step is a finished answer, a new one per sample."""
    return f"\\boxed{{{i}}}"


def one_way(prompt: str, i: int) -> str:
    """One first step only ("go"), then a new finished answer per sample."""
    return "go\n\n" if prompt == PROMPT else f"\\boxed{{{i}}}"


def branching(prompt: str, i: int) -> str:
    """A new step per sample, three steps deep, then an answer."""
    depth = prompt[len(PROMPT) :].count("\n\n")
    return f"\\boxed{{{i}}}" if depth == 3 else f"s{depth}-{i}\n\n"


async def run(engine, scorer=None, budget: int = 10_000, max_tokens: int = 64, **params):
    spec = strategies.get("mcts")
    ledger = Ledger(token_budget=budget)
    config = spec.config_cls(max_total_tokens=budget, return_trace=True, **{"widening": True} | params)
    task = Task(prompt=PROMPT, question="q", max_tokens=max_tokens, temperature=None, top_p=1.0)
    sc = CountingScorer(scorer or FlatScorer(), ledger, "t")
    result = await spec.fn(task, config, CountingEngine(engine, ledger, "t"), sc)
    return result, ledger


def limit(visits: int, c: float, alpha: float) -> int:
    return math.ceil(c * visits**alpha - 1e-9)


def widenings(result) -> list[tuple[int, int, int, int]]:
    """(iteration, node, its visits when it widened, its draws after) of every widening."""
    return [
        (r["iteration"], w["node"], w["visits"], w["draws"])
        for r in result.extra["rounds"]
        for w in r.get("widened", [])
    ]


# ---- the schedule -----------------------------------------------------------------------------------------------
async def test_the_root_gains_children_as_its_visits_grow():
    # every child is a finished answer: an iteration either widens the root (k = 2 new children, 2 visits) or
    # selects a finished child again (1 visit); with C = 1, alpha = 0.5 the root may draw k more once
    # draws + 2 <= ceil(sqrt(n)): at n = 10 (4 children) and n = 26 (6 children)
    engine = Fresh(answers)
    result, ledger = await run(engine, num_samples=2, num_iterations=30, widening_c=1.0, widening_alpha=0.5)
    assert widenings(result) == [(9, 0, 10, 4), (24, 0, 26, 6)]
    for _, _, visits, draws in widenings(result):
        assert draws <= limit(visits, 1.0, 0.5) < draws + 2  # within k(n), and widened as soon as k(n) allowed
    root = result.extra["tree"]["nodes"][0]
    assert sum(n["parent"] == 0 for n in result.extra["tree"]["nodes"]) == 6
    assert root["visits"] == 2 + 2 * 2 + 27  # the first 2, two widenings of 2, 27 re-selected finished children
    assert ledger.engine_calls == ledger.scorer_calls == 3  # the first expansion and two widenings, one call each
    assert [spec.n for _, spec in engine.calls] == [2, 2, 2]
    assert result.extra["widening"] == {"c": 1.0, "alpha": 0.5}


async def test_without_widening_the_root_keeps_its_first_expansion():
    engine = Fresh(answers)
    result, ledger = await run(engine, num_samples=2, num_iterations=30, widening=False)
    assert ledger.engine_calls == 1 and "widening" not in result.extra
    assert sum(n["parent"] == 0 for n in result.extra["tree"]["nodes"]) == 2
    assert result.extra["tree"]["nodes"][0]["visits"] == 2 + 29  # every later iteration re-selects a finished child


async def test_c_defaults_to_k_and_alpha_sets_the_pace():
    # C = None is k = 2: k(n) = ceil(2 * n^alpha); alpha = 0.25: 4 children once 2 * n^0.25 > 3 (n >= 6)
    result, _ = await run(Fresh(answers), num_samples=2, num_iterations=12, widening_alpha=0.25)
    assert widenings(result)[0][2:] == (6, 4) and result.extra["widening"] == {"c": 2, "alpha": 0.25}
    assert all(draws <= limit(visits, 2, 0.25) for _, _, visits, draws in widenings(result))


async def test_widening_visits_holds_widening_back_until_t_visits():
    result, _ = await run(Fresh(answers), num_samples=2, num_iterations=30, widening_c=1.0, widening_visits=20)
    assert widenings(result)[0][2:] == (20, 4)  # allowed from n = 10, held back until n = 20


async def test_widening_happens_below_the_root():
    # the root has one step ("go"): its widenings draw "go" again, merged into the one child; "go" gains new answers
    engine = Fresh(one_way)
    result, ledger = await run(engine, num_samples=2, root_samples=1, num_iterations=24, widening_c=1.0)
    nodes = result.extra["tree"]["nodes"]
    go = [n for n in nodes if n["parent"] == 0 and "repeat_of" not in n]
    assert len(go) == 1 and go[0]["text"] == "go\n\n"
    below = [w for w in widenings(result) if w[1] == go[0]["id"]]
    assert below and all(draws <= limit(visits, 1.0, 0.5) < draws + 2 for _, _, visits, draws in below)
    answers_under_go = [n for n in nodes if n["parent"] == go[0]["id"]]
    assert len(answers_under_go) == len({n["text"] for n in answers_under_go}) == 2 + 2 * len(below)
    # the root's widenings drew only repeats: each is a visit to "go", not a new child
    repeats = [n for n in nodes if n.get("repeat_of") == go[0]["id"]]
    assert repeats and all(n["visits"] == 0 for n in repeats)
    assert nodes[0]["visits"] == go[0]["visits"]  # every backup passed through "go"
    assert ledger.engine_calls == len(result.extra["rounds"])  # one engine call per iteration that drew


async def test_priors_are_recomputed_over_old_and_new_children():
    class Likely(Fresh):
        def _step(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
            s = super()._step(prompt, index, spec)  # later samples are less likely
            return Sample(s.text, s.num_tokens, s.finish_reason, s.stop_reason, -0.5 * index * s.num_tokens)

    result, _ = await run(Likely(answers), num_samples=2, num_iterations=12, widening_c=1.0)
    first = [n for n in result.extra["tree"]["nodes"] if n["parent"] == 0]
    assert len(first) == 4 and sum(n["prior"] for n in first) == pytest.approx(1.0, abs=1e-5)
    priors = [n["prior"] for n in first]
    assert priors == sorted(priors, reverse=True) and priors[0] < 1 / (1 + math.exp(-0.5))  # diluted by the new ones


# ---- cost ---------------------------------------------------------------------------------------------------------
async def test_one_engine_call_and_one_scoring_call_per_iteration():
    engine = Fresh(branching)  # UCT with little exploration follows the "-0" path it likes, which gains visits
    result, ledger = await run(
        engine,
        FlatScorer(liked="-0"),
        num_samples=2,
        root_samples=3,
        num_iterations=40,
        widening_c=1.0,
        selection="uct",
        exploration=0.2,
    )
    rounds = result.extra["rounds"]
    assert any("widened" in r for r in rounds) and any(w[1] != 0 for w in widenings(result))  # below the root too
    assert ledger.engine_calls == ledger.scorer_calls == len(rounds) <= 40
    assert [(len(p), s.n) for p, s in engine.calls] == [(1, 3)] + [(1, 2)] * (len(rounds) - 1)
    for node in result.extra["tree"]["nodes"]:  # no node ever held more than k(n) of its visits (its first k aside)
        kids = [n for n in result.extra["tree"]["nodes"] if n["parent"] == node["id"] and "repeat_of" not in n]
        assert len(kids) <= max(3 if node["id"] == 0 else 2, limit(node["visits"], 1.0, 0.5))


async def test_several_leaves_per_iteration_share_one_call_with_a_widening():
    engine = Fresh(branching)
    result, ledger = await run(
        engine, num_samples=2, num_iterations=20, leaves_per_iteration=2, widening_c=1.0, selection="uct"
    )
    shared = [r for r in result.extra["rounds"] if "widened" in r and len(r["leaves"]) == 2]
    assert shared  # a widened node and another node expanded in the same engine call
    assert ledger.engine_calls == len(result.extra["rounds"])
    assert all(len(set(r["leaves"])) == len(r["leaves"]) for r in result.extra["rounds"])


@pytest.mark.parametrize("budget", [3, 7, 15, 40])
async def test_the_token_budget_is_kept(budget):
    engine = Fresh(branching)
    result, ledger = await run(engine, budget=budget, num_samples=2, num_iterations=50, widening_c=1.0)
    assert ledger.completion_tokens <= budget  # the ledger refuses any call over it
    assert len(result.choices) == 1 and result.choices[0].chosen


# ---- validation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(widening_c=0), "widening_c"),
        (dict(widening_c=-1.0), "widening_c"),
        (dict(widening_c=float("nan")), "widening_c"),
        (dict(widening_c=float("inf")), "widening_c"),
        (dict(widening_alpha=-0.1), "widening_alpha"),
        (dict(widening_alpha=1.5), "widening_alpha"),
        (dict(widening_alpha=float("nan")), "widening_alpha"),
        (dict(widening_visits=-1), "widening_visits"),
    ],
)
def test_invalid_widening_parameters_are_value_errors(params, message):
    with pytest.raises(ValueError, match=message):
        strategies.get("mcts").config_cls(**params)


async def test_invalid_widening_over_http_is_a_400():
    app = create_app(
        ServerConfig(model_name="tiny", reward_model_name="prm"), engine=Fresh(answers), scorer=FlatScorer()
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder") as client:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "q"}], "strategy": "mcts"}
        bad = await client.post(
            "/v1/chat/completions", json=body | {"strategy_params": {"widening": True, "widening_alpha": 2}}
        )
        good = await client.post(
            "/v1/chat/completions", json=body | {"strategy_params": {"widening": True, "num_iterations": 3}}
        )
    assert bad.status_code == 400 and "widening_alpha" in bad.json()["error"]["message"]
    assert good.status_code == 200
