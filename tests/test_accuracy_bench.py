"""``ponder bench accuracy``: the grid, the records, resuming, the results files, and the command's errors.

The answers come through the server's own request path (ChatService) on the scripted fake engine, which solves
arith problems right for three samples in four (sample index 3 answers wrong).
"""

from __future__ import annotations

import asyncio
import json

import pytest

import strategies
from benchmarks import accuracy
from benchmarks.cli import main as bench_main
from server.config import ServerConfig
from server.default_models import REPO_ROOT
from server.metrics import Metrics
from server.serving import ChatService
from strategies.errors import EngineUnavailableError
from tests.fakes import FakeEngine, FakeScorer
from training.tasks.arith import parse_question, reference_solution


def solve(prompt: str, index: int) -> str:
    question = prompt.split("user: ", 1)[1].split("\n", 1)[0]
    text = reference_solution(*parse_question(question))
    if index % 4 == 3:  # a wrong final answer with the same number of words
        text = text.rsplit("\\boxed{", 1)[0] + "\\boxed{-7}"
    return text


def fake_client() -> tuple[accuracy.InProcessClient, FakeEngine]:
    engine = FakeEngine(solve)
    service = ChatService(engine, FakeScorer(), ServerConfig(max_num_samples=256), Metrics())
    return accuracy.InProcessClient(service, engine, None), engine


def args_for(tmp_path, *extra: str):
    argv = [
        "--dataset",
        "arith",
        "--level",
        "1,2",
        "--strategies",
        "greedy,self_consistency,best_of_n",
        "--n",
        "1,4",
        "--limit",
        "6",
        "--output",
        str(tmp_path / "out"),
        "--no-plot",
        *extra,
    ]
    args = accuracy.build_parser().parse_args(argv)
    accuracy.validate(args)
    return args


def test_grid_runs_strategies_without_n_once():
    configs = accuracy.grid(["arith"], [1], ["greedy", "best_of_n"], [1, 4], [0, 1])
    assert sorted((c.strategy, c.n, c.seed) for c in configs) == [
        ("best_of_n", 1, 0),
        ("best_of_n", 1, 1),
        ("best_of_n", 4, 0),
        ("best_of_n", 4, 1),
        ("greedy", 1, 0),
        ("greedy", 1, 1),
    ]


def test_strategy_request_maps_n_to_each_strategys_budget():
    assert accuracy.strategy_request("greedy", 1, {}) == ("none", {"temperature": 0.0, "num_samples": 1}, None)
    assert accuracy.strategy_request("best_of_n", 8, {"aggregation": "min"}) == (
        "best_of_n",
        {"num_samples": 8, "aggregation": "min"},
        None,
    )
    assert accuracy.strategy_request("mcts", 16, {})[1] == {"num_iterations": 16}
    assert accuracy.strategy_request("tree_of_thought", 5, {})[1] == {"num_samples": 5}
    assert accuracy.strategy_request("sample", 16, {}) == ("none", {"num_samples": 16}, None)


def test_help_says_what_n_sets_for_every_strategy_from_its_config(capsys):
    with pytest.raises(SystemExit):
        accuracy.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    lines = text.split("what --n sets", 1)[1].splitlines()
    for spec in strategies.available():
        (line,) = [x for x in lines if x.split()[:1] == [spec.name]]
        assert line.split()[1].rstrip(":") == (spec.config_cls.budget_param or "nothing")
        assert spec.config_cls.budget_doc is None or spec.config_cls.budget_doc in " ".join(line.split()[2:])
    assert any(x.split()[:2] == ["mcts", "num_iterations:"] for x in lines)
    assert any(x.split()[:2] == ["greedy", "nothing:"] for x in lines)  # a preset that fixes num_samples


def test_run_writes_rows_with_accuracy_tokens_and_intervals(tmp_path):
    client, engine = fake_client()
    rows = asyncio.run(accuracy.run(args_for(tmp_path), client))
    keys = {(r["level"], r["strategy"], r["n"]) for r in rows}
    assert keys == {
        (lv, s, n)
        for lv in (1, 2)
        for s, n in [
            ("greedy", 1),
            ("self_consistency", 1),
            ("self_consistency", 4),
            ("best_of_n", 1),
            ("best_of_n", 4),
        ]
    }
    by = {(r["level"], r["strategy"], r["n"]): r for r in rows}
    for level in (1, 2):
        assert by[(level, "greedy", 1)]["accuracy"] == 1.0  # sample 0 is always right
        assert by[(level, "self_consistency", 4)]["accuracy"] == 1.0  # three right answers out-vote one wrong
        greedy_tokens = by[(level, "greedy", 1)]["completion_tokens_mean"]
        assert by[(level, "best_of_n", 4)]["completion_tokens_mean"] == pytest.approx(4 * greedy_tokens)
    for row in rows:
        assert row["num_problems"] == 6 and row["num_seeds"] == 1 and row["errors"] == 0
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
        assert row["tokens_per_s"] is not None  # each configuration's batch was timed
        assert row["sent"]["strategy"] == ("none" if row["strategy"] == "greedy" else row["strategy"])
        budget = accuracy.budget_param(row["strategy"])
        assert budget is None or row["sent"]["strategy_params"][budget] == row["n"]
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text()) == rows
    assert "| arith | 1 | best_of_n | 4 | 100.0% |" in (out / "results.md").read_text()
    records = accuracy.load_records(out / "records.jsonl")
    assert len(records) == 2 * 5 * 6 and all(r["gold"] == r["answer"] for r in records if r["strategy"] == "greedy")


def test_an_interrupted_run_resumes_without_redoing_finished_answers(tmp_path):
    client, engine = fake_client()
    asyncio.run(accuracy.run(args_for(tmp_path), client))
    path = tmp_path / "out" / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-5]) + "\n" + lines[-5][:20])  # lost the last answers mid-write
    client, engine = fake_client()
    rows = asyncio.run(accuracy.run(args_for(tmp_path), client))
    assert len(engine.calls) == 5  # only the five lost answers ran again
    assert sum(r["num_problems"] for r in rows) == 2 * 5 * 6


def test_plot_and_bootstrap():
    assert accuracy.bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    low, high = accuracy.bootstrap_ci([0.0, 1.0] * 50)
    assert 0.35 < low < 0.5 < high < 0.65


def test_plot_writes_a_png(tmp_path):
    rows = [
        {
            "dataset": "arith",
            "level": 3,
            "strategy": s,
            "n": n,
            "accuracy": a,
            "ci_low": a - 0.1,
            "ci_high": a + 0.1,
            "completion_tokens_mean": t,
        }
        for s, n, a, t in [("greedy", 1, 0.3, 40), ("best_of_n", 4, 0.5, 160), ("best_of_n", 16, 0.6, 640)]
    ]
    path = accuracy.plot(rows, tmp_path / "a.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "nope"], "unknown task 'nope'"),
        (["--dataset", "arith", "--strategies", "bogus"], "unknown strategy 'bogus'"),
        (["--dataset", "arith", "--level", "99"], "has no level [99]"),
        (["--dataset", "arith", "--n", "0"], "--n needs budgets"),
        (["--dataset", "arith", "--param", "best_of_n"], "expected STRATEGY.KEY=VALUE"),
        (["--dataset", "gsm8k", "--data-file", "/nonexistent.jsonl"], "nonexistent"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert bench_main(["accuracy", *argv, "--output", str(tmp_path / "o"), "--no-prm", "--model", "/nope"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_an_engine_that_dies_under_the_run_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    async def dies(args, client=None):
        raise EngineUnavailableError("the policy engine died: EngineCore encountered an issue")

    monkeypatch.setattr(accuracy, "run", dies)
    assert accuracy.main(["--dataset", "arith", "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "engine died" in err and "run the same command to resume" in err


def parsed(*argv: str):
    args = accuracy.build_parser().parse_args([*argv, "--output", "unused"])
    accuracy.validate(args)
    return args


def test_game24_runs_on_its_own_models_and_search_params_unless_told_otherwise():
    args = parsed("--dataset", "game24", "--strategies", "tree_of_thought,mcts,greedy")
    models = accuracy.resolve_models(args)
    assert (models.policy, models.prm) == (
        str(REPO_ROOT / "models/game24-policy"),
        str(REPO_ROOT / "models/game24-prm"),
    )
    assert models.kv_cache_gib == 2.0 and "game24's own" in models.line() and "game24-prm" in models.line()
    searched = {"value_source": "prm", "final_check": "game24"}
    assert accuracy.params_for(args, "game24", "tree_of_thought") == searched
    assert accuracy.params_for(args, "game24", "mcts") == searched | {"root_samples": 16}
    assert accuracy.params_for(args, "game24", "greedy") == {}
    policy, prm = str(REPO_ROOT / "models/default-policy"), str(REPO_ROOT / "models/default-prm")
    told = parsed(
        "--dataset", "game24", "--model", policy, "--prm", prm, "--kv-cache-gib", "1",
        "--param", 'tree_of_thought.value_source="self"',
    )  # fmt: skip
    models = accuracy.resolve_models(told)
    assert (models.policy, models.prm, models.kv_cache_gib) == (policy, prm, 1.0) and "(--model)" in models.line()
    assert accuracy.params_for(told, "game24", "tree_of_thought") == {"value_source": "self", "final_check": "game24"}
    assert accuracy.resolve_models(parsed("--dataset", "game24", "--no-prm")).prm is None


def test_a_run_without_a_reward_model_refuses_what_needs_one_before_any_engine_starts(tmp_path, capsys):
    argv = ["accuracy", "--dataset", "game24", "--no-prm", "--limit", "2", "--output", str(tmp_path / "o")]
    assert bench_main([*argv, "--strategies", "tree_of_thought"]) == 2  # game24's searches are valued by its PRM
    err = capsys.readouterr().err.strip()
    assert err.startswith("ponder bench accuracy: ") and "tree_of_thought on game24 needs a reward model" in err
    assert "\n" not in err and "Traceback" not in err
    assert bench_main([*argv, "--strategies", "best_of_n"]) == 2  # registered as needing one
    self_valued = parsed("--dataset", "game24", "--no-prm", "--strategies", "tree_of_thought,self_consistency",
                         "--param", 'tree_of_thought.value_source="self"')  # fmt: skip
    accuracy.refuse_without_reward_model(self_valued)  # nothing needs one: no error


def test_arith_runs_on_the_default_models_with_no_params_of_its_own():
    args = parsed("--dataset", "arith", "--strategies", "tree_of_thought")
    models = accuracy.resolve_models(args)
    assert (models.policy, models.prm) == (
        str(REPO_ROOT / "models/default-policy"),
        str(REPO_ROOT / "models/default-prm"),
    )
    assert models.kv_cache_gib == 2.0 and accuracy.params_for(args, "arith", "tree_of_thought") == {}


def test_datasets_that_need_different_models_are_one_line_and_exit_2(tmp_path, capsys):
    argv = ["accuracy", "--dataset", "arith,game24", "--limit", "1", "--output", str(tmp_path / "o")]
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert "different models" in err and "arith" in err and "game24" in err and err.count("\n") == 1
    policy, prm = str(REPO_ROOT / "models/default-policy"), str(REPO_ROOT / "models/default-prm")
    both = accuracy.resolve_models(parsed("--dataset", "arith,game24", "--model", policy, "--prm", prm))
    assert (both.policy, both.prm) == (policy, prm)  # told the models, they agree


def test_bench_cli_lists_benchmarks(capsys):
    assert bench_main([]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert bench_main(["nope"]) == 2


class CountingClient:
    """A client whose reward model keeps self-likelihood totals: each answer adds two hits and one miss."""

    def __init__(self, client: accuracy.InProcessClient) -> None:
        self.client, self.totals = client, {"hits": 0, "misses": 0}

    async def answer(self, *args):
        self.totals = {"hits": self.totals["hits"] + 2, "misses": self.totals["misses"] + 1}
        return await self.client.answer(*args)

    def record_counts(self) -> dict[str, int]:
        return dict(self.totals)

    async def close(self) -> None:
        await self.client.close()


def test_self_likelihood_counts_are_summed_per_configuration(tmp_path):
    client, _ = fake_client()
    rows = asyncio.run(accuracy.run(args_for(tmp_path), CountingClient(client)))
    assert {(r["record_hits"], r["record_misses"]) for r in rows} == {(12, 6)}  # 6 problems per cell
    client, _ = fake_client()
    rows = asyncio.run(accuracy.run(args_for(tmp_path / "plain"), client))  # no self-likelihood PRM: no counts
    assert client.record_counts() is None and not any("record_hits" in r for r in rows)


def test_a_preset_takes_its_strategys_params_but_not_over_what_it_fixes():
    args = parsed(
        "--dataset", "arith", "--strategies", "none,greedy",
        "--param", "none.min_thinking_tokens=115", "--param", "none.temperature=0.5",
    )  # fmt: skip
    assert accuracy.params_for(args, "arith", "greedy") == {"min_thinking_tokens": 115}  # greedy fixes temperature
    assert accuracy.params_for(args, "arith", "none") == {"min_thinking_tokens": 115, "temperature": 0.5}
    own = parsed(
        "--dataset", "arith", "--param", "none.min_thinking_tokens=1", "--param", "greedy.min_thinking_tokens=2"
    )
    assert accuracy.params_for(own, "arith", "greedy") == {"min_thinking_tokens": 2}
