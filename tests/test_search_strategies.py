"""Tree-search strategies against a scripted policy and reward model where the right path is known: the path
chosen, the engine and reward-model calls per round, the token budget, termination, and the trace."""

from __future__ import annotations

import doctest
import json
import re
from dataclasses import dataclass, field

import httpx
import pytest

import strategies
import strategies.search
from server.accounting import CountingEngine, CountingScorer, Ledger
from server.app import create_app
from server.config import ServerConfig
from strategies.base import Sample, SamplingSpec, Task
from strategies.search import VALUE_PROMPT, VALUE_TOKENS
from tests.fakes import FakeEngine, tokens

PROMPT = "user: q\nassistant:"
RIGHT = "right 0\n\nright 1\n\n\\boxed{42}"


def make_task(**kw) -> Task:
    base = dict(prompt=PROMPT, question="q", max_tokens=64, temperature=None, top_p=1.0)
    return Task(**(base | kw))


def world(depth: int = 2, right: int = 0):
    """A policy whose sample ``right`` takes the right next step; every other sample, and everything after a wrong
    step, goes wrong. A completion is the whole rest of the solution, so the engine's stop strings cut the step."""

    def script(prompt: str, i: int) -> str:
        prefix = prompt[len(PROMPT) :]
        if prefix.endswith(VALUE_PROMPT):  # the policy judging itself: it knows wrong work when it sees it
            return " impossible" if "wrong" in prefix or "{7}" in prefix else " sure"
        off = "wrong" in prefix or i != right
        steps = [f"wrong {s} {i}" if off else f"right {s}" for s in range(prefix.count("\n\n"), depth)]
        return "\n\n".join(steps + ["\\boxed{7}" if off else "\\boxed{42}"])

    return script


def fork(prompt: str, i: int) -> str:
    """Two first steps: "path A" looks better but only leads to wrong steps; "path B" leads to the answer."""
    prefix = prompt[len(PROMPT) :]
    if not prefix:
        return "path A\n\nwrong 1 0\n\n\\boxed{7}" if i % 2 == 0 else "path B\n\nright 1\n\n\\boxed{42}"
    rest = ["right 1", "\\boxed{42}"] if "path B" in prefix else [f"wrong 1 {i}", "\\boxed{7}"]
    return "\n\n".join(rest[prefix.count("\n\n") - 1 :])


@dataclass
class RuleScorer:
    """A PRM that likes right steps and the right answer (0.9), dislikes the rest (0.1), or reads ``table``."""

    table: dict[str, float] = field(default_factory=dict)
    kind: str = "prm"
    calls: list[list[tuple[str, list[str]]]] = field(default_factory=list)

    def step(self, text: str) -> float:
        if text in self.table:
            return self.table[text]
        return 0.9 if "right" in text or "42" in text else 0.1

    async def score(self, items, request_id: str) -> list[list[float]]:
        self.calls.append([(q, list(steps)) for q, steps in items])
        return [[self.step(s) for s in steps] for _, steps in items]


class Policy(FakeEngine):
    """The scripted engine with ``max_tokens`` counted in the tokens it reports (``FakeEngine`` cuts at spaces, so a
    multi-step sample could report more tokens than it was allowed; a real engine never does)."""

    def _sample(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
        text, finish = self.script(prompt, index), "stop"
        words = list(re.finditer(r"\S+", text))
        if len(words) > spec.max_tokens:
            text, finish = text[: words[spec.max_tokens - 1].end()], "length"
        ends = [(text.index(stop) + len(stop), stop) for stop in spec.stop if stop in text]
        if ends:
            end, stop = min(ends)
            return Sample(text[:end], tokens(text[:end]), "stop", stop)
        return Sample(text, tokens(text), finish)


class LogprobEngine(Policy):
    """Reports a log-probability per sample: right steps are likelier than wrong ones."""

    def _sample(self, prompt: str, index: int, spec: SamplingSpec) -> Sample:
        s = super()._sample(prompt, index, spec)
        per_token = -0.1 if "right" in s.text or "42" in s.text else -2.0
        return Sample(s.text, s.num_tokens, s.finish_reason, s.stop_reason, per_token * s.num_tokens)


async def run(name: str, engine, scorer=None, task=None, budget: int = 10_000, **params):
    """Run a strategy through the server's counting proxies, with the ledger enforcing the token budget."""
    spec = strategies.get(name)
    params.setdefault("max_total_tokens", budget)  # as the server always sets it
    ledger = Ledger(token_budget=params["max_total_tokens"])
    eng = CountingEngine(engine, ledger, "t")
    sc = CountingScorer(scorer, ledger, "t") if scorer else None
    result = await spec.fn(task or make_task(), spec.config_cls(**params), eng, sc)
    return result, ledger


def shape(engine: Policy) -> list[tuple[int, int]]:
    """(prompts, n) of every engine call."""
    return [(len(prompts), spec.n) for prompts, spec in engine.calls]


@pytest.mark.parametrize("module", [strategies.search])
def test_doctests(module):
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


def test_registered_with_their_reward_model_needs():
    needs = {name: strategies.get(name).needs_scorer for name in ("beam_search", "dvts", "tree_of_thought", "mcts")}
    # tree_of_thought and mcts can value states by the policy's own verdicts (value_source="self")
    assert needs == {"beam_search": True, "dvts": True, "tree_of_thought": False, "mcts": False}


# ---- beam_search ------------------------------------------------------------------------------------------------
async def test_beam_search_keeps_the_top_n_over_m_and_votes_over_finished_beams():
    engine, scorer = Policy(world()), RuleScorer()
    result, ledger = await run("beam_search", engine, scorer, num_samples=4, beam_width=2)
    assert result.choices[0].text == RIGHT and result.choices[0].finish_reason == "stop"
    # round 1 draws N first steps from the root; then the N/M = 2 kept beams get N // 2 = 2 samples each
    assert shape(engine) == [(1, 4), (2, 2), (2, 2)]
    assert engine.calls[1][0] == [PROMPT + "right 0\n\n", PROMPT + "wrong 0 1\n\n"]  # the best and the next best
    assert all(spec.stop == ("\n\n",) and spec.temperature == 0.8 for _, spec in engine.calls)
    assert [len(batch) for batch in scorer.calls] == [4, 4, 4]  # one scoring call per round, over the new prefixes
    assert scorer.calls[1][0] == ("q", ["right 0", "right 1"])
    assert ledger.engine_calls == 3 and ledger.scorer_calls == 3
    weights = {row["answer"]: row["weight"] for row in result.extra["answers"]}
    assert weights == pytest.approx({"42": 0.9, "7": 0.3})
    assert len(result.candidates) == 4 and all(c.finish_reason == "stop" for c in result.candidates)


async def test_beam_search_last_round_runs_to_eos_at_max_depth():
    engine = Policy(world(depth=50))
    result, _ = await run(
        "beam_search", engine, RuleScorer(), task=make_task(max_tokens=20), num_samples=4, beam_width=2, max_depth=3
    )
    assert len(engine.calls) == 3
    assert [spec.stop for _, spec in engine.calls] == [("\n\n",), ("\n\n",), ()]
    assert all(c.finish_reason == "length" for c in result.candidates)  # 50 steps do not fit in max_tokens=20
    assert result.choices[0].text.startswith("right 0\n\nright 1\n\nright 2")


async def test_beam_search_lookahead_sees_past_a_tempting_step():
    table = {"path A": 0.6, "path B": 0.5}
    plain, _ = await run("beam_search", Policy(fork), RuleScorer(table), num_samples=2, beam_width=2)
    engine, scorer = Policy(fork), RuleScorer(table)
    ahead, _ = await run("beam_search", engine, scorer, num_samples=2, beam_width=2, lookahead=1)
    assert plain.choices[0].answer == "7" and ahead.choices[0].answer == "42"
    # round 1: the step call, then one greedy lookahead call over both new beams
    assert shape(engine)[:2] == [(1, 2), (2, 1)] and engine.calls[1][1].temperature == 0.0
    assert scorer.calls[0][1] == ("q", ["path B", "right 1"])  # the PRM scored prefix + lookahead


async def test_beam_search_filters_duplicate_beams():
    def same(prompt: str, i: int) -> str:
        return "same step\n\n\\boxed{1}"

    engine = Policy(same)
    await run("beam_search", engine, RuleScorer(), num_samples=4, beam_width=2)
    kept = Policy(same)
    await run("beam_search", kept, RuleScorer(), num_samples=4, beam_width=2, filter_duplicates=False)
    assert shape(engine)[1] == (1, 4)  # one distinct beam left, re-expanded N times
    assert shape(kept)[1] == (2, 2)


async def test_beam_search_trace_is_the_tree_with_the_winning_path():
    result, _ = await run("beam_search", Policy(world()), RuleScorer(), num_samples=4, beam_width=2, return_trace=True)
    tree = result.extra["tree"]
    nodes = {node["id"]: node for node in tree["nodes"]}
    assert nodes[0]["parent"] is None and nodes[0]["text"] == ""
    assert tree["path"][0] == 0 and tree["path"][-1] == tree["chosen"]
    assert "".join(nodes[i]["text"] for i in tree["path"]) == RIGHT
    assert [nodes[i]["score"] for i in tree["path"][1:]] == [0.9, 0.9, 0.9]
    assert all(
        {"id", "parent", "text", "score", "step_scores", "visits", "finish_reason"} <= set(n) for n in tree["nodes"]
    )
    assert any(n.get("pruned") for n in tree["nodes"]) and len(result.extra["rounds"]) == 3
    json.dumps(result.extra)


# ---- dvts -------------------------------------------------------------------------------------------------------
async def test_dvts_subtrees_keep_their_best_expansion():
    engine, scorer = Policy(world()), RuleScorer()
    result, ledger = await run("dvts", engine, scorer, num_samples=4, beam_width=2, return_trace=True)
    assert result.choices[0].text == RIGHT
    # round 1: one prompt, N samples dealt M = 2 to each of the N/M = 2 subtrees; then one leaf per subtree, n = M
    assert shape(engine) == [(1, 4), (2, 2), (2, 2)]
    assert engine.calls[1][0] == [PROMPT + "right 0\n\n", PROMPT + "wrong 0 2\n\n"]  # subtree 2 starts from sample 2
    assert [len(batch) for batch in scorer.calls] == [4, 4, 4] and ledger.scorer_calls == 3
    selected = [n for n in result.extra["tree"]["nodes"] if n.get("selected")]
    assert len(selected) == 6  # one per subtree per round


async def test_dvts_stops_at_max_depth():
    engine = Policy(world(depth=50))
    result, _ = await run("dvts", engine, RuleScorer(), num_samples=4, beam_width=2, max_depth=2)
    assert [spec.stop for _, spec in engine.calls] == [("\n\n",), ()]
    assert len(result.candidates) == 4


def test_beam_configs_validate():
    with pytest.raises(ValueError, match="beam_width"):
        strategies.get("dvts").config_cls(num_samples=6, beam_width=4)
    with pytest.raises(ValueError, match="max_depth"):
        strategies.get("beam_search").config_cls(max_depth=0)


# ---- tree_of_thought --------------------------------------------------------------------------------------------
async def test_tot_bfs_with_the_prm_keeps_the_b_best_states():
    engine, scorer = Policy(world()), RuleScorer()
    result, ledger = await run("tree_of_thought", engine, scorer, breadth=2, samples_per_state=2, value_source="prm")
    assert result.choices[0].text == RIGHT and result.choices[0].score == 0.9
    # the root draws b * k = 4 first steps, every later level k = 2 from each of its b = 2 states
    assert shape(engine) == [(1, 4), (2, 2), (2, 2)] and engine.calls[0][1].temperature == 0.7
    assert [len(batch) for batch in scorer.calls] == [4, 4, 3] and ledger.engine_calls == 3  # one duplicate


@pytest.mark.parametrize(("root_samples", "answer"), [(None, "42"), (1, "7")])
async def test_tot_bfs_draws_a_full_level_of_first_steps_at_the_root(root_samples, answer):
    # "path A" (sample 0) only leads to wrong steps, "path B" (sample 1) to the answer: with k = 1 first step,
    # as ToT's "sample" generator draws at the root, the way to the answer is never seen
    engine, scorer = Policy(fork), RuleScorer({"path A": 0.8, "path B": 0.7})
    result, _ = await run(
        "tree_of_thought", engine, scorer, breadth=2, samples_per_state=1, root_samples=root_samples, value_source="prm"
    )
    assert result.choices[0].answer == answer
    assert engine.calls[0][1].n == (root_samples or 2) and {spec.n for _, spec in engine.calls[1:]} == {1}


async def test_tot_bfs_values_states_by_self_evaluation_without_a_reward_model():
    engine = Policy(world())
    result, ledger = await run(
        "tree_of_thought", engine, None, breadth=2, samples_per_state=2, value_votes=3, return_trace=True
    )
    assert result.choices[0].text == RIGHT and result.choices[0].score == 1.0  # three "sure" verdicts
    assert ledger.scorer_calls == 0
    # per level: one step call (n = k over the states), one verdict call (n = votes over the new states)
    assert shape(engine) == [(1, 4), (4, 3), (2, 2), (4, 3), (2, 2), (3, 3)]  # the last level has a duplicate
    verdicts = engine.calls[1]
    assert verdicts[0][:2] == [PROMPT + "right 0\n\n" + VALUE_PROMPT, PROMPT + "wrong 0 1\n\n" + VALUE_PROMPT]
    assert verdicts[1].stop == () and verdicts[1].max_tokens == VALUE_TOKENS == 12
    votes = {n["text"]: n["votes"] for n in result.extra["tree"]["nodes"] if "votes" in n}
    assert votes["right 0\n\n"] == {"sure": 3} and votes["wrong 0 1\n\n"] == {"impossible": 3}


async def test_tot_with_prm_values_and_no_reward_model_is_a_value_error():
    with pytest.raises(ValueError, match="needs a reward model"):
        await run("tree_of_thought", Policy(world()), None, value_source="prm")


async def test_tot_dfs_prunes_and_backtracks():
    engine, scorer = Policy(fork), RuleScorer({"path A": 0.8, "path B": 0.7})
    result, _ = await run(
        "tree_of_thought", engine, scorer, search="dfs", samples_per_state=2, value_source="prm", return_trace=True
    )
    assert result.choices[0].answer == "42"
    # root, then A (valued higher, its children all pruned), then back to B and down to the answer
    expanded = [prompts[0][len(PROMPT) :] for prompts, _ in engine.calls]
    assert expanded == ["", "path A\n\n", "path B\n\n", "path B\n\nright 1\n\n"]
    assert shape(engine) == [(1, 2)] * 4 and len(scorer.calls) == 4
    pruned = {n["text"] for n in result.extra["tree"]["nodes"] if n.get("pruned")}
    assert pruned == {"wrong 1 0\n\n", "wrong 1 1\n\n"}


async def test_tot_dfs_stops_after_max_expansions():
    engine = Policy(world(depth=50))
    await run(
        "tree_of_thought", engine, RuleScorer(), search="dfs", samples_per_state=2, value_source="prm", max_expansions=3
    )
    assert len(engine.calls) == 3


def test_tot_config_caps_width_through_num_samples():
    config = strategies.get("tree_of_thought").config_cls(breadth=4, samples_per_state=3)
    assert config.num_samples == 4 and config.samples_per_call() == (12, "num_samples")  # --max-num-samples bounds
    dfs = strategies.get("tree_of_thought").config_cls(search="dfs", samples_per_state=3, root_samples=7)
    assert dfs.samples_per_call() == (7, "root_samples")  # DFS expands one state per call, the root alone


def test_mcts_samples_per_call_is_its_widest_engine_call():
    mcts = strategies.get("mcts").config_cls
    assert mcts().samples_per_call() == (4, "num_samples")
    assert mcts(root_samples=16).samples_per_call() == (16, "root_samples")
    assert mcts(num_samples=2, leaves_per_iteration=2, rollouts=3).samples_per_call() == (12, "num_samples")


def test_tot_takes_num_samples_as_its_width_and_breadth_as_its_alias():
    tot = strategies.get("tree_of_thought").config_cls
    assert tot().num_samples == 5 and tot(num_samples=3).breadth == 3 and tot(breadth=3).num_samples == 3
    assert tot(num_samples=3, breadth=3).num_samples == 3
    with pytest.raises(ValueError, match="breadth is an alias of num_samples"):
        tot(num_samples=3, breadth=4)


async def test_tot_num_samples_and_breadth_that_differ_are_a_400():
    async with client_for(Policy(world())) as client:
        width = await chat(client, "tree_of_thought", num_samples=2, samples_per_state=2)
        alias = await chat(client, "tree_of_thought", num_samples=2, breadth=2, samples_per_state=2)
        both = await chat(client, "tree_of_thought", num_samples=2, breadth=3)
    assert width.status_code == alias.status_code == 200
    assert both.status_code == 400 and "breadth is an alias of num_samples" in both.json()["error"]["message"]
    with pytest.raises(ValueError, match="root_samples"):
        strategies.get("tree_of_thought").config_cls(breadth=4, samples_per_state=3, root_samples=13)
    with pytest.raises(ValueError, match="search"):
        strategies.get("tree_of_thought").config_cls(search="astar")


# ---- mcts -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("selection", ["uct", "puct"])
async def test_mcts_finds_the_right_trajectory(selection):
    engine, scorer = Policy(world()), RuleScorer()
    result, ledger = await run(
        "mcts", engine, scorer, num_samples=2, num_iterations=8, selection=selection, return_trace=True
    )
    assert result.choices[0].text == RIGHT
    assert all(shape == (1, 2) for shape in shape(engine))  # one leaf, k children, one call per iteration
    assert ledger.engine_calls == ledger.scorer_calls <= 8
    tree = result.extra["tree"]
    root = tree["nodes"][0]
    assert root["visits"] == sum(n["visits"] for n in tree["nodes"] if n["parent"] == 0)  # mean backup
    assert all(0.0 <= n["value"] <= 1.0 for n in tree["nodes"] if n["visits"])
    json.dumps(result.extra)


@pytest.mark.parametrize(("root_samples", "answer"), [(2, "42"), (None, "7")])
async def test_mcts_draws_root_samples_first_steps_once(root_samples, answer):
    # only sample 1 of the root takes the way to the answer ("path B"); k = 1 child per expansion never draws it
    engine, scorer = Policy(fork), RuleScorer({"path A": 0.8, "path B": 0.7})
    result, _ = await run("mcts", engine, scorer, num_samples=1, root_samples=root_samples, num_iterations=6)
    assert result.choices[0].answer == answer
    assert shape(engine)[0] == (1, root_samples or 1) and all(call == (1, 1) for call in shape(engine)[1:])


async def test_mcts_self_values_by_the_policys_verdicts_without_a_reward_model():
    engine = Policy(world())
    result, ledger = await run(
        "mcts",
        engine,
        None,
        num_samples=2,
        num_iterations=6,
        value_source="self",
        value_votes=3,
        selection="uct",
        final_selection="value",
        return_trace=True,
    )
    assert result.choices[0].text == RIGHT and result.choices[0].score == 1.0  # three "sure" verdicts
    assert ledger.scorer_calls == 0
    # per iteration: one step call (k children of one leaf), one verdict call (votes over the new children)
    calls = shape(engine)
    assert calls[:2] == [(1, 2), (2, 3)] and all(c == (1, 2) for c in calls[::2])
    assert all(c == (2, 3) for c in calls[1::2])
    assert engine.calls[1][0][0] == PROMPT + "right 0\n\n" + VALUE_PROMPT
    votes = {n["text"]: n["votes"] for n in result.extra["tree"]["nodes"] if "votes" in n}
    assert votes["right 0\n\n"] == {"sure": 3} and votes["wrong 0 1\n\n"] == {"impossible": 3}


async def test_mcts_self_values_come_out_of_the_token_budget():
    engine = Policy(world())
    _, ledger = await run("mcts", engine, None, budget=40, num_samples=2, num_iterations=50, value_source="self")
    assert ledger.completion_tokens <= 40 and ledger.engine_calls < 100  # the ledger refuses any call over it


@pytest.mark.parametrize("final_selection", ["vote", "value"])
async def test_mcts_answer_comes_from_the_best_trajectories_not_the_many_explored(final_selection):
    result, _ = await run(
        "mcts",
        Policy(world(depth=3)),
        RuleScorer(),
        num_samples=3,
        num_iterations=10,
        selection="uct",
        leaves_per_iteration=2,
        final_selection=final_selection,
        return_trace=True,
    )
    finished = [n for n in result.extra["tree"]["nodes"] if n["finish_reason"]]
    assert sum(n["score"] for n in finished if n["text"] == "\\boxed{7}") > 0.9  # all of them would outvote 42
    assert result.choices[0].answer == "42"


async def test_mcts_puct_priors_come_from_step_logprobs():
    engine = LogprobEngine(world())
    result, _ = await run("mcts", engine, RuleScorer(), num_samples=2, num_iterations=2, return_trace=True)
    assert engine.calls[0][1].logprobs == 0
    first = [n for n in result.extra["tree"]["nodes"] if n["parent"] == 0]
    assert first[0]["prior"] > 0.5 > first[1]["prior"]  # "right 0" is the likelier step


async def test_mcts_expands_several_leaves_in_one_call_with_virtual_loss():
    engine, scorer = Policy(world(depth=4)), RuleScorer()
    await run("mcts", engine, scorer, num_samples=2, num_iterations=3, leaves_per_iteration=2, selection="uct")
    assert shape(engine) == [(1, 2), (2, 2), (2, 2)]
    assert [len(batch) for batch in scorer.calls] == [2, 4, 4]


async def test_mcts_rollouts_value_children_with_completions():
    engine, scorer = Policy(world()), RuleScorer()
    result, ledger = await run("mcts", engine, scorer, num_samples=2, num_iterations=2, rollouts=2, return_trace=True)
    assert shape(engine)[:2] == [(1, 2), (2, 2)]  # the expansion, then 2 rollouts from each open child
    assert engine.calls[1][1].stop == () and ledger.scorer_calls == 2
    assert len(scorer.calls[0]) == 2 + 4  # children and rollouts in one scoring call
    first = [n for n in result.extra["tree"]["nodes"] if n["parent"] == 0 and n.get("eval") is not None]
    assert first[0]["eval"] == pytest.approx(0.5)  # right 0's rollouts: one right (0.9), one wrong (0.1)
    assert result.choices[0].answer == "42"


async def test_mcts_stops_at_num_iterations_and_max_depth():
    engine = Policy(world(depth=50))
    result, _ = await run("mcts", engine, RuleScorer(), num_samples=2, num_iterations=5, max_depth=2, return_trace=True)
    assert len(engine.calls) <= 5
    assert max(n["depth"] for n in result.extra["tree"]["nodes"]) == 2
    assert all(spec.stop == () for prompts, spec in engine.calls if prompts[0] != PROMPT)  # depth 1 runs to EOS


# ---- every strategy ---------------------------------------------------------------------------------------------
CASES = [
    ("beam_search", dict(num_samples=4, beam_width=2)),
    ("beam_search", dict(num_samples=4, beam_width=2, lookahead=2)),
    ("dvts", dict(num_samples=4, beam_width=2)),
    ("tree_of_thought", dict(breadth=2, samples_per_state=2, value_source="prm")),
    ("tree_of_thought", dict(breadth=2, samples_per_state=2, value_source="self")),
    ("tree_of_thought", dict(search="dfs", samples_per_state=2, value_source="self")),
    ("mcts", dict(num_samples=2, num_iterations=10)),
    ("mcts", dict(num_samples=2, num_iterations=10, rollouts=2, leaves_per_iteration=2)),
]


@pytest.mark.parametrize("budget", [4, 9, 17, 40, 90])
@pytest.mark.parametrize(("name", "params"), CASES)
async def test_the_token_budget_stops_the_search_without_exceeding_it(name, params, budget):
    engine = Policy(world(depth=8))
    result, ledger = await run(name, engine, RuleScorer(), max_total_tokens=budget, **params)
    assert ledger.completion_tokens <= budget  # and the ledger never refused a call
    assert len(result.choices) == 1 and result.choices[0].chosen


@pytest.mark.parametrize(("name", "params"), CASES)
async def test_every_strategy_terminates_on_an_endless_policy(name, params):
    engine = Policy(lambda prompt, i: "more \n\n" * 1000)
    result, _ = await run(
        name,
        engine,
        RuleScorer(),
        task=make_task(max_tokens=10_000),
        budget=10**6,
        max_depth=6,
        return_trace=True,
        **params,
    )
    assert len(engine.calls) <= 2 * 10
    assert max(node["depth"] for node in result.extra["tree"]["nodes"]) <= 6


def client_for(engine, scorer=None) -> httpx.AsyncClient:
    app = create_app(ServerConfig(model_name="tiny", reward_model_name="prm"), engine=engine, scorer=scorer)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder")


async def chat(client: httpx.AsyncClient, strategy: str, **params) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "q"}],
            "strategy": strategy,
            "strategy_params": params,
        },
    )


async def test_search_trace_over_http():
    async with client_for(Policy(world()), RuleScorer()) as client:
        r = await chat(client, "beam_search", num_samples=4, beam_width=2, return_trace=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == RIGHT
    assert body["ponder"]["engine_calls"] == 3 and body["ponder"]["scorer_calls"] == 3
    assert body["ponder"]["trace"]["tree"]["path"][0] == 0


@pytest.mark.parametrize("name", ["beam_search", "dvts", "tree_of_thought", "mcts"])
async def test_every_search_answers_over_http_with_its_defaults(name):
    async with client_for(Policy(world()), RuleScorer()) as client:
        r = await chat(client, name)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == RIGHT


async def test_tot_prm_values_without_a_reward_model_is_a_400_and_self_values_work():
    async with client_for(Policy(world())) as client:
        refused = await chat(client, "tree_of_thought", value_source="prm")
        fine = await chat(client, "tree_of_thought", breadth=2, samples_per_state=2)
        too_wide = await chat(client, "tree_of_thought", breadth=10, samples_per_state=10)
        mcts_refused = await chat(client, "mcts")
        mcts_self = await chat(client, "mcts", value_source="self", num_samples=2, num_iterations=4)
        mcts_wide_root = await chat(client, "mcts", value_source="self", root_samples=65)
    assert refused.status_code == 400 and "needs a reward model" in refused.json()["error"]["message"]
    assert fine.status_code == 200 and fine.json()["choices"][0]["message"]["content"] == RIGHT
    assert too_wide.status_code == 400 and "cap of 64" in too_wide.json()["error"]["message"]
    assert mcts_refused.status_code == 400 and "value_source='self'" in mcts_refused.json()["error"]["message"]
    assert mcts_self.status_code == 200 and mcts_self.json()["choices"][0]["message"]["content"] == RIGHT
    assert mcts_wide_root.status_code == 400
    assert mcts_wide_root.json()["error"]["param"] == "strategy_params.root_samples"


# ---- end to end: the real vLLM CPU engine and PRM adapter, tiny random-weight models built in-process -----------
E2E_CASES = [
    ("beam_search", dict(num_samples=4, beam_width=2), 1),
    ("dvts", dict(num_samples=4, beam_width=2), 1),
    ("tree_of_thought", dict(breadth=2, samples_per_state=2, value_source="prm"), 1),
    ("tree_of_thought", dict(breadth=2, samples_per_state=2, value_source="self"), 2),
    ("mcts", dict(num_samples=2, num_iterations=4, leaves_per_iteration=2), 1),
]


@pytest.fixture(scope="module")
def real(tiny_engine, tiny_prm):
    """The tiny policy on the vLLM engine and the tiny PRM on its adapter, shared across modules (tests/conftest.py)."""
    return tiny_engine, tiny_prm


@pytest.mark.e2e
@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(("name", "params", "engine_calls_per_round"), E2E_CASES)
async def test_search_on_the_real_engine_and_prm(real, name, params, engine_calls_per_round):
    engine, scorer = real
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    task = Task(
        prompt=prompt,
        question="What is 2+3?",
        max_tokens=24,
        temperature=None,
        top_p=1.0,
        seed=0,
        request_id=f"e2e-{name}",
    )
    budget = 300
    spec = strategies.get(name)
    ledger = Ledger(token_budget=budget)
    config = spec.config_cls(max_total_tokens=budget, step_delimiter="e", return_trace=True, **params)  # a random
    # policy rarely writes a blank line; one character makes multi-step solutions likely
    result = await spec.fn(
        task, config, CountingEngine(engine, ledger, task.request_id), CountingScorer(scorer, ledger, task.request_id)
    )
    rounds = len(result.extra["rounds"])
    assert rounds >= 1 and ledger.completion_tokens <= budget
    assert ledger.engine_calls == engine_calls_per_round * rounds
    assert ledger.scorer_calls == (rounds if params.get("value_source") != "self" else 0)
    assert all(0.0 <= s <= 1.0 for node in result.extra["tree"]["nodes"] for s in node["step_scores"])
    assert result.choices[0].chosen and result.choices[0].num_tokens <= task.max_tokens
    assert engine.num_running() == 0
    json.dumps(result.extra)
